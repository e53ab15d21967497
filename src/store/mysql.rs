//! The MySQL / MariaDB backend, for clusters: every node shares one database.
//!
//! Unlike SQLite, several nodes append to the same conversation at once, so
//! sequence numbers come from the database: each batch bumps
//! `conversations.last_seq` by its count under the row lock and reads the
//! result back inside the same transaction. Conversations are locked in key
//! order to keep concurrent batches from deadlocking, and a batch that still
//! hits a deadlock is retried. Each node still commits in batches
//! ([`GroupCommit`]); reads use the pool.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlQueryResult};
use sqlx::{MySql, MySqlConnection, QueryBuilder};

use super::commit::{BatchWriter, GroupCommit, WriteOp};
use super::sql::{self, MsgRow, impl_store, is_unique_violation};
use super::{StoreError, StoreResult, now_ms};
use crate::config::PoolConfig;
use crate::model::{
    ChatMessage, Conversation, Credentials, GroupId, GroupInfo, NewMessage, Seq, UserId,
    UserSummary,
};

/// Conversations the writer remembers as existing; past this it starts over.
const MAX_KNOWN_CONVS: usize = 1 << 20;
/// Attempts for a batch that keeps hitting deadlocks.
const DEADLOCK_RETRIES: usize = 3;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

/// MySQL-backed [`Store`](super::Store).
#[derive(Debug)]
pub struct MySqlStore {
    pool: MySqlPool,
    commit: GroupCommit,
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    // 40001: deadlock / serialization failure, retrying is the remedy.
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40001"))
}

impl MySqlStore {
    /// Inserts both friendship rows, skipping existing ones.
    const ADD_FRIENDS: &str =
        "INSERT IGNORE INTO friends (user_id, friend_id) VALUES (?, ?), (?, ?)";

    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, MySql>> {
        self.pool.begin().await
    }

    fn inserted_id(done: &MySqlQueryResult) -> StoreResult<i64> {
        i64::try_from(done.last_insert_id())
            .map_err(|_| StoreError::Unavailable("id out of range".into()))
    }

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
        let commit = GroupCommit::start(Writer {
            pool: pool.clone(),
            known: HashSet::new(),
        });
        Ok(MySqlStore { pool, commit })
    }

    /// The connection pool, for operational tooling and tests.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
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

impl_store!(MySqlStore {});

/// The node's writer: commits batches of appends and cursor moves.
struct Writer {
    pool: MySqlPool,
    /// Conversations known to exist (with both participants' cursors, for
    /// direct ones), so that only a conversation's first message pays for
    /// the check.
    known: HashSet<Conversation>,
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

type Outcomes = Vec<Option<StoreResult<ChatMessage>>>;

impl BatchWriter for Writer {
    async fn write_batch(&mut self, batch: &[WriteOp]) -> StoreResult<Outcomes> {
        if self.known.len() > MAX_KNOWN_CONVS {
            self.known.clear();
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_batch(batch).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(Retry::Deadlock) if attempt < DEADLOCK_RETRIES => continue,
                Err(Retry::Deadlock) => {
                    return Err(StoreError::Unavailable("deadlock persisted".into()));
                }
                Err(Retry::Failed(e)) => return Err(e),
            }
        }
    }
}

impl Writer {
    /// One attempt at a batch.
    async fn try_batch(&mut self, batch: &[WriteOp]) -> Result<Outcomes, Retry> {
        let now = now_ms();
        let mut outcomes: Outcomes = vec![None; batch.len()];
        // Appends by conversation, in key order (the lock order).
        let mut by_conv: BTreeMap<String, (Conversation, Vec<usize>)> = BTreeMap::new();
        let mut cursor_moves: BTreeMap<(UserId, String), Seq> = BTreeMap::new();
        for (i, op) in batch.iter().enumerate() {
            match op {
                WriteOp::Append(msg) => by_conv
                    .entry(msg.conv.key())
                    .or_insert((msg.conv, Vec::new()))
                    .1
                    .push(i),
                WriteOp::Cursors { user, positions } => {
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
            for (k, &i) in (0_i64..).zip(ops) {
                rows.push((i, last - n + 1 + k));
            }
        }
        if !rows.is_empty() {
            let mut insert: QueryBuilder<MySql> = QueryBuilder::new(sql::INSERT_MESSAGES);
            insert.push_values(&rows, |mut b, (i, seq)| {
                if let WriteOp::Append(msg) = &batch[*i] {
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
            if let WriteOp::Append(msg) = &batch[i] {
                outcomes[i] = Some(Ok(msg.stored(seq, now)));
            }
        }
        Ok(outcomes)
    }
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
