//! Staging: a message is durable once it is in a small log, and reaches
//! SQLite's tables in one larger transaction a little later.
//!
//! Why: SQLite keeps messages clustered by conversation, so every commit
//! writes (and fsyncs) a 4 KiB page per conversation it touched, about one
//! page per message under load, where the message itself is ~150 bytes.
//! Measured (`docs/benchmarks.md`, "The SQLite floor"), committing every
//! 100 ms instead of every batch cuts SQLite's cost per message to about
//! that of a flat log. So the writer keeps one transaction open across
//! batches; each batch's rows go into it (under a savepoint), the batch is
//! appended to the log here and `fdatasync`ed, and only then acknowledged.
//! The open transaction commits every `--stage-ms`, when asked to (a read
//! that must see every acknowledged message: [`Stage::settle`]), or while
//! another connection wants to write ([`Stage::write_gate`]).
//!
//! The commit is not synced by the writer: `super::wal_sync` does it on a
//! thread of its own. So there are two logs ([`Logs`]): after a commit the
//! writer goes on in the other one, and a log is written over from its
//! start only once the commit that covered its records is durable.
//!
//! A crash loses the open transaction (and perhaps a commit not yet
//! synced), never an acknowledged message: at start both logs' records
//! past the mark the last commit stored (`stage_mark.lsn`, written in the
//! same transaction) are applied again before the node serves.
//!
//! The log file is written with zeros once and then overwritten in place,
//! so an append never changes its size (which would make every
//! `fdatasync` a journal commit too). Each record is `[len u32][crc32
//! u32][lsn u64][database id u64][payload]`, the CRC over all but the
//! first 8 bytes; reading stops at the first record that is torn, that
//! does not carry the next lsn (an older one the rewound log has not
//! overwritten yet), or that belongs to another database (a database file
//! deleted and made afresh beside an old log: its records must not come
//! back into the new one).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{StoreError, StoreResult};

/// Size the log is created with; a log that would pass it commits first.
pub(super) const LOG_BYTES: u64 = 4 << 20;
/// Bytes before a record's payload.
const HEADER: usize = 24;
/// A record longer than this is not believed (a torn length).
const MAX_RECORD: usize = 64 << 20;

/// One change a batch made, as the log keeps it for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub(super) enum Entry {
    /// A stored message (or a recall or edit event).
    #[serde(rename = "m")]
    Message {
        conv: String,
        seq: i64,
        sender: i64,
        device: String,
        name: String,
        body: String,
        at: i64,
        kind: i64,
        ref_seq: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        /// What an event did to the message it names: kind, body, seq.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change: Option<(i64, String, i64)>,
    },
    /// A device's delivery cursors moved forward.
    #[serde(rename = "c")]
    Cursors {
        user: i64,
        device: String,
        positions: Vec<(String, i64)>,
    },
}

/// One log file: appends, one `fdatasync` per batch, and a rewind once
/// what it holds is durable in the database.
#[derive(Debug)]
pub(super) struct StageLog {
    file: File,
    /// The database's own id (`stage_mark.db_id`), in every record.
    db: u64,
    path: PathBuf,
    offset: u64,
    buf: Vec<u8>,
}

impl StageLog {
    /// The log beside the database at `db`.
    pub(super) fn path_for(db: &Path) -> PathBuf {
        let mut p = db.as_os_str().to_owned();
        p.push("-stage");
        PathBuf::from(p)
    }

