//! `chatserver`: runs one chat node.
//!
//! `chatserver` alone serves 127.0.0.1:6000 from `./chatserver.db` (SQLite,
//! created on first run). The original's form `chatserver IP PORT` works too.

use std::time::Duration;

use chat::config::{Config, Limits, PoolConfig, SqliteSync};
use chat::hub::redis::ClusterConfig;
use chat::server::Node;
use chat::store::hosts::redact;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "chatserver",
    version,
    about = "Chat server speaking the classic chat protocol"
)]
struct Cli {
    /// IP address to listen on (the original's first argument).
    ip: Option<String>,
    /// Port to listen on (the original's second argument).
    port: Option<u16>,
    /// Address to listen on, as IP:PORT; overrides IP and PORT.
    #[arg(long)]
    listen: Option<String>,
    /// Also serve TLS on this address (IP:PORT), with --tls-cert and
    /// --tls-key; the plain listener stays for the original client.
    #[arg(long, env = "CHAT_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<String>,
    /// The TLS certificate chain, PEM (this server's certificate first).
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_listen")]
    tls_cert: Option<std::path::PathBuf>,
    /// The TLS private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_listen")]
    tls_key: Option<std::path::PathBuf>,
    /// Read the PROXY protocol header (v1 or v2) that a balancer such as
    /// nginx (`proxy_protocol on;`) sends first, so that the per-address
    /// limits count real clients; believed only from --proxy-from.
    #[arg(long, env = "CHAT_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Balancer addresses whose PROXY header is believed (default:
    /// 127.0.0.1 and ::1); clients there may still connect without one.
    #[arg(long, value_delimiter = ',', requires = "proxy_protocol")]
    proxy_from: Vec<std::net::IpAddr>,
    /// Also serve the web client at http://ADDR/ and the chat protocol over
    /// WebSocket at /ws (IP:PORT), under the same limits and connection cap.
    #[arg(long, env = "CHAT_WS_LISTEN")]
    ws_listen: Option<String>,
    /// Database URL: sqlite://PATH (created if missing) or
    /// mysql://USER:PASS@HOST:PORT/DB (MySQL or MariaDB; needed for a cluster).
    /// Several hosts, mysql://USER:PASS@H1:P1,H2:P2,H3:P3/DB, are a Galera
    /// cluster: the node writes through the first ready one and moves on
    /// when it fails.
    #[arg(long, env = "CHAT_DB", default_value = "sqlite://chatserver.db")]
    db: String,
    /// Redis URL, redis://[USER:PASS@]HOST:PORT[/DB]: joins a cluster of nodes
    /// sharing this Redis (and the --db database). A Redis Cluster is
    /// redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT...] (seed addresses).
    #[arg(long, env = "CHAT_REDIS")]
    redis: Option<String>,
    /// This node's name, unique in the cluster (default: the listen address).
    #[arg(long, env = "CHAT_NODE_ID")]
    node_id: Option<String>,
    /// Prefix of every Redis key and channel (clusters sharing a Redis need
    /// different ones).
    #[arg(long, default_value = "chat")]
    redis_prefix: String,
    /// Seconds a crashed node's users may still look online before presence
    /// heals (the node's lease on Redis).
    #[arg(long, default_value_t = 10.0)]
    presence_ttl: f64,
    /// Database connections kept open.
    #[arg(long, default_value_t = PoolConfig::default().min_connections)]
    db_pool_min: u32,
    /// Database connections open at most.
    #[arg(long, default_value_t = PoolConfig::default().max_connections)]
    db_pool_max: u32,
    /// Seconds after which an idle connection above the minimum is closed.
    #[arg(long, default_value_t = PoolConfig::default().idle_timeout.as_secs_f64())]
    db_idle_timeout: f64,
    /// Seconds a request waits for a free connection before failing (errno 50).
    #[arg(long, default_value_t = PoolConfig::default().acquire_timeout.as_secs_f64())]
    db_acquire_timeout: f64,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long, default_value_t = Config::default().max_frame)]
    max_frame: usize,
    /// Largest chat message body, in bytes.
    #[arg(long, default_value_t = Config::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Connections served at once; further ones are refused with errno 51
    /// (default: what the open-file limit allows, less 512 for the node's own
    /// files and connections).
    #[arg(long)]
    max_connections: Option<usize>,
    /// SQLite only: `full` fsyncs every commit, so an acknowledged message
    /// survives a power cut; `normal` survives a process crash only, for
    /// less disk work per message.
    #[arg(long, value_enum, default_value_t = SqliteSync::Full)]
    sync: SqliteSync,
    /// SQLite with `--sync full`: each batch of messages is made durable in
    /// a small log beside the database (DB-stage and DB-stage-1, used in
    /// turn) and acknowledged, and its rows are committed to the database
    /// in one transaction every this many milliseconds (synced by a thread
    /// of its own), about a third of the disk work per message; 0 commits
    /// every batch before acknowledging it. A crash loses nothing
    /// acknowledged: the logs are applied again at the next start.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    stage_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Pushes queued per session; a reader this far behind catches up from
    /// the store instead.
    #[arg(long, default_value_t = Config::default().push_queue)]
    push_queue: usize,
    /// Seconds of silence after which a connection that has sent a PING is
    /// closed (errno 55) and its user goes offline.
    #[arg(long, default_value_t = Config::default().heartbeat_timeout.as_secs_f64())]
    heartbeat_timeout: f64,
    /// Milliseconds between two frames to a session of the original client
    /// (one that declares none of our extensions), which reads one frame
    /// per `recv` and cannot parse two at once.
    #[arg(long, default_value_t = Config::default().classic_spacing.as_secs_f64() * 1000.0)]
    classic_spacing_ms: f64,
    /// Seconds a message written to the original client waits, its
    /// connection still open, before it counts as read.
    #[arg(long, default_value_t = Config::default().classic_read_grace.as_secs_f64())]
    classic_read_grace: f64,
    /// Niceness of the password-hashing threads (0, the reactor's, to 19),
    /// or "idle": hash only on a core nothing else wants (logins may then
    /// wait out a busy spell and be refused with errno 50).
    #[arg(long, env = "CHAT_HASH_NICENESS", default_value = "0")]
    hash_niceness: String,
    /// Seconds of silence before TCP keepalive starts probing a peer.
    #[arg(long, default_value_t = Config::default().keepalive_idle.as_secs_f64())]
    keepalive: f64,
    /// Logins and resumes admitted per second on average; more get errno 56
    /// and how long to wait.
    #[arg(long, default_value_t = Config::default().session_rate)]
    session_rate: u32,
    /// Logins and resumes admitted at once above the average.
    #[arg(long, default_value_t = Config::default().session_burst)]
    session_burst: u32,
    /// Seconds a resume token from a login stays valid.
    #[arg(long, default_value_t = Config::default().resume_token_ttl.as_secs_f64())]
    token_ttl: f64,
    /// Devices one user may have; a login from one more forgets the device
    /// unused the longest.
    #[arg(long, default_value_t = Config::default().max_devices)]
    max_devices: usize,
    /// Seconds after sending within which a sender may recall a message.
    #[arg(long, default_value_t = Config::default().recall_window.as_secs_f64())]
    recall_window: f64,
    /// Seconds after sending within which a sender may edit a message.
    #[arg(long, default_value_t = Config::default().edit_window.as_secs_f64())]
    edit_window: f64,
    /// Groups up to this many members share read receipts and typing.
    #[arg(long, default_value_t = Config::default().receipts_group_max)]
    receipts_group_max: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The defences against hostile clients (README, "Limits").
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Seconds a connection has to log in (or after a logout, to log in
    /// again) before it is closed (errno 58). Long: the original client
    /// connects first and then waits at its menu.
    #[arg(long, default_value_t = Limits::default().login_timeout.as_secs_f64())]
    login_timeout: f64,
    /// The login deadline, in seconds, for connections that press on the
    /// node: when it is near its connection cap, when their address holds
    /// too many connections not logged in, or when they sent nothing but
    /// refused frames.
    #[arg(long, default_value_t = Limits::default().login_timeout_pressed.as_secs_f64())]
    login_timeout_pressed: f64,
    /// Connections not logged in one address may hold before they are held
    /// to --login-timeout-pressed.
    #[arg(long, default_value_t = Limits::default().anonymous_per_addr)]
    anonymous_per_addr: usize,
    /// Seconds a frame may take to arrive once begun (errno 59).
    #[arg(long, default_value_t = Limits::default().frame_timeout.as_secs_f64())]
    frame_timeout: f64,
    /// Largest frame before login, in bytes.
    #[arg(long, default_value_t = Limits::default().prelogin_max_frame)]
    prelogin_max_frame: usize,
    /// Connections open at once from one address (IPv6: one /64).
    #[arg(long, default_value_t = Limits::default().conns_per_addr)]
    conns_per_addr: usize,
    /// Hold loopback clients to the per-address limits too (by default they
    /// are exempt: a local nginx, benchmarks).
    #[arg(long)]
    limit_loopback: bool,
    /// Requests per second per connection, on average (0: no limit); above
    /// it requests are delayed and the client told errno 57.
    #[arg(long, default_value_t = Limits::default().request_rate)]
    request_rate: u32,
    /// Requests per connection at once above the average.
    #[arg(long, default_value_t = Limits::default().request_burst)]
    request_burst: u32,
    /// Bytes per second per connection, on average (0: no limit).
    #[arg(long, default_value_t = Limits::default().byte_rate)]
    byte_rate: u32,
    /// Wrong passwords an account takes before logins to it must wait
    /// (errno 60; 1 s, doubling).
    #[arg(long, default_value_t = Limits::default().account_free_failures)]
    account_free_failures: u32,
    /// Wrong passwords from one address before its logins must wait.
    #[arg(long, default_value_t = Limits::default().addr_free_failures)]
    addr_free_failures: u32,
    /// Longest wait after repeated wrong passwords, in seconds.
    #[arg(long, default_value_t = Limits::default().lockout_max.as_secs_f64())]
    lockout_max: f64,
    /// Registrations one address may make at once (errno 62 beyond).
    #[arg(long, default_value_t = Limits::default().register_burst)]
    register_burst: u32,
    /// Seconds that earn an address one more registration.
    #[arg(long, default_value_t = Limits::default().register_interval.as_secs_f64())]
    register_interval: f64,
    /// Groups one user may create or join (errno 61 beyond).
    #[arg(long, default_value_t = Limits::default().groups_per_user)]
    max_groups: u32,
    /// Friends one user may have.
    #[arg(long, default_value_t = Limits::default().friends_per_user)]
    max_friends: u32,
    /// Members one group may have.
    #[arg(long, default_value_t = Limits::default().members_per_group)]
    max_members: u32,
    /// Friend requests (and requests to join groups) one user may have
    /// waiting for an answer (errno 61 beyond).
    #[arg(long, default_value_t = Limits::default().pending_requests)]
    max_pending_requests: usize,
    /// Friend requests one user may make in 24 hours (errno 61 beyond).
    #[arg(long, default_value_t = Limits::default().friend_requests_per_day)]
    friend_requests_per_day: usize,
    /// Invitations one group may have waiting for an answer.
    #[arg(long, default_value_t = Limits::default().invites_per_group)]
    max_group_invites: usize,
    /// Message bytes one user may store per day (UTC).
    #[arg(long, default_value_t = Limits::default().bytes_per_user_day)]
    bytes_per_day: u64,
    /// Messages one sender may leave unread for one receiver.
    #[arg(long, default_value_t = Limits::default().unread_per_sender)]
    max_unread: u64,
    /// Bytes of messages one history reply carries at most.
    #[arg(long, default_value_t = Limits::default().history_max_bytes)]
    history_max_bytes: usize,
}

