//! The classic JSON protocol and our extensions to it.
//!
//! Every frame is one JSON object with an integer `msgid`. [`parse`] reads
//! its envelope (`msgid`, `reqid`, `id`); the service's table of requests
//! reads the rest into the request's own wire struct ([`typed`]), so the
//! service never looks at JSON. Each request type's wire struct, msgid and reply type are in
//! [`requests`], the reply structs in [`replies`]; both are shared by the
//! server, the client library and `chatbench`. [`Reply`] adds the envelope
//! and [`render_push`] renders a message for its receivers.
//! `docs/protocol.md` is the reference for users of the protocol; keep the two
//! in step.

pub mod classic;
pub mod codec;
pub mod replies;
pub mod requests;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::{ChatMessage, GroupId, UserId};
pub use replies::ChatFrame;

/// Message ids. 1 to 10 are the original's; 11 to 14 are requests it did not
/// have (11 to 13 as the Cluster_ChatServer seed names them); `100 + n` is
/// our reply to request `n` where the original sent none, and 100 itself
/// reports a frame that could not be tied to a request.
pub mod msgid {
    pub const LOGIN: i64 = 1;
    pub const LOGIN_ACK: i64 = 2;
    pub const LOGOUT: i64 = 3;
    pub const REG: i64 = 4;
    pub const REG_ACK: i64 = 5;
    pub const ONE_CHAT: i64 = 6;
    pub const ADD_FRIEND: i64 = 7;
    pub const CREATE_GROUP: i64 = 8;
    pub const ADD_GROUP: i64 = 9;
    pub const GROUP_CHAT: i64 = 10;
    pub const DEL_GROUP: i64 = 11;
    pub const DEL_FRIEND: i64 = 12;
    pub const SHOW_FRIEND_LIST: i64 = 13;
    pub const HISTORY: i64 = 14;
    /// Which node and version this is; allowed before login.
    pub const SERVER_INFO: i64 = 15;
    /// A heartbeat, answered at once (116); allowed before login. A
    /// connection that has sent one is closed after a silence of the
    /// server's heartbeat timeout.
    pub const PING: i64 = 16;
    /// Log in again with the `token` a login returned, without the
    /// password; allowed before login.
    pub const RESUME: i64 = 17;
    /// A receiver's acknowledgement of what it has, per conversation
    /// (sessions that declared `acks` at login). Answered only when refused.
    pub const ACK: i64 = 18;
    /// Push: a contact came online or went offline (`id`, `name`, `state`).
    pub const PRESENCE: i64 = 19;
    /// The user's devices, and which are online.
    pub const DEVICES: i64 = 20;
    /// Log another of one's devices out.
    pub const DEVICE_LOGOUT: i64 = 21;
    /// Push to the user's other devices: one of its devices joined,
    /// created or left a group (`groupid`, `member`, `seq`: where it
    /// starts).
    pub const MEMBERSHIP: i64 = 22;
    /// The user is typing in a conversation (request), or a peer or group
    /// member is (push). Stored nowhere.
    pub const TYPING: i64 = 23;
    /// The user has read a conversation up to `seq` (request), or someone
    /// has (push: to the user's devices and to the peer or group).
    pub const READ: i64 = 24;
    /// Take back one's own message (within the recall window), or, for a
    /// group's creator, any message of the group.
    pub const RECALL: i64 = 25;
    /// Change the text of one's own message (within the edit window).
    pub const EDIT: i64 = 26;
    /// Block a user: neither messages the other one to one, befriends the
    /// other or sees the other's presence.
    pub const BLOCK: i64 = 27;
    /// End a block.
    pub const UNBLOCK: i64 = 28;
    /// The user's settings (`only_friends`).
    pub const SETTINGS: i64 = 29;
    /// Delete one's own account (with its password).
    pub const DELETE_ACCOUNT: i64 = 30;
    /// The user's pending friend requests (request), or a new one to the
    /// user (push: `id`, `name`).
    pub const FRIEND_REQUESTS: i64 = 31;
    /// Accept or decline a friend request (request), or one's request was
    /// accepted (push to the asker: `id`, `name`, `accept`).
    pub const FRIEND_ANSWER: i64 = 32;
    /// Invite a user into a group (request), or an invitation (push to the
    /// invitee: `groupid`, `groupname`, `id`, `name` of who invited).
    pub const GROUP_INVITE: i64 = 33;
    /// Ask to join a private group (request), or someone asks (push to its
    /// owner and admins: `groupid`, `groupname`, `id`, `name`).
    pub const GROUP_JOIN_REQUEST: i64 = 34;
    /// Answer one's invitation, or (owner, admins) a user's request.
    pub const GROUP_ANSWER: i64 = 35;
    /// The owner names or removes an admin, or hands the group over.
    pub const GROUP_ROLE: i64 = 36;
    /// The owner or an admin removes a member.
    pub const GROUP_REMOVE: i64 = 37;
    /// The owner or an admin renames a group or changes its description.
    pub const GROUP_UPDATE: i64 = 38;
    /// The owner dissolves a group.
    pub const GROUP_DISSOLVE: i64 = 39;
    /// A group's members and roles (request), or the group changed (push
    /// to its members: `groupid`; ask again for the details).
    pub const GROUP_INFO: i64 = 40;
    /// Reply to a frame that is not a request we can name (bad JSON, no or
    /// unknown msgid), and notices the server sends before closing.
    pub const ERROR: i64 = 100;
    /// Offset of the reply msgid for requests the original left unanswered.
    pub const ACK_OFFSET: i64 = 100;

