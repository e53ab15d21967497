//! BLOCK (27), UNBLOCK (28) and SETTINGS (29): who may reach a user.
//!
//! A block is one-sided to make and ends the friendship; while it lasts
//! neither user messages the other one to one (errno 66; nothing is
//! stored), befriends the other, sees the other's presence, or gets the
//! other's typing and read receipts. A user may also take one-to-one
//! messages from friends only. Group messages are not filtered: the group
//! is the members' shared room (a client may hide a blocked member's
//! messages).
//!
//! Sending checks the receiver's rules once per session and conversation
//! every [`REACH_TTL`], so a busy conversation costs no store read per
//! message. A block voids every answer remembered on its node at once, and
//! tells the nodes of the blocked user's sessions to do the same (a notice
//! no client sees); the TTL bounds it should that notice be lost.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::requests::Handler;
use super::{LoggedIn, Service, Session};
use crate::model::UserId;
use crate::protocol::replies::{BlockChanged, SettingsNow};
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail};
use crate::store::Reach;

/// How long a session trusts a receiver's answer to "may I message you".
pub(super) const REACH_TTL: Duration = Duration::from_secs(2);

/// Conversations whose answer one session remembers at most.
const REACH_TRACKED: usize = 4096;

impl Handler for wire::Block {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<BlockChanged, Fail> {
        svc.block(s.me_mut()?, self.userid).await
    }
}

impl Handler for wire::Unblock {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<BlockChanged, Fail> {
        let me = s.me_mut()?;
        if !svc.store.unblock(me.id, self.userid).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("you do not block user {}", self.userid),
            ));
        }
        me.reach.remove(&self.userid);
        Ok(BlockChanged {
            userid: self.userid,
        })
    }
}

impl Handler for wire::Settings {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<SettingsNow, Fail> {
        let me = s.me_mut()?;
        if let Some(on) = self.only_friends {
            svc.store.set_only_friends(me.id, on).await?;
        }
        let now = svc.store.blocks(me.id).await?;
        Ok(SettingsNow {
            only_friends: now.only_friends,
        })
    }
}

impl Service {
    async fn block(&self, me: &mut LoggedIn, other: UserId) -> Result<BlockChanged, Fail> {
        if other == me.id {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "you cannot block yourself",
            ));
        }
        if self.store.block(me.id, other).await? {
            tracing::info!(user = %me.id, blocked = %other, "user blocked");
        }
        // From now on neither hears of the other's comings and goings, and
        // the other's sessions ask again before their next message.
        me.contacts.retain(|c| *c != other);
        me.reach.remove(&other);
        self.reach_changed();
        self.hub
            .notify(crate::protocol::reach_frame(me.id), &[other])
            .await;
        Ok(BlockChanged { userid: other })
    }

    /// Refuses a one-to-one message (or, with `friendship`, a friendship)
    /// from `me` to `to` that the rules of either forbid.
    pub(super) async fn may_reach(
        &self,
        me: &mut LoggedIn,
        to: UserId,
        friendship: bool,
    ) -> Result<(), Fail> {
        let generation = self.reach_generation.load(Ordering::Acquire);
        if !friendship
            && me
                .reach
                .get(&to)
                .is_some_and(|(at, g)| *g == generation && at.elapsed() < REACH_TTL)
        {
            return Ok(());
        }
        let reach = self.store.may_reach(me.id, to).await?;
        let refuse = |msg: &str| Err(Fail::new(ErrCode::Blocked, msg));
        match reach {
            Reach::Yes => {}
            Reach::NoSuchUser => {
                return Err(Fail::new(ErrCode::NotFound, format!("user {to} not found")));
            }
            Reach::FriendsOnly if friendship => {}
            Reach::BlockedByThem => return refuse("this user does not take messages from you"),
            Reach::BlockedByYou => return refuse("you block this user; unblock them first"),
            Reach::FriendsOnly => {
                return refuse("this user takes messages from friends only");
            }
        }
        if !friendship {
            if me.reach.len() >= REACH_TRACKED {
                me.reach.clear();
            }
            me.reach.insert(to, (Instant::now(), generation));
        }
        Ok(())
    }

    /// A block was made here or heard of: every remembered answer is void.
    pub(super) fn reach_changed(&self) {
        self.reach_generation.fetch_add(1, Ordering::AcqRel);
    }
}
