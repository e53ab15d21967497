//! Several real `chatserver` processes on one MariaDB and one Redis: chat,
//! presence and offline delivery across nodes, a node killed with SIGKILL,
//! and Redis or the database going away for a while.

mod common;

use std::time::Duration;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use chat::client::Client;
use chat::model::UserId;
use chat_ring::{Balance, Node, Ring};
use common::nodes::{Deadline, NodeProcess, Shared, node_of};
use common::services::{self, MariaDb, Nginx, Redis};
use common::{assert_quiet, next_other, pw, within};

/// A cluster's shared services; private ones are kept alive here.
struct Env {
    shared: Shared,
    _mysql: Option<MariaDb>,
    _redis: Option<Redis>,
}

async fn env(presence_ttl: f64) -> Env {
    let mut mysql = None;
    let mut redis = None;
    let db_url = services::create_database(&services::mysql_server(&mut mysql)).await;
    let redis_url = services::redis_server(&mut redis);
    Env {
        shared: Shared {
            db_url,
            redis_url,
            prefix: services::unique("chat"),
            presence_ttl,
            // Clients through nginx are named by its PROXY header; direct
            // ones (most tests here) send none.
            extra_args: vec!["--proxy-protocol".into()],
        },
        _mysql: mysql,
        _redis: redis,
    }
}

