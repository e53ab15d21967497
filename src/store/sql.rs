//! The SQL store both backends are: [`SqlStore`], with its queries and
//! row mapping.
//!
//! Both schemas have the same tables and columns, and most queries are
//! plain SQL both dialects accept; those live here once, in one generic
//! [`Store`] implementation. What differs is a [`Dialect`] (`INSERT OR
//! IGNORE` against `INSERT IGNORE`, how a write transaction begins, the
//! inserted id), the message writer each backend gives its [`GroupCommit`],
//! and SQLite's [`FastReads`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::commit::GroupCommit;
use super::{ReadState, Reader, SessionStart, Store, StoreError, StoreResult, now_ms};
use crate::model::{
    ChatMessage, Conversation, Credentials, Device, DeviceEntry, GroupId, GroupInfo, GroupMember,
    GroupRole, NewMessage, Seq, UserId, UserSummary,
};

/// A message row: conv, seq, sender_id, sender_name, body, sent_at, kind,
/// ref_seq.
pub(super) type MsgRow = (String, i64, i64, String, String, i64, i64, i64);

/// A deleted account keeps its row (and so its name, which nobody can
/// take to pass for it) with this in place of a password hash.
pub(super) const DELETED: &str = "!";
pub(super) const CREDENTIALS: &str =
    "SELECT name, password_hash FROM users WHERE id = ? AND password_hash <> '!'";
/// What deleting an account removes, each statement binding the user's id
/// (twice where it says so).
pub(super) const DELETE_ACCOUNT: [(&str, usize); 11] = [
    ("DELETE FROM friends WHERE user_id = ? OR friend_id = ?", 2),
    ("DELETE FROM group_members WHERE user_id = ?", 1),
    ("DELETE FROM cursors WHERE user_id = ?", 1),
    ("DELETE FROM device_cursors WHERE user_id = ?", 1),
    ("DELETE FROM devices WHERE user_id = ?", 1),
    ("DELETE FROM resume_tokens WHERE user_id = ?", 1),
    ("DELETE FROM read_marks WHERE user_id = ?", 1),
    ("DELETE FROM blocks WHERE user_id = ? OR blocked_id = ?", 2),
    ("DELETE FROM sent_ids WHERE sender_id = ?", 1),
    (
        "DELETE FROM friend_requests WHERE from_id = ? OR to_id = ?",
        2,
    ),
    ("DELETE FROM group_invites WHERE user_id = ?", 1),
];
pub(super) const DROP_EXPIRED_TOKENS: &str =
    "DELETE FROM resume_tokens WHERE user_id = ? AND expires_at < ?";
pub(super) const CREATE_TOKEN: &str =
    "INSERT INTO resume_tokens (token_hash, user_id, device, expires_at) VALUES (?, ?, ?, ?)";
pub(super) const TOKEN_USER: &str = "SELECT t.user_id, u.name, t.device FROM resume_tokens t \
     JOIN users u ON u.id = t.user_id WHERE t.token_hash = ? AND t.expires_at >= ?";
pub(super) const REVOKE_TOKEN: &str = "DELETE FROM resume_tokens WHERE token_hash = ?";
pub(super) const USER_ID: &str = "SELECT id FROM users WHERE id = ?";
pub(super) const COUNT_USERS_2: &str = "SELECT COUNT(*) FROM users WHERE id IN (?, ?)";
pub(super) const CREATE_USER: &str =
    "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)";
pub(super) const REMOVE_FRIENDSHIP: &str =
    "DELETE FROM friends WHERE (user_id = ? AND friend_id = ?) OR (user_id = ? AND friend_id = ?)";
pub(super) const FRIENDS: &str = "SELECT u.id, u.name FROM friends f JOIN users u ON u.id = f.friend_id \
     WHERE f.user_id = ? ORDER BY u.id";
pub(super) const LAST_SEQ: &str = "SELECT last_seq FROM conversations WHERE conv = ?";
pub(super) const USER_GROUPS: &str = "SELECT g.id, g.name, g.description FROM group_members gm \
     JOIN chat_groups g ON g.id = gm.group_id WHERE gm.user_id = ? ORDER BY g.id";
pub(super) const USER_GROUPS_MEMBERS: &str = "SELECT gm.group_id, u.id, u.name, gm.role FROM group_members gm \
     JOIN users u ON u.id = gm.user_id \
     WHERE gm.group_id IN (SELECT group_id FROM group_members WHERE user_id = ?) \
     ORDER BY gm.group_id, u.id";
