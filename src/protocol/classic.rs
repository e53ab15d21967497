//! What the original terminal client can read, and frames cut to fit it.
//!
//! The original client reads each frame with one `recv` into a zeroed
//! 1024-byte buffer and parses that buffer as one JSON document. A frame
//! longer than the buffer is cut in two and both halves fail to parse; a
//! frame of exactly 1024 bytes leaves no terminating NUL, so the parser runs
//! off the end of the buffer. Either crashes the client. So every frame a
//! classic session gets is at most [`MAX_FRAME`] bytes of JSON, plus our
//! newline, plus room for the NUL.
//!
//! A chat message too long for that arrives in parts, each a complete
//! message of the same conversation and `seq` whose text starts with
//! `(k/n) `, so the user reads all of it. Other frames lose trailing list
//! elements (and say `"more":true`); the login reply is built to fit by the
//! service itself ([`fit_login`]), since what it leaves out must follow as
//! pushes.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::replies::{ChatFrame, GroupEntry, LoggedIn};
use super::{ErrCode, Fail, Reply, msgid};
use crate::model::ChatMessage;

/// The original client's read buffer.
pub const READ_BUFFER: usize = 1024;

/// The longest JSON text sent to a classic session: with our newline it
/// stays one byte short of the buffer, so the buffer's last byte is the NUL
/// the client's parser needs.
pub const MAX_FRAME: usize = READ_BUFFER - 2;

/// Bytes `s` takes inside a JSON string as `serde_json` writes it.
pub fn escaped_len(s: &str) -> usize {
    s.chars().map(escaped_char_len).sum()
}

fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Cuts one frame for a classic session: returned as is when it fits;
/// a chat message in parts; another frame with trailing list elements
/// left out; and, if nothing can make it fit, an error notice in its place
/// (never a frame the client would crash on).
pub fn fit(frame: Bytes) -> Vec<Bytes> {
    if frame.len() <= MAX_FRAME {
        return vec![frame];
    }
    if let Some(chat) = ChatFrame::parse(&frame) {
        if let Some(parts) = split_chat(chat) {
            return parts;
        }
    } else if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&frame)
        && let Some(cut) = trim_lists(map)
    {
        return vec![cut];
    }
    let fail = Fail::new(
        ErrCode::FrameTooLong,
        "a reply too long for this client was left out",
    );
    vec![Reply::fail(msgid::ERROR, &fail).to_bytes()]
}

/// A chat message in parts of at most [`MAX_FRAME`] bytes, or `None` if
/// even an empty part would not fit (a sender name far beyond our limits).
fn split_chat(chat: ChatFrame<'static>) -> Option<Vec<Bytes>> {
    let text = chat.msg.clone().into_owned();
    let empty = ChatFrame {
        msg: "".into(),
        ..chat
    };
    let overhead = serde_json::to_vec(&empty).ok()?.len();
    // "(k/n) " with n at most the text's length: a safe upper bound.
    let digits = escaped_len(&text).max(1).to_string().len();
    let budget = MAX_FRAME.checked_sub(overhead + 2 * digits + 4)?;
    if budget < 8 {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, c) in text.char_indices() {
        let n = escaped_char_len(c);
        if used + n > budget {
            parts.push(&text[start..i]);
            (start, used) = (i, 0);
        }
        used += n;
    }
    parts.push(&text[start..]);
    let total = parts.len();
    parts
        .iter()
        .enumerate()
        .map(|(k, part)| {
            let part = ChatFrame {
                msg: format!("({}/{total}) {part}", k + 1).into(),
                ..empty.clone()
            };
            serde_json::to_vec(&part).ok().map(Bytes::from)
        })
        .collect()
}

