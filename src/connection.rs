//! One task per connection: read frames, feed the session, write back.
//!
//! The task waits on several things at once: a frame from the client, a
//! push for the logged-in user, a newer login replacing this one, its
//! deadlines, and server shutdown. Writes are bounded in time, so a client
//! that stops reading cannot hold a task forever.
//!
//! A session that may be the original client ([`Session::classic`]) gets
//! its frames one at a time, `classic_spacing` apart and each cut to its
//! 1024-byte read, and what it was given counts as read only after a grace
//! period with the connection still open (`docs/protocol.md`,
//! "Compatibility with the original client").

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::limits::{AddrKey, Gate};
use crate::protocol::codec::FrameError;
use crate::protocol::{ErrCode, Fail, Reply, classic, msgid};
use crate::service::{Service, Session};
use crate::tls::TlsAcceptor;
use crate::transport::{FrameStream, Frames, Link, WsFrames};

/// Readies an accepted TCP connection for its session: socket options,
/// and the TLS handshake when `tls` is given. `None`: the handshake failed,
/// timed out or met a shutdown, and the connection is closed.
///
/// Only this step is `async`; the session itself is [`run`], so that the
/// two never sit in one future (see there).
pub async fn open(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    config: &crate::config::Config,
    shutdown: &CancellationToken,
) -> Option<Frames> {
    // Chat frames are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    // A peer whose machine or network died says nothing; the kernel's
    // probes find it (the original client sends no heartbeats of its own).
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(config.keepalive_idle)
        .with_interval(config.keepalive_interval)
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not turn on TCP keepalive");
    }
    let limits = &config.limits;
    let link: Link = match tls {
        None => stream.into(),
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.frame_timeout, acceptor.accept(stream));
            let done = tokio::select! {
                _ = shutdown.cancelled() => return None,
                done = handshake => done,
            };
            match done {
                Ok(Ok(tls)) => tls.into(),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    crate::metrics::inc(&crate::metrics::METRICS.limited);
                    return None;
                }
            }
        }
    };
    Some(Frames::Stream(FrameStream::new(
        link,
        config.max_frame,
        limits.frame_timeout,
    )))
}

/// A WebSocket client (`/ws` on the web listener): the same session as over
/// TCP, one text message per frame.
pub fn serve_ws(
    socket: axum::extract::ws::WebSocket,
    peer: std::net::SocketAddr,
    service: Arc<Service>,
    gate: Gate,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    let max_frame = service.config().max_frame;
    run(
        Frames::Ws(Box::new(WsFrames::new(socket, max_frame))),
        peer,
        false,
        service,
        gate,
        shutdown,
        (),
    )
}

/// A connection not logged in: since when, and when to look again at
/// whether it presses on the node.
struct Anonymous {
    since: std::time::Instant,
    /// Counts it among its address's connections not logged in.
    _counted: crate::limits::Anonymous,
}

impl Anonymous {
    /// Why the connection must close now, if it must: the login deadline
    /// passed, or the short one did while the connection presses on the
    /// node (near the cap, a crowded address) or has sent nothing but
    /// refused frames.
    fn expired(
        &self,
        session: &Session,
        gate: &Gate,
        limits: &Limits,
        addr: AddrKey,
        now: std::time::Instant,
    ) -> Option<String> {
        let age = now.saturating_duration_since(self.since);
        if age >= limits.login_timeout {
            return Some(format!(
                "not logged in within {} s of connecting or of the last logout; closing the connection",
                limits.login_timeout.as_secs_f64()
            ));
        }
        if age < limits.login_timeout_pressed {
            return None;
        }
        let why = if session.noisy() {
            "this connection sent nothing but refused requests"
        } else {
            gate.pressure(limits, Some(addr))?
        };
        Some(format!(
            "not logged in within {} s while {why}; closing the connection",
            limits.login_timeout_pressed.as_secs_f64()
        ))
    }

