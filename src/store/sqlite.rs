//! The embedded SQLite backend: one data file, nothing to install.
//!
//! Reads go through a small pool (WAL mode lets them run beside the writer).
//! Messages and cursor moves go through [`GroupCommit`] with a writer that
//! owns its own connection. Being the only writer of messages, it can keep
//! each conversation's last sequence number in memory. sqlx runs every SQLite
//! connection on a worker thread of its own, so no SQLite call blocks the
//! reactor.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};

use super::commit::{BatchWriter, GroupCommit, WriteOp};
use super::sql::{self, MsgRow, impl_store, is_unique_violation};
use super::{StoreError, StoreResult, now_ms};
use crate::model::{
    ChatMessage, Conversation, Credentials, GroupId, GroupInfo, NewMessage, Seq, UserId,
    UserSummary,
};

/// Conversations whose last sequence number the writer remembers; past this
/// the cache is dropped and refilled from the table on demand.
const MAX_CACHED_CONVS: usize = 1 << 20;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite-backed [`Store`](super::Store).
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    commit: GroupCommit,
}

impl SqliteStore {
    /// Inserts both friendship rows, skipping existing ones.
    const ADD_FRIENDS: &str =
        "INSERT OR IGNORE INTO friends (user_id, friend_id) VALUES (?, ?), (?, ?)";

    /// IMMEDIATE: take the write lock up front, so that a read inside the
    /// transaction cannot turn into a busy snapshot when the message writer
    /// commits in between.
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn inserted_id(done: &SqliteQueryResult) -> StoreResult<i64> {
        Ok(done.last_insert_rowid())
    }

    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`;
    /// not `:memory:`, since the writer needs a second connection to the
    /// same data) and runs the migrations.
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
        let commit = GroupCommit::start(Writer {
            conn,
            last_seq: HashMap::new(),
        });
        Ok(SqliteStore { pool, commit })
    }
}

impl_store!(SqliteStore {});

/// The single writer: owns a connection and the per-conversation counters.
struct Writer {
    conn: SqliteConnection,
    /// Last sequence number of each conversation, as committed.
    last_seq: HashMap<Conversation, Seq>,
}

impl BatchWriter for Writer {
    async fn write_batch(
        &mut self,
        batch: &[WriteOp],
    ) -> StoreResult<Vec<Option<StoreResult<ChatMessage>>>> {
        if self.last_seq.len() > MAX_CACHED_CONVS {
            self.last_seq.clear();
        }
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut touched: HashMap<Conversation, Seq> = HashMap::new();
        let mut rows: Vec<(&NewMessage, Seq)> = Vec::new();
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        for op in batch {
            match op {
                WriteOp::Append(msg) => {
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
                    touched.insert(msg.conv, seq);
                    rows.push((msg, seq));
                    outcomes.push(Some(Ok(msg.stored(seq, now))));
                }
                WriteOp::Cursors { user, positions } => {
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
        // One statement for all of the batch's messages.
        if !rows.is_empty() {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(sql::INSERT_MESSAGES);
            insert.push_values(&rows, |mut b, (msg, seq)| {
                b.push_bind(msg.conv.key())
                    .push_bind(*seq)
                    .push_bind(msg.sender)
                    .push_bind(msg.sender_name.clone())
                    .push_bind(msg.body.clone())
                    .push_bind(now);
            });
            insert.build().execute(&mut *tx).await?;
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
        // Only what committed may advance the counters.
        self.last_seq.extend(touched);
        Ok(outcomes)
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
    sqlx::query(
        "INSERT OR IGNORE INTO cursors (user_id, conv, delivered_seq) VALUES (?, ?, 0), (?, ?, 0)",
    )
    .bind(low)
    .bind(conv.key())
    .bind(high)
    .bind(conv.key())
    .execute(&mut *tx)
    .await?;
    Ok(Ok(0))
}
