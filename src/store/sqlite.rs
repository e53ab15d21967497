//! The embedded SQLite backend: one data file, nothing to install.
//!
//! Reads go through a small pool (WAL mode lets them run beside the writer).
//! Messages and cursor moves go through [`GroupCommit`] with a writer that
//! owns its own connection (rusqlite, on a thread of its own: a whole batch
//! is one hand-off to that thread and one back, where sqlx would make every
//! statement a round trip to its worker thread). Being the only writer of
//! messages, it can keep each conversation's last sequence number in memory.
//! sqlx runs every pooled connection on a worker thread of its own, so no
//! SQLite call blocks the reactor.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use super::commit::{BlockingBatchWriter, GroupCommit, WriteOp};
use super::sql::{self, Dialect, FastReads, MsgRow, SqlStore};
use super::stage::{self, Entry, Logs, Stage};
use super::wal_sync::WalSync;
use super::{Reader, SessionStart, StoreError, StoreResult, now_ms};
use crate::config::SqliteSync;
use crate::model::{ChatMessage, Conversation, Device, Seq, UserId, UserSummary};

/// Conversations whose last sequence number the writer remembers; past this
/// the cache is dropped and refilled from the table on demand.
const MAX_CACHED_CONVS: usize = 1 << 20;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite-backed [`Store`](super::Store).
pub type SqliteStore = SqlStore<Sqlite>;

impl Dialect for Sqlite {
    const ADD_FRIENDS: &'static str =
        "INSERT OR IGNORE INTO friends (user_id, friend_id) VALUES (?, ?), (?, ?)";
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const ADD_BLOCK: &'static str =
        "INSERT OR IGNORE INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, ?)";
    const UPSERT_READ: &'static str = "INSERT INTO read_marks (user_id, conv, read_seq) VALUES (?, ?, ?) \
         ON CONFLICT (user_id, conv) DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)";

    fn rows_affected(done: &Self::QueryResult) -> u64 {
        done.rows_affected()
    }

    fn inserted_id(done: &SqliteQueryResult) -> StoreResult<i64> {
        Ok(done.last_insert_rowid())
    }
}

/// Read-only connections for reads that take several statements (a session
/// start): one hop to a blocking thread for all of them, where the pool
/// would make each statement a round trip to its worker thread.
#[derive(Debug)]
struct Readers {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
    /// At most [`READERS`] reads at once, so their connections are reused
    /// rather than opened per read.
    permits: tokio::sync::Semaphore,
}

/// Read connections (and reads at once).
const READERS: usize = 4;

