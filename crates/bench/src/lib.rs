//! The load tool's workloads, shared by the `chatbench` binary and its test.
//!
//! Everything here talks to a server the way a client does, over TCP with the
//! classic frames, so the same run works against `chatserver`, against the
//! bare [`relay`], or against anything else that speaks the protocol (the
//! original C++ server included). Figures that depend on the server process
//! (CPU per message, RSS) are read from `/proc/PID` when its PID is given.
//!
//! The hot loop reads and writes raw frames instead of going through
//! [`chat::client::Client`]: the load generator must cost as little as
//! possible, so that the server, not the tool, is what is measured.

pub mod plot;
pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use chat::model::UserId;
use chat::protocol::codec::FrameCodec;
use chat::protocol::msgid;
use chat::protocol::requests::{self as wire, Call};

/// Why a workload could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("{0}")]
    Client(#[from] chat::client::ClientError),
    #[error("{0}")]
    Protocol(String),
    #[error("refused with errno {errno}: {frame}")]
    Refused { errno: i64, frame: String },
}

/// The reading half of a connection, plain or TLS.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection, plain or TLS.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;
/// The reading side of a logged-in connection.
pub type Reader = FramedRead<ReadHalf, FrameCodec>;

/// Set once by the tool: every connection it opens afterwards speaks TLS.
static TLS: std::sync::OnceLock<chat::tls::TlsClient> = std::sync::OnceLock::new();

/// Makes every connection the load tool opens from now on run a TLS
/// handshake first (the server's `--tls-listen`). Once per process: false
/// if it was already set.
pub fn use_tls(tls: chat::tls::TlsClient) -> bool {
    TLS.set(tls).is_ok()
}

/// Where the tool's `Client`s connect (plain, or TLS after [`use_tls`]).
fn endpoint(addr: &str) -> chat::client::Endpoint {
    chat::client::Endpoint {
        addr: addr.to_owned(),
        tls: TLS.get().cloned(),
    }
}

/// The few fields the tool reads from a frame.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default)]
    msgid: i64,
    #[serde(default)]
    errno: i64,
    #[serde(default, borrow)]
    msg: Option<std::borrow::Cow<'a, str>>,
}

fn head(frame: &[u8]) -> Option<Head<'_>> {
    serde_json::from_slice(frame).ok()
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// Resident memory of a process in bytes, from `/proc/PID/status`.
pub fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Registers `n` users named `{prefix}{i}`, `concurrency` at a time; returns
/// their ids in order.
pub async fn register_users(
    addr: &str,
    prefix: &str,
    password: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<UserId>, BenchError> {
    let mut ids = vec![UserId(0); n];
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (addr, prefix, password, next) = (
            addr.to_owned(),
            prefix.to_owned(),
            password.to_owned(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut client = endpoint(&addr).connect().await?;
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                mine.push((
                    i,
                    client.register(&format!("{prefix}{i}"), &password).await?,
                ));
            }
            Ok::<_, BenchError>(mine)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let mine = done.map_err(|e| BenchError::Protocol(e.to_string()))??;
        for (i, id) in mine {
            ids[i] = id;
        }
    }
    Ok(ids)
}

/// Connects and logs in with raw frames; returns the connection's halves
/// once the login reply (with any offline messages) has been read.
pub async fn login_raw(
    addr: &str,
    id: UserId,
    password: &str,
) -> Result<(Reader, WriteHalf), BenchError> {
    request_raw(
        connect_from(addr, None).await?,
        &login_request(id, password),
    )
    .await
}

/// Logs in exactly as the original client does: its login frame (keys in
/// nlohmann::json's sorted order, NUL-terminated) and no `reqid`, so that
/// the server treats the session as the original client's (unanswered
/// chat requests, spaced pushes, reads confirmed after a grace period).
pub async fn login_original(
    addr: &str,
    id: UserId,
    password: &str,
) -> Result<(Reader, WriteHalf), BenchError> {
    let (r, mut w) = connect_from(addr, None).await?;
    let mut reader = FramedRead::new(r, FrameCodec::new(64 << 20));
    let mut frame = serde_json::to_vec(&serde_json::json!({
        "msgid": msgid::LOGIN, "id": id, "password": password,
    }))
    .map_err(|e| BenchError::Protocol(format!("login frame: {e}")))?;
    frame.push(0);
    w.write_all(&frame)
        .await
        .map_err(|e| BenchError::Io("send", e))?;
    loop {
        let frame = match reader.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(BenchError::Protocol(format!("read: {e}"))),
            None => return Err(BenchError::Protocol("connection closed".into())),
        };
        let Some(h) = head(&frame) else { continue };
        if h.msgid == msgid::LOGIN_ACK || h.msgid == msgid::ERROR {
            if h.errno != 0 {
                return Err(BenchError::Refused {
                    errno: h.errno,
                    frame: String::from_utf8_lossy(&frame).into_owned(),
                });
            }
            return Ok((reader, w));
        }
    }
}

