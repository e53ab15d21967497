//! The wire: identity from the session, bad input, framing, limits, and the
//! classic client's exact shapes.

mod common;

use chat::config::Config;
use common::{TestServer, assert_quiet, next_other, pw, within};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_session_not_the_request() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let (_b, bob) = s.user("bob").await;
    let (mut c, carol) = s.user("carol").await;

    // bob's id in alice's request: refused, nothing sent
    let r = a
        .request(
            json!({"msgid": 6, "id": bob, "name": "bob", "toid": carol, "msg": "it's bob, honest"}),
        )
        .await
        .expect("reply");
    assert_eq!((r.msgid(), r.errno()), (106, 21));
    let r = a
        .request(json!({"msgid": 7, "id": bob, "friendid": carol}))
        .await
        .expect("reply");
    assert_eq!((r.msgid(), r.errno()), (107, 21));
    assert_quiet(&mut c).await;

    // her own id with a made-up name and time: sent as alice, at server time
    let r = a
        .request(json!({"msgid": 6, "id": alice, "name": "mallory", "toid": carol, "msg": "hi", "time": "1970-01-01 00:00:00"}))
        .await
        .expect("reply");
    assert_eq!(r.errno(), 0);
    let m = within(c.next_message()).await.expect("message");
    assert_eq!((m.from, m.name.as_str()), (alice, "alice"));
    assert_ne!(m.time, "1970-01-01 00:00:00");

    // nothing but register and login before login
    let mut anon = s.client().await;
    for (req, ack) in [
        (
            json!({"msgid": 6, "id": alice, "toid": carol, "msg": "x"}),
            106,
        ),
        (json!({"msgid": 7, "id": alice, "friendid": carol}), 107),
        (json!({"msgid": 13}), 113),
        (json!({"msgid": 3, "id": alice}), 103),
    ] {
        let r = anon.request(req).await.expect("reply");
        assert_eq!((r.msgid(), r.errno()), (ack, 20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_gets_an_error_reply() {
    let s = TestServer::start_with(Config {
        max_message_bytes: 100,
        ..Config::default()
    })
    .await;
    let (mut a, _alice) = s.user("alice").await;
    let (_b, bob) = s.user("bob").await;

    // Frames without reqid: their replies arrive as pushes.
    let cases: &[(&[u8], i64, i64)] = &[
        (b"this is not json\0", 100, 10),
        (b"\xff\xfe\0", 100, 10),
        (b"[1,2,3]\n", 100, 12),
        (b"{\"id\":1}\n", 100, 12),
        (b"{\"msgid\":\"6\"}\n", 100, 12),
        (b"{\"msgid\":99}\n", 100, 11),
        (b"{\"msgid\":2}\n", 100, 11),
        (b"{\"msgid\":6,\"msg\":\"no receiver\"}\n", 106, 12),
        (b"{\"msgid\":6,\"toid\":\"2\",\"msg\":\"x\"}\n", 106, 12),
        (b"{\"msgid\":6,\"toid\":2,\"msg\":17}\n", 106, 12),
        (b"{\"msgid\":6,\"toid\":2,\"msg\":\"\"}\n", 106, 13),
        (b"{\"msgid\":10,\"groupid\":[],\"msg\":\"x\"}\n", 110, 12),
        (b"{\"msgid\":8,\"groupname\":\"\"}\n", 108, 13),
        (b"{\"msgid\":4,\"name\":\"x\",\"password\":\"\"}\n", 5, 13),
        (
            b"{\"msgid\":4,\"name\":\"bob \",\"password\":\"p\"}\n",
            5,
            13,
        ),
        (b"{\"msgid\":1,\"id\":\"1\",\"password\":\"p\"}\n", 2, 12),
    ];
    for (frame, msgid, errno) in cases {
        a.send_raw(frame).await.expect("send");
        let r = next_other(&mut a).await;
        assert_eq!(
            (r["msgid"].as_i64(), r["errno"].as_i64()),
            (Some(*msgid), Some(*errno)),
            "{} -> {r}",
            String::from_utf8_lossy(frame)
        );
        assert!(r["errmsg"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
    }

    // over-long values
    let long_name = "n".repeat(51);
    let r = a
        .request(json!({"msgid": 4, "name": long_name, "password": "p"}))
        .await
        .expect("reply");
    assert_eq!((r.msgid(), r.errno()), (5, 13));
    let r = a
        .request(json!({"msgid": 8, "groupname": "g", "groupdesc": "d".repeat(201)}))
        .await
        .expect("reply");
    assert_eq!(r.errno(), 13);
    let r = a
        .request(json!({"msgid": 6, "toid": bob, "msg": "m".repeat(101)}))
        .await
        .expect("reply");
    assert_eq!(r.errno(), 13, "{}", r.errmsg());
    // a reqid that is not a number or string
    a.send_raw(b"{\"msgid\":13,\"reqid\":{}}\n")
        .await
        .expect("send");
    assert_eq!(next_other(&mut a).await["errno"], 12);

    // after all that, the connection still works
    assert_eq!(a.chat(bob, "still here").await.expect("send").seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_only_that_connection() {
    let s = TestServer::start_with(Config {
        max_frame: 1024,
        ..Config::default()
    })
    .await;
    let (mut a, alice) = s.user("alice").await;
    let (mut b, bob) = s.user("bob").await;
    let mut bad = s.client().await;
    bad.send_raw(&vec![b'x'; 4096]).await.expect("send");
    let r = next_other(&mut bad).await;
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(100), Some(14)),
        "{r}"
    );
    assert!(
        within(bad.next_push()).await.is_none(),
        "closed after the error"
    );

    // a request just under the limit is fine, and others are unaffected
    let msg = "y".repeat(900);
    a.chat(bob, &msg).await.expect("send");
    assert_eq!(within(b.next_message()).await.expect("message").msg, msg);
    b.chat(alice, "ok").await.expect("send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_and_fragmented_frames_decode_the_same() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    // two requests in one write, NUL and newline terminated
    c.send_raw(b"{\"msgid\":4,\"name\":\"ann\",\"password\":\"pw-ann\"}\0{\"msgid\":4,\"name\":\"ben\",\"password\":\"pw-ben\"}\n")
        .await
        .expect("send");
    let r1 = next_other(&mut c).await;
    let r2 = next_other(&mut c).await;
    assert_eq!(
        (
            r1["msgid"].as_i64(),
            r1["errno"].as_i64(),
            r1["name"].as_str()
        ),
        (Some(5), Some(0), Some("ann"))
    );
    assert_eq!(
        (r2["errno"].as_i64(), r2["name"].as_str()),
        (Some(0), Some("ben"))
    );
    let ann = r1["id"].as_i64().expect("id");

    // one request in three writes
    let login = format!("{{\"msgid\":1,\"id\":{ann},\"password\":\"pw-ann\"}}\0");
    let (x, rest) = login.as_bytes().split_at(5);
    let (y, z) = rest.split_at(10);
    for part in [x, y, z] {
        c.send_raw(part).await.expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let r = next_other(&mut c).await;
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64(), r["name"].as_str()),
        (Some(2), Some(0), Some("ann"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_reply_has_the_classic_double_encoded_shapes() {
    let s = TestServer::start().await;
    let (mut a, alice) = s.user("alice").await;
    let bob = s.register("bob").await;
    a.add_friend(bob).await.expect("ask");
    {
        let mut b = s.client().await;
        b.login(bob, &pw("bob")).await.expect("login");
        b.answer_friend(alice, true).await.expect("accept");
        b.logout().await.expect("logout");
        common::next_with_msgid(&mut a, 32).await;
    }
    let g = a.create_group("g", "desc").await.expect("group");
    a.chat(bob, "hello").await.expect("send");
    a.group_chat(g, "to nobody").await.expect("send");

    // exactly what the original client sends: NUL-terminated, no reqid
    let mut b = s.client().await;
    b.send_raw(
        format!(
            "{{\"msgid\":1,\"id\":{bob},\"password\":\"{}\"}}\0",
            pw("bob")
        )
        .as_bytes(),
    )
    .await
    .expect("send");
    let r = next_other(&mut b).await;
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64(), r["id"].as_i64()),
        (Some(2), Some(0), Some(bob.0))
    );
    assert_eq!(r["name"], "bob");
    let strings = |v: &Value| -> Vec<Value> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| {
                serde_json::from_str(s.as_str().expect("list element is a JSON string"))
                    .expect("json")
            })
            .collect()
    };
    let friends = strings(&r["friends"]);
    assert_eq!(
        friends,
        vec![json!({"id": alice, "name": "alice", "state": "online"})]
    );
    let offline = strings(&r["offlinemsg"]);
    assert_eq!(offline.len(), 1);
    assert_eq!(
        (
            offline[0]["msgid"].as_i64(),
            offline[0]["id"].as_i64(),
            offline[0]["toid"].as_i64()
        ),
        (Some(6), Some(alice.0), Some(bob.0))
    );
    assert_eq!(offline[0]["msg"], "hello");
    assert!(offline[0]["time"].is_string());
    assert!(r.get("groups").is_none(), "bob is in no group");

    // groups: strings of objects whose `users` are strings of objects
    a.logout().await.expect("logout");
    a.send_raw(
        format!(
            "{{\"msgid\":1,\"id\":{alice},\"password\":\"{}\"}}\0",
            pw("alice")
        )
        .as_bytes(),
    )
    .await
    .expect("send");
    let r = next_other(&mut a).await;
    let groups = strings(&r["groups"]);
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (
            groups[0]["id"].as_i64(),
            groups[0]["groupname"].as_str(),
            groups[0]["groupdesc"].as_str()
        ),
        (Some(g.0), Some("g"), Some("desc"))
    );
    let users = strings(&groups[0]["users"]);
    assert_eq!(
        users,
        vec![json!({"id": alice, "name": "alice", "state": "online", "role": "creator"})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_politely() {
    let s = TestServer::start_with(Config {
        max_connections: 2,
        ..Config::default()
    })
    .await;
    let (mut a, _alice) = s.user("alice").await;
    let (_b, bob) = s.user("bob").await;
    let mut third = s.client().await;
    let r = next_other(&mut third).await;
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(100), Some(51)),
        "{r}"
    );
    assert!(within(third.next_push()).await.is_none());
    a.chat(bob, "the two of us are fine").await.expect("send");
}
