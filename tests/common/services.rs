//! Private MariaDB and Redis instances for tests that need the real thing,
//! or need to stop it (outage tests) without disturbing anyone else. Each
//! lives in a temporary directory and is killed when dropped.
//!
//! Tests that only need *a* database or Redis use the shared instances the
//! test script starts (`CHAT_TEST_MYSQL_URL`, `CHAT_TEST_REDIS_URL`) with a
//! unique database name or key prefix, and fall back to a private instance
//! when run outside the script.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use chat_ring::{Balance, NginxConf, Node, STREAM_MODULE, nginx_conf};
use tempfile::TempDir;
use tokio::net::TcpStream;

/// A port nothing listens on right now.
///
/// Chosen below the kernel's ephemeral range (32768 and up), so that no
/// outgoing connection (a node's to MariaDB or Redis, say) takes it before
/// the program meant for it binds it, and never the same twice in one test
/// process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed)
        .ok();
    for _ in 0..200 {
        // 20000..32000, stepping through it from a per-process start.
        let n = NEXT.fetch_add(7, Ordering::Relaxed);
        let port = 20_000 + (n % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn need(program: &str) {
    let found = Command::new("sh")
        .args([
            "-c",
            &format!("command -v {program} || test -x /usr/sbin/{program}"),
        ])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: run ./scripts/provision.sh (or ./scripts/test.sh)"
    );
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private Redis.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    password: Option<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> Redis {
        need("redis-server");
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            password: password.map(str::to_owned),
        };
        r.resume();
        r
    }

    /// `redis://` URL with the password, if any.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (like a crash or an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub fn resume(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        wait_port(self.port, "redis-server");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private MariaDB with a passwordless root on 127.0.0.1.
pub struct MariaDb {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        need("mariadbd");
        need("mariadb-install-db");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("install.log");
        // Retried once: a bootstrap now and then fails when many run at once.
        let installed = (0..2).any(|_| {
            let _ = std::fs::remove_dir_all(dir.path().join("data"));
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.path().join("data").display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .stdout(File::create(&log).expect("log"))
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(
            installed,
            "mariadb-install-db failed:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let mut db = MariaDb {
            port: free_port(),
            child: None,
            dir,
        };
        db.resume();
        db
    }

    /// The server URL without a database.
    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Kills the server (like a crash or an outage); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn resume(&mut self) {
        let d = self.dir.path();
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", d.join("mariadb.sock").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--user={user}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=8M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadbd");
        self.child = Some(child);
        wait_port(self.port, "mariadbd");
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A database server URL (no database) to create test databases on: the
/// test script's shared MariaDB, or a private one kept in `keep`.
pub fn mysql_server(keep: &mut Option<MariaDb>) -> String {
    match std::env::var("CHAT_TEST_MYSQL_URL") {
        Ok(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => keep.get_or_insert_with(MariaDb::start).server_url(),
    }
}

/// A Redis URL: the test script's shared Redis, or a private one kept in `keep`.
pub fn redis_server(keep: &mut Option<Redis>) -> String {
    match std::env::var("CHAT_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => keep.get_or_insert_with(Redis::start).url(),
    }
}

/// Creates a uniquely named database on `server` and returns its URL.
pub async fn create_database(server: &str) -> String {
    use sqlx::Connection;
    let name = unique("chat_t");
    let start = Instant::now();
    let mut conn = loop {
        match sqlx::MySqlConnection::connect(server).await {
            Ok(c) => break c,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot reach MariaDB at {server}: {e}"),
        }
    };
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .execute(&mut conn)
        .await
        .expect("create database");
    format!("{server}/{name}")
}

/// Drops a database made by [`create_database`].
pub async fn drop_database(url: &str) {
    use sqlx::Connection;
    let Some((server, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::MySqlConnection::connect(server).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{name}`"
        )))
        .execute(&mut conn)
        .await;
    }
}

const NGINX: &str = "/usr/sbin/nginx";
const STEP: Duration = Duration::from_secs(5);

/// An nginx started for one test; killed (and reaped) when dropped. It runs
/// with `master_process off`, so killing this one process stops all of it
/// and no orphaned worker can outlive a failed test.
pub struct Nginx {
    child: Child,
    dir: TempDir,
    pub addr: SocketAddr,
}

impl Nginx {
    pub async fn start(balance: Balance, nodes: Vec<Node>) -> Nginx {
        Self::start_with(balance, nodes, false).await
    }

    /// nginx that sends each node a PROXY protocol header naming the client
    /// (the nodes run with `--proxy-protocol`).
    pub async fn start_proxying(balance: Balance, nodes: Vec<Node>) -> Nginx {
        Self::start_with(balance, nodes, true).await
    }

    async fn start_with(balance: Balance, nodes: Vec<Node>, proxy_protocol: bool) -> Nginx {
        assert!(
            Path::new(NGINX).exists() && Path::new(STREAM_MODULE).exists(),
            "nginx with the stream module is missing ({NGINX}, {STREAM_MODULE}); \
             run ./scripts/provision.sh as root"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().to_str().expect("utf-8 temp path").to_string();
        // Take a free port, then release it for nginx to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut conf = NginxConf::new(&addr.to_string(), balance, nodes);
        conf.prefix = Some(prefix);
        conf.proxy_protocol = proxy_protocol;
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, nginx_conf(&conf).expect("nginx.conf")).expect("write conf");
        let stderr = File::create(dir.path().join("stderr.log")).expect("stderr.log");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg("daemon off; master_process off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx { child, dir, addr };
        nginx.wait_ready().await;
        nginx
    }

    /// Retries connecting for up to 5 s (nginx accepts once it listens).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited with {status}\n{}", self.logs());
            }
            if TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not accept on {} within 5 s\n{}",
                self.addr,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "--- nginx.conf\n{}--- stderr\n{}--- error log\n{}",
            read("nginx.conf").unwrap_or_default(),
            read("stderr.log").unwrap_or_default(),
            read("chat-nginx.error.log").unwrap_or_default()
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a function of `scripts/lib/services.sh` (the same code
/// `scripts/cluster.sh` runs), with its output for a failing test.
fn services_sh(call: &str) -> Result<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib/services.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail; . {script}; {call}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{call} failed:\n{text}"))
    }
}

/// The first of `count` consecutive free ports.
pub fn free_ports(count: u16) -> u16 {
    services_sh(&format!("pick_ports {count}"))
        .expect("pick_ports")
        .trim()
        .parse()
        .expect("a port")
}

/// A private Redis Cluster: 3 primaries with one replica each, failing
/// over within a few seconds (`start_redis_cluster` of services.sh).
pub struct RedisCluster {
    pub base: u16,
    dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        need("redis-server");
        need("redis-cli");
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_ports(12);
        let d = dir.path().display();
        services_sh(&format!("start_redis_cluster {d} {base}")).unwrap_or_else(|e| panic!("{e}"));
        RedisCluster { base, dir }
    }

    /// `redis+cluster://` with two of the six addresses as seeds.
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.base,
            self.base + 1
        )
    }

    /// Kills (SIGKILL) the primary serving `key`'s slot, for good; returns
    /// its port.
    pub fn kill_primary_of(&self, key: &str) -> u16 {
        let cli = |args: &str| services_sh(&format!("redis-cli -p {} {args}", self.base));
        let slot: u16 = cli(&format!("cluster keyslot '{key}'"))
            .expect("keyslot")
            .trim()
            .parse()
            .expect("slot");
        // "ID HOST:PORT@BUS FLAGS MASTER PING PONG EPOCH STATE SLOTS..."
        let nodes = cli("cluster nodes").expect("cluster nodes");
        let port = nodes
            .lines()
            .filter(|l| l.split_whitespace().nth(2).is_some_and(|f| f.contains("master")))
            .find(|l| {
                l.split_whitespace().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|a| a.split('@').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no primary serves slot {slot}:\n{nodes}"));
        let n = port - self.base + 1;
        let pid = std::fs::read_to_string(self.dir.path().join(format!("r{n}/pid"))).expect("pid");
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        port
    }

    /// Moves `key`'s slot, with its keys, to another primary, as a
    /// resharding does (clients get ASK, then MOVED); returns the new
    /// primary's port.
    pub fn move_slot_of(&self, key: &str) -> u16 {
        services_sh(&format!(
            "redis_cluster_move_slot {} '{key}'",
            self.dir.path().display()
        ))
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .parse()
        .expect("a port")
    }

    /// `rN PID ADDR ROLE` per instance.
    pub fn roles(&self) -> String {
        services_sh(&format!(
            "redis_cluster_roles {}",
            self.dir.path().display()
        ))
        .unwrap_or_else(|e| e)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = services_sh(&format!("stop_redis_cluster {}", self.dir.path().display()));
    }
}

/// A private MariaDB Galera cluster of three nodes (`start_galera` of
/// services.sh), root without a password.
pub struct Galera {
    pub base: u16,
    dir: TempDir,
}

impl Galera {
    pub fn start() -> Galera {
        need("mariadbd");
        assert!(
            Path::new("/usr/lib/galera/libgalera_smm.so").exists(),
            "galera-4 is not installed: run ./scripts/provision.sh (or ./scripts/test.sh)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_ports(12);
        services_sh(&format!("start_galera {} {base} 3", dir.path().display()))
            .unwrap_or_else(|e| panic!("{e}"));
        Galera { base, dir }
    }

    /// The server URL of node `i` (1..3) alone, without a database.
    pub fn node_url(&self, i: u16) -> String {
        format!("mysql://root@127.0.0.1:{}", self.base + i - 1)
    }

    /// `--db` for all three nodes and database `db`, in order g1, g2, g3.
    pub fn url(&self, db: &str) -> String {
        format!(
            "mysql://root@127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/{db}",
            self.base,
            self.base + 1,
            self.base + 2
        )
    }

    /// Kills node `i` (SIGKILL), for good.
    pub fn kill(&self, i: u16) {
        let pid = std::fs::read_to_string(self.dir.path().join(format!("g{i}/pid"))).expect("pid");
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }

    /// Cuts node `i` off from the other two, as a network partition would
    /// (Galera's `gmcast.isolate`): it leaves the Primary component and
    /// refuses writes, while it still accepts connections.
    pub async fn isolate(&self, i: u16) {
        use sqlx::Connection;
        let mut conn = sqlx::MySqlConnection::connect(&self.node_url(i))
            .await
            .expect("connect to the node to isolate");
        sqlx::query("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
            .execute(&mut conn)
            .await
            .expect("isolate");
    }

    /// `gN PID ADDR STATE` per node.
    pub fn roles(&self) -> String {
        services_sh(&format!("galera_roles {}", self.dir.path().display())).unwrap_or_else(|e| e)
    }
}

impl Drop for Galera {
    fn drop(&mut self) {
        let _ = services_sh(&format!("stop_galera {}", self.dir.path().display()));
    }
}
