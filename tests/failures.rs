//! The failure suite: 20 clients of the reliable client library, through
//! nginx to three nodes on a private MariaDB and Redis, send numbered
//! messages one to one and in a group while the cluster is hurt: a node
//! killed with SIGKILL and restarted, Redis restarted (empty), the database
//! restarted, a node frozen with SIGSTOP for longer than the presence TTL
//! and then resumed. The receivers of the one-to-one chats are each on two
//! devices (the classic one and a named one), which may land on different
//! nodes. At the end every accepted message must have reached every
//! receiver's every device exactly once, in order per conversation.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::client::reliable::{Event, Options, Reliable, Stats};
use chat::model::UserId;
use chat::protocol::HistoryTarget;
use chat_ring::{Balance, Node};
use common::netns::NetNs;
use common::nodes::{NodeProcess, Shared};
use common::pw;
use common::services::{self, Galera, MariaDb, Nginx, Redis, RedisCluster};
use tokio::sync::Mutex;

/// Presence lease of the nodes, in seconds.
const PRESENCE_TTL: f64 = 2.0;
/// How long the load runs; the faults are spread over it.
const LOAD: Duration = Duration::from_secs(24);
/// Clients: `PAIRS` one-to-one pairs, and the rest write to a group of all.
const USERS: usize = 20;
const PAIRS: usize = 8;
/// The group's creator (one of its writers).
const CREATOR: usize = 2 * PAIRS;
/// One message per sender this often.
const PACE: Duration = Duration::from_millis(50);

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Per conversation, the `seq` of every message the application got,
    /// in the order it got them.
    received: HashMap<HistoryTarget, Vec<i64>>,
    /// Per conversation, the `seq` of every message this client sent and
    /// the server accepted.
    accepted: HashMap<HistoryTarget, Vec<i64>>,
    attempted: u64,
    failed: u64,
    stats: Stats,
    replaced: bool,
}

fn options() -> Options {
    Options {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_secs(1),
        max_attempts: 1000,
        ack_interval: Duration::from_millis(100),
        ping_interval: Duration::from_millis(500),
        answer_timeout: Duration::from_millis(1500),
        ..Options::default()
    }
}

/// One client: sends to `to` (if anything) at the pace until `stop`, reads
/// everything, and keeps reading until `done`.
async fn client(
    mut r: Reliable,
    to: Option<HistoryTarget>,
    stop: Instant,
    done: Arc<tokio::sync::Notify>,
    seen: Arc<Mutex<Seen>>,
) {
    let me = r.id();
    let mut tick = tokio::time::interval(PACE);
    let mut n = 0_u64;
    let finished = done.notified();
    tokio::pin!(finished);
    loop {
        tokio::select! {
            _ = &mut finished => break,
            _ = tick.tick(), if to.is_some() && Instant::now() < stop => {
                let Some(to) = to else { continue };
                n += 1;
                seen.lock().await.attempted += 1;
                match r.send(to, &format!("{me}-{n}")).await {
                    Ok(sent) => seen.lock().await.accepted.entry(to).or_default().push(sent.seq.0),
                    Err(_) => seen.lock().await.failed += 1,
                }
            }
            event = r.next_event() => match event {
                Event::Message(m) => {
                    let conv = m.conversation(me);
                    seen.lock().await.received.entry(conv).or_default().push(m.seq.0);
                }
                Event::Replaced => {
                    seen.lock().await.replaced = true;
                    break;
                }
                e @ (Event::Notice(_) | Event::Reconnecting { .. } | Event::Reconnected)
                    if std::env::var("CHAT_TEST_LOG").is_ok() =>
                {
                    eprintln!("[client u{me}] {:?} {e:?}", std::time::SystemTime::now());
                }
                _ => {}
            },
        }
        seen.lock().await.stats = r.stats();
    }
    seen.lock().await.stats = r.stats();
}