async fn user_on(node: &NodeProcess, name: &str) -> (Client, UserId) {
    let mut c = node.client().await;
    let id = c.register(name, &pw(name)).await.expect("register");
    c.login(id, &pw(name)).await.expect("login");
    (c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_presence_and_offline_delivery_across_three_nodes() {
    let e = env(10.0).await;
    let n1 = NodeProcess::start(&e.shared, "n1").await;
    let n2 = NodeProcess::start(&e.shared, "n2").await;
    let n3 = NodeProcess::start(&e.shared, "n3").await;
    let (mut a, alice) = user_on(&n1, "alice").await;
    let (mut b, bob) = user_on(&n2, "bob").await;
    let (mut c, carol) = user_on(&n3, "carol").await;
    assert_eq!(node_of(&mut a).await, "n1");
    assert_eq!(node_of(&mut b).await, "n2");

    // friend lists show cluster-wide presence; requests and their
    // acceptance cross nodes
    common::befriend(&mut a, alice, &mut b, bob).await;
    common::befriend(&mut a, alice, &mut c, carol).await;
    let states: Vec<_> = a
        .friends()
        .await
        .expect("friends")
        .iter()
        .map(|f| (f.id, f.online))
        .collect();
    assert_eq!(states, vec![(bob, true), (carol, true)]);

    // one-to-one across nodes, in order, exactly once
    for i in 0..20 {
        a.chat(bob, &format!("m{i}")).await.expect("send");
    }
    for i in 0..20 {
        let m = within(b.next_message()).await.expect("message");
        assert_eq!(
            (m.from, m.name.as_str(), m.msg.clone(), m.seq.0),
            (alice, "alice", format!("m{i}"), i + 1)
        );
    }
    assert_quiet(&mut b).await;
    b.chat(alice, "back at you").await.expect("send");
    assert_eq!(
        within(a.next_message()).await.expect("message").msg,
        "back at you"
    );

    // group chat across nodes: every other member once, never the sender
    let g = a
        .create_group("everywhere", "three nodes")
        .await
        .expect("group");
    b.join_group(g).await.expect("join");
    c.join_group(g).await.expect("join");
    b.group_chat(g, "hello from n2").await.expect("send");
    for client in [&mut a, &mut c] {
        let m = within(client.next_message()).await.expect("message");
        assert_eq!(
            (m.group, m.from, m.msg.as_str()),
            (Some(g), bob, "hello from n2")
        );
        assert_quiet(client).await;
    }
    assert_quiet(&mut b).await;

    // offline across nodes: carol leaves n3, messages wait, she logs in on n1
    c.logout().await.expect("logout");
    let states: Vec<_> = a
        .friends()
        .await
        .expect("friends")
        .iter()
        .map(|f| (f.id, f.online))
        .collect();
    assert_eq!(states, vec![(bob, true), (carol, false)]);
    a.chat(carol, "while you were out").await.expect("send");
    b.group_chat(g, "group news").await.expect("send");
    let mut c = n1.client().await;
    let info = c
        .login(carol, &pw("carol"))
        .await
        .expect("login on another node");
    let mut got: Vec<_> = info.offline.iter().map(|m| m.msg.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, vec!["group news", "while you were out"]);
    let members = &info
        .groups
        .iter()
        .find(|x| x.id == g)
        .expect("group")
        .members;
    assert!(members.iter().all(|m| m.online), "{members:?}");
    assert_quiet(&mut c).await;

    // a graceful shutdown marks the node's users offline at once
    n2.terminate().await;
    let states: Vec<_> = a
        .friends()
        .await
        .expect("friends")
        .iter()
        .map(|f| (f.id, f.online))
        .collect();
    assert_eq!(states, vec![(bob, false), (carol, true)]);
    let mut b = n3.client().await;
    b.login(bob, &pw("bob"))
        .await
        .expect("bob logs in again elsewhere");

    // a login on another node replaces the user's older session: carol's
    // session on n1 is told why and closed, and messages follow her to n3
    let mut c2 = n3.client().await;
    c2.login(carol, &pw("carol"))
        .await
        .expect("the newer login wins across nodes");
    let notice = next_other(&mut c).await;
    assert_eq!(notice["errno"], 54, "{notice}");
    assert!(within(c.next_push()).await.is_none(), "then it is closed");
    a.chat(carol, "follow me").await.expect("send");
    let m = within(c2.next_message()).await.expect("delivered to n3");
    assert_eq!(m.msg, "follow me");
    let carol_state = a.friends().await.expect("friends");
    assert!(carol_state.iter().any(|f| f.id == carol && f.online));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_message_reaches_members_spread_over_nodes() {
    let e = env(10.0).await;
    let n1 = NodeProcess::start(&e.shared, "n1").await;
    let n2 = NodeProcess::start(&e.shared, "n2").await;
    let (mut owner, _) = user_on(&n1, "owner").await;
    let g = owner.create_group("crowd", "").await.expect("group");
    let mut members = Vec::new();
    for i in 0..24 {
        let node = if i % 2 == 0 { &n1 } else { &n2 };
        let (mut c, id) = user_on(node, &format!("m{i}")).await;
        c.join_group(g).await.expect("join");
        members.push((c, id));
    }
    owner.group_chat(g, "to all of you").await.expect("send");
    for (c, id) in &mut members {
        let m = within(c.next_message())
            .await
            .unwrap_or_else(|| panic!("member {id}"));
        assert_eq!(m.msg, "to all of you");
    }
    for (c, _) in &mut members {
        assert!(c.try_push().is_none(), "exactly one copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_message_and_its_users_come_back_within_the_lease() {
    let ttl = 2.0;
    let e = env(ttl).await;
    let n1 = NodeProcess::start(&e.shared, "n1").await;
    let n2 = NodeProcess::start(&e.shared, "n2").await;
    let (mut a, _alice) = user_on(&n1, "alice").await;
    let (mut b, bob) = user_on(&n2, "bob").await;
    let g = a.create_group("g", "").await.expect("group");
    b.join_group(g).await.expect("join");
    a.chat(bob, "before").await.expect("send");
    assert_eq!(within(b.next_message()).await.expect("live").msg, "before");

    // kill bob's node; its presence key still points there for a while
    n2.kill().await;
    let killed_at = std::time::Instant::now();
    for i in 0..10 {
        a.chat(bob, &format!("in flight {i}"))
            .await
            .expect("stored while bob's node is dead");
    }
    a.group_chat(g, "group in flight").await.expect("send");

    // bob can log in on n1 once the dead node's lease lapses
    let mut b = n1.client().await;
    let deadline = Deadline::after(10.0);
    let info = loop {
        match b.login(bob, &pw("bob")).await {
            Ok(info) => break info,
            Err(e) if e.errno() == Some(2) => deadline.wait("bob logs in again").await,
            Err(e) => panic!("{e}"),
        }
    };
    let waited = killed_at.elapsed().as_secs_f64();
    assert!(
        waited <= ttl * 2.0 + 1.0,
        "presence healed after {waited:.1}s, lease {ttl}s"
    );
    let mut direct: Vec<_> = info
        .offline
        .iter()
        .filter(|m| m.group.is_none())
        .map(|m| m.msg.clone())
        .collect();
    // Delivery positions are stored just after delivery; a message delivered
    // in the instant before the kill may come again (at least once until
    // acknowledged delivery exists). Nothing may be missing or reordered.
    if direct.first().is_some_and(|m| m == "before") {
        direct.remove(0);
    }
    assert_eq!(
        direct,
        (0..10)
            .map(|i| format!("in flight {i}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        info.offline.iter().filter(|m| m.group == Some(g)).count(),
        1
    );
    assert_quiet(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_the_same_name_does_not_revive_its_dead_sessions() {
    // a long lease: only the restart may end bob's old presence
    let e = env(60.0).await;
    let n1 = NodeProcess::start(&e.shared, "n1").await;
    let n2 = NodeProcess::start(&e.shared, "n2").await;
    let (mut a, alice) = user_on(&n1, "alice").await;
    let (mut b, bob) = user_on(&n2, "bob").await;
    common::befriend(&mut a, alice, &mut b, bob).await;
    n2.kill().await;
    let _n2 = NodeProcess::start(&e.shared, "n2").await;
    // the new n2 holds the lease now; bob's key names the dead process
    let friends_online = a.friends().await.expect("friends")[0].online;
    assert!(!friends_online, "bob is not online anywhere");
    let mut b = n1.client().await;
    b.login(bob, &pw("bob")).await.expect("bob logs in at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_errors_not_hangs_and_the_cluster_recovers() {
    let mut redis = Redis::start();
    let mut e = env(3.0).await;
    e.shared.redis_url = redis.url();
    let n1 = NodeProcess::start(&e.shared, "n1").await;
    let n2 = NodeProcess::start(&e.shared, "n2").await;
    let (mut a, alice) = user_on(&n1, "alice").await;
    let (mut b, bob) = user_on(&n2, "bob").await;
    let carol = {
        let mut c = n1.client().await;
        c.register("carol", &pw("carol")).await.expect("register")
    };

    redis.stop();
    // login needs presence: a clear error, quickly
    let mut c = n1.client().await;
    let err = within(c.login(carol, &pw("carol"))).await.unwrap_err();
    assert_eq!(err.errno(), Some(50), "{err}");
    // chat is stored even though it cannot be routed now
    let sent = within(a.chat(bob, "during the outage"))
        .await
        .expect("stored");
    assert_eq!(sent.seq.0, 1);

    redis.resume();
    // bob's node resubscribes and catches up from the store; alice's node
    // routes again once presence is reasserted
    let m = within(b.next_message()).await.expect("caught up");
    assert_eq!((m.msg.as_str(), m.seq.0), ("during the outage", 1));
    let deadline = Deadline::after(10.0);
    let delivered = loop {
        if a.chat(bob, "after").await.is_ok()
            && let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(300), b.next_message()).await
        {
            break m;
        }
        deadline.wait("live delivery across nodes resumes").await;
    };
    assert_eq!(delivered.msg, "after");
    let deadline = Deadline::after(10.0);
    let info = loop {
        match c.login(carol, &pw("carol")).await {
            Ok(info) => break info,
            Err(_) => deadline.wait("login works again").await,
        }
    };
    assert_eq!(info.id, carol);
    b.chat(alice, "all good").await.expect("send");
    // seq 1 from alice, then "after" attempts, then this one
    assert_eq!(
        within(a.next_message()).await.expect("live").msg,
        "all good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_errors_not_hangs_and_recovers() {
    let mut db = MariaDb::start();
    let mut e = env(10.0).await;
    e.shared.db_url = services::create_database(&db.server_url()).await;
    e.shared.extra_args = vec!["--db-acquire-timeout".into(), "1".into()];
    let n1 = NodeProcess::start(&e.shared, "n1").await;
    let (mut a, _alice) = user_on(&n1, "alice").await;
    let (mut b, bob) = user_on(&n1, "bob").await;

    db.stop();
    let started = std::time::Instant::now();
    let err = within(a.chat(bob, "nowhere to store it"))
        .await
        .unwrap_err();
    assert_eq!(err.errno(), Some(50), "{err}");
    let err = within(a.friends()).await.unwrap_err();
    assert_eq!(err.errno(), Some(50), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered within the pool's wait"
    );
    assert_quiet(&mut b).await;

    db.resume();
    let deadline = Deadline::after(20.0);
    let sent = loop {
        match a.chat(bob, "back").await {
            Ok(sent) => break sent,
            Err(_) => deadline.wait("chat works again").await,
        }
    };
    assert_eq!(sent.seq.0, 1, "the refused message was never stored");
    assert_eq!(within(b.next_message()).await.expect("live").msg, "back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_auth_from_the_url() {
    let redis = Redis::start_with_password(Some("s3cret"));
    let mut e = env(10.0).await;
    e.shared.redis_url = redis.url();
    let n1 = NodeProcess::start(&e.shared, "n1").await;
    let n2 = NodeProcess::start(&e.shared, "n2").await;
    let (mut a, _) = user_on(&n1, "alice").await;
    let (mut b, bob) = user_on(&n2, "bob").await;
    a.chat(bob, "authenticated").await.expect("send");
    assert_eq!(
        within(b.next_message()).await.expect("live").msg,
        "authenticated"
    );

    let mut wrong = e.shared.clone();
    wrong.redis_url = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let log = NodeProcess::try_start(&wrong, "n3")
        .await
        .err()
        .expect("refuses to start");
    assert!(
        log.to_lowercase().contains("redis") || log.contains("presence"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_refuses_a_private_database() {
    let e = env(10.0).await;
    let mut shared = e.shared.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    shared.db_url = format!("sqlite://{}", dir.path().join("x.db").display());
    let log = NodeProcess::try_start(&shared, "n1")
        .await
        .err()
        .expect("refused");
    assert!(log.contains("mysql://"), "{log}");
}

/// Three nodes, and nginx `server` lines for them.
async fn three_nodes(e: &Env) -> ([NodeProcess; 3], Vec<Node>) {
    let nodes = [
        NodeProcess::start(&e.shared, "n1").await,
        NodeProcess::start(&e.shared, "n2").await,
        NodeProcess::start(&e.shared, "n3").await,
    ];
    let servers = nodes
        .iter()
        .map(|n| Node::new(&n.addr, 1).expect("node"))
        .collect();
    (nodes, servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_clients_spread_over_nodes_and_chat_works() {
    let e = env(10.0).await;
    let (_nodes, servers) = three_nodes(&e).await;
    let nginx = Nginx::start_proxying(Balance::RoundRobin, servers).await;

    // many clients through one address, landing on every node
    let mut users = Vec::new();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..9 {
        let mut c = Client::connect(nginx.addr)
            .await
            .expect("connect through nginx");
        let node = node_of(&mut c).await;
        *per_node.entry(node.clone()).or_default() += 1;
        let name = format!("u{i}");
        let id = c.register(&name, &pw(&name)).await.expect("register");
        c.login(id, &pw(&name)).await.expect("login");
        users.push((c, id, node));
    }
    assert_eq!(per_node.len(), 3, "every node got clients: {per_node:?}");

    // one-to-one between users on different nodes, and a group over all
    let (first, rest) = users.split_at_mut(1);
    let (a, alice, a_node) = &mut first[0];
    let (b, bob, _) = rest
        .iter_mut()
        .find(|(_, _, n)| n != a_node)
        .expect("a user elsewhere");
    a.chat(*bob, "via nginx").await.expect("send");
    let m = within(b.next_message()).await.expect("message");
    assert_eq!((m.from, m.msg.as_str()), (*alice, "via nginx"));
    let g = a.create_group("all", "").await.expect("group");
    for (c, _, _) in rest.iter_mut() {
        c.join_group(g).await.expect("join");
    }
    a.group_chat(g, "everyone").await.expect("send");
    for (c, id, _) in rest.iter_mut() {
        let m = within(c.next_message())
            .await
            .unwrap_or_else(|| panic!("user {id}"));
        assert_eq!(m.msg, "everyone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_consistent_hashing_each_client_lands_where_the_ring_says() {
    let e = env(10.0).await;
    let (nodes, servers) = three_nodes(&e).await;
    let ring = Ring::with_nodes(servers.clone()).expect("ring");
    let nginx = Nginx::start_proxying(Balance::Hash, servers).await;
    let id_of: HashMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.addr.as_str(), n.id.as_str()))
        .collect();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for last in 2..=21u8 {
        let from = Ipv4Addr::new(127, 0, 0, last);
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((from, 0)))
            .expect("bind source address");
        let stream = within(socket.connect(nginx.addr)).await.expect("connect");
        let mut c = Client::over(stream).expect("client");
        let info = c
            .request(serde_json::json!({"msgid": 15}))
            .await
            .expect("server info");
        assert_eq!(
            info.get("client").and_then(|v| v.as_str()),
            Some(from.to_string().as_str()),
            "the node sees the client's address, not nginx's"
        );
        let landed = node_of(&mut c).await;
        let predicted = ring
            .get(&from.to_string())
            .expect("prediction")
            .server()
            .to_owned();
        assert_eq!(landed, id_of[predicted.as_str()], "client {from}");
        *per_node.entry(landed).or_default() += 1;
    }
    assert!(
        per_node.len() >= 2,
        "clients spread over nodes: {per_node:?}"
    );
}
