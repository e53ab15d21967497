//! Running a group: invitations (GROUP_INVITE), requests to join a private
//! group (GROUP_JOIN_REQUEST) and their answers (GROUP_ANSWER), roles
//! (GROUP_ROLE), removing members (GROUP_REMOVE), renaming (GROUP_UPDATE),
//! dissolving (GROUP_DISSOLVE) and GROUP_INFO.
//!
//! Roles: the owner ("creator", the original's word) names and removes
//! admins, hands the group over and dissolves it; admins ("admin") invite,
//! approve requests, remove normal members, rename the group and recall
//! any of its messages. When the owner leaves, the longest-standing admin
//! (else member) becomes the owner. A member who joins or is removed hears
//! of it on every session (MEMBERSHIP, msgid 22), so its sessions deliver
//! the group's messages from there, or no more.

use super::requests::Handler;
use super::{LoggedIn, Service, Session, invalid};
use crate::metrics::{METRICS, inc};
use crate::model::{Conversation, GroupDesc, GroupId, GroupName, GroupRole, Seq, UserId};
use crate::protocol::replies::{
    Contact, GroupChanged, GroupDetails, InviteEntry, MemberChanged, State,
};
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail, membership_frame, msgid};
use crate::store::{Invite, InviteKind, InviteOutcome, Membership, Reach};

impl Handler for wire::GroupInvite {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<MemberChanged, Fail> {
        svc.group_invite(s.me_mut()?, self.groupid, self.userid)
            .await
    }
}

impl Handler for wire::GroupJoinRequest {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<GroupChanged, Fail> {
        svc.group_join_request(s.me_mut()?, self.groupid).await
    }
}

impl Handler for wire::GroupAnswer {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<MemberChanged, Fail> {
        let me = s.me_mut()?;
        match self.userid {
            None => svc.answer_invitation(me, self.groupid, self.accept).await,
            Some(user) => {
                svc.answer_request(me, self.groupid, user, self.accept)
                    .await
            }
        }
    }
}

impl Handler for wire::SetGroupRole {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<MemberChanged, Fail> {
        let role = match self.role.as_str() {
            "creator" => GroupRole::Creator,
            "admin" => GroupRole::Admin,
            "normal" => GroupRole::Normal,
            other => {
                return Err(Fail::new(
                    ErrCode::InvalidValue,
                    format!("no role {other:?}: say \"admin\", \"normal\" or \"creator\""),
                ));
            }
        };
        svc.set_group_role(s.me_mut()?, self.groupid, self.userid, role)
            .await
    }
}

impl Handler for wire::GroupRemove {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<MemberChanged, Fail> {
        svc.group_remove(s.me_mut()?, self.groupid, self.userid)
            .await
    }
}

impl Handler for wire::GroupUpdate {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<GroupChanged, Fail> {
        let name = self
            .groupname
            .as_deref()
            .map(GroupName::parse)
            .transpose()
            .map_err(invalid)?;
        let desc = self
            .groupdesc
            .as_deref()
            .map(GroupDesc::parse)
            .transpose()
            .map_err(invalid)?;
        if name.is_none() && desc.is_none() {
            return Err(Fail::new(
                ErrCode::BadRequest,
                "say a groupname or a groupdesc to change",
            ));
        }
        let me = s.me_mut()?;
        let group = self.groupid;
        svc.manager(me, group).await?;
        svc.store
            .update_group(
                group,
                name.as_ref().map(|n| n.as_str()),
                desc.as_ref().map(|d| d.as_str()),
            )
            .await?;
        svc.members_changed(group, true).await;
        Ok(GroupChanged { groupid: group })
    }
}

impl Handler for wire::GroupDissolve {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<GroupChanged, Fail> {
        svc.group_dissolve(s.me_mut()?, self.groupid).await
    }
}

impl Handler for wire::GroupInfo {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<GroupDetails, Fail> {
        svc.group_info(s.me_mut()?, self.groupid).await
    }
}

/// An invite as the wire lists it.
pub(super) fn invite_entry(i: Invite) -> InviteEntry {
    InviteEntry {
        groupid: i.group,
        groupname: i.group_name,
        id: i.user.id,
        name: i.user.name,
        by: i.by.id,
        byname: i.by.name,
        kind: match i.kind {
            InviteKind::Invitation => "invitation",
            InviteKind::Request => "request",
        }
        .to_owned(),
    }
}

fn forbidden(msg: &str) -> Fail {
    Fail::new(ErrCode::Forbidden, msg)
}

impl Service {
    /// The user's place in `group`, or the refusal for a non-member.
    async fn member_of(&self, me: &LoggedIn, group: GroupId) -> Result<Membership, Fail> {
        match self.store.membership(group, me.id).await? {
            Some(m) => Ok(m),
            None => Err(self.not_member(group).await),
        }
    }