    /// The msgid of the reply to request `req`.
    pub fn ack_for(req: i64) -> i64 {
        match req {
            LOGIN => LOGIN_ACK,
            REG => REG_ACK,
            other => ACK_OFFSET + other,
        }
    }
}

/// The `errno` of a reply. 1 and 2 keep the meanings the original client
/// knows; the others are ours and documented in `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    Ok = 0,
    /// Login: wrong id or password. Register: name already taken.
    Failed = 1,
    /// The original's "account is online already". Never sent now: a second
    /// login replaces the first session (which gets [`ErrCode::Replaced`]).
    AlreadyOnline = 2,
    InvalidJson = 10,
    UnknownMsgid = 11,
    /// A field is missing or has the wrong type.
    BadRequest = 12,
    /// A field has the right type but a value we refuse (too long, empty).
    InvalidValue = 13,
    FrameTooLong = 14,
    NotLoggedIn = 20,
    /// The request's `id` names someone other than the logged-in user.
    IdentityMismatch = 21,
    AlreadyLoggedIn = 22,
    NotFound = 30,
    /// Not allowed, e.g. posting to a group one is not a member of.
    Forbidden = 31,
    AlreadyExists = 32,
    /// A request aimed at oneself where that makes no sense.
    InvalidTarget = 33,
    /// Storage or cluster service unavailable; retry later.
    Unavailable = 50,
    /// The server is at its connection limit.
    ServerFull = 51,
    ShuttingDown = 53,
    /// This session was closed because the account logged in again, on
    /// another connection or node: the newer login wins.
    Replaced = 54,
    /// This connection promised heartbeats (it sent a PING) and then was
    /// silent for longer than the server's heartbeat timeout.
    HeartbeatMissed = 55,
    /// Logins and resumes arrive faster than this node admits them; the
    /// reply's `retry_ms` says when to try again.
    TooManyLogins = 56,
    /// This connection sends more requests or bytes than its budget: its
    /// requests are being delayed. A notice, sent at most every 10 s.
    SlowDown = 57,
    /// The connection did not log in within the login timeout of
    /// connecting, and is being closed.
    LoginTimeout = 58,
    /// A frame was begun and not finished within the frame timeout; the
    /// connection is being closed.
    FrameTimeout = 59,
    /// Too many wrong passwords for this account or from this address: no
    /// login to it is tried before `retry_ms` has passed.
    LoginThrottled = 60,
    /// A quota is reached (groups, friends, members, bytes stored today);
    /// the message says which.
    QuotaExceeded = 61,
    /// Too many registrations from this address; `retry_ms` says when the
    /// next is allowed.
    TooManyRegistrations = 62,
    /// This session was closed because another of the user's devices
    /// logged this device out (or it was forgotten, the user having logged
    /// in from more devices than allowed): its resume token no longer works.
    DeviceLoggedOut = 63,
    /// RECALL or EDIT after the window for it has passed.
    TooLate = 64,
    /// RECALL or EDIT of a message that was recalled.
    Recalled = 65,
    /// ONE_CHAT or ADD_FRIEND between users one of whom blocks the other,
    /// or ONE_CHAT to a user who takes messages from friends only.
    Blocked = 66,
}

