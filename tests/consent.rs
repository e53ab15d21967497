//! Consent (issue 23), the part built so far: blocking, and taking
//! one-to-one messages from friends only. Through the real server, on
//! either backend.

mod common;

use chat::client::ClientError;
use chat::protocol::HistoryTarget;
use common::{TestServer, assert_quiet, pw, within};

fn errno<T>(r: Result<T, ClientError>) -> Option<i64> {
    r.err().and_then(|e| e.errno())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_reaches_the_blocker_no_more() {
    let server = TestServer::start().await;
    let (mut alice, alice_id) = server.user("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    alice.add_friend(bob_id).await.expect("friends");
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
    bob.add_friend(alice_id).await.expect("friends");
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
