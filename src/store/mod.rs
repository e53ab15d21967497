//! Durable state behind one interface.
//!
//! [`Store`] is everything the service needs from a database; each backend
//! implements it with its own SQL and its own embedded migrations, and one
//! behaviour suite (the end-to-end tests) runs against each. SQLite is the
//! embedded default ([`sqlite`]); MySQL/MariaDB is the cluster backend
//! ([`mysql`]).
//!
//! Two rules shape the interface:
//! * Messages are stored before anyone sees them, each with a sequence
//!   number per conversation, and appended in batches (group commit): many
//!   concurrent [`Store::append`] calls share one transaction.
//! * Nothing is copied into per-user "offline" tables. Each participant has a
//!   delivery cursor per conversation; undelivered messages are the ones past
//!   it, and delivering moves it forward ([`Store::advance_cursors`]).

mod commit;
pub mod hosts;
pub mod mysql;
pub mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{
    ChatMessage, Conversation, Credentials, Device, DeviceEntry, GroupId, GroupInfo, NewMessage,
    Seq, UserId, UserSummary,
};

/// What went wrong in storage, in terms the service can answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A referenced user or group does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule refused the write (name taken, already friends...).
    #[error("{0}")]
    Conflict(&'static str),
    /// The database could not be reached or failed; the request may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Result of storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything a new session reads before its login reply.
#[derive(Debug, Clone, Default)]
pub struct SessionStart {
    /// The device's delivery positions ([`Store::cursors`]).
    pub cursors: Vec<(Conversation, Seq)>,
    /// The first page past them ([`Store::undelivered`]).
    pub undelivered: Vec<ChatMessage>,
    pub friends: Vec<UserSummary>,
    pub groups: Vec<GroupInfo>,
    /// The user's devices, most recently seen first.
    pub devices: Vec<DeviceEntry>,
    /// Conversations with unread messages, or read by their peer.
    pub reads: Vec<ReadState>,
}

/// How far a conversation is read, as the login reply tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadState {
    pub conv: Conversation,
    /// How far the user has read it.
    pub read: Seq,
    /// Messages from others past that, counted up to [`UNREAD_COUNT_MAX`].
    pub unread: u32,
    /// For a direct conversation, how far the peer has read it.
    pub peer_read: Option<Seq>,
}

/// Unread messages are counted up to this many per conversation (a count
/// costs a scan of what it counts).
pub const UNREAD_COUNT_MAX: i64 = 1000;

/// Blocks that concern one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocks {
    /// Whom the user blocks.
    pub blocking: Vec<UserId>,
    /// Who blocks the user.
    pub blocked_by: Vec<UserId>,
    /// The user takes one-to-one messages from friends only.
    pub only_friends: bool,
}

impl Blocks {
    /// Whether the user and `other` block each other either way.
    pub fn between(&self, other: UserId) -> bool {
        self.blocking.contains(&other) || self.blocked_by.contains(&other)
    }
}

/// Whether one user may reach another one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Yes,
    /// No such user (or a deleted account).
    NoSuchUser,
    /// The receiver blocks the sender.
    BlockedByThem,
    /// The sender blocks the receiver.
    BlockedByYou,
    /// The receiver takes messages from friends only.
    FriendsOnly,
}

/// A user's device as a session names it: whose, and which.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reader {
    pub user: UserId,
    pub device: Device,
}

impl Reader {
    pub fn new(user: UserId, device: Device) -> Self {
        Reader { user, device }
    }
}