/// MEMBERSHIP (msgid 22), as pushed to a user's other devices. Rendered by
/// hand so that it begins with its msgid: a session tells it from other
/// notices by that prefix ([`membership_of`]).
pub fn membership_frame(group: GroupId, member: bool, seq: crate::model::Seq) -> Bytes {
    Bytes::from(format!(
        r#"{{"msgid":{},"groupid":{group},"member":{member},"seq":{seq}}}"#,
        msgid::MEMBERSHIP
    ))
}

/// The group, membership and starting position of a MEMBERSHIP notice;
/// `None` for any other frame.
pub fn membership_of(frame: &[u8]) -> Option<(GroupId, bool, crate::model::Seq)> {
    #[derive(serde::Deserialize)]
    struct Membership {
        groupid: GroupId,
        member: bool,
        seq: crate::model::Seq,
    }
    let prefix = format!(r#"{{"msgid":{},"#, msgid::MEMBERSHIP);
    if !frame.starts_with(prefix.as_bytes()) {
        return None;
    }
    let m: Membership = serde_json::from_slice(frame).ok()?;
    Some((m.groupid, m.member, m.seq))
}

/// A notice between sessions that no client ever sees: `user` changed
/// who may reach it (a block), so sessions forget what they knew of it.
pub fn reach_frame(user: UserId) -> Bytes {
    Bytes::from(format!(r#"{{"msgid":0,"reach":{user}}}"#))
}

/// FRIEND_ANSWER (msgid 32) as pushed to the user whose request `id`
/// (`name`) accepted. Rendered by hand so that it begins with its msgid
/// and `id` ([`accepted_friend_of`]).
pub fn friend_accepted_frame(id: UserId, name: &str) -> Bytes {
    let name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    Bytes::from(format!(
        r#"{{"msgid":{},"id":{id},"name":{name},"accept":true}}"#,
        msgid::FRIEND_ANSWER
    ))
}

/// The new friend of a FRIEND_ANSWER push (msgid 32, which the service
/// renders with `msgid` first and `id` second); `None` for any other frame.
pub fn accepted_friend_of(frame: &[u8]) -> Option<UserId> {
    let rest = frame.strip_prefix(br#"{"msgid":32,"id":"#)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(rest.get(..end)?).ok()?.parse().ok()
}

/// The user of a [`reach_frame`]; `None` for any other frame.
pub fn reach_of(frame: &[u8]) -> Option<UserId> {
    let rest = frame.strip_prefix(br#"{"msgid":0,"reach":"#)?;
    std::str::from_utf8(rest.strip_suffix(b"}")?)
        .ok()?
        .parse()
        .ok()
}

/// A failed request: the code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    pub code: ErrCode,
    pub msg: String,
    /// For a refusal that passes: when to try again, sent as `retry_ms`.
    pub retry_ms: Option<u64>,
}

impl Fail {
    pub fn new(code: ErrCode, msg: impl Into<String>) -> Self {
        Fail {
            code,
            msg: msg.into(),
            retry_ms: None,
        }
    }

    /// A refusal that passes after `wait`: the message says so in seconds
    /// and the reply carries `retry_ms`.
    pub fn retry_after(code: ErrCode, msg: &str, wait: std::time::Duration) -> Self {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        Fail {
            code,
            msg: format!("{msg}; retry in {:.1} s", ms as f64 / 1000.0),
            retry_ms: Some(ms),
        }
    }
}

/// A reply under construction: `msgid`, `errno`, `errmsg` on errors,
/// `reqid` when the request had one, and any payload fields.
#[derive(Debug, Clone)]
pub struct Reply(Map<String, Value>);

impl Reply {
    /// A successful reply with `msgid`.
    pub fn ok(msgid: i64) -> Self {
        let mut m = Map::new();
        m.insert("msgid".into(), msgid.into());
        m.insert("errno".into(), 0.into());
        Reply(m)
    }

    /// A successful reply with `msgid` and the fields of `body`: the one
    /// place a handler's typed reply gets its envelope.
    pub fn ok_with<T: Serialize>(msgid: i64, body: &T) -> Self {
        let mut m = match serde_json::to_value(body) {
            Ok(Value::Object(m)) => m,
            // Reply structs are objects of plain fields; nothing else is
            // ever passed here.
            _ => Map::new(),
        };
        m.insert("msgid".into(), msgid.into());
        m.insert("errno".into(), 0.into());
        Reply(m)
    }

    /// A failed reply with `msgid`.
    pub fn fail(msgid: i64, fail: &Fail) -> Self {
        let mut r = Reply::ok(msgid);
        r.0.insert("errno".into(), (fail.code as i64).into());
        r.0.insert("errmsg".into(), fail.msg.clone().into());
        if let Some(ms) = fail.retry_ms {
            r.0.insert("retry_ms".into(), ms.into());
        }
        r
    }

    /// Adds a field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Echoes the request's `reqid`, if it had one.
    pub fn reqid(mut self, reqid: Option<&Value>) -> Self {
        if let Some(r) = reqid {
            self.0.insert("reqid".into(), r.clone());
        }
        self
    }

    /// The JSON text, without terminator.
    pub fn to_bytes(&self) -> Bytes {
        // Serialising a Map of Values cannot fail (string keys, no floats NaN).
        Bytes::from(serde_json::to_vec(&self.0).unwrap_or_default())
    }
}

/// A conversation as a client names it: the other user, or the group
/// (history requests, acknowledgements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistoryTarget {
    User(UserId),
    Group(GroupId),
}

/// Most positions one ACK may carry.
pub const MAX_ACKS: usize = 1024;
/// Longest client message id, in bytes.
pub const MAX_CMID_LEN: usize = 64;

/// A frame's envelope: its `msgid`, `reqid` and `id`, and the fields of
/// the request it carries, which the service reads into the request's own
/// type (`service::requests`, the one table of requests). Even a frame
/// whose request turns out wrong keeps its `msgid` and `reqid`, so that the
/// error reply can name them.
#[derive(Debug)]
pub struct Parsed {
    /// The request's msgid, or [`msgid::ERROR`] when there is none to name.
    pub msgid: i64,
    pub reqid: Option<Value>,
    /// The `id` the client put in the request, if any: for a request after
    /// login, a claim checked against the session (never used as
    /// identity); LOGIN reads it as the account.
    pub id: Option<Value>,
    /// The request's fields, or why the frame holds no request at all.
    pub body: Result<Map<String, Value>, Fail>,
}

impl Parsed {
    fn bare(fail: Fail, reqid: Option<Value>) -> Self {
        Parsed {
            msgid: msgid::ERROR,
            reqid,
            id: None,
            body: Err(fail),
        }
    }
}

/// Reads `body` into request type `T`; a missing or mistyped field is
/// errno 12.
pub fn typed<T: serde::de::DeserializeOwned>(body: Map<String, Value>) -> Result<T, Fail> {
    serde_json::from_value(Value::Object(body))
        .map_err(|e| Fail::new(ErrCode::BadRequest, e.to_string()))
}

/// Longest `reqid` string echoed back.
pub const MAX_REQID_LEN: usize = 128;

/// Parses one frame's envelope. Never panics; every failure is a [`Fail`]
/// to reply with.
pub fn parse(frame: &[u8]) -> Parsed {
    let value: Value = match serde_json::from_slice(frame) {
        Ok(v) => v,
        Err(e) => {
            return Parsed::bare(
                Fail::new(ErrCode::InvalidJson, format!("invalid JSON: {e}")),
                None,
            );
        }
    };
    let Value::Object(mut obj) = value else {
        return Parsed::bare(
            Fail::new(ErrCode::BadRequest, "a request must be a JSON object"),
            None,
        );
    };
    let reqid = match obj.remove("reqid") {
        None => None,
        // Echoed as it came: an integer that fits 64 bits (serde_json would
        // turn a larger one into a float), or a short string.
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
        Some(Value::String(r)) if r.len() <= MAX_REQID_LEN => Some(Value::String(r)),
        Some(_) => {
            return Parsed::bare(
                Fail::new(
                    ErrCode::BadRequest,
                    format!(
                        "reqid must be an integer within 64 bits or a string of at most {MAX_REQID_LEN} bytes"
                    ),
                ),
                None,
            );
        }
    };
    let id = match obj.get("msgid") {
        None => {
            return Parsed::bare(
                Fail::new(ErrCode::BadRequest, "missing field `msgid`"),
                reqid,
            );
        }
        Some(v) => match v.as_i64() {
            Some(id) => id,
            None => {
                return Parsed::bare(
                    Fail::new(ErrCode::BadRequest, "msgid must be an integer"),
                    reqid,
                );
            }
        },
    };
    Parsed {
        msgid: id,
        reqid,
        id: obj.get("id").cloned(),
        body: Ok(obj),
    }
}

/// The `id` a request after login claims, checked against the session's
/// user: absent or null claims nothing; anything but an integer is errno
/// 12, another user's id errno 21.
pub fn check_claim(id: Option<&Value>, me: UserId) -> Result<(), Fail> {
    match id {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_i64() {
            Some(claimed) if me == claimed => Ok(()),
            Some(claimed) => Err(Fail::new(
                ErrCode::IdentityMismatch,
                format!("id {claimed} is not the logged-in user {me}"),
            )),
            None => Err(Fail::new(ErrCode::BadRequest, "id must be an integer")),
        },
    }
}

/// A conversation named by the other user (`toid`) or the group.
pub fn target_of(
    toid: Option<UserId>,
    groupid: Option<GroupId>,
    what: &str,
) -> Result<HistoryTarget, Fail> {
    match (toid, groupid) {
        (Some(u), None) => Ok(HistoryTarget::User(u)),
        (None, Some(g)) => Ok(HistoryTarget::Group(g)),
        _ => Err(Fail::new(
            ErrCode::BadRequest,
            format!("{what} needs exactly one of `toid` or `groupid`"),
        )),
    }
}

/// A client message id is 1 to [`MAX_CMID_LEN`] visible ASCII characters
/// (a UUID, a counter, ...).
pub fn checked_cmid(cmid: Option<String>) -> Result<Option<String>, Fail> {
    match cmid {
        Some(c)
            if c.is_empty()
                || c.len() > MAX_CMID_LEN
                || !c.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Err(Fail::new(
                ErrCode::InvalidValue,
                format!("cmid must be 1 to {MAX_CMID_LEN} visible ASCII characters"),
            ))
        }
        other => Ok(other),
    }
}

/// Leaves a flag that is off out of a frame (serde's `skip_serializing_if`).
fn is_false(b: &bool) -> bool {
    !*b
}

/// Renders a stored message as the push a receiver gets.
pub fn render_push(m: &ChatMessage) -> Bytes {
    Bytes::from(serde_json::to_vec(&ChatFrame::of(m)).unwrap_or_default())
}

/// `YYYY-MM-DD HH:MM:SS` in the server's local time zone, as the original
/// client prints it. Every message renders it (reply and push), so the text
/// of the current second is kept per thread: the time zone lookup and the
/// format run once a second, not twice a message.
pub fn classic_time(ts_ms: i64) -> String {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let second = ts_ms.div_euclid(1000);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != second {
            *last = (second, format_local(ts_ms));
        }
        last.1.clone()
    })
}