    /// The user's place in `group` if it is the owner or an admin.
    async fn manager(&self, me: &LoggedIn, group: GroupId) -> Result<Membership, Fail> {
        let m = self.member_of(me, group).await?;
        if !m.role.manages() {
            return Err(forbidden("only the group's owner and admins may do that"));
        }
        Ok(m)
    }

    /// `user` joined `group` at `start` on someone else's word (an admin's
    /// approval, or its own earlier request met by an invitation): every
    /// session of it delivers the group from there.
    async fn admitted(&self, group: GroupId, user: UserId, start: Seq) {
        self.groups.invalidate(group);
        self.hub.group_changed(group).await;
        self.hub
            .notify(membership_frame(group, true, start), &[user])
            .await;
        self.members_changed(group, false).await;
    }

    /// `users` are no longer members of `group`: their sessions stop
    /// delivering it, and nothing more of it reaches them.
    async fn expelled(&self, group: GroupId, users: &[UserId]) {
        self.groups.invalidate(group);
        self.hub.group_changed(group).await;
        self.hub
            .notify(membership_frame(group, false, Seq(0)), users)
            .await;
    }

    async fn group_invite(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
        user: UserId,
    ) -> Result<MemberChanged, Fail> {
        if user == me.id {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "you cannot invite yourself",
            ));
        }
        self.manager(me, group).await?;
        match self.store.may_reach(me.id, user).await? {
            Reach::Yes => {}
            Reach::NoSuchUser => {
                return Err(Fail::new(
                    ErrCode::NotFound,
                    format!("user {user} not found"),
                ));
            }
            Reach::BlockedByThem | Reach::FriendsOnly => {
                return Err(Fail::new(
                    ErrCode::Blocked,
                    "this user does not take invitations from you",
                ));
            }
            Reach::BlockedByYou => {
                return Err(Fail::new(
                    ErrCode::Blocked,
                    "you block this user; unblock them first",
                ));
            }
        }
        let max = self.config.limits.invites_per_group;
        let joined = match self
            .store
            .invite(group, user, me.id, InviteKind::Invitation, max)
            .await?
        {
            InviteOutcome::Pending => {
                let name = self
                    .store
                    .group(group)
                    .await?
                    .map(|g| g.name)
                    .unwrap_or_default();
                self.push(
                    serde_json::json!({
                        "msgid": msgid::GROUP_INVITE, "groupid": group, "groupname": name,
                        "id": me.id, "name": &*me.name,
                    }),
                    &[user],
                )
                .await;
                false
            }
            InviteOutcome::Joined(start) => {
                self.admitted(group, user, start).await;
                true
            }
            InviteOutcome::AlreadyPending => {
                return Err(Fail::new(
                    ErrCode::AlreadyExists,
                    format!("user {user} is invited already"),
                ));
            }
            InviteOutcome::TooMany(n) => {
                inc(&METRICS.limited);
                return Err(Fail::new(
                    ErrCode::QuotaExceeded,
                    format!("group {group} has {n} invitations waiting, the most allowed"),
                ));
            }
        };
        Ok(MemberChanged {
            groupid: group,
            userid: user,
            joined,
            role: None,
        })
    }

    /// Asks to join a private group. Answered the same whether or not such
    /// a private group exists, so that asking reveals nothing.
    async fn group_join_request(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
    ) -> Result<GroupChanged, Fail> {
        let done = Ok(GroupChanged { groupid: group });
        if me.delivery.knows(Conversation::Group(group)) {
            return Err(Fail::new(
                ErrCode::AlreadyExists,
                format!("you are a member of group {group} already"),
            ));
        }
        let Some(meta) = self.store.group(group).await? else {
            return done;
        };
        if !meta.private {
            return Err(forbidden(
                "this group is public: join it with ADD_GROUP (msgid 9)",
            ));
        }
        self.groups_quota(me)?;
        let max = self.config.limits.pending_requests;
        match self
            .store
            .invite(group, me.id, me.id, InviteKind::Request, max)
            .await?
        {
            InviteOutcome::Pending => {
                let managers: Vec<UserId> = self
                    .store
                    .group_info(group)
                    .await?
                    .map(|g| {
                        g.members
                            .into_iter()
                            .filter(|m| m.role.manages())
                            .map(|m| m.id)
                            .collect()
                    })
                    .unwrap_or_default();
                self.push(
                    serde_json::json!({
                        "msgid": msgid::GROUP_JOIN_REQUEST, "groupid": group,
                        "groupname": meta.name, "id": me.id, "name": &*me.name,
                    }),
                    &managers,
                )
                .await;
            }
            InviteOutcome::AlreadyPending => {}
            InviteOutcome::Joined(start) => {
                // It was invited: asking accepts.
                me.delivery.join(Conversation::Group(group), start);
                self.tell_own_devices(me, group, true, start).await;
                self.admitted(group, me.id, start).await;
            }
            InviteOutcome::TooMany(n) => {
                inc(&METRICS.limited);
                return Err(Fail::new(
                    ErrCode::QuotaExceeded,
                    format!("you have {n} requests to join groups waiting, the most allowed"),
                ));
            }
        }
        done
    }

    async fn answer_invitation(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
        accept: bool,
    ) -> Result<MemberChanged, Fail> {
        if accept {
            self.groups_quota(me)?;
        }
        let Some(start) = self
            .store
            .answer_invite(group, me.id, InviteKind::Invitation, accept)
            .await?
        else {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("you have no invitation to group {group}"),
            ));
        };
        if accept {
            me.delivery.join(Conversation::Group(group), start);
            self.tell_own_devices(me, group, true, start).await;
            self.admitted(group, me.id, start).await;
        }
        Ok(MemberChanged {
            groupid: group,
            userid: me.id,
            joined: accept,
            role: None,
        })
    }

    async fn answer_request(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
        user: UserId,
        accept: bool,
    ) -> Result<MemberChanged, Fail> {
        self.manager(me, group).await?;
        let Some(start) = self
            .store
            .answer_invite(group, user, InviteKind::Request, accept)
            .await?
        else {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("user {user} has not asked to join group {group}"),
            ));
        };
        if accept {
            self.admitted(group, user, start).await;
        }
        Ok(MemberChanged {
            groupid: group,
            userid: user,
            joined: accept,
            role: None,
        })
    }

    async fn set_group_role(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
        user: UserId,
        role: GroupRole,
    ) -> Result<MemberChanged, Fail> {
        if user == me.id {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "you cannot change your own role; hand the group over instead",
            ));
        }
        if self.member_of(me, group).await?.role != GroupRole::Creator {
            return Err(forbidden("only the group's owner may change roles"));
        }
        if !self.store.set_role(group, user, role).await? {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("user {user} is not a member of group {group}"),
            ));
        }
        self.members_changed(group, true).await;
        Ok(MemberChanged {
            groupid: group,
            userid: user,
            joined: false,
            role: Some(role.as_str().to_owned()),
        })
    }

    async fn group_remove(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
        user: UserId,
    ) -> Result<MemberChanged, Fail> {
        if user == me.id {
            return Err(Fail::new(
                ErrCode::InvalidTarget,
                "to leave a group, use DEL_GROUP (msgid 11)",
            ));
        }
        let mine = self.manager(me, group).await?;
        let Some(theirs) = self.store.membership(group, user).await? else {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("user {user} is not a member of group {group}"),
            ));
        };
        match theirs.role {
            GroupRole::Creator => return Err(forbidden("the group's owner cannot be removed")),
            GroupRole::Admin if mine.role != GroupRole::Creator => {
                return Err(forbidden("only the group's owner may remove an admin"));
            }
            _ => {}
        }
        if self.store.leave_group(user, group).await? {
            tracing::info!(%group, removed = %user, by = %me.id, "member removed");
            self.expelled(group, &[user]).await;
            self.members_changed(group, true).await;
        }
        Ok(MemberChanged {
            groupid: group,
            userid: user,
            joined: false,
            role: None,
        })
    }

    async fn group_dissolve(
        &self,
        me: &mut LoggedIn,
        group: GroupId,
    ) -> Result<GroupChanged, Fail> {
        if self.member_of(me, group).await?.role != GroupRole::Creator {
            return Err(forbidden("only the group's owner may dissolve it"));
        }
        let members = self.store.dissolve_group(group).await?;
        tracing::info!(%group, by = %me.id, members = members.len(), "group dissolved");
        me.delivery.leave(Conversation::Group(group));
        self.expelled(group, &members).await;
        Ok(GroupChanged { groupid: group })
    }

    async fn group_info(&self, me: &mut LoggedIn, group: GroupId) -> Result<GroupDetails, Fail> {
        let mine = self.member_of(me, group).await?;
        let Some(info) = self.store.group_info(group).await? else {
            return Err(Fail::new(
                ErrCode::NotFound,
                format!("group {group} not found"),
            ));
        };
        let ids: Vec<UserId> = info.members.iter().map(|m| m.id).collect();
        let online = self.hub.online(&ids).await?;
        let invites = if mine.role.manages() {
            self.store
                .group_invites(group)
                .await?
                .into_iter()
                .map(invite_entry)
                .collect()
        } else {
            Vec::new()
        };
        Ok(GroupDetails {
            groupid: group,
            groupname: info.name,
            groupdesc: info.desc,
            private: mine.private,
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
            invites,
        })
    }
}
