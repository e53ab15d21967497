//! Real `chatserver` processes for cluster tests: started with the flags a
//! user would give, killed with SIGKILL or stopped with SIGTERM.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat::client::Client;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::within;

/// Where a cluster's nodes meet: one database, one Redis, one key prefix.
#[derive(Clone, Debug)]
pub struct Shared {
    pub db_url: String,
    pub redis_url: String,
    pub prefix: String,
    /// Seconds a dead node's users may look online.
    pub presence_ttl: f64,
    pub extra_args: Vec<String>,
}

/// Log lines a node keeps for a failing test to show.
const LOG_TAIL: usize = 200;

/// One running node.
pub struct NodeProcess {
    pub id: String,
    pub addr: String,
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A failing test shows what its nodes said.
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            eprintln!("--- last log lines of node {} ---", self.id);
            for line in log.iter() {
                eprintln!("[{}] {line}", self.id);
            }
        }
    }
}

impl NodeProcess {
    /// Starts a node and waits until it listens.
    pub async fn start(shared: &Shared, id: &str) -> NodeProcess {
        Self::try_start(shared, id).await.expect("node started")
    }

    /// Starts a node; `Err` with its log when it exits instead of listening.
    pub async fn try_start(shared: &Shared, id: &str) -> Result<NodeProcess, String> {
        Self::try_start_at(shared, id, "127.0.0.1:0").await
    }

    /// Starts a node listening on `listen` (the address of one that died,
    /// say, so that nginx finds it again).
    pub async fn start_at(shared: &Shared, id: &str, listen: &str) -> NodeProcess {
        Self::try_start_at(shared, id, listen)
            .await
            .expect("node started")
    }

    /// Starts a node inside network namespace `netns`, listening on
    /// `listen` (an address of that namespace).
    pub async fn start_in(shared: &Shared, id: &str, netns: &str, listen: &str) -> NodeProcess {
        Self::spawn(shared, id, listen, Some(netns))
            .await
            .expect("node started")
    }

    async fn try_start_at(shared: &Shared, id: &str, listen: &str) -> Result<NodeProcess, String> {
        Self::spawn(shared, id, listen, None).await
    }

    async fn spawn(
        shared: &Shared,
        id: &str,
        listen: &str,
        netns: Option<&str>,
    ) -> Result<NodeProcess, String> {
        let server = env!("CARGO_BIN_EXE_chatserver");
        // `ip netns exec` execs the server in place: the pid is the node's.
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, server]);
                c
            }
            None => Command::new(server),
        };
        command
            .args(["--listen", listen, "--node-id", id])
            .args(["--db", &shared.db_url]);
        // Without a Redis URL: a single node.
        if !shared.redis_url.is_empty() {
            command
                .args(["--redis", &shared.redis_url])
                .args(["--redis-prefix", &shared.prefix])
                .args(["--presence-ttl", &shared.presence_ttl.to_string()]);
        }
        let mut child = command
            .args(&shared.extra_args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn chatserver");
        let mut log = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = Vec::new();
        let addr = within(async {
            while let Ok(Some(line)) = log.next_line().await {
                if let Some(rest) = line.split("listen=").nth(1) {
                    return Some(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                seen.push(line);
            }
            None
        })
        .await;
        let Some(addr) = addr else {
            return Err(seen.join("\n"));
        };
        // Keep draining the log so the node never blocks on a full pipe;
        // keep its tail, and show everything when CHAT_TEST_LOG is set.
        let show = std::env::var("CHAT_TEST_LOG").is_ok();
        let tag = id.to_owned();
        let tail = Arc::new(Mutex::new(VecDeque::from(seen)));
        let keep = tail.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = log.next_line().await {
                if show {
                    eprintln!("[{tag}] {line}");
                }
                let mut t = keep.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() >= LOG_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(NodeProcess {
            id: id.to_owned(),
            addr,
            child,
            log: tail,
        })
    }

    /// Whether the node's kept log (its start-up lines, then the last
    /// [`LOG_TAIL`]) has a line containing `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().any(|line| line.contains(needle))
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr).await.expect("connect")
    }

    /// SIGKILL: no cleanup at all, as in a crash.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGSTOP: the process stops, its sockets stay open (a node that hangs,
    /// or a VM paused).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = within(self.child.wait()).await.expect("wait");
        assert!(status.success(), "node {} exited with {status:?}", self.id);
    }
}

/// Asks the server which node this connection landed on (SERVER_INFO).
pub async fn node_of(c: &mut Client) -> String {
    let r = c
        .request(serde_json::json!({"msgid": 15}))
        .await
        .expect("server info");
    r.get("node")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A time limit for retry loops.
pub struct Deadline(std::time::Instant);

impl Deadline {
    pub fn after(seconds: f64) -> Deadline {
        Deadline(std::time::Instant::now() + Duration::from_secs_f64(seconds))
    }

    /// Sleeps a little before the next attempt; fails the test with `what`
    /// once the time is up.
    pub async fn wait(&self, what: &str) {
        assert!(
            std::time::Instant::now() < self.0,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two nodes on a fresh database and key prefix (on MariaDB and Redis of
/// this machine, or private ones started for the test), for tests of what
/// crosses nodes. The nodes stop before the services they use.
pub struct TwoNodes {
    pub n1: NodeProcess,
    pub n2: NodeProcess,
    _services: (
        Option<super::services::MariaDb>,
        Option<super::services::Redis>,
    ),
}

pub async fn two_nodes() -> TwoNodes {
    use super::services;
    let (mut mysql, mut redis) = (None, None);
    let shared = Shared {
        db_url: services::create_database(&services::mysql_server(&mut mysql)).await,
        redis_url: services::redis_server(&mut redis),
        prefix: services::unique("chat"),
        presence_ttl: 10.0,
        extra_args: Vec::new(),
    };
    TwoNodes {
        n1: NodeProcess::start(&shared, "n1").await,
        n2: NodeProcess::start(&shared, "n2").await,
        _services: (mysql, redis),
    }
}
