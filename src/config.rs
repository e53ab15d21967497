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
    /// Pushes queued for one session. When a client reads so slowly that
    /// this fills up, further pushes are dropped and the session reads what
    /// it missed from the store once it catches up: memory stays bounded and
    /// nobody is disconnected for someone else's flood.
    pub push_queue: usize,
    /// How long one write to a client may take before the connection is
    /// considered dead.
    pub write_timeout: Duration,
    /// Time between two frames to a classic session (the original client,
    /// which reads one frame per `recv`): frames that left together would
    /// arrive in one read, which it cannot parse. See `docs/protocol.md`,
    /// "Compatibility with the original client".
    pub classic_spacing: Duration,
    /// How long a classic session's connection must stay open after a
    /// message was written (and its bytes acknowledged by the client's TCP)
    /// before the message counts as read: the original client sends no
    /// acknowledgements, and one that crashes on a frame closes within
    /// milliseconds of reading it.
    pub classic_read_grace: Duration,
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
    /// The niceness of the password-hashing threads (0, the default: an
    /// equal share of a busy core, so that every login of a storm gets
    /// through, while chat's p99 rises by a few milliseconds); `None`: the
    /// idle scheduling class (hashing only on a core nothing else wants,
    /// which keeps chat's tail latency but refused two thirds of a storm's
    /// logins after a 30 s wait; `docs/benchmarks.md`, "A login storm").
    pub hash_niceness: Option<i32>,
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
    /// Devices one user may have; a login from one more forgets the device
    /// unused the longest (its session ends, its token stops working).
    pub max_devices: usize,
    /// Groups up to this size tell every member who read up to where, and
    /// who is typing; larger ones tell only the reader's own devices.
    pub receipts_group_max: usize,
    /// How long after sending a sender may recall a message.
    pub recall_window: Duration,
    /// How long after sending a sender may edit a message.
    pub edit_window: Duration,
    /// Logins and resumes admitted per second, on average: a reconnect storm
    /// after another node's death cannot drown this node's chat.
    pub session_rate: u32,
    /// Logins and resumes admitted at once above the average rate.
    pub session_burst: u32,
    /// Database connection pool (MySQL; SQLite uses a small fixed pool).
    pub pool: PoolConfig,
    /// What an acknowledged message survives on the embedded SQLite store.
    pub sqlite_sync: SqliteSync,
    /// SQLite with FULL: how long the writer's transaction stays open while
    /// each batch is made durable in a log beside the database
    /// (`store::stage`); `None` commits every batch.
    pub sqlite_stage: Option<Duration>,
    /// What one client, one address or one account may do: the defences
    /// against hostile clients.
    pub limits: Limits,
    /// Balancers whose PROXY protocol header names the real client (for
    /// the per-address limits); none by default.
    pub proxy: crate::proxy::ProxyTrust,
}

