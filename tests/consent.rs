//! Consent (issue 23), the part built so far: blocking, and taking
//! one-to-one messages from friends only. Through the real server, on
//! either backend.

mod common;

use chat::client::ClientError;
use chat::protocol::HistoryTarget;
use common::{TestServer, assert_quiet, befriend, pw, within};

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
    use common::nodes::{NodeProcess, Shared};
    use common::services;
    let mut mysql = None;
    let mut redis = None;
    let shared = Shared {
        db_url: services::create_database(&services::mysql_server(&mut mysql)).await,
        redis_url: services::redis_server(&mut redis),
        prefix: services::unique("chat"),
        presence_ttl: 10.0,
        extra_args: Vec::new(),
    };
    let n1 = NodeProcess::start(&shared, "n1").await;
    let n2 = NodeProcess::start(&shared, "n2").await;
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
    drop((n1, n2, mysql, redis));
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
