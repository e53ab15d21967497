//! The load tool's workloads, shared by the `chatbench` binary and its test.
//!
//! Everything here talks to a server the way a client does, over TCP with the
//! classic frames, so the same run works against `chatserver`, against the
//! bare [`relay`], or against anything else that speaks the protocol (the
//! original C++ server included). Figures that depend on the server process
//! (CPU per message, RSS) are read from `/proc/PID` when its PID is given.
//!
//! The hot loop reads and writes raw frames instead of going through
//! [`crate::client::Client`]: the load generator must cost as little as
//! possible, so that the server, not the tool, is what is measured.

pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

use crate::client::Client;
use crate::model::UserId;
use crate::protocol::codec::FrameCodec;
use crate::protocol::msgid;

/// Why a workload could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("{0}")]
    Client(#[from] crate::client::ClientError),
    #[error("{0}")]
    Protocol(String),
}

/// The reading side of a logged-in connection.
pub type Reader = FramedRead<OwnedReadHalf, FrameCodec>;

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
    let mut ids = vec![0; n];
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
            let mut client = Client::connect(addr.as_str()).await?;
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
) -> Result<(Reader, OwnedWriteHalf), BenchError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| BenchError::Io("connect", e))?;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut reader = FramedRead::new(r, FrameCodec::new(64 << 20));
    let login = serde_json::json!({"msgid": msgid::LOGIN, "id": id, "password": password});
    w.write_all(format!("{login}\0").as_bytes())
        .await
        .map_err(|e| BenchError::Io("send login", e))?;
    loop {
        let frame = match reader.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(BenchError::Protocol(format!("login read: {e}"))),
            None => return Err(BenchError::Protocol("closed during login".into())),
        };
        let Some(h) = head(&frame) else { continue };
        if h.msgid == msgid::LOGIN_ACK {
            if h.errno != 0 {
                return Err(BenchError::Protocol(format!(
                    "login of {id} refused: {}",
                    String::from_utf8_lossy(&frame)
                )));
            }
            return Ok((reader, w));
        }
    }
}

/// Closed-loop one-to-one chat: each sender sends, waits until its receiver
/// has the message, and sends the next.
#[derive(Debug, Clone)]
pub struct PairsOptions {
    pub addr: String,
    pub pairs: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The server's PID, for CPU per message.
    pub server_pid: Option<u32>,
    /// Whether the server acknowledges each message (the relay does not).
    pub expect_acks: bool,
    /// The users: `2 * pairs` ids, senders first, all with `password`.
    pub users: Vec<UserId>,
    pub password: String,
    /// Bytes of filler in each message body.
    pub body_len: usize,
}

/// What one closed-loop run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PairsReport {
    pub pairs: usize,
    pub seconds: f64,
    /// Messages that reached their receiver inside the measured window.
    pub delivered: u64,
    pub msg_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Server CPU (user + system) over the window per delivered message.
    pub server_cpu_us_per_msg: Option<f64>,
    /// Server CPU used over the window, as a share of one core.
    pub server_core_share: Option<f64>,
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
}

/// Runs closed-loop pairs and reports what the window measured.
pub async fn pairs(opts: &PairsOptions) -> Result<PairsReport, BenchError> {
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
    });
    let filler = "x".repeat(opts.body_len);
    let mut conns = Vec::with_capacity(opts.pairs);
    for p in 0..opts.pairs {
        let (from, to) = (opts.users[p], opts.users[opts.pairs + p]);
        let sender = login_raw(&opts.addr, from, &opts.password).await?;
        let receiver = login_raw(&opts.addr, to, &opts.password).await?;
        conns.push((from, to, sender, receiver));
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut ack_tasks = tokio::task::JoinSet::new();
    for (from, to, (mut acks, mut out), (mut inbox, inbox_writer)) in conns {
        let shared2 = shared.clone();
        ack_tasks.spawn(async move {
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
        tasks.spawn(async move {
            // Dropping the receiver's write half would end its session.
            let _inbox_writer = inbox_writer;
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| BenchError::Protocol(e.to_string()))?;
            let mut k: u64 = 0;
            while !shared.stop.load(Ordering::Relaxed) {
                k += 1;
                let token = format!("{k} {filler}");
                let frame = format!(
                    "{{\"msgid\":{},\"id\":{from},\"toid\":{to},\"msg\":\"{token}\"}}\0",
                    msgid::ONE_CHAT
                );
                let t0 = Instant::now();
                out.write_all(frame.as_bytes())
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
                    let _ = hist.record(us.max(1));
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, BenchError>(hist)
        });
    }
    tokio::time::sleep(opts.warmup).await;
    let cpu0 = opts.server_pid.and_then(process_cpu);
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(opts.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let seconds = t0.elapsed().as_secs_f64();
    let cpu1 = opts.server_pid.and_then(process_cpu);
    shared.stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    while let Some(done) = tasks.join_next().await {
        let h = done.map_err(|e| BenchError::Protocol(e.to_string()))??;
        hist.add(h)
            .map_err(|e| BenchError::Protocol(e.to_string()))?;
    }
    // Let the last acknowledgements arrive.
    if opts.expect_acks {
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.acked.load(Ordering::Relaxed) + shared.refused.load(Ordering::Relaxed)
            < shared.sent.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    ack_tasks.abort_all();
    let delivered = shared.delivered.load(Ordering::Relaxed);
    let cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
    Ok(PairsReport {
        pairs: opts.pairs,
        seconds,
        delivered,
        msg_per_s: delivered as f64 / seconds,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        server_cpu_us_per_msg: cpu
            .filter(|_| delivered > 0)
            .map(|c| c.as_secs_f64() * 1e6 / delivered as f64),
        server_core_share: cpu.map(|c| c.as_secs_f64() / seconds),
        sent: shared.sent.load(Ordering::Relaxed),
        acked: shared.acked.load(Ordering::Relaxed),
        refused: shared.refused.load(Ordering::Relaxed),
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
}

/// What holding the logins cost the server.
#[derive(Debug, Clone, Serialize)]
pub struct LoginsReport {
    pub logins: usize,
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
) -> Result<(LoginsReport, Vec<(Reader, OwnedWriteHalf)>), BenchError> {
    let rss_before = opts.server_pid.and_then(process_rss);
    let started = Instant::now();
    let mut held = Vec::with_capacity(opts.users.len());
    let mut pending = futures_util::stream::iter(opts.users.iter().map(|&id| {
        let (addr, password) = (opts.addr.clone(), opts.password.clone());
        async move { login_raw(&addr, id, &password).await }
    }))
    .buffer_unordered(opts.concurrency.max(1));
    while let Some(conn) = pending.next().await {
        held.push(conn?);
    }
    let seconds = started.elapsed().as_secs_f64();
    // Let the server settle (cursor loads, presence) before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_logged_in = opts.server_pid.and_then(process_rss);
    let n = held.len();
    Ok((
        LoginsReport {
            logins: n,
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