    /// When to look at [`Anonymous::expired`] again, if nothing else
    /// happens first.
    fn next_check(&self, limits: &Limits, now: std::time::Instant) -> std::time::Instant {
        let pressed = self.since + limits.login_timeout_pressed;
        let next = if now < pressed {
            pressed
        } else {
            // Pressure comes and goes: look again now and then.
            now + (limits.login_timeout_pressed / 4).max(Duration::from_millis(100))
        };
        next.min(self.since + limits.login_timeout)
    }
}

/// Serves one client (`peer`: its address, from a PROXY header if a
/// trusted balancer sent one) until it leaves, misbehaves, or the server
/// shuts down: the session loop, over either transport, in a tracing span
/// that names the client's address and, once logged in, the user.
/// `classic_possible`: the original client may be on the other end (it
/// speaks plain TCP only).
///
/// A plain function, not an `async fn`: each async layer keeps its own
/// copy of its arguments for the connection's whole life, and an idle
/// connection is mostly this future.
///
/// `held` (the connection's places under the node's caps) is let go when
/// the session ends.
pub fn run<H: Send + 'static>(
    conn: Frames,
    peer: std::net::SocketAddr,
    classic_possible: bool,
    service: Arc<Service>,
    gate: Gate,
    shutdown: CancellationToken,
    held: H,
) -> impl std::future::Future<Output = ()> + Send {
    use tracing::Instrument;
    let span = tracing::info_span!("connection", %peer, user = tracing::field::Empty);
    session_loop(conn, peer, classic_possible, service, gate, shutdown, held).instrument(span)
}

