//! Acknowledgements and client message ids: what a client that declares
//! them can rely on across broken connections.

mod common;

use chat::protocol::HistoryTarget;
use common::{TestServer, assert_quiet, next_other, pw, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_received_but_not_acknowledged_comes_again_after_a_broken_connection() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let bob = s.register("bob").await;
    let mut b = s.client().await;
    let info = b.login_acking(bob, &pw("bob")).await.expect("login");
    assert!(info.acks, "the server confirms acknowledgements");
    let token = info.token.expect("token");

    for n in 1..=3 {
        a.chat(bob, &format!("m{n}")).await.expect("send");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within(b.next_message()).await.expect("message"));
    }
    assert_eq!(got.iter().map(|m| m.seq.0).collect::<Vec<_>>(), [1, 2, 3]);
    let conv = got[0].conversation(bob);
    assert_eq!(conv, HistoryTarget::User(alice));
    // bob's app has shown m1 and m2, and the server has read his ACK, when
    // his network breaks (an ACK still in flight is rightly worth nothing)
    ack_read(&mut b, conv, 2).await;
    drop(b);

    let mut b = s.client().await;
    let info = within(b.resume_acking(&token)).await.expect("resume");
    let again: Vec<_> = info.offline.iter().map(|m| m.msg.as_str()).collect();
    assert_eq!(again, ["m3"], "only the unacknowledged one, once");
    ack_read(&mut b, conv, 3).await;
    drop(b);

    // acknowledged everything: nothing comes again
    let mut b = s.client().await;
    let info = within(b.resume_acking(&token)).await.expect("resume");
    assert!(info.offline.is_empty(), "{:?}", info.offline);
    drop(b);

    // a classic session counts what was written as had, and an ACK from it
    // is refused rather than silently meaning nothing
    a.chat(bob, "m4").await.expect("send");
    let mut b = s.client().await;
    let info = within(b.resume(&token)).await.expect("resume");
    assert!(!info.acks);
    assert_eq!(info.offline.len(), 1);
    b.ack(&[(conv, chat::model::Seq(4))]).await.expect("ack");
    let refusal = next_other(&mut b).await;
    assert_eq!(
        (refusal["msgid"].as_i64(), refusal["errno"].as_i64()),
        (Some(118), Some(12))
    );
    drop(b);
    let mut b = s.client().await;
    let info = within(b.resume(&token)).await.expect("resume");
    assert!(info.offline.is_empty(), "m4 counted as delivered");
}

