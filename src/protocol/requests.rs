//! The requests as the wire carries them: one struct per request type, its
//! `msgid` and the reply it gets, in one place ([`Call`]).
//!
//! The server reads a frame's fields into these (its table of requests,
//! `service/requests.rs`, maps each msgid to its struct and handler); the
//! client library and `chatbench` write them
//! ([`frame`]). Fields the server derives from the session (`id` after
//! login, `name`, `time`) are not here: the server never trusts them.

use serde::{Deserialize, Serialize};

use super::msgid;
use super::replies::{
    BlockChanged, DeviceList, Done, FriendAnswered, FriendChanged, FriendList, FriendRequestList,
    GroupChanged, GroupCreated, GroupDetails, GroupJoined, HistoryPage, LoggedIn, MemberChanged,
    Pong, ReadDone, Registered, Sent, ServerInfo as ServerInfoReply, SettingsNow,
};
use crate::model::{GroupId, Seq, UserId};

use super::is_false;

/// A request type: its msgid and what a success answers with.
pub trait Call: Serialize {
    const MSGID: i64;
    type Reply: serde::de::DeserializeOwned;
}

macro_rules! call {
    ($req:ty, $msgid:expr, $reply:ty) => {
        impl Call for $req {
            const MSGID: i64 = $msgid;
            type Reply = $reply;
        }
    };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub id: UserId,
    pub password: String,
    /// The client acknowledges what it receives ([`Ack`]): stored positions
    /// then move on its acknowledgements, not on writes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub acks: bool,
    /// Names the device (1 to 64 visible ASCII characters): a login
    /// replaces only the older session of the same device. None: the
    /// classic device, one per user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}
call!(Login, msgid::LOGIN, LoggedIn<'static>);

/// Log in again with the `token` a login returned, without the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub token: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub acks: bool,
    /// The device the token was made for (optional; a different one is
    /// refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}
call!(Resume, msgid::RESUME, LoggedIn<'static>);

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Logout {}
call!(Logout, msgid::LOGOUT, Done);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub name: String,
    pub password: String,
}
call!(Register, msgid::REG, Registered);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneChat {
    pub toid: UserId,
    pub msg: String,
    /// The client's id for this message: a resend with the same id is
    /// stored once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmid: Option<String>,
}
call!(OneChat, msgid::ONE_CHAT, Sent);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChat {
    pub groupid: GroupId,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmid: Option<String>,
}
call!(GroupChat, msgid::GROUP_CHAT, Sent);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddFriend {
    pub friendid: UserId,
}
call!(AddFriend, msgid::ADD_FRIEND, FriendChanged);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelFriend {
    pub friendid: UserId,
}
call!(DelFriend, msgid::DEL_FRIEND, FriendChanged);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShowFriendList {}
call!(ShowFriendList, msgid::SHOW_FRIEND_LIST, FriendList);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroup {
    pub groupname: String,
    #[serde(default)]
    pub groupdesc: Option<String>,
    /// Joined only by invitation or an approved request, and showing a
    /// member nothing from before it joined.
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
}
call!(CreateGroup, msgid::CREATE_GROUP, GroupCreated);

/// Join a group (the original's ADD_GROUP_MSG).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddGroup {
    pub groupid: GroupId,
}
call!(AddGroup, msgid::ADD_GROUP, GroupJoined);

/// Leave a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelGroup {
    pub groupid: GroupId,
}
call!(DelGroup, msgid::DEL_GROUP, GroupChanged);

/// A page of a conversation (exactly one of `toid`, `groupid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}
call!(History, msgid::HISTORY, HistoryPage<'static>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerInfo {}
call!(ServerInfo, msgid::SERVER_INFO, ServerInfoReply);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ping {}
call!(Ping, msgid::PING, Pong);

/// The user's devices, and which are online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Devices {}
call!(Devices, msgid::DEVICES, DeviceList);

/// The user is typing in a conversation (exactly one of `toid`,
/// `groupid`). Answered only when refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Typing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
}
call!(Typing, msgid::TYPING, Done);

/// The user has read a conversation (exactly one of `toid`, `groupid`) up
/// to `seq`. With `private`, only the user's own devices are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Read {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
    pub seq: Seq,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
}
call!(Read, msgid::READ, ReadDone);

/// Take back message `seq` of a conversation (exactly one of `toid`,
/// `groupid`). Answered with the event's own `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Recall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
    pub seq: Seq,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmid: Option<String>,
}
call!(Recall, msgid::RECALL, Sent);

/// Change the text of message `seq` to `msg`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Edit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
    pub seq: Seq,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmid: Option<String>,
}
call!(Edit, msgid::EDIT, Sent);

/// Block user `userid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub userid: UserId,
}
call!(Block, msgid::BLOCK, BlockChanged);

/// End the block of user `userid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unblock {
    pub userid: UserId,
}
call!(Unblock, msgid::UNBLOCK, BlockChanged);

/// Changes the settings given; answers with all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Take one-to-one messages from friends only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_friends: Option<bool>,
}
call!(Settings, msgid::SETTINGS, SettingsNow);

/// Deletes the logged-in user's account; `password` confirms it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAccount {
    pub password: String,
}
call!(DeleteAccount, msgid::DELETE_ACCOUNT, Done);