/// A plain function returning an `async move` block rather than an `async
/// fn`: an `async fn` keeps its arguments twice (as passed, and as the
/// locals the body binds them to), for the connection's whole life.
#[allow(clippy::manual_async_fn)]
fn session_loop<H: Send + 'static>(
    mut conn: Frames,
    peer: std::net::SocketAddr,
    classic_possible: bool,
    service: Arc<Service>,
    gate: Gate,
    shutdown: CancellationToken,
    held: H,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let config = service.config();
        let limits = &config.limits;
        let heartbeat_timeout = config.heartbeat_timeout;
        let write_timeout = config.write_timeout;
        let addr = AddrKey::of(peer.ip());
        let mut last_heard = std::time::Instant::now();
        let mut session = service.open_session(Some(peer.ip()), classic_possible);
        if let Some(check) = conn.liveness() {
            session.set_peer_check(move || check.peer_closed(), move || check.data_age());
        }
        let kick = session.kick_token();
        tracing::debug!("connection opened");
        // Not logged in (at connect, and again after a logout).
        let mut anonymous: Option<Anonymous> = None;
        // When the next frame may leave for the original client.
        let mut next_write = std::time::Instant::now();
        loop {
            let now = std::time::Instant::now();
            let flush_at = service.cursor_flush_due(&session);
            let confirm_at = session.next_confirm_due();
            let silent_at = session.heartbeats().then(|| last_heard + heartbeat_timeout);
            let login_check = if let Some(user) = session.user_id() {
                if anonymous.take().is_some() {
                    tracing::Span::current().record("user", user.0);
                }
                conn.set_max_frame(config.max_frame);
                None
            } else {
                let anon = anonymous.get_or_insert_with(|| Anonymous {
                    since: now,
                    _counted: gate.anonymous(limits, Some(addr)),
                });
                conn.set_max_frame(limits.prelogin_max_frame.min(config.max_frame));
                // Checked here, before anything else, so that no stream of
                // frames can outrun the deadline.
                if let Some(why) = anon.expired(&session, &gate, limits, addr, now) {
                    tracing::debug!(%why, "no login in time");
                    crate::metrics::inc(&crate::metrics::METRICS.limited);
                    let out = vec![notice(ErrCode::LoginTimeout, &why)];
                    let _ = Box::pin(send_all(&mut conn, out, write_timeout, &shutdown)).await;
                    break;
                }
                Some(anon.next_check(limits, now))
            };
            let wake = [silent_at, login_check, confirm_at, flush_at]
                .into_iter()
                .flatten()
                .min();
            let (out, last) = tokio::select! {
                biased;
                _ = shutdown.cancelled() => (vec![notice(ErrCode::ShuttingDown, "server is shutting down")], true),
                _ = kick.kicked() => {
                    tracing::info!(by_same_token = kick.by_same_token(), revoked = kick.revoked(), "replaced; closing");
                    (vec![kicked_notice(&kick)], true)
                }
                frame = conn.next_frame() => match frame {
                    None => break,
                    // Boxed, like the other handlers: their state lives on the heap only
                    // while they run, so an idle connection's task stays small.
                    // A login or resume from a client that has already hung up
                    // is dropped unanswered.
                    Some(Ok(frame)) if session.user_id().is_none() && opens_session(&frame) && conn.peer_closed() => {
                        tracing::debug!("client left before its request was read");
                        break;
                    }
                    Some(Ok(frame)) => {
                        last_heard = std::time::Instant::now();
                        (Box::pin(service.handle_frame(&mut session, &frame)).await, false)
                    }
                    Some(Err(FrameError::TooLong(max))) => {
                        let msg = format!("frame longer than {max} bytes; closing the connection");
                        (vec![notice(ErrCode::FrameTooLong, &msg)], true)
                    }
                    Some(Err(FrameError::Stalled(t))) => {
                        tracing::debug!("frame stalled");
                        crate::metrics::inc(&crate::metrics::METRICS.limited);
                        let msg = format!("a frame was begun and not finished within {} s; closing the connection", t.as_secs_f64());
                        (vec![notice(ErrCode::FrameTimeout, &msg)], true)
                    }
                    Some(Err(FrameError::Io(e))) => {
                        tracing::debug!(error = %e, "read failed");
                        break;
                    }
                },
                // Stored messages waiting (after a full offline page or a
                // resync) go before live pushes, a page at a time, each page
                // only once the previous one has been written.
                _ = std::future::ready(()), if session.has_backlog() => (Box::pin(service.backlog_page(&mut session)).await, false),
                Some(push) = session.next_push() => (Box::pin(service.handle_push(&mut session, push)).await, false),
                // One timer for every deadline (each timer would stay in this
                // future for the connection's life): heartbeats missed, the
                // login check (the top of the loop decides), reads to confirm,
                // delivery positions to store (the end of the loop does).
                _ = sleep_until(wake), if wake.is_some() => {
                    let now = std::time::Instant::now();
                    if silent_at.is_some_and(|at| at <= now) {
                        tracing::debug!("heartbeats stopped");
                        (vec![notice(ErrCode::HeartbeatMissed, "no heartbeat in time; closing the connection")], true)
                    } else {
                        if confirm_at.is_some_and(|at| at <= now) {
                            service.confirm_reads(&mut session, conn.bytes_acknowledged());
                        }
                        (Vec::new(), false)
                    }
                }
            };
            let wrote = !out.is_empty();
            let sent = if session.classic() {
                let spacing = config.classic_spacing;
                Box::pin(send_spaced(
                    &mut conn,
                    out,
                    spacing,
                    &mut next_write,
                    write_timeout,
                    &shutdown,
                ))
                .await
            } else {
                Box::pin(send_all(&mut conn, out, write_timeout, &shutdown)).await
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "write failed");
                // What could not be written stays past the cursors.
                session.forget_unsaved_deliveries();
                break;
            }
            if wrote {
                service.frames_written(&mut session, conn.bytes_written());
            }
            if last {
                break;
            }
            service.flush_cursors(&mut session);
            // Over its budget: the next frame waits (and TCP pushes back on
            // the client), so a flood slows only the flooder.
            let delay = session.take_delay();
            if !delay.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        Box::pin(service.end_session(&mut session)).await;
        drop(held);
        tracing::debug!("connection closed");
    }
}

/// Whether a frame is a LOGIN or RESUME (parsed only that far).
fn opens_session(frame: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Head {
        msgid: i64,
    }
    serde_json::from_slice::<Head>(frame)
        .is_ok_and(|h| h.msgid == msgid::LOGIN || h.msgid == msgid::RESUME)
}