pub(super) const GROUP_MEMBERS: &str = "SELECT user_id FROM group_members WHERE group_id = ?";
pub(super) const GROUP_ID: &str = "SELECT id FROM chat_groups WHERE id = ? AND private <> 2";
pub(super) const BLOCKING: &str =
    "SELECT blocked_id FROM blocks WHERE user_id = ? ORDER BY blocked_id";
pub(super) const BLOCKED_BY: &str =
    "SELECT user_id FROM blocks WHERE blocked_id = ? ORDER BY user_id";
pub(super) const ONLY_FRIENDS: &str = "SELECT only_friends FROM users WHERE id = ?";
pub(super) const SET_ONLY_FRIENDS: &str = "UPDATE users SET only_friends = ? WHERE id = ?";
/// Friend requests either way between two users (a block, a friendship).
/// Binds: a, b, b, a.
pub(super) const DROP_REQUESTS_BETWEEN: &str = "DELETE FROM friend_requests \
     WHERE (from_id = ? AND to_id = ?) OR (from_id = ? AND to_id = ?)";
pub(super) const UNBLOCK: &str = "DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?";
/// Whether `to` blocks `from`, `from` blocks `to`, `to` takes friends
/// only, they are friends, and `to` is a live account. Binds: to, from,
/// from, to, to, to, from, to.
pub(super) const REACH: &str = "SELECT \
     (SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?), \
     (SELECT COUNT(*) FROM blocks WHERE user_id = ? AND blocked_id = ?), \
     COALESCE((SELECT only_friends FROM users WHERE id = ?), 0), \
     (SELECT COUNT(*) FROM friends WHERE user_id = ? AND friend_id = ?), \
     (SELECT COUNT(*) FROM users WHERE id = ? AND password_hash <> '!')";
/// Followed by one `(?, ?, ?, ?, ?, ?, ?, ?, ?)` per message of a batch.
pub(super) const INSERT_MESSAGES: &str = "INSERT INTO messages \
     (conv, seq, sender_id, sender_device, sender_name, body, sent_at, kind, ref_seq) ";
/// What an event does to the message it names: a recall empties it, an
/// edit replaces its text (unless it was recalled first). Binds: kind, body,
/// conv, seq.
pub(super) const APPLY_CHANGE: &str = "UPDATE messages SET kind = ?, body = ? \
     WHERE conv = ? AND seq = ? AND kind IN (0, 1)";
/// One message of a conversation. Binds: conv, seq.
pub(super) const MESSAGE: &str = "SELECT m.conv, m.seq, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.ref_seq \
     FROM messages m WHERE m.conv = ? AND m.seq = ?";
/// The message a sender already stored under its own id.
pub(super) const SENT_ID: &str = "SELECT m.conv, m.seq, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.ref_seq \
     FROM sent_ids s JOIN messages m ON m.conv = s.conv AND m.seq = s.seq \
     WHERE s.sender_id = ? AND s.client_id = ?";
pub(super) const INSERT_SENT_ID: &str =
    "INSERT INTO sent_ids (sender_id, client_id, conv, seq) VALUES (?, ?, ?, ?)";
/// A device's position in a conversation, with `c` the user's row in
/// `cursors` and `d` the device's row in `device_cursors` (if any): the
/// greater of the two (see migrations/sqlite/0004_devices.sql).
macro_rules! position {
    () => {
        "CASE WHEN d.delivered_seq > c.delivered_seq THEN d.delivered_seq ELSE c.delivered_seq END"
    };
}
/// The user's conversations (`c`) with the device's rows (`d`), for a
/// device `?` and a user `?`.
macro_rules! positions_of_device {
    () => {
        "FROM cursors c LEFT JOIN device_cursors d \
         ON d.user_id = c.user_id AND d.device = ? AND d.conv = c.conv \
         WHERE c.user_id = ?"
    };
}
/// Binds: device, user.
pub(super) const CURSORS: &str =
    concat!("SELECT c.conv, ", position!(), " ", positions_of_device!());
