//! The terminal client's command language, as in the original client
//! (`chat:friendid:message` and so on), plus `history:`.

use crate::model::{GroupId, Seq, UserId};
use crate::protocol::HistoryTarget;

/// The commands and their help text, in the original's order.
pub const HELP: &[(&str, &str)] = &[
    ("help", "显示所有支持的命令，格式 help (show all commands)"),
    ("chat", "一对一聊天，格式 chat:friendid:message"),
    ("addfriend", "添加好友，格式 addfriend:friendid"),
    ("delfriend", "删除好友，格式 delfriend:friendid"),
    (
        "creategroup",
        "创建群组，格式 creategroup:groupname:groupdesc",
    ),
    ("addgroup", "加入群组，格式 addgroup:groupid"),
    ("delgroup", "退出群组，格式 delgroup:groupid"),
    ("groupchat", "群聊，格式 groupchat:groupid:message"),
    ("showfriendlist", "显示好友列表，格式 showfriendlist"),
    (
        "history",
        "聊天记录，格式 history:friend:friendid[:beforeseq[:limit]] 或 history:group:groupid[:beforeseq[:limit]]",
    ),
    (
        "recall",
        "撤回消息，格式 recall:friend:friendid:seq 或 recall:group:groupid:seq",
    ),
    (
        "edit",
        "编辑消息，格式 edit:friend:friendid:seq:new text 或 edit:group:groupid:seq:new text",
    ),
    ("block", "屏蔽用户，格式 block:userid (block a user)"),
    ("unblock", "取消屏蔽，格式 unblock:userid"),
    (
        "onlyfriends",
        "只接收好友消息，格式 onlyfriends:on 或 onlyfriends:off",
    ),
    (
        "deleteaccount",
        "注销账号，格式 deleteaccount:password (delete your account)",
    ),
    (
        "requests",
        "好友请求，格式 requests (friend requests, both ways)",
    ),
    ("accept", "接受好友请求，格式 accept:userid"),
    ("decline", "拒绝好友请求，格式 decline:userid"),
    (
        "createprivategroup",
        "创建私有群组，格式 createprivategroup:groupname:groupdesc (joined by invitation only)",
    ),
    ("invite", "邀请入群，格式 invite:groupid:userid"),
    ("joinrequest", "申请加入私有群组，格式 joinrequest:groupid"),
    ("acceptinvite", "接受入群邀请，格式 acceptinvite:groupid"),
    ("declineinvite", "拒绝入群邀请，格式 declineinvite:groupid"),
    ("approve", "批准入群申请，格式 approve:groupid:userid"),
    ("reject", "拒绝入群申请，格式 reject:groupid:userid"),
    (
        "setrole",
        "设置成员角色，格式 setrole:groupid:userid:admin|normal|creator (creator hands the group over)",
    ),
    (
        "removemember",
        "移除群成员，格式 removemember:groupid:userid",
    ),
    ("renamegroup", "群组改名，格式 renamegroup:groupid:newname"),
    ("dissolve", "解散群组，格式 dissolve:groupid"),
    ("groupinfo", "群组成员，格式 groupinfo:groupid"),
    ("devices", "显示登录设备，格式 devices (your devices)"),
    (
        "logoutdevice",
        "注销另一台设备，格式 logoutdevice:devicename (log another device out)",
    ),
    ("loginout", "注销，格式 loginout"),
];

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Chat {
        to: UserId,
        msg: String,
    },
    AddFriend(UserId),
    DelFriend(UserId),
    CreateGroup {
        name: String,
        desc: String,
        private: bool,
    },
    FriendRequests,
    /// Accept (true) or decline a friend request.
    AnswerFriend(UserId, bool),
    Invite(GroupId, UserId),
    JoinRequest(GroupId),
    /// Accept (true) or decline one's invitation.
    AnswerInvite(GroupId, bool),
    /// Approve (true) or reject a user's request to join.
    AnswerRequest(GroupId, UserId, bool),
    SetRole(GroupId, UserId, String),
    RemoveMember(GroupId, UserId),
    RenameGroup(GroupId, String),
    Dissolve(GroupId),
    GroupInfo(GroupId),
    AddGroup(GroupId),
    DelGroup(GroupId),
    GroupChat {
        group: GroupId,
        msg: String,
    },
    ShowFriendList,
    History {
        with: HistoryTarget,
        before: Option<Seq>,
        limit: Option<u32>,
    },
    Logout,
    Devices,
    LogoutDevice(String),
    DeleteAccount(String),
    Block(UserId),
    Unblock(UserId),
    OnlyFriends(bool),
    Recall {
        with: HistoryTarget,
        seq: Seq,
    },
    Edit {
        with: HistoryTarget,
        seq: Seq,
        msg: String,
    },
}

/// `friend:ID` or `group:ID`, then the rest.
fn conversation<'a>(
    parts: &mut impl Iterator<Item = &'a str>,
    usage: &str,
) -> Result<HistoryTarget, String> {
    let kind = parts.next().ok_or(usage)?;
    let target: i64 = id(parts.next(), "id")?;
    match kind {
        "friend" | "user" => Ok(HistoryTarget::User(target.into())),
        "group" => Ok(HistoryTarget::Group(target.into())),
        _ => Err(usage.to_owned()),
    }
}

