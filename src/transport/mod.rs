//! Frames over one TCP connection, holding no buffer while it is idle.
//!
//! Most connections of a chat server are idle most of the time, so what an
//! idle connection holds is what a node's memory is made of. `Framed` keeps
//! an 8 KiB read buffer and a write buffer per connection for its whole
//! life; this transport waits for readability with no buffer at all,
//! allocates one only for the bytes that arrive, and lets it go as soon as
//! every frame in it has been handled (a partial frame keeps it, bounded by
//! the frame limit). Writes go straight from the frames to the socket:
//! everything ready is handed to the kernel in one `writev`, with no copy
//! into a write buffer.
//!
//! Over TLS the same holds for frames; rustls keeps its own record buffers
//! per connection, so a TLS connection costs more memory than a plain one.
//! Over a WebSocket ([`ws`]) each message is a frame. [`Frames`] is either,
//! so that one session loop serves every transport.

pub mod accept;
mod ws;

pub use accept::accept_each;
pub use ws::WsFrames;

use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Decoder;

use crate::protocol::codec::{FrameCodec, FrameError};

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 4096;
/// Frames per `writev` (two slices each: the frame and its newline), well
/// under the system's `IOV_MAX` of 1024.
const FRAMES_PER_WRITE: usize = 256;

/// Counts of system calls (the tests check that ready frames leave in one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoCounts {
    pub reads: u64,
    pub writes: u64,
}

/// The byte stream under the frames.
#[derive(Debug)]
pub enum Link {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Link {
    fn tcp(&self) -> &TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Tls(s) => s.get_ref().0,
        }
    }
}

/// One client connection speaking newline- or NUL-terminated frames.
#[derive(Debug)]
pub struct FrameStream {
    stream: Link,
    codec: FrameCodec,
    /// Unhandled input; empty (and unallocated) between messages.
    input: BytesMut,
    eof: bool,
    counts: IoCounts,
    /// When the unfinished frame in `input` began to arrive.
    partial_since: Option<Instant>,
    /// How long a frame may take to arrive once begun.
    frame_timeout: Duration,
    /// Bytes written so far (frames and their newlines).
    written: u64,
}

impl FrameStream {
    /// Frames on `stream`, refusing input frames longer than `max_frame`
    /// and frames not finished within `frame_timeout` of their first byte.
    pub fn new(stream: impl Into<Link>, max_frame: usize, frame_timeout: Duration) -> Self {
        let stream = stream.into();
        FrameStream {
            stream,
            codec: FrameCodec::new(max_frame),
            input: BytesMut::new(),
            eof: false,
            counts: IoCounts::default(),
            partial_since: None,
            frame_timeout,
            written: 0,
        }
    }

