//! CREATE_GROUP_MSG, ADD_GROUP_MSG and DEL_GROUP_MSG, and the membership
//! cache that keeps group chat from querying the database per message.
//!
//! A public group is joined by its id, as in the original. A private one
//! (`"private": true` at creation) is joined only by an invitation the
//! invitee accepts (ADD_GROUP accepts it too) or a request an admin
//! approves (`group_admin`); to anyone else it answers exactly as a group
//! that does not exist, and its id is drawn at random.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::requests::Handler;
use super::{LoggedIn, Service, Session, invalid};
use crate::metrics::{METRICS, inc};
use crate::model::{Conversation, GroupDesc, GroupId, GroupName, Seq, UserId};
use crate::protocol::replies::{Contact, GroupChanged, GroupCreated, GroupJoined, State};
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail};
use crate::store::{Store, StoreResult};

/// Groups whose members the cache remembers at most; past this it starts over.
const MAX_CACHED_GROUPS: usize = 100_000;

/// How long a cached member list is trusted. Changes made through any node
/// drop it at once; this bounds the damage of an announcement that was lost.
const MEMBERS_TTL: Duration = Duration::from_secs(30);

/// Member lists by group, with when each was loaded.
type Entries = HashMap<GroupId, (Instant, Arc<[UserId]>)>;

/// Group members by group, loaded on first use and dropped on every change
/// (made here, or announced by another node). Used to address group
/// messages only: who may post or read is decided by the session's own
/// knowledge of its memberships, never by this cache.
#[derive(Debug, Default)]
pub(super) struct GroupCache {
    members: RwLock<Entries>,
    /// Bumped by every invalidation; a list loaded while it moved may be
    /// stale already and is not cached.
    generation: AtomicU64,
}

impl GroupCache {
    /// The members of `group`, or `None` if it does not exist.
    pub(super) async fn members(
        &self,
        store: &dyn Store,
        group: GroupId,
    ) -> StoreResult<Option<Arc<[UserId]>>> {
        if let Some((at, m)) = self.read().get(&group)
            && at.elapsed() < MEMBERS_TTL
        {
            return Ok(Some(m.clone()));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(list) = store.group_members(group).await? else {
            return Ok(None);
        };
        let list: Arc<[UserId]> = list.into();
        let mut map = self.write();
        if self.generation.load(Ordering::Acquire) == generation {
            if map.len() >= MAX_CACHED_GROUPS {
                map.clear();
            }
            map.insert(group, (Instant::now(), list.clone()));
        }
        Ok(Some(list))
    }

    pub(super) fn clear(&self) {
        let mut map = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
    }

    pub(super) fn invalidate(&self, group: GroupId) {
        let mut map = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.remove(&group);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.members.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handler for wire::CreateGroup {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<GroupCreated, Fail> {
        let desc = self.groupdesc.unwrap_or_default();
        svc.create_group(s.me_mut()?, &self.groupname, &desc, self.private)
            .await
    }
}

impl Handler for wire::AddGroup {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<GroupJoined, Fail> {
        svc.join_group(s.me_mut()?, self.groupid).await
    }
}

impl Handler for wire::DelGroup {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<GroupChanged, Fail> {
        svc.leave_group(s.me_mut()?, self.groupid).await
    }
}

impl Service {
    pub(super) async fn create_group(
        &self,
        me: &mut LoggedIn,
        name: &str,
        desc: &str,
        private: bool,
    ) -> Result<GroupCreated, Fail> {
        let name = GroupName::parse(name).map_err(invalid)?;
        let desc = GroupDesc::parse(desc).map_err(invalid)?;
        self.groups_quota(me)?;
        let id = self
            .store
            .create_group(me.id, name.as_str(), desc.as_str(), private)
            .await?;
        me.delivery.join(Conversation::Group(id), Seq(0));
        self.groups.invalidate(id);
        self.hub.group_changed(id).await;
        self.tell_own_devices(me, id, true, Seq(0)).await;
        Ok(GroupCreated {
            groupid: id,
            groupname: name.as_str().to_owned(),
            groupdesc: desc.as_str().to_owned(),
            private,
        })
    }

    pub(super) async fn join_group(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
    ) -> Result<GroupJoined, Fail> {
        // (A member joining again is answered by the store as before.)
        if !me.delivery.knows(Conversation::Group(group)) {
            self.groups_quota(me)?;
            let max = self.config.limits.members_per_group;
            if let Some(members) = self.groups.members(self.store.as_ref(), group).await?
                && members.len() >= max as usize
            {
                inc(&METRICS.limited);
                return Err(Fail::new(
                    ErrCode::QuotaExceeded,
                    format!("group {group} has {max} members, the most allowed"),
                ));
            }
        }
        let start = self.store.join_group(me.id, group).await?;
        me.delivery.join(Conversation::Group(group), start);
        self.groups.invalidate(group);
        self.hub.group_changed(group).await;
        self.tell_own_devices(me, group, true, start).await;
        self.members_changed(group, false).await;
        let info = self
            .store
            .user_groups(me.id)
            .await?
            .into_iter()
            .find(|g| g.id == group);
        let Some(info) = info else {
            // Left again meanwhile (another session): just the id.
            return Ok(GroupJoined {
                groupid: group,
                groupname: String::new(),
                groupdesc: String::new(),
                users: Vec::new(),
            });
        };
        let ids: Vec<UserId> = info.members.iter().map(|m| m.id).collect();
        let online = self.hub.online(&ids).await?;
        Ok(GroupJoined {
            groupid: group,
            groupname: info.name,
            groupdesc: info.desc,
            users: info
                .members
                .into_iter()
                .zip(online)
                .map(|(m, on)| Contact {
                    id: m.id,
                    name: m.name,
                    state: State::of(on),
                    role: Some(m.role.as_str().to_owned()),
                })
                .collect(),
        })
    }

    /// Refuses a create or join past the groups-per-user quota.
    pub(super) fn groups_quota(&self, me: &LoggedIn) -> Result<(), Fail> {
        let max = self.config.limits.groups_per_user;
        if me.delivery.groups() >= max as usize {
            inc(&METRICS.limited);
            return Err(Fail::new(
                ErrCode::QuotaExceeded,
                format!("you are in {max} groups, the most allowed; leave one first"),
            ));
        }
        Ok(())
    }

    pub(super) async fn leave_group(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
    ) -> Result<GroupChanged, Fail> {
        if !self.store.leave_group(me.id, group).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("you are not a member of group {group}"),
            ));
        }
        me.delivery.leave(Conversation::Group(group));
        self.groups.invalidate(group);
        self.hub.group_changed(group).await;
        self.tell_own_devices(me, group, false, Seq(0)).await;
        self.members_changed(group, false).await;
        Ok(GroupChanged { groupid: group })
    }