impl Readers {
    fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> StoreResult<T> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                use rusqlite::OpenFlags;
                let c = rusqlite::Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(unavailable)?;
                c.busy_timeout(Duration::from_secs(5))
                    .map_err(unavailable)?;
                c.set_prepared_statement_cache_capacity(16);
                c
            }
        };
        let result = f(&conn).map_err(unavailable);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < READERS {
            idle.push(conn);
        }
        result
    }

    fn start_of_session(&self, reader: &Reader, page: usize) -> StoreResult<SessionStart> {
        let (user, device) = (reader.user, reader.device.as_str());
        self.with(|c| {
            let cursors: Vec<(String, i64)> = c
                .prepare_cached(sql::CURSORS)?
                .query_map(rusqlite::params![device, user], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let limit = i64::try_from(page).unwrap_or(i64::MAX);
            let mut undelivered: Vec<MsgRow> = c
                .prepare_cached(sql::UNDELIVERED)?
                .query_map(
                    rusqlite::params![device, limit, user, user, device, limit],
                    msg_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            if undelivered.is_empty() {
                undelivered = c
                    .prepare_cached(sql::UNDELIVERED_ANY)?
                    .query_map(
                        rusqlite::params![device, user, user, device, limit],
                        msg_row,
                    )?
                    .collect::<rusqlite::Result<_>>()?;
            }
            let devices: Vec<(String, i64)> = c
                .prepare_cached(sql::DEVICES)?
                .query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let reads: Vec<(String, i64, i64, Option<i64>)> = c
                .prepare_cached(sql::READS)?
                .query_map([user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let friends: Vec<UserSummary> = c
                .prepare_cached(sql::FRIENDS)?
                .query_map([user], |r| {
                    Ok(UserSummary {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let groups: Vec<(i64, String, String)> = c
                .prepare_cached(sql::USER_GROUPS)?
                .query_map([user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let members: Vec<(i64, i64, String, String)> = c
                .prepare_cached(sql::USER_GROUPS_MEMBERS)?
                .query_map([user], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(SessionStart {
                cursors: sql::cursors(cursors),
                undelivered: sql::messages(undelivered),
                friends,
                groups: sql::assemble_groups(groups, members),
                devices: sql::devices(devices),
                reads: sql::reads(reads),
            })
        })
    }
}

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`;
    /// not `:memory:`, since the writer needs a second connection to the
    /// same data) and runs the migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::open_with(
            url,
            SqliteSync::Full,
            Some(crate::config::DEFAULT_SQLITE_STAGE),
        )
        .await
    }

    /// As [`open`](Self::open), with the chosen durability for the writer
    /// (reads never write, so the pool's setting does not matter) and how
    /// long its transactions stay open (`stage`, only with FULL; `None`:
    /// one commit per batch, before it is answered). See `super::stage`.
    pub async fn open_with(
        url: &str,
        sync: SqliteSync,
        stage: Option<Duration>,
    ) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))?;
        let path = options.get_filename().to_owned();
        let readers = Arc::new(Readers {
            path: path.clone(),
            idle: std::sync::Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(READERS),
        });
        let writer = tokio::task::spawn_blocking(move || Writer::open(&path, sync, stage))
            .await
            .map_err(|e| StoreError::Unavailable(format!("writer did not start: {e}")))??;
        let commit = GroupCommit::start_blocking(writer, "sqlite-writer")
            .map_err(|e| StoreError::Unavailable(format!("writer thread: {e}")))?;
        Ok(SqlStore {
            pool,
            commit,
            fast_reads: Some(Arc::new(ReadPath(readers))),
        })
    }
}

/// The read path over [`Readers`]: each call takes a permit and runs on a
/// blocking thread.
#[derive(Debug)]
struct ReadPath(Arc<Readers>);

#[async_trait::async_trait]
impl FastReads for ReadPath {
    async fn session_start(&self, reader: &Reader, page: usize) -> StoreResult<SessionStart> {
        let reader = reader.clone();
        self.read(move |r| r.start_of_session(&reader, page)).await
    }

    async fn token_user(&self, token_hash: &str) -> StoreResult<Option<(UserId, String, Device)>> {
        let hash = token_hash.to_owned();
        self.read(move |r| {
            r.with(|c| {
                use rusqlite::OptionalExtension;
                c.prepare_cached(sql::TOKEN_USER)?
                    .query_row(rusqlite::params![hash, now_ms()], |row| {
                        let device: String = row.get(2)?;
                        Ok((row.get(0)?, row.get(1)?, Device::stored(&device)))
                    })
                    .optional()
            })
        })
        .await
    }
}

impl ReadPath {
    /// Runs `f` on a read connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Readers) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let _permit = self
            .0
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".into()))?;
        let readers = self.0.clone();
        tokio::task::spawn_blocking(move || f(&readers))
            .await
            .map_err(|e| StoreError::Unavailable(format!("reader stopped: {e}")))?
    }
}

/// The single writer: owns a connection on its own thread, and the
/// per-conversation counters.
struct Writer {
    conn: rusqlite::Connection,
    /// Last sequence number of each conversation, as stored (committed, or
    /// staged in the open transaction and durable in the log).
    last_seq: HashMap<Conversation, Seq>,
    /// With `--stage-ms`: the log and the open transaction.
    staging: Option<Staging>,
}

/// The staging writer's state (`super::stage`).
struct Staging {
    logs: Logs,
    /// Makes the commits durable (`super::wal_sync`).
    wal: WalSync,
    stage: Arc<Stage>,
    /// The lsn of the last record written to the logs.
    lsn: u64,
    /// When the open transaction began (none open: `None`).
    open_since: Option<std::time::Instant>,
}

/// A message row ([`MsgRow`]) as rusqlite reads it.
fn msg_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MsgRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

/// What an event does to the message it names ([`sql::APPLY_CHANGE`]'s
/// kind, body and seq), if `msg` is an event.
pub(super) fn change_of(msg: &crate::model::NewMessage) -> Option<(i64, &str, i64)> {
    use crate::model::MsgKind;
    match msg.kind {
        MsgKind::RecallOf(s) => Some((MsgKind::Recalled.columns().0, "", s.0)),
        MsgKind::EditOf(s) => Some((MsgKind::Edited.columns().0, msg.body.as_str(), s.0)),
        _ => None,
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A staged commit that could not be made durable.
fn wal_unsynced(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("syncing the WAL: {e}"))
}

impl Writer {
    /// FULL (the default): a message we have acknowledged survives a power
    /// cut, not only a crash; group commit keeps the fsync cost per batch.
    /// Whatever a staging log beside the database holds past its mark is
    /// applied first (a crash while staging), staging or not this time.
    fn open(
        path: &std::path::Path,
        sync: SqliteSync,
        stage_every: Option<Duration>,
    ) -> StoreResult<Self> {
        let conn = rusqlite::Connection::open(path).map_err(unavailable)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(unavailable)?;
        // Statement journals and sorts stay in memory: no temporary file
        // per batch.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
            sync.pragma()
        ))
        .map_err(unavailable)?;
        conn.set_prepared_statement_cache_capacity(32);
        let mut writer = Writer {
            conn,
            last_seq: HashMap::new(),
            staging: None,
        };
        // Staging's promise rests on the commit's fsync: only with FULL.
        let every = stage_every.filter(|_| sync == SqliteSync::Full);
        if every.is_some() || Logs::exist(path) {
            let io = |e: std::io::Error| {
                StoreError::Unavailable(format!("staging logs of {}: {e}", path.display()))
            };
            let db_id: i64 = writer
                .conn
                .query_row("SELECT db_id FROM stage_mark WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .map_err(unavailable)?;
            let logs = Logs::open(path, db_id as u64).map_err(io)?;
            let lsn = writer.replay(&logs)?;
            if let Some(every) = every {
                // Commits no longer sync (the syncer does, off this thread),
                // nor checkpoint (the syncer's connection does).
                writer
                    .conn
                    .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")
                    .map_err(unavailable)?;
                let wal = WalSync::start(path).map_err(io)?;
                // The last run's last commit may have been left unsynced
                // (the logs held its records): sync before writing over
                // them.
                wal.sync_now(lsn).map_err(io)?;
                writer.staging = Some(Staging {
                    logs,
                    wal,
                    stage: Stage::new(lsn, every),
                    lsn,
                    open_since: None,
                });
            }
        }
        Ok(writer)
    }

    /// Applies the log's records past the database's mark in one
    /// transaction; returns the lsn to continue from.
    fn replay(&mut self, logs: &Logs) -> StoreResult<u64> {
        let records = logs.records().map_err(|e| {
            StoreError::Unavailable(format!("staging logs {}: {e}", logs.describe()))
        })?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let mark: i64 = tx
            .query_row("SELECT lsn FROM stage_mark WHERE id = 1", [], |r| r.get(0))
            .map_err(unavailable)?;
        let mark = u64::try_from(mark).unwrap_or(0);
        let last = records.last().map_or(0, |r| r.0).max(mark);
        let todo: Vec<_> = records.into_iter().filter(|r| r.0 > mark).collect();
        if todo.is_empty() {
            return Ok(last);
        }
        if todo[0].0 != mark + 1 {
            tracing::warn!(
                mark,
                first = todo[0].0,
                "the staging log does not follow on from the database's mark"
            );
        }
        let mut messages = 0usize;
        for (_, entries) in &todo {
            for entry in entries {
                if let Entry::Message { conv, seq, .. } = entry {
                    let Some(key) = Conversation::from_key(conv) else {
                        continue;
                    };
                    if let Err(e) = start_conversation(&tx, key).map_err(unavailable)? {
                        tracing::warn!(conv, seq, error = %e, "a staged message's conversation is gone; not replayed");
                        continue;
                    }
                    tx.prepare_cached(
                        "INSERT INTO conversations (conv, last_seq) VALUES (?, ?) \
                         ON CONFLICT(conv) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
                    )
                    .and_then(|mut st| st.execute(rusqlite::params![conv, seq]))
                    .map_err(unavailable)?;
                    messages += 1;
                }
                apply_entry(&tx, entry, true).map_err(unavailable)?;
            }
        }
        let i = i64::try_from(last).unwrap_or(i64::MAX);
        tx.execute("UPDATE stage_mark SET lsn = ? WHERE id = 1", [i])
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        tracing::info!(
            records = todo.len(),
            messages,
            lsn = last,
            "replayed the staging log"
        );
        Ok(last)
    }

    /// Writes `batch`'s rows on `conn`, inside the transaction the caller
    /// opened; fills `entries` with what the log must keep.
    fn write(
        conn: &rusqlite::Connection,
        last_seq: &HashMap<Conversation, Seq>,
        batch: &[WriteOp],
        touched: &mut HashMap<Conversation, Seq>,
        entries: &mut Vec<Entry>,
    ) -> rusqlite::Result<Vec<Option<StoreResult<ChatMessage>>>> {
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                WriteOp::Append(msg) => {
                    // A resend (even one earlier in this very batch) gets
                    // the stored original.
                    if let Some(cid) = &msg.client_id {
                        use rusqlite::OptionalExtension;
                        let original: Option<MsgRow> = conn
                            .prepare_cached(sql::SENT_ID)?
                            .query_row(rusqlite::params![msg.sender, cid], msg_row)
                            .optional()?;
                        if let Some(row) = original {
                            outcomes.push(Some(sql::message_of(row).ok_or_else(|| {
                                StoreError::Unavailable("stored conversation key unreadable".into())
                            })));
                            continue;
                        }
                    }
                    let known = touched
                        .get(&msg.conv)
                        .or_else(|| last_seq.get(&msg.conv))
                        .copied();
                    let last = match known {
                        Some(last) => last,
                        None => match start_conversation(conn, msg.conv)? {
                            Ok(last) => last,
                            Err(e) => {
                                outcomes.push(Some(Err(e)));
                                continue;
                            }
                        },
                    };
                    let seq = last.next();
                    let (kind, ref_seq) = msg.kind.columns();
                    let entry = Entry::Message {
                        conv: msg.conv.key(),
                        seq: seq.0,
                        sender: msg.sender.into(),
                        device: msg.sender_device.as_str().to_owned(),
                        name: msg.sender_name.clone(),
                        body: msg.body.clone(),
                        at: now,
                        kind,
                        ref_seq,
                        cid: msg.client_id.clone(),
                        change: change_of(msg).map(|(k, b, s)| (k, b.to_owned(), s)),
                    };
                    apply_entry(conn, &entry, false)?;
                    entries.push(entry);
                    touched.insert(msg.conv, seq);
                    outcomes.push(Some(Ok(msg.stored(seq, now))));
                }
                WriteOp::Cursors { reader, positions } => {
                    let entry = Entry::Cursors {
                        user: reader.user.into(),
                        device: reader.device.as_str().to_owned(),
                        positions: positions.iter().map(|(c, s)| (c.key(), s.0)).collect(),
                    };
                    apply_entry(conn, &entry, false)?;
                    entries.push(entry);
                    outcomes.push(None);
                }
            }
        }
        let mut upsert = conn.prepare_cached(
            "INSERT INTO conversations (conv, last_seq) VALUES (?, ?) \
             ON CONFLICT(conv) DO UPDATE SET last_seq = excluded.last_seq",
        )?;
        for (conv, seq) in touched.iter() {
            upsert.execute(rusqlite::params![conv.key(), seq])?;
        }
        Ok(outcomes)
    }

    /// One transaction per batch, committed before the answer.
    fn write_committed(
        &mut self,
        batch: &[WriteOp],
    ) -> StoreResult<Vec<Option<StoreResult<ChatMessage>>>> {
        let mut touched = HashMap::new();
        let mut entries = Vec::new();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let outcomes = Self::write(&tx, &self.last_seq, batch, &mut touched, &mut entries)
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        if let Some(st) = &self.staging {
            // The staging writer commits with synchronous = NORMAL.
            st.wal.sync_now(st.lsn).map_err(wal_unsynced)?;
        }
        // Only what committed may advance the counters.
        self.last_seq.extend(touched);
        Ok(outcomes)
    }

    /// The batch's rows go into the open transaction, the batch into the
    /// log; once the log is synced the batch counts. No savepoint per
    /// batch (it copied every page a batch touched, measured at 5% of the
    /// writer): a batch that fails undoes the whole open transaction, and
    /// the log, which holds every batch acknowledged, is applied again.
    fn write_staged(
        &mut self,
        batch: &[WriteOp],
    ) -> StoreResult<Vec<Option<StoreResult<ChatMessage>>>> {
        let Some(st) = self.staging.as_mut() else {
            return Err(StoreError::Unavailable("not staging".into()));
        };
        if st.open_since.is_none() {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(unavailable)?;
            st.open_since = Some(std::time::Instant::now());
        }
        let mut touched = HashMap::new();
        let mut entries = Vec::new();
        let written = Self::write(
            &self.conn,
            &self.last_seq,
            batch,
            &mut touched,
            &mut entries,
        )
        .map_err(unavailable)
        .and_then(|outcomes| {
            if !entries.is_empty() {
                st.logs
                    .append(st.lsn + 1, &entries)
                    .map_err(|e| StoreError::Unavailable(format!("staging log: {e}")))?;
                st.lsn += 1;
            }
            Ok(outcomes)
        });
        match written {
            Ok(outcomes) => {
                self.last_seq.extend(touched);
                st.stage.acknowledged(st.lsn);
                Ok(outcomes)
            }
            Err(e) => {
                tracing::error!(error = %e, "a staged batch failed; applying the log again");
                self.recover();
                Err(e)
            }
        }
    }

    /// Commits the open transaction with the mark (not synced here: the
    /// syncer is asked to) and switches logs; if the commit fails, or the
    /// log to switch to is not free because a sync failed,
    /// [`recover`](Self::recover)s.
    fn commit_staged(&mut self) {
        let Some(st) = self.staging.as_mut() else {
            return;
        };
        if st.open_since.is_none() {
            return;
        }
        let started = std::time::Instant::now();
        let lsn = i64::try_from(st.lsn).unwrap_or(i64::MAX);
        let committed = self
            .conn
            .execute("UPDATE stage_mark SET lsn = ? WHERE id = 1", [lsn])
            .and_then(|_| self.conn.execute_batch("COMMIT"));
        match committed {
            Ok(()) => {
                st.open_since = None;
                st.wal.request(st.lsn);
                // Visible now; durable already in the logs.
                st.stage.committed(st.lsn);
                let wal = &st.wal;
                if let Err(e) = st.logs.switch(|lsn| wal.wait(lsn)) {
                    tracing::error!(error = %e, "a staged commit was not synced; applying the logs again");
                    self.recover();
                } else if wal.restart_due() {
                    // Between two transactions, so that the next one may
                    // write the WAL from its start (`super::wal_sync`).
                    if let Err(e) =
                        self.conn
                            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
                crate::metrics::observe_duration(
                    &crate::metrics::METRICS.store_staged_commit,
                    started.elapsed(),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "staged commit failed; applying the logs again");
                self.recover();
            }
        }
    }

    /// Drops the open transaction and applies the log from the database's
    /// mark in a new one. If that fails too, the store stops taking writes:
    /// the log keeps every acknowledged batch for the next start.
    fn recover(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.last_seq.clear();
        let Some(mut st) = self.staging.take() else {
            return;
        };
        st.open_since = None;
        match self
            .replay(&st.logs)
            .and_then(|lsn| st.wal.sync_now(lsn).map(|()| lsn).map_err(wal_unsynced))
        {
            Ok(lsn) => {
                st.lsn = lsn;
                st.logs.rewind_all();
                st.stage.acknowledged(lsn);
                st.stage.committed(lsn);
            }
            Err(e) => {
                tracing::error!(error = %e, "could not apply the staging log; refusing writes until restarted");
                st.stage.broke();
            }
        }
        self.staging = Some(st);
    }
}

impl BlockingBatchWriter for Writer {
    fn write_batch(
        &mut self,
        batch: &[WriteOp],
    ) -> StoreResult<Vec<Option<StoreResult<ChatMessage>>>> {
        if self.last_seq.len() > MAX_CACHED_CONVS {
            self.last_seq.clear();
        }
        if let Some(st) = &self.staging {
            st.stage.check()?;
        }
        match &self.staging {
            Some(st) if !st.stage.writers_waiting() => {
                if !st.logs.fits(stage::LOG_BYTES as usize / 2) {
                    self.commit_staged();
                }
                self.write_staged(batch)
            }
            Some(_) => {
                // Another connection waits to write: what is staged commits
                // and this batch commits on its own before it is answered
                // (no log: one sync, not two), so the lock is free again
                // between batches. A login storm, whose every login writes
                // a token, runs this way.
                self.commit_staged();
                self.write_committed(batch)
            }
            None => self.write_committed(batch),
        }
    }

    fn stage(&self) -> Option<Arc<Stage>> {
        self.staging.as_ref().map(|st| st.stage.clone())
    }

    fn due(&self) -> bool {
        self.staging.as_ref().is_some_and(|st| {
            st.open_since
                .is_some_and(|t| t.elapsed() >= st.stage.every || st.stage.writers_waiting())
        })
    }

    fn flush(&mut self) {
        self.commit_staged();
    }
}

impl Drop for Writer {
    /// A clean stop leaves the last commit durable (a crash leaves it in
    /// the logs).
    fn drop(&mut self) {
        if let Some(st) = &self.staging
            && let Err(e) = st.wal.sync_now(st.lsn)
        {
            tracing::warn!(error = %e, "could not sync the WAL at shutdown; the logs keep the last batches");
        }
    }
}

/// Writes one change's rows on `conn`. `replay`: the row may be there
/// already (ignored).
fn apply_entry(conn: &rusqlite::Connection, entry: &Entry, replay: bool) -> rusqlite::Result<()> {
    match entry {
        Entry::Message {
            conv,
            seq,
            sender,
            device,
            name,
            body,
            at,
            kind,
            ref_seq,
            cid,
            change,
        } => {
            let insert = if replay {
                "INSERT OR IGNORE INTO messages \
                 (conv, seq, sender_id, sender_device, sender_name, body, sent_at, kind, ref_seq) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            } else {
                "INSERT INTO messages \
                 (conv, seq, sender_id, sender_device, sender_name, body, sent_at, kind, ref_seq) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            };
            conn.prepare_cached(insert)?.execute(rusqlite::params![
                conv, seq, sender, device, name, body, at, kind, ref_seq
            ])?;
            if let Some((kind, body, target)) = change {
                conn.prepare_cached(sql::APPLY_CHANGE)?
                    .execute(rusqlite::params![kind, body, conv, target])?;
            }
            if let Some(cid) = cid {
                let insert = if replay {
                    "INSERT OR IGNORE INTO sent_ids (sender_id, client_id, conv, seq) VALUES (?, ?, ?, ?)"
                } else {
                    sql::INSERT_SENT_ID
                };
                conn.prepare_cached(insert)?
                    .execute(rusqlite::params![sender, cid, conv, seq])?;
            }
        }
        Entry::Cursors {
            user,
            device,
            positions,
        } => {
            // A row for a conversation the user has left does no harm:
            // positions are read through the user's rows in `cursors` (see
            // migrations/sqlite/0004_devices.sql).
            let mut upsert = conn.prepare_cached(
                "INSERT INTO device_cursors (user_id, device, conv, delivered_seq) \
                 VALUES (?, ?, ?, ?) ON CONFLICT (user_id, device, conv) \
                 DO UPDATE SET delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
            )?;
            for (conv, seq) in positions {
                upsert.execute(rusqlite::params![user, device, conv, seq])?;
            }
        }
    }
    Ok(())
}

/// Looks up a conversation the writer has not seen yet. A direct
/// conversation that does not exist is created (with both participants'
/// cursors) if both users exist; a group's exists from its creation.
fn start_conversation(
    tx: &rusqlite::Connection,
    conv: Conversation,
) -> rusqlite::Result<StoreResult<Seq>> {
    use rusqlite::OptionalExtension;
    let key = conv.key();
    let last: Option<i64> = tx
        .prepare_cached(sql::LAST_SEQ)?
        .query_row([&key], |r| r.get(0))
        .optional()?;
    if let Some(last) = last {
        return Ok(Ok(Seq(last)));
    }
    let Conversation::Direct { low, high } = conv else {
        return Ok(Err(StoreError::NotFound("group")));
    };
    let count: i64 = tx
        .prepare_cached(sql::COUNT_USERS_2)?
        .query_row([low, high], |r| r.get(0))?;
    if count != 2 {
        return Ok(Err(StoreError::NotFound("user")));
    }
    tx.prepare_cached(
        "INSERT OR IGNORE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, 0), (?, ?, 0)",
    )?
    .execute(rusqlite::params![low, key, high, key])?;
    Ok(Ok(Seq(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewMessage;
    use crate::store::Store;

    /// The staging writer begins its next transaction at once after each
    /// commit, so the syncer's checkpoints alone never let SQLite write the
    /// WAL from its start again: it grew without bound (150 MB in 80 s of
    /// load) until the writer checkpointed itself between transactions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_staging_the_wal_stays_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("chat.db");
        let url = format!("sqlite://{}", db.display());
        let store = Arc::new(
            SqliteStore::open_with(&url, SqliteSync::Full, Some(Duration::from_millis(20)))
                .await
                .expect("open"),
        );
        let a = store.create_user("a", "h").await.expect("a");
        let b = store.create_user("b", "h").await.expect("b");
        store.add_friendship(a, b).await.expect("friends");
        let conv = Conversation::direct(a, b);
        let body = "x".repeat(2048);
        let started = std::time::Instant::now();
        let mut written = 0usize;
        // Several checkpoint periods, and enough pages to matter, however
        // slow the machine (within reason).
        while (started.elapsed() < Duration::from_secs(3) || written < 16 << 20)
            && started.elapsed() < Duration::from_secs(60)
        {
            let appends: Vec<_> = (0..32)
                .map(|_| {
                    let store = store.clone();
                    let msg = NewMessage {
                        conv,
                        sender: a,
                        sender_device: Device::classic(),
                        sender_name: "a".into(),
                        body: body.clone(),
                        client_id: None,
                        kind: Default::default(),
                    };
                    tokio::spawn(async move { store.append(msg).await })
                })
                .collect();
            for append in appends {
                append.await.expect("task").expect("append");
                written += body.len();
            }
        }
        let wal = std::fs::metadata(dir.path().join("chat.db-wal"))
            .expect("wal")
            .len() as usize;
        assert!(
            written > 3 * (4 << 20),
            "the test wrote too little to mean anything: {written} bytes"
        );
        // The restart threshold is 256 pages (1 MiB) in unit tests; a
        // checkpoint period's worth of writes may come on top.
        assert!(
            wal < written / 3,
            "the WAL grew to {wal} bytes for {written} bytes of messages"
        );
    }
}