/// The user's pending friend requests, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FriendRequests {}
call!(FriendRequests, msgid::FRIEND_REQUESTS, FriendRequestList);

/// Accept or decline `userid`'s friend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendAnswer {
    pub userid: UserId,
    pub accept: bool,
}
call!(FriendAnswer, msgid::FRIEND_ANSWER, FriendAnswered);

/// Invite `userid` into a group (its owner or an admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInvite {
    pub groupid: GroupId,
    pub userid: UserId,
}
call!(GroupInvite, msgid::GROUP_INVITE, MemberChanged);

/// Ask to join a private group; its owner and admins approve or decline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupJoinRequest {
    pub groupid: GroupId,
}
call!(GroupJoinRequest, msgid::GROUP_JOIN_REQUEST, GroupChanged);

/// Without `userid`: accept or decline one's invitation to the group. With
/// it (the owner or an admin): approve or decline that user's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAnswer {
    pub groupid: GroupId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userid: Option<UserId>,
    pub accept: bool,
}
call!(GroupAnswer, msgid::GROUP_ANSWER, MemberChanged);

/// The owner makes a member an "admin" or "normal" member again, or hands
/// the group over to it ("creator").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetGroupRole {
    pub groupid: GroupId,
    pub userid: UserId,
    pub role: String,
}
call!(SetGroupRole, msgid::GROUP_ROLE, MemberChanged);

/// Remove a member (the owner: anyone; an admin: normal members).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRemove {
    pub groupid: GroupId,
    pub userid: UserId,
}
call!(GroupRemove, msgid::GROUP_REMOVE, MemberChanged);

/// Rename a group or change its description (the owner or an admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupUpdate {
    pub groupid: GroupId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupdesc: Option<String>,
}
call!(GroupUpdate, msgid::GROUP_UPDATE, GroupChanged);

/// Dissolve a group (its owner): every member leaves and its messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDissolve {
    pub groupid: GroupId,
}
call!(GroupDissolve, msgid::GROUP_DISSOLVE, GroupChanged);

/// A group one is a member of: its members with their roles, and (to the
/// owner and admins) its pending invitations and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub groupid: GroupId,
}
call!(GroupInfo, msgid::GROUP_INFO, GroupDetails);

impl Recall {
    pub fn target(&self) -> Result<super::HistoryTarget, super::Fail> {
        super::target_of(self.toid, self.groupid, "recall")
    }
}

impl Edit {
    pub fn target(&self) -> Result<super::HistoryTarget, super::Fail> {
        super::target_of(self.toid, self.groupid, "edit")
    }
}

impl Typing {
    pub fn target(&self) -> Result<super::HistoryTarget, super::Fail> {
        super::target_of(self.toid, self.groupid, "typing")
    }
}

impl Read {
    pub fn target(&self) -> Result<super::HistoryTarget, super::Fail> {
        super::target_of(self.toid, self.groupid, "read")
    }
}

/// Log another of one's devices out (`""`: the classic device): its session
/// ends and its resume tokens stop working. Answered with the same field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLogout {
    pub device: String,
}
call!(DeviceLogout, msgid::DEVICE_LOGOUT, DeviceLogout);

/// Everything up to `seq` in each conversation has reached the client.
/// Answered only when refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub acks: Vec<AckEntry>,
}
call!(Ack, msgid::ACK, Done);

/// One conversation's position in an [`Ack`] (exactly one of `toid`,
/// `groupid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
    pub seq: Seq,
}

impl OneChat {
    /// The client message id, checked ([`super::checked_cmid`]).
    pub fn cmid(&mut self) -> Result<Option<String>, super::Fail> {
        super::checked_cmid(self.cmid.take())
    }
}

impl GroupChat {
    /// The client message id, checked ([`super::checked_cmid`]).
    pub fn cmid(&mut self) -> Result<Option<String>, super::Fail> {
        super::checked_cmid(self.cmid.take())
    }
}

impl History {
    /// The conversation asked for (errno 12 unless exactly one of `toid`,
    /// `groupid`).
    pub fn target(&self) -> Result<super::HistoryTarget, super::Fail> {
        super::target_of(self.toid, self.groupid, "history")
    }
}

impl Ack {
    /// The positions, each in its conversation (errno 13 past
    /// [`super::MAX_ACKS`], errno 12 for an entry without exactly one of
    /// `toid`, `groupid`).
    pub fn targets(&self) -> Result<Vec<(super::HistoryTarget, Seq)>, super::Fail> {
        if self.acks.len() > super::MAX_ACKS {
            return Err(super::Fail::new(
                super::ErrCode::InvalidValue,
                format!("at most {} positions per ack", super::MAX_ACKS),
            ));
        }
        self.acks
            .iter()
            .map(|a| Ok((super::target_of(a.toid, a.groupid, "an ack")?, a.seq)))
            .collect()
    }
}

/// The frame for request `req`, with its msgid and, when given, a reqid.
pub fn frame<C: Call>(req: &C, reqid: Option<u64>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Framed<'a, C> {
        msgid: i64,
        #[serde(flatten)]
        body: &'a C,
        #[serde(skip_serializing_if = "Option::is_none")]
        reqid: Option<u64>,
    }
    // Plain structs of numbers and strings always serialise.
    serde_json::to_vec(&Framed {
        msgid: C::MSGID,
        body: req,
        reqid,
    })
    .unwrap_or_default()
}
