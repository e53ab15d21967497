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
mod consent;
pub mod hosts;
pub mod mysql;
pub mod sql;
pub mod sqlite;
mod stage;
mod wal_sync;

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{
    ChatMessage, Conversation, Credentials, Device, DeviceEntry, GroupId, GroupInfo, GroupRole,
    NewMessage, Seq, UserId, UserSummary,
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

/// What asking another user for friendship did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendAsk {
    /// A new request is pending.
    Requested,
    /// The same request is pending already (or was declined, which the
    /// asker is not told).
    AlreadyAsked,
    /// The other user had asked too: they are friends now.
    Befriended,
    /// The asker has this many requests pending, the most allowed.
    TooManyPending(usize),
    /// The asker made this many requests in the last day, the most allowed.
    TooManyToday(usize),
}

/// Bounds on one user's outgoing friend requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskLimits {
    pub pending: usize,
    pub per_day: usize,
}

/// A user's pending friend requests, both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FriendRequests {
    /// Who asks the user (not those it declined).
    pub incoming: Vec<UserSummary>,
    /// Whom the user asked.
    pub outgoing: Vec<UserSummary>,
}

/// A group as anyone may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMeta {
    pub id: GroupId,
    pub name: String,
    pub desc: String,
    pub private: bool,
}

/// One user's place in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub role: GroupRole,
    /// The group's last sequence number when the user joined: a private
    /// group shows it nothing up to there.
    pub joined: Seq,
    pub private: bool,
}

/// A pending way into a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteKind {
    /// An admin invited the user; the user accepts.
    Invitation = 0,
    /// The user asked; an admin approves.
    Request = 1,
}

impl InviteKind {
    pub fn from_column(v: i64) -> Self {
        if v == 1 {
            InviteKind::Request
        } else {
            InviteKind::Invitation
        }
    }
}

/// What [`Store::invite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteOutcome {
    Pending,
    AlreadyPending,
    /// The other side had asked or invited already: the user joined here.
    Joined(Seq),
    /// This many are pending, the most allowed.
    TooMany(usize),
}

/// An invitation a user holds, or a request an admin sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub group: GroupId,
    pub group_name: String,
    /// The invitee or asker.
    pub user: UserSummary,
    /// Who invited (the asker itself for a request).
    pub by: UserSummary,
    pub kind: InviteKind,
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

    /// Makes `a` and `b` friends of each other (and drops requests between
    /// them); `NotFound` when `b` does not exist, `Conflict` when they
    /// already are.
    async fn add_friendship(&self, a: UserId, b: UserId) -> StoreResult<()>;
    /// `from` asks `to` for friendship: a request, or friendship when `to`
    /// had asked `from` (even if `from` declined it). `NotFound` for an
    /// unknown or deleted `to`, `Conflict` when they are friends already.
    async fn ask_friend(
        &self,
        from: UserId,
        to: UserId,
        limits: AskLimits,
    ) -> StoreResult<FriendAsk>;
    /// `user` accepts (they become friends) or declines `from`'s pending
    /// request; false when there is none.
    async fn answer_friend(&self, user: UserId, from: UserId, accept: bool) -> StoreResult<bool>;
    /// `from` withdraws its request to `to`; false when there was none.
    async fn withdraw_friend_request(&self, from: UserId, to: UserId) -> StoreResult<bool>;
    /// The user's pending requests, both ways.
    async fn friend_requests(&self, user: UserId) -> StoreResult<FriendRequests>;
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

    /// Creates a group with `creator` as its owner; `Conflict` when the
    /// name is taken. Public groups are numbered in order from 1; a private
    /// group gets a random id from [`PRIVATE_GROUP_IDS`], so that the ids
    /// of public groups say nothing of private ones.
    async fn create_group(
        &self,
        creator: UserId,
        name: &str,
        desc: &str,
        private: bool,
    ) -> StoreResult<GroupId>;
    /// The group's name, description and kind, if it exists.
    async fn group(&self, group: GroupId) -> StoreResult<Option<GroupMeta>>;
    /// The group with its members and their roles, if it exists.
    async fn group_info(&self, group: GroupId) -> StoreResult<Option<GroupInfo>>;
    /// Adds `user` to a public group, or to a private one that invited it
    /// (the invitation is used up), as a normal member and returns the
    /// group's current last sequence number (the member's starting
    /// position). `NotFound` for an unknown group and for a private group
    /// that did not invite the user (the two are told apart by nobody);
    /// `Conflict` for a member.
    async fn join_group(&self, user: UserId, group: GroupId) -> StoreResult<Seq>;
    /// Removes `user` from the group; false when not a member. When the
    /// owner leaves, the longest-standing admin (else member) becomes it.
    async fn leave_group(&self, user: UserId, group: GroupId) -> StoreResult<bool>;
    /// Records a pending way into `group` for `user` (an invitation by
    /// `by`, or `user`'s own request); when the other kind was pending
    /// (both sides want it), the user joins. `NotFound` for an unknown
    /// user, `Conflict` for a member; at most `max_pending` are pending
    /// per group (invitations) or per user (requests).
    async fn invite(
        &self,
        group: GroupId,
        user: UserId,
        by: UserId,
        kind: InviteKind,
        max_pending: usize,
    ) -> StoreResult<InviteOutcome>;
    /// Uses up `user`'s pending invitation or request of `kind` to
    /// `group`: with `admit`, the user joins (returns its starting
    /// position); else it is dropped. `None` when there was none.
    async fn answer_invite(
        &self,
        group: GroupId,
        user: UserId,
        kind: InviteKind,
        admit: bool,
    ) -> StoreResult<Option<Seq>>;
    /// Pending invitations and requests of a group.
    async fn group_invites(&self, group: GroupId) -> StoreResult<Vec<Invite>>;
    /// Invitations `user` holds.
    async fn user_invites(&self, user: UserId) -> StoreResult<Vec<Invite>>;
    /// Gives `user` the role `role` (admin or normal); with
    /// [`GroupRole::Creator`] the group is handed over to it and the
    /// present owner becomes an admin. False when `user` is not a member.
    async fn set_role(&self, group: GroupId, user: UserId, role: GroupRole) -> StoreResult<bool>;
    /// Renames the group or changes its description; `Conflict` when the
    /// name is taken.
    async fn update_group(
        &self,
        group: GroupId,
        name: Option<&str>,
        desc: Option<&str>,
    ) -> StoreResult<()>;
    /// Deletes the group, its members, messages and invitations, and
    /// returns who were its members.
    async fn dissolve_group(&self, group: GroupId) -> StoreResult<Vec<UserId>>;
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
    /// `user`'s place in `group`, if a member.
    async fn membership(&self, group: GroupId, user: UserId) -> StoreResult<Option<Membership>>;
    /// Up to `limit` messages of `conv` after `after` and before `before`
    /// (or the newest), newest first.
    async fn history(
        &self,
        conv: Conversation,
        after: Seq,
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

/// The ids private groups are drawn from at random (below 2^31, which the
/// original client reads as an `int`); public groups count up from 1
/// below them.
pub const PRIVATE_GROUP_IDS: std::ops::Range<i64> = (1 << 30)..(1 << 31);

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
