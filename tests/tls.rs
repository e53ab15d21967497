//! TLS on its own listener: the real `chatserver` with a certificate from
//! files, TLS clients (the library, the reconnecting client and
//! `chatclient`) chatting with a plain TCP client, and what happens to
//! clients that do not speak TLS or do not trust the certificate.

mod common;

use std::path::Path;
use std::process::Stdio;

use chat::client::reliable::{Event, Options, Reliable};
use chat::client::{Client, Endpoint, Message};
use chat::tls::TlsClient;
use common::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Writes a self-signed certificate for `localhost` and 127.0.0.1, and its
/// key, into `dir`; returns their paths.
fn self_signed(dir: &Path, file: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, signing_key.serialize_pem()).expect("write key");
    (c, k)
}

/// Starts `chatserver` with a plain and a TLS listener; returns it and both
/// addresses, read from its log.
async fn start(dir: &Path, cert: &Path, key: &Path) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatserver"))
        .args(["--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .arg("--db")
        .arg(format!("sqlite://{}", dir.join("chat.db").display()))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatserver");
    let mut log = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (mut plain, mut tls) = (None, None);
    within(async {
        while plain.is_none() || tls.is_none() {
            let line = log
                .next_line()
                .await
                .expect("log")
                .expect("server exited early");
            let addr = line
                .split("listen=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned);
            if line.contains("TLS listener ready") {
                tls = addr;
            } else if line.contains("chatserver ready") {
                plain = addr;
            }
        }
    })
    .await;
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    (child, plain.expect("plain addr"), tls.expect("tls addr"))
}

async fn next_message(r: &mut Reliable) -> Message {
    within(async {
        loop {
            match r.next_event().await {
                Event::Message(m) => return m,
                Event::Replaced => panic!("replaced"),
                _ => {}
            }
        }
    })
    .await
}

/// The `chatbench` binary beside `chatserver` (a binary of another package
/// of the workspace, built by the workspace's test run).
fn chatbench() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_chatserver")).with_file_name("chatbench");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

#[tokio::test]
async fn tls_and_plain_clients_chat_and_strangers_are_turned_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(dir.path(), "server");
    let (_server, plain_addr, tls_addr) = start(dir.path(), &cert, &key).await;
    let trusted = TlsClient::new(&cert, "localhost").expect("tls client");
    let over_tls = Endpoint {
        addr: tls_addr.clone(),
        tls: Some(trusted.clone()),
    };

    // A TLS user and a plain user chat both ways.
    let mut alice = over_tls.connect().await.expect("tls connect");
    let alice_id = alice.register("alice", "pw-a").await.expect("register");
    alice.login(alice_id, "pw-a").await.expect("login over tls");
    let mut bob = Client::connect(plain_addr.as_str()).await.expect("connect");
    let bob_id = bob.register("bob", "pw-b").await.expect("register");
    bob.login(bob_id, "pw-b").await.expect("login");
    alice.chat(bob_id, "over TLS 你好 🔒").await.expect("chat");
    let m = within(bob.next_message()).await.expect("message");
    assert_eq!((m.from, m.msg.as_str()), (alice_id, "over TLS 你好 🔒"));
    bob.chat(alice_id, "back in plain").await.expect("chat");
    let m = within(alice.next_message()).await.expect("message");
    assert_eq!((m.from, m.msg.as_str()), (bob_id, "back in plain"));
    alice.logout().await.expect("logout");

    // The reconnecting client over TLS, with acknowledgements.
    let (mut carol, _) = Reliable::login(over_tls.clone(), alice_id, "pw-a", Options::default())
        .await
        .expect("reliable login over tls");
    bob.chat(alice_id, "to the reliable client")
        .await
        .expect("chat");
    let m = next_message(&mut carol).await;
    assert_eq!(m.msg, "to the reliable client");

    // A client that does not trust this certificate never gets a session.
    let (other_cert, _) = self_signed(dir.path(), "other");
    let stranger = Endpoint {
        addr: tls_addr.clone(),
        tls: Some(TlsClient::new(&other_cert, "localhost").expect("tls client")),
    };
    assert!(
        within(stranger.connect()).await.is_err(),
        "a certificate the client does not trust must fail the handshake"
    );
    // Nor does one that asks for another name.
    let wrong_name = Endpoint {
        addr: tls_addr.clone(),
        tls: Some(TlsClient::new(&cert, "chat.example.org").expect("tls client")),
    };
    assert!(within(wrong_name.connect()).await.is_err());

    // Plain JSON sent to the TLS port is not a handshake: closed, unanswered.
    let mut raw = tokio::net::TcpStream::connect(&tls_addr)
        .await
        .expect("connect");
    raw.write_all(format!("{{\"msgid\":1,\"id\":{alice_id},\"password\":\"pw-a\"}}\n").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = within(raw.read_to_end(&mut got)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("\"errno\":0"),
        "a plain login on the TLS port must not succeed: {got:?}"
    );

    // `chatclient --tls-ca` logs in over TLS and chats.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatclient"))
        .args(["--server", &tls_addr, "--tls-name", "localhost"])
        .arg("--tls-ca")
        .arg(&cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chatclient");
    let mut stdin = child.stdin.take().expect("stdin");
    let dave = bob.register("dave", "pw-d").await.expect("register");
    stdin
        .write_all(format!("1\n{dave}\npw-d\nchat:{bob_id}:from chatclient over TLS\n").as_bytes())
        .await
        .expect("write");
    let m = within(bob.next_message()).await.expect("message");
    assert_eq!((m.from, m.msg.as_str()), (dave, "from chatclient over TLS"));

    // `chatbench --tls-ca` runs its pairs over TLS, every message acked.
    let out = Command::new(chatbench())
        .args([
            "pairs", "--addr", &tls_addr, "--pairs", "2", "--rate", "100",
        ])
        .args(["--duration", "1", "--warmup", "0.2", "--tls-ca"])
        .arg(&cert)
        .output()
        .await
        .expect("run chatbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chatbench over TLS failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON report");
    assert!(
        report["delivered"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert_eq!(report["acked"], report["sent"], "{report}");

    // Everyone still served: the plain user chats on.
    bob.chat(alice_id, "still here").await.expect("chat");
    let m = next_message(&mut carol).await;
    assert_eq!(m.msg, "still here");
}