/// The two scenarios load the machine; they run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_arrives_exactly_once_through_kills_restarts_and_freezes() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut db = MariaDb::start();
    let mut redis = Redis::start();
    let shared = Shared {
        db_url: services::create_database(&db.server_url()).await,
        redis_url: redis.url(),
        prefix: services::unique("fail"),
        presence_ttl: PRESENCE_TTL,
        extra_args: vec!["--db-acquire-timeout".into(), "1".into()],
    };
    let (mut nodes, nginx) = behind_nginx(&shared, 3).await;

    let load = start_load(&nginx.addr.to_string(), LOAD).await;

    // the faults, one after another while the load runs
    let t0 = Instant::now();
    let at = |secs: u64| tokio::time::sleep_until((t0 + Duration::from_secs(secs)).into());
    at(2).await;
    let n2 = nodes.remove(1);
    let n2_addr = n2.addr.clone();
    n2.kill().await;
    eprintln!("fault: n2 killed (SIGKILL)");
    at(4).await;
    nodes.insert(1, NodeProcess::start_at(&shared, "n2", &n2_addr).await);
    eprintln!("fault: n2 restarted");
    at(7).await;
    redis.stop();
    eprintln!("fault: Redis stopped");
    at(8).await;
    redis.resume();
    eprintln!("fault: Redis restarted, empty");
    at(11).await;
    db.stop();
    eprintln!("fault: MariaDB stopped");
    at(13).await;
    db.resume();
    eprintln!("fault: MariaDB restarted");
    at(16).await;
    nodes[2].freeze();
    eprintln!("fault: n3 frozen (SIGSTOP) for {}s", PRESENCE_TTL * 2.0);
    tokio::time::sleep(Duration::from_secs_f64(PRESENCE_TTL * 2.0)).await;
    nodes[2].thaw();
    eprintln!("fault: n3 resumed (SIGCONT)");

    finish(load).await;
}

/// One node on the embedded SQLite store, killed with SIGKILL twice while
/// the load runs and started again on the same database: with staging (the
/// default), every acknowledged batch is in the log beside the database
/// before its answer, and comes back from it at the restart, though the
/// transaction holding its rows died with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_arrives_exactly_once_through_kills_of_a_single_sqlite_node() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = Shared {
        db_url: format!("sqlite://{}", dir.path().join("chat.db").display()),
        redis_url: String::new(),
        prefix: String::new(),
        presence_ttl: PRESENCE_TTL,
        // A long staging period, so a kill lands on a large open transaction.
        extra_args: vec!["--stage-ms".into(), "1000".into()],
    };
    let node = NodeProcess::start(&shared, "n1").await;
    let addr = node.addr.clone();
    let load = start_load(&addr, Duration::from_secs(12)).await;
    let t0 = Instant::now();
    let at = |secs: u64| tokio::time::sleep_until((t0 + Duration::from_secs(secs)).into());
    let mut node = Some(node);
    for (kill, restart) in [(3, 4), (8, 9)] {
        at(kill).await;
        if let Some(n) = node.take() {
            n.kill().await;
        }
        eprintln!("fault: n1 killed (SIGKILL)");
        at(restart).await;
        let n = NodeProcess::start_at(&shared, "n1", &addr).await;
        assert!(
            n.log_contains("replayed the staging log"),
            "the restarted node did not replay its staging log"
        );
        node = Some(n);
        eprintln!("fault: n1 restarted");
    }
    finish(load).await;
}

/// A rolling restart on the highly available back ends (a Galera cluster
/// and a Redis Cluster): each of three nodes in turn is drained (SIGTERM:
/// its clients are told and resume through nginx on the others) and started
/// again on its address, while the load runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_arrives_exactly_once_through_a_rolling_restart() {
    let _one_at_a_time = SERIAL.lock().await;
    let redis = RedisCluster::start();
    let (_galera, db_url) = galera_with_database().await;
    let shared = Shared {
        db_url,
        redis_url: redis.url(),
        prefix: services::unique("roll"),
        presence_ttl: PRESENCE_TTL,
        extra_args: vec!["--db-acquire-timeout".into(), "1".into()],
    };
    let (mut nodes, nginx) = behind_nginx(&shared, 3).await;
    let load = start_load(&nginx.addr.to_string(), Duration::from_secs(18)).await;

    for i in 0..nodes.len() {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let node = nodes.remove(i);
        let (id, addr) = (node.id.clone(), node.addr.clone());
        node.terminate().await;
        nodes.insert(i, NodeProcess::start_at(&shared, &id, &addr).await);
        eprintln!("fault: {id} drained and restarted");
    }

    finish(load).await;
}

