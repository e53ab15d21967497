//! The in-process hub of a single node: a map from user to session.
//!
//! A std `RwLock` rather than tokio's: it is never held across an await, and
//! delivery (the hot path) only reads.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use tokio::sync::mpsc::error::TrySendError;

use super::{Hub, HubError, SessionHandle};
use crate::model::{Push, UserId};

/// Presence and delivery for one node.
#[derive(Debug, Default)]
pub struct LocalHub {
    sessions: RwLock<HashMap<UserId, SessionHandle>>,
}

impl LocalHub {
    pub fn new() -> Self {
        Self::default()
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
        let mut sessions = self.write();
        if sessions.contains_key(&user) {
            return Err(HubError::AlreadyOnline);
        }
        sessions.insert(user, handle);
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

    async fn deliver(&self, push: Push, recipients: &[UserId]) -> Result<(), HubError> {
        let sessions = self.read();
        for user in recipients {
            let Some(handle) = sessions.get(user) else {
                continue;
            };
            match handle.pushes.try_send(push.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    // Never block one sender on one slow reader. The message
                    // is stored; the reader gets it at its next login.
                    tracing::warn!(user, "push queue full, disconnecting slow session");
                    handle.kick.cancel();
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        Ok(())
    }

    async fn shutdown(&self) {
        self.write().clear();
    }
}
