//! TLS for the TCP listener and for clients (rustls, with ring).
//!
//! Plain TCP stays what the original client speaks, and what loopback and a
//! balancer in front need; a node serves TLS on a listener of its own
//! (`--tls-listen`), with a certificate chain and key read from PEM files.
//! This build carries no root store of public authorities: a client names
//! the certificate (or authority) it trusts (`--tls-ca`), which is what a
//! self-hosted chat server with its own certificate needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why TLS could not be set up: always names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("{0:?} is not a valid server name for TLS")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The acceptor for a node's TLS listener: `cert` is a PEM chain (the
/// node's certificate first), `key` its PEM private key (PKCS#8, PKCS#1 or
/// SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        path: key.to_owned(),
        source,
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a client needs to speak TLS to a server: whom it trusts and the
/// name the server's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts the certificates in the PEM file `ca` (an authority, or the
    /// server's own self-signed certificate) and expects `server_name` (a
    /// DNS name or an IP address) in the server's certificate.
    pub fn new(ca: &Path, server_name: &str) -> Result<TlsClient, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca)? {
            roots.add(cert)?;
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the handshake over `stream`.
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// The host part of `host:port` (without IPv6 brackets), the name a client
/// expects in the certificate unless told otherwise.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address_is_the_name_to_verify() {
        assert_eq!(host_of("chat.example.org:7000"), "chat.example.org");
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let Err(e) = acceptor(Path::new("/nonexistent/cert.pem"), Path::new("/k")) else {
            panic!("a missing certificate file must be an error");
        };
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }
}
