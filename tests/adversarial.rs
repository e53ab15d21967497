//! Hostile clients: each attack that used to work, tried again, while a
//! bystander pair keeps chatting. Attackers connect from their own loopback
//! addresses (127.0.0.2 and up) and loopback is not exempt here, so the
//! per-address limits apply to them and not to the bystanders (127.0.0.1).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat::client::{Client, Push};
use chat::config::{Config, Limits};
use chat::model::UserId;
use common::{TestServer, pw, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

fn config(limits: Limits) -> Config {
    Config {
        limits: Limits {
            exempt_loopback: false,
            ..limits
        },
        ..Config::default()
    }
}

/// A raw connection from source address 127.0.0.`host`.
async fn connect_from(server: SocketAddr, host: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, host], 0)))
        .expect("bind source");
    socket.connect(server).await.expect("connect")
}

async fn client_from(server: SocketAddr, host: u8) -> Client {
    Client::over(connect_from(server, host).await).expect("client")
}

/// Reads frames from a raw connection until it closes; returns them.
async fn read_until_closed(mut s: TcpStream) -> Vec<Value> {
    let mut buf = Vec::new();
    let _ = within(s.read_to_end(&mut buf)).await;
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Two users chatting back and forth all along; `finish` checks that every
/// message arrived, in order, and nobody was disconnected.
struct Bystanders {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<(u32, Duration)>,
}

impl Bystanders {
    async fn start(server: &TestServer) -> Bystanders {
        let (mut a, _) = server.user("bystander_a").await;
        let (mut b, b_id) = server.user("bystander_b").await;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut sent = 0u32;
            let mut slowest = Duration::ZERO;
            while stopped.try_recv().is_err() {
                let text = format!("hello {sent}");
                let t = Instant::now();
                a.chat(b_id, &text).await.expect("bystander send");
                let got = within(b.next_message()).await.expect("bystander closed");
                assert_eq!(got.msg, text, "in order, nothing lost");
                slowest = slowest.max(t.elapsed());
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (sent, slowest)
        });
        Bystanders { stop, task }
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        let (sent, slowest) = within(self.task).await.expect("bystanders failed");
        assert!(sent > 0, "the bystanders chatted");
        println!("bystanders: {sent} messages, slowest {slowest:?}");
    }
}

async fn register_from(server: SocketAddr, host: u8, name: &str) -> UserId {
    let mut c = client_from(server, host).await;
    c.register(name, &pw(name)).await.expect("register")
}

async fn login_raw(c: &mut Client, id: UserId, password: &str) -> chat::client::Reply {
    c.request(json!({"msgid": 1, "id": id, "password": password}))
        .await
        .expect("reply")
}

#[tokio::test]
async fn password_guessing_is_throttled_per_account_and_per_address() {
    let server = TestServer::start_with(config(Limits {
        account_free_failures: 3,
        addr_free_failures: 6,
        lockout_max: Duration::from_secs(2),
        ..Limits::default()
    }))
    .await;
    let by = Bystanders::start(&server).await;
    let victim = register_from(server.addr, 2, "victim").await;

    // Three wrong guesses are answered as wrong; the fourth locks the
    // account, and the right password is then refused until the wait ends.
    let mut guesser = client_from(server.addr, 3).await;
    for _ in 0..4 {
        assert_eq!(login_raw(&mut guesser, victim, "guess").await.errno(), 1);
    }
    let mut owner = client_from(server.addr, 4).await;
    let locked = login_raw(&mut owner, victim, &pw("victim")).await;
    assert_eq!(locked.errno(), 60, "{:?}", locked.0);
    let wait = locked.i64("retry_ms").expect("retry_ms");
    assert!((1..=1000).contains(&wait), "first lock is 1 s: {wait}");
    tokio::time::sleep(Duration::from_millis(wait as u64 + 50)).await;
    let ok = login_raw(&mut owner, victim, &pw("victim")).await;
    assert_eq!(ok.errno(), 0, "the owner gets in once the wait is over");

    // One address guessing across many accounts is locked as an address:
    // its guesses against fresh accounts are refused without a check.
    let mut spray = client_from(server.addr, 5).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(register_from(server.addr, 10 + i, &format!("spray{i}")).await);
    }
    for id in &ids[..7] {
        login_raw(&mut spray, *id, "guess").await;
    }
    let refused = login_raw(&mut spray, ids[7], &pw("spray7")).await;
    assert_eq!(
        refused.errno(),
        60,
        "the address is locked: {:?}",
        refused.0
    );
    // Another address logs into that account at once.
    let mut other = client_from(server.addr, 6).await;
    assert_eq!(
        login_raw(&mut other, ids[7], &pw("spray7")).await.errno(),
        0
    );
    by.finish().await;
}

