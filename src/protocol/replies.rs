//! What a successful request answers with, as typed structs.
//!
//! The server's handlers return these; [`super::Reply::ok_with`] adds the
//! envelope (`msgid`, `errno`, later `reqid`) in one place; the client
//! library reads the same structs back (`Call::Reply` in [`super::requests`]). Field
//! names are the wire's, the original client's where it has them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::model::{ChatMessage, Conversation, GroupId, MsgKind, Seq, UserId};

use super::msgid;

use super::is_false;

/// REG_MSG_ACK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub id: UserId,
    pub name: String,
}

/// Whether a user is connected anywhere in the cluster, as the original
/// client spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Online,
    Offline,
}

impl State {
    pub fn of(online: bool) -> Self {
        if online {
            State::Online
        } else {
            State::Offline
        }
    }
}

/// A friend, or a group's member (with its role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: UserId,
    pub name: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A group as the login reply lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    pub id: GroupId,
    pub groupname: String,
    #[serde(default)]
    pub groupdesc: String,
    /// Each member a JSON text, as the original client parses them.
    #[serde(default, with = "json_texts")]
    pub users: Vec<Contact>,
}

/// LOGIN_MSG_ACK, and the reply to RESUME. The three lists hold each
/// element as a JSON text (the original client's format), and are left out
/// when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn<'a> {
    pub id: UserId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "json_texts")]
    pub offlinemsg: Vec<ChatFrame<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "json_texts")]
    pub friends: Vec<Contact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "json_texts")]
    pub groups: Vec<GroupEntry>,
    /// The resume token (password logins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The server stores this session's positions on its acknowledgements.
    #[serde(default, skip_serializing_if = "is_false")]
    pub acks: bool,
    /// Some friends, groups or members were left out so that the reply
    /// fits the original client's one read (see [`super::classic`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
    /// The device this session is for (left out for the classic device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The user's devices (never sent to the original client).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceInfo>,
    /// Read positions and unread counts (never sent to the original
    /// client).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<ReadEntry>,
    /// The users this user blocks (never sent to the original client).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<UserId>,
    /// The user takes one-to-one messages from friends only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub only_friends: bool,
    /// Pending friend requests to the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<UserRef>,
    /// Invitations to private groups the user holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invitations: Vec<InviteEntry>,
}

/// One of the user's devices: its name (`""` for the classic device),
/// whether a session of it is online, when it last logged in or resumed,
/// and whether it is the device asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device: String,
    pub online: bool,
    pub last_seen: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub current: bool,
}

/// The reply to READ: how far the conversation is read now (a `seq` past
/// its last message counts as its last; one behind changes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDone {
    pub seq: Seq,
}

/// How far a conversation is read, as the login reply lists it (those with
/// unread messages, or read by the peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
    /// How far the user has read.
    pub read: Seq,
    /// Messages from others past it (counted up to 1000).
    pub unread: u32,
    /// Direct conversations: how far the peer has read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_read: Option<Seq>,
}

/// The reply to BLOCK and UNBLOCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockChanged {
    pub userid: UserId,
}

/// The reply to SETTINGS: the settings as they are now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsNow {
    pub only_friends: bool,
}

/// The reply to DEVICES.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceInfo>,
}

/// The reply to ONE_CHAT and GROUP_CHAT: the message's number and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub seq: Seq,
    pub ts: i64,
    /// The classic rendering of `ts`.
    #[serde(default)]
    pub time: String,
}

/// The reply to ADD_FRIEND and DEL_FRIEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendChanged {
    pub friendid: UserId,
    /// ADD_FRIEND: a request is pending (they are not friends yet).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pending: bool,
}

/// A user named by id and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: UserId,
    pub name: String,
}

/// The reply to FRIEND_REQUESTS.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FriendRequestList {
    /// Who asks the user.
    pub incoming: Vec<UserRef>,
    /// Whom the user asked.
    pub outgoing: Vec<UserRef>,
}

/// The reply to FRIEND_ANSWER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendAnswered {
    pub userid: UserId,
    pub accept: bool,
    /// Accepted: whether the new friend is online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

/// An invitation the user holds (login reply), or a pending invitation or
/// request of a group (GROUP_INFO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteEntry {
    pub groupid: GroupId,
    pub groupname: String,
    /// The invitee or asker.
    pub id: UserId,
    pub name: String,
    /// Who invited (the asker itself for a request).
    pub by: UserId,
    pub byname: String,
    /// "invitation" or "request".
    pub kind: String,
}