fn id<T: From<i64>>(s: Option<&str>, what: &str) -> Result<T, String> {
    let s = s.ok_or_else(|| format!("missing {what}"))?;
    s.trim()
        .parse::<i64>()
        .map(T::from)
        .map_err(|_| format!("{what} must be a number, not {s:?}"))
}

/// Parses a line; the error is a message for the user.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (name, rest) = match line.split_once(':') {
        Some((n, r)) => (n.trim(), Some(r)),
        None => (line.trim(), None),
    };
    Ok(match name {
        "help" => Command::Help,
        "showfriendlist" => Command::ShowFriendList,
        "loginout" => Command::Logout,
        "devices" => Command::Devices,
        "block" => Command::Block(id(rest, "userid")?),
        "deleteaccount" => {
            Command::DeleteAccount(rest.ok_or("usage: deleteaccount:password")?.to_owned())
        }
        "unblock" => Command::Unblock(id(rest, "userid")?),
        "onlyfriends" => match rest.map(str::trim) {
            Some("on") => Command::OnlyFriends(true),
            Some("off") => Command::OnlyFriends(false),
            _ => return Err("usage: onlyfriends:on or onlyfriends:off".to_owned()),
        },
        "recall" => {
            let usage = "usage: recall:friend:ID:seq or recall:group:ID:seq";
            let mut parts = rest.ok_or(usage)?.split(':');
            let with = conversation(&mut parts, usage)?;
            Command::Recall {
                with,
                seq: id(parts.next(), "seq")?,
            }
        }
        "edit" => {
            let usage = "usage: edit:friend:ID:seq:new text or edit:group:ID:seq:new text";
            let mut parts = rest.ok_or(usage)?.splitn(4, ':');
            let with = conversation(&mut parts, usage)?;
            let seq = id(parts.next(), "seq")?;
            Command::Edit {
                with,
                seq,
                msg: parts.next().ok_or(usage)?.to_owned(),
            }
        }
        "logoutdevice" => Command::LogoutDevice(
            rest.ok_or("usage: logoutdevice:devicename")?
                .trim()
                .to_owned(),
        ),
        "chat" => {
            // The message is everything after the second colon, colons included.
            let (to, msg) = rest
                .and_then(|r| r.split_once(':'))
                .ok_or("usage: chat:friendid:message")?;
            Command::Chat {
                to: id(Some(to), "friendid")?,
                msg: msg.to_owned(),
            }
        }
        "groupchat" => {
            let (g, msg) = rest
                .and_then(|r| r.split_once(':'))
                .ok_or("usage: groupchat:groupid:message")?;
            Command::GroupChat {
                group: id(Some(g), "groupid")?,
                msg: msg.to_owned(),
            }
        }
        "addfriend" => Command::AddFriend(id(rest, "friendid")?),
        "delfriend" => Command::DelFriend(id(rest, "friendid")?),
        "addgroup" => Command::AddGroup(id(rest, "groupid")?),
        "delgroup" => Command::DelGroup(id(rest, "groupid")?),
        "creategroup" | "createprivategroup" => {
            let private = name == "createprivategroup";
            let r = rest.ok_or("usage: creategroup:groupname:groupdesc")?;
            let (name, desc) = r.split_once(':').unwrap_or((r, ""));
            Command::CreateGroup {
                name: name.to_owned(),
                desc: desc.to_owned(),
                private,
            }
        }
        "requests" => Command::FriendRequests,
        "accept" => Command::AnswerFriend(id(rest, "userid")?, true),
        "decline" => Command::AnswerFriend(id(rest, "userid")?, false),
        "joinrequest" => Command::JoinRequest(id(rest, "groupid")?),
        "acceptinvite" => Command::AnswerInvite(id(rest, "groupid")?, true),
        "declineinvite" => Command::AnswerInvite(id(rest, "groupid")?, false),
        "dissolve" => Command::Dissolve(id(rest, "groupid")?),
        "groupinfo" => Command::GroupInfo(id(rest, "groupid")?),
        "invite" | "approve" | "reject" | "removemember" => {
            let usage = format!("usage: {name}:groupid:userid");
            let (g, u) = rest.and_then(|r| r.split_once(':')).ok_or(usage)?;
            let (g, u) = (id(Some(g), "groupid")?, id(Some(u), "userid")?);
            match name {
                "invite" => Command::Invite(g, u),
                "approve" => Command::AnswerRequest(g, u, true),
                "reject" => Command::AnswerRequest(g, u, false),
                _ => Command::RemoveMember(g, u),
            }
        }
        "setrole" => {
            let usage = "usage: setrole:groupid:userid:admin|normal|creator";
            let mut parts = rest.ok_or(usage)?.splitn(3, ':');
            let g = id(parts.next(), "groupid")?;
            let u = id(parts.next(), "userid")?;
            Command::SetRole(g, u, parts.next().ok_or(usage)?.trim().to_owned())
        }
        "renamegroup" => {
            let (g, name) = rest
                .and_then(|r| r.split_once(':'))
                .ok_or("usage: renamegroup:groupid:newname")?;
            Command::RenameGroup(id(Some(g), "groupid")?, name.to_owned())
        }
        "history" => {
            let usage = "usage: history:friend:ID[:beforeseq[:limit]] or history:group:ID[:beforeseq[:limit]]";
            let mut parts = rest.ok_or(usage)?.split(':');
            let kind = parts.next().ok_or(usage)?;
            let target: i64 = id(parts.next(), "id")?;
            let with = match kind {
                "friend" | "user" => HistoryTarget::User(target.into()),
                "group" => HistoryTarget::Group(target.into()),
                _ => return Err(usage.to_owned()),
            };
            let before = parts
                .next()
                .filter(|s| !s.is_empty())
                .map(|s| id(Some(s), "beforeseq"))
                .transpose()?;
            let limit = parts
                .next()
                .map(|s| {
                    s.trim()
                        .parse::<u32>()
                        .map_err(|_| "limit must be a positive number".to_owned())
                })
                .transpose()?;
            Command::History {
                with,
                before,
                limit,
            }
        }
        "" => return Err("empty command; type help".to_owned()),
        other => return Err(format!("invalid input command {other:?}; type help")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupId, Seq, UserId};

    #[test]
    fn consent_commands_parse() {
        assert_eq!(
            parse("accept:7"),
            Ok(Command::AnswerFriend(UserId(7), true))
        );
        assert_eq!(
            parse("decline:7"),
            Ok(Command::AnswerFriend(UserId(7), false))
        );
        assert_eq!(
            parse("createprivategroup:club:us only"),
            Ok(Command::CreateGroup {
                name: "club".into(),
                desc: "us only".into(),
                private: true,
            })
        );
        assert_eq!(
            parse("approve:1073741900:3"),
            Ok(Command::AnswerRequest(
                GroupId(1_073_741_900),
                UserId(3),
                true
            ))
        );
        assert_eq!(
            parse("setrole:5:3:admin"),
            Ok(Command::SetRole(GroupId(5), UserId(3), "admin".into()))
        );
        assert_eq!(
            parse("renamegroup:5:new: name"),
            Ok(Command::RenameGroup(GroupId(5), "new: name".into()))
        );
        assert!(parse("invite:5").is_err());
        assert!(parse("setrole:5:3").is_err());
    }

    #[test]
    fn classic_commands_parse() {
        assert_eq!(
            parse("chat:2:hello: world"),
            Ok(Command::Chat {
                to: UserId(2),
                msg: "hello: world".into()
            })
        );
        assert_eq!(
            parse("groupchat:7:hi all\r\n"),
            Ok(Command::GroupChat {
                group: GroupId(7),
                msg: "hi all".into()
            })
        );
        assert_eq!(parse("addfriend:3"), Ok(Command::AddFriend(UserId(3))));
        assert_eq!(parse("delgroup:4"), Ok(Command::DelGroup(GroupId(4))));
        assert_eq!(
            parse("creategroup:rust:we like it"),
            Ok(Command::CreateGroup {
                name: "rust".into(),
                desc: "we like it".into(),
                private: false,
            })
        );
        assert_eq!(parse("loginout"), Ok(Command::Logout));
        assert_eq!(parse("devices"), Ok(Command::Devices));
        assert_eq!(parse("block:4"), Ok(Command::Block(UserId(4))));
        assert_eq!(parse("onlyfriends:on"), Ok(Command::OnlyFriends(true)));
        assert!(parse("onlyfriends:maybe").is_err());
        assert_eq!(
            parse("recall:friend:2:17"),
            Ok(Command::Recall {
                with: HistoryTarget::User(UserId(2)),
                seq: Seq(17)
            })
        );
        assert_eq!(
            parse("edit:group:5:9:at 6: not 5"),
            Ok(Command::Edit {
                with: HistoryTarget::Group(GroupId(5)),
                seq: Seq(9),
                msg: "at 6: not 5".into()
            })
        );
        assert_eq!(
            parse("logoutdevice:phone-1"),
            Ok(Command::LogoutDevice("phone-1".into()))
        );
        assert_eq!(
            parse("history:group:5:100:10"),
            Ok(Command::History {
                with: HistoryTarget::Group(GroupId(5)),
                before: Some(Seq(100)),
                limit: Some(10)
            })
        );
        assert_eq!(
            parse("history:friend:2"),
            Ok(Command::History {
                with: HistoryTarget::User(UserId(2)),
                before: None,
                limit: None
            })
        );
    }

    #[test]
    fn bad_commands_explain_themselves() {
        assert!(parse("chat:x:hi").is_err_and(|e| e.contains("number")));
        assert!(parse("chat:2").is_err_and(|e| e.contains("usage")));
        assert!(parse("fly:1").is_err_and(|e| e.contains("invalid")));
        assert!(parse("history:planet:1").is_err());
        assert!(parse("").is_err());
    }
}