/// Acknowledges up to `seq` and waits until the server has read the ACK: a
/// connection's frames are handled in order, so a ping answered after it
/// means the ACK was applied. An ACK gets no reply of its own.
async fn ack_read(c: &mut chat::client::Client, conv: HistoryTarget, seq: i64) {
    c.ack(&[(conv, chat::model::Seq(seq))]).await.expect("ack");
    within(c.ping(std::time::Duration::from_secs(5)))
        .await
        .expect("ping after the ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_offline_page_waits_for_the_acknowledgement_of_the_one_before() {
    let s = TestServer::start_with(chat::config::Config {
        offline_page: 2,
        ..Default::default()
    })
    .await;
    let (mut a, alice) = s.user("alice").await;
    let bob = s.register("bob").await;
    for n in 1..=5 {
        a.chat(bob, &format!("m{n}")).await.expect("send");
    }
    let mut b = s.client().await;
    let info = b.login_acking(bob, &pw("bob")).await.expect("login");
    assert_eq!(info.offline.len(), 2);
    assert_quiet(&mut b).await;
    let conv = HistoryTarget::User(alice);
    let mut seen: Vec<i64> = info.offline.iter().map(|m| m.seq.0).collect();
    while seen.len() < 5 {
        let last = *seen.last().expect("some");
        b.ack(&[(conv, chat::model::Seq(last))]).await.expect("ack");
        let page_len = if seen.len() == 4 { 1 } else { 2 };
        for _ in 0..page_len {
            seen.push(within(b.next_message()).await.expect("message").seq.0);
        }
        if page_len == 2 {
            assert_quiet(&mut b).await;
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5], "in order, each once");
    // live messages never wait for acknowledgements
    a.chat(bob, "live").await.expect("send");
    assert_eq!(within(b.next_message()).await.expect("live").msg, "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_the_same_client_id_is_stored_once_and_answered_alike() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;
    let (_c, carol) = s.user("carol").await;
    let to_bob = HistoryTarget::User(bob);
    let first = a.send_with_id(to_bob, "once", "id-1").await.expect("send");
    assert_eq!(within(b.next_message()).await.expect("message").msg, "once");

    // the reply was lost, the connection too: the app sends again elsewhere
    drop(a);
    let mut a = s.client().await;
    a.login(alice, &pw("alice")).await.expect("login");
    let again = a
        .send_with_id(to_bob, "once", "id-1")
        .await
        .expect("resend");
    assert_eq!(again, first, "the original's seq and ts");
    assert_quiet(&mut b).await;
    let second = a.send_with_id(to_bob, "twice", "id-2").await.expect("send");
    assert_eq!(
        second.seq.0,
        first.seq.0 + 1,
        "no number was spent on the resend"
    );
    assert_eq!(
        within(b.next_message()).await.expect("message").msg,
        "twice"
    );

    // an id names one message: reusing it for another conversation is refused
    let err = a
        .send_with_id(HistoryTarget::User(carol), "other", "id-1")
        .await
        .expect_err("refused");
    assert_eq!(err.errno(), Some(32), "{err}");
    // ids are the sender's own: bob may use the same one
    b.send_with_id(HistoryTarget::User(alice), "mine", "id-1")
        .await
        .expect("bob's id-1");
    let history = a.history(to_bob, None, None).await.expect("history");
    let bodies: Vec<_> = history.iter().map(|m| m.msg.as_str()).collect();
    assert_eq!(bodies, ["mine", "twice", "once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_from_sessions_replacing_each_other_are_stored_once() {
    let s = TestServer::start().await;
    let (_a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;
    // alice's app on several connections at once, each login replacing the
    // one before while earlier sends may still be in flight
    let mut sends = Vec::new();
    for _ in 0..8 {
        let addr = s.addr;
        sends.push(tokio::spawn(async move {
            let mut c = chat::client::Client::connect(addr).await.expect("connect");
            within(c.login(alice, &pw("alice"))).await.ok()?;
            within(c.send_with_id(HistoryTarget::User(bob), "one", "same"))
                .await
                .ok()
        }));
    }
    let mut seqs = Vec::new();
    for t in sends {
        if let Some(sent) = t.await.expect("task") {
            seqs.push(sent.seq.0);
        }
    }
    assert!(!seqs.is_empty(), "the last login at least sent");
    seqs.dedup();
    assert_eq!(seqs.len(), 1, "every answer names one message: {seqs:?}");
    let history = b
        .history(HistoryTarget::User(alice), None, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
}

/// At the store, on both backends: appends of one client id made at once
/// (so that they share write batches) store one message, and every one of
/// them is answered with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_one_client_id_store_one_message_on_both_backends() {
    use chat::store::SharedStore;
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ids.db").display());
    let sqlite = chat::store::sqlite::SqliteStore::open(&url)
        .await
        .expect("sqlite");
    let mut keep = None;
    let url = common::services::create_database(&common::services::mysql_server(&mut keep)).await;
    let mysql = chat::store::mysql::MySqlStore::open(&url, &Default::default())
        .await
        .expect("mysql");
    for store in [Arc::new(sqlite) as SharedStore, Arc::new(mysql)] {
        let alice = store.create_user("alice", "h").await.expect("user");
        let bob = store.create_user("bob", "h").await.expect("user");
        let msg = |cid: String| chat::model::NewMessage {
            conv: chat::model::Conversation::direct(alice, bob),
            sender: alice,
            sender_device: chat::model::Device::classic(),
            sender_name: "alice".into(),
            body: format!("body of {cid}"),
            client_id: Some(cid),
            kind: Default::default(),
        };
        let mut appends = Vec::new();
        for n in 0..24 {
            let cid = if n % 3 == 0 {
                "same".to_owned()
            } else {
                format!("other-{n}")
            };
            let store = store.clone();
            let m = msg(cid.clone());
            appends.push(tokio::spawn(async move { (cid, store.append(m).await) }));
        }
        let mut same = Vec::new();
        for t in appends {
            let (cid, stored) = t.await.expect("task");
            let stored = stored.expect("stored");
            if cid == "same" {
                same.push((stored.seq, stored.ts_ms, stored.body));
            }
        }
        same.dedup();
        assert_eq!(same.len(), 1, "{same:?}");
        let later = store.append(msg("same".into())).await.expect("resend");
        assert_eq!(later.seq, same[0].0, "and later too");
        let all = store
            .history(
                chat::model::Conversation::direct(alice, bob),
                chat::model::Seq(0),
                None,
                100,
            )
            .await
            .expect("history");
        assert_eq!(all.len(), 17, "16 other ids and one `same`");
        let mut seqs: Vec<_> = all.iter().map(|m| m.seq.0).collect();
        seqs.sort();
        assert_eq!(seqs, (1..=17).collect::<Vec<_>>(), "no number skipped");
        store.close().await;
    }
}

/// The client library across a cut and a frozen network: every message
/// reaches the receiving application exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_reconnects_resends_and_drops_duplicates() {
    use chat::client::reliable::{Event, Options, Reliable};
    use std::time::Duration;
    let s = TestServer::start().await;
    let proxy = common::Proxy::start(s.addr).await;
    let addr = proxy.addr.to_string();
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let quick = Options {
        backoff_base: Duration::from_millis(20),
        ping_interval: Duration::from_millis(300),
        answer_timeout: Duration::from_secs(1),
        ..Options::default()
    };
    // bob never acknowledges, so every reconnect brings everything again
    let forgetful = Options {
        ack_interval: Duration::from_secs(3600),
        ack_batch: usize::MAX,
        ..quick.clone()
    };
    let (mut a, _) = Reliable::login(&addr, alice, &pw("alice"), quick)
        .await
        .expect("alice");
    let (mut b, _) = Reliable::login(&addr, bob, &pw("bob"), forgetful)
        .await
        .expect("bob");
    let to_bob = HistoryTarget::User(bob);
    /// Reads until `until` messages are in; notes how many the app had
    /// at each reconnect (all of those come again: bob acknowledges none).
    async fn read(b: &mut Reliable, got: &mut Vec<String>, had: &mut Vec<usize>, until: usize) {
        while got.len() < until {
            match within(b.next_event()).await {
                Event::Message(m) => got.push(m.msg),
                Event::Reconnected => had.push(got.len()),
                Event::Replaced => panic!("replaced"),
                _ => {}
            }
        }
    }

    for n in 1..=20 {
        a.send(to_bob, &format!("m{n}")).await.expect("send");
    }
    let (mut got, mut had) = (Vec::new(), Vec::new());
    read(&mut b, &mut got, &mut had, 10).await;
    proxy.cut();
    for n in 21..=40 {
        within(a.send(to_bob, &format!("m{n}")))
            .await
            .expect("sent across the cut");
    }
    read(&mut b, &mut got, &mut had, 40).await;
    assert_eq!(a.stats().reconnects, 1);
    assert_eq!(b.stats().reconnects, 1);
    assert_eq!(had.len(), 1);
    assert!(
        had[0] >= 10,
        "what the app had read (from the old connection, before it closed)"
    );
    assert_eq!(
        b.stats().duplicates_dropped,
        had[0] as u64,
        "came again, never acknowledged, and was dropped"
    );

    // now nothing passes and nobody says so: heartbeats find out
    proxy.freeze();
    within(a.send(to_bob, "m41"))
        .await
        .expect("sent after the freeze");
    read(&mut b, &mut got, &mut had, 41).await;
    let expected: Vec<String> = (1..=41).map(|n| format!("m{n}")).collect();
    assert_eq!(got, expected, "each once, in order");
    assert_eq!(a.stats().reconnects, 2);
    assert_eq!(
        a.stats().resent,
        2,
        "m21 and m41 each sent again once, after their first tries were lost"
    );
    assert_eq!(had.len(), 2);
    assert_eq!(b.stats().duplicates_dropped, (had[0] + had[1]) as u64);
    let history = b
        .client()
        .await
        .expect("connected")
        .history(HistoryTarget::User(alice), None, Some(100))
        .await
        .expect("history");
    assert_eq!(history.len(), 41, "stored once each");
}

/// A resume carried out late (it waited in a stopped node's socket after
/// its client gave up on it and resumed elsewhere) replaces the client's
/// live session. Replaced by its own token, the session is told so
/// (`"resumed": true`), and the reliable client resumes again instead of
/// giving up; replaced by a password login (another device), it is told
/// plainly and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_resume_of_ones_own_token_does_not_end_the_client() {
    use chat::client::reliable::{Event, Options, Reliable};
    use std::time::Duration;
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    let alice = s.register("alice").await;
    let (mut bob_client, bob) = s.user("bob").await;
    let quick = Options {
        backoff_base: Duration::from_millis(20),
        ..Options::default()
    };
    let (mut a, info) = Reliable::login(&addr, alice, &pw("alice"), quick)
        .await
        .expect("alice");
    let token = info.token.expect("a resume token");

    // the stale attempt: the same token, on another connection
    let mut stale = chat::client::Client::connect(&addr).await.expect("connect");
    stale.resume_acking(&token).await.expect("resumed");
    let notice = loop {
        match within(a.next_event()).await {
            Event::Notice(v) if v["errno"] == 54 => break v,
            Event::Replaced => panic!("gave up on a replacement by its own token"),
            _ => {}
        }
    };
    assert_eq!(notice["resumed"], true, "{notice}");
    drop(stale);

    // it comes back and goes on receiving
    bob_client.chat(alice, "still there?").await.expect("send");
    loop {
        match within(a.next_event()).await {
            Event::Message(m) => {
                assert_eq!(m.msg, "still there?");
                break;
            }
            Event::Replaced => panic!("replaced"),
            _ => {}
        }
    }
    assert!(a.stats().reconnects >= 1);

    // a password login elsewhere is another device: that one wins
    let mut other = chat::client::Client::connect(&addr).await.expect("connect");
    other.login(alice, &pw("alice")).await.expect("login");
    loop {
        match within(a.next_event()).await {
            Event::Replaced => break,
            Event::Notice(v) if v["errno"] == 54 => {
                assert!(v.get("resumed").is_none(), "{v}");
            }
            _ => {}
        }
    }
    let _ = bob;
}
