//! Many devices per user, as a user with a phone and a laptop sees it: both
//! online together, each gets what is sent to the user, each gets what the
//! other sent (with the same `seq`), each catches up on its own, a login
//! replaces only the same device, and one device can log another out. On
//! one node (either backend), and across two nodes through Redis.

mod common;

use chat::client::{Client, ClientError, LoginInfo, Message};
use chat::config::Config;
use chat::model::UserId;
use chat::protocol::HistoryTarget;
use common::{TestServer, assert_quiet, next_other, pw, within};

/// Logs `name` (id `id`) in over `c` as `device` (`None`: the classic
/// device).
async fn as_device(
    mut c: Client,
    id: UserId,
    name: &str,
    device: Option<&str>,
) -> (Client, LoginInfo) {
    c.set_device(device);
    let info = within(c.login(id, &pw(name))).await.expect("login");
    (c, info)
}

/// The next chat message, skipping notices.
async fn next_msg(c: &mut Client) -> Message {
    within(c.next_message()).await.expect("connection closed")
}

fn errno(e: ClientError) -> Option<i64> {
    e.errno()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_devices_are_online_together_and_each_gets_everything() {
    let server = TestServer::start_with(Config {
        max_devices: 3,
        ..Config::default()
    })
    .await;
    let alice = server.register("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    let (mut phone, _) = as_device(server.client().await, alice, "alice", Some("phone")).await;
    let (mut laptop, info) = as_device(server.client().await, alice, "alice", Some("laptop")).await;
    // the login reply lists the devices, this one marked, the phone online
    let listed: Vec<(&str, bool, bool)> = info
        .devices
        .iter()
        .map(|d| (d.device.as_str(), d.online, d.current))
        .collect();
    assert!(listed.contains(&("laptop", true, true)), "{listed:?}");
    assert!(listed.contains(&("phone", true, false)), "{listed:?}");

    // to the user: both devices, one seq
    let sent = bob.chat(alice, "hello alice").await.expect("send");
    let (p, l) = (next_msg(&mut phone).await, next_msg(&mut laptop).await);
    assert_eq!((p.seq, l.seq), (sent.seq, sent.seq));
    assert_eq!(p.msg, "hello alice");

    // from one device: the peer and the other device, never back to itself
    let mine = phone.chat(bob_id, "from my phone").await.expect("send");
    let synced = next_msg(&mut laptop).await;
    assert_eq!(
        (synced.from, synced.to, synced.seq, synced.msg.as_str()),
        (alice, Some(bob_id), mine.seq, "from my phone")
    );
    assert_eq!(
        synced.conversation(alice),
        HistoryTarget::User(bob_id),
        "the laptop files it under bob"
    );
    assert_eq!(next_msg(&mut bob).await.seq, mine.seq);
    assert_quiet(&mut phone).await;

    // groups: a group made on the phone is known to the laptop at once
    let g = phone.create_group("family", "").await.expect("group");
    let membership = next_other(&mut laptop).await;
    assert_eq!(
        (membership["msgid"].as_i64(), membership["groupid"].as_i64()),
        (Some(22), Some(g.0))
    );
    bob.join_group(g).await.expect("join");
    let from_bob = bob.group_chat(g, "hi all").await.expect("send");
    assert_eq!(next_msg(&mut phone).await.seq, from_bob.seq);
    assert_eq!(next_msg(&mut laptop).await.seq, from_bob.seq);
    let from_laptop = laptop.group_chat(g, "hi bob").await.expect("send");
    assert_eq!(next_msg(&mut phone).await.seq, from_laptop.seq);
    assert_eq!(next_msg(&mut bob).await.seq, from_laptop.seq);
    assert_quiet(&mut laptop).await;

    // a login of the same device replaces that device only
    let (mut phone2, _) = as_device(server.client().await, alice, "alice", Some("phone")).await;
    let notice = next_other(&mut phone).await;
    assert_eq!(notice["errno"], 54, "{notice}");
    let sent = bob.chat(alice, "still there?").await.expect("send");
    assert_eq!(next_msg(&mut laptop).await.seq, sent.seq);
    assert_eq!(next_msg(&mut phone2).await.seq, sent.seq);

    // each device catches up from its own position: the laptop goes away,
    // the phone reads on, the laptop comes back to what it missed
    laptop.logout().await.expect("logout");
    let missed = bob
        .chat(alice, "while the laptop was off")
        .await
        .expect("send");
    assert_eq!(next_msg(&mut phone2).await.seq, missed.seq);
    let (mut laptop, info) = as_device(server.client().await, alice, "alice", Some("laptop")).await;
    let offline: Vec<_> = info.offline.iter().map(|m| m.seq).collect();
    assert_eq!(offline, [missed.seq], "the laptop's own backlog");

    // a classic login (no device) is one more device, not a takeover
    let (mut classic, _) = as_device(server.client().await, alice, "alice", None).await;
    let sent = bob.chat(alice, "three devices").await.expect("send");
    for c in [&mut phone2, &mut laptop, &mut classic] {
        assert_eq!(next_msg(c).await.seq, sent.seq);
    }

    // bad device names are refused before anything happens
    for bad in ["", "has space", "é", &"x".repeat(65)] {
        let mut c = server.client().await;
        c.set_device(Some(bad));
        let e = c.login(alice, &pw("alice")).await.expect_err("refused");
        assert_eq!(errno(e), Some(13), "{bad:?}");
    }
    // a token resumes the device it was made for, and no other
    let token = info.token.clone().expect("token");
    let mut c = server.client().await;
    c.set_device(Some("phone"));
    assert_eq!(
        errno(c.resume(&token).await.expect_err("other device")),
        Some(1)
    );

    // one device logs another out: its session ends (errno 63), its
    // token is dead, and it is no longer listed
    phone2
        .device_logout("laptop")
        .await
        .expect("log the laptop out");
    let notice = next_other(&mut laptop).await;
    assert_eq!(notice["errno"], 63, "{notice}");
    let mut c = server.client().await;
    c.set_device(Some("laptop"));
    assert_eq!(errno(c.resume(&token).await.expect_err("revoked")), Some(1));
    let names: Vec<String> = phone2
        .devices()
        .await
        .expect("devices")
        .into_iter()
        .map(|d| d.device)
        .collect();
    assert!(!names.contains(&"laptop".to_owned()), "{names:?}");
    assert_eq!(
        phone2.device_logout("phone").await.map_err(errno).err(),
        Some(Some(33)),
        "not oneself"
    );
    assert_eq!(
        phone2.device_logout("tablet").await.map_err(errno).err(),
        Some(Some(30)),
        "unknown"
    );

    // past the limit (3 here) the device unused the longest is forgotten,
    // and its session ends
    let (_tablet, _) = as_device(server.client().await, alice, "alice", Some("tablet")).await;
    let (_watch, info) = as_device(server.client().await, alice, "alice", Some("watch")).await;
    assert_eq!(info.devices.len(), 3, "{:?}", info.devices);
    assert!(
        info.devices.iter().all(|d| d.device != "phone"),
        "{:?}",
        info.devices
    );
    let notice = next_other(&mut phone2).await;
    assert_eq!(notice["errno"], 63, "{notice}");
    let _ = classic;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_on_two_nodes_both_get_everything() {
    let common::nodes::TwoNodes { n1, n2, .. } = &common::nodes::two_nodes().await;
    let mut c = n1.client().await;
    let alice = c.register("alice", &pw("alice")).await.expect("register");
    let bob = c.register("bob", &pw("bob")).await.expect("register");
    let (mut phone, _) = as_device(n1.client().await, alice, "alice", Some("phone")).await;
    let (mut laptop, _) = as_device(n2.client().await, alice, "alice", Some("laptop")).await;
    let (mut b1, _) = as_device(n1.client().await, bob, "bob", None).await;

    // bob on n1: alice's phone beside him and her laptop on n2; the
    // phone's node learns of the laptop a moment after its login
    let sent = b1.chat(alice, "to both").await.expect("send");
    assert_eq!(next_msg(&mut phone).await.seq, sent.seq);
    assert_eq!(next_msg(&mut laptop).await.seq, sent.seq);
    for n in 0..20 {
        let s = b1.chat(alice, &format!("m{n}")).await.expect("send");
        assert_eq!(next_msg(&mut phone).await.seq, s.seq);
        assert_eq!(next_msg(&mut laptop).await.seq, s.seq);
    }

    // self-sync across nodes, both ways
    let mine = phone.chat(bob, "from n1").await.expect("send");
    assert_eq!(next_msg(&mut laptop).await.seq, mine.seq);
    assert_eq!(next_msg(&mut b1).await.seq, mine.seq);
    let mine = laptop.chat(bob, "from n2").await.expect("send");
    assert_eq!(next_msg(&mut phone).await.seq, mine.seq);
    assert_eq!(next_msg(&mut b1).await.seq, mine.seq);
    assert_quiet(&mut laptop).await;

    // a group made on n2 reaches the phone on n1
    let g = laptop.create_group("two nodes", "").await.expect("group");
    let membership = next_other(&mut phone).await;
    assert_eq!(membership["groupid"].as_i64(), Some(g.0), "{membership}");
    b1.join_group(g).await.expect("join");
    let s = b1.group_chat(g, "in the group").await.expect("send");
    assert_eq!(next_msg(&mut phone).await.seq, s.seq);
    assert_eq!(next_msg(&mut laptop).await.seq, s.seq);

    // one device leaves, the other stays served
    phone.logout().await.expect("logout");
    let s = b1.chat(alice, "laptop only").await.expect("send");
    assert_eq!(next_msg(&mut laptop).await.seq, s.seq);

    // logged out from n1, the laptop on n2 goes
    let (mut phone, _) = as_device(n1.client().await, alice, "alice", Some("phone")).await;
    phone.device_logout("laptop").await.expect("logout laptop");
    let notice = next_other(&mut laptop).await;
    assert_eq!(notice["errno"], 63, "{notice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_on_one_device_clears_the_others_and_ticks_the_peer() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    let (mut phone, _) = as_device(server.client().await, alice, "alice", Some("phone")).await;
    let (laptop, _) = as_device(server.client().await, alice, "alice", Some("laptop")).await;
    drop(laptop);
    let mut last = chat::model::Seq(0);
    for n in 0..3 {
        last = bob.chat(alice, &format!("m{n}")).await.expect("send").seq;
        next_msg(&mut phone).await;
    }
    // the laptop, offline, sees three unread at login
    let (mut laptop, info) = as_device(server.client().await, alice, "alice", Some("laptop")).await;
    let unread: Vec<(Option<UserId>, u32)> =
        info.reads.iter().map(|r| (r.toid, r.unread)).collect();
    assert_eq!(unread, [(Some(bob_id), 3)]);

    // read on the phone: the laptop is told (unread 0), and bob gets a tick
    let bob_conv = HistoryTarget::User(bob_id);
    assert_eq!(phone.read(bob_conv, last, false).await.expect("read"), last);
    let mine = next_other(&mut laptop).await;
    assert_eq!(
        (
            mine["msgid"].as_i64(),
            mine["id"].as_i64(),
            mine["toid"].as_i64(),
            mine["seq"].as_i64()
        ),
        (Some(24), Some(alice.0), Some(bob_id.0), Some(last.0)),
        "{mine}"
    );
    let tick = next_other(&mut bob).await;
    assert_eq!(
        (tick["msgid"].as_i64(), tick["seq"].as_i64()),
        (Some(24), Some(last.0)),
        "{tick}"
    );
    let (_, info) = as_device(server.client().await, alice, "alice", Some("tablet")).await;
    assert!(info.reads.iter().all(|r| r.unread == 0), "{:?}", info.reads);
    let (_, info) = as_device(server.client().await, bob_id, "bob", Some("b2")).await;
    assert_eq!(
        info.reads
            .iter()
            .find(|r| r.toid == Some(alice))
            .and_then(|r| r.peer_read),
        Some(last),
        "bob sees how far alice read: {:?}",
        info.reads
    );

    // never back, never past the end; private reads tell only oneself
    assert_eq!(
        phone
            .read(bob_conv, chat::model::Seq(1), false)
            .await
            .expect("read"),
        last
    );
    let next = bob.chat(alice, "one more").await.expect("send").seq;
    assert_eq!(
        phone
            .read(bob_conv, chat::model::Seq(999), true)
            .await
            .expect("read"),
        next,
        "clamped to the last message"
    );
    let mine = next_other(&mut laptop).await;
    assert_eq!(mine["seq"].as_i64(), Some(next.0), "{mine}");
    // bob gets no tick for a private read: his next notice is the typing
    phone.typing(bob_conv).await.expect("typing");
    let typing = next_other(&mut bob).await;
    assert_eq!(
        (typing["msgid"].as_i64(), typing["id"].as_i64()),
        (Some(23), Some(alice.0)),
        "{typing}"
    );

    // refused: a group one is not in, oneself, a conversation that never
    // began, and a typing flood
    let g = bob.create_group("not alice's", "").await.expect("group");
    let e = phone
        .read(HistoryTarget::Group(g), chat::model::Seq(1), false)
        .await;
    assert_eq!(e.map_err(|e| e.errno()).err(), Some(Some(31)));
    let e = phone
        .read(HistoryTarget::User(alice), chat::model::Seq(1), false)
        .await;
    assert_eq!(e.map_err(|e| e.errno()).err(), Some(Some(33)));
    let nobody = server.register("nobody").await;
    let e = phone
        .read(HistoryTarget::User(nobody), chat::model::Seq(1), false)
        .await;
    assert_eq!(e.map_err(|e| e.errno()).err(), Some(Some(30)));
    for _ in 0..20 {
        phone.typing(bob_conv).await.expect("typing");
    }
    let refused = next_other(&mut phone).await;
    assert_eq!(
        (refused["msgid"].as_i64(), refused["errno"].as_i64()),
        (Some(123), Some(57)),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_and_edit_reach_every_device_and_history_shows_the_current_version() {
    let server = TestServer::start_with(Config {
        recall_window: std::time::Duration::from_secs(3),
        ..Config::default()
    })
    .await;
    let alice = server.register("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    let (mut phone, _) = as_device(server.client().await, alice, "alice", Some("phone")).await;
    let (mut laptop, _) = as_device(server.client().await, alice, "alice", Some("laptop")).await;
    let with_alice = HistoryTarget::User(alice);
    let with_bob = HistoryTarget::User(bob_id);

    let typo = bob.chat(alice, "see you at 5").await.expect("send").seq;
    let mistake = bob.chat(alice, "my pin is 1234").await.expect("send").seq;
    for device in [&mut phone, &mut laptop] {
        next_msg(device).await;
        next_msg(device).await;
    }
    // the laptop goes away (with both) before the changes
    drop(laptop);

    let edit = bob
        .edit(with_alice, typo, "see you at 6")
        .await
        .expect("edit");
    let recall = bob.recall(with_alice, mistake).await.expect("recall");
    let e = next_msg(&mut phone).await;
    assert_eq!(
        (e.seq, e.kind, e.text.as_deref()),
        (
            edit,
            chat::model::MsgKind::EditOf(typo),
            Some("see you at 6")
        )
    );
    let r = next_msg(&mut phone).await;
    assert_eq!(
        (r.seq, r.kind),
        (recall, chat::model::MsgKind::RecallOf(mistake))
    );

    // the laptop (which had both messages) gets the events when it is back
    let (_laptop, info) = as_device(server.client().await, alice, "alice", Some("laptop")).await;
    let got: Vec<_> = info
        .offline
        .iter()
        .map(|m| (m.seq, m.kind, m.msg.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                edit,
                chat::model::MsgKind::EditOf(typo),
                format!("[edited message #{typo}] see you at 6")
            ),
            (
                recall,
                chat::model::MsgKind::RecallOf(mistake),
                format!("[recalled message #{mistake}]")
            ),
        ]
    );
    // a new device starts where the others are: nothing is offline for it
    let (_tablet, info) = as_device(server.client().await, alice, "alice", Some("tablet")).await;
    assert!(
        info.offline.is_empty(),
        "a new device starts where the others are"
    );
    // history shows the current version; the recalled text is gone
    let history = phone.history(with_bob, None, None).await.expect("history");
    let texts: Vec<&str> = history.iter().map(|m| m.msg.as_str()).collect();
    assert!(texts.contains(&"see you at 6"), "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("1234")), "{texts:?}");

    // refused: someone else's message, a recalled one, an event, one that
    // does not exist, and a recall after the window
    let mine = phone.chat(bob_id, "hello bob").await.expect("send").seq;
    let code = |r: Result<chat::model::Seq, ClientError>| r.map_err(|e| e.errno()).err().flatten();
    assert_eq!(
        code(phone.recall(with_bob, typo).await),
        Some(31),
        "bob's message"
    );
    assert_eq!(code(phone.edit(with_bob, typo, "x").await), Some(31));
    assert_eq!(
        code(bob.edit(with_alice, mistake, "x").await),
        Some(65),
        "recalled"
    );
    assert_eq!(code(bob.recall(with_alice, mistake).await), Some(65));
    assert_eq!(
        code(bob.recall(with_alice, edit).await),
        Some(30),
        "an event"
    );
    assert_eq!(
        code(bob.recall(with_alice, chat::model::Seq(999)).await),
        Some(30)
    );
    assert_eq!(
        code(bob.edit(with_alice, typo, "").await),
        Some(13),
        "empty text"
    );
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    assert_eq!(
        code(phone.recall(with_bob, mine).await),
        Some(64),
        "too late"
    );
    assert!(
        phone.edit(with_bob, mine, "hello, bob").await.is_ok(),
        "edits have a day"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_creator_removes_any_message_and_members_cannot() {
    let server = TestServer::start().await;
    let (mut owner, _) = server.user("owner").await;
    let (mut member, _) = server.user("member").await;
    let (mut other, _) = server.user("other").await;
    let g = owner.create_group("moderated", "").await.expect("group");
    member.join_group(g).await.expect("join");
    other.join_group(g).await.expect("join");
    let spam = member
        .group_chat(g, "buy my stuff")
        .await
        .expect("send")
        .seq;
    let with = HistoryTarget::Group(g);
    assert_eq!(
        other.recall(with, spam).await.map_err(|e| e.errno()).err(),
        Some(Some(31)),
        "a member cannot remove another's message"
    );
    let event = owner.recall(with, spam).await.expect("the creator can");
    loop {
        let m = next_msg(&mut other).await;
        if m.seq == event {
            assert_eq!(m.kind, chat::model::MsgKind::RecallOf(spam));
            break;
        }
    }
}