    /// Changes the largest frame accepted from now on (a connection may
    /// send larger frames once logged in).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        if self.codec.max_frame() != max_frame {
            self.codec = FrameCodec::new(max_frame);
        }
    }

    /// System calls made so far.
    #[cfg(test)]
    pub fn counts(&self) -> IoCounts {
        self.counts
    }

    /// Bytes written so far, frames and newlines.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Bytes written so far that the peer's TCP has acknowledged: what has
    /// reached the client's machine, though not necessarily its program.
    /// `None` over TLS (records and handshake bytes muddle the count) or
    /// where the kernel does not say.
    pub fn bytes_acknowledged(&self) -> Option<u64> {
        let Link::Plain(tcp) = &self.stream else {
            return None;
        };
        unacknowledged(tcp).map(|pending| self.written.saturating_sub(pending))
    }

    /// The next frame; `None` once the peer has closed and nothing is left.
    /// Cancel-safe: input read so far stays in `self`.
    pub async fn next_frame(&mut self) -> Option<Result<Bytes, FrameError>> {
        loop {
            if self.eof {
                return self.codec.decode_eof(&mut self.input).transpose();
            }
            match self.codec.decode(&mut self.input) {
                Ok(Some(frame)) => {
                    self.partial_since = None;
                    return Some(Ok(frame));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            let due = if self.input.is_empty() {
                // Nothing pending: hold no allocation while waiting.
                self.input = BytesMut::new();
                self.partial_since = None;
                None
            } else {
                let since = *self.partial_since.get_or_insert_with(Instant::now);
                Some(since + self.frame_timeout)
            };
            let read = match due {
                None => self.read_some().await,
                // Boxed: a timer for the rare frame split across reads
                // would otherwise sit in every idle connection's future.
                Some(due) => {
                    match Box::pin(tokio::time::timeout_at(due.into(), self.read_some())).await {
                        Ok(r) => r,
                        Err(_) => {
                            // What it sent so far is let go with the connection.
                            self.input = BytesMut::new();
                            return Some(Err(FrameError::Stalled(self.frame_timeout)));
                        }
                    }
                }
            };
            match read {
                Ok(Some(0)) => self.eof = true,
                Ok(Some(_)) => self.counts.reads += 1,
                Ok(None) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Reads what has arrived into `input`: `Some(0)` at end of stream,
    /// `None` when a readiness wake-up found nothing. Cancel-safe.
    async fn read_some(&mut self) -> io::Result<Option<usize>> {
        match &mut self.stream {
            Link::Plain(tcp) => {
                // Wait with no buffer; allocate only once bytes are there.
                tcp.readable().await?;
                if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
                    self.input.reserve(READ_CHUNK);
                }
                match tcp.try_read_buf(&mut self.input) {
                    Ok(n) => Ok(Some(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Link::Tls(tls) => {
                // rustls may hold decrypted bytes the socket no longer
                // shows as readable, so read through it.
                if self.input.capacity() - self.input.len() < READ_CHUNK / 4 {
                    self.input.reserve(READ_CHUNK);
                }
                tls.read_buf(&mut self.input).await.map(Some)
            }
        }
    }

    /// Whether the peer has closed its side already, without consuming
    /// anything: a request that waited in a stopped node's socket, from a
    /// client that gave up on it long ago, should not be acted on (a stale
    /// resume would replace the client's live session elsewhere).
    pub fn peer_closed(&mut self) -> bool {
        use std::os::fd::AsRawFd;
        self.eof || PeerCheck(self.stream.tcp().as_raw_fd()).peer_closed()
    }

    /// Writes every frame, each followed by a newline, in as few system
    /// calls as the kernel allows (one, unless its send buffer fills).
    pub async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        let tcp = match &mut self.stream {
            Link::Plain(tcp) => tcp,
            Link::Tls(tls) => {
                // One TLS record run for everything ready, then flushed.
                let mut out = BytesMut::with_capacity(frames.iter().map(|f| f.len() + 1).sum());
                for f in frames {
                    out.extend_from_slice(f);
                    out.extend_from_slice(b"\n");
                }
                tls.write_all(&out).await?;
                tls.flush().await?;
                self.counts.writes += 1;
                self.written += out.len() as u64;
                return Ok(());
            }
        };
        for chunk in frames.chunks(FRAMES_PER_WRITE) {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * chunk.len());
            for f in chunk {
                slices.push(IoSlice::new(f));
                slices.push(IoSlice::new(b"\n"));
            }
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                match tcp.try_write_vectored(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.counts.writes += 1;
                        self.written += n as u64;
                        IoSlice::advance_slices(&mut rest, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tcp.writable().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Asks a connection's socket whether its peer has closed, without reading
/// anything: a login that took a while (a password hash, or a node stopped
/// in the middle of it) checks it before it replaces the user's session
/// elsewhere. It names the socket by its descriptor (a duplicate would cost
/// every connection a second one), so it must not outlive the connection:
/// the session loop gives it to its session, which it drops first.
#[derive(Debug, Clone, Copy)]
pub struct PeerCheck(std::os::fd::RawFd);

impl PeerCheck {
    /// How long ago the last byte of data arrived on the socket (TCP's own
    /// clock, `tcpi_last_data_recv`): for a request just read, how long it
    /// waited before this process took it.
    pub fn data_age(&self) -> Option<std::time::Duration> {
        self.tcp_info()
            .map(|i| std::time::Duration::from_millis(u64::from(i.tcpi_last_data_recv)))
    }

    /// Whether the peer has closed (or reset) the connection, even when
    /// bytes it sent before closing are still unread (a client that sent
    /// a ping or a resend behind its login, then gave up on it).
    pub fn peer_closed(&self) -> bool {
        // SAFETY: the descriptor is the connection's socket, open for as
        // long as this check may be asked (see the type's comment).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking: nothing to read is WouldBlock.
        match socket2::SockRef::from(&fd).peek(&mut probe) {
            Ok(0) => true,
            // Data waits, and a FIN may wait behind it: TCP's state says.
            Ok(_) => self.tcp_info().is_some_and(|i| fin_received(i.tcpi_state)),
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    fn tcp_info(&self) -> Option<libc::tcp_info> {
        // SAFETY: as in `peer_closed`; getsockopt writes at most `len` bytes
        // into the zeroed struct we own.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).ok()?;
            let rc = libc::getsockopt(
                self.0,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            );
            (rc == 0).then_some(info)
        }
    }
}

/// Whether a TCP state (`tcpi_state`) is one reached only once the peer's
/// FIN or RST arrived: CLOSE_WAIT, LAST_ACK, CLOSING or CLOSE.
fn fin_received(state: u8) -> bool {
    // linux/tcp_states.h
    const CLOSE: u8 = 7;
    const CLOSE_WAIT: u8 = 8;
    const LAST_ACK: u8 = 9;
    const CLOSING: u8 = 11;
    matches!(state, CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// The frames of one connection, whatever carries them.
// The TCP variant, the common one, stays inline: boxing it would only add
// an allocation per connection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frames {
    Stream(FrameStream),
    /// Boxed: it is the larger of the two, and every idle TCP connection
    /// would otherwise carry its size.
    Ws(Box<WsFrames>),
}

impl Frames {
    /// The next frame; `None` once the peer has closed.
    pub async fn next_frame(&mut self) -> Option<Result<Bytes, FrameError>> {
        match self {
            Frames::Stream(s) => s.next_frame().await,
            Frames::Ws(w) => w.next_frame().await,
        }
    }

    /// Refuses longer frames from now on.
    pub fn set_max_frame(&mut self, max: usize) {
        match self {
            Frames::Stream(s) => s.set_max_frame(max),
            Frames::Ws(w) => w.set_max_frame(max),
        }
    }

    /// Whether the peer has already closed its side.
    pub fn peer_closed(&mut self) -> bool {
        match self {
            Frames::Stream(s) => s.peer_closed(),
            // A WebSocket's close arrives as a frame of its own.
            Frames::Ws(_) => false,
        }
    }

    /// A handle that tells whether the peer has closed its side (TCP and
    /// TLS; `None` for a WebSocket), while this connection lives.
    pub fn liveness(&self) -> Option<PeerCheck> {
        use std::os::fd::AsRawFd;
        match self {
            Frames::Stream(s) => Some(PeerCheck(s.stream.tcp().as_raw_fd())),
            Frames::Ws(_) => None,
        }
    }

    /// Writes every frame.
    pub async fn write_frames(&mut self, frames: &[Bytes]) -> std::io::Result<()> {
        match self {
            Frames::Stream(s) => s.write_frames(frames).await,
            Frames::Ws(w) => w.write_frames(frames).await,
        }
    }

    /// Bytes written so far (0 over a WebSocket, where nobody asks).
    pub fn bytes_written(&self) -> u64 {
        match self {
            Frames::Stream(s) => s.bytes_written(),
            Frames::Ws(_) => 0,
        }
    }

    /// Bytes written that the peer's TCP has acknowledged, where known.
    pub fn bytes_acknowledged(&self) -> Option<u64> {
        match self {
            Frames::Stream(s) => s.bytes_acknowledged(),
            Frames::Ws(_) => None,
        }
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer.
#[cfg(target_os = "linux")]
fn unacknowledged(tcp: &TcpStream) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut pending: libc::c_int = 0;
    // SAFETY: on a TCP socket, TIOCOUTQ (SIOCOUTQ) writes one int, the
    // bytes sent but not yet acknowledged plus those not yet sent, into the
    // int we pass; the descriptor stays open for the borrow's length.
    let rc = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut pending) };
    if rc != 0 {
        return None;
    }
    u64::try_from(pending).ok()
}

#[cfg(not(target_os = "linux"))]
fn unacknowledged(_tcp: &TcpStream) -> Option<u64> {
    None
}

impl From<TcpStream> for Link {
    fn from(s: TcpStream) -> Self {
        Link::Plain(s)
    }
}

impl From<TlsStream<TcpStream>> for Link {
    fn from(s: TlsStream<TcpStream>) -> Self {
        Link::Tls(Box::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_peer_check_sees_a_client_hang_up_after_its_request() {
        let (server, mut client) = pair().await;
        let mut frames = Frames::Stream(server);
        let check = frames.liveness().expect("a TCP connection");
        assert!(!check.peer_closed(), "open, nothing sent");
        client.write_all(b"{\"msgid\":1}\n").await.expect("write");
        let frame = frames.next_frame().await.expect("a frame").expect("read");
        assert_eq!(&frame[..], b"{\"msgid\":1}");
        assert!(!check.peer_closed(), "open, request read");
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check.peer_closed() {
            assert!(Instant::now() < deadline, "the hang-up was never seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(frames);
    }

    #[tokio::test]
    async fn the_peer_check_sees_a_hang_up_behind_unread_bytes() {
        let (server, mut client) = pair().await;
        let frames = Frames::Stream(server);
        let check = frames.liveness().expect("a TCP connection");
        // A login, a ping behind it, then the client gives up: nothing of
        // it has been read, yet the client is gone.
        client
            .write_all(b"{\"msgid\":1}\n{\"msgid\":90}\n")
            .await
            .expect("write");
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check.peer_closed() {
            assert!(Instant::now() < deadline, "the hang-up was never seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(frames);
    }

    async fn pair() -> (FrameStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (
            FrameStream::new(server, 64, Duration::from_millis(200)),
            client,
        )
    }

    #[tokio::test]
    async fn ready_frames_leave_in_one_write() {
        let (mut conn, mut peer) = pair().await;
        let frames: Vec<Bytes> = (0..3)
            .map(|i| Bytes::from(format!("{{\"n\":{i}}}")))
            .collect();
        conn.write_frames(&frames).await.expect("write");
        assert_eq!(conn.counts().writes, 1, "three frames, one system call");
        let mut got = vec![0; 24];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got[..], b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_the_buffer_goes_when_idle() {
        let (mut conn, mut peer) = pair().await;
        peer.write_all(b"{\"a\":").await.expect("write");
        let reading = tokio::spawn(async move {
            let f = conn.next_frame().await;
            (conn, f)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        peer.write_all(b"1}\0{\"b\":2}\n").await.expect("write");
        let (mut conn, first) = reading.await.expect("join");
        assert_eq!(&first.expect("frame").expect("ok")[..], b"{\"a\":1}");
        assert_eq!(
            &conn.next_frame().await.expect("frame").expect("ok")[..],
            b"{\"b\":2}"
        );
        // Waiting for the next frame with nothing pending holds no buffer.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), conn.next_frame());
        assert!(idle.await.is_err(), "no frame yet");
        assert_eq!(conn.input.capacity(), 0);
        drop(peer);
        assert!(conn.next_frame().await.is_none(), "peer closed");
    }

    #[tokio::test]
    async fn a_frame_trickled_too_slowly_is_refused() {
        let (mut conn, mut peer) = pair().await;
        let trickle = tokio::spawn(async move {
            for b in b"{\"msgid\":16" {
                if peer.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peer
        });
        let started = Instant::now();
        assert!(matches!(
            conn.next_frame().await,
            Some(Err(FrameError::Stalled(_)))
        ));
        let took = started.elapsed();
        assert!(took < Duration::from_millis(600), "{took:?}");
        assert_eq!(conn.input.capacity(), 0, "its bytes are let go");
        drop(trickle);
    }

    #[tokio::test]
    async fn written_bytes_are_counted_and_acknowledged_by_the_peer() {
        let (mut conn, mut peer) = pair().await;
        conn.write_frames(&[Bytes::from_static(b"{\"n\":1}")])
            .await
            .expect("write");
        assert_eq!(conn.bytes_written(), 8);
        let mut got = [0u8; 8];
        peer.read_exact(&mut got).await.expect("read");
        // Loopback acknowledges at once; allow the kernel a moment.
        for _ in 0..100 {
            if conn.bytes_acknowledged() == Some(8) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("not acknowledged: {:?}", conn.bytes_acknowledged());
    }

    #[tokio::test]
    async fn an_over_long_frame_is_refused() {
        let (mut conn, mut peer) = pair().await;
        peer.write_all(&[b'x'; 100]).await.expect("write");
        assert!(matches!(
            conn.next_frame().await,
            Some(Err(FrameError::TooLong(64)))
        ));
    }
}
