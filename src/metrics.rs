//! Prometheus metrics, served on a listener of their own
//! (`chatserver --metrics-listen ADDR`).
//!
//! Counters live in one process-wide [`METRICS`] of atomics: every part of
//! the node (accept loop, handlers, delivery, store writer, Redis hub) adds
//! to it without locks or plumbing, and reading it costs nothing on the
//! message path. (Several nodes in one process, as in tests, share it.)
//! The exposition is Prometheus' text format, written by hand over plain
//! atomics: every message bumps a few of these, and a client library's
//! registry (prometheus-client keeps a lock per histogram) has not been
//! measured against them yet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cumulative histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; 16],
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 16],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` (in the histogram's unit).
    pub fn observe(&self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const OPS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Everything the node counts.
pub struct Metrics {
    pub connections_open: AtomicI64,
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub sessions_online: AtomicI64,
    /// Messages stored (each numbered and durable).
    pub messages_stored: AtomicU64,
    /// Pushes written to a session on this node, by where they came from.
    pub delivered_local: AtomicU64,
    pub delivered_remote: AtomicU64,
    /// Messages filled in from the store (gaps and backlog pages).
    pub delivered_from_store: AtomicU64,
    /// Messages handed to the bus for other nodes.
    pub published_remote: AtomicU64,
    pub redis_errors: AtomicU64,
    pub store_errors: AtomicU64,
    /// Pushes dropped on a full queue (the session then reads from the store).
    pub pushes_dropped: AtomicU64,
    /// Requests refused or delayed by a limit: throttled logins, timeouts,
    /// budgets, quotas.
    pub limited: AtomicU64,
    /// From a message's arrival on this node (stored, or received from the
    /// bus) to its push leaving for the receiver's socket.
    pub delivery_latency: Histogram,
    /// Operations per write batch, and how long each batch took to commit.
    pub store_batch_ops: Histogram,
    pub store_commit: Histogram,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    connections_open: AtomicI64::new(0),
    connections_accepted: AtomicU64::new(0),
    connections_refused: AtomicU64::new(0),
    logins: AtomicU64::new(0),
    login_failures: AtomicU64::new(0),
    sessions_online: AtomicI64::new(0),
    messages_stored: AtomicU64::new(0),
    delivered_local: AtomicU64::new(0),
    delivered_remote: AtomicU64::new(0),
    delivered_from_store: AtomicU64::new(0),
    published_remote: AtomicU64::new(0),
    redis_errors: AtomicU64::new(0),
    store_errors: AtomicU64::new(0),
    pushes_dropped: AtomicU64::new(0),
    limited: AtomicU64::new(0),
    delivery_latency: Histogram::new(SECONDS),
    store_batch_ops: Histogram::new(OPS),
    store_commit: Histogram::new(SECONDS),
};

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The database pool as the store reports it: connections open and idle.
pub type PoolUsage = Option<(u32, usize)>;

impl Metrics {
    /// The text exposition, with the store's pool usage if it has a pool.
    pub fn render(&self, pool: PoolUsage) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &AtomicU64); 13] = [
            (
                "chat_connections_accepted_total",
                "Connections accepted and served.",
                &self.connections_accepted,
            ),
            (
                "chat_connections_refused_total",
                "Connections refused at the connection cap (errno 51).",
                &self.connections_refused,
            ),
            ("chat_logins_total", "Successful logins.", &self.logins),
            (
                "chat_login_failures_total",
                "Refused logins (bad password, already online, busy).",
                &self.login_failures,
            ),
            (
                "chat_messages_stored_total",
                "Messages stored durably and numbered.",
                &self.messages_stored,
            ),
            (
                "chat_delivered_local_total",
                "Pushes of messages sent on this node, written to a receiver here.",
                &self.delivered_local,
            ),
            (
                "chat_delivered_remote_total",
                "Pushes of messages from other nodes, written to a receiver here.",
                &self.delivered_remote,
            ),
            (
                "chat_delivered_from_store_total",
                "Messages delivered from the store (gap fills, backlog pages).",
                &self.delivered_from_store,
            ),
            (
                "chat_published_remote_total",
                "Messages handed to the bus for receivers on other nodes.",
                &self.published_remote,
            ),
            (
                "chat_redis_errors_total",
                "Failed Redis operations.",
                &self.redis_errors,
            ),
            (
                "chat_store_errors_total",
                "Failed write batches.",
                &self.store_errors,
            ),
            (
                "chat_pushes_dropped_total",
                "Pushes dropped on a full session queue (read from the store instead).",
                &self.pushes_dropped,
            ),
            (
                "chat_limited_total",
                "Requests or connections refused or delayed by a limit (throttles, timeouts, budgets, quotas).",
                &self.limited,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let gauges: [(&str, &str, i64); 2] = [
            (
                "chat_connections_open",
                "Client connections open.",
                self.connections_open.load(Ordering::Relaxed),
            ),
            (
                "chat_sessions_online",
                "Logged-in sessions on this node.",
                self.sessions_online.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        if let Some((size, idle)) = pool {
            let _ = writeln!(
                out,
                "# HELP chat_db_pool_connections Database pool connections, by state.\n\
                 # TYPE chat_db_pool_connections gauge\n\
                 chat_db_pool_connections{{state=\"idle\"}} {idle}\n\
                 chat_db_pool_connections{{state=\"busy\"}} {}",
                (size as usize).saturating_sub(idle)
            );
        }
        self.delivery_latency.render(
            &mut out,
            "chat_delivery_latency_seconds",
            "From a message's arrival on this node to its push being written.",
        );
        self.store_batch_ops.render(
            &mut out,
            "chat_store_batch_ops",
            "Operations (appends, cursor moves) per write batch.",
        );
        self.store_commit.render(
            &mut out,
            "chat_store_commit_seconds",
            "Time to write and commit one batch.",
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`, then waits (a
/// second at most) for scrapes in progress. `pool` reads the store's pool
/// usage at each scrape.
pub async fn serve(
    listener: TcpListener,
    pool: impl Fn() -> PoolUsage + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let pool = std::sync::Arc::new(pool);
    let scrapes = TaskTracker::new();
    crate::transport::accept_each("metrics", &listener, &scrapes, &shutdown, |stream, _| {
        let pool = pool.clone();
        Some(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &*pool)).await;
        })
    })
    .await;
    scrapes.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), scrapes.wait()).await;
}

/// One client connection counted as open (`chat_connections_open`) for as
/// long as this lives, and as accepted once: dropping it, however the
/// connection's task ends (a panic included), uncounts it.
#[derive(Debug)]
pub struct OpenConnection(());

impl OpenConnection {
    pub fn count() -> Self {
        inc(&METRICS.connections_accepted);
        METRICS.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn answer(mut stream: TcpStream, pool: &(dyn Fn() -> PoolUsage + Send + Sync)) {
    // Read the request head (bounded); only the request line matters.
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ") {
        ("200 OK", METRICS.render(pool()))
    } else {
        ("404 Not Found", "try GET /metrics\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}