/// ONE_CHAT exactly as the original client writes it: `id`, `name` and
/// `time` included (the server ignores them), keys sorted as nlohmann::json
/// sorts them, NUL-terminated, no `reqid`.
fn original_chat_frame(from: UserId, to: UserId, msg: &str) -> Vec<u8> {
    let mut frame = serde_json::to_vec(&serde_json::json!({
        "msgid": msgid::ONE_CHAT, "id": from, "name": format!("user{from}"), "toid": to,
        "msg": msg, "time": "2026-12-06 12:00:00",
    }))
    .unwrap_or_default();
    frame.push(0);
    frame
}

/// Connects to `addr`, from `source` (an IP on this machine) if given:
/// spreading connections over loopback sources lifts the limit of about
/// 28,000 ephemeral ports per source address. Runs the TLS handshake if
/// [`use_tls`] was called.
pub async fn connect_from(
    addr: &str,
    source: Option<std::net::IpAddr>,
) -> Result<(ReadHalf, WriteHalf), BenchError> {
    let stream = match source {
        None => TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::Io("connect", e))?,
        Some(ip) => {
            let target: std::net::SocketAddr = tokio::net::lookup_host(addr)
                .await
                .map_err(|e| BenchError::Io("resolve", e))?
                .next()
                .ok_or_else(|| BenchError::Protocol(format!("{addr} resolves to nothing")))?;
            let socket =
                tokio::net::TcpSocket::new_v4().map_err(|e| BenchError::Io("socket", e))?;
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .map_err(|e| BenchError::Io("bind source", e))?;
            socket
                .connect(target)
                .await
                .map_err(|e| BenchError::Io("connect", e))?
        }
    };
    let _ = stream.set_nodelay(true);
    match TLS.get() {
        None => {
            let (r, w) = stream.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Some(tls) => {
            let tls = tls
                .connect(stream)
                .await
                .map_err(|e| BenchError::Io("TLS handshake", e))?;
            let (r, w) = tokio::io::split(tls);
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// Sends one request frame and reads until the reply `want` arrives.
/// A refusal notice (msgid 100, e.g. errno 51 at the connection cap) or an
/// error reply is an error.
pub async fn request_raw<C: Call>(
    (r, mut w): (ReadHalf, WriteHalf),
    request: &C,
) -> Result<(Reader, WriteHalf), BenchError> {
    let mut reader = FramedRead::new(r, FrameCodec::new(64 << 20));
    exchange(&mut reader, &mut w, request).await?;
    Ok((reader, w))
}

/// A ONE_CHAT frame with its terminator, ready to write.
fn chat_frame(toid: UserId, msg: String) -> Vec<u8> {
    let mut frame = wire::frame(
        &wire::OneChat {
            toid,
            msg,
            cmid: None,
        },
        None,
    );
    frame.push(0);
    frame
}

fn login_request(id: UserId, password: &str) -> wire::Login {
    wire::Login {
        id,
        password: password.to_owned(),
        acks: false,
        device: None,
    }
}

/// One-to-one chat between pairs. Closed loop: each sender sends, waits
/// until its receiver has the message, and sends the next. Open loop
/// (`rate`): each sender sends on a fixed schedule.
#[derive(Debug, Clone)]
pub struct PairsOptions {
    pub addr: String,
    /// Where receivers log in (another node of a cluster); `addr` if `None`.
    pub recv_addr: Option<String>,
    pub pairs: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The server side's PIDs (nodes, database, Redis), for CPU per message.
    pub server_pids: Vec<u32>,
    /// Named groups of PIDs (`node`, `redis`, `db`, ...), each reported
    /// with its own CPU per message.
    pub tiers: Vec<(String, Vec<u32>)>,
    /// Whether the server acknowledges each message (the relay does not).
    pub expect_acks: bool,
    /// The users: `2 * pairs` ids, senders first, all with `password`.
    pub users: Vec<UserId>,
    pub password: String,
    /// Bytes of filler in each message body.
    pub body_len: usize,
    /// Open loop: messages per second over all pairs, each pair sending on
    /// a fixed schedule whatever the server does. Latency is then measured
    /// from when a message was due, not when it left, so a stalled server
    /// cannot hide its stall by slowing the senders down (no coordinated
    /// omission). `None`: closed loop.
    pub rate: Option<f64>,
    /// Log in and send exactly as the original client does
    /// ([`login_original`]); such a session gets no acknowledgements.
    pub original_frames: bool,
}

/// What one pairs run measured: its window, and every message's fate.
#[derive(Debug, Clone, Serialize)]
pub struct PairsReport {
    pub pairs: usize,
    #[serde(flatten)]
    pub window: Window,
    /// Messages sent in the whole run, acknowledged, and refused.
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    delivered: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    /// Delivery latency in the current window, in microseconds.
    hist: std::sync::Mutex<Histogram<u64>>,
}

/// Messages of one open-loop pair whose start times are remembered (far more
/// than can be in flight).
const IN_FLIGHT_SLOTS: usize = 1 << 16;

fn slot(k: u64) -> usize {
    (k % IN_FLIGHT_SLOTS as u64) as usize
}

fn histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Protocol(e.to_string()))
}

/// What one measurement window saw: messages delivered in it, their
/// latency, and the server side's CPU per message.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub seconds: f64,
    pub delivered: u64,
    pub msg_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub server_cpu_us_per_msg: Option<f64>,
    pub server_core_share: Option<f64>,
    /// CPU per delivered message of each named tier, in µs.
    pub tier_cpu_us_per_msg: Vec<(String, Option<f64>)>,
    /// The window's latency histogram (µs), for `--plot`.
    #[serde(skip)]
    pub latency: Option<Histogram<u64>>,
}

