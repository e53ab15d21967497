//! The in-process hub of a single node: a map from user to session.
//!
//! A std `RwLock` rather than tokio's: it is never held across an await, and
//! delivery (the hot path) only reads.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use tokio::sync::mpsc::error::TrySendError;

use super::{Hub, HubError, SessionHandle};
use std::sync::Arc;

use crate::metrics::{METRICS, inc};
use crate::model::{Delivery, Push, UserId};
use std::sync::atomic::Ordering;

/// Presence and delivery for one node.
#[derive(Debug, Default)]
pub struct LocalHub {
    sessions: RwLock<HashMap<UserId, SessionHandle>>,
}

impl LocalHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `message` for those of `recipients` with a session on this
    /// node; returns the others.
    pub fn deliver_here(&self, message: &Arc<Delivery>, recipients: &[UserId]) -> Vec<UserId> {
        let sessions = self.read();
        let mut elsewhere = Vec::new();
        for user in recipients {
            match sessions.get(user) {
                Some(handle) => push_to(*user, handle, Push::Message(message.clone())),
                None => elsewhere.push(*user),
            }
        }
        elsewhere
    }

    /// Queues a notice for the sessions of `recipients` on this node;
    /// returns the recipients that have none here. A full queue drops it.
    pub fn notify_here(&self, frame: &bytes::Bytes, recipients: &[UserId]) -> Vec<UserId> {
        let sessions = self.read();
        let mut elsewhere = Vec::new();
        for user in recipients {
            match sessions.get(user) {
                Some(handle) => {
                    let _ = handle.pushes.try_send(Push::Notice(frame.clone()));
                }
                None => elsewhere.push(*user),
            }
        }
        elsewhere
    }

    /// Tells every session on this node to catch up from the store.
    pub fn resync_all(&self) {
        for (user, handle) in self.read().iter() {
            push_to(*user, handle, Push::Resync);
        }
    }

    /// Disconnects `user`'s session on this node, if any.
    pub fn kick(&self, user: UserId) {
        if let Some(h) = self.read().get(&user) {
            h.kick.kick();
        }
    }

    /// Disconnects `user`'s session `session_id` on this node, if it is
    /// still the user's session here, for a session opened with token
    /// fingerprint `fp` elsewhere.
    pub fn kick_session(&self, user: UserId, session_id: u64, fp: Option<&str>) {
        if let Some(h) = self
            .read()
            .get(&user)
            .filter(|h| h.session_id == session_id)
        {
            h.kick.kick_by(h.token_fp.as_deref(), fp);
        }
    }

    /// The users with a session on this node and their session ids.
    pub fn sessions(&self) -> Vec<(UserId, u64)> {
        self.read()
            .iter()
            .map(|(u, h)| (*u, h.session_id))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, SessionHandle>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert or remove), so poison is ignored.
        self.sessions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, SessionHandle>> {
        self.sessions.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Hub for LocalHub {
    async fn connect(&self, user: UserId, handle: SessionHandle) -> Result<(), HubError> {
        // The newer login wins: an older session of the user (a client
        // whose network died silently, say) is told why and closed.
        let fp = handle.token_fp.clone();
        let old = self.write().insert(user, handle);
        if let Some(old) = old {
            old.kick.kick_by(old.token_fp.as_deref(), fp.as_deref());
            let _ = tokio::time::timeout(super::REPLACED_SESSION_WAIT, old.ended.cancelled()).await;
        }
        Ok(())
    }

    async fn disconnect(&self, user: UserId, session_id: u64) {
        let mut sessions = self.write();
        if sessions
            .get(&user)
            .is_some_and(|h| h.session_id == session_id)
        {
            sessions.remove(&user);
        }
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>, HubError> {
        let sessions = self.read();
        Ok(users.iter().map(|u| sessions.contains_key(u)).collect())
    }

    async fn deliver(&self, message: Arc<Delivery>, recipients: &[UserId]) -> Result<(), HubError> {
        self.deliver_here(&message, recipients);
        Ok(())
    }

    async fn notify(&self, frame: bytes::Bytes, recipients: &[UserId]) {
        self.notify_here(&frame, recipients);
    }

    async fn group_changed(&self, _group: crate::model::GroupId) {}

    async fn shutdown(&self) {
        self.write().clear();
    }
}

fn push_to(user: UserId, handle: &SessionHandle, push: Push) {
    match handle.pushes.try_send(push) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            // Never block one sender on one slow reader, and never punish
            // the reader for a flood aimed at it: the message is stored, and
            // the session reads what it missed from the store once it has
            // written what is queued.
            if !handle.lagging.swap(true, Ordering::Relaxed) {
                tracing::debug!(
                    %user,
                    "push queue full; the session catches up from the store"
                );
                inc(&METRICS.pushes_dropped);
            }
        }
        Err(TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conversation;
    use crate::model::{GroupId, Seq, UserId};
    use std::sync::atomic::AtomicBool;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn a_full_queue_marks_the_session_lagging_and_never_kicks_it() {
        let hub = LocalHub::new();
        let (tx, mut rx) = mpsc::channel(2);
        let handle = SessionHandle {
            session_id: 1,
            pushes: tx,
            lagging: Arc::new(AtomicBool::new(false)),
            kick: super::super::Kick::default(),
            ended: tokio_util::sync::CancellationToken::new(),
            token_fp: None,
        };
        let (lagging, kick) = (handle.lagging.clone(), handle.kick.clone());
        hub.connect(UserId(7), handle).await.expect("connect");
        for seq in 1..=5 {
            let d = Arc::new(Delivery {
                conv: Conversation::Group(GroupId(1)),
                seq: Seq(seq),
                frame: bytes::Bytes::new(),
                arrived: std::time::Instant::now(),
                remote: false,
            });
            hub.deliver(d, &[UserId(7)]).await.expect("deliver");
        }
        assert!(lagging.load(Ordering::Relaxed), "three pushes were dropped");
        let kicked = tokio::time::timeout(std::time::Duration::from_millis(20), kick.kicked());
        assert!(kicked.await.is_err(), "the flooded session stays");
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 2, "the queue holds what fits, nothing more");
    }
}
