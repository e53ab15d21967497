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
mod chat;
pub mod delivery;
mod friends;
mod groups;
pub mod guard;
mod presence;
mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, PasswordHasherPool};
use crate::config::Config;
use crate::hub::{GroupChange, Hub, HubError};
use crate::metrics::{METRICS, inc};
use crate::model::UserId;
use crate::protocol::{self, ErrCode, Fail, Reply, Request, msgid, replies};
use crate::store::{SharedStore, StoreError};
use groups::GroupCache;
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
            hasher: PasswordHasherPool::new(config.max_concurrent_hashes)?,
            store,
            hub,
            config,
            groups,
            admission,
            guard,
            next_session: AtomicU64::new(1),
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
    /// reply, except an ACK that succeeds.
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
        let ack = if parsed.msgid == msgid::ERROR {
            msgid::ERROR
        } else {
            msgid::ack_for(parsed.msgid)
        };
        if s.classic && declares_extension(&parsed) {
            s.classic = false;
        }
        if s.user.is_none()
            && matches!(
                parsed.request,
                Ok(Request::Register { .. } | Request::Login { .. } | Request::Resume { .. })
            )
        {
            s.useful = true;
        }
        // An acknowledgement is itself an answer: replying to every one
        // would double the traffic it saves. The original client gets no
        // reply where the original server sent none: one it cannot use
        // could share a read with a message and crash it.
        let silent_ok = matches!(parsed.request, Ok(Request::Ack { .. }))
            || (s.classic && unanswered_in_classic(parsed.msgid));
        let result = match parsed.request {
            Err(fail) => Err(fail),
            Ok(req) => self.dispatch(s, ack, req, parsed.claimed_id).await,
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

    async fn dispatch(
        &self,
        s: &mut Session,
        ack: i64,
        req: Request,
        claimed_id: Option<UserId>,
    ) -> Result<Reply, Fail> {
        // Requests that need no login, and LOGOUT, which ends the session.
        match req {
            Request::Register { name, password } => {
                return answer(ack, self.register(s.peer(), &name, &password).await);
            }
            Request::Login { id, password, acks } => {
                return match self.admit(s, ack) {
                    Err(later) => Ok(later),
                    Ok(()) => answer(ack, counted(self.login(s, id, password, acks).await)),
                };
            }
            Request::Resume { token, acks } => {
                return match self.admit(s, ack) {
                    Err(later) => Ok(later),
                    Ok(()) => answer(ack, counted(self.resume(s, &token, acks).await)),
                };
            }
            Request::ServerInfo => {
                let info = replies::ServerInfo {
                    node: self.config.node_id.clone(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    client: s.ip.map(|ip| ip.to_canonical().to_string()),
                };
                return answer(ack, Ok(info));
            }
            Request::Ping => {
                let ts = crate::store::now_ms();
                return answer(ack, Ok(replies::Pong { ts }));
            }
            _ => {}
        }
        // Everything else acts as the logged-in user, and only as them.
        let me = s.me_mut()?;
        if let Some(claimed) = claimed_id.filter(|c| *c != me.id) {
            return Err(Fail::new(
                ErrCode::IdentityMismatch,
                format!("id {claimed} is not the logged-in user {}", me.id),
            ));
        }
        match req {
            Request::Logout => answer(ack, self.logout(s).await),
            // Answered by handle_frame (only when refused).
            Request::Ack { acks } => self.ack(me, &acks).map(|()| Reply::ok(ack)),
            Request::AddFriend { friendid } => answer(ack, self.add_friend(me, friendid).await),
            Request::DelFriend { friendid } => answer(ack, self.del_friend(me, friendid).await),
            Request::ShowFriendList => answer(ack, self.show_friends(me).await),
            Request::CreateGroup {
                groupname,
                groupdesc,
            } => answer(ack, self.create_group(me, &groupname, &groupdesc).await),
            Request::AddGroup { groupid } => answer(ack, self.join_group(me, groupid).await),
            Request::DelGroup { groupid } => answer(ack, self.leave_group(me, groupid).await),
            Request::OneChat { toid, msg, cmid } => {
                answer(ack, self.one_chat(me, toid, msg, cmid).await)
            }
            Request::GroupChat { groupid, msg, cmid } => {
                answer(ack, self.group_chat(me, groupid, msg, cmid).await)
            }
            Request::History {
                target,
                before,
                limit,
            } => answer(ack, self.history(me, target, before, limit).await),
            // Answered above; listed so that a new request must be placed.
            Request::Register { .. }
            | Request::Login { .. }
            | Request::Resume { .. }
            | Request::ServerInfo
            | Request::Ping => Err(Fail::new(ErrCode::BadRequest, "handled above")),
        }
    }

    /// Lets a login or resume in, or gives the errno 56 reply saying when
    /// to retry. (A connection already logged in is refused by the handler
    /// itself, at no cost to the budget.)
    fn admit(&self, s: &Session, ack: i64) -> Result<(), Reply> {
        if s.user.is_some() {
            return Ok(());
        }
        self.admission.admit().map_err(|wait| {
            inc(&METRICS.login_failures);
            let fail = Fail::retry_after(ErrCode::TooManyLogins, "too many logins right now", wait);
            Reply::fail(ack, &fail)
        })
    }

    /// Waits for background writes; call before closing the store.
    pub async fn drain(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Whether a frame declares one of our extensions, so that its sender is
/// not the original client: a `reqid`, a `cmid`, `acks` at login, or one of
/// the requests the original never sent.
fn declares_extension(parsed: &protocol::Parsed) -> bool {
    parsed.reqid.is_some()
        || matches!(
            parsed.msgid,
            msgid::HISTORY | msgid::SERVER_INFO | msgid::PING | msgid::RESUME | msgid::ACK
        )
        || matches!(
            parsed.request,
            Ok(Request::Login { acks: true, .. }
                | Request::OneChat { cmid: Some(_), .. }
                | Request::GroupChat { cmid: Some(_), .. })
        )
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

/// A handler's typed reply in its envelope, the one place that adds it
/// (`reqid` follows in [`Service::handle_frame`]).
fn answer<T: serde::Serialize>(ack: i64, result: Result<T, Fail>) -> Result<Reply, Fail> {
    result.map(|body| Reply::ok_with(ack, &body))
}

/// Counts a login or resume, and the session it opened.
fn counted<T>(result: Result<T, Fail>) -> Result<T, Fail> {
    if result.is_ok() {
        inc(&METRICS.logins);
        METRICS.sessions_online.fetch_add(1, Ordering::Relaxed);
    } else {
        inc(&METRICS.login_failures);
    }
    result
}

fn invalid(e: crate::model::Invalid) -> Fail {
    Fail::new(ErrCode::InvalidValue, e.to_string())
}
