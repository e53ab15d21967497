//! The business logic: one handler per message type, no sockets.
//!
//! A connection owns a [`Session`] and feeds it frames
//! ([`Service::handle_frame`]) and pushes ([`Service::handle_push`]); both
//! return the frames to write back. Identity lives in the session: once a
//! user has logged in, every request acts as that user, and a request whose
//! `id` names anyone else is refused.
//!
//! Handlers live by message type (`account`, `friends`, `groups`, `chat`);
//! what a session delivers, and when it stores how far it got, lives in
//! `session` (with its positions in `delivery`).

mod account;
mod admission;
mod blocking;
mod changes;
mod chat;
pub mod delivery;
mod friends;
mod group_admin;
mod groups;
pub mod guard;
mod presence;
mod receipts;
mod requests;
mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, PasswordHasherPool};
use crate::config::Config;
use crate::hub::{GroupChange, Hub, HubError};
use crate::metrics::{METRICS, inc};
use crate::protocol::{self, ErrCode, Fail, Reply, msgid};
use crate::store::{SharedStore, StoreError};
use groups::GroupCache;
use requests::{AsUser, Request};
use session::LoggedIn;
pub use session::Session;

/// Shared state of all sessions of one node.
pub struct Service {
    store: SharedStore,
    hub: Arc<dyn Hub>,
    hasher: PasswordHasherPool,
    config: Arc<Config>,
    groups: Arc<GroupCache>,
    /// Bounds how fast logins and resumes are let in.
    admission: admission::Admission,
    /// Login throttling and registration limits.
    guard: guard::Guard,
    next_session: AtomicU64,
    /// Bumped whenever a block is made on this node or heard of: every
    /// session's remembered "may I message you" answers are void (see
    /// `blocking`).
    reach_generation: AtomicU64,
    /// Background cursor writes and the group-changes listener; shutdown
    /// waits for them before closing the store.
    tasks: TaskTracker,
    /// Ends the listeners among `tasks` at shutdown.
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Fail::new(ErrCode::NotFound, format!("{what} not found")),
            StoreError::Conflict(what) => Fail::new(ErrCode::AlreadyExists, what),
            StoreError::Unavailable(detail) => {
                tracing::error!(%detail, "storage error");
                Fail::new(ErrCode::Unavailable, "storage unavailable, try again later")
            }
        }
    }
}

impl From<HubError> for Fail {
    fn from(e: HubError) -> Self {
        match e {
            HubError::Unavailable(detail) => {
                tracing::error!(%detail, "presence error");
                Fail::new(
                    ErrCode::Unavailable,
                    "presence service unavailable, try again later",
                )
            }
        }
    }
}

impl From<AuthError> for Fail {
    fn from(e: AuthError) -> Self {
        tracing::error!(error = %e, "password hashing failed");
        Fail::new(ErrCode::Unavailable, "server busy, try again later")
    }
}

