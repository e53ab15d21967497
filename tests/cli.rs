//! `chatclient` driven through a pipe, as a script would.

mod common;

use std::process::Stdio;

use common::{TestServer, pw, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatclient_logs_in_and_chats_through_a_pipe() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (mut bob_client, bob) = s.user("bob").await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_chatclient"))
        .arg(s.addr.ip().to_string())
        .arg(s.addr.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatclient");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let script = format!(
        "1\n{alice}\n{}\naddfriend:{bob}\nchat:{bob}:hello from the pipe\n",
        pw("alice")
    );
    stdin.write_all(script.as_bytes()).await.expect("write");

    // bob gets alice's friend request, which he accepts, and her message
    common::next_with_msgid(&mut bob_client, 31).await;
    bob_client.answer_friend(alice, true).await.expect("accept");
    let m = within(bob_client.next_message()).await.expect("message");
    assert_eq!((m.from, m.msg.as_str()), (alice, "hello from the pipe"));
    // and alice's terminal shows bob's answer as it arrives
    bob_client.chat(alice, "hello, pipe").await.expect("reply");
    let mut seen = Vec::new();
    within(async {
        while let Some(line) = lines.next_line().await.expect("read") {
            let done = line.contains("[") && line.contains("]bob said: hello, pipe");
            seen.push(line);
            if done {
                break;
            }
        }
    })
    .await;
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("current login user => id:{alice} name:alice"))),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("bob (id {bob}) accepted: you are friends now"))),
        "{seen:#?}"
    );

    stdin
        .write_all(b"showfriendlist\nloginout\n3\n")
        .await
        .expect("write");
    drop(stdin);
    let status = within(child.wait()).await.expect("wait");
    assert!(status.success());
    let mut rest = Vec::new();
    while let Some(line) = lines.next_line().await.expect("read") {
        rest.push(line);
    }
    assert!(
        rest.iter()
            .any(|l| l.contains(&format!("{bob} bob online"))),
        "{rest:#?}"
    );
}

/// A broken network does not end a `chatclient` session: it says it is
/// reconnecting, comes back, and shows what was sent meanwhile, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatclient_says_it_is_reconnecting_and_loses_nothing() {
    let s = TestServer::start().await;
    let proxy = common::Proxy::start(s.addr).await;
    let alice = s.register("alice").await;
    let (mut bob_client, _bob) = s.user("bob").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatclient"))
        .arg("--server")
        .arg(proxy.addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatclient");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    stdin
        .write_all(format!("1\n{alice}\n{}\n", pw("alice")).as_bytes())
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut wait_for = async |what: &str, seen: &mut Vec<String>| {
        within(async {
            while let Some(line) = lines.next_line().await.expect("read") {
                let done = line.contains(what);
                seen.push(line);
                if done {
                    return;
                }
            }
            panic!("chatclient ended before {what:?}: {seen:#?}");
        })
        .await
    };
    wait_for("current login user", &mut seen).await;
    bob_client.chat(alice, "before").await.expect("send");
    wait_for("bob said: before", &mut seen).await;

    proxy.cut();
    bob_client.chat(alice, "during").await.expect("send");
    wait_for("reconnected", &mut seen).await;
    wait_for("bob said: during", &mut seen).await;
    assert!(
        seen.iter()
            .any(|l| l.contains("connection lost; reconnecting")),
        "{seen:#?}"
    );
    stdin.write_all(b"loginout\n3\n").await.expect("write");
    drop(stdin);
    assert!(within(child.wait()).await.expect("wait").success());
    while let Some(line) = lines.next_line().await.expect("read") {
        seen.push(line);
    }
    let shown = seen.iter().filter(|l| l.contains("bob said:")).count();
    assert_eq!(shown, 2, "each message shown once: {seen:#?}");
}

/// The real `chatserver` binary on its embedded default: started with the
/// original's `IP PORT` arguments, stopped with SIGTERM, it exits cleanly
/// and keeps its data for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatserver_binary_stops_cleanly_on_sigterm_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = || async {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatserver"))
            .args(["127.0.0.1", "0"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chatserver");
        let mut log = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = within(async {
            loop {
                let line = log
                    .next_line()
                    .await
                    .expect("log")
                    .expect("server exited early");
                if let Some(rest) = line.split("listen=").nth(1) {
                    break rest.split_whitespace().next().expect("addr").to_owned();
                }
            }
        })
        .await;
        (child, addr, log)
    };

    let (mut server, addr, _log) = start().await;
    let mut a = chat::client::Client::connect(&addr).await.expect("connect");
    let alice = a.register("alice", "pw").await.expect("register");
    a.login(alice, "pw").await.expect("login");
    let bob = a.register("bob", "pw").await.expect("register");
    a.chat(bob, "see you after the restart")
        .await
        .expect("send");

    let pid = server.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = within(server.wait()).await.expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        dir.path().join("chatserver.db").exists(),
        "default database file"
    );

    let (_server, addr, _log) = start().await;
    let mut b = chat::client::Client::connect(&addr).await.expect("connect");
    let info = b.login(bob, "pw").await.expect("login");
    assert_eq!(info.offline.len(), 1);
    let mut a = chat::client::Client::connect(&addr).await.expect("connect");
    a.login(alice, "pw")
        .await
        .expect("alice is offline after the shutdown, not stuck online");
}

/// Runs `chatserver` with `args` until it exits (20 s at most): its status
/// and everything it printed.
async fn start_fails(args: &[&str]) -> (std::process::ExitStatus, String) {
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        Command::new(env!("CARGO_BIN_EXE_chatserver"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chatserver gave up within 20 s instead of hanging")
    .expect("run chatserver");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("exited after {:?}: {text}", started.elapsed());
    (out.status, text)
}

/// A list of database hosts none of which answers is a clear error at
/// start, naming each host and never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_database_host_is_a_clear_error_without_the_password() {
    let (a, b) = (common::services::free_port(), common::services::free_port());
    let db = format!("mysql://chat:hunter2secret@127.0.0.1:{a},127.0.0.1:{b}/chat");
    let (status, text) = start_fails(&["--db", &db]).await;
    assert!(!status.success(), "{text}");
    assert!(text.contains("no database host is ready"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{a}")), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{b}")), "{text}");
    assert!(!text.contains("hunter2secret"), "password shown: {text}");
}

/// A Redis Cluster that does not serve every slot (here: one node with
/// cluster mode on and no slots) is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_without_every_slot_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::services::free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let up = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(up.elapsed().as_secs() < 10, "redis-server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut mysql = None;
    let db = common::services::create_database(&common::services::mysql_server(&mut mysql)).await;
    let (status, text) = start_fails(&[
        "--db",
        &db,
        "--redis",
        &format!("redis+cluster://127.0.0.1:{port}"),
    ])
    .await;
    let _ = redis.kill();
    let _ = redis.wait();
    common::services::drop_database(&db).await;
    assert!(!status.success(), "{text}");
    assert!(text.contains("not serving every slot"), "{text}");
}
