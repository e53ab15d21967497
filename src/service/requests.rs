//! The one table of requests, and what every request type implements.
//!
//! A request type is its wire struct in [`crate::protocol::requests`] (its
//! fields, its msgid and its reply type, with one `call!` line) and its
//! [`Handler`], written beside the logic it runs (`account`, `chat`,
//! `friends`, `groups`, `session`). The table below is the only list of
//! requests: it decodes a frame's fields into the request's type by msgid,
//! says which requests are allowed before login ([`Open`]) and which act
//! as the logged-in user ([`AsUser`]), and dispatches each to its handler.
//! Adding a request is those three edits (README, "Adding a request").

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Service, Session};
use crate::protocol::requests::{self as wire, Call};
use crate::protocol::{ErrCode, Fail, Reply, typed};

/// How the server answers one request type.
pub(super) trait Handler: Call<Reply: Serialize> {
    /// Runs the request for session `s`; the reply's envelope (`msgid`,
    /// `errno`, `reqid`) is added by the dispatcher. A request in the
    /// table's `as_user` list runs only once `s` is logged in as the user
    /// the request's `id` (if any) names.
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<Self::Reply, Fail>;
}

/// The table: each request type once, in the group that says when it is
/// allowed. Generates the two request enums, [`decode`] and their dispatch.
macro_rules! requests {
    (open: [$($open:ident),* $(,)?], as_user: [$($user:ident),* $(,)?] $(,)?) => {
        /// A request allowed before login.
        #[derive(Debug)]
        pub(super) enum Open {
            $($open(wire::$open),)*
        }

        /// A request that acts as the logged-in user: refused before login
        /// (errno 20), and when its `id` names anyone else (errno 21).
        #[derive(Debug)]
        pub(super) enum AsUser {
            $($user(wire::$user),)*
        }

        /// Reads the fields of request `msgid` into its type: errno 11 if no
        /// request has that msgid, errno 12 if a field is missing or of the
        /// wrong type.
        pub(super) fn decode(msgid: i64, body: Map<String, Value>) -> Result<Request, Fail> {
            $(if msgid == <wire::$open as Call>::MSGID {
                return typed(body).map(|r| Request::Open(Open::$open(r)));
            })*
            $(if msgid == <wire::$user as Call>::MSGID {
                return typed(body).map(|r| Request::AsUser(AsUser::$user(r)));
            })*
            Err(Fail::new(ErrCode::UnknownMsgid, format!("unknown request msgid {msgid}")))
        }

        impl Open {
            /// Runs the request's handler; the reply has msgid `ack`.
            pub(super) async fn handle(self, svc: &Service, s: &mut Session, ack: i64) -> Result<Reply, Fail> {
                match self {
                    $(Open::$open(r) => r.handle(svc, s).await.map(|out| Reply::ok_with(ack, &out)),)*
                }
            }
        }

        impl AsUser {
            /// Runs the request's handler; the reply has msgid `ack`.
            pub(super) async fn handle(self, svc: &Service, s: &mut Session, ack: i64) -> Result<Reply, Fail> {
                match self {
                    $(AsUser::$user(r) => r.handle(svc, s).await.map(|out| Reply::ok_with(ack, &out)),)*
                }
            }
        }
    };
}

requests! {
    open: [Login, Register, Resume, ServerInfo, Ping],
    as_user: [
        Logout, OneChat, AddFriend, CreateGroup, AddGroup, GroupChat, DelGroup, DelFriend,
        ShowFriendList, History, Ack, Devices, DeviceLogout, Typing, Read, Recall, Edit,
        Block, Unblock, Settings, DeleteAccount, FriendRequests, FriendAnswer, GroupInvite,
        GroupJoinRequest, GroupAnswer, SetGroupRole, GroupRemove, GroupUpdate, GroupDissolve,
        GroupInfo,
    ],
}

/// A request, decoded.
#[derive(Debug)]
pub(super) enum Request {
    Open(Open),
    AsUser(AsUser),
}

