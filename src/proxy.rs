//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it):
//! how a load balancer in front of the nodes tells them who the client
//! really is. Without it every client behind nginx comes from nginx's
//! address, and the per-address limits (connections, wrong passwords,
//! registrations) would count all of them as one.
//!
//! A header is believed only from the addresses the node is told to trust
//! (`--proxy-from`, loopback by default); anyone else sending one gets it
//! parsed as a chat frame, and refused. From a trusted address the header is
//! optional, so the same node still serves direct clients there (the
//! original terminal client, tests, tools): a chat frame is JSON and can
//! never begin like a PROXY header.
//!
//! The header is read byte by byte up to its end and no further, so
//! whatever follows it stays in the socket for the frame reader; it is done
//! once per connection, only for proxied ones.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The most v2 address and TLV bytes accepted (nginx and the cloud load
/// balancers send far fewer).
const V2_MAX_PAYLOAD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Which peers may tell the node a client's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyTrust {
    /// Peers whose PROXY header is believed; empty: the protocol is off.
    pub from: Vec<IpAddr>,
}

impl ProxyTrust {
    /// Trust headers from loopback (a balancer on the same host).
    pub fn loopback() -> Self {
        ProxyTrust {
            from: vec![
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ],
        }
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.from.contains(&peer.to_canonical())
    }
}

/// The client's address: from a PROXY header if `peer` is trusted and sent
/// one, else `peer` itself. A `LOCAL` or `UNKNOWN` header (the balancer's
/// own health check) also leaves `peer`.
pub async fn client_addr(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trust: &ProxyTrust,
    deadline: Duration,
) -> Result<SocketAddr, ProxyError> {
    if !trust.trusts(peer.ip()) {
        return Ok(peer);
    }
    match tokio::time::timeout(deadline, read_header(stream)).await {
        Ok(Ok(addr)) => Ok(addr.unwrap_or(peer)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProxyError::Timeout(deadline)),
    }
}

/// Reads a header if the stream starts with one: `Ok(None)` when it does
/// not (nothing is consumed) or when it names no address.
async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    match first[0] {
        b'P' => read_v1(stream).await,
        b'\r' => read_v2(stream).await,
        _ => Ok(None),
    }
}

async fn read_v1(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut line = Vec::with_capacity(V1_MAX);
    while !line.ends_with(b"\r\n") {
        if line.len() == V1_MAX {
            return Err(ProxyError::Malformed(
                "v1 header longer than 107 bytes".into(),
            ));
        }
        line.push(stream.read_u8().await?);
    }
    parse_v1(&line)
}

async fn read_v2(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await?;
    if !head.starts_with(ppp::v2::PROTOCOL_PREFIX) {
        return Err(ProxyError::Malformed("not a v2 signature".into()));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::Malformed(format!("v2 payload of {len} bytes")));
    }
    let mut header = head.to_vec();
    header.resize(head.len() + len, 0);
    stream.read_exact(&mut header[head.len()..]).await?;
    parse_v2(&header)
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(line).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => None,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_name_the_client() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8000\r\n").expect("v1"),
            Some("203.0.113.7:5555".parse().expect("addr"))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 ::1 5555 8000\r\n").expect("v1"),
            Some("[2001:db8::1]:5555".parse().expect("addr"))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").expect("v1"), None);
        assert!(parse_v1(b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n").is_err());
    }

    #[test]
    fn v2_headers_name_the_client() {
        let mut h = ppp::v2::PROTOCOL_PREFIX.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4
        h.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1]);
        h.extend_from_slice(&4242u16.to_be_bytes());
        h.extend_from_slice(&8000u16.to_be_bytes());
        assert_eq!(
            parse_v2(&h).expect("v2"),
            Some("198.51.100.9:4242".parse().expect("addr"))
        );
        let mut local = ppp::v2::PROTOCOL_PREFIX.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_v2(&local).expect("local"), None);
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let trust = ProxyTrust::loopback();
        assert!(trust.trusts("127.0.0.1".parse().expect("ip")));
        assert!(trust.trusts("::1".parse().expect("ip")));
        assert!(trust.trusts("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!trust.trusts("127.0.0.2".parse().expect("ip")));
        assert!(!ProxyTrust::default().trusts("127.0.0.1".parse().expect("ip")));
    }
}