    /// The refusal for a user who is not a member of `group`: a public
    /// group says so (errno 31); a private group answers as one that does
    /// not exist (errno 30), so that nobody learns which ids are taken.
    pub(super) async fn not_member(&self, group: GroupId) -> Fail {
        match self.store.group(group).await {
            Ok(Some(g)) if !g.private => Fail::new(
                ErrCode::Forbidden,
                format!("you are not a member of group {group}"),
            ),
            Ok(_) => Fail::new(ErrCode::NotFound, format!("group {group} not found")),
            Err(e) => e.into(),
        }
    }

    /// Tells the members of `group` that it changed (msgid 40: members,
    /// roles, name), for clients that show it to ask again. Joins and
    /// leaves are told to groups of at most `receipts_group_max` members
    /// only (each would be a message to every member); a rename or a
    /// change of roles (`always`) to every group.
    pub(super) async fn members_changed(&self, group: GroupId, always: bool) {
        let Ok(Some(members)) = self.groups.members(self.store.as_ref(), group).await else {
            return;
        };
        if !always && members.len() > self.config.receipts_group_max {
            return;
        }
        self.push(
            serde_json::json!({"msgid": crate::protocol::msgid::GROUP_INFO, "groupid": group}),
            &members,
        )
        .await;
    }

    /// Tells the user's other sessions that one of its devices joined (at
    /// `seq`) or left `group`, so that they deliver its messages from
    /// there, or no more (MEMBERSHIP, msgid 22). A session that misses it
    /// learns at its next login.
    pub(super) async fn tell_own_devices(
        &self,
        me: &LoggedIn,
        group: GroupId,
        member: bool,
        seq: Seq,
    ) {
        let frame = crate::protocol::membership_frame(group, member, seq);
        self.hub.notify_except(frame, &[me.id], me.session).await;
    }
}