/// The highly available cluster: a Redis Cluster (3 primaries, 3
/// replicas) and a Galera cluster of three, three chat nodes. While the
/// load runs: the slot of the cluster's keys moves to another Redis primary
/// (a resharding), then lost for good, one after another: the Redis primary
/// now serving it, the database node the chat nodes write through, and a
/// chat node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_arrives_exactly_once_when_a_redis_primary_a_database_node_and_a_chat_node_die()
 {
    let _one_at_a_time = SERIAL.lock().await;
    let redis = RedisCluster::start();
    let (galera, db_url) = galera_with_database().await;
    let prefix = services::unique("ha");
    let shared = Shared {
        db_url,
        redis_url: redis.url(),
        prefix: prefix.clone(),
        presence_ttl: PRESENCE_TTL,
        extra_args: vec!["--db-acquire-timeout".into(), "1".into()],
    };
    let (mut nodes, nginx) = behind_nginx(&shared, 3).await;
    let load = start_load(&nginx.addr.to_string(), Duration::from_secs(20)).await;

    let t0 = Instant::now();
    let at = |secs: u64| tokio::time::sleep_until((t0 + Duration::from_secs(secs)).into());
    let tag = format!("{{{prefix}}}");
    at(2).await;
    let port = redis.move_slot_of(&tag);
    eprintln!("fault: the cluster's slot resharded to the primary on {port}");
    at(5).await;
    let port = redis.kill_primary_of(&tag);
    eprintln!("fault: the Redis primary on {port} serving the cluster's slot killed for good");
    at(10).await;
    galera.kill(1);
    eprintln!("fault: Galera node g1, the one in use, killed for good");
    at(15).await;
    nodes.remove(1).kill().await;
    eprintln!("fault: chat node n2 killed for good");

    finish(load).await;
    eprintln!("redis:\n{}galera:\n{}", redis.roles(), galera.roles());
}

/// A Galera node partitioned away from the other two while the chat nodes
/// write through it: it must stop taking writes, and the chat nodes must
/// move to the next ready node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_arrives_exactly_once_when_the_database_node_in_use_is_partitioned_away()
 {
    let _one_at_a_time = SERIAL.lock().await;
    let (galera, db_url) = galera_with_database().await;
    let mut redis = None;
    let shared = Shared {
        db_url,
        redis_url: services::redis_server(&mut redis),
        prefix: services::unique("gpart"),
        presence_ttl: PRESENCE_TTL,
        extra_args: vec!["--db-acquire-timeout".into(), "1".into()],
    };
    let (_nodes, nginx) = behind_nginx(&shared, 2).await;
    let load = start_load(&nginx.addr.to_string(), Duration::from_secs(14)).await;

    tokio::time::sleep(Duration::from_secs(4)).await;
    galera.isolate(1).await;
    let db_name = shared.db_url.rsplit('/').next().expect("database name");
    eprintln!("fault: Galera node g1, the one in use, partitioned away");
    // it refuses writes from now on (once it has noticed, within seconds)
    let refused = async {
        use sqlx::Connection;
        loop {
            let mut conn =
                sqlx::MySqlConnection::connect(&format!("{}/{db_name}", galera.node_url(1)))
                    .await
                    .expect("g1 still accepts connections");
            let write =
                sqlx::query("UPDATE conversations SET last_seq = last_seq WHERE conv = 'none'")
                    .execute(&mut conn)
                    .await;
            if write.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), refused)
        .await
        .expect("the partitioned node refuses writes");

    finish(load).await;
    eprintln!("galera:\n{}", galera.roles());
}

/// A node cut off from Redis and the database (a blackhole route in its
/// network namespace) while its clients still reach it through nginx, for
/// three presence TTLs, then healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_arrives_exactly_once_across_a_partition_from_redis_and_the_database()
 {
    let _one_at_a_time = SERIAL.lock().await;
    let ns = match NetNs::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: no network namespaces here ({why})");
            return;
        }
    };
    let (mut mysql, mut redis) = (None, None);
    let db_server = services::mysql_server(&mut mysql);
    let shared = Shared {
        db_url: services::create_database(&db_server).await,
        redis_url: services::redis_server(&mut redis),
        prefix: services::unique("part"),
        presence_ttl: PRESENCE_TTL,
        extra_args: vec!["--db-acquire-timeout".into(), "1".into()],
    };
    // the namespace reaches both services through forwarders on its
    // services address, the address the partition cuts
    let port_of = |url: &str| -> u16 {
        url.rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"))
    };
    let (db_port, redis_port) = (port_of(&db_server), port_of(&shared.redis_url));
    let forward = |port: u16| {
        common::Proxy::start_at(
            (ns.services, 0).into(),
            (std::net::Ipv4Addr::LOCALHOST, port).into(),
        )
    };
    let (db_fwd, redis_fwd) = (forward(db_port).await, forward(redis_port).await);
    let inside = Shared {
        db_url: shared
            .db_url
            .replace(&format!("127.0.0.1:{db_port}"), &db_fwd.addr.to_string()),
        redis_url: shared.redis_url.replace(
            &format!("127.0.0.1:{redis_port}"),
            &redis_fwd.addr.to_string(),
        ),
        ..shared.clone()
    };
    let nodes = [
        NodeProcess::start(&shared, "n1").await,
        NodeProcess::start(&shared, "n2").await,
        NodeProcess::start_in(&inside, "n3", &ns.name, &format!("{}:0", ns.inner)).await,
    ];
    let servers = nodes
        .iter()
        .map(|n| Node::new(&n.addr, 1).expect("node"))
        .collect();
    let nginx = Nginx::start(Balance::RoundRobin, servers).await;
    let load = start_load(&nginx.addr.to_string(), Duration::from_secs(16)).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    ns.partition();
    eprintln!(
        "fault: n3 cut off from Redis and MariaDB for {}s",
        PRESENCE_TTL * 3.0
    );
    tokio::time::sleep(Duration::from_secs_f64(PRESENCE_TTL * 3.0)).await;
    ns.heal();
    eprintln!("fault: partition healed");

    finish(load).await;
}