/// Closed-loop pairs running in the background; measured in windows.
pub struct PairsRun {
    shared: Arc<Shared>,
    tasks: tokio::task::JoinSet<Result<WriteHalf, BenchError>>,
    /// Acknowledgement counters and, in an open loop, the receivers.
    readers: tokio::task::JoinSet<()>,
    server_pids: Vec<u32>,
    tiers: Vec<(String, Vec<u32>)>,
    expect_acks: bool,
}

/// CPU time used by all of `pids`; `None` if any cannot be read.
pub fn processes_cpu(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| process_cpu(p)).sum()
}

impl PairsRun {
    /// Logs the pairs in and starts them.
    pub async fn start(opts: &PairsOptions) -> Result<Self, BenchError> {
        if opts.users.len() < 2 * opts.pairs {
            return Err(BenchError::Protocol(format!(
                "{} pairs need {} users, got {}",
                opts.pairs,
                2 * opts.pairs,
                opts.users.len()
            )));
        }
        let shared = Arc::new(Shared {
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            hist: std::sync::Mutex::new(histogram()?),
        });
        let filler = "x".repeat(opts.body_len);
        let mut conns = Vec::with_capacity(opts.pairs);
        for p in 0..opts.pairs {
            let (from, to) = (opts.users[p], opts.users[opts.pairs + p]);
            let recv_addr = opts.recv_addr.as_deref().unwrap_or(&opts.addr);
            let (sender, receiver) = if opts.original_frames {
                (
                    login_original(&opts.addr, from, &opts.password).await?,
                    login_original(recv_addr, to, &opts.password).await?,
                )
            } else {
                (
                    login_raw(&opts.addr, from, &opts.password).await?,
                    login_raw(recv_addr, to, &opts.password).await?,
                )
            };
            conns.push((from, to, sender, receiver));
        }
        let original = opts.original_frames;
        let frame_for = move |from: UserId, to: UserId, msg: String| {
            if original {
                original_chat_frame(from, to, &msg)
            } else {
                chat_frame(to, msg)
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        let mut readers = tokio::task::JoinSet::new();
        // Open loop: pairs start spread over one interval, not in a burst.
        let base = Instant::now();
        for (p, (from, to, (mut acks, mut out), (mut inbox, inbox_writer))) in
            conns.into_iter().enumerate()
        {
            let shared2 = shared.clone();
            readers.spawn(async move {
                while let Some(Ok(frame)) = acks.next().await {
                    if let Some(h) = head(&frame)
                        && h.msgid == msgid::ack_for(msgid::ONE_CHAT)
                    {
                        let counter = if h.errno == 0 {
                            &shared2.acked
                        } else {
                            &shared2.refused
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let shared = shared.clone();
            let filler = filler.clone();
            if let Some(rate) = opts.rate {
                let interval =
                    Duration::from_secs_f64(opts.pairs as f64 / rate.max(f64::MIN_POSITIVE));
                let start = base + interval.mul_f64(p as f64 / opts.pairs.max(1) as f64);
                let due = move |k: u64| {
                    start + interval.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX))
                };
                // When each message counts from (nanoseconds after `start`):
                // its due time if the sender was held up by the server (a
                // previous write still blocked), else the moment the sender's
                // timer fired, so that the timer's own lateness (tokio's is
                // up to a millisecond) is not charged to the server.
                let since: Arc<Vec<AtomicU64>> =
                    Arc::new((0..IN_FLIGHT_SLOTS).map(|_| AtomicU64::new(0)).collect());
                let since_w = since.clone();
                let nanos = move |t: Instant| {
                    u64::try_from(t.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
                };
                let reader = shared.clone();
                readers.spawn(async move {
                    let _inbox_writer = inbox_writer;
                    while let Some(Ok(frame)) = inbox.next().await {
                        let Some(h) = head(&frame) else { continue };
                        let k = h
                            .msg
                            .as_deref()
                            .and_then(|m| m.split(' ').next()?.parse().ok());
                        if let (msgid::ONE_CHAT, Some(k)) = (h.msgid, k)
                            && reader.measuring.load(Ordering::Relaxed)
                        {
                            let counts_from = since[slot(k)].load(Ordering::Relaxed);
                            let late = nanos(Instant::now()).saturating_sub(counts_from);
                            let us = late / 1000;
                            if let Ok(mut hist) = reader.hist.lock() {
                                let _ = hist.record(us.max(1));
                            }
                            reader.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                tasks.spawn(async move {
                    let mut k: u64 = 0;
                    let mut last_done = start;
                    while !shared.stop.load(Ordering::Relaxed) {
                        k += 1;
                        tokio::time::sleep_until(due(k).into()).await;
                        let counts_from = if last_done > due(k) {
                            due(k)
                        } else {
                            Instant::now()
                        };
                        since_w[slot(k)].store(nanos(counts_from), Ordering::Relaxed);
                        let frame = frame_for(from, to, format!("{k} {filler}"));
                        out.write_all(&frame)
                            .await
                            .map_err(|e| BenchError::Io("send", e))?;
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        last_done = Instant::now();
                    }
                    Ok(out)
                });
                continue;
            }
            tasks.spawn(async move {
                // Dropping the receiver's write half would end its session.
                let _inbox_writer = inbox_writer;
                let mut k: u64 = 0;
                while !shared.stop.load(Ordering::Relaxed) {
                    k += 1;
                    let token = format!("{k} {filler}");
                    let frame = frame_for(from, to, token.clone());
                    let t0 = Instant::now();
                    out.write_all(&frame)
                        .await
                        .map_err(|e| BenchError::Io("send", e))?;
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                    // Wait for this very message at the receiver.
                    loop {
                        let frame: Bytes = match inbox.next().await {
                            Some(Ok(f)) => f,
                            Some(Err(e)) => return Err(BenchError::Protocol(format!("read: {e}"))),
                            None => return Err(BenchError::Protocol("receiver closed".into())),
                        };
                        let Some(h) = head(&frame) else { continue };
                        if h.msgid == msgid::ONE_CHAT && h.msg.as_deref() == Some(token.as_str()) {
                            break;
                        }
                    }
                    if shared.measuring.load(Ordering::Relaxed) {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        if let Ok(mut hist) = shared.hist.lock() {
                            let _ = hist.record(us.max(1));
                        }
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The sender's write half outlives the loop: closing it now
                // would end the session before its last acks arrive (nginx
                // closes both directions when the client closes one).
                Ok(out)
            });
        }
        Ok(PairsRun {
            shared,
            tasks,
            readers,
            server_pids: opts.server_pids.clone(),
            tiers: opts.tiers.clone(),
            expect_acks: opts.expect_acks && !opts.original_frames,
        })
    }

    /// Measures while `during` runs, and returns its output with the window.
    /// On a terminal a progress bar shows the window so far (`expected`
    /// gives its length, when known).
    pub async fn measure<T>(
        &self,
        label: &str,
        expected: Option<Duration>,
        during: impl std::future::Future<Output = T>,
    ) -> (T, Window) {
        if let Ok(mut hist) = self.shared.hist.lock() {
            hist.reset();
        }
        let delivered0 = self.shared.delivered.load(Ordering::Relaxed);
        let cpu0 = processes_cpu(&self.server_pids);
        let tiers0: Vec<_> = self.tiers.iter().map(|(_, p)| processes_cpu(p)).collect();
        let t0 = Instant::now();
        self.shared.measuring.store(true, Ordering::Relaxed);
        let bar = progress_bar(label, expected);
        let out = {
            let during = std::pin::pin!(during);
            let ticks = async {
                let mut every = tokio::time::interval(Duration::from_millis(200));
                loop {
                    every.tick().await;
                    let (secs, n) = (
                        t0.elapsed().as_secs_f64(),
                        self.shared.delivered.load(Ordering::Relaxed) - delivered0,
                    );
                    bar.tick();
                    bar.set_position(t0.elapsed().as_millis().try_into().unwrap_or(u64::MAX));
                    bar.set_message(format!(
                        "{n} delivered, {:.0} msg/s",
                        n as f64 / secs.max(1e-3)
                    ));
                }
            };
            tokio::select! {
                out = during => out,
                never = ticks => never,
            }
        };
        bar.finish_and_clear();
        self.shared.measuring.store(false, Ordering::Relaxed);
        let seconds = t0.elapsed().as_secs_f64();
        let cpu1 = processes_cpu(&self.server_pids);
        let delivered = self.shared.delivered.load(Ordering::Relaxed) - delivered0;
        let tier_cpu_us_per_msg = self
            .tiers
            .iter()
            .zip(tiers0)
            .map(|((name, pids), before)| {
                let used = before
                    .zip(processes_cpu(pids))
                    .map(|(a, b)| b.saturating_sub(a));
                let per = used
                    .filter(|_| delivered > 0)
                    .map(|c| c.as_secs_f64() * 1e6 / delivered as f64);
                (name.clone(), per)
            })
            .collect();
        let cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
        let q = |hist: &Histogram<u64>, q: f64| hist.value_at_quantile(q);
        let (p50_us, p99_us, p999_us, max_us, latency) = match self.shared.hist.lock() {
            Ok(h) => (
                q(&h, 0.5),
                q(&h, 0.99),
                q(&h, 0.999),
                h.max(),
                Some(h.clone()),
            ),
            Err(_) => (0, 0, 0, 0, None),
        };
        let window = Window {
            seconds,
            delivered,
            msg_per_s: delivered as f64 / seconds,
            p50_us,
            p99_us,
            p999_us,
            max_us,
            server_cpu_us_per_msg: cpu
                .filter(|_| delivered > 0)
                .map(|c| c.as_secs_f64() * 1e6 / delivered as f64),
            server_core_share: cpu.map(|c| c.as_secs_f64() / seconds),
            tier_cpu_us_per_msg,
            latency,
        };
        (out, window)
    }

    /// Stops the pairs; returns messages sent, acknowledged and refused.
    pub async fn stop(mut self) -> Result<(u64, u64, u64), BenchError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut senders = Vec::new();
        while let Some(done) = self.tasks.join_next().await {
            senders.push(done.map_err(|e| BenchError::Protocol(e.to_string()))??);
        }
        // Let the last acknowledgements arrive.
        let shared = &self.shared;
        if self.expect_acks {
            let deadline = Instant::now() + Duration::from_secs(5);
            while shared.acked.load(Ordering::Relaxed) + shared.refused.load(Ordering::Relaxed)
                < shared.sent.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.readers.abort_all();
        drop(senders);
        Ok((
            shared.sent.load(Ordering::Relaxed),
            shared.acked.load(Ordering::Relaxed),
            shared.refused.load(Ordering::Relaxed),
        ))
    }
}

/// A bar on stderr while a window runs; drawn only on a terminal, so logs
/// and the JSON line on stdout stay clean.
fn progress_bar(label: &str, expected: Option<Duration>) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match expected {
        Some(d) => {
            let bar = ProgressBar::new(d.as_millis().try_into().unwrap_or(u64::MAX));
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:>12} [{bar:30}] {elapsed_precise} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:>12} {spinner} {elapsed_precise} {msg}")
            {
                bar.set_style(style);
            }
            bar
        }
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.set_prefix(label.to_owned());
    bar
}

/// Runs pairs (closed or open loop) and reports what the window measured.
pub async fn pairs(opts: &PairsOptions) -> Result<PairsReport, BenchError> {
    let run = PairsRun::start(opts).await?;
    tokio::time::sleep(opts.warmup).await;
    let ((), w) = run
        .measure(
            "pairs",
            Some(opts.duration),
            tokio::time::sleep(opts.duration),
        )
        .await;
    let (sent, acked, refused) = run.stop().await?;
    Ok(PairsReport {
        pairs: opts.pairs,
        window: w,
        sent,
        acked,
        refused,
    })
}

/// Delivery latency of chatting users, quiet and during a login storm.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub pairs: usize,
    pub quiet: Window,
    pub storm: Window,
    pub logins: LoginsReport,
    /// Storm p50 over quiet p50, and the same for p99.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

/// Runs `pairs`, measures a quiet window, then a window during which all of
/// `storm` log in at once (with their passwords, the expensive part).
pub async fn storm(
    pairs_opts: &PairsOptions,
    storm: &LoginsOptions,
) -> Result<StormReport, BenchError> {
    let run = PairsRun::start(pairs_opts).await?;
    tokio::time::sleep(pairs_opts.warmup).await;
    let ((), quiet) = run
        .measure(
            "quiet",
            Some(pairs_opts.duration),
            tokio::time::sleep(pairs_opts.duration),
        )
        .await;
    let (logins, storm_window) = run.measure("login storm", None, logins(storm)).await;
    let (logins, held) = logins?;
    run.stop().await?;
    drop(held);
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    Ok(StormReport {
        pairs: pairs_opts.pairs,
        p50_ratio: ratio(storm_window.p50_us, quiet.p50_us),
        p99_ratio: ratio(storm_window.p99_us, quiet.p99_us),
        quiet,
        storm: storm_window,
        logins,
    })
}

/// Many users logged in at once: what the server holds for them.
#[derive(Debug, Clone)]
pub struct LoginsOptions {
    pub addr: String,
    pub users: Vec<UserId>,
    pub password: String,
    /// Logins in flight at once.
    pub concurrency: usize,
    pub server_pid: Option<u32>,
    /// Index of this run's first connection over all processes of a run
    /// (which loopback source it starts on).
    pub first_source: usize,
}

/// Connections per loopback source address.
pub const PER_SOURCE: usize = 10_000;

/// The loopback source for the `i`-th connection of a run: 127.0.1.x, ...
pub fn source_ip(i: usize) -> Option<std::net::IpAddr> {
    let n = i / PER_SOURCE;
    let (hi, lo) = (
        u8::try_from(1 + n / 250).ok()?,
        u8::try_from(1 + n % 250).ok()?,
    );
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127, 0, hi, lo,
    )))
}

/// What holding the logins cost the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginsReport {
    pub logins: usize,
    /// Logins refused because the server was at its connection cap (errno 51).
    pub refused_full: usize,
    /// Logins that failed otherwise, and the first such failure.
    pub failed: usize,
    pub first_failure: Option<String>,
    pub seconds: f64,
    pub logins_per_s: f64,
    /// Server RSS before the logins, with all of them held, and per held
    /// connection (the difference over the count).
    pub rss_before: Option<u64>,
    pub rss_logged_in: Option<u64>,
    pub rss_per_connection: Option<f64>,
}

/// Logs every user in, `concurrency` at a time, and holds the connections
/// while the server's memory is read; returns them so the caller can keep
/// holding them.
pub async fn logins(
    opts: &LoginsOptions,
) -> Result<(LoginsReport, Vec<(Reader, WriteHalf)>), BenchError> {
    let rss_before = opts.server_pid.and_then(process_rss);
    let started = Instant::now();
    let mut held = Vec::with_capacity(opts.users.len());
    let mut pending = futures_util::stream::iter(opts.users.iter().enumerate().map(|(i, &id)| {
        let (addr, password) = (opts.addr.clone(), opts.password.clone());
        let source = source_ip(opts.first_source + i);
        async move {
            request_raw(
                connect_from(&addr, source).await?,
                &login_request(id, &password),
            )
            .await
        }
    }))
    .buffer_unordered(opts.concurrency.max(1));
    let (mut refused, mut failed, mut first_failure) = (0, 0, None);
    while let Some(conn) = pending.next().await {
        match conn {
            Ok(conn) => held.push(conn),
            Err(BenchError::Refused { errno: 51, .. }) => refused += 1,
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Let the server settle (cursor loads, presence) before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_logged_in = opts.server_pid.and_then(process_rss);
    let n = held.len();
    Ok((
        LoginsReport {
            logins: n,
            refused_full: refused,
            failed,
            first_failure,
            seconds,
            logins_per_s: n as f64 / seconds,
            rss_before,
            rss_logged_in,
            rss_per_connection: rss_before
                .zip(rss_logged_in)
                .filter(|_| n > 0)
                .map(|(a, b)| (b as f64 - a as f64) / n as f64),
        },
        held,
    ))
}

/// Password logins against resumes of the same users, in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumesReport {
    pub users: usize,
    pub logins_per_s: f64,
    pub resumes: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
    pub seconds: f64,
    pub resumes_per_s: f64,
    /// The rate of each round of resumes.
    pub rounds: Vec<f64>,
}

/// Logs every user in with its password (keeping the resume tokens), drops
/// the connections as a dying node would, then has every user resume,
/// `concurrency` at a time: the rate at which a node takes users back.
pub async fn resumes(
    addr: &str,
    users: &[UserId],
    password: &str,
    concurrency: usize,
    rounds: usize,
) -> Result<ResumesReport, BenchError> {
    let started = Instant::now();
    let tokens: Vec<Result<String, BenchError>> =
        futures_util::stream::iter(users.iter().map(|&id| async move {
            let (r, mut w) = connect_from(addr, None).await?;
            let mut reader = FramedRead::new(r, FrameCodec::new(64 << 20));
            let reply = exchange(&mut reader, &mut w, &login_request(id, password)).await?;
            reply
                .token
                .ok_or_else(|| BenchError::Protocol("login reply without a token".into()))
        }))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let logins_per_s = users.len() as f64 / started.elapsed().as_secs_f64();
    let tokens: Vec<String> = tokens.into_iter().collect::<Result<_, _>>()?;
    let (mut resumed, mut failed, mut first_failure, mut seconds) = (0, 0, None, 0.0);
    let mut rates = Vec::new();
    for _ in 0..rounds.max(1) {
        // The connections are closed; let the server take them offline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let round = resume_all(addr, &tokens, concurrency).await;
        resumed += round.0;
        failed += round.1;
        first_failure = first_failure.or(round.2);
        seconds += round.3;
        rates.push(round.0 as f64 / round.3);
    }
    Ok(ResumesReport {
        users: users.len(),
        logins_per_s,
        resumes: resumed,
        failed,
        first_failure,
        seconds,
        resumes_per_s: resumed as f64 / seconds,
        rounds: rates,
    })
}

/// One round: every token resumes, `concurrency` at a time; the sessions
/// are held until all are in. Resumed, failed, the first failure, seconds.
async fn resume_all(
    addr: &str,
    tokens: &[String],
    concurrency: usize,
) -> (usize, usize, Option<String>, f64) {
    let started = Instant::now();
    let mut pending = futures_util::stream::iter(tokens.iter().map(|token| async move {
        let resume = wire::Resume {
            token: token.clone(),
            acks: false,
            device: None,
        };
        request_raw(connect_from(addr, None).await?, &resume).await
    }))
    .buffer_unordered(concurrency.max(1));
    let (mut held, mut failed, mut first_failure) = (Vec::new(), 0, None);
    while let Some(conn) = pending.next().await {
        match conn {
            Ok(conn) => held.push(conn),
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (
        held.len(),
        failed,
        first_failure,
        started.elapsed().as_secs_f64(),
    )
}

/// Sends `request` and reads until its reply (pushes in between are
/// skipped); returns the reply, typed.
pub async fn exchange<C: Call>(
    reader: &mut Reader,
    writer: &mut WriteHalf,
    request: &C,
) -> Result<C::Reply, BenchError> {
    let want = msgid::ack_for(C::MSGID);
    // A reqid declares the session ours, not the original client's: it
    // gets every reply, at full speed (the original client's frames are
    // spaced; `docs/protocol.md`).
    let mut frame = wire::frame(request, Some(1));
    frame.push(0);
    writer
        .write_all(&frame)
        .await
        .map_err(|e| BenchError::Io("send", e))?;
    loop {
        let frame = match reader.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(BenchError::Protocol(format!("read: {e}"))),
            None => return Err(BenchError::Protocol("connection closed".into())),
        };
        let Some(h) = head(&frame) else { continue };
        if h.msgid == want || h.msgid == msgid::ERROR {
            if h.errno != 0 {
                return Err(BenchError::Refused {
                    errno: h.errno,
                    frame: String::from_utf8_lossy(&frame).into_owned(),
                });
            }
            return serde_json::from_slice(&frame)
                .map_err(|e| BenchError::Protocol(format!("reply {want}: {e}")));
        }
    }
}

/// One sender, one group, every member online.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub addr: String,
    /// The sender first, then the members.
    pub users: Vec<UserId>,
    pub password: String,
    /// Messages sent, each once the previous one reached everybody.
    pub messages: usize,
    pub server_pid: Option<u32>,
}

/// How long a group message took to reach all of its members.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub members: usize,
    pub messages: usize,
    /// Time from sending until the last member had it.
    pub all_p50_ms: f64,
    pub all_max_ms: f64,
    /// Time until half of the members had it (median over messages).
    pub half_p50_ms: f64,
    pub server_cpu_ms_per_message: Option<f64>,
}

/// Group fan-out: logs everybody in, puts them in one group, and times each
/// message until every member (the sender excluded) has it.
pub async fn fanout(opts: &FanoutOptions) -> Result<FanoutReport, BenchError> {
    let (sender, members) = opts
        .users
        .split_first()
        .ok_or_else(|| BenchError::Protocol("fan-out needs users".into()))?;
    let (mut sr, mut sw) = login_raw(&opts.addr, *sender, &opts.password).await?;
    let name = format!("fanout-{}-{}", std::process::id(), chat::store::now_ms());
    let create = wire::CreateGroup {
        groupname: name,
        groupdesc: Some("bench".into()),
        private: false,
    };
    let group = exchange(&mut sr, &mut sw, &create).await?.groupid;
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut tasks = tokio::task::JoinSet::new();
    let joins = futures_util::stream::iter(members.iter().enumerate().map(|(i, &id)| {
        let (addr, password) = (opts.addr.clone(), opts.password.clone());
        async move {
            let source = source_ip(i);
            let (mut r, mut w) = request_raw(
                connect_from(&addr, source).await?,
                &login_request(id, &password),
            )
            .await?;
            exchange(&mut r, &mut w, &wire::AddGroup { groupid: group }).await?;
            Ok::<_, BenchError>((r, w))
        }
    }))
    .buffer_unordered(64);
    let joined: Vec<_> = joins.collect().await;
    for conn in joined {
        let (mut r, w) = conn?;
        let arrived = arrived.clone();
        tasks.spawn(async move {
            let _w = w;
            while let Some(Ok(frame)) = r.next().await {
                if let Some(h) = head(&frame)
                    && h.msgid == msgid::GROUP_CHAT
                    && let Some(k) = h.msg.as_deref().and_then(|m| m.parse().ok())
                    && arrived.send(k).is_err()
                {
                    break;
                }
            }
        });
    }
    let n = members.len();
    let cpu0 = opts.server_pid.and_then(process_cpu);
    let (mut all, mut half) = (Vec::new(), Vec::new());
    for k in 1..=opts.messages as u64 {
        let mut frame = wire::frame(
            &wire::GroupChat {
                groupid: group,
                msg: k.to_string(),
                cmid: None,
            },
            None,
        );
        frame.push(0);
        let t0 = Instant::now();
        sw.write_all(&frame)
            .await
            .map_err(|e| BenchError::Io("send", e))?;
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got < n {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(seen)) if seen == k => {
                    got += 1;
                    if got == n.div_ceil(2) {
                        half.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(BenchError::Protocol(format!(
                        "message {k} reached {got} of {n} members in 30 s"
                    )));
                }
            }
        }
        all.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = cpu0
        .zip(opts.server_pid.and_then(process_cpu))
        .map(|(a, b)| b.saturating_sub(a));
    tasks.abort_all();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    Ok(FanoutReport {
        members: n,
        messages: opts.messages,
        all_p50_ms: med(&mut all),
        all_max_ms: all.last().copied().unwrap_or(0.0),
        half_p50_ms: med(&mut half),
        server_cpu_ms_per_message: cpu
            .filter(|_| opts.messages > 0)
            .map(|c| c.as_secs_f64() * 1e3 / opts.messages as f64),
    })
}

/// Readers that read as the original client does, each sent a burst by
/// several senders at once: how many of its reads it could not have parsed.
#[derive(Debug, Clone)]
pub struct ClassicOptions {
    pub addr: String,
    /// `readers` reader ids, then `senders` sender ids per reader.
    pub users: Vec<UserId>,
    pub password: String,
    pub readers: usize,
    pub senders: usize,
    /// Messages each sender sends its reader, all in one write.
    pub messages: usize,
    /// What the reader spends per read (the original prints each frame).
    pub pause: Duration,
}

/// What [`classic`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct ClassicReport {
    pub readers: usize,
    pub senders: usize,
    pub messages: usize,
    /// Messages that reached the readers (in readable reads or not).
    pub delivered: u64,
    pub reads: u64,
    /// Reads holding more than one frame, part of one, or a full buffer:
    /// each would have crashed the original client.
    pub unreadable: u64,
    /// Time from the burst until a reader had all of its messages.
    pub all_ms_p50: f64,
    pub all_ms_max: f64,
}

/// Runs the classic-reader workload (`chatbench classic`).
pub async fn classic(opts: &ClassicOptions) -> Result<ClassicReport, BenchError> {
    use tokio::io::AsyncReadExt;
    let need = opts.readers * (1 + opts.senders);
    if opts.users.len() < need {
        return Err(BenchError::Protocol(format!(
            "{need} users needed, got {}",
            opts.users.len()
        )));
    }
    let expected = opts.senders * opts.messages;
    let reads = Arc::new(AtomicU64::new(0));
    let unreadable = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Notify::new());
    let t0 = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut readers = tokio::task::JoinSet::new();
    let mut senders = Vec::new();
    for r in 0..opts.readers {
        // The reader logs in exactly as the original does: no reqid.
        let (mut rd, mut wr) = connect_from(&opts.addr, None).await?;
        let mut login = wire::frame(&login_request(opts.users[r], &opts.password), None);
        login.push(0);
        wr.write_all(&login)
            .await
            .map_err(|e| BenchError::Io("login", e))?;
        let mut buf = [0u8; 1024];
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| BenchError::Io("login reply", e))?;
        match head(&buf[..n]) {
            Some(h) if h.msgid == msgid::LOGIN_ACK && h.errno == 0 => {}
            _ => {
                return Err(BenchError::Protocol(format!(
                    "classic login: {}",
                    String::from_utf8_lossy(&buf[..n])
                )));
            }
        }
        for s in 0..opts.senders {
            let id = opts.users[opts.readers + r * opts.senders + s];
            senders.push((
                login_raw(&opts.addr, id, &opts.password).await?,
                opts.users[r],
            ));
        }
        let (reads, unreadable, delivered, t0) = (
            reads.clone(),
            unreadable.clone(),
            delivered.clone(),
            t0.clone(),
        );
        let pause = opts.pause;
        readers.spawn(async move {
            let _wr = wr;
            let mut mine = 0;
            while mine < expected {
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf));
                let n = match read.await {
                    Ok(Ok(0) | Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                };
                reads.fetch_add(1, Ordering::Relaxed);
                let chats = buf[..n].windows(9).filter(|w| w == b"\"msgid\":6").count();
                let whole =
                    n < buf.len() && serde_json::from_slice::<serde_json::Value>(&buf[..n]).is_ok();
                if !whole {
                    unreadable.fetch_add(1, Ordering::Relaxed);
                }
                mine += chats;
                delivered.fetch_add(chats as u64, Ordering::Relaxed);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            t0.get().map(|t| t.elapsed())
        });
    }
    // Every sender writes its whole burst at the same moment.
    let mut bursts = tokio::task::JoinSet::new();
    for (k, ((mut replies, mut out), to)) in senders.into_iter().enumerate() {
        let start = start.clone();
        let frames: Vec<u8> = (0..opts.messages)
            .flat_map(|i| chat_frame(to, format!("{k}-{i}")))
            .collect();
        bursts.spawn(async move {
            start.notified().await;
            out.write_all(&frames)
                .await
                .map_err(|e| BenchError::Io("send", e))?;
            // Drain the send replies until the readers are done.
            while let Some(Ok(_)) = replies.next().await {}
            Ok::<_, BenchError>(())
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = t0.set(Instant::now());
    start.notify_waiters();
    let mut times = Vec::new();
    while let Some(done) = readers.join_next().await {
        if let Ok(Some(t)) = done {
            times.push(t.as_secs_f64() * 1000.0);
        }
    }
    bursts.abort_all();
    times.sort_by(f64::total_cmp);
    Ok(ClassicReport {
        readers: opts.readers,
        senders: opts.senders,
        messages: opts.messages,
        delivered: delivered.load(Ordering::Relaxed),
        reads: reads.load(Ordering::Relaxed),
        unreadable: unreadable.load(Ordering::Relaxed),
        all_ms_p50: times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
        all_ms_max: times.last().copied().unwrap_or(f64::NAN),
    })
}
