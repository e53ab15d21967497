//! Server limits and tunables, with the defaults a single node runs on.
//!
//! Every limit a client can run into lives here, so that tests can shrink them
//! and operators can see them in one place (`chatserver --help` lists the
//! flags that set them).

use std::time::Duration;

use crate::protocol::codec::DEFAULT_MAX_FRAME;

/// Limits and tunables for one server node.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, reported by SERVER_INFO (and, in a cluster, its
    /// identity on the bus).
    pub node_id: String,
    /// Largest frame accepted from a client; a longer one closes the
    /// connection after an error reply.
    pub max_frame: usize,
    /// Largest chat message body, in bytes.
    pub max_message_bytes: usize,
    /// Connections served at once; more are told `ServerFull` and closed.
    /// Stays below the process's open-file cap so the node never hits EMFILE
    /// in normal operation.
    pub max_connections: usize,
    /// Pushes queued for one session. A session whose client reads so slowly
    /// that this fills up is disconnected (its messages stay stored and are
    /// delivered at its next login) instead of growing memory without bound.
    pub push_queue: usize,
    /// How long one write to a client may take before the connection is
    /// considered dead.
    pub write_timeout: Duration,
    /// Offline messages per page at login; the first page rides in the login
    /// reply, later pages follow as ordinary pushes.
    pub offline_page: usize,
    /// Largest page a history request may ask for.
    pub history_max: u32,
    /// Page size when a history request names none.
    pub history_default: u32,
    /// Password hashes computed at once, each on a thread of its own (each
    /// takes ~19 MiB, which its thread keeps and reuses, and a core for tens
    /// of milliseconds): a login flood cannot exhaust memory, and memory
    /// stays at this many blocks however many logins there are.
    pub max_concurrent_hashes: usize,
    /// How often at most a session stores its delivery positions. Under load
    /// this folds many deliveries into one write; it is also the window of
    /// messages that may be delivered again after a crash.
    pub cursor_flush_interval: Duration,
    /// How long shutdown waits for sessions to finish before giving up on them.
    pub shutdown_grace: Duration,
    /// A connection that has sent a PING promised heartbeats: once it is
    /// silent this long it is told so (errno 55) and closed, and its user
    /// goes offline. Connections that never ping (the original client) are
    /// not held to it; TCP keepalive finds their dead peers instead.
    pub heartbeat_timeout: Duration,
    /// Idle time before the kernel starts probing a silent peer (TCP
    /// keepalive); three unanswered probes `keepalive_interval` apart close
    /// the connection.
    pub keepalive_idle: Duration,
    /// Time between TCP keepalive probes.
    pub keepalive_interval: Duration,
    /// How long a resume token from a login stays valid (logout revokes it
    /// at once).
    pub resume_token_ttl: Duration,
    /// Logins and resumes admitted per second, on average: a reconnect storm
    /// after another node's death cannot drown this node's chat.
    pub session_rate: u32,
    /// Logins and resumes admitted at once above the average rate.
    pub session_burst: u32,
    /// Database connection pool (MySQL; SQLite uses a small fixed pool).
    pub pool: PoolConfig,
    /// What an acknowledged message survives on the embedded SQLite store.
    pub sqlite_sync: SqliteSync,
}

/// When SQLite makes a commit durable, and so what an acknowledged message
/// survives. (MySQL/MariaDB follow the server's own settings, e.g.
/// `innodb_flush_log_at_trx_commit`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SqliteSync {
    /// fsync at every commit (`synchronous=FULL`): an acknowledged message
    /// survives a process crash and a power cut.
    #[default]
    Full,
    /// No fsync at commit (`synchronous=NORMAL` in WAL mode): an acknowledged
    /// message survives a process crash, but the last commits may be lost
    /// in a power cut or kernel crash.
    Normal,
}

impl SqliteSync {
    /// The `PRAGMA synchronous` value.
    pub fn pragma(self) -> &'static str {
        match self {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        }
    }
}

/// The database connection pool: what the original hand-wrote as its
/// connection pool, as settings of sqlx's pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Connections opened at start and kept open.
    pub min_connections: u32,
    /// Connections open at most.
    pub max_connections: u32,
    /// Idle time after which a connection above the minimum is closed.
    pub idle_timeout: Duration,
    /// How long a request waits for a free connection before failing with
    /// errno 50 (never hangs).
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_connections: 2,
            max_connections: 16,
            idle_timeout: Duration::from_secs(60),
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: "standalone".to_owned(),
            max_frame: DEFAULT_MAX_FRAME,
            max_message_bytes: 8 * 1024,
            max_connections: 16_000,
            push_queue: 1024,
            write_timeout: Duration::from_secs(30),
            offline_page: 500,
            history_max: 200,
            history_default: 20,
            max_concurrent_hashes: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            cursor_flush_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(45),
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            resume_token_ttl: Duration::from_secs(7 * 24 * 3600),
            session_rate: 3000,
            session_burst: 1000,
            pool: PoolConfig::default(),
            sqlite_sync: SqliteSync::default(),
        }
    }
}
