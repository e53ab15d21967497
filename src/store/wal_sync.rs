//! Makes a staged commit durable off the writer thread.
//!
//! Why: a staged transaction gathers 100 ms of messages, and committing it
//! with `synchronous = FULL` made the writer wait for the WAL's fsync
//! (3.7 ms median, 11 ms seen) while the batches queued behind it waited
//! too: that was the open loop's p99 (`docs/benchmarks.md`, "Staging").
//! Every message of the transaction is already durable in the staging log,
//! so the commit itself need not be durable at once, only before the log
//! that holds its messages is written over. So the staging writer commits
//! with `synchronous = NORMAL` (no fsync) and asks this thread to
//! `fdatasync` the WAL; the writer alternates between two logs and reuses
//! one only once the commit that covered it is synced
//! ([`WalSync::wait`]).
//!
//! With `wal_autocheckpoint = 0` on the writer (a checkpoint syncs the WAL
//! and the database file on the thread that runs it), this thread also
//! runs the checkpoints, PASSIVE, on a connection of its own: they never
//! hold up the writer. One thing they cannot do: SQLite writes the WAL
//! from its start again only when a writer's transaction began with the
//! WAL wholly checkpointed, and the staging writer begins its next
//! transaction at once after a commit. So once the WAL holds more than
//! [`RESTART_FRAMES`], the writer is told ([`WalSync::restart_due`]) to run
//! one checkpoint itself between two transactions: a few milliseconds
//! every several seconds of load, where autocheckpoints took them every
//! 1,000 pages.
//!
//! SQLite syncs the database file after a checkpoint before it writes over
//! the WAL's start again, so frames this thread synced stay durable.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the WAL is checkpointed at most (when anything was committed).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL frames (pages) past which the writer should checkpoint, so that
/// the WAL starts again from its beginning: 32 MiB of 4 KiB pages.
#[cfg(not(test))]
const RESTART_FRAMES: i64 = 8192;
/// Small in unit tests, so that a test fills it within a second.
#[cfg(test)]
const RESTART_FRAMES: i64 = 256;

/// The syncer's handle, held by the staging writer.
#[derive(Debug)]
pub(super) struct WalSync {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The database file (for the checkpoints' connection).
    db: PathBuf,
    /// Its `-wal` file.
    wal: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    /// The open `-wal` file and its inode, reopened if the file was
    /// replaced (SQLite deletes it when the last connection closes).
    file: Mutex<Option<(File, u64)>>,
    /// The WAL has grown past [`RESTART_FRAMES`].
    restart_due: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// The lsn of the newest commit the writer asked to sync.
    wanted: u64,
    /// The lsn of the newest commit known durable.
    synced: u64,
    /// The last sync failed: waiters get this until a sync succeeds.
    failed: Option<String>,
    stop: bool,
}

impl WalSync {
    /// Starts the syncer for the database at `db`. Nothing counts as
    /// synced until a [`WalSync::sync_now`] or a requested sync says so.
    pub(super) fn start(db: &Path) -> std::io::Result<Self> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let shared = Arc::new(Shared {
            db: db.to_owned(),
            wal: PathBuf::from(wal),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            file: Mutex::new(None),
            restart_due: AtomicBool::new(false),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-wal-sync".into())
            .spawn(move || thread.run())?;
        Ok(WalSync { shared })
    }

    /// The commit covering every batch up to `lsn` has returned: sync it.
    pub(super) fn request(&self, lsn: u64) {
        let mut st = self.shared.lock();
        st.wanted = st.wanted.max(lsn);
        self.shared.changed.notify_all();
    }

    /// Blocks until the commits up to `lsn` are durable.
    pub(super) fn wait(&self, lsn: u64) -> std::io::Result<()> {
        let mut st = self.shared.lock();
        loop {
            if st.synced >= lsn {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(std::io::Error::other(e.clone()));
            }
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Syncs the WAL on this thread (everything committed so far, up to
    /// `lsn`, becomes durable) before returning.
    pub(super) fn sync_now(&self, lsn: u64) -> std::io::Result<()> {
        self.shared.sync()?;
        let mut st = self.shared.lock();
        st.synced = st.synced.max(lsn);
        st.wanted = st.wanted.max(lsn);
        st.failed = None;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Whether the writer should checkpoint between two transactions (once
    /// it says yes, it says no until the WAL grows again).
    pub(super) fn restart_due(&self) -> bool {
        self.shared.restart_due.swap(false, Ordering::AcqRel)
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `fdatasync`s the WAL file as it is now at its path.
    fn sync(&self) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let ino = match std::fs::metadata(&self.wal) {
            Ok(m) => m.ino(),
            // No WAL: the last connection to close checkpointed it into the
            // database (and synced that) and deleted it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if file.as_ref().is_none_or(|(_, i)| *i != ino) {
            // Read-only is enough: on Linux fdatasync needs no write access.
            let f = File::open(&self.wal)?;
            let i = f.metadata()?.ino();
            *file = Some((f, i));
        }
        match file.as_ref() {
            Some((f, _)) => f.sync_data(),
            None => Ok(()),
        }
    }

    fn run(&self) {
        let mut checkpoints: Option<rusqlite::Connection> = None;
        let mut last_checkpoint = Instant::now();
        let mut uncheckpointed = false;
        loop {
            let target = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if st.wanted > st.synced && st.failed.is_none() {
                        break st.wanted;
                    }
                    if uncheckpointed {
                        // Wake for the checkpoint that is due.
                        let left = CHECKPOINT_EVERY.saturating_sub(last_checkpoint.elapsed());
                        if left.is_zero() {
                            break 0;
                        }
                        st = self
                            .changed
                            .wait_timeout(st, left)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|e| e.into_inner().0);
                    } else {
                        st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                }
            };
            if target > 0 {
                let done = self.sync();
                let mut st = self.lock();
                match done {
                    Ok(()) => {
                        st.synced = st.synced.max(target);
                        st.failed = None;
                        uncheckpointed = true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, wal = %self.wal.display(), "could not sync the WAL");
                        st.failed = Some(format!("syncing {}: {e}", self.wal.display()));
                    }
                }
                self.changed.notify_all();
            }
            if uncheckpointed && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                last_checkpoint = Instant::now();
                uncheckpointed = false;
                if let Err(e) = self.checkpoint(&mut checkpoints) {
                    // The WAL only grows until the next one succeeds.
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                    checkpoints = None;
                }
            }
        }
    }

    /// A PASSIVE checkpoint: copies what no reader still needs from the WAL
    /// into the database, without waiting for (or blocking) anyone.
    fn checkpoint(&self, conn: &mut Option<rusqlite::Connection>) -> rusqlite::Result<()> {
        if conn.is_none() {
            let c = rusqlite::Connection::open(&self.db)?;
            c.busy_timeout(Duration::from_millis(100))?;
            *conn = Some(c);
        }
        if let Some(c) = conn {
            // (busy, frames in the WAL, frames checkpointed)
            let frames: i64 = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?;
            if frames > RESTART_FRAMES {
                self.restart_due.store(true, Ordering::Release);
            }
        }
        Ok(())
    }
}
