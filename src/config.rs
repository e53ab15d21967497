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
    /// Password hashes computed at once (each takes ~19 MiB and a core for
    /// tens of milliseconds), so a login flood cannot exhaust memory.
    pub max_concurrent_hashes: usize,
    /// How long shutdown waits for sessions to finish before giving up on them.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame: DEFAULT_MAX_FRAME,
            max_message_bytes: 8 * 1024,
            max_connections: 16_000,
            push_queue: 1024,
            write_timeout: Duration::from_secs(30),
            offline_page: 500,
            history_max: 200,
            history_default: 20,
            max_concurrent_hashes: std::thread::available_parallelism()
                .map(|n| n.get() * 2)
                .unwrap_or(4),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