impl Request {
    /// Whether it declares one of our extensions, so that its sender is
    /// not the original client: `acks` at login, a `cmid`, or a request
    /// the original never sent. (A `reqid` declares it too; the envelope
    /// has that.)
    pub(super) fn declares_extension(&self) -> bool {
        match self {
            Request::Open(Open::Login(l)) => l.acks || l.device.is_some(),
            Request::Open(Open::Resume(_) | Open::ServerInfo(_) | Open::Ping(_)) => true,
            Request::AsUser(AsUser::OneChat(c)) => c.cmid.is_some(),
            Request::AsUser(AsUser::GroupChat(c)) => c.cmid.is_some(),
            Request::AsUser(AsUser::CreateGroup(c)) => c.private,
            Request::Open(Open::Register(_))
            | Request::AsUser(
                AsUser::Logout(_)
                | AsUser::AddFriend(_)
                | AsUser::AddGroup(_)
                | AsUser::DelGroup(_)
                | AsUser::DelFriend(_)
                | AsUser::ShowFriendList(_),
            ) => false,
            // Every other request is ours.
            _ => true,
        }
    }

    /// Whether a person at a login menu sent it (a registration, login or
    /// resume), as opposed to a socket with nothing useful to say.
    pub(super) fn opens_account(&self) -> bool {
        matches!(
            self,
            Request::Open(Open::Login(_) | Open::Register(_) | Open::Resume(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupId, Seq, UserId};
    use crate::protocol::{HistoryTarget, parse};

    fn decoded(frame: &[u8]) -> Result<Request, Fail> {
        let p = parse(frame);
        p.body.and_then(|body| decode(p.msgid, body))
    }

    #[test]
    fn classic_requests_decode_and_ignore_the_client_s_name_and_time() {
        let frame = br#"{"msgid":6,"id":1,"name":"mallory","toid":2,"msg":"hi","time":"1999-01-01 00:00:00"}"#;
        let p = parse(frame);
        assert_eq!(p.id, Some(Value::from(1)), "the claim, checked later");
        match decoded(frame) {
            Ok(Request::AsUser(AsUser::OneChat(c))) => {
                assert_eq!((c.toid, c.msg.as_str(), c.cmid), (UserId(2), "hi", None));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decoded(br#"{"msgid":1,"id":3,"password":"pw","acks":true}"#),
            Ok(Request::Open(Open::Login(l))) if l.acks && l.id == 3
        ));
    }

    #[test]
    fn frames_written_by_clients_decode_to_the_same_request() {
        let f = wire::frame(
            &wire::Ack {
                acks: vec![wire::AckEntry {
                    toid: None,
                    groupid: Some(GroupId(4)),
                    seq: Seq(9),
                }],
            },
            Some(7),
        );
        assert_eq!(parse(&f).reqid, Some(Value::from(7)));
        match decoded(&f) {
            Ok(Request::AsUser(AsUser::Ack(a))) => {
                assert_eq!(
                    a.targets(),
                    Ok(vec![(HistoryTarget::Group(GroupId(4)), Seq(9))])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decoded(&wire::frame(&wire::Ping {}, None)),
            Ok(Request::Open(Open::Ping(_)))
        ));
    }

    #[test]
    fn unknown_and_mistyped_requests_are_named() {
        let code = |frame: &[u8]| decoded(frame).err().map(|f| f.code);
        assert_eq!(code(br#"{"msgid":99}"#), Some(ErrCode::UnknownMsgid));
        assert_eq!(
            code(br#"{"msgid":2}"#),
            Some(ErrCode::UnknownMsgid),
            "server-only msgids are not requests"
        );
        assert_eq!(
            code(br#"{"msgid":6,"toid":"2","msg":"x"}"#),
            Some(ErrCode::BadRequest)
        );
        let err = decoded(br#"{"msgid":10,"groupid":1}"#).err().map(|f| f.msg);
        assert!(err.is_some_and(|e| e.contains("missing field `msg`")));
        assert!(
            decoded(br#"{"msgid":16,"id":"anyone"}"#).is_ok(),
            "a heartbeat names no one"
        );
    }

    #[test]
    fn what_declares_an_extension() {
        let ours = |frame: &[u8]| decoded(frame).map(|r| r.declares_extension());
        assert_eq!(ours(br#"{"msgid":6,"toid":2,"msg":"x"}"#), Ok(false));
        assert_eq!(
            ours(br#"{"msgid":6,"toid":2,"msg":"x","cmid":"c1"}"#),
            Ok(true)
        );
        assert_eq!(ours(br#"{"msgid":1,"id":1,"password":"p"}"#), Ok(false));
        assert_eq!(ours(br#"{"msgid":16}"#), Ok(true));
    }
}