/// How far a user (`?`) has got in a conversation (`?`) on any device.
pub(super) const CURSOR: &str = concat!(
    "SELECT MAX(",
    position!(),
    ") FROM cursors c LEFT JOIN device_cursors d ON d.user_id = c.user_id AND d.conv = c.conv \
     WHERE c.user_id = ? AND c.conv = ?"
);
/// A page of undelivered messages that takes its fair share of each
/// conversation: the first of each, then the second of each, and so on, so
/// that one flooded conversation cannot hold back the others. Within a
/// conversation the page is always a prefix of its backlog (cursors stay
/// right). The window (`seq <= position + ?`, the page size) keeps the sort
/// to at most a page per conversation; a page cut short by it just means
/// another page is read. A window can hold only the device's own messages (a
/// long run of them past a cursor that a crash left behind), so an empty
/// fair page is followed by [`UNDELIVERED_ANY`] before the backlog counts as
/// empty. Binds: device, user, window, user, device, limit.
pub(super) const UNDELIVERED: &str = concat!(
    "SELECT m.conv, m.seq, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.ref_seq \
     FROM cursors c LEFT JOIN device_cursors d \
     ON d.user_id = c.user_id AND d.device = ? AND d.conv = c.conv \
     JOIN messages m ON m.conv = c.conv AND m.seq > ",
    position!(),
    " AND m.seq <= ",
    position!(),
    " + ? WHERE c.user_id = ? AND (m.sender_id <> ? OR m.sender_device <> ?) \
     ORDER BY m.seq - ",
    position!(),
    ", m.conv, m.seq LIMIT ?"
);
/// Each cursor row joins the messages past it; ordering by (conv, seq) makes
/// every conversation's share of a page a prefix, so moving the cursors to a
/// page's last positions never skips a message. Unfair, but it finds
/// whatever lies past any window. Binds: device, user, user, device, limit.
pub(super) const UNDELIVERED_ANY: &str = concat!(
    "SELECT m.conv, m.seq, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.ref_seq \
     FROM cursors c LEFT JOIN device_cursors d \
     ON d.user_id = c.user_id AND d.device = ? AND d.conv = c.conv \
     JOIN messages m ON m.conv = c.conv AND m.seq > ",
    position!(),
    " WHERE c.user_id = ? AND (m.sender_id <> ? OR m.sender_device <> ?) \
     ORDER BY m.conv, m.seq LIMIT ?"
);
/// Binds: conv, after, before, user, device.
pub(super) const BETWEEN: &str = "SELECT m.conv, m.seq, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.ref_seq FROM messages m \
     WHERE m.conv = ? AND m.seq > ? AND m.seq < ? AND (m.sender_id <> ? OR m.sender_device <> ?) ORDER BY m.seq";
pub(super) const DEVICES: &str =
    "SELECT device, last_seen FROM devices WHERE user_id = ? ORDER BY last_seen DESC, device";
pub(super) const TOUCH_DEVICE: &str =
    "UPDATE devices SET last_seen = ? WHERE user_id = ? AND device = ?";
pub(super) const ADD_DEVICE: &str =
    "INSERT INTO devices (user_id, device, created_at, last_seen) VALUES (?, ?, ?, ?)";
/// The devices unused the longest first.
pub(super) const DEVICES_BY_AGE: &str =
    "SELECT device FROM devices WHERE user_id = ? ORDER BY last_seen, device";
pub(super) const DROP_DEVICE: &str = "DELETE FROM devices WHERE user_id = ? AND device = ?";
pub(super) const DROP_DEVICE_CURSORS: &str =
    "DELETE FROM device_cursors WHERE user_id = ? AND device = ?";
pub(super) const DROP_DEVICE_TOKENS: &str =
    "DELETE FROM resume_tokens WHERE user_id = ? AND device = ?";
/// A new device starts where the furthest of the user's devices has got.
/// Binds: device, user.
pub(super) const SNAPSHOT_DEVICE: &str = concat!(
    "INSERT INTO device_cursors (user_id, device, conv, delivered_seq) \
     SELECT c.user_id, ?, c.conv, MAX(",
    position!(),
    ") FROM cursors c LEFT JOIN device_cursors d ON d.user_id = c.user_id AND d.conv = c.conv \
     WHERE c.user_id = ? GROUP BY c.user_id, c.conv"
);
/// How far a user (`?`) has read each of its conversations (its base
/// position without a row), how many messages from others lie past that
/// (counted up to [`super::UNREAD_COUNT_MAX`]), and, for direct ones, how
/// far the peer has read.
pub(super) const READS: &str = "SELECT c.conv, COALESCE(r.read_seq, c.delivered_seq), \
     (SELECT COUNT(*) FROM messages m WHERE m.conv = c.conv \
       AND m.seq > COALESCE(r.read_seq, c.delivered_seq) \
       AND m.seq <= COALESCE(r.read_seq, c.delivered_seq) + 1000 \
       AND m.sender_id <> c.user_id), \
     (SELECT MAX(p.read_seq) FROM read_marks p WHERE p.conv = c.conv AND p.user_id <> c.user_id \
       AND c.conv LIKE 'd:%') \
     FROM cursors c LEFT JOIN read_marks r ON r.user_id = c.user_id AND r.conv = c.conv \
     WHERE c.user_id = ?";
