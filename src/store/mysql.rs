//! The MySQL / MariaDB backend, for clusters: every node shares one database.
//!
//! Unlike SQLite, several nodes append to the same conversation at once, so
//! sequence numbers come from the database: each batch bumps
//! `conversations.last_seq` by its count under the row lock and reads the
//! result back inside the same transaction. Conversations are locked in key
//! order to keep concurrent batches from deadlocking, and a batch that still
//! hits a deadlock is retried. Each node still commits in batches through one
//! writer task (group commit); reads use the pool.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{MySql, QueryBuilder, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sql::{self, MsgRow, is_unique_violation};
use super::{Store, StoreError, StoreResult, now_ms};
use crate::config::PoolConfig;
use crate::model::{
    ChatMessage, Conversation, Credentials, GroupId, GroupInfo, NewMessage, Seq, UserId,
    UserSummary,
};

/// Most operations folded into one writer transaction.
const MAX_BATCH: usize = 512;
/// Conversations the writer remembers as existing; past this it starts over.
const MAX_KNOWN_CONVS: usize = 1 << 20;
/// Attempts for a batch that keeps hitting deadlocks.
const DEADLOCK_RETRIES: usize = 3;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

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

/// MySQL-backed [`Store`].
#[derive(Debug)]
pub struct MySqlStore {
    pool: MySqlPool,
    writer: mpsc::Sender<WriteOp>,
    closing: CancellationToken,
    tasks: TaskTracker,
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    // 40001: deadlock / serialization failure, retrying is the remedy.
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40001"))
}