    /// Opens the log at `path`, creating it (zeroed, synced) if it is
    /// missing. Nothing is written until [`records`](Self::records) has
    /// been read and the log [`rewind`](Self::rewind)ed.
    pub(super) fn open(path: &Path, db: u64) -> std::io::Result<Self> {
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if !existed || file.metadata()?.len() < LOG_BYTES {
            let zeros = vec![0u8; 1 << 20];
            let mut at = file.metadata()?.len();
            while at < LOG_BYTES {
                file.write_all_at(&zeros, at)?;
                at += zeros.len() as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // The new file's name must survive a power cut too.
                File::open(dir)?.sync_all()?;
            }
        }
        Ok(StageLog {
            file,
            db,
            path: path.to_owned(),
            offset: 0,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    /// The records from the start of the log, in order, as long as each
    /// is whole and carries the lsn after the one before.
    pub(super) fn records(&self) -> std::io::Result<Vec<(u64, Vec<Entry>)>> {
        let len = self.file.metadata()?.len();
        let mut out = Vec::new();
        let mut at = 0u64;
        let mut header = [0u8; HEADER];
        let mut expect: Option<u64> = None;
        while at + HEADER as u64 <= len {
            self.file.read_exact_at(&mut header, at)?;
            let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let mut lsn_bytes = [0u8; 8];
            lsn_bytes.copy_from_slice(&header[8..16]);
            let lsn = u64::from_le_bytes(lsn_bytes);
            let mut db_bytes = [0u8; 8];
            db_bytes.copy_from_slice(&header[16..24]);
            if u64::from_le_bytes(db_bytes) != self.db {
                break;
            }
            if size == 0 || size > MAX_RECORD || at + (HEADER + size) as u64 > len {
                break;
            }
            if expect.is_some_and(|e| e != lsn) {
                break;
            }
            let mut payload = vec![0u8; size];
            self.file.read_exact_at(&mut payload, at + HEADER as u64)?;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[8..]);
            hasher.update(&payload);
            if hasher.finalize() != crc {
                break;
            }
            let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&payload) else {
                break;
            };
            out.push((lsn, entries));
            expect = Some(lsn + 1);
            at += (HEADER + size) as u64;
        }
        Ok(out)
    }

    /// Whether a record of about `bytes` more would still fit.
    pub(super) fn fits(&self, bytes: usize) -> bool {
        self.offset + bytes as u64 <= LOG_BYTES
    }

    /// Bytes written since the last rewind.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.offset
    }

    /// Appends one record and makes it durable. On an error nothing counts
    /// as written (the next append overwrites it).
    pub(super) fn append(&mut self, lsn: u64, entries: &[Entry]) -> std::io::Result<()> {
        self.buf.clear();
        self.buf.resize(HEADER, 0);
        serde_json::to_writer(&mut self.buf, entries)?;
        let size = u32::try_from(self.buf.len() - HEADER)
            .map_err(|_| std::io::Error::other("staged batch too large"))?;
        self.buf[8..16].copy_from_slice(&lsn.to_le_bytes());
        self.buf[16..24].copy_from_slice(&self.db.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.buf[8..]);
        self.buf[0..4].copy_from_slice(&size.to_le_bytes());
        self.buf[4..8].copy_from_slice(&hasher.finalize().to_le_bytes());
        self.file.write_all_at(&self.buf, self.offset)?;
        self.file.sync_data()?;
        self.offset += self.buf.len() as u64;
        Ok(())
    }

