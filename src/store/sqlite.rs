//! The embedded SQLite backend: one data file, nothing to install.
//!
//! Reads go through a small pool (WAL mode lets them run beside the writer).
//! Messages and cursor moves go through one writer task that owns its own
//! connection and commits whatever has queued up in one transaction (group
//! commit): under load, hundreds of messages share one fsync. Because the
//! writer is the only one appending, it can keep each conversation's last
//! sequence number in memory. sqlx runs every SQLite connection on a worker
//! thread of its own, so no SQLite call blocks the reactor.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sql::{self, MsgRow, is_unique_violation};
use super::{Store, StoreError, StoreResult, now_ms};
use crate::model::{
    ChatMessage, Conversation, Credentials, GroupId, GroupInfo, NewMessage, Seq, UserId,
    UserSummary,
};

/// Most operations folded into one writer transaction.
const MAX_BATCH: usize = 512;
/// Conversations whose last sequence number the writer remembers; past this
/// the cache is dropped and refilled from the table on demand.
const MAX_CACHED_CONVS: usize = 1 << 20;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

enum WriteOp {
    Append {
        msg: NewMessage,
        done: oneshot::Sender<StoreResult<ChatMessage>>,
    },
    Cursors {
        user: UserId,
        positions: Vec<(Conversation, Seq)>,
        done: oneshot::Sender<StoreResult<()>>,
    },
}

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: mpsc::Sender<WriteOp>,
    closing: CancellationToken,
    tasks: TaskTracker,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH` or
    /// `sqlite::memory:` is not supported: the writer needs a second
    /// connection to the same data) and runs the migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a message we have acknowledged survives a power cut, not
            // only a crash. Group commit keeps the fsync cost per batch.
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
        let conn = SqliteConnection::connect_with(&options).await?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let closing = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(
            Writer {
                conn,
                rx,
                last_seq: HashMap::new(),
                closing: closing.clone(),
            }
            .run(),
        );
        tasks.close();
        Ok(SqliteStore {
            pool,
            writer: tx,
            closing,
            tasks,
        })
    }

    async fn write(&self, op: WriteOp) -> StoreResult<()> {
        self.writer
            .send(op)
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".into()))
    }
}

fn closed<T>(_: T) -> StoreError {
    StoreError::Unavailable("store writer stopped".into())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<UserId> {
        let res = sqlx::query(sql::CREATE_USER)
            .bind(name)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match res {
            Ok(done) => Ok(done.last_insert_rowid()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("name is already taken")),
            Err(e) => Err(e.into()),
        }
    }

    async fn credentials(&self, id: UserId) -> StoreResult<Option<Credentials>> {
        let row: Option<(String, String)> = sqlx::query_as(sql::CREDENTIALS)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(name, password_hash)| Credentials {
            id,
            name,
            password_hash,
        }))
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<UserSummary>> {
        let row: Option<(String,)> = sqlx::query_as(sql::USER_NAME)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(name,)| UserSummary { id, name }))
    }

    async fn add_friendship(&self, a: UserId, b: UserId) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let exists: Option<(i64,)> = sqlx::query_as(sql::USER_ID)
            .bind(b)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let mut added = 0;
        for (x, y) in [(a, b), (b, a)] {
            added +=
                sqlx::query("INSERT OR IGNORE INTO friends (user_id, friend_id) VALUES (?, ?)")
                    .bind(x)
                    .bind(y)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        if added == 0 {
            return Err(StoreError::Conflict("already friends"));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_friendship(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let done = sqlx::query(sql::REMOVE_FRIENDSHIP)
            .bind(a)
            .bind(b)
            .bind(b)
            .bind(a)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserSummary>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(sql::FRIENDS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| UserSummary { id, name })
            .collect())
    }

    async fn create_group(&self, creator: UserId, name: &str, desc: &str) -> StoreResult<GroupId> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let res = sqlx::query(sql::CREATE_GROUP)
            .bind(name)
            .bind(desc)
            .bind(now_ms())
            .execute(&mut *tx)
            .await;
        let id = match res {
            Ok(done) => done.last_insert_rowid(),
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict("group name is already taken"));
            }
            Err(e) => return Err(e.into()),
        };
        let conv = Conversation::Group(id).key();
        sqlx::query(sql::ADD_CREATOR)
            .bind(id)
            .bind(creator)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql::NEW_CONVERSATION)
            .bind(&conv)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT OR REPLACE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, 0)",
        )
        .bind(creator)
        .bind(&conv)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn join_group(&self, user: UserId, group: GroupId) -> StoreResult<Seq> {
        let conv = Conversation::Group(group).key();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let last: Option<(i64,)> = sqlx::query_as(sql::LAST_SEQ)
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((last,)) = last else {
            return Err(StoreError::NotFound("group"));
        };
        let res = sqlx::query(sql::ADD_MEMBER)
            .bind(group)
            .bind(user)
            .execute(&mut *tx)
            .await;
        match res {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict("already a member of this group"));
            }
            Err(e) => return Err(e.into()),
        }
        // A new member starts at the present: earlier messages are history,
        // not offline messages.
        sqlx::query(
            "INSERT OR REPLACE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, ?)",
        )
        .bind(user)
        .bind(&conv)
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(last)
    }

    async fn leave_group(&self, user: UserId, group: GroupId) -> StoreResult<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let left = sqlx::query(sql::REMOVE_MEMBER)
            .bind(group)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(sql::REMOVE_CURSOR)
            .bind(user)
            .bind(Conversation::Group(group).key())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(left > 0)
    }

    async fn user_groups(&self, user: UserId) -> StoreResult<Vec<GroupInfo>> {
        let groups: Vec<(i64, String, String)> = sqlx::query_as(sql::USER_GROUPS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        let members: Vec<(i64, i64, String, String)> = sqlx::query_as(sql::USER_GROUPS_MEMBERS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(sql::assemble_groups(groups, members))
    }

    async fn group_members(&self, group: GroupId) -> StoreResult<Option<Vec<UserId>>> {
        let rows: Vec<(i64,)> = sqlx::query_as(sql::GROUP_MEMBERS)
            .bind(group)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            let exists: Option<(i64,)> = sqlx::query_as(sql::GROUP_ID)
                .bind(group)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(rows.into_iter().map(|(id,)| id).collect()))
    }

    async fn append(&self, msg: NewMessage) -> StoreResult<ChatMessage> {
        let (done, wait) = oneshot::channel();
        self.write(WriteOp::Append { msg, done }).await?;
        wait.await.map_err(closed)?
    }

    async fn advance_cursors(
        &self,
        user: UserId,
        positions: Vec<(Conversation, Seq)>,
    ) -> StoreResult<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.write(WriteOp::Cursors {
            user,
            positions,
            done,
        })
        .await?;
        wait.await.map_err(closed)?
    }

    async fn cursors(&self, user: UserId) -> StoreResult<Vec<(Conversation, Seq)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql::CURSORS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(sql::cursors(rows))
    }

    async fn undelivered(&self, user: UserId, limit: usize) -> StoreResult<Vec<ChatMessage>> {
        let rows: Vec<MsgRow> = sqlx::query_as(sql::UNDELIVERED)
            .bind(user)
            .bind(user)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(sql::messages(rows))
    }

    async fn between(
        &self,
        conv: Conversation,
        after: Seq,
        before: Seq,
        exclude_sender: UserId,
    ) -> StoreResult<Vec<ChatMessage>> {
        let rows: Vec<MsgRow> = sqlx::query_as(sql::BETWEEN)
            .bind(conv.key())
            .bind(after)
            .bind(before)
            .bind(exclude_sender)
            .fetch_all(&self.pool)
            .await?;
        Ok(sql::messages(rows))
    }

    async fn history(
        &self,
        conv: Conversation,
        before: Option<Seq>,
        limit: u32,
    ) -> StoreResult<Vec<ChatMessage>> {
        let rows: Vec<MsgRow> = sqlx::query_as(sql::HISTORY)
            .bind(conv.key())
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(sql::messages(rows))
    }

    async fn close(&self) {
        self.closing.cancel();
        self.tasks.wait().await;
        self.pool.close().await;
    }
}

/// The single writer: owns a connection and the per-conversation counters.
struct Writer {
    conn: SqliteConnection,
    rx: mpsc::Receiver<WriteOp>,
    /// Last sequence number of each conversation, as committed.
    last_seq: HashMap<Conversation, Seq>,
    closing: CancellationToken,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                op = self.rx.recv() => op,
                _ = self.closing.cancelled() => {
                    // Stop taking new work, but finish what is queued.
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
        }
        let _ = self.conn.close().await;
    }

    /// Commits a batch in one transaction and answers every op in it.
    async fn commit(&mut self, batch: Vec<WriteOp>) {
        if self.last_seq.len() > MAX_CACHED_CONVS {
            self.last_seq.clear();
        }
        let mut outcomes: Vec<Option<StoreResult<ChatMessage>>> = Vec::with_capacity(batch.len());
        let result = self.write_batch(&batch, &mut outcomes).await;
        match result {
            Ok(touched) => {
                self.last_seq.extend(touched);
                for (op, outcome) in batch.into_iter().zip(outcomes) {
                    match (op, outcome) {
                        (WriteOp::Append { done, .. }, Some(r)) => {
                            let _ = done.send(r);
                        }
                        (WriteOp::Cursors { done, .. }, _) => {
                            let _ = done.send(Ok(()));
                        }
                        (WriteOp::Append { done, .. }, None) => {
                            let _ = done.send(Err(StoreError::Unavailable("not written".into())));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "message batch failed to commit");
                for op in batch {
                    match op {
                        WriteOp::Append { done, .. } => {
                            let _ = done.send(Err(e.clone()));
                        }
                        WriteOp::Cursors { done, .. } => {
                            let _ = done.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    async fn write_batch(
        &mut self,
        batch: &[WriteOp],
        outcomes: &mut Vec<Option<StoreResult<ChatMessage>>>,
    ) -> StoreResult<HashMap<Conversation, Seq>> {
        let now = now_ms();
        let mut touched: HashMap<Conversation, Seq> = HashMap::new();
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        for op in batch {
            match op {
                WriteOp::Append { msg, .. } => {
                    let known = touched
                        .get(&msg.conv)
                        .or_else(|| self.last_seq.get(&msg.conv))
                        .copied();
                    let last = match known {
                        Some(last) => last,
                        None => match start_conversation(&mut tx, msg.conv).await? {
                            Ok(last) => last,
                            Err(e) => {
                                outcomes.push(Some(Err(e)));
                                continue;
                            }
                        },
                    };
                    let seq = last + 1;
                    sqlx::query(sql::INSERT_MESSAGE)
                        .bind(msg.conv.key())
                        .bind(seq)
                        .bind(msg.sender)
                        .bind(&msg.sender_name)
                        .bind(&msg.body)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    touched.insert(msg.conv, seq);
                    outcomes.push(Some(Ok(ChatMessage {
                        conv: msg.conv,
                        seq,
                        sender: msg.sender,
                        sender_name: msg.sender_name.clone(),
                        body: msg.body.clone(),
                        ts_ms: now,
                    })));
                }
                WriteOp::Cursors {
                    user, positions, ..
                } => {
                    for (conv, seq) in positions {
                        sqlx::query(
                            "UPDATE cursors SET delivered_seq = MAX(delivered_seq, ?) \
                             WHERE user_id = ? AND conv = ?",
                        )
                        .bind(seq)
                        .bind(user)
                        .bind(conv.key())
                        .execute(&mut *tx)
                        .await?;
                    }
                    outcomes.push(None);
                }
            }
        }
        for (conv, seq) in &touched {
            sqlx::query(
                "INSERT INTO conversations (conv, last_seq) VALUES (?, ?) \
                 ON CONFLICT(conv) DO UPDATE SET last_seq = excluded.last_seq",
            )
            .bind(conv.key())
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(touched)
    }
}

/// Looks up a conversation the writer has not seen yet. A direct
/// conversation that does not exist is created (with both participants'
/// cursors) if both users exist; a group's exists from its creation.
async fn start_conversation(
    tx: &mut SqliteConnection,
    conv: Conversation,
) -> StoreResult<StoreResult<Seq>> {
    let row: Option<(i64,)> = sqlx::query_as(sql::LAST_SEQ)
        .bind(conv.key())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some((last,)) = row {
        return Ok(Ok(last));
    }
    let Conversation::Direct { low, high } = conv else {
        return Ok(Err(StoreError::NotFound("group")));
    };
    let (count,): (i64,) = sqlx::query_as(sql::COUNT_USERS_2)
        .bind(low)
        .bind(high)
        .fetch_one(&mut *tx)
        .await?;
    if count != 2 {
        return Ok(Err(StoreError::NotFound("user")));
    }
    for user in [low, high] {
        sqlx::query(
            "INSERT OR IGNORE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, 0)",
        )
        .bind(user)
        .bind(conv.key())
        .execute(&mut *tx)
        .await?;
    }
    Ok(Ok(0))
}
