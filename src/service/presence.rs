//! Presence: who hears when a user comes online or goes offline.
//!
//! PRESENCE (msgid 19) is a push stored nowhere and sent best effort: to
//! the user's friends and the members of its small groups, at login and
//! when its last session ends (a takeover by a newer login says nothing).
//! It never holds up a login or a logout for long, even with Redis or the
//! database down.

use std::collections::HashSet;

use super::Service;
use crate::model::UserId;

/// How long the end of a session waits at most to tell contacts.
const WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Service {
    /// Tells `contacts` (those online get it) that `user` came online or
    /// went offline: PRESENCE (msgid 19), stored nowhere. The original
    /// client ignores it. Callers leave out users blocked either way (a
    /// login has them at hand, a logout reads them with the contacts, and
    /// befriending is refused between them).
    pub(super) async fn announce(
        &self,
        user: UserId,
        name: &str,
        online: bool,
        contacts: &[UserId],
    ) {
        if contacts.is_empty() {
            return;
        }
        let frame = serde_json::json!({
            "msgid": crate::protocol::msgid::PRESENCE,
            "id": user,
            "name": name,
            "state": if online { "online" } else { "offline" },
        });
        let Ok(frame) = serde_json::to_vec(&frame) else {
            return;
        };
        self.hub.notify(bytes::Bytes::from(frame), contacts).await;
    }

    /// Tells `user`'s contacts that it went offline, unless a newer
    /// session replaced this one (then it is still online); `known` are
    /// the contacts from login, used if they cannot be read again. Gives up
    /// after a moment: the end of a session is never held up for long.
    pub(super) async fn announce_offline(&self, user: UserId, name: &str, known: &[UserId]) {
        let _ = tokio::time::timeout(WAIT, async {
            let Ok(on) = self.hub.online(&[user]).await else {
                return;
            };
            if on.first() != Some(&false) {
                return;
            }
            // Read again: friendships, groups and blocks may have changed
            // since login, made by others too.
            let read = tokio::try_join!(
                self.store.friends(user),
                self.store.user_groups(user),
                self.store.blocks(user)
            );
            let contacts = match read {
                Ok((friends, groups, blocks)) => {
                    let mut c = contacts_of(user, &friends, &groups);
                    c.retain(|id| !blocks.between(*id));
                    c
                }
                Err(_) => known.to_vec(),
            };
            self.announce(user, name, false, &contacts).await;
        })
        .await;
    }
}

/// Groups up to this size share their members' comings and goings.
const PRESENCE_GROUP_MAX: usize = 200;
/// Contacts one user's presence is told to at most.
const PRESENCE_CONTACTS_MAX: usize = 1000;

/// Who is told when `me` comes and goes: friends first, then members of
/// groups small enough that a login is not a broadcast to thousands.
pub(super) fn contacts_of(
    me: UserId,
    friends: &[crate::model::UserSummary],
    groups: &[crate::model::GroupInfo],
) -> Vec<UserId> {
    let mut seen = HashSet::from([me]);
    let small = groups
        .iter()
        .filter(|g| g.members.len() <= PRESENCE_GROUP_MAX)
        .flat_map(|g| g.members.iter().map(|m| m.id));
    friends
        .iter()
        .map(|f| f.id)
        .chain(small)
        .filter(|id| seen.insert(*id))
        .take(PRESENCE_CONTACTS_MAX)
        .collect()
}
