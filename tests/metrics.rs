//! The metrics endpoint counts what users do: logins, sessions, stored and
//! delivered messages, write batches. (Its own test binary: the counters
//! are process-wide.)

mod common;

use std::collections::HashMap;

use common::{TestServer, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn scrape(addr: std::net::SocketAddr, path: &str) -> (String, HashMap<String, f64>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let values = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    (text, values)
}

#[tokio::test]
async fn metrics_count_logins_messages_and_batches() {
    let server = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let maddr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let ready: chat::metrics::Readiness = std::sync::Arc::new(|| Box::pin(async { Ok(()) }));
    tokio::spawn(chat::metrics::serve(listener, || None, ready, stop.clone()));

    let (head, before) = scrape(maddr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("# TYPE chat_delivery_latency_seconds histogram"),
        "{head}"
    );

    let (mut alice, _) = server.user("alice").await;
    let (mut bob, bob_id) = server.user("bob").await;
    for i in 0..3 {
        alice
            .chat(bob_id, &format!("hello {i}"))
            .await
            .expect("chat");
        within(bob.next_message()).await.expect("delivered");
    }

    let (_, after) = scrape(maddr, "/metrics").await;
    let delta = |name: &str| after[name] - before[name];
    assert_eq!(delta("chat_logins_total"), 2.0);
    assert_eq!(after["chat_sessions_online"], 2.0);
    assert!(after["chat_connections_open"] >= 2.0, "{after:?}");
    assert_eq!(delta("chat_messages_stored_total"), 3.0);
    assert_eq!(delta("chat_delivered_local_total"), 3.0);
    assert_eq!(delta("chat_delivery_latency_seconds_count"), 3.0);
    assert!(delta("chat_store_batch_ops_count") >= 1.0, "{after:?}");
    assert_eq!(
        after["chat_delivery_latency_seconds_bucket{le=\"+Inf\"}"],
        after["chat_delivery_latency_seconds_count"]
    );

    // A wrong password is a failure, not a login.
    let mut eve = server.client().await;
    assert!(eve.login(bob_id, "not bob's password").await.is_err());
    let (_, last) = scrape(maddr, "/metrics").await;
    assert_eq!(
        last["chat_login_failures_total"] - after["chat_login_failures_total"],
        1.0
    );
    assert_eq!(last["chat_logins_total"], after["chat_logins_total"]);

    let (other, _) = scrape(maddr, "/nope").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    stop.cancel();
}

/// What a balancer asks: `/healthz` while the process serves, `/readyz`
/// while the node can take clients: ready with its store up, and "draining"
/// (503) from the moment its shutdown begins.
#[tokio::test]
async fn healthz_and_readyz_tell_a_balancer_when_to_send_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("chat.db").display());
    let node = chat::server::Node::open(&db, chat::config::Config::default(), None)
        .await
        .expect("open node");
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let maddr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(chat::metrics::serve(
        listener,
        node.pool_usage(),
        node.readiness(shutdown.clone()),
        stop.clone(),
    ));

    let (health, _) = scrape(maddr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    let (ready, _) = scrape(maddr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
    assert!(ready.ends_with("ready\n"), "{ready}");

    shutdown.cancel();
    let (draining, _) = scrape(maddr, "/readyz").await;
    assert!(
        draining.starts_with("HTTP/1.1 503 Service Unavailable"),
        "{draining}"
    );
    assert!(draining.contains("draining"), "{draining}");
    let (health, _) = scrape(maddr, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 200 OK"),
        "still alive: {health}"
    );
    let (missing, _) = scrape(maddr, "/nothing").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    stop.cancel();
}