impl MySqlStore {
    /// Connects to `url` (`mysql://USER:PASS@HOST:PORT/DB`) with `pool`'s
    /// settings and runs the migrations.
    pub async fn open(url: &str, pool: &PoolConfig) -> StoreResult<Self> {
        let options = MySqlConnectOptions::from_str(url)?;
        let pool = MySqlPoolOptions::new()
            .min_connections(pool.min_connections)
            .max_connections(pool.max_connections)
            .idle_timeout(pool.idle_timeout)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let closing = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(
            Writer {
                pool: pool.clone(),
                rx,
                known: HashSet::new(),
                closing: closing.clone(),
            }
            .run(),
        );
        tasks.close();
        Ok(MySqlStore {
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

/// Runs the migrations under a named lock: nodes of a new cluster start
/// together, and only one may create the tables.
async fn migrate(pool: &MySqlPool) -> StoreResult<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT GET_LOCK('chat_migrations', 60)")
        .execute(&mut *conn)
        .await?;
    let result = MIGRATOR.run(&mut *conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK('chat_migrations')")
        .execute(&mut *conn)
        .await;
    result.map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
}

fn closed<T>(_: T) -> StoreError {
    StoreError::Unavailable("store writer stopped".into())
}

#[async_trait]
impl Store for MySqlStore {
    async fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<UserId> {
        let res = sqlx::query(sql::CREATE_USER)
            .bind(name)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match res {
            Ok(done) => i64::try_from(done.last_insert_id())
                .map_err(|_| StoreError::Unavailable("user id out of range".into())),
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
        let mut tx = self.pool.begin().await?;
        let exists: Option<(i64,)> = sqlx::query_as(sql::USER_ID)
            .bind(b)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let added =
            sqlx::query("INSERT IGNORE INTO friends (user_id, friend_id) VALUES (?, ?), (?, ?)")
                .bind(a)
                .bind(b)
                .bind(b)
                .bind(a)
                .execute(&mut *tx)
                .await?
                .rows_affected();
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
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(sql::CREATE_GROUP)
            .bind(name)
            .bind(desc)
            .bind(now_ms())
            .execute(&mut *tx)
            .await;
        let id = match res {
            Ok(done) => i64::try_from(done.last_insert_id())
                .map_err(|_| StoreError::Unavailable("group id out of range".into()))?,
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
        set_cursor(&mut tx, creator, &conv, 0).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn join_group(&self, user: UserId, group: GroupId) -> StoreResult<Seq> {
        let conv = Conversation::Group(group).key();
        let mut tx = self.pool.begin().await?;
        let last: Option<(i64,)> = sqlx::query_as(sql::LAST_SEQ)
            .bind(&conv)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((last,)) = last else {
            return Err(StoreError::NotFound("group"));
        };
        match sqlx::query(sql::ADD_MEMBER)
            .bind(group)
            .bind(user)
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict("already a member of this group"));
            }
            Err(e) => return Err(e.into()),
        }
        // A new member starts at the present: earlier messages are history.
        set_cursor(&mut tx, user, &conv, last).await?;
        tx.commit().await?;
        Ok(last)
    }

    async fn leave_group(&self, user: UserId, group: GroupId) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
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

async fn set_cursor(
    tx: &mut Transaction<'_, MySql>,
    user: UserId,
    conv: &str,
    seq: Seq,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, ?) \
         ON DUPLICATE KEY UPDATE delivered_seq = ?",
    )
    .bind(user)
    .bind(conv)
    .bind(seq)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The node's single writer: batches appends and cursor moves.
struct Writer {
    pool: MySqlPool,
    rx: mpsc::Receiver<WriteOp>,
    /// Conversations known to exist (with both participants' cursors, for
    /// direct ones), so that only a conversation's first message pays for
    /// the check.
    known: HashSet<Conversation>,
    closing: CancellationToken,
}

impl Writer {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                op = self.rx.recv() => op,
                _ = self.closing.cancelled() => {
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
    }

    async fn commit(&mut self, batch: Vec<WriteOp>) {
        if self.known.len() > MAX_KNOWN_CONVS {
            self.known.clear();
        }
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.write_batch(&batch).await {
                Err(Retry::Deadlock) if attempt < DEADLOCK_RETRIES => continue,
                Err(Retry::Deadlock) => {
                    break Err(StoreError::Unavailable("deadlock persisted".into()));
                }
                Err(Retry::Failed(e)) => break Err(e),
                Ok(outcomes) => break Ok(outcomes),
            }
        };
        match result {
            Ok(outcomes) => {
                for (op, outcome) in batch.into_iter().zip(outcomes) {
                    match op {
                        WriteOp::Append { done, .. } => {
                            let _ = done.send(outcome.unwrap_or_else(|| {
                                Err(StoreError::Unavailable("not written".into()))
                            }));
                        }
                        WriteOp::Cursors { done, .. } => {
                            let _ = done.send(Ok(()));
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

    /// One attempt at a batch: the outcome of each op (None for cursor ops).
    async fn write_batch(
        &mut self,
        batch: &[WriteOp],
    ) -> Result<Vec<Option<StoreResult<ChatMessage>>>, Retry> {
        let now = now_ms();
        let mut outcomes: Vec<Option<StoreResult<ChatMessage>>> = vec![None; batch.len()];
        // Appends by conversation, in key order (the lock order).
        let mut by_conv: BTreeMap<String, (Conversation, Vec<usize>)> = BTreeMap::new();
        let mut cursor_moves: BTreeMap<(UserId, String), Seq> = BTreeMap::new();
        for (i, op) in batch.iter().enumerate() {
            match op {
                WriteOp::Append { msg, .. } => by_conv
                    .entry(msg.conv.key())
                    .or_insert((msg.conv, Vec::new()))
                    .1
                    .push(i),
                WriteOp::Cursors {
                    user, positions, ..
                } => {
                    for (conv, seq) in positions {
                        let e = cursor_moves.entry((*user, conv.key())).or_insert(*seq);
                        *e = (*e).max(*seq);
                    }
                }
            }
        }
        let mut tx = self.pool.begin().await?;
        let mut newly_known = Vec::new();
        let mut rows: Vec<(usize, Seq)> = Vec::new();
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
            let n = i64::try_from(ops.len()).unwrap_or(i64::MAX);
            sqlx::query("UPDATE conversations SET last_seq = last_seq + ? WHERE conv = ?")
                .bind(n)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let (last,): (i64,) = sqlx::query_as(sql::LAST_SEQ)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            for (k, &i) in ops.iter().enumerate() {
                rows.push((i, last - n + 1 + i64::try_from(k).unwrap_or(0)));
            }
        }
        if !rows.is_empty() {
            let mut insert: QueryBuilder<MySql> = QueryBuilder::new(
                "INSERT INTO messages (conv, seq, sender_id, sender_name, body, sent_at) ",
            );
            insert.push_values(&rows, |mut b, (i, seq)| {
                if let WriteOp::Append { msg, .. } = &batch[*i] {
                    b.push_bind(msg.conv.key())
                        .push_bind(*seq)
                        .push_bind(msg.sender)
                        .push_bind(msg.sender_name.clone())
                        .push_bind(msg.body.clone())
                        .push_bind(now);
                }
            });
            insert.build().execute(&mut *tx).await?;
        }
        for ((user, conv), seq) in &cursor_moves {
            sqlx::query(
                "UPDATE cursors SET delivered_seq = GREATEST(delivered_seq, ?) WHERE user_id = ? AND conv = ?",
            )
            .bind(seq)
            .bind(user)
            .bind(conv)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.known.extend(newly_known);
        for (i, seq) in rows {
            if let WriteOp::Append { msg, .. } = &batch[i] {
                outcomes[i] = Some(Ok(ChatMessage {
                    conv: msg.conv,
                    seq,
                    sender: msg.sender,
                    sender_name: msg.sender_name.clone(),
                    body: msg.body.clone(),
                    ts_ms: now,
                }));
            }
        }
        Ok(outcomes)
    }
}

enum Retry {
    Deadlock,
    Failed(StoreError),
}

impl From<sqlx::Error> for Retry {
    fn from(e: sqlx::Error) -> Self {
        if is_deadlock(&e) {
            Retry::Deadlock
        } else {
            Retry::Failed(e.into())
        }
    }
}

/// Makes sure a conversation can take messages: a group's row exists from
/// its creation; a direct one is created (with both participants' cursors)
/// when both users exist.
async fn ensure_conversation(
    tx: &mut Transaction<'_, MySql>,
    conv: Conversation,
) -> Result<StoreResult<()>, Retry> {
    let key = conv.key();
    match conv {
        Conversation::Group(_) => {
            let row: Option<(i64,)> = sqlx::query_as(sql::LAST_SEQ)
                .bind(&key)
                .fetch_optional(&mut **tx)
                .await?;
            Ok(if row.is_some() {
                Ok(())
            } else {
                Err(StoreError::NotFound("group"))
            })
        }
        Conversation::Direct { low, high } => {
            let (count,): (i64,) = sqlx::query_as(sql::COUNT_USERS_2)
                .bind(low)
                .bind(high)
                .fetch_one(&mut **tx)
                .await?;
            if count != 2 {
                return Ok(Err(StoreError::NotFound("user")));
            }
            sqlx::query("INSERT IGNORE INTO conversations (conv, last_seq) VALUES (?, 0)")
                .bind(&key)
                .execute(&mut **tx)
                .await?;
            sqlx::query("INSERT IGNORE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, 0), (?, ?, 0)")
                .bind(low)
                .bind(&key)
                .bind(high)
                .bind(&key)
                .execute(&mut **tx)
                .await?;
            Ok(Ok(()))
        }
    }
}