#[tokio::test]
async fn registrations_are_limited_per_address() {
    let server = TestServer::start_with(config(Limits {
        register_burst: 3,
        register_interval: Duration::from_secs(60),
        ..Limits::default()
    }))
    .await;
    let mut c = client_from(server.addr, 2).await;
    for i in 0..3 {
        c.register(&format!("r{i}"), "pw")
            .await
            .expect("within the burst");
    }
    let refused = c
        .request(json!({"msgid": 4, "name": "r3", "password": "pw"}))
        .await
        .expect("reply");
    assert_eq!(refused.errno(), 62, "{:?}", refused.0);
    assert!(refused.i64("retry_ms").expect("retry_ms") > 50_000);
    // Another address is not held back.
    let mut other = client_from(server.addr, 3).await;
    other.register("r3", "pw").await.expect("another address");
}

#[tokio::test]
async fn sockets_that_never_log_in_or_trickle_a_frame_are_closed() {
    let server = TestServer::start_with(config(Limits {
        login_timeout: Duration::from_millis(500),
        frame_timeout: Duration::from_millis(300),
        ..Limits::default()
    }))
    .await;
    let by = Bystanders::start(&server).await;
    // Idle, never logging in.
    let idle = connect_from(server.addr, 2).await;
    let t = Instant::now();
    let frames = read_until_closed(idle).await;
    assert_eq!(frames.last().and_then(|f| f["errno"].as_i64()), Some(58));
    assert!(t.elapsed() >= Duration::from_millis(450));
    // Slowloris: one byte at a time, never finishing the frame.
    let mut slow = connect_from(server.addr, 3).await;
    let trickle = async {
        for b in br#"{"msgid":16,"reqid":1"#.iter().cycle().take(40) {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    };
    let slow = within(trickle).await;
    let frames = read_until_closed(slow).await;
    assert_eq!(frames.last().and_then(|f| f["errno"].as_i64()), Some(59));
    // A logged-in user is not held to the login deadline.
    tokio::time::sleep(Duration::from_millis(600)).await;
    by.finish().await;
}

/// Whether `s` is still open and silent after `wait`.
async fn still_open(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(wait, s.read(&mut buf)).await.is_err()
}

/// Reads `s` until it closes (an error counts: a reset may beat the
/// notice); returns when, and the frames that came.
async fn until_closed(mut s: impl tokio::io::AsyncRead + Unpin) -> (Instant, Vec<Value>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match within(s.read(&mut chunk)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let frames = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    (Instant::now(), frames)
}

fn pressed(limits: Limits) -> Limits {
    Limits {
        login_timeout: Duration::from_secs(60),
        login_timeout_pressed: Duration::from_millis(400),
        ..limits
    }
}

/// A connection that has not logged in is left alone for minutes (a person
/// at the original client's menu) unless it presses on the node: its
/// address holds too many such connections, or the node is near its cap.
/// Then the short deadline applies, and only as far as needed.
#[tokio::test]
async fn anonymous_sockets_are_closed_early_only_under_pressure() {
    let server = TestServer::start_with(Config {
        max_connections: 20,
        ..config(pressed(Limits {
            anonymous_per_addr: 3,
            ..Limits::default()
        }))
    })
    .await;
    let by = Bystanders::start(&server).await;
    let mut lone = connect_from(server.addr, 3).await;
    let mut crowd = Vec::new();
    for _ in 0..3 {
        crowd.push(connect_from(server.addr, 2).await);
    }
    // Within the address's allowance, past the short deadline: kept.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for s in &mut crowd {
        assert!(still_open(s, Duration::from_millis(20)).await);
    }
    // One more from that address: some of its older ones make room.
    crowd.push(connect_from(server.addr, 2).await);
    let t = Instant::now();
    let mut closed = 0;
    let mut kept = Vec::new();
    for mut s in crowd.drain(..3) {
        if still_open(&mut s, Duration::from_millis(800)).await {
            kept.push(s);
        } else {
            closed += 1;
        }
    }
    assert!(closed >= 1, "the crowded address shed a connection");
    assert!(t.elapsed() < Duration::from_secs(3));
    // The other address is not crowded: its socket stays.
    assert!(still_open(&mut lone, Duration::from_millis(20)).await);

    // Near the cap (9 of 10 places taken), anonymous sockets old enough
    // make room wherever they come from; logged-in users stay.
    drop((kept, crowd, lone));
    let mut many = Vec::new();
    for host in 10..26 {
        many.push(connect_from(server.addr, host).await);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut open = 0;
    for s in &mut many {
        if still_open(s, Duration::from_millis(20)).await {
            open += 1;
        }
    }
    assert!(open < many.len(), "some made room");
    assert!(open >= 10, "only as many as needed: {open} still open");
    by.finish().await;
}

/// Frames cannot outrun the login deadline, and a socket that sends
/// nothing but refused frames gets the short one.
#[tokio::test]
async fn floods_before_login_do_not_hold_the_connection() {
    let server = TestServer::start_with(config(Limits {
        login_timeout: Duration::from_secs(2),
        login_timeout_pressed: Duration::from_millis(400),
        ..Limits::default()
    }))
    .await;
    let by = Bystanders::start(&server).await;
    // Garbage only: closed at the short deadline.
    let noisy = connect_from(server.addr, 4).await;
    let (mut noisy_r, mut noisy_w) = noisy.into_split();
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..1000 {
            if noisy_w.write_all(b"garbage\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut buf = [0u8; 4096];
    loop {
        match within(noisy_r.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1800),
        "{took:?}"
    );
    writer.abort();

    // A registration first (a person), then a 200 KB burst of invalid
    // frames: the burst waits under the request budget, but the login
    // deadline still closes the connection on time.
    let mut s = connect_from(server.addr, 5).await;
    s.write_all(br#"{"msgid":4,"name":"menu_user","password":"pw"}"#)
        .await
        .expect("register");
    s.write_all(b"\0").await.expect("register");
    let t = Instant::now();
    let (r, mut w) = s.into_split();
    let burst = tokio::spawn(async move {
        let _ = w.write_all(&b"x\n".repeat(100_000)).await;
        w
    });
    let (closed, frames) = within(until_closed(r)).await;
    let took = closed.duration_since(t);
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        frames.first().and_then(|f| f["msgid"].as_i64()),
        Some(5),
        "registered"
    );
    burst.abort();
    by.finish().await;
}

#[tokio::test]
async fn a_large_frame_before_login_is_refused() {
    let server = TestServer::start_with(config(Limits {
        prelogin_max_frame: 1024,
        ..Limits::default()
    }))
    .await;
    let mut s = connect_from(server.addr, 2).await;
    let big = format!(
        r#"{{"msgid":4,"name":"{}","password":"x"}}"#,
        "n".repeat(2000)
    );
    s.write_all(big.as_bytes()).await.expect("write");
    s.write_all(b"\n").await.expect("write");
    let frames = read_until_closed(s).await;
    assert_eq!(frames.last().and_then(|f| f["errno"].as_i64()), Some(14));
    // Logged in, frames up to the normal limit pass.
    let (mut c, _) = server.user("big").await;
    let reply = c
        .request(json!({"msgid": 16, "pad": "p".repeat(4000)}))
        .await
        .expect("reply");
    assert_eq!(reply.errno(), 0);
}

#[tokio::test]
async fn one_address_cannot_fill_the_connection_cap() {
    let server = TestServer::start_with(Config {
        max_connections: 50,
        ..config(Limits {
            conns_per_addr: 5,
            ..Limits::default()
        })
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(server.addr, 2).await);
    }
    let refused = connect_from(server.addr, 2).await;
    let frames = read_until_closed(refused).await;
    assert_eq!(frames.last().and_then(|f| f["errno"].as_i64()), Some(51));
    // Everybody else still gets in, and chats.
    let by = Bystanders::start(&server).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    by.finish().await;
    drop(held);
}

#[tokio::test]
async fn a_flood_slows_the_flooder_and_never_disconnects_the_flooded() {
    let server = TestServer::start_with(Config {
        push_queue: 16,
        ..config(Limits {
            // Low enough that even a slow machine (a commit of several ms
            // per message, with the suite running beside it) handles the
            // flood faster than the budget refills: at 500/s a loaded CI
            // run never ran out, and nobody was told to slow down.
            request_rate: 200,
            request_burst: 200,
            ..Limits::default()
        })
    })
    .await;
    let by = Bystanders::start(&server).await;
    let victim_id = server.register("victim").await;
    let flooder_id = server.register("flooder").await;
    let mut flooder = client_from(server.addr, 2).await;
    flooder
        .login(flooder_id, &pw("flooder"))
        .await
        .expect("login");

    // The victim is a raw connection with a small receive buffer that stops
    // reading once logged in, so the server's push queue for it fills up.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let victim = socket.connect(server.addr).await.expect("connect");
    let mut victim = tokio::io::BufReader::new(victim);
    // (Its reqid declares it one of ours, not the original client, whose
    // frames would be cut to 1 KB and spaced.)
    let login = format!(
        r#"{{"msgid":1,"reqid":1,"id":{victim_id},"password":"{}"}}"#,
        pw("victim")
    );
    victim
        .get_mut()
        .write_all(format!("{login}\n").as_bytes())
        .await
        .expect("login");
    let mut line = String::new();
    within(tokio::io::AsyncBufReadExt::read_line(
        &mut victim,
        &mut line,
    ))
    .await
    .expect("login reply");
    let reply: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(reply["errno"], 0, "{reply}");

    // 800 messages of 7 KB as fast as the connection takes them: more
    // than the kernel's socket buffers hold on loopback (about 1.3 MB at
    // its 64 KiB segments, more as the server's send buffer grows), so the
    // victim's push queue overflows.
    const N: usize = 800;
    let pad = "p".repeat(7000);
    let dropped_before = chat::metrics::METRICS.pushes_dropped.get();
    let t = Instant::now();
    let mut frames = Vec::new();
    for i in 0..N {
        frames.extend_from_slice(
            format!(r#"{{"msgid":6,"id":{flooder_id},"toid":{victim_id},"msg":"f{i} {pad}"}}"#)
                .as_bytes(),
        );
        frames.push(b'\n');
    }
    flooder.send_raw(&frames).await.expect("flood");
    let mut slowed = false;
    let mut stored = 0;
    while stored < N {
        match within(flooder.next_push()).await.expect("flooder closed") {
            Push::Other(v) if v["errno"] == 57 => slowed = true,
            Push::Other(v) if v["msgid"] == 106 && v["errno"] == 0 => stored += 1,
            Push::Other(v) => panic!("flooder got {v}"),
            Push::Message(_) => {}
        }
    }
    let took = t.elapsed();
    assert!(slowed, "the flooder was told to slow down");
    assert!(
        took >= Duration::from_millis(2700),
        "600 over the burst at 200/s take 3 s: {took:?}"
    );
    assert!(
        chat::metrics::METRICS.pushes_dropped.get() > dropped_before,
        "the victim's push queue overflowed"
    );
    // The victim, reading now, gets every message once, in order, and was
    // never disconnected: past its full queue it read from the store.
    let mut next = 0;
    while next < N {
        line.clear();
        let n = within(tokio::io::AsyncBufReadExt::read_line(
            &mut victim,
            &mut line,
        ))
        .await
        .expect("read");
        assert!(n > 0, "the victim was disconnected after {next} messages");
        let v: Value = serde_json::from_str(&line).expect("json");
        let Some(msg) = v["msg"].as_str() else {
            panic!("the victim got {v}");
        };
        assert_eq!(msg, format!("f{next} {pad}"), "in order, once");
        next += 1;
    }
    victim
        .get_mut()
        .write_all(b"{\"msgid\":16,\"ts\":1}\n")
        .await
        .expect("ping");
    line.clear();
    within(tokio::io::AsyncBufReadExt::read_line(
        &mut victim,
        &mut line,
    ))
    .await
    .expect("pong");
    assert!(line.contains("116"), "still connected: {line}");
    by.finish().await;
}

#[tokio::test]
async fn look_alike_names_are_refused() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.register("Alice", "pw").await.expect("alice");
    for (name, errno) in [
        ("\u{410}lice", 13),   // Cyrillic А
        ("Al\u{200B}ice", 13), // zero-width space
        ("ecilA\u{202E}", 13), // right-to-left override
        ("\u{FEFF}Alice", 13), // BOM
        ("Ａｌｉｃｅ", 1),     // fullwidth: the same name, taken
        ("Ali\u{301}ce", 0),   // a combining accent: a new name "Alíce"
        ("Alíce", 1),          // precomposed: the same, taken
    ] {
        let r = c
            .request(json!({"msgid": 4, "name": name, "password": "pw"}))
            .await
            .expect("reply");
        assert_eq!(r.errno(), errno, "{name:?}: {:?}", r.0);
    }
}

#[tokio::test]
async fn quotas_answer_with_errno_61() {
    let server = TestServer::start_with(config(Limits {
        groups_per_user: 3,
        pending_requests: 2,
        friend_requests_per_day: 3,
        bytes_per_user_day: 10_000,
        history_max_bytes: 4000,
        ..Limits::default()
    }))
    .await;
    let (mut a, _) = server.user("quota_a").await;
    for i in 0..3 {
        a.create_group(&format!("g{i}"), "").await.expect("group");
    }
    let err = a.create_group("g3", "").await.expect_err("fourth group");
    assert_eq!(err.errno(), Some(61));
    let (f1, f2, f3, f4) = (
        server.register("f1").await,
        server.register("f2").await,
        server.register("f3").await,
        server.register("f4").await,
    );
    // Two friend requests may wait for an answer, three be made a day.
    a.add_friend(f1).await.expect("ask");
    a.add_friend(f2).await.expect("ask");
    assert_eq!(
        a.add_friend(f3).await.expect_err("third pending").errno(),
        Some(61)
    );
    a.del_friend(f2).await.expect("withdraw");
    a.add_friend(f3).await.expect("ask");
    a.del_friend(f3).await.expect("withdraw");
    assert_eq!(
        a.add_friend(f4).await.expect_err("fourth today").errno(),
        Some(61)
    );
    // (Asking again one withdrawn today is not a new request of the day.)
    a.add_friend(f2).await.expect("ask again");
    // 10 messages of 900 bytes fit the day's 10,000 bytes; the 12th does not.
    let body = "b".repeat(900);
    for _ in 0..11 {
        a.chat(f1, &body).await.expect("within the quota");
    }
    assert_eq!(a.chat(f1, &body).await.expect_err("over").errno(), Some(61));
    // A history request asks for 50 and gets the newest that fit 4,000 bytes.
    let page = a
        .request(json!({"msgid": 14, "toid": f1, "limit": 50}))
        .await
        .expect("history");
    let n = page
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert!((1..11).contains(&n), "cut short: {n} of 11");
}

#[tokio::test]
async fn one_sender_cannot_bury_an_offline_receiver() {
    let server = TestServer::start_with(config(Limits {
        unread_per_sender: 5,
        ..Limits::default()
    }))
    .await;
    let by = Bystanders::start(&server).await;
    let (mut a, _) = server.user("unread_a").await;
    let (mut c, _) = server.user("unread_c").await;
    let b = server.register("unread_b").await;
    for i in 0..5 {
        a.chat(b, &format!("m{i}")).await.expect("within the quota");
    }
    let err = a.chat(b, "one too many").await.expect_err("over");
    assert_eq!(err.errno(), Some(61), "{err}");
    // Someone else may still write to the receiver.
    c.chat(b, "from c").await.expect("another sender");

    // The receiver reads its backlog; then the sender may write again.
    let mut rb = server.client().await;
    let info = rb.login(b, &pw("unread_b")).await.expect("login");
    let got: Vec<_> = info.offline.iter().map(|m| m.msg.as_str()).collect();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4", "from c"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The receiver's position is stored right after its first page.
        match a.chat(b, "after reading").await {
            Ok(_) => break,
            Err(e) if e.errno() == Some(61) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("still refused after the receiver read: {e}"),
        }
    }
    let m = within(rb.next_message()).await.expect("live");
    assert_eq!(m.msg, "after reading");
    by.finish().await;
}

/// The next frame on a raw connection, read a byte at a time so that
/// nothing after it is consumed.
async fn read_frame(s: &mut TcpStream) -> Value {
    let mut buf = Vec::new();
    while !buf.ends_with(b"\n") {
        let mut byte = [0u8; 1];
        let n = within(s.read(&mut byte)).await.expect("read");
        assert!(n > 0, "closed before a whole frame");
        buf.push(byte[0]);
    }
    serde_json::from_slice(&buf).expect("json")
}

/// SERVER_INFO's view of where a raw connection comes from.
async fn client_seen(s: &mut TcpStream) -> Value {
    s.write_all(b"{\"msgid\":15}\n").await.expect("write");
    read_frame(s).await
}

#[tokio::test]
async fn behind_a_trusted_balancer_the_limits_count_real_clients() {
    let server = TestServer::start_with(Config {
        proxy: chat::proxy::ProxyTrust {
            from: vec!["127.0.0.3".parse().expect("ip")],
        },
        ..config(Limits {
            conns_per_addr: 2,
            frame_timeout: Duration::from_secs(1),
            ..Limits::default()
        })
    })
    .await;
    let by = Bystanders::start(&server).await;
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 8000\r\n");

    // The balancer connects from 127.0.0.3 (the bystanders, from
    // 127.0.0.1, keep clear of the cap of 2 counted here).
    // A v1 header from the trusted balancer names the client.
    let mut a = connect_from(server.addr, 3).await;
    a.write_all(v1("203.0.113.7").as_bytes()).await.expect("v1");
    assert_eq!(client_seen(&mut a).await["client"], "203.0.113.7");
    // So does a v2 one.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x10, 0x92, 0x1f, 0x40]);
    let mut b = connect_from(server.addr, 3).await;
    b.write_all(&header).await.expect("v2");
    assert_eq!(client_seen(&mut b).await["client"], "198.51.100.9");
    // A direct client on the balancer's address needs no header.
    let mut direct = connect_from(server.addr, 3).await;
    let seen = client_seen(&mut direct).await;
    assert_eq!(seen["client"], "127.0.0.3", "{seen}");

    // The per-address cap counts the named client, not the balancer.
    let mut second = connect_from(server.addr, 3).await;
    second
        .write_all(v1("203.0.113.7").as_bytes())
        .await
        .expect("v1");
    assert_eq!(client_seen(&mut second).await["client"], "203.0.113.7");
    let mut third = connect_from(server.addr, 3).await;
    third
        .write_all(v1("203.0.113.7").as_bytes())
        .await
        .expect("v1");
    let frames = read_until_closed(third).await;
    assert_eq!(frames.last().and_then(|f| f["errno"].as_i64()), Some(51));
    let mut other = connect_from(server.addr, 3).await;
    other
        .write_all(v1("203.0.113.8").as_bytes())
        .await
        .expect("v1");
    assert_eq!(client_seen(&mut other).await["client"], "203.0.113.8");

    // Anyone else's header is not believed: it is just a bad frame.
    let mut liar = connect_from(server.addr, 2).await;
    liar.write_all(v1("203.0.113.9").replace("\r\n", "\n").as_bytes())
        .await
        .expect("v1");
    let refused = read_frame(&mut liar).await;
    assert_ne!(refused["errno"], 0, "{refused}");
    assert_eq!(client_seen(&mut liar).await["client"], "127.0.0.2");

    // A header that never finishes is dropped within the frame deadline.
    let mut stalled = connect_from(server.addr, 3).await;
    stalled
        .write_all(b"PROXY TCP4 203.0")
        .await
        .expect("partial");
    let t = Instant::now();
    let _ = read_until_closed(stalled).await;
    assert!(t.elapsed() <= Duration::from_secs(3), "{:?}", t.elapsed());
    by.finish().await;
}
