//! A real nginx in front of three stand-in chat nodes: every client lands on
//! the node `chat_ring` predicts, and round robin uses every node.
//!
//! `chat_ring` claims to be nginx's `hash $remote_addr consistent` bit for
//! bit; only nginx itself can confirm that. Each test starts nginx (from the
//! config `nginx_conf` writes, in a temporary prefix directory) in front of
//! plain TCP listeners that answer every connection with their own port, then
//! connects from many loopback source addresses (Linux routes all of 127/8 to
//! `lo`, so 127.0.0.2, 127.0.0.3, ... are distinct `$remote_addr`s) and
//! compares where each client landed with the ring's answer.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;

use chat_ring::{Balance, Node, Ring};
use common::services::Nginx;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(5);

/// A stand-in chat node: answers each connection with its port and counts
/// the connections it got. Lives until the test's runtime ends.
struct Backend {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let port = listener.local_addr().expect("backend addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{port}\n").as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Backend { port, hits }
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The backend port nginx sent a client from source address `from` to.
async fn reach(nginx: &Nginx, from: Ipv4Addr) -> u16 {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    let mut s = timeout(STEP, socket.connect(nginx.addr))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect from {from}: {e}\n{}", nginx.logs()));
    let mut answer = String::new();
    timeout(STEP, s.read_to_string(&mut answer))
        .await
        .expect("answer timed out")
        .expect("read answer");
    answer.trim().parse().unwrap_or_else(|_| {
        panic!(
            "client {from} got {answer:?} instead of a backend port\n{}",
            nginx.logs()
        )
    })
}

/// 127.0.0.2 ..= 127.0.0.41: forty distinct `$remote_addr`s.
fn clients() -> Vec<Ipv4Addr> {
    (2..=41).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sends_every_client_where_the_ring_says() {
    let backends = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let nodes: Vec<Node> = backends
        .iter()
        .zip([1, 2, 1])
        .map(|(b, w)| Node::new(&b.server(), w).expect("node"))
        .collect();
    let ring = Ring::with_nodes(nodes.clone()).expect("ring");
    let nginx = Nginx::start(Balance::Hash, nodes.clone()).await;

    let mut landed = HashMap::new();
    for from in clients() {
        let got = format!("127.0.0.1:{}", reach(&nginx, from).await);
        let want = ring.get(&from.to_string()).expect("node").server();
        assert_eq!(got, want, "client {from}: nginx and the ring disagree");
        // The same client lands on the same node again.
        let again = format!("127.0.0.1:{}", reach(&nginx, from).await);
        assert_eq!(again, want, "client {from} moved between connections");
        landed.insert(from, got);
    }
    let used: std::collections::HashSet<_> = landed.values().collect();
    assert!(used.len() >= 2, "all clients on one node: {landed:?}");
    let hits: usize = backends.iter().map(|b| b.hits.load(Ordering::SeqCst)).sum();
    assert!(
        hits > 2 * clients().len(),
        "backends saw {hits} connections"
    );
    drop(nginx);

    // Take the weight-2 node out: nginx on the smaller ring moves only the
    // clients that were on it, and moves them where the ring says.
    let removed = nodes[1].server().to_string();
    let mut smaller = ring.clone();
    smaller.remove_node(&removed).expect("remove");
    let nginx = Nginx::start(Balance::Hash, smaller.nodes().to_vec()).await;
    for from in clients() {
        let got = format!("127.0.0.1:{}", reach(&nginx, from).await);
        let want = smaller.get(&from.to_string()).expect("node").server();
        assert_eq!(got, want, "client {from} after removing {removed}");
        if landed[&from] != removed {
            assert_eq!(got, landed[&from], "client {from} moved off a live node");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_clients_over_every_node() {
    let backends = [
        Backend::start().await,
        Backend::start().await,
        Backend::start().await,
    ];
    let nodes: Vec<Node> = backends
        .iter()
        .map(|b| Node::new(&b.server(), 1).expect("node"))
        .collect();
    let nginx = Nginx::start(Balance::RoundRobin, nodes).await;

    // Equal weights: nginx cycles through the nodes, so nine connections in
    // a row give each node exactly three, whatever the source address.
    let mut count: HashMap<u16, usize> = HashMap::new();
    for from in clients().into_iter().take(9) {
        *count.entry(reach(&nginx, from).await).or_default() += 1;
    }
    for b in &backends {
        assert_eq!(count.get(&b.port), Some(&3), "{count:?}\n{}", nginx.logs());
        assert!(b.hits.load(Ordering::SeqCst) >= 3);
    }
}