/// The reply to GROUP_INVITE, GROUP_ANSWER, GROUP_ROLE and GROUP_REMOVE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChanged {
    pub groupid: GroupId,
    pub userid: UserId,
    /// GROUP_INVITE: the user had asked to join, so it is a member now.
    /// GROUP_ANSWER: whether the user is a member now.
    #[serde(default, skip_serializing_if = "is_false")]
    pub joined: bool,
    /// GROUP_ROLE: the role now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// The reply to GROUP_INFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDetails {
    pub groupid: GroupId,
    pub groupname: String,
    pub groupdesc: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
    pub users: Vec<Contact>,
    /// Pending invitations and requests (to the owner and admins only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invites: Vec<InviteEntry>,
}

/// The reply to SHOW_FRIEND_LIST (plain objects, not JSON texts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendList {
    pub friends: Vec<Contact>,
}

/// The reply to CREATE_GROUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCreated {
    pub groupid: GroupId,
    pub groupname: String,
    pub groupdesc: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
}

/// The reply to ADD_GROUP: the classic `groupid`, plus what a client needs
/// to show the group it joined at once (the original client ignores them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupJoined {
    pub groupid: GroupId,
    pub groupname: String,
    pub groupdesc: String,
    /// The members, as objects (not the login reply's strings).
    pub users: Vec<Contact>,
}

/// The reply to ADD_GROUP and DEL_GROUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChanged {
    pub groupid: GroupId,
}

/// The reply to HISTORY: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage<'a> {
    pub messages: Vec<ChatFrame<'a>>,
}

/// The reply to SERVER_INFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub node: String,
    pub version: String,
    /// The client's address as this node sees it (behind a balancer that
    /// sends the PROXY protocol, the client's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// The reply to PING: the server's clock, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub ts: i64,
}

/// A reply with nothing but its envelope (LOGOUT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Done {}

/// A chat message on the wire: a classic ONE_CHAT_MSG or GROUP_CHAT_MSG
/// with `seq` and `ts` added. Pushes, offline messages and history entries
/// all have this form. Borrows what it can when the server renders it; owns
/// everything when a client reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatFrame<'a> {
    pub msgid: i64,
    /// The sender.
    pub id: UserId,
    pub name: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toid: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groupid: Option<GroupId>,
    pub msg: Cow<'a, str>,
    #[serde(default)]
    pub time: Cow<'a, str>,
    #[serde(default)]
    pub seq: Seq,
    #[serde(default)]
    pub ts: i64,
    /// Its sender changed its text since (`msg` is the new one).
    #[serde(default, skip_serializing_if = "is_false")]
    pub edited: bool,
    /// Taken back: its text is gone (`msg` says so).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recalled: bool,
    /// An event: message `recall` of this conversation was taken back.
    /// (`msg` says so in words, for clients that know no events.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<Seq>,
    /// An event: message `edit` now reads `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Cow<'a, str>>,
}

/// What a recalled message shows instead of its text.
pub const RECALLED_TEXT: &str = "(this message was recalled)";

impl<'a> ChatFrame<'a> {
    /// The wire form of a stored message. Events also say in `msg`, in
    /// words, what they did, so that the original client, which knows no
    /// events, shows its user a readable line.
    pub fn of(m: &'a ChatMessage) -> Self {
        let (msgid, toid, groupid) = match m.conv {
            Conversation::Direct { .. } => (msgid::ONE_CHAT, m.conv.peer_of(m.sender), None),
            Conversation::Group(g) => (msgid::GROUP_CHAT, None, Some(g)),
        };
        let mut f = ChatFrame {
            msgid,
            id: m.sender,
            name: Cow::Borrowed(&m.sender_name),
            toid,
            groupid,
            msg: Cow::Borrowed(&m.body),
            time: Cow::Owned(super::classic_time(m.ts_ms)),
            seq: m.seq,
            ts: m.ts_ms,
            edited: false,
            recalled: false,
            recall: None,
            edit: None,
            text: None,
        };
        match m.kind {
            MsgKind::Message => {}
            MsgKind::Edited => f.edited = true,
            MsgKind::Recalled => {
                f.recalled = true;
                f.msg = Cow::Borrowed(RECALLED_TEXT);
            }
            MsgKind::RecallOf(s) => {
                f.recall = Some(s);
                f.msg = Cow::Owned(format!("[recalled message #{s}]"));
            }
            MsgKind::EditOf(s) => {
                f.edit = Some(s);
                f.msg = Cow::Owned(format!("[edited message #{s}] {}", m.body));
                f.text = Some(Cow::Borrowed(&m.body));
            }
        }
        f
    }

