//! One-to-one and group chat, offline delivery, history, restart.

mod common;

use chat::model::{GroupId, UserId};
use chat::protocol::HistoryTarget;
use common::{TestServer, assert_quiet, pw, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_live_and_offline_each_delivered_once() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;

    let sent = a.chat(bob, "hi bob").await.expect("send");
    assert_eq!(sent.seq.0, 1);
    let m = within(b.next_message()).await.expect("message");
    assert_eq!(
        (m.from, m.name.as_str(), m.to, m.msg.as_str(), m.seq.0),
        (alice, "alice", Some(bob), "hi bob", 1)
    );
    assert_eq!(m.group, None);
    assert_eq!(m.time.len(), 19, "YYYY-MM-DD HH:MM:SS: {:?}", m.time);
    assert_eq!(m.ts, sent.ts);
    assert_eq!(
        b.chat(alice, "hi alice").await.expect("reply").seq,
        2,
        "one sequence per conversation"
    );
    assert_eq!(
        within(a.next_message()).await.expect("message").msg,
        "hi alice"
    );
    assert_quiet(&mut a).await; // no echo of one's own messages

    // bob goes offline; messages wait for him, in order
    b.logout().await.expect("logout");
    a.chat(bob, "first").await.expect("send");
    a.chat(bob, "second").await.expect("send");
    assert_eq!(
        a.chat(UserId(99_999), "nobody").await.unwrap_err().errno(),
        Some(30)
    );
    assert_eq!(a.chat(alice, "me").await.unwrap_err().errno(), Some(33));
    assert_quiet(&mut b).await;
    let info = b.login(bob, &pw("bob")).await.expect("login");
    let offline: Vec<_> = info
        .offline
        .iter()
        .map(|m| (m.msg.as_str(), m.seq.0, m.from))
        .collect();
    assert_eq!(offline, vec![("first", 3, alice), ("second", 4, alice)]);
    assert_quiet(&mut b).await; // not a second time as pushes

    // and never again
    b.logout().await.expect("logout");
    let info = b.login(bob, &pw("bob")).await.expect("login");
    assert!(info.offline.is_empty(), "{:?}", info.offline);

    // a user who has never logged in gets them at first login
    let carol = s.register("carol").await;
    a.chat(carol, "welcome").await.expect("send");
    let mut c = s.client().await;
    let info = c.login(carol, &pw("carol")).await.expect("login");
    assert_eq!(info.offline.len(), 1);
    assert_eq!(info.offline[0].msg, "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chat_reaches_every_member_but_the_sender() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;
    let (mut c, _carol) = s.user("carol").await;
    let dave = s.register("dave").await;

    let g = a
        .create_group("rustaceans", "we like rust")
        .await
        .expect("create");
    assert_eq!(
        b.create_group("rustaceans", "").await.unwrap_err().errno(),
        Some(32)
    );
    b.join_group(g).await.expect("join");
    assert_eq!(b.join_group(g).await.unwrap_err().errno(), Some(32));
    assert_eq!(
        b.join_group(GroupId(4242)).await.unwrap_err().errno(),
        Some(30)
    );

    // dave joins, then goes offline
    let mut d = s.client().await;
    d.login(dave, &pw("dave")).await.expect("login");
    d.join_group(g).await.expect("join");
    d.logout().await.expect("logout");

    let sent = a.group_chat(g, "hello group").await.expect("send");
    let m = within(b.next_message()).await.expect("message");
    assert_eq!(
        (m.group, m.from, m.msg.as_str(), m.seq.0),
        (Some(g), alice, "hello group", sent.seq.0)
    );
    assert_quiet(&mut a).await;
    assert_eq!(
        c.group_chat(g, "let me in").await.unwrap_err().errno(),
        Some(31),
        "non-members may not post"
    );
    assert_eq!(
        c.group_chat(GroupId(777), "x").await.unwrap_err().errno(),
        Some(30)
    );
    assert_quiet(&mut b).await;

    // the group as listed at login: members with roles and presence
    let info = d.login(dave, &pw("dave")).await.expect("login");
    assert_eq!(info.offline.len(), 1, "offline group message");
    assert_eq!(info.offline[0].group, Some(g));
    let group = info
        .groups
        .iter()
        .find(|x| x.id == g)
        .expect("group listed");
    assert_eq!(
        (group.name.as_str(), group.desc.as_str()),
        ("rustaceans", "we like rust")
    );
    let members: Vec<_> = group
        .members
        .iter()
        .map(|m| (m.id, m.online, m.role.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        members,
        vec![
            (alice, true, "creator"),
            (bob, true, "normal"),
            (dave, true, "normal")
        ]
    );

    // leaving stops delivery
    b.leave_group(g).await.expect("leave");
    assert_eq!(b.leave_group(g).await.unwrap_err().errno(), Some(30));
    a.group_chat(g, "bob left").await.expect("send");
    assert_eq!(
        within(d.next_message()).await.expect("message").msg,
        "bob left"
    );
    assert_quiet(&mut b).await;
    assert_eq!(
        b.group_chat(g, "back?").await.unwrap_err().errno(),
        Some(31)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_backwards_newest_first() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;
    for i in 1..=25 {
        if i % 2 == 0 {
            b.chat(alice, &format!("m{i}")).await.expect("send");
        } else {
            a.chat(bob, &format!("m{i}")).await.expect("send");
        }
    }
    let page = a
        .history(HistoryTarget::User(bob), None, Some(10))
        .await
        .expect("history");
    assert_eq!(
        page.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (16..=25).rev().collect::<Vec<_>>()
    );
    assert_eq!(page[0].msg, "m25");
    let page = a
        .history(
            HistoryTarget::User(bob),
            Some(chat::model::Seq(16)),
            Some(10),
        )
        .await
        .expect("history");
    assert_eq!(
        page.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (6..=15).rev().collect::<Vec<_>>()
    );
    let page = b
        .history(HistoryTarget::User(alice), Some(chat::model::Seq(6)), None)
        .await
        .expect("history");
    assert_eq!(
        page.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    let page = b
        .history(HistoryTarget::User(alice), Some(chat::model::Seq(1)), None)
        .await
        .expect("history");
    assert!(page.is_empty());
    // default page size is 20
    assert_eq!(
        a.history(HistoryTarget::User(bob), None, None)
            .await
            .expect("history")
            .len(),
        20
    );
    assert_eq!(
        a.history(HistoryTarget::User(bob), None, Some(0))
            .await
            .unwrap_err()
            .errno(),
        Some(13)
    );

    // group history is for members only
    let g = a.create_group("g", "").await.expect("group");
    a.group_chat(g, "g1").await.expect("send");
    a.group_chat(g, "g2").await.expect("send");
    assert_eq!(
        b.history(HistoryTarget::Group(g), None, None)
            .await
            .unwrap_err()
            .errno(),
        Some(31)
    );
    b.join_group(g).await.expect("join");
    let page = b
        .history(HistoryTarget::Group(g), None, None)
        .await
        .expect("history");
    assert_eq!(
        page.iter().map(|m| m.msg.as_str()).collect::<Vec<_>>(),
        vec!["g2", "g1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_senders_each_member_gets_every_message_once_in_order() {
    let s = TestServer::start().await;
    let names = ["u0", "u1", "u2", "u3"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(s.user(n).await);
    }
    let g = clients[0].0.create_group("busy", "").await.expect("group");
    for (c, _) in clients.iter_mut().skip(1) {
        c.join_group(g).await.expect("join");
    }
    const PER_SENDER: usize = 50;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, (mut c, id)) in clients.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        receivers.push((id, rx));
        senders.push(tokio::spawn(async move {
            for k in 0..PER_SENDER {
                c.group_chat(g, &format!("{i}:{k}")).await.expect("send");
            }
            // then collect what the others sent
            let mut got = Vec::new();
            while got.len() < 3 * PER_SENDER {
                let m = within(c.next_message()).await.expect("message");
                got.push((m.seq.0, m.from, m.msg));
            }
            let _ = tx.send(got);
            c
        }));
    }
    for (id, rx) in receivers {
        let got = within(rx).await.expect("results");
        let seqs: Vec<_> = got.iter().map(|m| m.0).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seqs, sorted, "user {id}: in order, no duplicates");
        assert!(got.iter().all(|m| m.1 != id), "no echo");
        // per sender, messages arrive in the order they were sent
        for sender in 0..4 {
            let mine: Vec<usize> = got
                .iter()
                .filter_map(|m| {
                    m.2.strip_prefix(&format!("{sender}:"))
                        .and_then(|k| k.parse().ok())
                })
                .collect();
            if !mine.is_empty() {
                assert_eq!(mine, (0..PER_SENDER).collect::<Vec<_>>());
            }
        }
    }
    for t in senders {
        let mut c = within(t).await.expect("sender");
        assert_quiet(&mut c).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_users_friends_groups_and_undelivered_messages() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;
    common::befriend(&mut a, alice, &mut b, bob).await;
    let g = a.create_group("team", "the team").await.expect("group");
    b.join_group(g).await.expect("join");
    b.logout().await.expect("logout");
    a.chat(bob, "while you were away").await.expect("send");
    a.group_chat(g, "group news").await.expect("send");

    let s = s.restart().await;
    // clients of the old server were told and disconnected
    let notice = common::next_other(&mut a).await;
    assert_eq!(notice["errno"], 53, "{notice}");
    assert!(within(a.next_push()).await.is_none(), "connection closed");

    let mut b = s.client().await;
    let info = b.login(bob, &pw("bob")).await.expect("login after restart");
    assert_eq!(
        info.friends.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![alice]
    );
    assert_eq!(
        info.groups.iter().map(|g| g.id).collect::<Vec<_>>(),
        vec![g]
    );
    let mut offline: Vec<_> = info.offline.iter().map(|m| m.msg.as_str()).collect();
    offline.sort_unstable();
    assert_eq!(offline, vec!["group news", "while you were away"]);
    let mut a = s.client().await;
    a.login(alice, &pw("alice")).await.expect("alice login");
    assert_eq!(
        a.chat(bob, "again").await.expect("send").seq,
        2,
        "sequence continues"
    );
    assert_eq!(within(b.next_message()).await.expect("live").msg, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_a_page_arrives_in_order_exactly_once() {
    let s = TestServer::start_with(chat::config::Config {
        offline_page: 3,
        ..chat::config::Config::default()
    })
    .await;
    let (mut a, alice) = s.user("alice").await;
    let (mut c, carol) = s.user("carol").await;
    let bob = s.register("bob").await;
    for i in 0..5 {
        a.chat(bob, &format!("a{i}")).await.expect("send");
        c.chat(bob, &format!("c{i}")).await.expect("send");
    }
    let mut b = s.client().await;
    let info = b.login(bob, &pw("bob")).await.expect("login");
    assert_eq!(info.offline.len(), 3, "one page in the login reply");
    let mut got: Vec<_> = info
        .offline
        .iter()
        .map(|m| (m.from, m.seq.0, m.msg.clone()))
        .collect();
    while got.len() < 10 {
        let m = within(b.next_message()).await.expect("rest of the backlog");
        got.push((m.from, m.seq.0, m.msg));
    }
    assert_quiet(&mut b).await;
    for (sender, prefix) in [(alice, "a"), (carol, "c")] {
        let mine: Vec<_> = got
            .iter()
            .filter(|m| m.0 == sender)
            .map(|m| (m.1, m.2.clone()))
            .collect();
        let want: Vec<_> = (0..5).map(|i| (i + 1, format!("{prefix}{i}"))).collect();
        assert_eq!(mine, want, "from {sender}: all, in order, once");
    }
    // live messages still flow, and nothing comes twice after a relogin
    a.chat(bob, "live").await.expect("send");
    assert_eq!(within(b.next_message()).await.expect("live").msg, "live");
    b.logout().await.expect("logout");
    let info = b.login(bob, &pw("bob")).await.expect("login");
    assert!(info.offline.is_empty(), "{:?}", info.offline);
    assert_quiet(&mut b).await;
}

/// The next PRESENCE push (msgid 19), skipping chat messages.
async fn next_presence(c: &mut chat::client::Client) -> serde_json::Value {
    loop {
        match within(c.next_push()).await.expect("closed") {
            chat::client::Push::Other(v) if v["msgid"] == 19 => return v,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_and_small_groups_hear_when_someone_comes_and_goes() {
    let server = TestServer::start().await;
    let (mut bob, bob_id) = server.user("presence_bob").await;
    let (mut carol, _) = server.user("presence_carol").await;
    let alice = server.register("presence_alice").await;
    let mut a = server.client().await;
    a.login(alice, &pw("presence_alice")).await.expect("login");
    // New friends learn at once whether the other is online: bob from
    // his answer, alice from a presence push.
    assert!(a.add_friend(bob_id).await.expect("ask"));
    let answered = bob.answer_friend(alice, true).await.expect("accept");
    assert_eq!(answered.state, Some(chat::protocol::replies::State::Online));
    let p = next_presence(&mut a).await;
    assert_eq!(
        (p["id"].as_i64(), p["state"].as_str()),
        (Some(bob_id.0), Some("online"))
    );
    let g = a.create_group("presence", "").await.expect("group");
    carol.join_group(g).await.expect("join");
    // Contacts are read again at logout: carol, who joined since, hears too.
    a.logout().await.expect("logout");
    for c in [&mut bob, &mut carol] {
        let p = next_presence(c).await;
        assert_eq!(
            (p["id"].as_i64(), p["name"].as_str(), p["state"].as_str()),
            (Some(alice.0), Some("presence_alice"), Some("offline"))
        );
    }
    // Logging in again tells both.
    let mut a = server.client().await;
    a.login(alice, &pw("presence_alice")).await.expect("login");
    for c in [&mut bob, &mut carol] {
        assert_eq!(next_presence(c).await["state"], "online");
    }
    // A newer login replacing the session is no departure.
    let mut again = server.client().await;
    again
        .login(alice, &pw("presence_alice"))
        .await
        .expect("login");
    for c in [&mut bob, &mut carol] {
        assert_eq!(next_presence(c).await["state"], "online");
    }
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    while let Some(p) = bob.try_push() {
        if let chat::client::Push::Other(v) = p {
            assert_ne!(
                v["state"], "offline",
                "the replaced session is not a logout: {v}"
            );
        }
    }
    again.logout().await.expect("logout");
    for c in [&mut bob, &mut carol] {
        assert_eq!(next_presence(c).await["state"], "offline");
    }
}
