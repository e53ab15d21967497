//! ADD_FRIEND_MSG, DEL_FRIEND_MSG and SHOW_FRIEND_LIST_MSG. Friendship is
//! mutual: adding or deleting changes both users' lists.

use super::requests::Handler;
use super::{LoggedIn, Service, Session};
use crate::model::UserId;
use crate::protocol::replies::{Contact, FriendChanged, FriendList, State};
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail};

impl Handler for wire::AddFriend {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<FriendChanged, Fail> {
        svc.add_friend(s.me_mut()?, self.friendid).await
    }
}

impl Handler for wire::DelFriend {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<FriendChanged, Fail> {
        svc.del_friend(s.me_mut()?, self.friendid).await
    }
}

impl Handler for wire::ShowFriendList {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<FriendList, Fail> {
        svc.show_friends(s.me_mut()?).await
    }
}

impl Service {
    pub(super) async fn add_friend(
        &self,
        me: &mut LoggedIn,
        friend: UserId,
    ) -> Result<FriendChanged, Fail> {
        if friend == me.id {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "you cannot add yourself as a friend",
            ));
        }
        self.may_reach(me, friend, true).await?;
        let max = self.config.limits.friends_per_user as usize;
        let friends = self.store.friends(me.id).await?;
        if friends.len() >= max && !friends.iter().any(|f| f.id == friend) {
            crate::metrics::inc(&crate::metrics::METRICS.limited);
            return Err(Fail::new(
                ErrCode::QuotaExceeded,
                format!("you have {max} friends, the most allowed"),
            ));
        }
        self.store.add_friendship(me.id, friend).await?;
        // The new friend hears of us from now on, starting now.
        if !me.contacts.contains(&friend) {
            me.contacts.push(friend);
        }
        self.announce(me.id, &me.name, true, &[friend]).await;
        Ok(FriendChanged { friendid: friend })
    }

    pub(super) async fn del_friend(
        &self,
        me: &LoggedIn,
        friend: UserId,
    ) -> Result<FriendChanged, Fail> {
        if !self.store.remove_friendship(me.id, friend).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("user {friend} is not your friend"),
            ));
        }
        Ok(FriendChanged { friendid: friend })
    }

    pub(super) async fn show_friends(&self, me: &LoggedIn) -> Result<FriendList, Fail> {
        let friends = self.store.friends(me.id).await?;
        let ids: Vec<UserId> = friends.iter().map(|f| f.id).collect();
        let online = self.hub.online(&ids).await?;
        let friends = friends
            .into_iter()
            .zip(online)
            .map(|(f, on)| Contact {
                id: f.id,
                name: f.name,
                state: State::of(on),
                role: None,
            })
            .collect();
        Ok(FriendList { friends })
    }
}