/// Leaves out trailing elements of the frame's longest list until it fits,
/// and says so with `"more":true`; `None` if no list can be cut enough.
fn trim_lists(mut map: Map<String, Value>) -> Option<Bytes> {
    map.insert("more".into(), Value::Bool(true));
    loop {
        let text = serde_json::to_vec(&map).ok()?;
        if text.len() <= MAX_FRAME {
            return Some(Bytes::from(text));
        }
        let longest = map
            .iter_mut()
            // Offline messages are never cut here: the service fits them
            // and sends the rest as pushes, so none is counted as read.
            .filter(|(k, _)| k.as_str() != "offlinemsg")
            .filter_map(|(_, v)| v.as_array_mut())
            .filter(|a| !a.is_empty())
            .max_by_key(|a| a.len())?;
        // Halve a long list at once; one at a time near the end.
        let keep = if longest.len() > 16 {
            longest.len() / 2
        } else {
            longest.len() - 1
        };
        longest.truncate(keep);
    }
}

/// Fits a classic login reply into one read: friends first, then groups
/// (with as many of their members as fit), then as many of `messages`
/// (in the order given) as fit. Returns how many messages it carries; the
/// caller sends the rest as pushes. `reply` comes with its full lists and
/// no messages; what it had to leave out sets `more`.
pub fn fit_login(reply: &mut LoggedIn<'static>, messages: &[ChatMessage]) -> usize {
    let fits = |r: &LoggedIn<'static>| {
        Ok::<_, ()>(Reply::ok_with(msgid::LOGIN_ACK, r).to_bytes())
            .map(|t| t.len() + usize::from(!r.more) * r#","more":true"#.len() <= MAX_FRAME)
            .unwrap_or(false)
    };
    let friends = std::mem::take(&mut reply.friends);
    let groups = std::mem::take(&mut reply.groups);
    reply.offlinemsg.clear();
    let total_lists = friends.len() + groups.len();
    for f in friends {
        reply.friends.push(f);
        if !fits(reply) {
            reply.friends.pop();
            break;
        }
    }
    'groups: for g in groups {
        let members = g.users;
        reply.groups.push(GroupEntry {
            users: Vec::new(),
            ..g
        });
        if !fits(reply) {
            reply.groups.pop();
            break;
        }
        for m in members {
            let Some(entry) = reply.groups.last_mut() else {
                break 'groups;
            };
            entry.users.push(m);
            if !fits(reply) {
                if let Some(entry) = reply.groups.last_mut() {
                    entry.users.pop();
                }
                reply.more = true;
                break 'groups;
            }
        }
    }
    if reply.friends.len() + reply.groups.len() < total_lists {
        reply.more = true;
    }
    let mut carried = 0;
    for m in messages {
        reply.offlinemsg.push(ChatFrame::of(m).into_owned());
        if !fits(reply) {
            reply.offlinemsg.pop();
            break;
        }
        carried += 1;
    }
    carried
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conversation;
    use crate::model::{GroupId, Seq, UserId};
    use crate::protocol::replies::{Contact, State};

    fn message(seq: i64, body: &str) -> ChatMessage {
        ChatMessage {
            conv: Conversation::direct(UserId(1), UserId(2)),
            seq: Seq(seq),
            sender: UserId(1),
            sender_name: "alice".into(),
            body: body.into(),
            ts_ms: 1_700_000_000_000,
            kind: Default::default(),
        }
    }

    #[test]
    fn escaped_lengths_match_what_serde_json_writes() {
        for s in [
            "plain",
            "引号\"和\\反斜杠",
            "tab\tnew\nline\u{1}",
            "emoji 👋🏽",
            "",
        ] {
            let written = serde_json::to_string(s).expect("json");
            assert_eq!(escaped_len(s) + 2, written.len(), "{s:?}");
        }
    }

    #[test]
    fn a_long_message_arrives_whole_in_parts_that_each_fit() {
        let body: String = "长消息 with \"quotes\" and 👋 and \u{1} "
            .chars()
            .cycle()
            .take(3000)
            .collect();
        let m = message(7, &body);
        let frame = crate::protocol::render_push(&m);
        assert!(frame.len() > MAX_FRAME);
        let parts = fit(frame);
        assert!(parts.len() >= 3, "{}", parts.len());
        let mut rebuilt = String::new();
        for (k, p) in parts.iter().enumerate() {
            assert!(p.len() <= MAX_FRAME, "part {k}: {}", p.len());
            let chat = ChatFrame::parse(p).expect("each part is a chat message");
            assert_eq!(
                (chat.seq, chat.id, chat.toid),
                (Seq(7), UserId(1), Some(UserId(2)))
            );
            let prefix = format!("({}/{}) ", k + 1, parts.len());
            let text = chat.msg.strip_prefix(&prefix).expect("numbered part");
            rebuilt.push_str(text);
        }
        assert_eq!(rebuilt, body);
        let short = crate::protocol::render_push(&message(8, "hi"));
        assert_eq!(fit(short.clone()), vec![short], "what fits is untouched");
    }

    #[test]
    fn other_frames_lose_trailing_list_elements_or_become_a_notice() {
        let friends: Vec<Value> = (0..100)
            .map(|i| serde_json::json!({"id": i, "name": format!("friend{i}"), "state": "online"}))
            .collect();
        let frame = serde_json::json!({"msgid": 113, "errno": 0, "friends": friends});
        let cut = fit(Bytes::from(serde_json::to_vec(&frame).expect("json")));
        assert_eq!(cut.len(), 1);
        assert!(cut[0].len() <= MAX_FRAME);
        let v: Value = serde_json::from_slice(&cut[0]).expect("json");
        assert_eq!(v["more"], true);
        assert_eq!(v["friends"][0]["name"], "friend0", "the first ones stay");
        let blob = serde_json::json!({"msgid": 115, "errno": 0, "node": "n".repeat(2000)});
        let cut = fit(Bytes::from(serde_json::to_vec(&blob).expect("json")));
        let v: Value = serde_json::from_slice(&cut[0]).expect("json");
        assert_eq!(
            (v["msgid"].as_i64(), v["errno"].as_i64()),
            (Some(100), Some(14))
        );
    }

    #[test]
    fn a_login_reply_carries_what_fits_and_lists_come_first() {
        let contact = |id| Contact {
            id: UserId(id),
            name: format!("user{id}"),
            state: State::Offline,
            role: None,
        };
        let mut reply = LoggedIn {
            id: UserId(2),
            name: "bob".into(),
            offlinemsg: Vec::new(),
            friends: vec![contact(1), contact(3)],
            groups: vec![GroupEntry {
                id: GroupId(9),
                groupname: "g".into(),
                groupdesc: "d".into(),
                users: (10..60).map(contact).collect(),
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
        let messages: Vec<ChatMessage> = (1..=20).map(|s| message(s, "hello there")).collect();
        let carried = fit_login(&mut reply, &messages);
        let text = Reply::ok_with(msgid::LOGIN_ACK, &reply).to_bytes();
        assert!(text.len() <= MAX_FRAME, "{}", text.len());
        assert_eq!(reply.friends.len(), 2);
        assert_eq!(reply.groups.len(), 1);
        assert!(reply.groups[0].users.len() < 50 && reply.more);
        assert_eq!(carried, 0, "the lists filled the read");
        // No lists: messages fill it, in order.
        let mut reply = LoggedIn {
            friends: Vec::new(),
            groups: Vec::new(),
            more: false,
            device: None,
            devices: Vec::new(),
            reads: Vec::new(),
            blocked: Vec::new(),
            only_friends: false,
            ..reply
        };
        let carried = fit_login(&mut reply, &messages);
        assert!((3..20).contains(&carried), "{carried}");
        assert!(!reply.more);
        let seqs: Vec<i64> = reply.offlinemsg.iter().map(|m| m.seq.0).collect();
        assert_eq!(seqs, (1..=carried as i64).collect::<Vec<_>>());
        let text = Reply::ok_with(msgid::LOGIN_ACK, &reply).to_bytes();
        assert!(text.len() <= MAX_FRAME, "{}", text.len());
    }
}
