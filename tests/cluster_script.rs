//! `scripts/cluster.sh`, as a user runs it: up, chat through nginx, status,
//! down.

mod common;

use std::path::Path;
use std::process::Command;

use chat::client::Client;
use common::services;
use common::{pw, within};

fn script(dir: &Path, ports: &[(&str, u16)], args: &[&str]) -> std::process::Output {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_chatserver"))
        .parent()
        .expect("bin dir");
    // chathash is another member's binary: `cargo test` alone does not build it
    assert!(
        bin_dir.join("chathash").exists(),
        "{} is missing: build the workspace first (cargo build --workspace), as scripts/test.sh does",
        bin_dir.join("chathash").display()
    );
    let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"));
    cmd.args(args)
        .env("CHAT_CLUSTER_DIR", dir)
        .env("CHAT_BIN_DIR", bin_dir);
    for (k, v) in ports {
        cmd.env(k, v.to_string());
    }
    cmd.output().expect("run cluster.sh")
}

/// Takes the cluster down even when the test fails half way.
struct Down<'a>(&'a Path, &'a [(&'a str, u16)]);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.exists() {
            script(self.0, self.1, &["down"]);
        }
    }
}

/// The ports a cluster takes: `CHAT_*_PORT` settings, each the first of
/// a run (12 for the HA backends, two for node ports). All are cut from one
/// run of free ports: runs picked one by one could overlap, since none is
/// bound until the script starts.
fn ports(ha: bool) -> Vec<(&'static str, u16)> {
    let backends = if ha { 12 } else { 1 };
    let sizes = [
        ("CHAT_LISTEN_PORT", 1),
        ("CHAT_NODE_PORT", 2),
        ("CHAT_WEB_PORT", 1),
        ("CHAT_WEB_NODE_PORT", 2),
        ("CHAT_METRICS_PORT", 2),
        ("CHAT_MYSQL_PORT", backends),
        ("CHAT_REDIS_PORT", backends),
    ];
    let mut next = services::free_ports(sizes.iter().map(|(_, n)| n).sum());
    let mut ports: Vec<(&'static str, u16)> = sizes
        .iter()
        .map(|&(name, n)| {
            let first = next;
            next += n;
            (name, first)
        })
        .collect();
    ports.push(("CHAT_HA", u16::from(ha)));
    ports
}

fn say(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `status` lines (`KIND NAME PID ADDR ROLE`) of one kind, as (name, role).
fn lines_of(status: &str, kind: &str) -> Vec<(String, String)> {
    status
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[0] == kind).then(|| (f[1].to_owned(), f[4].to_owned()))
        })
        .collect()
}

