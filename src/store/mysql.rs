//! The MySQL / MariaDB backend, for clusters: every node shares one database.
//!
//! Unlike SQLite, several nodes append to the same conversation at once, so
//! sequence numbers come from the database: each batch bumps
//! `conversations.last_seq` by its count under the row lock and reads the
//! result back inside the same transaction. Conversations are locked in key
//! order to keep concurrent batches from deadlocking, and a batch that still
//! hits a deadlock is retried. Each node still commits in batches
//! ([`GroupCommit`]); reads use the pool.
//!
//! A message sent with a client id is looked up first and, when found,
//! answered with the stored original. A resend racing its original on
//! another node meets it at `sent_ids`' primary key: the batch fails on
//! the duplicate and is retried, and the retry finds the original.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlQueryResult};
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, Row};

use super::commit::{BatchWriter, GroupCommit, WriteOp};
use super::hosts::Failover;
use super::sql::{self, Dialect, MsgRow, SqlStore, is_unique_violation};
use super::{StoreError, StoreResult, now_ms};
use crate::config::PoolConfig;
use crate::model::{ChatMessage, Conversation, NewMessage, Seq, UserId};

/// Conversations the writer remembers as existing; past this it starts over.
const MAX_KNOWN_CONVS: usize = 1 << 20;
/// Attempts for a batch that keeps hitting deadlocks (or a resend racing
/// its original).
const DEADLOCK_RETRIES: usize = 3;
/// The same with several database hosts: just after a move, the new host
/// may still be applying the old one's last write sets, which shows as
/// certification conflicts.
const DEADLOCK_RETRIES_FAILOVER: usize = 10;
/// How long a batch waits for the move to another database host before it
/// fails (Galera takes a few seconds to drop a dead node; the monitor then
/// needs a check).
const FAILOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
/// How often old batch marks are deleted, and how old they must be.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const MARK_KEEP_MS: i64 = 10 * 60 * 1000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// MySQL-backed [`Store`](super::Store).
pub type MySqlStore = SqlStore<MySql>;

fn is_deadlock(e: &sqlx::Error) -> bool {
    // 40001: deadlock / serialization failure (Galera's certification
    // conflicts too), retrying is the remedy.
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40001"))
}

/// Whether the connection, or the host behind it, is gone or unusable
/// (SQLSTATE class 08: connection exceptions, which include Galera's
/// "WSREP has not yet prepared node for application use").
fn is_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08")),
        _ => false,
    }
}

impl Dialect for MySql {
    const ADD_FRIENDS: &'static str =
        "INSERT IGNORE INTO friends (user_id, friend_id) VALUES (?, ?), (?, ?)";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const ADD_BLOCK: &'static str =
        "INSERT IGNORE INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, ?)";
    const UPSERT_READ: &'static str = "INSERT INTO read_marks (user_id, conv, read_seq) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))";

    fn rows_affected(done: &Self::QueryResult) -> u64 {
        done.rows_affected()
    }

    fn inserted_id(done: &MySqlQueryResult) -> StoreResult<i64> {
        i64::try_from(done.last_insert_id())
            .map_err(|_| StoreError::Unavailable("id out of range".into()))
    }
}

impl SqlStore<MySql> {
    /// Connects to `url` (`mysql://USER:PASS@HOST:PORT/DB`, or several
    /// hosts `HOST1:PORT1,HOST2:PORT2,...` of a Galera cluster, see
    /// [`super::hosts`]) with `pool`'s settings and runs the migrations.
    pub async fn open(url: &str, pool: &PoolConfig) -> StoreResult<Self> {
        let hosts = super::hosts::split_hosts(url)?;
        let failover = if hosts.len() > 1 {
            Some(Failover::start(url).await?)
        } else {
            None
        };
        let options = match &failover {
            Some(f) => f.current(),
            None => MySqlConnectOptions::from_str(url)?,
        };
        let mut pool_options = MySqlPoolOptions::new()
            .min_connections(pool.min_connections)
            .max_connections(pool.max_connections)
            .idle_timeout(pool.idle_timeout)
            .acquire_timeout(pool.acquire_timeout);
        if let Some(f) = &failover {
            // After a move, connections to the old host are closed when next
            // taken (the new ones are opened to the new host).
            let f = f.clone();
            pool_options = pool_options.before_acquire(move |_conn, meta| {
                let stale = f.is_stale(meta.age);
                Box::pin(async move { Ok(!stale) })
            });
        }
        let pool = pool_options.connect_with(options).await?;
        migrate(&pool).await?;
        if let Some(f) = &failover {
            tracing::info!(host = %f.current_name(), hosts = f.len(), "writing through the first ready database host");
            tokio::spawn(f.clone().monitor(pool.clone()));
        }
        let commit = GroupCommit::start(Writer {
            pool: pool.clone(),
            known: HashSet::new(),
            failover,
            last_prune: std::time::Instant::now(),
        });
        Ok(SqlStore {
            pool,
            commit,
            fast_reads: None,
        })
    }