/// A user's read position in a conversation: its row, or its base.
/// Binds: user, conv.
pub(super) const READ_POSITION: &str = "SELECT COALESCE(r.read_seq, c.delivered_seq) FROM cursors c \
     LEFT JOIN read_marks r ON r.user_id = c.user_id AND r.conv = c.conv \
     WHERE c.user_id = ? AND c.conv = ?";
/// A member who leaves leaves with every device.
pub(super) const HISTORY: &str = "SELECT m.conv, m.seq, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.ref_seq FROM messages m \
     WHERE m.conv = ? AND m.seq > ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?";

pub(super) fn message_of(row: MsgRow) -> Option<ChatMessage> {
    let (conv, seq, sender, sender_name, body, ts_ms, kind, ref_seq) = row;
    Some(ChatMessage {
        conv: Conversation::from_key(&conv)?,
        seq: Seq(seq),
        sender: UserId(sender),
        sender_name,
        body,
        ts_ms,
        kind: crate::model::MsgKind::from_columns(kind, ref_seq),
    })
}

pub(super) fn messages(rows: Vec<MsgRow>) -> Vec<ChatMessage> {
    rows.into_iter().filter_map(message_of).collect()
}

/// The rows of [`READS`] that say something: unread messages, or a peer
/// that has read.
pub(super) fn reads(rows: Vec<(String, i64, i64, Option<i64>)>) -> Vec<ReadState> {
    rows.into_iter()
        .filter(|(_, _, unread, peer)| *unread > 0 || peer.is_some())
        .filter_map(|(conv, read, unread, peer)| {
            Some(ReadState {
                conv: Conversation::from_key(&conv)?,
                read: Seq(read),
                unread: u32::try_from(unread).unwrap_or(u32::MAX),
                peer_read: peer.map(Seq),
            })
        })
        .collect()
}

pub(super) fn devices(rows: Vec<(String, i64)>) -> Vec<DeviceEntry> {
    rows.into_iter()
        .map(|(d, last_seen)| DeviceEntry {
            device: Device::stored(&d),
            last_seen,
        })
        .collect()
}

pub(super) fn cursors(rows: Vec<(String, i64)>) -> Vec<(Conversation, Seq)> {
    rows.into_iter()
        .filter_map(|(c, s)| Some((Conversation::from_key(&c)?, Seq(s))))
        .collect()
}

/// Joins the two `user_groups` queries into groups with their members.
pub(super) fn assemble_groups(
    groups: Vec<(i64, String, String)>,
    members: Vec<(i64, i64, String, String)>,
) -> Vec<GroupInfo> {
    let mut by_group: HashMap<GroupId, Vec<GroupMember>> = HashMap::new();
    for (gid, id, name, role) in members {
        by_group.entry(GroupId(gid)).or_default().push(GroupMember {
            id: UserId(id),
            name,
            role: GroupRole::parse(&role),
        });
    }
    groups
        .into_iter()
        .map(|(id, name, desc)| GroupInfo {
            id: GroupId(id),
            name,
            desc,
            members: by_group.remove(&GroupId(id)).unwrap_or_default(),
        })
        .collect()
}