async fn sleep_until(at: Option<std::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Why the hub closed the session: errno 63 when another device logged
/// this one out, else errno 54 (replaced).
fn kicked_notice(kick: &crate::hub::Kick) -> Bytes {
    if kick.revoked() {
        return notice(
            ErrCode::DeviceLoggedOut,
            "this device was logged out from another of your devices; log in with your password",
        );
    }
    replaced_notice(kick.by_same_token())
}

/// Errno 54. When the newer session was opened with this session's own
/// resume token, `"resumed": true` tells a client that did not open it (an
/// attempt of its own it gave up on, carried out late) to resume again.
fn replaced_notice(by_same_token: bool) -> Bytes {
    if !by_same_token {
        return notice(ErrCode::Replaced, "this account logged in elsewhere");
    }
    Reply::fail(
        msgid::ERROR,
        &Fail::new(
            ErrCode::Replaced,
            "this session was resumed on another connection",
        ),
    )
    .with("resumed", true)
    .to_bytes()
}

fn notice(code: ErrCode, msg: &str) -> Bytes {
    Reply::fail(msgid::ERROR, &Fail::new(code, msg)).to_bytes()
}

/// Writes `frames`, giving up after `timeout`, or one second into a
/// shutdown (so that shutdown never waits on a client that does not read).
async fn send_all(
    conn: &mut Frames,
    frames: Vec<Bytes>,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), FrameError> {
    if frames.is_empty() {
        return Ok(());
    }
    let work = async { conn.write_frames(&frames).await.map_err(FrameError::from) };
    let shutdown_grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let timed_out = || {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        ))
    };
    tokio::select! {
        r = tokio::time::timeout(timeout, work) => r.unwrap_or_else(|_| Err(timed_out())),
        _ = shutdown_grace => Err(timed_out()),
    }
}

/// Writes `frames` to the original client: each cut to its one read
/// ([`classic::fit`]) and leaving `spacing` after the one before, so that
/// its one-read-per-frame reader sees them one at a time. Shutdown skips
/// the waits.
async fn send_spaced(
    conn: &mut Frames,
    frames: Vec<Bytes>,
    spacing: Duration,
    next_write: &mut std::time::Instant,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<(), FrameError> {
    for frame in frames.into_iter().flat_map(classic::fit) {
        // Most frames come after the gap has passed: no timer for them.
        if *next_write > std::time::Instant::now() {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep_until((*next_write).into()) => {}
            }
        }
        send_all(conn, vec![frame], timeout, shutdown).await?;
        *next_write = std::time::Instant::now() + spacing;
    }
    Ok(())
}

/// Tells a client the server is full, then closes. Bounded in time so a
/// flood of refused connections cannot pile up.
pub async fn refuse(mut stream: TcpStream, why: String) {
    use tokio::io::AsyncWriteExt;
    let mut frame = notice(ErrCode::ServerFull, &why).to_vec();
    frame.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&frame).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// An idle logged-in connection is mostly its session future, so its
    /// size is memory per connection: 4.3 KiB of task once nested async
    /// layers, four timers and an unboxed WebSocket were in it, 2.1 KiB
    /// since (release; a debug build lays it out a little larger).
    #[tokio::test]
    async fn an_idle_connection_s_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store: crate::store::SharedStore = Arc::new(
            crate::store::sqlite::SqliteStore::open(&url)
                .await
                .expect("store"),
        );
        let hub: Arc<dyn crate::hub::Hub> = Arc::new(crate::hub::local::LocalHub::new());
        let config = Arc::new(crate::config::Config::default());
        let service =
            Arc::new(crate::service::Service::new(store, hub, config.clone()).expect("service"));
        let frames = crate::transport::Frames::Stream(crate::transport::FrameStream::new(
            crate::transport::Link::from(tcp),
            config.max_frame,
            config.limits.frame_timeout,
        ));
        let session = super::run(
            frames,
            addr,
            true,
            service,
            crate::limits::Gate::new(10),
            tokio_util::sync::CancellationToken::new(),
            (),
        );
        let size = std::mem::size_of_val(&session);
        assert!(size <= 2048, "the session future grew to {size} bytes");
        // A push is two words: a session's queue is counted in pushes.
        assert_eq!(std::mem::size_of::<crate::model::Push>(), 16);
    }
}