    /// The same frame, owning its text.
    pub fn into_owned(self) -> ChatFrame<'static> {
        ChatFrame {
            name: Cow::Owned(self.name.into_owned()),
            msg: Cow::Owned(self.msg.into_owned()),
            time: Cow::Owned(self.time.into_owned()),
            text: self.text.map(|t| Cow::Owned(t.into_owned())),
            ..self
        }
    }

    /// What the row is, as the frame says.
    pub fn kind(&self) -> MsgKind {
        match (self.recall, self.edit, self.edited, self.recalled) {
            (Some(s), _, _, _) => MsgKind::RecallOf(s),
            (None, Some(s), _, _) => MsgKind::EditOf(s),
            (None, None, _, true) => MsgKind::Recalled,
            (None, None, true, false) => MsgKind::Edited,
            _ => MsgKind::Message,
        }
    }

    /// Parses a push; `None` for anything that is not a chat message.
    pub fn parse(frame: &[u8]) -> Option<ChatFrame<'static>> {
        let f: ChatFrame<'static> = serde_json::from_slice(frame).ok()?;
        f.conversation().map(|_| f)
    }

    /// The conversation it belongs to (`None` for a frame of another kind,
    /// or a one-to-one message without its receiver).
    pub fn conversation(&self) -> Option<Conversation> {
        match (self.msgid, self.toid, self.groupid) {
            (msgid::ONE_CHAT, Some(to), _) => Some(Conversation::direct(self.id, to)),
            (msgid::GROUP_CHAT, _, Some(g)) => Some(Conversation::Group(g)),
            _ => None,
        }
    }

    /// The stored message it renders.
    pub fn message(&self) -> Option<ChatMessage> {
        Some(ChatMessage {
            conv: self.conversation()?,
            seq: self.seq,
            sender: self.id,
            sender_name: self.name.clone().into_owned(),
            body: match (self.kind(), &self.text) {
                (MsgKind::EditOf(_), Some(t)) => t.clone().into_owned(),
                (MsgKind::RecallOf(_) | MsgKind::Recalled, _) => String::new(),
                _ => self.msg.clone().into_owned(),
            },
            ts_ms: self.ts,
            kind: self.kind(),
        })
    }
}

/// Lists whose elements travel as JSON texts (`["{\"id\":1,...}", ...]`),
/// the original login reply's format. Plain objects are read too.
mod json_texts {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::{Error as _, SerializeSeq};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer, T: Serialize>(items: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(items.len()))?;
        for item in items {
            let text = serde_json::to_string(item).map_err(S::Error::custom)?;
            seq.serialize_element(&text)?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        Vec::<Value>::deserialize(d)?
            .into_iter()
            .map(|v| match v {
                Value::String(text) => serde_json::from_str(&text),
                other => serde_json::from_value(other),
            })
            .collect::<Result<_, _>>()
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Seq;
    use crate::model::UserId;
    use serde_json::Value;

    #[test]
    fn login_lists_travel_as_json_texts_and_read_back() {
        let m = ChatMessage {
            conv: Conversation::direct(UserId(5), UserId(3)),
            seq: Seq(9),
            sender: UserId(5),
            sender_name: "bob".into(),
            body: "你好 👋".into(),
            ts_ms: 1_700_000_000_000,
            kind: Default::default(),
        };
        let reply = LoggedIn {
            id: UserId(3),
            name: "alice".into(),
            offlinemsg: vec![ChatFrame::of(&m)],
            friends: vec![Contact {
                id: UserId(5),
                name: "bob".into(),
                state: State::Online,
                role: None,
            }],
            groups: vec![GroupEntry {
                id: GroupId(1),
                groupname: "g".into(),
                groupdesc: "d".into(),
                users: vec![Contact {
                    id: UserId(3),
                    name: "alice".into(),
                    state: State::Offline,
                    role: Some("creator".into()),
                }],
            }],
            token: None,
            acks: false,
            more: false,
            device: None,
            devices: Vec::new(),
            reads: Vec::new(),
            blocked: Vec::new(),
            only_friends: false,
            requests: Vec::new(),
            invitations: Vec::new(),
        };
        let v = serde_json::to_value(&reply).expect("serialize");
        // what the original client parses: strings holding objects
        let friend: Value =
            serde_json::from_str(v["friends"][0].as_str().expect("text")).expect("json");
        assert_eq!(friend["state"], "online");
        let group: Value =
            serde_json::from_str(v["groups"][0].as_str().expect("text")).expect("json");
        assert!(group["users"][0].is_string());
        assert!(v.get("token").is_none() && v.get("acks").is_none());
        let back: LoggedIn<'static> = serde_json::from_value(v).expect("read back");
        assert_eq!(back, reply);
        assert_eq!(back.offlinemsg[0].message(), Some(m));
    }
}