impl LimitArgs {
    fn limits(&self) -> Result<Limits, String> {
        let seconds = |what: &str, s: f64| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| format!("--{what} must be a non-negative number of seconds"))
        };
        Ok(Limits {
            login_timeout: seconds("login-timeout", self.login_timeout)?,
            login_timeout_pressed: seconds("login-timeout-pressed", self.login_timeout_pressed)?,
            anonymous_per_addr: self.anonymous_per_addr,
            frame_timeout: seconds("frame-timeout", self.frame_timeout)?,
            prelogin_max_frame: self.prelogin_max_frame,
            conns_per_addr: self.conns_per_addr,
            exempt_loopback: !self.limit_loopback,
            request_rate: self.request_rate,
            request_burst: self.request_burst,
            byte_rate: self.byte_rate,
            account_free_failures: self.account_free_failures,
            addr_free_failures: self.addr_free_failures,
            lockout_max: seconds("lockout-max", self.lockout_max)?,
            register_burst: self.register_burst,
            register_interval: seconds("register-interval", self.register_interval)?,
            groups_per_user: self.max_groups,
            friends_per_user: self.max_friends,
            members_per_group: self.max_members,
            pending_requests: self.max_pending_requests,
            friend_requests_per_day: self.friend_requests_per_day,
            invites_per_group: self.max_group_invites,
            bytes_per_user_day: self.bytes_per_day,
            unread_per_sender: self.max_unread,
            history_max_bytes: self.history_max_bytes,
            ..Limits::default()
        })
    }
}