/// [`Store::open_device`], once.
async fn open_device<DB: Dialect>(
    pool: &Pool<DB>,
    user: UserId,
    device: &Device,
    max_devices: usize,
) -> Result<Vec<Device>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'e> i64: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    for<'e> &'e str: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let now = now_ms();
    let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
    let touched = DB::rows_affected(
        &sqlx::query(TOUCH_DEVICE)
            .bind(now)
            .bind(user)
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?,
    );
    if touched > 0 {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    match sqlx::query(ADD_DEVICE)
        .bind(user)
        .bind(device.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {}
        // Another node opened the same new device just now: it is not
        // new any more.
        Err(e) if is_unique_violation(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    // Rows of an earlier device of this name (forgotten while one of
    // its sessions was still storing positions) do not count.
    sqlx::query(DROP_DEVICE_CURSORS)
        .bind(user)
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query(SNAPSHOT_DEVICE)
        .bind(device.as_str())
        .bind(user)
        .execute(&mut *tx)
        .await?;
    let all: Vec<(String,)> = sqlx::query_as(DEVICES_BY_AGE)
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
    let excess = all.len().saturating_sub(max_devices.max(1));
    let mut forgotten = Vec::new();
    for (old,) in all.into_iter().filter(|(d,)| d != device.as_str()) {
        if forgotten.len() >= excess {
            break;
        }
        for q in [DROP_DEVICE, DROP_DEVICE_CURSORS, DROP_DEVICE_TOKENS] {
            sqlx::query(q)
                .bind(user)
                .bind(old.as_str())
                .execute(&mut *tx)
                .await?;
        }
        forgotten.push(Device::stored(&old));
    }
    tx.commit().await?;
    Ok(forgotten)
}

/// A deadlock or serialization failure (SQLSTATE 40001), or SQLite busy:
/// trying again is the remedy.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("40001") || d.message().contains("database is locked"))
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// What one SQL dialect does its own way; everything else [`SqlStore`]
/// writes once for both.
pub trait Dialect: Database {
    /// Inserts both friendship rows (`a, b, b, a`), skipping existing ones.
    const ADD_FRIENDS: &'static str;
    /// Adds a block (`user, blocked, created_at`), skipping an existing one.
    const ADD_BLOCK: &'static str;
    /// Moves a read position forward (`user, conv, seq`), never back.
    const UPSERT_READ: &'static str;
    /// Begins a transaction that will write. SQLite takes the write lock up
    /// front (`IMMEDIATE`), so that a read inside the transaction cannot
    /// turn into a busy snapshot when the message writer commits in between.
    const BEGIN_WRITE: &'static str;
    /// The id of the row just inserted.
    fn inserted_id(done: &Self::QueryResult) -> StoreResult<i64>;
    /// How many rows a statement changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
}

/// Reads a backend answers its own faster way than statement by statement
/// on the pool (SQLite: several statements in one hop to a blocking thread).
#[async_trait]
pub trait FastReads: std::fmt::Debug + Send + Sync + 'static {
    /// As [`Store::token_user`].
    async fn token_user(&self, token_hash: &str) -> StoreResult<Option<(UserId, String, Device)>>;
    /// As [`Store::session_start`].
    async fn session_start(&self, reader: &Reader, page: usize) -> StoreResult<SessionStart>;
}

/// A [`Store`] on a SQL database: the pool for reads and for the rare
/// writes (accounts, friends, groups), a [`GroupCommit`] writer for
/// messages and cursor moves, and optionally [`FastReads`].
/// [`SqliteStore`](super::sqlite::SqliteStore) and
/// [`MySqlStore`](super::mysql::MySqlStore) are this type.
#[derive(Debug)]
pub struct SqlStore<DB: Dialect> {
    pub(super) pool: Pool<DB>,
    pub(super) commit: GroupCommit,
    pub(super) fast_reads: Option<Arc<dyn FastReads>>,
}

/// With a staging writer (SQLite, `super::stage`) the writer holds the
/// write lock across batches, and rows it has acknowledged are not yet
/// visible to the pool: so every write on the pool first takes the
/// writer's gate (`write_gate`), and every read of messages, cursors or
/// conversations first waits for what was acknowledged (`settle`). Both
/// return at once for MySQL.
#[async_trait]
impl<DB: Dialect> Store for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'e> i64: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    for<'e> &'e str: Encode<'e, DB> + Type<DB>,
    for<'e> String: Encode<'e, DB> + Decode<'e, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<UserId> {
        let _gate = self.commit.write_gate().await?;
        let res = sqlx::query(CREATE_USER)
            .bind(name)
            .bind(password_hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await;
        match res {
            Ok(done) => DB::inserted_id(&done).map(UserId),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("name is already taken")),
            Err(e) => Err(e.into()),
        }
    }

    async fn add_friendship(&self, a: UserId, b: UserId) -> StoreResult<()> {
        let _gate = self.commit.write_gate().await?;
        self.sql_add_friendship(a, b).await
    }

    async fn ask_friend(
        &self,
        from: UserId,
        to: UserId,
        limits: super::AskLimits,
    ) -> StoreResult<super::FriendAsk> {
        let _gate = self.commit.write_gate().await?;
        self.sql_ask_friend(from, to, limits).await
    }

    async fn answer_friend(&self, user: UserId, from: UserId, accept: bool) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        self.sql_answer_friend(user, from, accept).await
    }

    async fn withdraw_friend_request(&self, from: UserId, to: UserId) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        self.sql_withdraw_friend_request(from, to).await
    }

    async fn friend_requests(&self, user: UserId) -> StoreResult<super::FriendRequests> {
        self.sql_friend_requests(user).await
    }

    async fn create_group(
        &self,
        creator: UserId,
        name: &str,
        desc: &str,
        private: bool,
    ) -> StoreResult<GroupId> {
        let _gate = self.commit.write_gate().await?;
        self.sql_create_group(creator, name, desc, private).await
    }

    async fn group(&self, group: GroupId) -> StoreResult<Option<super::GroupMeta>> {
        self.sql_group(group).await
    }

    async fn group_info(&self, group: GroupId) -> StoreResult<Option<GroupInfo>> {
        self.sql_group_info(group).await
    }

    async fn join_group(&self, user: UserId, group: GroupId) -> StoreResult<Seq> {
        let _gate = self.commit.write_gate().await?;
        self.sql_join_group(user, group).await
    }

    async fn invite(
        &self,
        group: GroupId,
        user: UserId,
        by: UserId,
        kind: super::InviteKind,
        max_pending: usize,
    ) -> StoreResult<super::InviteOutcome> {
        let _gate = self.commit.write_gate().await?;
        self.sql_invite(group, user, by, kind, max_pending).await
    }

    async fn answer_invite(
        &self,
        group: GroupId,
        user: UserId,
        kind: super::InviteKind,
        admit: bool,
    ) -> StoreResult<Option<Seq>> {
        let _gate = self.commit.write_gate().await?;
        self.sql_answer_invite(group, user, kind, admit).await
    }

    async fn group_invites(&self, group: GroupId) -> StoreResult<Vec<super::Invite>> {
        self.sql_group_invites(group).await
    }

    async fn user_invites(&self, user: UserId) -> StoreResult<Vec<super::Invite>> {
        self.sql_user_invites(user).await
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: GroupRole) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        self.sql_set_role(group, user, role).await
    }

    async fn update_group(
        &self,
        group: GroupId,
        name: Option<&str>,
        desc: Option<&str>,
    ) -> StoreResult<()> {
        let _gate = self.commit.write_gate().await?;
        self.sql_update_group(group, name, desc).await
    }

    async fn dissolve_group(&self, group: GroupId) -> StoreResult<Vec<UserId>> {
        let _gate = self.commit.write_gate().await?;
        self.sql_dissolve_group(group).await
    }

    async fn create_token(
        &self,
        user: UserId,
        device: &Device,
        token_hash: &str,
        expires_ms: i64,
    ) -> StoreResult<()> {
        let _gate = self.commit.write_gate().await?;
        sqlx::query(DROP_EXPIRED_TOKENS)
            .bind(user)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        sqlx::query(CREATE_TOKEN)
            .bind(token_hash)
            .bind(user)
            .bind(device.as_str())
            .bind(expires_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn open_device(
        &self,
        user: UserId,
        device: &Device,
        max_devices: usize,
    ) -> StoreResult<Vec<Device>> {
        let _gate = self.commit.write_gate().await?;
        // Its snapshot reads the rows cursor moves write: on MySQL the two
        // can deadlock, and trying again is the remedy.
        let mut attempt = 0;
        loop {
            match open_device::<DB>(&self.pool, user, device, max_devices).await {
                Err(e) if is_retryable(&e) && attempt < 5 => attempt += 1,
                result => return result.map_err(StoreError::from),
            }
        }
    }

    async fn forget_device(&self, user: UserId, device: &Device) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let gone = DB::rows_affected(
            &sqlx::query(DROP_DEVICE)
                .bind(user)
                .bind(device.as_str())
                .execute(&mut *tx)
                .await?,
        );
        for q in [DROP_DEVICE_CURSORS, DROP_DEVICE_TOKENS] {
            sqlx::query(q)
                .bind(user)
                .bind(device.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone > 0)
    }

    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceEntry>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(DEVICES)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(devices(rows))
    }

    async fn revoke_token(&self, token_hash: &str) -> StoreResult<()> {
        let _gate = self.commit.write_gate().await?;
        sqlx::query(REVOKE_TOKEN)
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn credentials(&self, id: UserId) -> StoreResult<Option<Credentials>> {
        let row: Option<(String, String)> = sqlx::query_as(CREDENTIALS)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(name, password_hash)| Credentials {
            id,
            name,
            password_hash,
        }))
    }

    async fn remove_friendship(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        let done = sqlx::query(REMOVE_FRIENDSHIP)
            .bind(a)
            .bind(b)
            .bind(b)
            .bind(a)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    async fn block(&self, user: UserId, other: UserId) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let exists: Option<(i64,)> = sqlx::query_as(USER_ID)
            .bind(other)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let added = DB::rows_affected(
            &sqlx::query(DB::ADD_BLOCK)
                .bind(user)
                .bind(other)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?,
        );
        for q in [REMOVE_FRIENDSHIP, DROP_REQUESTS_BETWEEN] {
            sqlx::query(q)
                .bind(user)
                .bind(other)
                .bind(other)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(added > 0)
    }

    async fn delete_account(&self, user: UserId) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        let mut tx = self.pool.begin_with(DB::BEGIN_WRITE).await?;
        let marked = DB::rows_affected(
            &sqlx::query("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash <> ?")
                .bind(DELETED)
                .bind(user)
                .bind(DELETED)
                .execute(&mut *tx)
                .await?,
        );
        if marked == 0 {
            return Ok(false);
        }
        Self::hand_over_all(&mut tx, user).await?;
        for (q, binds) in DELETE_ACCOUNT {
            let mut query = sqlx::query(q).bind(user);
            if binds == 2 {
                query = query.bind(user);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn unblock(&self, user: UserId, other: UserId) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        let done = sqlx::query(UNBLOCK)
            .bind(user)
            .bind(other)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) > 0)
    }

    async fn blocks(&self, user: UserId) -> StoreResult<super::Blocks> {
        let ids = |rows: Vec<(i64,)>| rows.into_iter().map(|(id,)| UserId(id)).collect();
        let blocking: Vec<(i64,)> = sqlx::query_as(BLOCKING)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        let blocked_by: Vec<(i64,)> = sqlx::query_as(BLOCKED_BY)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        let only: Option<(i64,)> = sqlx::query_as(ONLY_FRIENDS)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(super::Blocks {
            blocking: ids(blocking),
            blocked_by: ids(blocked_by),
            only_friends: only.is_some_and(|(o,)| o != 0),
        })
    }

    async fn may_reach(&self, from: UserId, to: UserId) -> StoreResult<super::Reach> {
        let (they_block, you_block, only_friends, friends, live): (i64, i64, i64, i64, i64) =
            sqlx::query_as(REACH)
                .bind(to)
                .bind(from)
                .bind(from)
                .bind(to)
                .bind(to)
                .bind(to)
                .bind(from)
                .bind(to)
                .fetch_one(&self.pool)
                .await?;
        Ok(if live == 0 {
            super::Reach::NoSuchUser
        } else if they_block > 0 {
            super::Reach::BlockedByThem
        } else if you_block > 0 {
            super::Reach::BlockedByYou
        } else if only_friends != 0 && friends == 0 {
            super::Reach::FriendsOnly
        } else {
            super::Reach::Yes
        })
    }

    async fn set_only_friends(&self, user: UserId, on: bool) -> StoreResult<()> {
        let _gate = self.commit.write_gate().await?;
        sqlx::query(SET_ONLY_FRIENDS)
            .bind(i64::from(on))
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserSummary>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(FRIENDS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name)| UserSummary {
                id: UserId(id),
                name,
            })
            .collect())
    }

    async fn leave_group(&self, user: UserId, group: GroupId) -> StoreResult<bool> {
        let _gate = self.commit.write_gate().await?;
        self.sql_leave_group(user, group).await
    }

    async fn user_groups(&self, user: UserId) -> StoreResult<Vec<GroupInfo>> {
        let groups: Vec<(i64, String, String)> = sqlx::query_as(USER_GROUPS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        let members: Vec<(i64, i64, String, String)> = sqlx::query_as(USER_GROUPS_MEMBERS)
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        Ok(assemble_groups(groups, members))
    }

    async fn group_members(&self, group: GroupId) -> StoreResult<Option<Vec<UserId>>> {
        let rows: Vec<(i64,)> = sqlx::query_as(GROUP_MEMBERS)
            .bind(group)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            let exists: Option<(i64,)> = sqlx::query_as(GROUP_ID)
                .bind(group)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(rows.into_iter().map(|(id,)| UserId(id)).collect()))
    }

    async fn append(&self, msg: NewMessage) -> StoreResult<ChatMessage> {
        self.commit.append(msg).await
    }

    async fn advance_cursors(
        &self,
        reader: &Reader,
        positions: Vec<(Conversation, Seq)>,
    ) -> StoreResult<()> {
        self.commit.advance_cursors(reader, positions).await
    }

    fn queue_cursors(
        &self,
        reader: &Reader,
        positions: Vec<(Conversation, Seq)>,
    ) -> Result<(), Vec<(Conversation, Seq)>> {
        self.commit.queue_cursors(reader, positions)
    }

    async fn mark_read(
        &self,
        user: UserId,
        conv: Conversation,
        seq: Seq,
    ) -> StoreResult<(Seq, bool)> {
        // A receipt that moves nothing (a second device, a repeat) writes
        // nothing: it only needs the rows, not the writer's gate.
        self.commit.settle().await?;
        let key = conv.key();
        let last: Option<(i64,)> = sqlx::query_as(LAST_SEQ)
            .bind(&key)
            .fetch_optional(&self.pool)
            .await?;
        let Some((last,)) = last else {
            return Err(StoreError::NotFound("conversation"));
        };
        let position = || async {
            let row: Option<(i64,)> = sqlx::query_as(READ_POSITION)
                .bind(user)
                .bind(&key)
                .fetch_optional(&self.pool)
                .await?;
            Ok::<_, StoreError>(row.map(|r| Seq(r.0)))
        };
        let Some(before) = position().await? else {
            return Err(StoreError::NotFound("conversation"));
        };
        let target = seq.min(Seq(last));
        if target <= before {
            return Ok((before, false));
        }
        // The upsert only ever moves the mark forward, so what another
        // receipt wrote meanwhile stands.
        let _gate = self.commit.write_gate().await?;
        sqlx::query(DB::UPSERT_READ)
            .bind(user)
            .bind(&key)
            .bind(target)
            .execute(&self.pool)
            .await?;
        let after = position().await?.unwrap_or(target);
        Ok((after, after > before))
    }

    async fn cursor(&self, user: UserId, conv: Conversation) -> StoreResult<Seq> {
        self.commit.settle().await?;
        let row: Option<(Option<i64>,)> = sqlx::query_as(CURSOR)
            .bind(user)
            .bind(conv.key())
            .fetch_optional(&self.pool)
            .await?;
        Ok(Seq(row.and_then(|r| r.0).unwrap_or(0)))
    }

    async fn cursors(&self, reader: &Reader) -> StoreResult<Vec<(Conversation, Seq)>> {
        self.commit.settle().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(CURSORS)
            .bind(reader.device.as_str())
            .bind(reader.user)
            .fetch_all(&self.pool)
            .await?;
        Ok(cursors(rows))
    }

    async fn undelivered(&self, reader: &Reader, limit: usize) -> StoreResult<Vec<ChatMessage>> {
        self.commit.settle().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let device = reader.device.as_str();
        let rows: Vec<MsgRow> = sqlx::query_as(UNDELIVERED)
            .bind(device)
            .bind(limit)
            .bind(reader.user)
            .bind(reader.user)
            .bind(device)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        if !rows.is_empty() {
            return Ok(messages(rows));
        }
        let rows: Vec<MsgRow> = sqlx::query_as(UNDELIVERED_ANY)
            .bind(device)
            .bind(reader.user)
            .bind(reader.user)
            .bind(device)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(messages(rows))
    }

    async fn between(
        &self,
        conv: Conversation,
        after: Seq,
        before: Seq,
        reader: &Reader,
    ) -> StoreResult<Vec<ChatMessage>> {
        self.commit.settle().await?;
        let rows: Vec<MsgRow> = sqlx::query_as(BETWEEN)
            .bind(conv.key())
            .bind(after)
            .bind(before)
            .bind(reader.user)
            .bind(reader.device.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(messages(rows))
    }

    async fn message(&self, conv: Conversation, seq: Seq) -> StoreResult<Option<ChatMessage>> {
        self.commit.settle().await?;
        let row: Option<MsgRow> = sqlx::query_as(MESSAGE)
            .bind(conv.key())
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(message_of))
    }

    async fn membership(
        &self,
        group: GroupId,
        user: UserId,
    ) -> StoreResult<Option<super::Membership>> {
        self.commit.settle().await?;
        self.sql_membership(group, user).await
    }

    async fn history(
        &self,
        conv: Conversation,
        after: Seq,
        before: Option<Seq>,
        limit: u32,
    ) -> StoreResult<Vec<ChatMessage>> {
        self.commit.settle().await?;
        let rows: Vec<MsgRow> = sqlx::query_as(HISTORY)
            .bind(conv.key())
            .bind(after)
            .bind(before.unwrap_or(Seq::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(messages(rows))
    }

    fn pool_usage(&self) -> crate::metrics::PoolUsage {
        Some((self.pool.size(), self.pool.num_idle()))
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        Ok(())
    }

    async fn close(&self) {
        self.commit.close().await;
        self.pool.close().await;
    }

    async fn token_user(&self, token_hash: &str) -> StoreResult<Option<(UserId, String, Device)>> {
        if let Some(fast) = &self.fast_reads {
            return fast.token_user(token_hash).await;
        }
        let row: Option<(UserId, String, String)> = sqlx::query_as(TOKEN_USER)
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(id, name, device)| (id, name, Device::stored(&device))))
    }

    async fn session_start(&self, reader: &Reader, page: usize) -> StoreResult<SessionStart> {
        self.commit.settle().await?;
        if let Some(fast) = &self.fast_reads {
            return fast.session_start(reader, page).await;
        }
        Ok(SessionStart {
            cursors: self.cursors(reader).await?,
            undelivered: self.undelivered(reader, page).await?,
            friends: self.friends(reader.user).await?,
            groups: self.user_groups(reader.user).await?,
            devices: self.devices(reader.user).await?,
            reads: {
                let rows: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(READS)
                    .bind(reader.user)
                    .fetch_all(&self.pool)
                    .await?;
                reads(rows)
            },
        })
    }
}