/// `count` nodes (n1, n2, ...) on `shared`, behind nginx (round robin).
async fn behind_nginx(shared: &Shared, count: usize) -> (Vec<NodeProcess>, Nginx) {
    let mut nodes = Vec::new();
    for i in 1..=count {
        nodes.push(NodeProcess::start(shared, &format!("n{i}")).await);
    }
    let servers = nodes
        .iter()
        .map(|n| Node::new(&n.addr, 1).expect("node"))
        .collect();
    (nodes, Nginx::start(Balance::RoundRobin, servers).await)
}

/// A Galera cluster of three and `--db` for a fresh database on it.
async fn galera_with_database() -> (Galera, String) {
    let galera = Galera::start();
    let db = services::create_database(&galera.node_url(1)).await;
    let name = db.rsplit('/').next().expect("database name").to_owned();
    let url = galera.url(&name);
    (galera, url)
}

/// A load running through nginx at `addr`: its clients' tasks and what they
/// see.
struct Load {
    ids: Vec<UserId>,
    /// The user (index into `ids`) of each client of `seen`: a receiver's
    /// second device is a client of its own.
    owners: Vec<usize>,
    stop: Instant,
    done: Arc<tokio::sync::Notify>,
    seen: Vec<Arc<Mutex<Seen>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Registers [`USERS`] users at `addr` (nginx, or a single node): the
/// first [`PAIRS`] write one to one to the next [`PAIRS`], and the rest to a
/// group of everyone, for `duration`.
async fn start_load(addr: &str, duration: Duration) -> Load {
    let addr = addr.to_owned();
    let mut ids = Vec::new();
    for i in 0..USERS {
        let mut c = chat::client::Client::connect(addr.as_str())
            .await
            .expect("connect");
        let name = format!("u{i}");
        ids.push(c.register(&name, &pw(&name)).await.expect("register"));
    }
    let group = {
        let mut c = chat::client::Client::connect(addr.as_str())
            .await
            .expect("connect");
        c.login(ids[CREATOR], &pw(&format!("u{CREATOR}")))
            .await
            .expect("login");
        let g = c.create_group("all", "").await.expect("group");
        c.logout().await.expect("logout");
        g
    };
    // everyone is logged in and in the group before anyone sends
    let mut clients = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let (mut r, _) = Reliable::login(&addr, id, &pw(&format!("u{i}")), options())
            .await
            .expect("login");
        if i != CREATOR {
            r.client()
                .await
                .expect("connected")
                .join_group(group)
                .await
                .expect("join");
        }
        clients.push((i, r));
    }
    // the receivers of the one-to-one chats have a second device
    for (i, &id) in ids.iter().enumerate().take(2 * PAIRS).skip(PAIRS) {
        let second = Options {
            device: Some("second".into()),
            ..options()
        };
        let (r, _) = Reliable::login(&addr, id, &pw(&format!("u{i}")), second)
            .await
            .expect("login of a second device");
        clients.push((i, r));
    }
    let stop = Instant::now() + duration;
    let done = Arc::new(tokio::sync::Notify::new());
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    let mut owners = Vec::new();
    for (k, (i, r)) in clients.into_iter().enumerate() {
        owners.push(i);
        let to = match i {
            // a second device only reads
            _ if k >= USERS => None,
            _ if i < PAIRS => Some(HistoryTarget::User(ids[i + PAIRS])),
            _ if i < 2 * PAIRS => None,
            _ => Some(HistoryTarget::Group(group)),
        };
        let s = Arc::new(Mutex::new(Seen::default()));
        seen.push(s.clone());
        tasks.push(tokio::spawn(client(r, to, stop, done.clone(), s)));
    }