/// Everything the service persists.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user; `Conflict` when the name is taken.
    async fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<UserId>;
    /// The user's name and password hash, if the user exists.
    async fn credentials(&self, id: UserId) -> StoreResult<Option<Credentials>>;

    /// Keeps a resume token's hash for `device` of `user` until
    /// `expires_ms` (and drops the user's expired ones).
    async fn create_token(
        &self,
        user: UserId,
        device: &Device,
        token_hash: &str,
        expires_ms: i64,
    ) -> StoreResult<()>;
    /// The user (id and name) whose unexpired token has this hash, and the
    /// device it was made for.
    async fn token_user(&self, token_hash: &str) -> StoreResult<Option<(UserId, String, Device)>>;

    /// A session of `device` begins: the device is noted as seen now. A
    /// device the user has not had yet starts, in every conversation, where
    /// the furthest of the user's devices has got (what none of them has
    /// had is its offline messages); when the user then has more than
    /// `max_devices`, those unused the longest are forgotten
    /// ([`Store::forget_device`]) and returned.
    async fn open_device(
        &self,
        user: UserId,
        device: &Device,
        max_devices: usize,
    ) -> StoreResult<Vec<Device>>;
    /// Forgets one of the user's devices: its positions and resume tokens
    /// go (a later login of that name is a new device). False when the
    /// user had no such device.
    async fn forget_device(&self, user: UserId, device: &Device) -> StoreResult<bool>;
    /// The user's devices, most recently seen first.
    async fn devices(&self, user: UserId) -> StoreResult<Vec<DeviceEntry>>;
    /// Forgets a token (logout).
    async fn revoke_token(&self, token_hash: &str) -> StoreResult<()>;

    /// Makes `a` and `b` friends of each other; `NotFound` when `b` does not
    /// exist, `Conflict` when they already are.
    async fn add_friendship(&self, a: UserId, b: UserId) -> StoreResult<()>;
    /// Ends the friendship both ways; false when there was none.
    async fn remove_friendship(&self, a: UserId, b: UserId) -> StoreResult<bool>;
    /// The user's friends, by id.
    async fn friends(&self, user: UserId) -> StoreResult<Vec<UserSummary>>;

    /// `user` blocks `other`: their friendship ends. False when it did
    /// already; `NotFound` for an unknown `other`.
    async fn block(&self, user: UserId, other: UserId) -> StoreResult<bool>;
    /// Deletes `user`'s account: its password stops working, and its
    /// friendships, memberships, devices, positions, tokens, read marks and
    /// blocks go. Its row stays, so its name stays taken (nobody can pass
    /// for it), and the messages it sent stay in their conversations.
    /// False when it was deleted already.
    async fn delete_account(&self, user: UserId) -> StoreResult<bool>;
    /// Ends a block; false when there was none.
    async fn unblock(&self, user: UserId, other: UserId) -> StoreResult<bool>;
    /// Whom `user` blocks, and who blocks `user`.
    async fn blocks(&self, user: UserId) -> StoreResult<Blocks>;
    /// Whether `to` takes one-to-one messages (and friendship) from `from`.
    async fn may_reach(&self, from: UserId, to: UserId) -> StoreResult<Reach>;
    /// Sets whether `user` takes one-to-one messages from friends only.
    async fn set_only_friends(&self, user: UserId, on: bool) -> StoreResult<()>;

    /// Creates a group with `creator` as its creator member; `Conflict` when
    /// the name is taken.
    async fn create_group(&self, creator: UserId, name: &str, desc: &str) -> StoreResult<GroupId>;
    /// Adds `user` to the group as a normal member and returns the group's
    /// current last sequence number (the member's starting position);
    /// `NotFound` for an unknown group, `Conflict` for a member.
    async fn join_group(&self, user: UserId, group: GroupId) -> StoreResult<Seq>;
    /// Removes `user` from the group; false when not a member.
    async fn leave_group(&self, user: UserId, group: GroupId) -> StoreResult<bool>;
    /// The groups `user` belongs to, each with all its members.
    async fn user_groups(&self, user: UserId) -> StoreResult<Vec<GroupInfo>>;
    /// The member ids of a group; `None` when the group does not exist.
    async fn group_members(&self, group: GroupId) -> StoreResult<Option<Vec<UserId>>>;

    /// Stores a message durably and gives it the next sequence number of its
    /// conversation. `NotFound` when a direct message names an unknown user
    /// or a group message an unknown group.
    async fn append(&self, msg: NewMessage) -> StoreResult<ChatMessage>;
    /// Moves the device's delivery cursors forward (never back). Returns
    /// when the move is durable.
    async fn advance_cursors(
        &self,
        reader: &Reader,
        positions: Vec<(Conversation, Seq)>,
    ) -> StoreResult<()>;
    /// Queues a cursor move to ride in the next write batch, without
    /// waiting for it (a busy session saves its positions a few times a
    /// second; none of those saves needs an answer). Gives the positions
    /// back when they cannot be queued, for the caller to
    /// [`advance_cursors`](Store::advance_cursors) instead.
    fn queue_cursors(
        &self,
        reader: &Reader,
        positions: Vec<(Conversation, Seq)>,
    ) -> Result<(), Vec<(Conversation, Seq)>>;
    /// Marks `conv` read by `user` up to `seq` (never past the
    /// conversation's last message, never back). Returns the read position
    /// after, and whether it moved; `NotFound` for a conversation that does
    /// not exist.
    async fn mark_read(
        &self,
        user: UserId,
        conv: Conversation,
        seq: Seq,
    ) -> StoreResult<(Seq, bool)>;
    /// Every conversation the user takes part in, with the device's
    /// delivered position.
    async fn cursors(&self, reader: &Reader) -> StoreResult<Vec<(Conversation, Seq)>>;
    /// How far `user` has got in one conversation on any device (0 if
    /// nowhere).
    async fn cursor(&self, user: UserId, conv: Conversation) -> StoreResult<Seq>;
    /// Up to `limit` messages past the device's cursors, not sent from
    /// that very device, a fair share of each conversation (round robin
    /// over their backlogs, at most `limit` sequence numbers into each);
    /// each conversation's part is a prefix of its backlog. Fewer than
    /// `limit` does not mean nothing is left: only an empty page does.
    async fn undelivered(&self, reader: &Reader, limit: usize) -> StoreResult<Vec<ChatMessage>>;
    /// What a new session of the device reads, all at once (`page`
    /// messages at most). A backend may answer it in one trip instead of
    /// six.
    async fn session_start(&self, reader: &Reader, page: usize) -> StoreResult<SessionStart>;
    /// Messages of `conv` with `after < seq < before` not sent from the
    /// reader's own device, in order: fills a gap in live delivery.
    async fn between(
        &self,
        conv: Conversation,
        after: Seq,
        before: Seq,
        reader: &Reader,
    ) -> StoreResult<Vec<ChatMessage>>;
    /// Message `seq` of `conv`, as it stands now.
    async fn message(&self, conv: Conversation, seq: Seq) -> StoreResult<Option<ChatMessage>>;
    /// `user`'s role in `group`, if a member.
    async fn group_role(
        &self,
        group: GroupId,
        user: UserId,
    ) -> StoreResult<Option<crate::model::GroupRole>>;
    /// Up to `limit` messages of `conv` before `before` (or the newest),
    /// newest first.
    async fn history(
        &self,
        conv: Conversation,
        before: Option<Seq>,
        limit: u32,
    ) -> StoreResult<Vec<ChatMessage>>;

    /// The connection pool's size and idle connections, for metrics.
    fn pool_usage(&self) -> crate::metrics::PoolUsage;

    /// Whether the database answers (one trivial query), for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Finishes pending writes and closes connections.
    async fn close(&self);
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