    /// The connection pool, for operational tooling and tests.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

/// Runs the migrations under a named lock: nodes of a new cluster start
/// together, and only one may create the tables.
///
/// A named lock is local to one server, and Galera does not replicate it:
/// two nodes starting on two Galera nodes both get it. The second then
/// finds the first's migration recorded as begun and not finished (sqlx
/// marks it "dirty" while it runs, DDL not being transactional), and waits
/// for it to finish: a migration that still fails after 30 s is an error.
async fn migrate(pool: &MySqlPool) -> StoreResult<()> {
    let started = std::time::Instant::now();
    loop {
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT GET_LOCK('chat_migrations', 60)")
            .execute(&mut *conn)
            .await?;
        let result = MIGRATOR.run(&mut *conn).await;
        let _ = sqlx::query("SELECT RELEASE_LOCK('chat_migrations')")
            .execute(&mut *conn)
            .await;
        match result {
            // Dirty: begun elsewhere. Other errors here are the same race
            // seen a step later (the migration's row inserted twice, or a
            // certification conflict between the two): try again.
            Err(e) if started.elapsed() < std::time::Duration::from_secs(30) => {
                tracing::info!(error = %e, "migrations raced another node's; trying again");
                drop(conn);
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            other => {
                return other
                    .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")));
            }
        }
    }
}

/// Size past which a batch's messages go in another INSERT statement.
const STATEMENT_BYTES: usize = 4 << 20;
/// Cursor moves per UPDATE statement (its CASE is tried row by row, so
/// the cost grows with the square of this).
const CURSOR_MOVES_PER_STATEMENT: usize = 256;

/// The node's writer: commits batches of appends and cursor moves.
struct Writer {
    pool: MySqlPool,
    /// Conversations known to exist (with both participants' cursors, for
    /// direct ones), so that only a conversation's first message pays for
    /// the check.
    known: HashSet<Conversation>,
    /// The database hosts, when there are several: batches then carry a
    /// mark ([`BatchMark`]) and are retried on the next host.
    failover: Option<std::sync::Arc<Failover>>,
    last_prune: std::time::Instant,
}

enum Retry {
    /// A deadlock, or a client id another node stored meanwhile: trying
    /// again is the remedy.
    Deadlock,
    /// The connection or its host is gone: the batch may or may not have
    /// committed.
    Lost(StoreError),
    Failed(StoreError),
}

impl From<sqlx::Error> for Retry {
    fn from(e: sqlx::Error) -> Self {
        if is_deadlock(&e) || is_unique_violation(&e) {
            Retry::Deadlock
        } else if is_lost(&e) {
            Retry::Lost(e.into())
        } else {
            Retry::Failed(e.into())
        }
    }
}

type Outcomes = Vec<Option<StoreResult<ChatMessage>>>;

impl BatchWriter for Writer {
    async fn write_batch(&mut self, batch: &[WriteOp]) -> StoreResult<Outcomes> {
        if self.known.len() > MAX_KNOWN_CONVS {
            self.known.clear();
        }
        let failover = self.failover.clone();
        let mark = failover.as_ref().map(|_| BatchMark::new());
        let retries = if failover.is_some() {
            DEADLOCK_RETRIES_FAILOVER
        } else {
            DEADLOCK_RETRIES
        };
        let started = std::time::Instant::now();
        let mut deadlocks = 0;
        // Whether an earlier attempt may have committed.
        let mut uncertain = false;
        loop {
            if uncertain && let Some(mark) = &mark {
                match self.recover(mark, batch).await {
                    Ok(Some(outcomes)) => return Ok(outcomes),
                    Ok(None) => {}
                    Err(Retry::Failed(e)) => return Err(e),
                    Err(Retry::Lost(e)) => {
                        if started.elapsed() > FAILOVER_WAIT {
                            return Err(e);
                        }
                        self.await_move().await;
                        continue;
                    }
                    Err(Retry::Deadlock) => continue,
                }
            }
            match self.try_batch(batch, mark.as_ref()).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(Retry::Deadlock) => {
                    deadlocks += 1;
                    if deadlocks >= retries {
                        return Err(StoreError::Unavailable("deadlock persisted".into()));
                    }
                }
                Err(Retry::Lost(e)) if failover.is_some() && started.elapsed() < FAILOVER_WAIT => {
                    tracing::warn!(error = %e, "write batch lost its database host; retrying on the next ready one");
                    uncertain = true;
                    self.await_move().await;
                }
                Err(Retry::Lost(e)) | Err(Retry::Failed(e)) => return Err(e),
            }
        }
    }
}

impl Writer {
    /// Has the monitor check the host now, and waits a little for a move.
    async fn await_move(&self) {
        if let Some(f) = &self.failover {
            f.suspect();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), f.moved.notified())
                .await;
        }
    }

    /// Whether the batch of `mark` committed in an attempt whose end was
    /// not seen: if so, its outcomes as they were stored. Read with
    /// Galera's causality wait, so that a write set the old host sent just
    /// before it died is applied here before the check.
    async fn recover(
        &mut self,
        mark: &BatchMark,
        batch: &[WriteOp],
    ) -> Result<Option<Outcomes>, Retry> {
        let mut conn = self.pool.acquire().await?;
        let select = "SELECT outcome, at FROM batch_marks WHERE token = ?";
        let waited: Result<Option<(String, i64)>, sqlx::Error> = sqlx::query_as(AssertSqlSafe(
            format!("SET STATEMENT wsrep_sync_wait = 1 FOR {select}"),
        ))
        .bind(&mark.token)
        .fetch_optional(&mut *conn)
        .await;
        let found = match waited {
            Ok(found) => found,
            // Not MariaDB (no SET STATEMENT, no wsrep): a plain read.
            Err(sqlx::Error::Database(_)) => {
                sqlx::query_as(select)
                    .bind(&mark.token)
                    .fetch_optional(&mut *conn)
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let Some((recorded, at)) = found else {
            return Ok(None);
        };
        tracing::info!(
            "a write batch had committed before its host was lost; answering from its mark"
        );
        let (resent, _) = resends(&mut conn, batch).await?;
        Ok(Some(BatchMark::outcomes(&recorded, at, batch, resent)))
    }

    /// One attempt at a batch.
    async fn try_batch(
        &mut self,
        batch: &[WriteOp],
        mark: Option<&BatchMark>,
    ) -> Result<Outcomes, Retry> {
        let now = now_ms();
        let mut outcomes: Outcomes = vec![None; batch.len()];
        let mut tx = self.pool.begin().await?;
        let (mut resent, twins) = resends(&mut tx, batch).await?;
        // Appends by conversation, in key order (the lock order).
        let mut by_conv: BTreeMap<String, (Conversation, Vec<usize>)> = BTreeMap::new();
        let mut cursor_moves: BTreeMap<(UserId, &str, String), Seq> = BTreeMap::new();
        for (i, op) in batch.iter().enumerate() {
            if let Some(original) = resent.remove(&i) {
                outcomes[i] = Some(Ok(original));
                continue;
            }
            if twins.iter().any(|(twin, _)| *twin == i) {
                continue;
            }
            match op {
                WriteOp::Append(msg) => by_conv
                    .entry(msg.conv.key())
                    .or_insert((msg.conv, Vec::new()))
                    .1
                    .push(i),
                WriteOp::Cursors { reader, positions } => {
                    for (conv, seq) in positions {
                        let key = (reader.user, reader.device.as_str(), conv.key());
                        let e = cursor_moves.entry(key).or_insert(*seq);
                        *e = (*e).max(*seq);
                    }
                }
            }
        }
        let mut newly_known = Vec::new();
        // Conversations that take messages in this batch, with how many.
        let mut counts: Vec<(&str, i64)> = Vec::with_capacity(by_conv.len());
        for (key, (conv, ops)) in &by_conv {
            if !self.known.contains(conv) {
                if let Err(e) = ensure_conversation(&mut tx, *conv).await? {
                    for &i in ops {
                        outcomes[i] = Some(Err(e.clone()));
                    }
                    continue;
                }
                newly_known.push(*conv);
            }
            counts.push((key, i64::try_from(ops.len()).unwrap_or(i64::MAX)));
        }
        // The whole batch is two round trips plus BEGIN and COMMIT, whatever
        // it holds: the first reserves every conversation's numbers (one
        // UPDATE takes the row locks in key order, as the IN list is scanned
        // along the primary key) and reads where each now ends; the second
        // inserts every message and moves every cursor. These statements
        // change shape with every batch, so they go as plain text: as
        // prepared statements each new shape would be prepared, and each
        // eviction from the statement cache sends a close the server never
        // answers, which with Nagle's algorithm and delayed acks stalled the
        // next statement 40 ms. Values are numbers, conversation keys (checked
        // to be [a-z0-9:-]) and hex literals, so no text is ever spliced in.
        let mut rows: Vec<(usize, Seq)> = Vec::new();
        if !counts.is_empty() {
            let keys: Vec<String> = counts
                .iter()
                .map(|(key, _)| conv_literal(key))
                .collect::<Result<_, _>>()?;
            let mut text = String::from("UPDATE conversations SET last_seq = last_seq + CASE conv");
            for (lit, (_, n)) in keys.iter().zip(&counts) {
                let _ = write!(text, " WHEN {lit} THEN {n}");
            }
            let list = keys.join(", ");
            let _ = write!(
                text,
                " END WHERE conv IN ({list}); SELECT conv, last_seq FROM conversations WHERE conv IN ({list})"
            );
            let mut lasts: HashMap<String, i64> = HashMap::with_capacity(counts.len());
            for row in sqlx::raw_sql(AssertSqlSafe(text))
                .fetch_all(&mut *tx)
                .await?
            {
                lasts.insert(row.try_get(0)?, row.try_get(1)?);
            }
            for (key, n) in &counts {
                let Some(&last) = lasts.get(*key) else {
                    return Err(Retry::Failed(StoreError::Unavailable(format!(
                        "conversation {key} vanished during a write"
                    ))));
                };
                for (k, &i) in (0_i64..).zip(&by_conv[*key].1) {
                    rows.push((i, Seq(last - n + 1 + k)));
                }
            }
        }
        // Messages in multi-row INSERTs of at most STATEMENT_BYTES each (the
        // server refuses a packet over max_allowed_packet, 16 MiB by default
        // on MariaDB), all but the last sent at once.
        let mut text = String::new();
        let mut row_in_statement = 0;
        for (i, seq) in &rows {
            let WriteOp::Append(msg) = &batch[*i] else {
                continue;
            };
            if row_in_statement > 0 && text.len() > STATEMENT_BYTES {
                text.push_str("; ");
                sqlx::raw_sql(AssertSqlSafe(std::mem::take(&mut text)))
                    .execute(&mut *tx)
                    .await?;
                row_in_statement = 0;
            }
            if row_in_statement == 0 {
                text.push_str(sql::INSERT_MESSAGES);
                text.push_str("VALUES ");
            }
            let sep = if row_in_statement > 0 { ", " } else { "" };
            let (kind, ref_seq) = msg.kind.columns();
            let _ = write!(
                text,
                "{sep}({}, {seq}, {}, {}, {}, {}, {now}, {kind}, {ref_seq})",
                conv_literal(&msg.conv.key())?,
                msg.sender,
                ascii_literal(msg.sender_device.as_str()),
                text_literal(&msg.sender_name),
                text_literal(&msg.body),
            );
            row_in_statement += 1;
        }
        if !text.is_empty() {
            text.push_str("; ");
        }
        // What events do to the messages they name, after every insert (an
        // event may name a message of this very batch).
        for (i, _) in &rows {
            if let WriteOp::Append(msg) = &batch[*i]
                && let Some((kind, body, target)) = super::sqlite::change_of(msg)
            {
                let _ = write!(
                    text,
                    "UPDATE messages SET kind = {kind}, body = {} WHERE conv = {} AND seq = {target} AND kind IN (0, 1); ",
                    text_literal(body),
                    conv_literal(&msg.conv.key())?
                );
            }
        }
        let mut ids = String::new();
        for (i, seq) in &rows {
            if let WriteOp::Append(msg) = &batch[*i]
                && let Some(cid) = &msg.client_id
            {
                let sep = if ids.is_empty() { "" } else { ", " };
                let _ = write!(
                    ids,
                    "{sep}({}, {}, {}, {seq})",
                    msg.sender,
                    ascii_literal(cid),
                    conv_literal(&msg.conv.key())?
                );
            }
        }
        if !ids.is_empty() {
            let _ = write!(
                text,
                "INSERT INTO sent_ids (sender_id, client_id, conv, seq) VALUES {ids}; "
            );
        }
        // All cursor moves in one statement, in key order (the lock
        // order). A row for a conversation the user has left does no harm:
        // positions are read through the user's rows in `cursors` (see
        // migrations/sqlite/0004_devices.sql).
        let cursor_moves: Vec<_> = cursor_moves.into_iter().collect();
        for chunk in cursor_moves.chunks(CURSOR_MOVES_PER_STATEMENT) {
            if text.len() > STATEMENT_BYTES {
                sqlx::raw_sql(AssertSqlSafe(std::mem::take(&mut text)))
                    .execute(&mut *tx)
                    .await?;
            }
            if !text.is_empty() && !text.ends_with("; ") {
                text.push_str("; ");
            }
            text.push_str(
                "INSERT INTO device_cursors (user_id, device, conv, delivered_seq) VALUES ",
            );
            for (n, ((user, device, conv), seq)) in chunk.iter().enumerate() {
                let sep = if n > 0 { ", " } else { "" };
                let _ = write!(
                    text,
                    "{sep}({user}, {}, {}, {seq})",
                    ascii_literal(device),
                    conv_literal(conv)?
                );
            }
            text.push_str(
                " ON DUPLICATE KEY UPDATE delivered_seq = GREATEST(delivered_seq, VALUES(delivered_seq))",
            );
        }
        if let Some(mark) = mark
            && !rows.is_empty()
        {
            if !text.is_empty() && !text.ends_with("; ") {
                text.push_str("; ");
            }
            let recorded = BatchMark::record(batch.len(), &rows, &twins, &outcomes);
            let _ = write!(
                text,
                "INSERT INTO batch_marks (token, outcome, at) VALUES ('{}', '{recorded}', {now})",
                mark.token
            );
            if self.last_prune.elapsed() > PRUNE_EVERY {
                self.last_prune = std::time::Instant::now();
                let _ = write!(
                    text,
                    "; DELETE FROM batch_marks WHERE at < {} LIMIT 50000",
                    now - MARK_KEEP_MS
                );
            }
        }
        if !text.is_empty() {
            sqlx::raw_sql(AssertSqlSafe(text)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.known.extend(newly_known);
        for (i, seq) in rows {
            if let WriteOp::Append(msg) = &batch[i] {
                outcomes[i] = Some(Ok(msg.stored(seq, now)));
            }
        }
        for (twin, first) in twins {
            outcomes[twin] = outcomes[first].clone();
        }
        Ok(outcomes)
    }
}

/// A batch's mark: a random token, and what the batch stored, so that a
/// retry after an unseen commit answers exactly as the commit would have.
struct BatchMark {
    /// 32 hex digits.
    token: String,
}

impl BatchMark {
    fn new() -> BatchMark {
        let mut bytes = [0u8; 16];
        // Unpredictability is not needed, only uniqueness: fall back to
        // time and a counter if the system's source fails.
        if getrandom::fill(&mut bytes).is_err() {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            bytes[8..].copy_from_slice(&now_ms().to_le_bytes());
        }
        BatchMark {
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// One entry per operation, comma-separated: the sequence number it was
    /// stored under, `r` (a resend, answered with the stored original),
    /// `tJ` (the same client id as operation J), `g`/`u` (no such group or
    /// user), `-` (anything else: cursor moves).
    fn record(
        len: usize,
        rows: &[(usize, Seq)],
        twins: &[(usize, usize)],
        outcomes: &Outcomes,
    ) -> String {
        let mut entries = vec![String::from("-"); len];
        for (i, seq) in rows {
            entries[*i] = seq.to_string();
        }
        for (twin, first) in twins {
            entries[*twin] = format!("t{first}");
        }
        for (i, o) in outcomes.iter().enumerate() {
            match o {
                Some(Ok(_)) => entries[i] = "r".into(),
                Some(Err(StoreError::NotFound("group"))) => entries[i] = "g".into(),
                Some(Err(StoreError::NotFound(_))) => entries[i] = "u".into(),
                _ => {}
            }
        }
        entries.join(",")
    }

    /// The outcomes of `batch` from its recorded entries.
    fn outcomes(
        recorded: &str,
        at: i64,
        batch: &[WriteOp],
        mut resent: HashMap<usize, ChatMessage>,
    ) -> Outcomes {
        let mut out: Outcomes = vec![None; batch.len()];
        let entries: Vec<&str> = recorded.split(',').collect();
        for (i, entry) in entries.iter().enumerate().take(batch.len()) {
            out[i] = match (*entry, &batch[i]) {
                ("r", _) => resent.remove(&i).map(Ok),
                ("g", _) => Some(Err(StoreError::NotFound("group"))),
                ("u", _) => Some(Err(StoreError::NotFound("user"))),
                (seq, WriteOp::Append(msg)) => seq.parse().ok().map(|s| Ok(msg.stored(Seq(s), at))),
                _ => None,
            };
        }
        for (i, entry) in entries.iter().enumerate().take(batch.len()) {
            if let Some(first) = entry
                .strip_prefix('t')
                .and_then(|j| j.parse::<usize>().ok())
                && first < out.len()
            {
                out[i] = out[first].clone();
            }
        }
        out
    }
}

/// A conversation key as an SQL literal. Keys are made of `[a-z0-9:-]`
/// ([`Conversation::key`]); anything else is refused rather than quoted.
fn conv_literal(key: &str) -> Result<String, Retry> {
    if key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b':' || b == b'-')
    {
        Ok(format!("'{key}'"))
    } else {
        Err(Retry::Failed(StoreError::Unavailable(format!(
            "conversation key {key:?} is not a key"
        ))))
    }
}

/// The appends of `batch` whose client id is stored already (by index, with
/// the stored original), and those repeating an id used earlier in the
/// batch (by index, with that earlier one's).
async fn resends(
    tx: &mut MySqlConnection,
    batch: &[WriteOp],
) -> Result<(HashMap<usize, ChatMessage>, Vec<(usize, usize)>), Retry> {
    let mut first: HashMap<(UserId, &str), usize> = HashMap::new();
    let mut twins = Vec::new();
    let mut list = String::new();
    for (i, op) in batch.iter().enumerate() {
        let WriteOp::Append(NewMessage {
            sender,
            client_id: Some(cid),
            ..
        }) = op
        else {
            continue;
        };
        match first.entry((*sender, cid.as_str())) {
            std::collections::hash_map::Entry::Occupied(e) => twins.push((i, *e.get())),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(i);
                let sep = if list.is_empty() { "" } else { ", " };
                let _ = write!(list, "{sep}({sender}, {})", ascii_literal(cid));
            }
        }
    }
    let mut resent = HashMap::new();
    if list.is_empty() {
        return Ok((resent, twins));
    }
    let text = format!(
        "SELECT s.sender_id, s.client_id, m.conv, m.seq, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.ref_seq \
         FROM sent_ids s JOIN messages m ON m.conv = s.conv AND m.seq = s.seq \
         WHERE (s.sender_id, s.client_id) IN ({list})"
    );
    for row in sqlx::raw_sql(AssertSqlSafe(text))
        .fetch_all(&mut *tx)
        .await?
    {
        let key: (UserId, String) = (row.try_get(0)?, row.try_get(1)?);
        let stored: MsgRow = (
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
            row.try_get(9)?,
        );
        if let (Some(&i), Some(m)) = (first.get(&(key.0, key.1.as_str())), sql::message_of(stored))
        {
            resent.insert(i, m);
        }
    }
    // A repeat of a stored id gets the original too.
    let twins = twins
        .into_iter()
        .filter(|(twin, of)| match resent.get(of).cloned() {
            Some(m) => {
                resent.insert(*twin, m);
                false
            }
            None => true,
        })
        .collect();
    Ok((resent, twins))
}

/// A client id (visible ASCII, checked by the protocol) as an ASCII hex
/// literal.
fn ascii_literal(s: &str) -> String {
    hex_literal("_ascii", s)
}

/// Any text as a utf8mb4 hex literal: nothing of it is read as SQL.
fn text_literal(s: &str) -> String {
    hex_literal("_utf8mb4", s)
}

fn hex_literal(charset: &str, s: &str) -> String {
    let mut out = String::with_capacity(charset.len() + 4 + 2 * s.len());
    out.push_str(charset);
    out.push_str(" X'");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in s.bytes() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out.push('\'');
    out
}

/// Makes sure a conversation can take messages: a group's row exists from
/// its creation; a direct one is created (with both participants' cursors)
/// when both users exist.
async fn ensure_conversation(
    tx: &mut MySqlConnection,
    conv: Conversation,
) -> Result<StoreResult<()>, Retry> {
    let key = conv.key();
    match conv {
        Conversation::Group(_) => {
            let row: Option<(i64,)> = sqlx::query_as(sql::LAST_SEQ)
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
            Ok(row.map(drop).ok_or(StoreError::NotFound("group")))
        }
        Conversation::Direct { low, high } => {
            let (count,): (i64,) = sqlx::query_as(sql::COUNT_USERS_2)
                .bind(low)
                .bind(high)
                .fetch_one(&mut *tx)
                .await?;
            if count != 2 {
                return Ok(Err(StoreError::NotFound("user")));
            }
            sqlx::query("INSERT IGNORE INTO conversations (conv, last_seq) VALUES (?, 0)")
                .bind(&key)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT IGNORE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, 0), (?, ?, 0)")
                .bind(low)
                .bind(&key)
                .bind(high)
                .bind(&key)
                .execute(&mut *tx)
                .await?;
            Ok(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_never_carry_sql() {
        assert_eq!(conv_literal("d:-1:20").ok().as_deref(), Some("'d:-1:20'"));
        assert!(conv_literal("g:1' OR '1'='1").is_err());
        assert_eq!(text_literal("a'\\"), "_utf8mb4 X'61275c'");
        assert_eq!(text_literal("é"), "_utf8mb4 X'c3a9'");
        assert_eq!(text_literal(""), "_utf8mb4 X''");
    }

    /// A batch answered from its mark answers as its commit did: stored
    /// messages with their numbers and time, a repeated client id with its
    /// twin's, a resend with the original, refusals as refusals.
    #[test]
    fn a_batch_mark_gives_back_the_outcomes_of_its_commit() {
        use crate::model::GroupId;
        let msg = |to: i64, cid: Option<&str>| {
            WriteOp::Append(NewMessage {
                conv: Conversation::Group(GroupId(to)),
                sender: UserId(1),
                sender_device: crate::model::Device::classic(),
                sender_name: "one".into(),
                body: format!("to {to}"),
                client_id: cid.map(str::to_owned),
                kind: Default::default(),
            })
        };
        let batch = vec![
            msg(5, Some("a")),
            msg(5, Some("a")),
            msg(6, None),
            msg(7, None),
            WriteOp::Cursors {
                reader: crate::store::Reader::new(UserId(1), crate::model::Device::classic()),
                positions: vec![],
            },
            msg(5, Some("old")),
        ];
        let original = ChatMessage {
            conv: Conversation::Group(GroupId(5)),
            seq: Seq(2),
            sender: UserId(1),
            sender_name: "one".into(),
            body: "to 5".into(),
            ts_ms: 1,
            kind: Default::default(),
        };
        // as try_batch has them just before its commit
        let mut outcomes: Outcomes = vec![None; batch.len()];
        outcomes[3] = Some(Err(StoreError::NotFound("group")));
        outcomes[5] = Some(Ok(original.clone()));
        let rows = [(0, Seq(10)), (2, Seq(4))];
        let recorded = BatchMark::record(batch.len(), &rows, &[(1, 0)], &outcomes);
        assert_eq!(recorded, "10,t0,4,g,-,r");

        let resent = HashMap::from([(5, original.clone())]);
        let back = BatchMark::outcomes(&recorded, 777, &batch, resent);
        let WriteOp::Append(first) = &batch[0] else {
            unreachable!()
        };
        let WriteOp::Append(third) = &batch[2] else {
            unreachable!()
        };
        assert_eq!(back[0], Some(Ok(first.stored(Seq(10), 777))));
        assert_eq!(back[1], back[0], "a twin gets its first's outcome");
        assert_eq!(back[2], Some(Ok(third.stored(Seq(4), 777))));
        assert_eq!(back[3], Some(Err(StoreError::NotFound("group"))));
        assert_eq!(back[4], None, "cursor moves have no outcome");
        assert_eq!(back[5], Some(Ok(original)));
        // marks are unique
        assert_ne!(BatchMark::new().token, BatchMark::new().token);
        assert_eq!(BatchMark::new().token.len(), 32);
    }
}
