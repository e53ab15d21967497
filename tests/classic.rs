//! The original terminal client, as its users run it against us.
//!
//! [`Original`] reads exactly as the original client's `readTaskHandler`
//! does: one `recv` of at most 1024 bytes into a zeroed buffer, parsed as
//! one JSON document, then a short pause (the original prints what it
//! read). A read holding two frames, part of one, or a full buffer with no
//! room for the terminating NUL would crash the original; every such read
//! fails these tests.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat::config::Config;
use chat::model::UserId;
use common::{TestServer, pw, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// What the original spends per read, printing it.
const PRINT_PAUSE: Duration = Duration::from_millis(1);

/// A connection that reads like the original client.
struct Original {
    writer: OwnedWriteHalf,
    reads: mpsc::UnboundedReceiver<Value>,
    /// Reads the original could not have parsed.
    bad: Arc<Mutex<Vec<String>>>,
}

impl Original {
    async fn connect(server: &TestServer) -> Original {
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        let (mut read, writer) = stream.into_split();
        let (tx, reads) = mpsc::unbounded_channel();
        let bad = Arc::new(Mutex::new(Vec::new()));
        let bad2 = bad.clone();
        tokio::spawn(async move {
            loop {
                let mut buf = [0u8; 1024];
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if n == buf.len() {
                    // No NUL left in the buffer: the parser runs off its end.
                    bad2.lock()
                        .expect("lock")
                        .push(format!("full buffer: {text}"));
                    continue;
                }
                match serde_json::from_slice::<Value>(&buf[..n]) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => bad2.lock().expect("lock").push(format!("{e}: {text}")),
                }
                tokio::time::sleep(PRINT_PAUSE).await;
            }
        });
        Original { writer, reads, bad }
    }

    /// Sends a request as the original does: JSON and a NUL, no `reqid`.
    async fn send(&mut self, v: Value) {
        let mut bytes = serde_json::to_vec(&v).expect("json");
        bytes.push(0);
        self.writer.write_all(&bytes).await.expect("send");
    }

    /// The next read, parsed.
    async fn next(&mut self) -> Value {
        within(self.reads.recv()).await.expect("connection closed")
    }

    /// Reads until `n` chat messages have arrived; fails on anything else
    /// but presence (which the original ignores... and should not get).
    async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        while got.len() < n {
            let v = self.next().await;
            match v["msgid"].as_i64() {
                Some(6 | 10) => got.push(v),
                _ => panic!("unexpected frame {v}"),
            }
        }
        got
    }

    async fn login(&mut self, id: UserId, name: &str) -> Value {
        self.send(json!({"msgid": 1, "id": id, "password": pw(name)}))
            .await;
        let r = self.next().await;
        assert_eq!(
            (r["msgid"].as_i64(), r["errno"].as_i64()),
            (Some(2), Some(0)),
            "{r}"
        );
        r
    }

    /// Asserts that nothing arrives for a while.
    async fn quiet(&mut self, d: Duration) {
        if let Ok(Some(v)) = tokio::time::timeout(d, self.reads.recv()).await {
            panic!("expected nothing, got {v}");
        }
    }

    fn assert_all_parsed(&self) {
        let bad = self.bad.lock().expect("lock");
        assert!(
            bad.is_empty(),
            "reads the original could not parse: {bad:#?}"
        );
    }
}

/// The offline messages a login reply carries, parsed from their strings.
fn offline(reply: &Value) -> Vec<Value> {
    reply["offlinemsg"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| serde_json::from_str(s.as_str().expect("string")).expect("json"))
                .collect()
        })
        .unwrap_or_default()
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["msg"].as_str().expect("msg").to_owned())
        .collect()
}