fn format_local(ts_ms: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ts_ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conversation;
    use crate::model::{GroupId, Seq, UserId};

    fn code(p: &Parsed) -> ErrCode {
        p.body.as_ref().err().map(|f| f.code).unwrap_or(ErrCode::Ok)
    }

    #[test]
    fn client_message_ids_and_ack_positions_are_checked() {
        for bad in [String::new(), "has space".into(), "x".repeat(65)] {
            let got = checked_cmid(Some(bad.clone())).map_err(|f| f.code);
            assert_eq!(got, Err(ErrCode::InvalidValue), "{bad:?}");
        }
        assert_eq!(checked_cmid(Some("c-1".into())), Ok(Some("c-1".into())));
        let entry = |toid, groupid| requests::AckEntry {
            toid,
            groupid,
            seq: Seq(5),
        };
        let ack = requests::Ack {
            acks: vec![entry(Some(UserId(2)), None), entry(None, Some(GroupId(1)))],
        };
        assert_eq!(
            ack.targets(),
            Ok(vec![
                (HistoryTarget::User(UserId(2)), Seq(5)),
                (HistoryTarget::Group(GroupId(1)), Seq(5))
            ])
        );
        let both = requests::Ack {
            acks: vec![entry(Some(UserId(2)), Some(GroupId(1)))],
        };
        assert_eq!(both.targets().map_err(|f| f.code), Err(ErrCode::BadRequest));
        let many = requests::Ack {
            acks: vec![entry(Some(UserId(2)), None); MAX_ACKS + 1],
        };
        assert_eq!(
            many.targets().map_err(|f| f.code),
            Err(ErrCode::InvalidValue)
        );
    }

    #[test]
    fn a_reqid_is_echoed_exactly_or_refused() {
        let p = parse(br#"{"msgid":16,"reqid":18446744073709551615}"#);
        assert_eq!(p.reqid, Some(Value::from(u64::MAX)));
        for bad in [
            &br#"{"msgid":16,"reqid":18446744073709551616}"#[..],
            br#"{"msgid":16,"reqid":1.5}"#,
            br#"{"msgid":16,"reqid":[1]}"#,
        ] {
            let p = parse(bad);
            assert_eq!(p.reqid, None);
            assert_eq!(code(&p), ErrCode::BadRequest);
        }
        let long = format!(
            r#"{{"msgid":16,"reqid":"{}"}}"#,
            "r".repeat(MAX_REQID_LEN + 1)
        );
        assert!(parse(long.as_bytes()).body.is_err());
    }

    #[test]
    fn errors_name_the_problem_and_keep_reqid() {
        let p = parse(b"{not json");
        assert_eq!((p.msgid, code(&p)), (msgid::ERROR, ErrCode::InvalidJson));
        let p = parse(b"[1,2]");
        assert_eq!((p.msgid, code(&p)), (msgid::ERROR, ErrCode::BadRequest));
        let p = parse(br#"{"msgid":1.5,"reqid":"r1"}"#);
        assert_eq!((p.msgid, code(&p)), (msgid::ERROR, ErrCode::BadRequest));
        assert_eq!(p.reqid, Some(Value::from("r1")));
        let p = parse(br#"{"msgid":6,"reqid":7,"id":1,"toid":"2","msg":"x"}"#);
        assert_eq!(
            (p.msgid, p.reqid, p.id),
            (6, Some(Value::from(7)), Some(Value::from(1)))
        );
        // an id claim is checked against the session, never believed
        assert_eq!(check_claim(Some(&Value::from(1)), UserId(1)), Ok(()));
        assert_eq!(check_claim(None, UserId(1)), Ok(()));
        assert_eq!(check_claim(Some(&Value::Null), UserId(1)), Ok(()));
        let code_of = |r: Result<(), Fail>| r.map_err(|f| f.code);
        assert_eq!(
            code_of(check_claim(Some(&Value::from(2)), UserId(1))),
            Err(ErrCode::IdentityMismatch)
        );
        assert_eq!(
            code_of(check_claim(Some(&Value::from("me")), UserId(1))),
            Err(ErrCode::BadRequest)
        );
    }

    #[test]
    fn pushes_have_the_classic_fields_plus_seq_and_ts() {
        let m = ChatMessage {
            conv: Conversation::direct(UserId(5), UserId(3)),
            seq: Seq(9),
            sender: UserId(5),
            sender_name: "bob".into(),
            body: "hello".into(),
            ts_ms: 1_700_000_000_000,
            kind: Default::default(),
        };
        let v: Value = serde_json::from_slice(&render_push(&m)).expect("json");
        assert_eq!(v["msgid"], 6);
        assert_eq!(v["id"], 5);
        assert_eq!(v["toid"], 3);
        assert_eq!(v["name"], "bob");
        assert_eq!(v["seq"], 9);
        assert_eq!(v["time"].as_str().map(str::len), Some(19));
        let g = ChatMessage {
            conv: Conversation::Group(GroupId(4)),
            ..m
        };
        let v: Value = serde_json::from_slice(&render_push(&g)).expect("json");
        assert_eq!(
            (v["msgid"].as_i64(), v["groupid"].as_i64()),
            (Some(10), Some(4))
        );
        assert!(v.get("toid").is_none());
    }
}