/// Status until every node says `ready` (10 s at most).
fn ready_status(dir: &Path, ports: &[(&str, u16)]) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = say(&script(dir, ports, &["status"]));
        let nodes = lines_of(&text, "node");
        if (!nodes.is_empty() && nodes.iter().all(|(_, r)| r == "ready"))
            || start.elapsed() > std::time::Duration::from_secs(10)
        {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Registers two users through nginx and has one write to the other.
async fn chat_through(listen: u16, tag: &str) -> (String, chat::model::UserId) {
    let mut a = Client::connect(("127.0.0.1", listen))
        .await
        .expect("connect via nginx");
    let alice = a
        .register(&format!("alice{tag}"), &pw("alice"))
        .await
        .expect("register");
    a.login(alice, &pw("alice")).await.expect("login");
    let mut b = Client::connect(("127.0.0.1", listen))
        .await
        .expect("connect via nginx");
    let bob = b
        .register(&format!("bob{tag}"), &pw("bob"))
        .await
        .expect("register");
    b.login(bob, &pw("bob")).await.expect("login");
    a.chat(bob, "hello through the local cluster")
        .await
        .expect("send");
    let got = within(b.next_message()).await.expect("message").msg;
    (got, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_brings_up_a_working_cluster_and_takes_it_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let ports = ports(false);
    let port = |name: &str| ports.iter().find(|(k, _)| *k == name).expect("port").1;
    let (listen, web) = (port("CHAT_LISTEN_PORT"), port("CHAT_WEB_PORT"));
    let _guard = Down(&dir, &ports);
    let up = script(&dir, &ports, &["up", "2"]);
    assert!(up.status.success(), "{}", say(&up));

    let result = async {
        let text = ready_status(&dir, &ports);
        assert_eq!(lines_of(&text, "node").len(), 2, "{text}");
        assert!(
            lines_of(&text, "node").iter().all(|(_, r)| r == "ready"),
            "{text}"
        );
        assert_eq!(
            lines_of(&text, "redis"),
            [("redis".into(), "primary".into())],
            "{text}"
        );
        assert_eq!(
            lines_of(&text, "db"),
            [("mariadb".into(), "standalone".into())],
            "{text}"
        );
        assert_eq!(
            lines_of(&text, "nginx"),
            [("nginx".into(), "running".into())],
            "{text}"
        );

        let (got, bob) = chat_through(listen, "").await;

        // A browser's WebSocket through nginx's web port chats with them.
        let mut b = Client::connect(("127.0.0.1", listen))
            .await
            .expect("connect via nginx");
        b.login(bob, &pw("bob")).await.expect("login");
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{web}/ws"))
            .await
            .expect("websocket via nginx");
        use futures_util::SinkExt;
        let carol = b.register("carol", &pw("carol")).await.expect("register");
        let login = serde_json::json!({"msgid": 1, "id": carol, "password": pw("carol")});
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            login.to_string(),
        ))
        .await
        .expect("login");
        let chat = serde_json::json!({"msgid": 6, "toid": bob, "msg": "from a browser via nginx"});
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            chat.to_string(),
        ))
        .await
        .expect("chat");
        let m = within(b.next_message()).await.expect("message");
        assert_eq!(
            (m.from, m.msg.as_str()),
            (carol, "from a browser via nginx")
        );

        // a restarted node serves again
        let restarted = script(&dir, &ports, &["restart-node", "1"]);
        assert!(restarted.status.success(), "{}", say(&restarted));
        let text = ready_status(&dir, &ports);
        assert!(
            lines_of(&text, "node").iter().all(|(_, r)| r == "ready"),
            "{text}"
        );
        chat_through(listen, "2").await;
        got
    }
    .await;

    let down = script(&dir, &ports, &["down"]);
    assert!(down.status.success(), "{}", say(&down));
    assert_eq!(result, "hello through the local cluster");
    assert!(!dir.exists(), "down removes the cluster's data");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_err(),
        "nginx stopped"
    );
}

/// `CHAT_HA=1`: the same on a Redis Cluster and a Galera cluster, with one
/// line per process in `status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_brings_up_the_highly_available_cluster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let ports = ports(true);
    let listen = ports[0].1;
    let _guard = Down(&dir, &ports);
    let up = script(&dir, &ports, &["up", "2"]);
    assert!(up.status.success(), "{}", say(&up));

    let text = ready_status(&dir, &ports);
    let roles = |kind: &str| {
        let mut r: Vec<String> = lines_of(&text, kind).into_iter().map(|(_, r)| r).collect();
        r.sort();
        r
    };
    assert_eq!(roles("node"), ["ready", "ready"], "{text}");
    assert_eq!(
        roles("redis"),
        [
            "primary", "primary", "primary", "replica", "replica", "replica"
        ],
        "{text}"
    );
    assert_eq!(roles("db"), ["Synced", "Synced", "Synced"], "{text}");
    assert_eq!(roles("nginx"), ["running"], "{text}");
    let (got, _) = chat_through(listen, "").await;
    assert_eq!(got, "hello through the local cluster");

    let down = script(&dir, &ports, &["down"]);
    assert!(down.status.success(), "{}", say(&down));
    assert!(!dir.exists(), "down removes the cluster's data");
}
