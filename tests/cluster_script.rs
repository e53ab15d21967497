//! `scripts/cluster.sh`, as a user runs it: up, chat through nginx, status,
//! down.

mod common;

use std::path::Path;
use std::process::Command;

use chat::client::Client;
use common::services::free_port;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_brings_up_a_working_cluster_and_takes_it_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let listen = free_port();
    // two consecutive free node ports, for TCP and for the web
    let two = || loop {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let (node, web_node, web) = (two(), two(), free_port());
    let ports = [
        ("CHAT_LISTEN_PORT", listen),
        ("CHAT_NODE_PORT", node),
        ("CHAT_WEB_PORT", web),
        ("CHAT_WEB_NODE_PORT", web_node),
        ("CHAT_MYSQL_PORT", free_port()),
        ("CHAT_REDIS_PORT", free_port()),
    ];
    let _guard = Down(&dir, &ports);
    let up = script(&dir, &ports, &["up", "2"]);
    let say = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(up.status.success(), "{}", say(&up));

    let result = async {
        let status = script(&dir, &ports, &["status"]);
        let text = say(&status);
        assert_eq!(
            text.matches(" running").count(),
            5,
            "2 nodes, nginx, redis, mariadb: {text}"
        );

        let mut a = Client::connect(("127.0.0.1", listen))
            .await
            .expect("connect via nginx");
        let alice = a.register("alice", &pw("alice")).await.expect("register");
        a.login(alice, &pw("alice")).await.expect("login");
        let mut b = Client::connect(("127.0.0.1", listen))
            .await
            .expect("connect via nginx");
        let bob = b.register("bob", &pw("bob")).await.expect("register");
        b.login(bob, &pw("bob")).await.expect("login");
        a.chat(bob, "hello through the local cluster")
            .await
            .expect("send");
        let got = within(b.next_message()).await.expect("message").msg;

        // A browser's WebSocket through nginx's web port chats with them.
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