fn quick_grace() -> Config {
    Config {
        classic_read_grace: Duration::from_millis(300),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_offline_messages_arrive_at_login_each_read_whole() {
    let s = TestServer::start_with(quick_grace()).await;
    let (mut alice, _) = s.user("alice").await;
    let bob = s.register("bob").await;
    let sent: Vec<String> = (1..=20).map(|i| format!("离线 {i} 👋")).collect();
    for m in &sent {
        alice.chat(bob, m).await.expect("send");
    }
    let mut b = Original::connect(&s).await;
    let reply = b.login(bob, "bob").await;
    assert!(
        reply.get("token").is_none(),
        "no token for a client that cannot resume"
    );
    let mut got = offline(&reply);
    assert!(
        !got.is_empty() && got.len() < 20,
        "{} in the reply",
        got.len()
    );
    let rest = 20 - got.len();
    got.extend(b.messages(rest).await);
    assert_eq!(texts(&got), sent, "all twenty, in order, once");
    b.quiet(Duration::from_millis(200)).await;
    b.assert_all_parsed();

    // Read and kept past the grace: not offered again at the next login.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = Original::connect(&s).await;
    let reply = again.login(bob, "bob").await;
    assert!(offline(&reply).is_empty(), "{reply}");
    again.quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_original_client_never_read_comes_again() {
    let s = TestServer::start_with(quick_grace()).await;
    let (mut alice, _) = s.user("alice").await;
    let bob = s.register("bob").await;
    for i in 1..=3 {
        alice.chat(bob, &format!("m{i}")).await.expect("send");
    }
    // The client dies at once after reading its login reply (as the
    // original did, crashing on a frame it could not parse).
    let mut b = Original::connect(&s).await;
    let reply = b.login(bob, "bob").await;
    assert_eq!(offline(&reply).len(), 3);
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut b = Original::connect(&s).await;
    let reply = b.login(bob, "bob").await;
    assert_eq!(texts(&offline(&reply)), ["m1", "m2", "m3"], "{reply}");
    // This time it stays: the next message is the only new one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    alice.chat(bob, "m4").await.expect("send");
    assert_eq!(texts(&b.messages(1).await), ["m4"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_b, _) = {
        let mut c = s.client().await;
        let info = c.login(bob, &pw("bob")).await.expect("login");
        assert!(info.offline.is_empty(), "{:?}", info.offline);
        (c, ())
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_senders_at_once_reach_the_original_client_one_read_each() {
    let s = TestServer::start().await;
    let carol = s.register("carol").await;
    let mut c = Original::connect(&s).await;
    c.login(carol, "carol").await;
    let mut senders = Vec::new();
    for name in ["alice", "bob", "dave"] {
        senders.push(s.user(name).await);
    }
    let group = senders[0]
        .0
        .create_group("team", "all of us")
        .await
        .expect("group");
    for (client, _) in senders.iter_mut().skip(1) {
        client.join_group(group).await.expect("join");
    }
    c.send(json!({"msgid": 9, "id": carol, "groupid": group}))
        .await;

    // Two, then three senders writing to carol at the same moment.
    for n in [2usize, 3] {
        let mut tasks = Vec::new();
        for (mut client, id) in senders.drain(..) {
            let active = tasks.len() < n;
            tasks.push(tokio::spawn(async move {
                if active {
                    for i in 0..10 {
                        client
                            .chat(carol, &format!("{id}:{i}"))
                            .await
                            .expect("send");
                    }
                }
                (client, id)
            }));
        }
        let got = c.messages(10 * n).await;
        for t in tasks {
            senders.push(t.await.expect("sender"));
        }
        for (_, id) in senders.iter().take(n) {
            let mine: Vec<String> = got
                .iter()
                .filter(|m| m["id"].as_i64() == Some(id.0))
                .map(|m| m["msg"].as_str().expect("msg").to_owned())
                .collect();
            let want: Vec<String> = (0..10).map(|i| format!("{id}:{i}")).collect();
            assert_eq!(mine, want, "from {id}, in order, once");
        }
    }

    // The group: three members and carol herself writing at once. Her own
    // sends get no reply (the original server sent none), so nothing of
    // hers shares a read with theirs.
    let mut tasks = Vec::new();
    for (mut client, id) in senders.drain(..) {
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                client
                    .group_chat(group, &format!("g{id}:{i}"))
                    .await
                    .expect("send");
            }
            (client, id)
        }));
    }
    for i in 0..10 {
        c.send(json!({"msgid": 10, "id": carol, "groupid": group, "msg": format!("carol {i}")}))
            .await;
    }
    let got = c.messages(30).await;
    for t in tasks {
        senders.push(t.await.expect("sender"));
    }
    assert!(
        got.iter()
            .all(|m| m["msgid"] == 10 && m["groupid"] == group.0)
    );
    assert_eq!(got.iter().filter(|m| m["id"] == carol.0).count(), 0);
    // The others hear carol's ten.
    let (alice, _) = &mut senders[0];
    let mut hers = Vec::new();
    while hers.len() < 10 {
        let m = within(alice.next_message()).await.expect("message");
        if m.from == carol {
            hers.push(m.msg);
        }
    }
    assert_eq!(
        hers,
        (0..10).map(|i| format!("carol {i}")).collect::<Vec<_>>()
    );
    c.quiet(Duration::from_millis(200)).await;
    c.assert_all_parsed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_reaches_the_original_client_whole_in_parts() {
    let s = TestServer::start().await;
    let (mut alice, _) = s.user("alice").await;
    let bob = s.register("bob").await;
    let mut b = Original::connect(&s).await;
    b.login(bob, "bob").await;
    let long: String = "长消息 long message 👋 "
        .chars()
        .cycle()
        .take(1500)
        .collect();
    alice.chat(bob, &long).await.expect("send");
    let first = b.next().await;
    let total: usize = first["msg"]
        .as_str()
        .and_then(|m| m.strip_prefix("(1/"))
        .and_then(|m| m.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("a numbered part");
    let mut parts = vec![first];
    parts.extend(b.messages(total - 1).await);
    let whole: String = parts
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let prefix = format!("({}/{total}) ", k + 1);
            p["msg"]
                .as_str()
                .and_then(|m| m.strip_prefix(&prefix))
                .expect("part")
                .to_owned()
        })
        .collect();
    assert_eq!(whole, long);
    b.assert_all_parsed();
}

/// A person at the original client's menu: it connects first, then waits
/// for them to type. Nobody is thrown out for taking their time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_at_the_menu_is_left_alone() {
    let s = TestServer::start().await;
    let (mut alice, _) = s.user("alice").await;
    let mut c = Original::connect(&s).await;
    c.send(json!({"msgid": 4, "name": "carol", "password": pw("carol")}))
        .await;
    let r = c.next().await;
    assert_eq!(
        (r["msgid"].as_i64(), r["errno"].as_i64()),
        (Some(5), Some(0)),
        "{r}"
    );
    let carol = chat::model::UserId(r["id"].as_i64().expect("id"));
    alice
        .chat(carol, "while you were away")
        .await
        .expect("send");
    // A minute at the menu, then the login.
    c.quiet(Duration::from_secs(60)).await;
    let reply = c.login(carol, "carol").await;
    assert_eq!(texts(&offline(&reply)), ["while you were away"]);
    // Log out (no reply, as from the original server), pause a minute,
    // log in again on the same connection.
    c.send(json!({"msgid": 3, "id": carol})).await;
    c.quiet(Duration::from_secs(60)).await;
    let reply = c.login(carol, "carol").await;
    assert!(offline(&reply).is_empty(), "{reply}");
    alice.chat(carol, "welcome back").await.expect("send");
    assert_eq!(texts(&c.messages(1).await), ["welcome back"]);
    c.assert_all_parsed();
}

/// Recall and edit reach the original client, which knows neither, as
/// ordinary chat frames whose text says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_and_edit_reach_the_original_client_as_readable_lines() {
    let server = TestServer::start_with(quick_grace()).await;
    let alice = server.register("alice").await;
    let (mut bob, _) = server.user("bob").await;
    let mut a = Original::connect(&server).await;
    a.login(alice, "alice").await;
    let first = bob.chat(alice, "meet at 5").await.expect("send").seq;
    let second = bob.chat(alice, "oops, wrong chat").await.expect("send").seq;
    assert_eq!(a.messages(2).await.len(), 2);
    let with = chat::protocol::HistoryTarget::User(alice);
    bob.edit(with, first, "meet at 6").await.expect("edit");
    bob.recall(with, second).await.expect("recall");
    let got = a.messages(2).await;
    assert_eq!(
        texts(&got),
        [
            format!("[edited message #{first}] meet at 6"),
            format!("[recalled message #{second}]"),
        ]
    );
    a.assert_all_parsed();
}