/// Limits on what one connection, source address or account may do, so that
/// a hostile client can neither guess passwords, hold sockets, flood a
/// bystander nor fill the store. Each limit reached is answered with an
/// errno (README, "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection must log in (or resume) within this time of connecting
    /// (or of its last logout), else it is told errno 58 and closed. Long,
    /// because the original client connects first and then shows its menu:
    /// a person typing an id and password, or pausing after a logout, is
    /// left alone. Sockets that never log in are held to
    /// `login_timeout_pressed` instead when they press on the node.
    pub login_timeout: Duration,
    /// The login deadline under pressure: when the node is near its
    /// connection cap, when the connection's address holds more than
    /// `anonymous_per_addr` connections not logged in, or when the
    /// connection has sent nothing but refused frames, it is closed this
    /// long after connecting (errno 58).
    pub login_timeout_pressed: Duration,
    /// Connections not logged in that one address (IPv6: one /64) may hold
    /// before they are held to `login_timeout_pressed`.
    pub anonymous_per_addr: usize,
    /// A frame, once its first byte has arrived, must be complete within
    /// this time, else errno 59 and the connection is closed (slowloris).
    pub frame_timeout: Duration,
    /// Largest frame before login: a login or registration is small, so an
    /// anonymous connection cannot make the server hold a large buffer.
    pub prelogin_max_frame: usize,
    /// Connections open at once from one source address (IPv6: one /64);
    /// more are told errno 51 and closed, so that one address cannot fill
    /// the node's connection cap.
    pub conns_per_addr: usize,
    /// Loopback addresses are exempt from the per-address limits (a local
    /// nginx, benchmarks, tests): behind a balancer every client arrives
    /// from its address, and per-account limits still apply.
    pub exempt_loopback: bool,
    /// Requests per second one connection may make on average; beyond its
    /// budget its requests wait (and it is told errno 57 once), so a flooder
    /// slows down itself and nobody else.
    pub request_rate: u32,
    /// Requests one connection may make at once above the average.
    pub request_burst: u32,
    /// Bytes per second one connection may send on average (0: no limit).
    pub byte_rate: u32,
    /// Bytes one connection may send at once above the average.
    pub byte_burst: u32,
    /// Wrong passwords an account may take before each further login to it
    /// must wait (1 s, doubling, up to `lockout_max`): errno 60 with
    /// `retry_ms`.
    pub account_free_failures: u32,
    /// The same per source address, over all the accounts it tries.
    pub addr_free_failures: u32,
    /// The longest a login must wait after repeated wrong passwords.
    pub lockout_max: Duration,
    /// Registrations one address may make at once; then one per
    /// `register_interval`.
    pub register_burst: u32,
    /// Time that earns one more registration to an address.
    pub register_interval: Duration,
    /// Groups one user may create or join.
    pub groups_per_user: u32,
    /// Friends one user may have.
    pub friends_per_user: u32,
    /// Members one group may have.
    pub members_per_group: u32,
    /// Friend requests one user may have waiting for an answer, and
    /// requests to join groups likewise.
    pub pending_requests: usize,
    /// Friend requests one user may make in a day (a rolling 24 hours).
    pub friend_requests_per_day: usize,
    /// Invitations one group may have waiting for an answer.
    pub invites_per_group: usize,
    /// Message bytes one user may store in a day (UTC), over all its
    /// conversations; past it chat messages get errno 61 until midnight.
    pub bytes_per_user_day: u64,
    /// Messages one sender may leave unread for one receiver (in their
    /// direct conversation); past it the sender gets errno 61 until the
    /// receiver reads some, so nobody can bury another's offline backlog.
    pub unread_per_sender: u64,
    /// Bytes of messages one history reply may carry; a longer page is cut
    /// short (the client asks again from where it ended).
    pub history_max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            login_timeout: Duration::from_secs(15 * 60),
            login_timeout_pressed: Duration::from_secs(30),
            anonymous_per_addr: 8,
            frame_timeout: Duration::from_secs(15),
            prelogin_max_frame: 4096,
            conns_per_addr: 64,
            exempt_loopback: true,
            request_rate: 200,
            request_burst: 400,
            byte_rate: 1 << 20,
            byte_burst: 4 << 20,
            account_free_failures: 5,
            addr_free_failures: 20,
            lockout_max: Duration::from_secs(15 * 60),
            register_burst: 10,
            register_interval: Duration::from_secs(60),
            groups_per_user: 500,
            friends_per_user: 2000,
            members_per_group: 20_000,
            pending_requests: 100,
            friend_requests_per_day: 50,
            invites_per_group: 200,
            bytes_per_user_day: 64 << 20,
            unread_per_sender: 10_000,
            history_max_bytes: 256 * 1024,
        }
    }
}

impl Limits {
    /// No per-connection, per-address or per-account limits: for benchmarks
    /// that drive a few connections as hard as they can.
    pub fn unlimited() -> Self {
        Limits {
            login_timeout: Duration::from_secs(24 * 3600),
            login_timeout_pressed: Duration::from_secs(24 * 3600),
            anonymous_per_addr: usize::MAX,
            frame_timeout: Duration::from_secs(24 * 3600),
            prelogin_max_frame: usize::MAX,
            conns_per_addr: usize::MAX,
            exempt_loopback: true,
            request_rate: 0,
            request_burst: 0,
            byte_rate: 0,
            byte_burst: 0,
            account_free_failures: u32::MAX,
            addr_free_failures: u32::MAX,
            lockout_max: Duration::ZERO,
            register_burst: u32::MAX,
            register_interval: Duration::ZERO,
            groups_per_user: u32::MAX,
            friends_per_user: u32::MAX,
            members_per_group: u32::MAX,
            pending_requests: usize::MAX,
            friend_requests_per_day: usize::MAX,
            invites_per_group: usize::MAX,
            bytes_per_user_day: u64::MAX,
            unread_per_sender: u64::MAX,
            history_max_bytes: usize::MAX,
        }
    }
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

/// How long the SQLite writer's transaction stays open by default
/// (`--stage-ms`, `store::stage`): long enough that a busy conversation's
/// page is written once for many messages, short enough that the log stays
/// small.
pub const DEFAULT_SQLITE_STAGE: Duration = Duration::from_millis(100);

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
            classic_spacing: Duration::from_millis(5),
            classic_read_grace: Duration::from_secs(2),
            offline_page: 500,
            history_max: 200,
            history_default: 20,
            max_concurrent_hashes: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            hash_niceness: Some(0),
            cursor_flush_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(45),
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            resume_token_ttl: Duration::from_secs(7 * 24 * 3600),
            max_devices: 10,
            receipts_group_max: 50,
            recall_window: Duration::from_secs(120),
            edit_window: Duration::from_secs(24 * 3600),
            session_rate: 3000,
            session_burst: 1000,
            pool: PoolConfig::default(),
            sqlite_sync: SqliteSync::default(),
            sqlite_stage: Some(DEFAULT_SQLITE_STAGE),
            limits: Limits::default(),
            proxy: crate::proxy::ProxyTrust::default(),
        }
    }
}
