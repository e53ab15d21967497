//! ADD_FRIEND_MSG, DEL_FRIEND_MSG and SHOW_FRIEND_LIST_MSG. Friendship is
//! mutual: adding or deleting changes both users' lists.

use serde_json::{Value, json};

use super::{Service, Session};
use crate::model::UserId;
use crate::protocol::{ErrCode, Fail, Reply};

impl Service {
    pub(super) async fn add_friend(
        &self,
        s: &mut Session,
        ack: i64,
        friend: UserId,
    ) -> Result<Reply, Fail> {
        let me = s.me()?.id;
        if friend == me {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "you cannot add yourself as a friend",
            ));
        }
        self.store.add_friendship(me, friend).await?;
        Ok(Reply::ok(ack).with("friendid", friend))
    }

    pub(super) async fn del_friend(
        &self,
        s: &mut Session,
        ack: i64,
        friend: UserId,
    ) -> Result<Reply, Fail> {
        let me = s.me()?.id;
        if !self.store.remove_friendship(me, friend).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("user {friend} is not your friend"),
            ));
        }
        Ok(Reply::ok(ack).with("friendid", friend))
    }

    pub(super) async fn show_friends(&self, s: &mut Session, ack: i64) -> Result<Reply, Fail> {
        let me = s.me()?.id;
        let friends = self.store.friends(me).await?;
        let ids: Vec<UserId> = friends.iter().map(|f| f.id).collect();
        let online = self.hub.online(&ids).await?;
        let list: Vec<Value> = friends
            .iter()
            .zip(online)
            .map(|(f, on)| json!({"id": f.id, "name": f.name, "state": if on { "online" } else { "offline" }}))
            .collect();
        Ok(Reply::ok(ack).with("friends", list))
    }
}