    /// Everything written so far is in the database: start again from the
    /// beginning (nothing is erased; the next record's lsn tells old from
    /// new).
    pub(super) fn rewind(&mut self) {
        self.offset = 0;
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// The two logs a staging writer alternates between (`super::wal_sync`):
/// batches go to the active one; after a commit the other becomes active,
/// once the commit that covered its records is durable.
#[derive(Debug)]
pub(super) struct Logs {
    logs: [StageLog; 2],
    active: usize,
    /// The lsn of the last record written to each log since its rewind
    /// (0: none).
    last_in: [u64; 2],
}

impl Logs {
    /// The logs' paths beside the database at `db`: `DB-stage` (the name
    /// a single log had before) and `DB-stage-1`.
    pub(super) fn paths(db: &Path) -> [PathBuf; 2] {
        let first = StageLog::path_for(db);
        let mut second = first.clone().into_os_string();
        second.push("-1");
        [first, PathBuf::from(second)]
    }

    /// Whether a log lies beside the database (it must be replayed).
    pub(super) fn exist(db: &Path) -> bool {
        Self::paths(db).iter().any(|p| p.exists())
    }

    pub(super) fn open(db: &Path, id: u64) -> std::io::Result<Self> {
        let [a, b] = Self::paths(db);
        Ok(Logs {
            logs: [StageLog::open(&a, id)?, StageLog::open(&b, id)?],
            active: 0,
            last_in: [0, 0],
        })
    }

    /// Both logs' records, by lsn.
    pub(super) fn records(&self) -> std::io::Result<Vec<(u64, Vec<Entry>)>> {
        let mut all = self.logs[0].records()?;
        all.extend(self.logs[1].records()?);
        all.sort_by_key(|r| r.0);
        Ok(all)
    }

    pub(super) fn fits(&self, bytes: usize) -> bool {
        self.logs[self.active].fits(bytes)
    }

    pub(super) fn append(&mut self, lsn: u64, entries: &[Entry]) -> std::io::Result<()> {
        self.logs[self.active].append(lsn, entries)?;
        self.last_in[self.active] = lsn;
        Ok(())
    }

    /// After a commit: makes the other log active, from its start, once
    /// `durable(lsn)` says the commits up to its last record are durable.
    pub(super) fn switch(
        &mut self,
        durable: impl FnOnce(u64) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let other = 1 - self.active;
        if self.last_in[other] > 0 {
            durable(self.last_in[other])?;
        }
        self.logs[other].rewind();
        self.last_in[other] = 0;
        self.active = other;
        Ok(())
    }

    /// Everything in both logs is durable in the database.
    pub(super) fn rewind_all(&mut self) {
        for log in &mut self.logs {
            log.rewind();
        }
        self.last_in = [0, 0];
        self.active = 0;
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "{} and {}",
            self.logs[0].path().display(),
            self.logs[1].path().display()
        )
    }
}

/// What the store's other connections share with the staging writer.
#[derive(Debug)]
pub(super) struct Stage {
    /// The lsn of the last batch acknowledged (durable in the log, in the
    /// writer's open transaction).
    acked: AtomicU64,
    /// The lsn of the last batch committed to the database, visible to
    /// every connection.
    committed: watch::Sender<u64>,
    /// Other connections waiting to write or writing: while there are any
    /// the writer commits after every batch, so it never holds the
    /// database's write lock for long.
    writers: AtomicUsize,
    /// A commit failed and could not be redone: reads and writes fail
    /// until a restart replays the log.
    broken: AtomicBool,
    /// How long a transaction stays open.
    pub(super) every: Duration,
}

impl Stage {
    pub(super) fn new(lsn: u64, every: Duration) -> Arc<Self> {
        Arc::new(Stage {
            acked: AtomicU64::new(lsn),
            committed: watch::Sender::new(lsn),
            writers: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            every,
        })
    }

    /// Called by the writer after a batch is durable, before it answers.
    pub(super) fn acknowledged(&self, lsn: u64) {
        self.acked.store(lsn, Ordering::Release);
    }

    /// Called by the writer after a commit.
    pub(super) fn committed(&self, lsn: u64) {
        self.committed.send_replace(lsn);
    }

    pub(super) fn broke(&self) {
        self.broken.store(true, Ordering::Release);
        // Wake the waiters: they see `broken`.
        self.committed.send_modify(|_| {});
    }

    /// Whether the writer should commit after each batch.
    pub(super) fn writers_waiting(&self) -> bool {
        self.writers.load(Ordering::Acquire) > 0
    }

    /// Fails once the store is [`broke`](Self::broke)n.
    pub(super) fn check(&self) -> StoreResult<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the message store failed to commit; restart the server".into(),
            ));
        }
        Ok(())
    }

    /// Waits until every batch acknowledged before the call is committed.
    /// `ask` tells the writer to commit now (it is called only if needed).
    pub(super) async fn settle<F: Future<Output = StoreResult<()>>>(
        &self,
        ask: impl FnOnce() -> F,
        wait: Duration,
    ) -> StoreResult<()> {
        self.check()?;
        let want = self.acked.load(Ordering::Acquire);
        let mut seen = self.committed.subscribe();
        if *seen.borrow_and_update() >= want {
            return Ok(());
        }
        ask().await?;
        let done = seen.wait_for(|&c| c >= want || self.broken.load(Ordering::Acquire));
        match tokio::time::timeout(wait, done).await {
            Ok(Ok(_)) => self.check(),
            Ok(Err(_)) => Err(StoreError::Unavailable("store writer stopped".into())),
            Err(_) => Err(StoreError::Unavailable(
                "the database did not commit in time".into(),
            )),
        }
    }

    /// Counts a writer on another connection until the guard drops.
    pub(super) fn enter_writer(self: &Arc<Self>) -> WriteGate {
        self.writers.fetch_add(1, Ordering::AcqRel);
        WriteGate(self.clone())
    }
}

