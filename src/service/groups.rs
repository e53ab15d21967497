//! CREATE_GROUP_MSG, ADD_GROUP_MSG and DEL_GROUP_MSG, and the membership
//! cache that keeps group chat from querying the database per message.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Service, Session, invalid};
use crate::model::{Conversation, GroupDesc, GroupId, GroupName, UserId};
use crate::protocol::{ErrCode, Fail, Reply};
use crate::store::{Store, StoreResult};

/// Groups whose members the cache remembers at most; past this it starts over.
const MAX_CACHED_GROUPS: usize = 100_000;

/// Group members by group, loaded on first use and dropped on every change
/// made through this node. (In a cluster, other nodes' changes will have to
/// invalidate it through the bus.)
#[derive(Debug, Default)]
pub(super) struct GroupCache {
    members: RwLock<HashMap<GroupId, Arc<[UserId]>>>,
}

impl GroupCache {
    /// The members of `group`, or `None` if it does not exist.
    pub(super) async fn members(
        &self,
        store: &dyn Store,
        group: GroupId,
    ) -> StoreResult<Option<Arc<[UserId]>>> {
        if let Some(m) = self.read().get(&group) {
            return Ok(Some(m.clone()));
        }
        let Some(list) = store.group_members(group).await? else {
            return Ok(None);
        };
        let list: Arc<[UserId]> = list.into();
        let mut map = self.members.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED_GROUPS {
            map.clear();
        }
        map.insert(group, list.clone());
        Ok(Some(list))
    }

    pub(super) fn clear(&self) {
        self.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub(super) fn invalidate(&self, group: GroupId) {
        self.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, Arc<[UserId]>>> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Service {
    pub(super) async fn create_group(
        &self,
        s: &mut Session,
        ack: i64,
        name: &str,
        desc: &str,
    ) -> Result<Reply, Fail> {
        let name = GroupName::parse(name).map_err(invalid)?;
        let desc = GroupDesc::parse(desc).map_err(invalid)?;
        let me = s.me_mut()?;
        let id = self
            .store
            .create_group(me.id, name.as_str(), desc.as_str())
            .await?;
        me.cursors.start(Conversation::Group(id), 0);
        self.groups.invalidate(id);
        self.hub.group_changed(id).await;
        Ok(Reply::ok(ack)
            .with("groupid", id)
            .with("groupname", name.as_str())
            .with("groupdesc", desc.as_str()))
    }

    pub(super) async fn join_group(
        &self,
        s: &mut Session,
        ack: i64,
        group: GroupId,
    ) -> Result<Reply, Fail> {
        let me = s.me_mut()?;
        let start = self.store.join_group(me.id, group).await?;
        me.cursors.start(Conversation::Group(group), start);
        self.groups.invalidate(group);
        self.hub.group_changed(group).await;
        Ok(Reply::ok(ack).with("groupid", group))
    }

    pub(super) async fn leave_group(
        &self,
        s: &mut Session,
        ack: i64,
        group: GroupId,
    ) -> Result<Reply, Fail> {
        let me = s.me_mut()?;
        if !self.store.leave_group(me.id, group).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("you are not a member of group {group}"),
            ));
        }
        me.cursors.forget(Conversation::Group(group));
        self.groups.invalidate(group);
        self.hub.group_changed(group).await;
        Ok(Reply::ok(ack).with("groupid", group))
    }
}
