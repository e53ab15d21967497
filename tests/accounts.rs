//! Registration, login, presence, friends: what a user sees of accounts.

mod common;

use chat::model::UserId;
use common::{TestServer, befriend, next_other, next_with_msgid, pw, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friendship_takes_a_request_and_its_acceptance() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;
    let (mut c, carol) = s.user("carol").await;

    // Asking is not befriending: bob is told, and until he accepts
    // neither is in the other's list or sees the other's presence.
    assert!(a.add_friend(bob).await.expect("ask bob"), "pending");
    let push = next_with_msgid(&mut b, 31).await;
    assert_eq!(
        (push["id"].as_i64(), push["name"].as_str()),
        (Some(alice.0), Some("alice"))
    );
    assert!(a.friends().await.expect("friends").is_empty());
    assert!(b.friends().await.expect("friends").is_empty());
    assert_eq!(
        a.add_friend(bob).await.unwrap_err().errno(),
        Some(32),
        "asked already"
    );
    assert_eq!(
        a.add_friend(alice).await.unwrap_err().errno(),
        Some(33),
        "self"
    );
    assert_eq!(
        a.add_friend(UserId(99_999)).await.unwrap_err().errno(),
        Some(30),
        "no such user"
    );
    let r = a.friend_requests().await.expect("requests");
    assert_eq!(
        (
            r.incoming.len(),
            r.outgoing.iter().map(|u| u.id).collect::<Vec<_>>()
        ),
        (0, vec![bob])
    );
    // bob logs in again: the request waits in his login reply
    b.logout().await.expect("logout");
    let info = b.login(bob, &pw("bob")).await.expect("login");
    assert_eq!(
        info.requests.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![alice]
    );
    assert_eq!(
        b.answer_friend(carol, true).await.unwrap_err().errno(),
        Some(30),
        "carol never asked"
    );
    let answered = b.answer_friend(alice, true).await.expect("accept");
    assert_eq!(answered.state, Some(chat::protocol::replies::State::Online));
    let push = next_with_msgid(&mut a, 32).await;
    assert_eq!(
        (push["id"].as_i64(), push["accept"].as_bool()),
        (Some(bob.0), Some(true))
    );
    assert!(
        b.friend_requests()
            .await
            .expect("requests")
            .incoming
            .is_empty()
    );

    // Declined: carol is not told and cannot ask again; her request looks
    // pending until she withdraws it (DEL_FRIEND).
    assert!(c.add_friend(alice).await.expect("ask"));
    next_with_msgid(&mut a, 31).await;
    a.answer_friend(carol, false).await.expect("decline");
    assert_eq!(c.add_friend(alice).await.unwrap_err().errno(), Some(32));
    let r = c.friend_requests().await.expect("requests");
    assert_eq!(
        r.outgoing.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![alice]
    );
    assert!(
        a.friend_requests()
            .await
            .expect("requests")
            .incoming
            .is_empty()
    );
    c.del_friend(alice).await.expect("withdraw");
    assert!(
        c.friend_requests()
            .await
            .expect("requests")
            .outgoing
            .is_empty()
    );
    // Two users who each ask the other are friends (the original client's
    // way: it has no other).
    assert!(a.add_friend(carol).await.expect("alice asks carol"));
    assert!(
        !c.add_friend(alice).await.expect("carol asks back"),
        "friends now"
    );

    let list = a.friends().await.expect("friends");
    let seen: Vec<_> = list
        .iter()
        .map(|f| (f.id, f.name.as_str(), f.online))
        .collect();
    assert_eq!(seen, vec![(bob, "bob", true), (carol, "carol", true)]);
    let list = b.friends().await.expect("friends");
    assert_eq!(
        list.iter().map(|f| (f.id, f.online)).collect::<Vec<_>>(),
        vec![(alice, true)]
    );

    // logout makes bob offline for alice; login shows alice online to bob
    b.logout().await.expect("logout");
    let list = a.friends().await.expect("friends");
    assert!(!list.iter().find(|f| f.id == bob).expect("bob").online);
    let info = b
        .login(bob, &pw("bob"))
        .await
        .expect("login again on the same connection");
    assert_eq!(info.name, "bob");
    assert_eq!(
        info.friends
            .iter()
            .map(|f| (f.id, f.online))
            .collect::<Vec<_>>(),
        vec![(alice, true)]
    );

    // deleting removes both directions
    b.del_friend(alice).await.expect("delete");
    assert!(
        a.friends()
            .await
            .expect("friends")
            .iter()
            .all(|f| f.id != bob)
    );
    assert!(b.friends().await.expect("friends").is_empty());
    assert_eq!(b.del_friend(alice).await.unwrap_err().errno(), Some(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refusals_and_presence_after_disconnect() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;

    let mut other = s.client().await;
    assert_eq!(
        other.login(alice, "wrong").await.unwrap_err().errno(),
        Some(1)
    );
    assert_eq!(
        other
            .login(UserId(424_242), "whatever")
            .await
            .unwrap_err()
            .errno(),
        Some(1)
    );
    assert_eq!(
        a.login(alice, &pw("alice")).await.unwrap_err().errno(),
        Some(22)
    );

    // a second login wins: the older session (a client whose network died
    // silently, say) is told why and closed, instead of locking alice out
    let (mut b, bob) = s.user("bob").await;
    befriend(&mut b, bob, &mut a, alice).await;
    let info = other
        .login(alice, &pw("alice"))
        .await
        .expect("the newer login replaces the older session");
    assert_eq!(info.name, "alice");
    assert_eq!(next_other(&mut a).await["errno"], 54);
    assert!(within(a.next_push()).await.is_none(), "then it is closed");
    // the replaced session's end does not take the new one offline
    b.chat(alice, "to the new session").await.expect("send");
    let m = within(other.next_message()).await.expect("delivered");
    assert_eq!((m.from, m.msg.as_str()), (bob, "to the new session"));
    assert!(b.friends().await.expect("friends")[0].online);

    // an abrupt disconnect (no logout) marks the user offline
    drop(other);
    within(async {
        while b.friends().await.expect("friends")[0].online {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registration_of_one_name_has_one_winner() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = s.client().await;
        tasks.push(tokio::spawn(async move { c.register("same", "pw").await }));
    }
    let mut ok = 0;
    for t in tasks {
        match within(t).await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.errno(), Some(1), "{e}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_stored_as_argon2id_hashes_only() {
    let s = TestServer::start().await;
    s.register("alice").await;
    s.register("bob").await;
    let stopped = s.stop().await;
    let hashes = stopped.password_hashes().await;
    assert_eq!(hashes.len(), 2);
    for h in &hashes {
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains(&pw("alice")) && !h.contains(&pw("bob")));
    }
    assert_ne!(hashes[0], hashes[1]);
    if !common::is_mysql() {
        // nor anywhere in the SQLite files (database and write-ahead log)
        for entry in std::fs::read_dir(stopped.dir.path()).expect("dir") {
            // (a write-ahead log may vanish as the last connection closes)
            let Ok(bytes) = std::fs::read(entry.expect("entry").path()) else {
                continue;
            };
            assert!(!String::from_utf8_lossy(&bytes).contains(&pw("alice")));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_its_heartbeats_is_closed_and_goes_offline() {
    use std::time::{Duration, Instant};
    let s = TestServer::start_with(chat::config::Config {
        heartbeat_timeout: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    let (mut a, alice) = s.user("alice").await;
    // bob is the original client: it never pings, so silence is allowed.
    let (mut b, _bob) = s.user("bob").await;

    // pinging keeps alice's connection well past the timeout
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let rtt = a.ping(Duration::from_secs(5)).await.expect("pong");
        assert!(rtt < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.friends().await.expect("still connected");

    // then alice falls silent: she is told why and closed
    let silent = Instant::now();
    let notice = next_other(&mut a).await;
    assert_eq!(notice["errno"], 55, "{notice}");
    assert!(
        silent.elapsed() >= Duration::from_millis(500),
        "not before the timeout"
    );
    assert!(
        within(a.next_push()).await.is_none(),
        "then the connection closes"
    );

    // and she is offline: a new login succeeds at once (no errno 2)
    let mut again = s.client().await;
    again
        .login(alice, &pw("alice"))
        .await
        .expect("alice logs in again");

    // bob, silent all along without having pinged, was left alone
    within(b.friends()).await.expect("bob is still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_session_resumes_with_its_token_and_logout_revokes_it() {
    use std::time::Duration;
    let s = TestServer::start_with(chat::config::Config {
        resume_token_ttl: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let (mut b, _bob) = s.user("bob").await;
    let alice = s.register("alice").await;
    let mut a = s.client().await;
    let info = a.login(alice, &pw("alice")).await.expect("login");
    let token = info.token.expect("a password login returns a token");
    assert_eq!(token.len(), 64);

    // the connection breaks; messages sent meanwhile wait
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.chat(alice, "while you were away").await.expect("send");

    let mut wrong = s.client().await;
    let err = wrong.resume(&"0".repeat(64)).await.unwrap_err();
    assert_eq!(err.errno(), Some(1), "{err}");
    assert_eq!(wrong.resume("").await.unwrap_err().errno(), Some(1));

    let mut a = s.client().await;
    let info = within(a.resume(&token)).await.expect("resume");
    assert_eq!((info.id, info.name.as_str()), (alice, "alice"));
    assert!(info.token.is_none(), "the token stays the same");
    let got: Vec<_> = info.offline.iter().map(|m| m.msg.as_str()).collect();
    assert_eq!(got, vec!["while you were away"]);
    assert_eq!(a.resume(&token).await.unwrap_err().errno(), Some(22));
    // live delivery works on the resumed session
    b.chat(alice, "live").await.expect("send");
    assert_eq!(within(a.next_message()).await.expect("push").msg, "live");

    // resuming again elsewhere replaces this session, like a login
    let mut a2 = s.client().await;
    a2.resume(&token).await.expect("resume again");
    assert_eq!(next_other(&mut a).await["errno"], 54);

    // logout revokes the token
    a2.logout().await.expect("logout");
    let mut a3 = s.client().await;
    assert_eq!(a3.resume(&token).await.unwrap_err().errno(), Some(1));

    // and a token expires by itself
    let info = a3.login(alice, &pw("alice")).await.expect("login");
    let token = info.token.expect("token");
    drop(a3);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut a4 = s.client().await;
    let err = a4.resume(&token).await.unwrap_err();
    assert_eq!(err.errno(), Some(1), "expired: {err}");

    // only the token's hash is stored, never the token
    let stopped = s.stop().await;
    if !common::is_mysql() {
        let hash = chat::auth::token::token_hash(&token);
        let mut seen_hash = false;
        for entry in std::fs::read_dir(stopped.dir.path()).expect("dir") {
            let Ok(bytes) = std::fs::read(entry.expect("entry").path()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&token), "the token itself is on disk");
            seen_hash |= text.contains(&hash);
        }
        assert!(seen_hash, "the hash is what is kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_beyond_the_admission_rate_are_told_when_to_retry() {
    use std::time::Duration;
    let s = TestServer::start_with(chat::config::Config {
        session_rate: 2,
        session_burst: 2,
        ..Default::default()
    })
    .await;
    let alice = s.register("alice").await;
    let mut a = s.client().await;
    let token = a
        .login(alice, &pw("alice"))
        .await
        .expect("login")
        .token
        .expect("token");
    // resumes a few milliseconds apart use up the burst of 2 within 3 tries
    // (however long the password login took), then get a time to wait
    let mut a3 = s.client().await;
    let mut refused = None;
    for _ in 0..3 {
        let r = a3
            .request(serde_json::json!({"msgid": 17, "token": token}))
            .await
            .expect("a reply");
        if r.errno() != 0 {
            refused = Some(r);
            break;
        }
        a3 = s.client().await; // (a logout would revoke the token)
    }
    let r = refused.expect("refused once the burst is used");
    assert_eq!((r.msgid(), r.errno()), (117, 56), "{:?}", r.0);
    let retry = r.i64("retry_ms").expect("retry_ms");
    assert!(
        (1..=500).contains(&retry),
        "one admission takes 1/rate: {retry} ms"
    );
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(retry).unwrap_or(500) + 20,
    ))
    .await;
    a3.resume(&token).await.expect("admitted after the wait");
}