/// Held while another connection writes ([`Stage::enter_writer`]).
#[derive(Debug)]
pub(crate) struct WriteGate(Arc<Stage>);

impl Drop for WriteGate {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64) -> Entry {
        Entry::Message {
            conv: "d:1:2".into(),
            seq,
            sender: 1,
            device: String::new(),
            name: "u1".into(),
            body: format!("m{seq}"),
            at: 5,
            kind: 0,
            ref_seq: 0,
            cid: Some(format!("c{seq}")),
            change: None,
        }
    }

    #[test]
    fn the_log_gives_back_its_records_and_stops_at_a_torn_one_an_old_one_or_another_databases() {
        let dir = tempfile::tempdir().expect("dir");
        let path = StageLog::path_for(&dir.path().join("chat.db"));
        let mut log = StageLog::open(&path, 7).expect("open");
        for lsn in 1..=5 {
            log.append(lsn, &[message(lsn as i64)]).expect("append");
        }
        let all = StageLog::open(&path, 7)
            .expect("reopen")
            .records()
            .expect("read");
        assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(all[2].1, [message(3)]);

        // After a commit the log starts again: a new record overwrites the
        // first old one, and the old ones behind it are not read as new.
        log.rewind();
        log.append(6, &[message(6), message(7)]).expect("append");
        let after = StageLog::open(&path, 7)
            .expect("reopen")
            .records()
            .expect("read");
        assert_eq!(after.iter().map(|r| r.0).collect::<Vec<_>>(), [6]);

        // A record torn by a crash (its last bytes never written) ends it.
        log.append(7, &[message(8)]).expect("append");
        let end = log.used();
        log.file.write_all_at(&[0u8; 3], end - 3).expect("tear");
        let torn = StageLog::open(&path, 7)
            .expect("reopen")
            .records()
            .expect("read");
        assert_eq!(torn.iter().map(|r| r.0).collect::<Vec<_>>(), [6]);

        // Another database (one made afresh beside this log) reads nothing.
        let other = StageLog::open(&path, 8)
            .expect("reopen")
            .records()
            .expect("read");
        assert!(other.is_empty());
    }

    #[test]
    fn two_logs_alternate_and_a_log_is_reused_only_once_its_commit_is_durable() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("chat.db");
        let mut logs = Logs::open(&db, 7).expect("open");
        let lsns = |logs: &Logs| -> Vec<u64> {
            logs.records().expect("read").iter().map(|r| r.0).collect()
        };
        logs.append(1, &[message(1)]).expect("append");
        logs.append(2, &[message(2)]).expect("append");
        // Commit 1 (through lsn 2): the second log is empty, nothing to wait for.
        logs.switch(|_| panic!("nothing to wait for"))
            .expect("switch");
        logs.append(3, &[message(3)]).expect("append");
        logs.append(4, &[message(4)]).expect("append");
        assert_eq!(lsns(&logs), [1, 2, 3, 4]);

        // Commit 2: back to the first log, which may be written over only
        // once commit 1 (lsn 2) is durable; if that fails, nothing moves.
        let err = logs.switch(|_| Err(std::io::Error::other("sync failed")));
        assert!(err.is_err());
        logs.append(5, &[message(5)]).expect("append");
        assert_eq!(lsns(&logs), [1, 2, 3, 4, 5]);
        let mut waited = None;
        logs.switch(|lsn| {
            waited = Some(lsn);
            Ok(())
        })
        .expect("switch");
        assert_eq!(waited, Some(2));
        logs.append(6, &[message(6)]).expect("append");
        // A crash now: replay finds 3-6 in order across both logs, and
        // nothing of the first log's old records.
        let reopened = Logs::open(&db, 7).expect("reopen");
        assert_eq!(lsns(&reopened), [3, 4, 5, 6]);
    }
}