impl Service {
    /// A service over `store` and `hub` with `config`'s limits.
    pub fn new(
        store: SharedStore,
        hub: Arc<dyn Hub>,
        config: Arc<Config>,
    ) -> Result<Self, AuthError> {
        let groups = Arc::new(GroupCache::default());
        let tasks = TaskTracker::new();
        let stop = tokio_util::sync::CancellationToken::new();
        if let Some(mut changes) = hub.group_changes() {
            // Another node changed a group: drop our copy of its members.
            let (groups, stop) = (groups.clone(), stop.clone());
            tasks.spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let change = tokio::select! {
                        _ = stop.cancelled() => break,
                        change = changes.recv() => change,
                    };
                    match change {
                        Ok(GroupChange::Group(g)) => groups.invalidate(g),
                        Ok(GroupChange::All) => groups.clear(),
                        Err(RecvError::Lagged(_)) => groups.clear(),
                        Err(RecvError::Closed) => break,
                    }
                }
            });
        }
        let admission = admission::Admission::new(config.session_rate, config.session_burst);
        let guard = guard::Guard::new(&config.limits);
        Ok(Service {
            hasher: PasswordHasherPool::new(config.max_concurrent_hashes, config.hash_niceness)?,
            store,
            hub,
            config,
            groups,
            admission,
            guard,
            next_session: AtomicU64::new(1),
            reach_generation: AtomicU64::new(0),
            tasks,
            stop,
        })
    }

    /// The limits this service enforces.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handles one frame from the client; returns the frames to send back
    /// (the reply first, then any notice). Every frame gets exactly one
    /// reply, except an ACK that succeeds, and, for the original client,
    /// requests the original server never answered.
    pub async fn handle_frame(&self, s: &mut Session, frame: &[u8]) -> Vec<Bytes> {
        let parsed = protocol::parse(frame);
        if parsed.msgid == msgid::PING {
            s.heartbeats = true;
        }
        // Acknowledgements and heartbeats cost bytes but no request: a user
        // flooded by someone else must be able to acknowledge it all.
        let request = !matches!(parsed.msgid, msgid::ACK | msgid::PING);
        let (delay, tell) = s.budget.charge(frame.len(), request);
        s.delay = delay;
        let mut out = Vec::with_capacity(2);
        if tell {
            inc(&METRICS.limited);
            let fail = Fail::new(
                ErrCode::SlowDown,
                "you are sending faster than this server allows; your requests are being delayed",
            );
            out.push(Reply::fail(msgid::ERROR, &fail).to_bytes());
        }
        let decoded = parsed
            .body
            .and_then(|body| requests::decode(parsed.msgid, body));
        // A frame that names no request is answered as msgid 100.
        let ack = match &decoded {
            Err(f) if f.code == ErrCode::UnknownMsgid => msgid::ERROR,
            _ if parsed.msgid == msgid::ERROR => msgid::ERROR,
            _ => msgid::ack_for(parsed.msgid),
        };
        if s.classic
            && (parsed.reqid.is_some() || decoded.as_ref().is_ok_and(Request::declares_extension))
        {
            s.classic = false;
        }
        if s.user.is_none() && decoded.as_ref().is_ok_and(Request::opens_account) {
            s.useful = true;
        }
        // An acknowledgement is itself an answer: replying to every one
        // would double the traffic it saves. The original client gets no
        // reply where the original server sent none: one it cannot use
        // could share a read with a message and crash it.
        let silent_ok = matches!(
            decoded,
            Ok(Request::AsUser(AsUser::Ack(_) | AsUser::Typing(_)))
        ) || (s.classic && unanswered_in_classic(parsed.msgid));
        let result = match decoded {
            Err(fail) => Err(fail),
            Ok(Request::Open(r)) => r.handle(self, s, ack).await,
            Ok(Request::AsUser(r)) => {
                // Everything else acts as the logged-in user, and only as
                // them.
                match s
                    .me_mut()
                    .and_then(|me| protocol::check_claim(parsed.id.as_ref(), me.id))
                {
                    Ok(()) => r.handle(self, s, ack).await,
                    Err(fail) => Err(fail),
                }
            }
        };
        let reply = match result {
            Ok(_) if silent_ok => None,
            Ok(reply) => Some(reply),
            Err(fail) => {
                tracing::debug!(session = s.id, msgid = parsed.msgid, errno = fail.code as i64, errmsg = %fail.msg, "request refused");
                if s.user.is_none() {
                    s.refused = s.refused.saturating_add(1);
                }
                Some(Reply::fail(ack, &fail))
            }
        };
        if s.user.is_some() {
            // A fresh start for the login deadline's bookkeeping after a
            // later logout.
            (s.useful, s.refused) = (false, 0);
        }
        if let Some(reply) = reply {
            out.insert(0, reply.reqid(parsed.reqid.as_ref()).to_bytes());
        }
        out.append(&mut s.after_reply);
        out
    }

    /// Lets a login or resume in, or says when to retry (errno 56). (A
    /// connection already logged in is refused by the handler itself, at
    /// no cost to the budget.)
    fn may_open_session(&self, s: &Session) -> Result<(), Fail> {
        if s.user.is_some() {
            return Ok(());
        }
        self.admission.take().map_err(|wait| {
            inc(&METRICS.login_failures);
            Fail::retry_after(ErrCode::TooManyLogins, "too many logins right now", wait)
        })
    }

    /// Waits for background writes; call before closing the store.
    pub async fn drain(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Requests the original server never answered: a classic session gets no
/// reply to them when they succeed (a refusal is still answered, with a
/// msgid the original client ignores).
fn unanswered_in_classic(msgid: i64) -> bool {
    matches!(
        msgid,
        msgid::LOGOUT
            | msgid::ONE_CHAT
            | msgid::ADD_FRIEND
            | msgid::CREATE_GROUP
            | msgid::ADD_GROUP
            | msgid::GROUP_CHAT
    )
}

/// Counts a login or resume, and the session it opened.
fn counted<T>(result: Result<T, Fail>) -> Result<T, Fail> {
    if result.is_ok() {
        inc(&METRICS.logins);
        METRICS.sessions_online.inc();
    } else {
        inc(&METRICS.login_failures);
    }
    result
}

fn invalid(e: crate::model::Invalid) -> Fail {
    Fail::new(ErrCode::InvalidValue, e.to_string())
}
