//! The in-process hub of a single node: a map from user to its sessions
//! here, one per device.
//!
//! A std `RwLock` rather than tokio's: it is never held across an await, and
//! delivery (the hot path) only reads.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;

use super::{Hub, HubError, SessionHandle};
use std::sync::Arc;

use crate::metrics::{METRICS, inc};
use crate::model::{Delivery, Device, Push, UserId};

/// One user's sessions on this node.
#[derive(Debug, Default)]
struct Local {
    /// One per device (almost always one in all).
    sessions: Vec<SessionHandle>,
    /// Some of the user's devices may be on other nodes: what is delivered
    /// here for the user goes to them too (the cluster hub sets it; it
    /// lasts until the user has no session left here).
    shared: bool,
}

/// Presence and delivery for one node.
#[derive(Debug, Default)]
pub struct LocalHub {
    users: RwLock<HashMap<UserId, Local>>,
}

impl LocalHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `message` for the sessions of `recipients` on this node
    /// (all but the one that sent it); returns the recipients that have
    /// none here, or whose devices may be elsewhere too.
    pub fn deliver_here(&self, message: &Arc<Delivery>, recipients: &[UserId]) -> Vec<UserId> {
        let users = self.read();
        let mut elsewhere = Vec::new();
        for user in recipients {
            match users.get(user) {
                Some(local) => {
                    for handle in &local.sessions {
                        if handle.session_id != message.origin {
                            push_to(*user, handle, Push::Message(message.clone()));
                        }
                    }
                    if local.shared {
                        elsewhere.push(*user);
                    }
                }
                None => elsewhere.push(*user),
            }
        }
        elsewhere
    }

    /// Queues a notice for the sessions of `recipients` on this node;
    /// returns the recipients that have none here (or may have some
    /// elsewhere too). A full queue drops it.
    pub fn notify_here(
        &self,
        frame: &bytes::Bytes,
        recipients: &[UserId],
        origin: u64,
    ) -> Vec<UserId> {
        let users = self.read();
        let mut elsewhere = Vec::new();
        let frame = std::sync::Arc::new(frame.clone());
        for user in recipients {
            match users.get(user) {
                Some(local) => {
                    for handle in local.sessions.iter().filter(|h| h.session_id != origin) {
                        let _ = handle.pushes.try_send(Push::Notice(frame.clone()));
                    }
                    if local.shared {
                        elsewhere.push(*user);
                    }
                }
                None => elsewhere.push(*user),
            }
        }
        elsewhere
    }

    /// Tells every session on this node to catch up from the store.
    pub fn resync_all(&self) {
        for (user, local) in self.read().iter() {
            for handle in &local.sessions {
                push_to(*user, handle, Push::Resync);
            }
        }
    }

    /// Tells one session to catch up from the store.
    pub fn resync_session(&self, user: UserId, session_id: u64) {
        if let Some(h) = self.find(user, |h| h.session_id == session_id) {
            push_to(user, &h, Push::Resync);
        }
    }

    /// Disconnects `user`'s session `session_id` on this node, if it is
    /// still a session here, for a session opened with token fingerprint
    /// `fp` elsewhere; `revoked`: its device was logged out instead.
    pub fn kick_session(&self, user: UserId, session_id: u64, fp: Option<&str>, revoked: bool) {
        if let Some(h) = self.find(user, |h| h.session_id == session_id) {
            if revoked {
                h.kick.revoke();
            } else {
                h.kick.kick_by(h.token_fp.as_deref(), fp);
            }
        }
    }

    /// Notes that `user` has devices on other nodes too, if it has a
    /// session here.
    pub fn mark_shared(&self, user: UserId) {
        if let Some(local) = self.write().get_mut(&user) {
            local.shared = true;
        }
    }

    /// The sessions on this node: user, device and session id.
    pub fn sessions(&self) -> Vec<(UserId, Device, u64)> {
        self.read()
            .iter()
            .flat_map(|(u, local)| {
                local
                    .sessions
                    .iter()
                    .map(|h| (*u, h.device.clone(), h.session_id))
            })
            .collect()
    }

    /// The sessions of `user` on this node: device and session id.
    pub fn sessions_of(&self, user: UserId) -> Vec<(Device, u64)> {
        self.read()
            .get(&user)
            .map(|l| {
                l.sessions
                    .iter()
                    .map(|h| (h.device.clone(), h.session_id))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The devices of `user` with a session on this node.
    pub fn devices_here(&self, user: UserId) -> Vec<Device> {
        self.read()
            .get(&user)
            .map(|l| l.sessions.iter().map(|h| h.device.clone()).collect())
            .unwrap_or_default()
    }

    /// Closes the session of `device` of `user` on this node as logged
    /// out; whether there was one.
    pub fn revoke_device(&self, user: UserId, device: &Device) -> bool {
        match self.find(user, |h| h.device == *device) {
            Some(h) => {
                h.kick.revoke();
                true
            }
            None => false,
        }
    }

    fn find(&self, user: UserId, pred: impl Fn(&SessionHandle) -> bool) -> Option<SessionHandle> {
        self.read()
            .get(&user)
            .and_then(|l| l.sessions.iter().find(|h| pred(h)).cloned())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, Local>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert or remove), so poison is ignored.
        self.users.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, Local>> {
        self.users.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Hub for LocalHub {
    async fn connect(&self, user: UserId, handle: SessionHandle) -> Result<(), HubError> {
        // The newer login of a device wins: an older session of the same
        // device (a client whose network died silently, say) is told why
        // and closed. The user's other devices stay.
        let fp = handle.token_fp.clone();
        let old = {
            let mut users = self.write();
            let local = users.entry(user).or_default();
            match local
                .sessions
                .iter_mut()
                .find(|h| h.device == handle.device)
            {
                Some(slot) => Some(std::mem::replace(slot, handle)),
                None => {
                    // Most users have one device: room for exactly one
                    // (a push into an empty Vec would make room for four).
                    local.sessions.reserve_exact(1);
                    local.sessions.push(handle);
                    None
                }
            }
        };
        if let Some(old) = old {
            tracing::debug!(%user, session = old.session_id, "replaced on this node");
            old.kick.kick_by(old.token_fp.as_deref(), fp.as_deref());
            let _ = tokio::time::timeout(super::REPLACED_SESSION_WAIT, old.pushes.ended()).await;
        }
        Ok(())
    }

    async fn disconnect(&self, user: UserId, session_id: u64) {
        let mut users = self.write();
        if let Some(local) = users.get_mut(&user) {
            local.sessions.retain(|h| h.session_id != session_id);
            if local.sessions.is_empty() {
                users.remove(&user);
            }
        }
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>, HubError> {
        let sessions = self.read();
        Ok(users.iter().map(|u| sessions.contains_key(u)).collect())
    }

    async fn online_devices(&self, user: UserId) -> Result<Vec<Device>, HubError> {
        Ok(self.devices_here(user))
    }

    async fn end_device(&self, user: UserId, device: &Device) -> Result<bool, HubError> {
        Ok(self.revoke_device(user, device))
    }

    async fn deliver(&self, message: Arc<Delivery>, recipients: &[UserId]) -> Result<(), HubError> {
        self.deliver_here(&message, recipients);
        Ok(())
    }

    async fn notify_except(&self, frame: bytes::Bytes, recipients: &[UserId], origin: u64) {
        self.notify_here(&frame, recipients, origin);
    }

    async fn group_changed(&self, _group: crate::model::GroupId) {}

    async fn shutdown(&self) {
        self.write().clear();
    }
}

fn push_to(user: UserId, handle: &SessionHandle, push: Push) {
    match handle.pushes.try_send(push) {
        Ok(()) => {}
        Err(super::queue::SendError::Full(_)) => {
            // Never block one sender on one slow reader, and never punish
            // the reader for a flood aimed at it: the message is stored, and
            // the session reads what it missed from the store once it has
            // written what is queued.
            if handle.pushes.mark_lagging() {
                tracing::debug!(
                    %user,
                    "push queue full; the session catches up from the store"
                );
                inc(&METRICS.pushes_dropped);
            }
        }
        Err(super::queue::SendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::queue::{PushReceiver, push_queue};
    use crate::model::Conversation;
    use crate::model::{GroupId, Seq, UserId};

    #[tokio::test]
    async fn a_full_queue_marks_the_session_lagging_and_never_kicks_it() {
        let hub = LocalHub::new();
        let (tx, mut rx) = push_queue(2);
        let handle = SessionHandle {
            session_id: 1,
            device: Device::classic(),
            pushes: tx,
            kick: super::super::Kick::default(),
            token_fp: None,
        };
        let kick = handle.kick.clone();
        hub.connect(UserId(7), handle).await.expect("connect");
        for seq in 1..=5 {
            let d = Arc::new(Delivery {
                conv: Conversation::Group(GroupId(1)),
                seq: Seq(seq),
                frame: bytes::Bytes::new(),
                arrived: std::time::Instant::now(),
                remote: false,
                origin: 0,
                sender: UserId(1),
                sender_device: Device::classic(),
            });
            hub.deliver(d, &[UserId(7)]).await.expect("deliver");
        }
        assert!(rx.take_lagging(), "three pushes were dropped");
        assert!(!rx.take_lagging(), "told once");
        let kicked = tokio::time::timeout(std::time::Duration::from_millis(20), kick.kicked());
        assert!(kicked.await.is_err(), "the flooded session stays");
        let mut queued = 0;
        while rx.try_recv().is_some() {
            queued += 1;
        }
        assert_eq!(queued, 2, "the queue holds what fits, nothing more");
    }

    fn handle(session_id: u64, device: &str) -> (SessionHandle, PushReceiver) {
        let (tx, rx) = push_queue(8);
        let handle = SessionHandle {
            session_id,
            device: Device::parse(Some(device)).expect("device"),
            pushes: tx,
            kick: super::super::Kick::default(),
            token_fp: None,
        };
        (handle, rx)
    }

    #[tokio::test]
    async fn a_users_devices_each_get_its_messages_but_the_one_that_sent_it() {
        let hub = LocalHub::new();
        let me = UserId(7);
        let (phone, mut phone_rx) = handle(1, "phone");
        let (laptop, mut laptop_rx) = handle(2, "laptop");
        hub.connect(me, phone).await.expect("connect");
        hub.connect(me, laptop.clone()).await.expect("connect");
        let d = Arc::new(Delivery {
            conv: Conversation::Group(GroupId(1)),
            seq: Seq(1),
            frame: bytes::Bytes::new(),
            arrived: std::time::Instant::now(),
            remote: false,
            origin: 1,
            sender: me,
            sender_device: Device::parse(Some("phone")).expect("device"),
        });
        assert!(
            hub.deliver_here(&d, &[me]).is_empty(),
            "all of them are here"
        );
        assert!(laptop_rx.try_recv().is_some(), "the other device gets it");
        assert!(phone_rx.try_recv().is_none(), "the sender does not");
        // the same device again replaces only itself
        let (laptop2, _rx) = handle(3, "laptop");
        drop(laptop_rx); // as if it had stored its positions at once
        hub.connect(me, laptop2).await.expect("connect");
        let kicked =
            tokio::time::timeout(std::time::Duration::from_millis(50), laptop.kick.kicked());
        assert!(kicked.await.is_ok(), "the older laptop session goes");
        let mut devices = hub.devices_here(me);
        devices.sort();
        assert_eq!(
            devices.iter().map(Device::as_str).collect::<Vec<_>>(),
            ["laptop", "phone"]
        );
        // devices on other nodes too: delivered here and routed there
        hub.mark_shared(me);
        assert_eq!(hub.deliver_here(&d, &[me]), vec![me]);
        hub.disconnect(me, 1).await;
        hub.disconnect(me, 3).await;
        assert_eq!(hub.online(&[me]).await.expect("online"), vec![false]);
    }
}
