//! Consent: nobody gets into a contact list, a presence feed or a group
//! without the other side's say. Friend requests, blocking, friends-only,
//! private groups with invitations and requests, roles, and account
//! deletion, tried the way an attacker would. Through the real server, on
//! either backend (`CHAT_TEST_BACKEND=mysql`), and across two nodes.

mod common;

use chat::client::{Client, ClientError};
use chat::config::{Config, Limits};
use chat::model::{GroupId, UserId};
use chat::protocol::HistoryTarget;
use common::{TestServer, assert_quiet, befriend, next_with_msgid, pw, within};
use serde_json::json;

fn errno<T>(r: Result<T, ClientError>) -> Option<i64> {
    r.err().and_then(|e| e.errno())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_reaches_the_blocker_no_more() {
    let server = TestServer::start().await;
    let (mut alice, alice_id) = server.user("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    befriend(&mut alice, alice_id, &mut bob, bob_id).await;
    alice
        .chat(bob_id, "hi bob")
        .await
        .expect("before the block");
    within(bob.next_message()).await.expect("bob gets it");

    bob.block(alice_id).await.expect("block");
    // nothing from alice reaches bob, at once, and nothing is stored
    assert_eq!(errno(alice.chat(bob_id, "are you there?").await), Some(66));
    assert_eq!(
        errno(bob.chat(alice_id, "go away").await),
        Some(66),
        "nor the other way"
    );
    assert_quiet(&mut bob).await;
    let history = bob
        .history(HistoryTarget::User(alice_id), None, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "only what came before the block");
    // the friendship is over and cannot start again
    assert!(alice.friends().await.expect("friends").is_empty());
    assert!(bob.friends().await.expect("friends").is_empty());
    assert_eq!(errno(alice.add_friend(bob_id).await), Some(66));
    // the login reply says whom bob blocks
    let mut b2 = server.client().await;
    b2.set_device(Some("laptop"));
    let info = b2.login(bob_id, &pw("bob")).await.expect("login");
    assert_eq!(info.blocked, [alice_id]);
    // alice does not see bob come and go: a group makes them contacts
    let g = alice.create_group("both", "").await.expect("group");
    bob.join_group(g).await.expect("join");
    drop(b2);
    bob.logout().await.expect("logout");
    let mut bob = server.client().await;
    bob.login(bob_id, &pw("bob")).await.expect("login");
    let presence = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        loop {
            match alice.next_push().await {
                Some(chat::client::Push::Other(v)) if v["msgid"] == 19 => return v,
                Some(_) => continue,
                None => panic!("closed"),
            }
        }
    })
    .await;
    assert!(presence.is_err(), "alice got bob's presence: {presence:?}");

    // refused: oneself, unknown users, unblocking someone not blocked
    assert_eq!(errno(bob.block(bob_id).await), Some(33));
    assert_eq!(errno(bob.block(chat::model::UserId(9999)).await), Some(30));
    assert_eq!(errno(alice.unblock(bob_id).await), Some(30));

    // unblocked, they talk again
    bob.unblock(alice_id).await.expect("unblock");
    alice
        .chat(bob_id, "friends again?")
        .await
        .expect("after the block");
    assert_eq!(
        within(bob.next_message()).await.expect("got").msg,
        "friends again?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_may_take_messages_from_friends_only() {
    let server = TestServer::start().await;
    let (mut alice, alice_id) = server.user("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    let (mut carol, _) = server.user("carol").await;
    assert!(bob.set_only_friends(true).await.expect("settings"));
    befriend(&mut bob, bob_id, &mut alice, alice_id).await;
    assert_eq!(errno(carol.chat(bob_id, "hello stranger").await), Some(66));
    alice
        .chat(bob_id, "hello friend")
        .await
        .expect("a friend may");
    assert_eq!(
        within(bob.next_message()).await.expect("got").msg,
        "hello friend"
    );
    assert!(!bob.set_only_friends(false).await.expect("settings"));
    carol
        .chat(bob_id, "hello again")
        .await
        .expect("anyone may now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_made_on_one_node_stops_a_conversation_on_another_at_once() {
    let common::nodes::TwoNodes { n1, n2, .. } = &common::nodes::two_nodes().await;
    let mut a = n1.client().await;
    let alice = a.register("alice", &pw("alice")).await.expect("register");
    a.login(alice, &pw("alice")).await.expect("login");
    let mut b = n2.client().await;
    let bob = b.register("bob", &pw("bob")).await.expect("register");
    b.login(bob, &pw("bob")).await.expect("login");
    // alice's session remembers that bob takes her messages
    a.chat(bob, "hello").await.expect("send");
    within(b.next_message()).await.expect("bob gets it");
    b.block(alice).await.expect("block on n2");
    // the notice reaches n1 within moments; alice's next send is refused
    let mut refused = false;
    for _ in 0..20 {
        match a.chat(bob, "still there?").await {
            Err(e) if e.errno() == Some(66) => {
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "the block reached n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_is_gone_and_its_name_stays_taken() {
    let server = TestServer::start().await;
    let (mut alice, alice_id) = server.user("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    befriend(&mut alice, alice_id, &mut bob, bob_id).await;
    let g = bob.create_group("club", "").await.expect("group");
    alice.join_group(g).await.expect("join");
    alice.chat(bob_id, "remember me").await.expect("send");
    within(bob.next_message()).await.expect("got it");
    let mut phone = server.client().await;
    phone.set_device(Some("phone"));
    phone.login(alice_id, &pw("alice")).await.expect("login");

    assert_eq!(errno(alice.delete_account("wrong").await), Some(1));
    alice.delete_account(&pw("alice")).await.expect("delete");
    // every session ends; the password and tokens no longer work
    let notice = common::next_other(&mut phone).await;
    assert_eq!(notice["errno"], 63, "{notice}");
    assert_eq!(
        errno(alice.chat(bob_id, "still me?").await),
        Some(20),
        "logged out"
    );
    let mut again = server.client().await;
    assert_eq!(errno(again.login(alice_id, &pw("alice")).await), Some(1));
    // friendships and memberships are gone; what alice sent stays
    assert!(bob.friends().await.expect("friends").is_empty());
    let mut laptop = server.client().await;
    laptop.set_device(Some("laptop"));
    let info = laptop.login(bob_id, &pw("bob")).await.expect("login");
    let club = info.groups.iter().find(|x| x.id == g).expect("the group");
    let ids: Vec<_> = club.members.iter().map(|m| m.id).collect();
    assert_eq!(ids, [bob_id], "alice left every group");
    assert_eq!(errno(bob.chat(alice_id, "hello?").await), Some(30));
    let history = bob
        .history(HistoryTarget::User(alice_id), None, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "what she sent stays");
    // her name stays taken: nobody can pass for her
    let mut mallory = server.client().await;
    assert_eq!(errno(mallory.register("alice", "x").await), Some(1));
}

/// Whether a presence push (msgid 19) about `who` arrives within a moment.
async fn hears_presence_of(c: &mut Client, who: UserId) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(400), async {
        loop {
            match c.next_push().await {
                Some(chat::client::Push::Other(v))
                    if v["msgid"] == 19 && v["id"].as_i64() == Some(who.0) =>
                {
                    return;
                }
                Some(_) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await
    .is_ok()
}

/// The attack: one account "befriended" 150 strangers in a second and then
/// watched them come and go. Now it asks; a stranger who never answers is
/// never its friend and never shows it presence, and the asking stops at
/// the bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_asked_not_added_and_the_asking_is_bounded() {
    let server = TestServer::start_with(Config {
        limits: Limits {
            pending_requests: 5,
            friend_requests_per_day: 7,
            ..Limits::default()
        },
        ..Config::default()
    })
    .await;
    let (mut mallory, mallory_id) = server.user("mallory").await;
    let mut strangers = Vec::new();
    for i in 0..8 {
        strangers.push(server.register(&format!("stranger{i}")).await);
    }
    for s in &strangers[..5] {
        assert!(mallory.add_friend(*s).await.expect("ask"), "pending only");
    }
    assert_eq!(errno(mallory.add_friend(strangers[5]).await), Some(61));
    assert!(mallory.friends().await.expect("friends").is_empty());
    // a stranger comes online: mallory hears nothing of it
    let mut victim = server.client().await;
    let info = victim
        .login(strangers[0], &pw("stranger0"))
        .await
        .expect("login");
    assert_eq!(
        info.requests.iter().map(|u| u.id).collect::<Vec<_>>(),
        [mallory_id],
        "the request waits in the login reply"
    );
    assert!(info.friends.is_empty());
    assert!(!hears_presence_of(&mut mallory, strangers[0]).await);
    // withdrawing frees a pending place, but not the day's count
    mallory.del_friend(strangers[1]).await.expect("withdraw");
    mallory.add_friend(strangers[5]).await.expect("ask");
    mallory.del_friend(strangers[2]).await.expect("withdraw");
    mallory
        .add_friend(strangers[6])
        .await
        .expect("ask: the 7th today");
    mallory.del_friend(strangers[3]).await.expect("withdraw");
    assert_eq!(
        errno(mallory.add_friend(strangers[7]).await),
        Some(61),
        "8 a day is past the bound"
    );
    // the victim blocks mallory: the request is gone and cannot come back
    victim.block(mallory_id).await.expect("block");
    assert!(
        victim
            .friend_requests()
            .await
            .expect("requests")
            .incoming
            .is_empty()
    );
    assert_eq!(errno(mallory.add_friend(strangers[0]).await), Some(66));

    // refused: answering a request nobody made, oneself
    assert_eq!(
        errno(victim.answer_friend(strangers[4], true).await),
        Some(30)
    );
    assert_eq!(errno(mallory.add_friend(mallory_id).await), Some(33));
}

/// Two original clients befriend each other the only way they can: each
/// sends ADD_FRIEND (msgid 7) for the other. Their frames carry no reqid
/// and get no reply, as with the original server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_original_clients_befriend_each_other_by_both_asking() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let classic = |id: UserId, name: &'static str| {
        let server = &server;
        async move {
            let mut c = server.client().await;
            c.send_raw(
                format!(
                    "{{\"msgid\":1,\"id\":{id},\"password\":\"{}\"}}\0",
                    pw(name)
                )
                .as_bytes(),
            )
            .await
            .expect("login");
            let reply = common::next_other(&mut c).await;
            assert_eq!(reply["errno"], 0, "{reply}");
            c
        }
    };
    let mut a = classic(alice, "alice").await;
    let mut b = classic(bob, "bob").await;
    a.send_raw(format!("{{\"msgid\":7,\"id\":{alice},\"friendid\":{bob}}}\0").as_bytes())
        .await
        .expect("alice asks");
    b.send_raw(format!("{{\"msgid\":7,\"id\":{bob},\"friendid\":{alice}}}\0").as_bytes())
        .await
        .expect("bob asks back");
    // (no replies; the friend list says they are friends)
    let list = within(async {
        loop {
            let r = b
                .request(json!({"msgid": 13, "id": bob}))
                .await
                .expect("list");
            if !r.0["friends"].as_array().is_none_or(|f| f.is_empty()) {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        list.0["friends"][0]["id"].as_i64(),
        Some(alice.0),
        "{:?}",
        list.0
    );
    drop(a);
}

/// The attack: ids are small and sequential, so guessing 1 to 30 joined a
/// group, and HISTORY then showed its door code, posted before the
/// attacker existed. A private group answers a guesser exactly as no group
/// does, its id is not among the small ones, and even its invited members
/// see nothing from before they joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_group_lets_in_only_whom_it_invites_and_hides_its_past() {
    let server = TestServer::start().await;
    let (mut alice, alice_id) = server.user("alice").await;
    let secret = alice
        .create_group_as("household", "the family", true)
        .await
        .expect("private group");
    assert!(
        secret.0 >= 1 << 30,
        "private ids are drawn at random: {secret}"
    );
    alice
        .group_chat(secret, "secret: the door code is 4711")
        .await
        .expect("post");
    let open = alice.create_group("open", "anyone").await.expect("public");
    assert!(open.0 < 30, "public groups count up as before");

    let (mut mallory, mallory_id) = server.user("mallory").await;
    for id in 1..=30 {
        let _ = mallory.join_group(GroupId(id)).await;
    }
    let joined = mallory
        .request(json!({"msgid": 40, "groupid": open}))
        .await
        .expect("info");
    assert_eq!(
        joined.errno(),
        0,
        "public groups are joined by id: {:?}",
        joined.0
    );
    for (what, r) in [
        ("join", mallory.join_group(secret).await.map(drop)),
        (
            "history",
            mallory
                .history(HistoryTarget::Group(secret), None, None)
                .await
                .map(drop),
        ),
        (
            "post",
            mallory.group_chat(secret, "let me in").await.map(drop),
        ),
        ("info", mallory.group_info(secret).await.map(drop)),
    ] {
        assert_eq!(errno(r), Some(30), "{what}: as if there were no such group");
    }
    // asking to join is answered alike for a private group and for none
    mallory.group_join_request(secret).await.expect("ask");
    mallory
        .group_join_request(GroupId((1 << 30) + 12_345))
        .await
        .expect("ask where there is nothing");
    let asked = next_with_msgid(&mut alice, 34).await;
    assert_eq!(
        (asked["groupid"].as_i64(), asked["id"].as_i64()),
        (Some(secret.0), Some(mallory_id.0))
    );
    let info = alice.group_info(secret).await.expect("info");
    assert_eq!(info.invites.len(), 1, "the owner sees the request");
    alice
        .group_answer(secret, Some(mallory_id), false)
        .await
        .expect("decline");
    assert_eq!(errno(mallory.join_group(secret).await), Some(30));

    // bob is invited: told at once and at login; ADD_GROUP (the original
    // client's way) accepts
    let (mut bob, bob_id) = server.user("bob").await;
    let r = alice.group_invite(secret, bob_id).await.expect("invite");
    assert!(!r.joined);
    let invited = next_with_msgid(&mut bob, 33).await;
    assert_eq!(invited["groupname"], "household");
    assert_eq!(
        errno(alice.group_invite(secret, bob_id).await),
        Some(32),
        "invited already"
    );
    let mut bob2 = server.client().await;
    bob2.set_device(Some("laptop"));
    let login = bob2.login(bob_id, &pw("bob")).await.expect("login");
    assert_eq!(
        login
            .invitations
            .iter()
            .map(|i| (i.groupid, i.by))
            .collect::<Vec<_>>(),
        [(secret, alice_id)]
    );
    bob.join_group(secret).await.expect("accept by joining");
    // the laptop hears that bob is in, and delivers the group from now
    next_with_msgid(&mut bob2, 22).await;
    let history = bob
        .history(HistoryTarget::Group(secret), None, None)
        .await
        .expect("history");
    assert!(
        history.is_empty(),
        "nothing from before he joined: {history:?}"
    );
    alice.group_chat(secret, "welcome bob").await.expect("post");
    for b in [&mut bob, &mut bob2] {
        assert_eq!(
            within(b.next_message()).await.expect("got").msg,
            "welcome bob"
        );
    }
    let history = bob
        .history(HistoryTarget::Group(secret), None, None)
        .await
        .expect("history");
    assert_eq!(
        history.iter().map(|m| m.msg.as_str()).collect::<Vec<_>>(),
        ["welcome bob"]
    );
    // refused: a member who is no admin inviting, oneself, nobody, a
    // member, answering an invitation one does not hold
    let carol = server.register("carol").await;
    assert_eq!(errno(bob.group_invite(secret, carol).await), Some(31));
    assert_eq!(errno(alice.group_invite(secret, alice_id).await), Some(33));
    assert_eq!(
        errno(alice.group_invite(secret, UserId(99_999)).await),
        Some(30)
    );
    assert_eq!(errno(alice.group_invite(secret, bob_id).await), Some(32));
    assert_eq!(
        errno(mallory.group_answer(secret, None, true).await),
        Some(30)
    );
    assert_eq!(errno(mallory.group_invite(secret, carol).await), Some(30));
    // a user who blocks alice takes no invitation from her
    let (mut dave, dave_id) = server.user("dave").await;
    dave.block(alice_id).await.expect("block");
    assert_eq!(errno(alice.group_invite(secret, dave_id).await), Some(66));
}

/// Owner, admins and members: who may do what, and a removed member gets
/// nothing more from the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_admins_run_a_group_and_members_do_not() {
    let server = TestServer::start().await;
    let (mut alice, alice_id) = server.user("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    let (mut carol, carol_id) = server.user("carol").await;
    let (mut dave, dave_id) = server.user("dave").await;
    let g = alice.create_group("club", "").await.expect("group");
    for c in [&mut bob, &mut carol, &mut dave] {
        c.join_group(g).await.expect("join");
    }
    // a normal member manages nothing
    assert_eq!(errno(carol.group_remove(g, dave_id).await), Some(31));
    assert_eq!(
        errno(carol.set_group_role(g, dave_id, "admin").await),
        Some(31)
    );
    assert_eq!(
        errno(carol.group_update(g, Some("mine"), None).await),
        Some(31)
    );
    assert_eq!(errno(carol.group_dissolve(g).await), Some(31));
    // the owner names an admin; the admin removes a member
    alice
        .set_group_role(g, bob_id, "admin")
        .await
        .expect("admin");
    assert_eq!(
        errno(alice.set_group_role(g, bob_id, "king").await),
        Some(13)
    );
    assert_eq!(
        errno(bob.set_group_role(g, carol_id, "admin").await),
        Some(31)
    );
    bob.group_remove(g, dave_id).await.expect("remove dave");
    let gone = next_with_msgid(&mut dave, 22).await;
    assert_eq!(
        (gone["groupid"].as_i64(), gone["member"].as_bool()),
        (Some(g.0), Some(false))
    );
    alice.group_chat(g, "after dave").await.expect("post");
    assert_quiet(&mut dave).await;
    assert_eq!(errno(dave.group_chat(g, "still here?").await), Some(31));
    assert_eq!(
        errno(dave.history(HistoryTarget::Group(g), None, None).await),
        Some(31)
    );
    // an admin removes neither the owner nor another admin, nor renames
    // to a bad name
    assert_eq!(errno(bob.group_remove(g, alice_id).await), Some(31));
    alice
        .set_group_role(g, carol_id, "admin")
        .await
        .expect("admin");
    assert_eq!(errno(bob.group_remove(g, carol_id).await), Some(31));
    alice
        .set_group_role(g, carol_id, "normal")
        .await
        .expect("not admin");
    assert_eq!(errno(bob.group_update(g, None, None).await), Some(12));
    assert_eq!(errno(bob.group_update(g, Some(""), None).await), Some(13));
    bob.group_update(g, Some("the club"), Some("renamed"))
        .await
        .expect("rename");
    let info = carol.group_info(g).await.expect("info");
    assert_eq!(info.groupname, "the club");
    assert!(info.invites.is_empty(), "members see no pending invites");
    // an admin recalls any member's message
    let seq = carol.group_chat(g, "spam").await.expect("post").seq;
    bob.recall(HistoryTarget::Group(g), seq)
        .await
        .expect("admin recall");
    // the owner hands over, and is an admin after
    assert_eq!(
        errno(alice.set_group_role(g, alice_id, "normal").await),
        Some(33)
    );
    alice
        .set_group_role(g, bob_id, "creator")
        .await
        .expect("hand over");
    let roles = |info: &chat::protocol::replies::GroupDetails| -> Vec<(UserId, String)> {
        info.users
            .iter()
            .map(|u| (u.id, u.role.clone().unwrap_or_default()))
            .collect()
    };
    let info = alice.group_info(g).await.expect("info");
    assert_eq!(
        roles(&info),
        [
            (alice_id, "admin".to_owned()),
            (bob_id, "creator".to_owned()),
            (carol_id, "normal".to_owned())
        ]
    );
    assert_eq!(errno(alice.group_dissolve(g).await), Some(31));
    bob.group_dissolve(g).await.expect("dissolve");
    for c in [&mut alice, &mut carol] {
        let gone = next_with_msgid(c, 22).await;
        assert_eq!(gone["member"], false);
    }
    assert_eq!(errno(carol.group_chat(g, "anyone?").await), Some(30));

    // an owner who leaves leaves the longest-standing admin (else member)
    // in charge
    let h = alice.create_group("second", "").await.expect("group");
    carol.join_group(h).await.expect("join");
    dave.join_group(h).await.expect("join");
    alice
        .set_group_role(h, dave_id, "admin")
        .await
        .expect("admin");
    alice.leave_group(h).await.expect("leave");
    let info = carol.group_info(h).await.expect("info");
    assert_eq!(
        roles(&info),
        [
            (carol_id, "normal".to_owned()),
            (dave_id, "creator".to_owned())
        ]
    );
}

/// Invitations, approvals and removals reach users on other nodes, and a
/// removed member on another node gets nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_consent_works_across_nodes() {
    let common::nodes::TwoNodes { n1, n2, .. } = &common::nodes::two_nodes().await;
    let mut a = n1.client().await;
    let alice = a.register("alice", &pw("alice")).await.expect("register");
    a.login(alice, &pw("alice")).await.expect("login");
    let mut b = n2.client().await;
    let bob = b.register("bob", &pw("bob")).await.expect("register");
    b.login(bob, &pw("bob")).await.expect("login");
    befriend(&mut a, alice, &mut b, bob).await;

    let g = a.create_group_as("private", "", true).await.expect("group");
    a.group_chat(g, "before bob").await.expect("post");
    // bob asks, alice (on the other node) hears and approves
    b.group_join_request(g).await.expect("ask");
    next_with_msgid(&mut a, 34).await;
    let r = a.group_answer(g, Some(bob), true).await.expect("approve");
    assert!(r.joined);
    let welcome = next_with_msgid(&mut b, 22).await;
    assert_eq!(welcome["member"], true);
    a.group_chat(g, "hello bob").await.expect("post");
    assert_eq!(
        within(b.next_message()).await.expect("got").msg,
        "hello bob"
    );
    let history = b
        .history(HistoryTarget::Group(g), None, None)
        .await
        .expect("history");
    assert_eq!(
        history.iter().map(|m| m.msg.as_str()).collect::<Vec<_>>(),
        ["hello bob"]
    );
    // removed on n1, bob on n2 gets nothing more and may not post
    a.group_remove(g, bob).await.expect("remove");
    let gone = next_with_msgid(&mut b, 22).await;
    assert_eq!(gone["member"], false);
    a.group_chat(g, "after bob").await.expect("post");
    assert_quiet(&mut b).await;
    assert_eq!(errno(b.group_chat(g, "hello?").await), Some(30));
}
