//! Presence and live delivery behind one interface.
//!
//! The [`Hub`] knows who is online and hands stored messages to the sessions
//! of their receivers. On one node that is a map in memory ([`local`]); in a
//! cluster it is Redis (presence keys with a lease, one channel per node).
//! The hub is never the source of truth for messages: everything it carries
//! is already stored, so a push it drops is still delivered later (at the
//! receiver's next gap check or login).

pub mod local;
pub mod queue;
pub mod redis;

use async_trait::async_trait;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::broadcast;

use crate::model::{Delivery, Device, GroupId, UserId};

/// How the hub reaches one logged-in session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Unique per connection, so that a stale logout cannot remove a newer
    /// session of the same user.
    pub session_id: u64,
    /// The device the session is for: a login replaces the older session
    /// of the same device only.
    pub device: Device,
    /// The session's bounded push queue. A push that finds it full is
    /// dropped and the session marked lagging: it then catches up from the
    /// store instead of being disconnected, so that a flood aimed at a user
    /// costs that user nothing but latency. Its end says when the session
    /// has ended and stored its positions: a newer login that replaces it
    /// waits for that (a while at most) before reading them, so that it
    /// does not offer again what the old one had.
    pub pushes: queue::PushSender,
    /// Disconnects the session, saying why.
    pub kick: Kick,
    /// Names the resume token the session was opened with (a prefix of its
    /// hash), if any. A session replaced by one opened with the same token
    /// was replaced by its own client: see [`Kick::kick_by`].
    pub token_fp: Option<String>,
}

/// The part of a token's hash that names it in kicks (enough to tell two
/// tokens apart; the hash itself is not a secret, the token is).
pub fn token_fp(token_hash: &str) -> String {
    token_hash.chars().take(16).collect()
}

/// How long a login waits for the session it replaces to store its
/// positions; past that it goes on (at worst delivering some messages again).
pub const REPLACED_SESSION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A request, from the hub to a session, to disconnect: the user logged in
/// again, on this node or another (or on another node while Redis was
/// away), and the newer login wins.
///
/// One small allocation per session (a `Notify` and flags), where a
/// cancellation token and two shared flags took three.
#[derive(Debug, Clone, Default)]
pub struct Kick(Arc<KickState>);

#[derive(Debug, Default)]
struct KickState {
    /// Wakes the session once it is asked to go.
    asked: tokio::sync::Notify,
    /// [`KICKED`], [`BY_SAME_TOKEN`], [`REVOKED`].
    flags: AtomicU8,
}

/// The session has been asked to go.
const KICKED: u8 = 1;
/// The newer session was opened with this session's own resume token: the
/// same client, one of whose earlier attempts (say, a resume left waiting
/// in a stopped node's socket) was carried out late.
const BY_SAME_TOKEN: u8 = 2;
/// Another device of the user logged this device out (or it was forgotten
/// at the device limit): its token no longer works.
const REVOKED: u8 = 4;

impl Kick {
    /// Asks the session to go because a session opened with `fp` (a token
    /// fingerprint, if any) replaced it: when that is its own token, it is
    /// told so (errno 54 with `"resumed": true`), and a client that made no
    /// such attempt resumes again instead of giving up.
    pub fn kick_by(&self, own: Option<&str>, fp: Option<&str>) {
        let same = if own.is_some() && own == fp {
            BY_SAME_TOKEN
        } else {
            0
        };
        self.ask(same);
    }

    /// Asks the session to go because its device was logged out.
    pub fn revoke(&self) {
        self.ask(REVOKED);
    }

    fn ask(&self, why: u8) {
        self.0.flags.fetch_or(KICKED | why, Ordering::AcqRel);
        self.0.asked.notify_waiters();
    }

    /// Whether the session's device was logged out.
    pub fn revoked(&self) -> bool {
        self.0.flags.load(Ordering::Acquire) & REVOKED != 0
    }

    /// Whether the session was replaced by one opened with its own token.
    pub fn by_same_token(&self) -> bool {
        self.0.flags.load(Ordering::Acquire) & BY_SAME_TOKEN != 0
    }

    /// Resolves once the session has been asked to go.
    pub async fn kicked(&self) {
        let asked = self.0.asked.notified();
        tokio::pin!(asked);
        // Registered before the flags are read, so a kick in between still
        // wakes this wait.
        asked.as_mut().enable();
        if self.0.flags.load(Ordering::Acquire) & KICKED != 0 {
            return;
        }
        asked.await;
    }
}

/// Why the hub refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("presence service unavailable: {0}")]
    Unavailable(String),
}

/// A change to group membership made elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChange {
    /// This group's members changed.
    Group(GroupId),
    /// Changes may have been missed (the bus was down): forget them all.
    All,
}

/// Presence and delivery for the whole deployment.
#[async_trait]
pub trait Hub: Send + Sync + 'static {
    /// Marks `handle`'s device of `user` online with `handle` as its
    /// session. An older session of the same device, anywhere, is
    /// replaced: it is told why and closed. Other devices stay.
    async fn connect(&self, user: UserId, handle: SessionHandle) -> Result<(), HubError>;
    /// Marks the session's device offline, if `session_id` is still its
    /// session.
    async fn disconnect(&self, user: UserId, session_id: u64);
    /// Whether each of `users` is online (on any device), in one call
    /// however many there are.
    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>, HubError>;
    /// The devices of `user` online now, anywhere.
    async fn online_devices(&self, user: UserId) -> Result<Vec<Device>, HubError>;
    /// Closes the session of `device` of `user`, wherever it is, telling
    /// it that its device was logged out. False when it had none.
    async fn end_device(&self, user: UserId, device: &Device) -> Result<bool, HubError>;
    /// Hands a stored message to every online session of every receiver
    /// among `recipients` (the sender's own user may be among them: its
    /// other devices get the message), except the session that sent it
    /// ([`Delivery::origin`]).
    async fn deliver(&self, message: Arc<Delivery>, recipients: &[UserId]) -> Result<(), HubError>;
    /// Hands `frame` (a notice, stored nowhere) to every online session
    /// among `recipients`, on this node or another. Best effort: a notice
    /// that cannot go is dropped.
    async fn notify(&self, frame: bytes::Bytes, recipients: &[UserId]) {
        self.notify_except(frame, recipients, 0).await;
    }
    /// As [`Hub::notify`], skipping the local session `origin` (the one
    /// whose request it reports, which knows already).
    async fn notify_except(&self, frame: bytes::Bytes, recipients: &[UserId], origin: u64);
    /// Tells every node that a group's membership changed (so that cached
    /// member lists are dropped).
    async fn group_changed(&self, group: GroupId);
    /// Membership changes announced by other nodes, if there are others.
    fn group_changes(&self) -> Option<broadcast::Receiver<GroupChange>> {
        None
    }
    /// Whether presence and delivery across nodes work now (for `/readyz`):
    /// always on one node; in a cluster, whether this node holds its lease.
    async fn ready(&self) -> Result<(), HubError> {
        Ok(())
    }
    /// Marks every user of this node offline (graceful shutdown).
    async fn shutdown(&self);
}