impl Cli {
    fn listen_addr(&self) -> Result<String, String> {
        match (&self.listen, &self.ip, self.port) {
            (Some(l), _, _) => Ok(l.clone()),
            (None, Some(ip), Some(port)) => Ok(format!("{ip}:{port}")),
            (None, Some(_), None) => {
                Err("give both IP and PORT, e.g. chatserver 127.0.0.1 6000".into())
            }
            (None, None, _) => Ok("127.0.0.1:6000".into()),
        }
    }
}

/// Why `chatserver` stopped before serving: a bad command line, or
/// something it could not open. `main` returns it; Rust then prints its
/// `Debug` form after `Error: ` on stderr and exits with status 1, so that
/// form is the plain message. (Flags clap itself refuses exit with 2.)
#[derive(thiserror::Error)]
enum Fatal {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Start(String),
}

impl std::fmt::Debug for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn main() -> Result<(), Fatal> {
    tokio::runtime::Runtime::new()
        .map_err(|e| Fatal::Start(format!("cannot start the runtime: {e}")))?
        .block_on(run())
}

/// Binds `addr`, saying what for if it cannot.
async fn bind(addr: &str, what: &str) -> Result<TcpListener, Fatal> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::Start(format!("cannot listen {what}on {addr}: {e}")))
}

