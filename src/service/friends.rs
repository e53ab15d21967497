//! Friends: ADD_FRIEND (a request, or friendship when both asked),
//! FRIEND_REQUESTS, FRIEND_ANSWER, DEL_FRIEND and SHOW_FRIEND_LIST.
//!
//! Friendship takes both users' consent. ADD_FRIEND asks; the other user is
//! told (a push, and in its login reply while pending) and accepts or
//! declines with FRIEND_ANSWER, or asks back with ADD_FRIEND, which is how
//! two original clients still befriend each other. Until then neither sees
//! the other's presence or appears in the other's list. A declined request
//! looks pending to its asker, who is not told and cannot ask again until
//! it withdraws the request (DEL_FRIEND). Requests are bounded: pending
//! ones per user, and new ones per day.

use super::requests::Handler;
use super::{LoggedIn, Service, Session};
use crate::metrics::{METRICS, inc};
use crate::model::UserId;
use crate::protocol::replies::{
    Contact, FriendAnswered, FriendChanged, FriendList, FriendRequestList, State, UserRef,
};
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail, msgid};
use crate::store::{AskLimits, FriendAsk};

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

impl Handler for wire::FriendRequests {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<FriendRequestList, Fail> {
        let me = s.me_mut()?;
        let r = svc.store.friend_requests(me.id).await?;
        let refs = |v: Vec<crate::model::UserSummary>| {
            v.into_iter()
                .map(|u| UserRef {
                    id: u.id,
                    name: u.name,
                })
                .collect()
        };
        Ok(FriendRequestList {
            incoming: refs(r.incoming),
            outgoing: refs(r.outgoing),
        })
    }
}

impl Handler for wire::FriendAnswer {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<FriendAnswered, Fail> {
        svc.answer_friend(s.me_mut()?, self.userid, self.accept)
            .await
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
        self.friends_quota(me, friend).await?;
        let limits = AskLimits {
            pending: self.config.limits.pending_requests,
            per_day: self.config.limits.friend_requests_per_day,
        };
        let too_many = |msg: String| {
            inc(&METRICS.limited);
            Err(Fail::new(ErrCode::QuotaExceeded, msg))
        };
        match self.store.ask_friend(me.id, friend, limits).await? {
            FriendAsk::Befriended => {
                self.befriended(me, friend).await;
                Ok(FriendChanged {
                    friendid: friend,
                    pending: false,
                })
            }
            FriendAsk::Requested => {
                self.push(
                    serde_json::json!({
                        "msgid": msgid::FRIEND_REQUESTS, "id": me.id, "name": &*me.name,
                    }),
                    &[friend],
                )
                .await;
                Ok(FriendChanged {
                    friendid: friend,
                    pending: true,
                })
            }
            FriendAsk::AlreadyAsked => Err(Fail::new(
                ErrCode::AlreadyExists,
                format!("you asked user {friend} already; wait for an answer"),
            )),
            FriendAsk::TooManyPending(n) => too_many(format!(
                "you have {n} friend requests waiting for an answer, the most allowed; withdraw one first"
            )),
            FriendAsk::TooManyToday(n) => too_many(format!(
                "you made {n} friend requests today, the most allowed; try again tomorrow"
            )),
        }
    }

    /// Refuses a new friendship past the friends-per-user quota.
    async fn friends_quota(&self, me: &LoggedIn, friend: UserId) -> Result<(), Fail> {
        let max = self.config.limits.friends_per_user as usize;
        let friends = self.store.friends(me.id).await?;
        if friends.len() >= max && !friends.iter().any(|f| f.id == friend) {
            inc(&METRICS.limited);
            return Err(Fail::new(
                ErrCode::QuotaExceeded,
                format!("you have {max} friends, the most allowed"),
            ));
        }
        Ok(())
    }

    /// `me` and `friend` just became friends (on `me`'s consent, `friend`
    /// having asked): each hears of the other's comings and goings from
    /// now on, and `friend` is told (msgid 32).
    async fn befriended(&self, me: &mut LoggedIn, friend: UserId) {
        if !me.contacts.contains(&friend) {
            me.contacts.push(friend);
        }
        self.hub
            .notify(
                crate::protocol::friend_accepted_frame(me.id, &me.name),
                &[friend],
            )
            .await;
        self.announce(me.id, &me.name, true, &[friend]).await;
    }

    async fn answer_friend(
        &self,
        me: &mut LoggedIn,
        from: UserId,
        accept: bool,
    ) -> Result<FriendAnswered, Fail> {
        if accept {
            self.may_reach(me, from, true).await?;
            self.friends_quota(me, from).await?;
        }
        if !self.store.answer_friend(me.id, from, accept).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("user {from} has not asked to be your friend"),
            ));
        }
        let mut state = None;
        if accept {
            self.befriended(me, from).await;
            let online = self.hub.online(&[from]).await?;
            state = Some(State::of(online.first().copied().unwrap_or(false)));
        }
        Ok(FriendAnswered {
            userid: from,
            accept,
            state,
        })
    }

    /// Ends a friendship, or withdraws one's request.
    pub(super) async fn del_friend(
        &self,
        me: &LoggedIn,
        friend: UserId,
    ) -> Result<FriendChanged, Fail> {
        if !self.store.remove_friendship(me.id, friend).await?
            && !self.store.withdraw_friend_request(me.id, friend).await?
        {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("user {friend} is not your friend"),
            ));
        }
        Ok(FriendChanged {
            friendid: friend,
            pending: false,
        })
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

    /// Pushes one of our frames (a notice the original client never gets)
    /// to every online session of `to`.
    pub(super) async fn push(&self, frame: serde_json::Value, to: &[UserId]) {
        if to.is_empty() {
            return;
        }
        if let Ok(frame) = serde_json::to_vec(&frame) {
            self.hub.notify(bytes::Bytes::from(frame), to).await;
        }
    }
}
