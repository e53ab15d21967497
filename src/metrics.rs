//! Prometheus metrics, served on a listener of their own
//! (`chatserver --metrics-listen ADDR`).
//!
//! Counters, gauges and histograms live in one process-wide [`METRICS`],
//! registered once with `prometheus-client` (the Prometheus project's Rust
//! client, maintained, OpenMetrics text): every part of the node (accept
//! loop, handlers, delivery, store writer, Redis hub) adds to it without
//! plumbing. Counters and gauges are atomics; a histogram observation takes
//! a short uncontended lock. Measured against the hand-written atomics it
//! replaces with `chatbench compare` (docs/benchmarks.md): no difference
//! beyond noise. (Several nodes in one process, as in tests, share it.)

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SECONDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const OPS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Everything the node counts.
pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub logins: Counter,
    pub login_failures: Counter,
    pub sessions_online: Gauge,
    /// Messages stored (each numbered and durable).
    pub messages_stored: Counter,
    /// Pushes written to a session on this node, by where they came from.
    pub delivered_local: Counter,
    pub delivered_remote: Counter,
    /// Messages filled in from the store (gaps and backlog pages).
    pub delivered_from_store: Counter,
    /// Messages handed to the bus for other nodes.
    pub published_remote: Counter,
    pub redis_errors: Counter,
    pub store_errors: Counter,
    /// Moves of the pool to another database host (`--db` with several).
    pub db_failovers: Counter,
    /// Pushes dropped on a full queue (the session then reads from the store).
    pub pushes_dropped: Counter,
    /// Requests refused or delayed by a limit: throttled logins, timeouts,
    /// budgets, quotas.
    pub limited: Counter,
    /// From a message's arrival on this node (stored, or received from the
    /// bus) to its push leaving for the receiver's socket.
    pub delivery_latency: Histogram,
    /// Operations per write batch, and how long each batch took to commit.
    pub store_batch_ops: Histogram,
    pub store_commit: Histogram,
    /// SQLite staging: how long the writer spent committing what it staged
    /// (batches wait behind it).
    pub store_staged_commit: Histogram,
    /// The database pool's connections by state, read at each scrape.
    db_pool: Family<Vec<(&'static str, &'static str)>, Gauge>,
    registry: Registry,
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            logins: Counter::default(),
            login_failures: Counter::default(),
            sessions_online: Gauge::default(),
            messages_stored: Counter::default(),
            delivered_local: Counter::default(),
            delivered_remote: Counter::default(),
            delivered_from_store: Counter::default(),
            published_remote: Counter::default(),
            redis_errors: Counter::default(),
            store_errors: Counter::default(),
            db_failovers: Counter::default(),
            pushes_dropped: Counter::default(),
            limited: Counter::default(),
            delivery_latency: Histogram::new(SECONDS),
            store_batch_ops: Histogram::new(OPS),
            store_commit: Histogram::new(SECONDS),
            store_staged_commit: Histogram::new(SECONDS),
            db_pool: Family::default(),
            registry: Registry::default(),
        };
        let mut r = Registry::default();
        let counters = [
            (
                "chat_connections_accepted",
                "Connections accepted and served",
                &m.connections_accepted,
            ),
            (
                "chat_connections_refused",
                "Connections refused at the connection cap (errno 51)",
                &m.connections_refused,
            ),
            ("chat_logins", "Successful logins", &m.logins),
            (
                "chat_login_failures",
                "Refused logins (bad password, already online, busy)",
                &m.login_failures,
            ),
            (
                "chat_messages_stored",
                "Messages stored durably and numbered",
                &m.messages_stored,
            ),
            (
                "chat_delivered_local",
                "Pushes of messages sent on this node, written to a receiver here",
                &m.delivered_local,
            ),
            (
                "chat_delivered_remote",
                "Pushes of messages from other nodes, written to a receiver here",
                &m.delivered_remote,
            ),
            (
                "chat_delivered_from_store",
                "Messages delivered from the store (gap fills, backlog pages)",
                &m.delivered_from_store,
            ),
            (
                "chat_published_remote",
                "Messages handed to the bus for receivers on other nodes",
                &m.published_remote,
            ),
            (
                "chat_redis_errors",
                "Failed Redis operations",
                &m.redis_errors,
            ),
            ("chat_store_errors", "Failed write batches", &m.store_errors),
            (
                "chat_db_failovers",
                "Moves to another database host",
                &m.db_failovers,
            ),
            (
                "chat_pushes_dropped",
                "Pushes dropped on a full session queue (read from the store instead)",
                &m.pushes_dropped,
            ),
            (
                "chat_limited",
                "Requests or connections refused or delayed by a limit (throttles, timeouts, budgets, quotas)",
                &m.limited,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "chat_connections_open",
            "Client connections open",
            m.connections_open.clone(),
        );
        r.register(
            "chat_sessions_online",
            "Logged-in sessions on this node",
            m.sessions_online.clone(),
        );
        r.register(
            "chat_db_pool_connections",
            "Database pool connections, by state",
            m.db_pool.clone(),
        );
        r.register(
            "chat_delivery_latency_seconds",
            "From a message's arrival on this node to its push being written",
            m.delivery_latency.clone(),
        );
        r.register(
            "chat_store_batch_ops",
            "Operations (appends, cursor moves) per write batch",
            m.store_batch_ops.clone(),
        );
        r.register(
            "chat_store_commit_seconds",
            "Time to write and commit one batch",
            m.store_commit.clone(),
        );
        r.register(
            "chat_store_staged_commit_seconds",
            "SQLite staging: time the writer spent committing what it staged",
            m.store_staged_commit.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text exposition, with the store's pool usage if it
    /// has a pool.
    pub fn render(&self, pool: PoolUsage) -> String {
        if let Some((size, idle)) = pool {
            let idle = i64::try_from(idle).unwrap_or(i64::MAX);
            self.db_pool
                .get_or_create(&vec![("state", "idle")])
                .set(idle);
            self.db_pool
                .get_or_create(&vec![("state", "busy")])
                .set(i64::from(size).saturating_sub(idle));
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics: one registry of atomics (histograms take a
/// short lock per observation), bumped from every part of the node without
/// plumbing.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Adds one to a counter.
pub fn inc(counter: &Counter) {
    counter.inc();
}

/// The database pool as the store reports it: connections open and idle.
pub type PoolUsage = Option<(u32, usize)>;

/// Records a duration in seconds.
pub fn observe_duration(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

/// What `GET /readyz` runs: `Ok` when the node can serve, or why not.
pub type Readiness = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Serves `GET /metrics`, `GET /healthz` and `GET /readyz` on `listener`
/// until `shutdown`, then waits (a second at most) for requests in
/// progress. `pool` reads the store's pool usage at each scrape; `ready`
/// answers `/readyz`.
///
/// For a balancer or an orchestrator: `/healthz` is 200 while the process
/// serves HTTP at all (restart it when this fails); `/readyz` is 200 only
/// while the store and the hub answer and the node is not draining, and 503
/// with the reason otherwise (send it no new clients).
pub async fn serve(
    listener: TcpListener,
    pool: impl Fn() -> PoolUsage + Send + Sync + 'static,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    let pool = std::sync::Arc::new(pool);
    let scrapes = TaskTracker::new();
    crate::transport::accept_each("metrics", &listener, &scrapes, &shutdown, |stream, _| {
        let (pool, ready) = (pool.clone(), ready.clone());
        Some(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), answer(stream, &*pool, &ready)).await;
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
        METRICS.connections_open.inc();
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.connections_open.dec();
    }
}

async fn answer(
    mut stream: TcpStream,
    pool: &(dyn Fn() -> PoolUsage + Send + Sync),
    ready: &Readiness,
) {
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
    const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, kind, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ")
    {
        ("200 OK", METRICS_TYPE, METRICS.render(pool()))
    } else if line.starts_with(b"GET /healthz ") {
        ("200 OK", TEXT, "ok\n".to_owned())
    } else if line.starts_with(b"GET /readyz ") {
        match ready().await {
            Ok(()) => ("200 OK", TEXT, "ready\n".to_owned()),
            Err(why) => (
                "503 Service Unavailable",
                TEXT,
                format!("not ready: {why}\n"),
            ),
        }
    } else {
        (
            "404 Not Found",
            TEXT,
            "try GET /metrics, /healthz or /readyz\n".to_owned(),
        )
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}