async fn run() -> Result<(), Fatal> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let addr = cli.listen_addr().map_err(Fatal::Usage)?;
    let seconds = |what: &str, s: f64| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| Fatal::Usage(format!("--{what} must be a non-negative number")))
    };
    let limits = cli.limits.limits().map_err(Fatal::Usage)?;
    let acceptor = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            Some(chat::tls::acceptor(cert, key).map_err(|e| Fatal::Usage(format!("TLS: {e}")))?)
        }
        _ => None,
    };
    // Raised before anything opens files; the default cap follows from it.
    let client_capacity = chat::server::client_capacity();
    let node_id = cli.node_id.clone().unwrap_or_else(|| addr.clone());
    let cluster = match &cli.redis {
        None => None,
        Some(url) => Some(ClusterConfig {
            key_prefix: cli.redis_prefix.clone(),
            presence_ttl: seconds("presence-ttl", cli.presence_ttl)?,
            ..ClusterConfig::new(url, &node_id)
        }),
    };
    let config = Config {
        node_id,
        pool: PoolConfig {
            min_connections: cli.db_pool_min,
            max_connections: cli.db_pool_max,
            idle_timeout: seconds("db-idle-timeout", cli.db_idle_timeout)?,
            acquire_timeout: seconds("db-acquire-timeout", cli.db_acquire_timeout)?,
        },
        max_frame: cli.max_frame,
        max_message_bytes: cli.max_message_bytes,
        max_connections: cli
            .max_connections
            .or(client_capacity)
            .unwrap_or(Config::default().max_connections),
        push_queue: cli.push_queue,
        classic_spacing: seconds("classic-spacing-ms", cli.classic_spacing_ms / 1000.0)?,
        classic_read_grace: seconds("classic-read-grace", cli.classic_read_grace)?,
        hash_niceness: parse_niceness(&cli.hash_niceness)
            .map_err(|e| Fatal::Usage(format!("--hash-niceness {e}")))?,
        sqlite_sync: cli.sync,
        sqlite_stage: (cli.stage_ms > 0).then(|| Duration::from_millis(cli.stage_ms)),
        heartbeat_timeout: seconds("heartbeat-timeout", cli.heartbeat_timeout)?,
        keepalive_idle: seconds("keepalive", cli.keepalive)?,
        resume_token_ttl: seconds("token-ttl", cli.token_ttl)?,
        max_devices: cli.max_devices.max(1),
        recall_window: seconds("recall-window", cli.recall_window)?,
        edit_window: seconds("edit-window", cli.edit_window)?,
        receipts_group_max: cli.receipts_group_max,
        session_rate: cli.session_rate,
        session_burst: cli.session_burst,
        limits,
        proxy: match (cli.proxy_protocol, cli.proxy_from.is_empty()) {
            (false, _) => chat::proxy::ProxyTrust::default(),
            (true, true) => chat::proxy::ProxyTrust::loopback(),
            (true, false) => chat::proxy::ProxyTrust {
                from: cli.proxy_from.iter().map(|ip| ip.to_canonical()).collect(),
            },
        },
        ..Config::default()
    };
    let node = Node::open(&cli.db, config, cluster)
        .await
        .map_err(|e| Fatal::Start(format!("cannot open {}: {e}", redact(&cli.db))))?;
    let listener = bind(&addr, "").await?;
    let tls = match (&cli.tls_listen, acceptor) {
        (Some(tls_addr), Some(acceptor)) => {
            let l = bind(tls_addr, "for TLS ").await?;
            let local = l.local_addr().map(|a| a.to_string());
            tracing::info!(listen = %local.unwrap_or_else(|_| tls_addr.clone()), "TLS listener ready");
            Some((l, acceptor))
        }
        _ => None,
    };
    let web = match &cli.ws_listen {
        None => None,
        Some(web_addr) => {
            let l = bind(web_addr, "for the web client ").await?;
            let local = l.local_addr().map(|a| a.to_string());
            tracing::info!(listen = %local.unwrap_or_else(|_| web_addr.clone()), "web listener ready (web client at /, WebSocket at /ws)");
            Some(l)
        }
    };
    let shutdown = CancellationToken::new();
    let stopped = CancellationToken::new();
    let metrics = match &cli.metrics_listen {
        None => None,
        Some(metrics_addr) => {
            let l = bind(metrics_addr, "for metrics ").await?;
            tracing::info!(listen = %metrics_addr, "metrics at /metrics");
            // Serves until the node has stopped, so that `/readyz` says
            // "draining" (503) while it drains.
            Some(tokio::spawn(chat::metrics::serve(
                l,
                node.pool_usage(),
                node.readiness(shutdown.clone()),
                stopped.clone(),
            )))
        }
    };
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    tracing::info!(listen = %local, db = %redact(&cli.db), "chatserver ready");
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // On a worker thread rather than this (the main) one: the sessions'
    // tasks then come from the allocator arena their own allocations use.
    let served = tokio::spawn(node.serve_all(
        chat::server::Listeners {
            plain: listener,
            tls,
            web,
        },
        shutdown,
    ))
    .await;
    stopped.cancel();
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    // A panic there ends the process with an error, as it did on this thread.
    served.map_err(|e| Fatal::Start(format!("the server failed: {e}")))
}

/// Ctrl+C or SIGTERM start a graceful shutdown.
async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    token.cancel();
}

/// `idle`, or a niceness from 0 to 19.
fn parse_niceness(s: &str) -> Result<Option<i32>, String> {
    if s == "idle" {
        return Ok(None);
    }
    match s.parse::<i32>() {
        Ok(n) if (0..=19).contains(&n) => Ok(Some(n)),
        _ => Err(format!("{s:?}: say \"idle\" or a niceness from 0 to 19")),
    }
}