    Load {
        ids,
        owners,
        stop,
        done,
        seen,
        tasks,
    }
}

/// Waits for the load to stop and every receiver to have everything (30 s
/// at most), then checks that every accepted message reached every
/// receiver exactly once, in order, and prints the counts.
async fn finish(load: Load) {
    let Load {
        ids,
        owners,
        stop,
        done,
        seen,
        tasks,
    } = load;
    tokio::time::sleep_until(stop.into()).await;
    let expected = |seen: &[Seen]| {
        // conversation (as the receiver names it) -> accepted seqs, per receiver
        let mut want: Vec<HashMap<HistoryTarget, Vec<i64>>> = vec![HashMap::new(); ids.len()];
        for (k, s) in seen.iter().enumerate() {
            let i = owners[k];
            for (to, seqs) in &s.accepted {
                match *to {
                    HistoryTarget::User(u) => {
                        let r = ids.iter().position(|&x| x == u).expect("receiver");
                        want[r]
                            .entry(HistoryTarget::User(ids[i]))
                            .or_default()
                            .extend(seqs);
                    }
                    HistoryTarget::Group(g) => {
                        for (r, w) in want.iter_mut().enumerate() {
                            if r != i {
                                w.entry(HistoryTarget::Group(g)).or_default().extend(seqs);
                            }
                        }
                    }
                }
            }
        }
        for w in &mut want {
            for seqs in w.values_mut() {
                seqs.sort_unstable();
            }
        }
        // per client: what its user is owed
        owners.iter().map(|&u| want[u].clone()).collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let snapshot = loop {
        let mut snap = Vec::new();
        for s in &seen {
            let s = s.lock().await;
            snap.push(Seen {
                received: s.received.clone(),
                accepted: s.accepted.clone(),
                attempted: s.attempted,
                failed: s.failed,
                stats: s.stats,
                replaced: s.replaced,
            });
        }
        let want = expected(&snap);
        let complete = want.iter().zip(&snap).all(|(w, s)| {
            w.iter()
                .all(|(conv, seqs)| s.received.get(conv).map_or(0, Vec::len) >= seqs.len())
        });
        if complete || Instant::now() > deadline {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    done.notify_waiters();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }

    let want = expected(&snapshot);
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for (k, (w, s)) in want.iter().zip(&snapshot).enumerate() {
        let r = format!(
            "{}{}",
            owners[k],
            if k >= USERS { " (second device)" } else { "" }
        );
        *totals.entry("sent").or_default() += s.attempted;
        *totals.entry("send failed").or_default() += s.failed;
        *totals.entry("accepted").or_default() +=
            s.accepted.values().map(|v| v.len() as u64).sum::<u64>();
        *totals.entry("received").or_default() +=
            s.received.values().map(|v| v.len() as u64).sum::<u64>();
        *totals.entry("duplicates dropped").or_default() += s.stats.duplicates_dropped;
        *totals.entry("reconnects").or_default() += s.stats.reconnects;
        *totals.entry("resent").or_default() += s.stats.resent;
        if s.replaced {
            problems.push(format!("u{r} was replaced by a session it did not open"));
        }
        for (conv, seqs) in w {
            let got = s.received.get(conv).cloned().unwrap_or_default();
            if !got.windows(2).all(|p| p[0] < p[1]) {
                problems.push(format!("u{r} got {conv:?} out of order or twice"));
            }
            let missing: Vec<_> = seqs.iter().filter(|q| !got.contains(q)).collect();
            if !missing.is_empty() {
                eprintln!("u{r} {conv:?} never got {missing:?}");
            }
            let lost = missing.len() as u64;
            *totals.entry("lost").or_default() += lost;
            if lost > 0 {
                problems.push(format!("u{r} lost {lost} of {conv:?}"));
            }
            let unexpected: Vec<_> = got.iter().filter(|q| !seqs.contains(q)).collect();
            // only a send that failed may have been stored anyway
            if unexpected.len() as u64 > snapshot.iter().map(|s| s.failed).sum::<u64>() {
                problems.push(format!("u{r} got unsent {conv:?} messages {unexpected:?}"));
            }
        }
    }
    eprintln!("failure suite: {totals:?}");
    assert!(problems.is_empty(), "{problems:#?}\n{totals:?}");
    assert!(
        totals["accepted"] > 1000,
        "the load ran through the faults: {totals:?}"
    );
    assert!(totals["reconnects"] > 0, "the faults were felt: {totals:?}");
}
