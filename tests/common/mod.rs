//! Starts the real server on an ephemeral port with a fresh database, and
//! helpers to talk to it as clients do.
//!
//! The database is a fresh SQLite file, or, with `CHAT_TEST_BACKEND=mysql`,
//! a freshly created MySQL database (on `CHAT_TEST_MYSQL_URL`, or a private
//! MariaDB): the same behaviour suite runs against both backends.
#![allow(dead_code)]

pub mod netns;
pub mod nodes;
pub mod services;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat::client::{Client, Push};
use chat::config::Config;
use chat::model::UserId;
use chat::server::Node;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server and the directory of its database.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The web listener: the web client at `/`, WebSocket at `/ws`.
    pub web: SocketAddr,
    pub dir: Arc<TempDir>,
    pub config: Config,
    pub db_url: String,
    mysql: Arc<Option<services::MariaDb>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let mut mysql = None;
        let db_url = if is_mysql() {
            services::create_database(&services::mysql_server(&mut mysql)).await
        } else {
            format!("sqlite://{}", dir.path().join("chat.db").display())
        };
        Self::start_in(dir, config, db_url, Arc::new(mysql)).await
    }

    async fn start_in(
        dir: Arc<TempDir>,
        config: Config,
        db_url: String,
        mysql: Arc<Option<services::MariaDb>>,
    ) -> TestServer {
        let node = Node::open(&db_url, config.clone(), None)
            .await
            .expect("open node");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let web_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let web = web_listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(node.serve_all(
            chat::server::Listeners {
                plain: listener,
                tls: None,
                web: Some(web_listener),
            },
            shutdown.clone(),
        ));
        TestServer {
            addr,
            web,
            dir,
            config,
            db_url,
            mysql,
            shutdown,
            task,
        }
    }

    /// Shuts the server down gracefully and waits until it has.
    pub async fn stop(self) -> Stopped {
        self.shutdown.cancel();
        within(self.task).await.expect("server task");
        Stopped {
            dir: self.dir,
            config: self.config,
            db_url: self.db_url,
            mysql: self.mysql,
        }
    }

    /// Stops the server and starts a new one on the same database.
    pub async fn restart(self) -> TestServer {
        let s = self.stop().await;
        Self::start_in(s.dir, s.config, s.db_url, s.mysql).await
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await.expect("connect")
    }

    /// Registers `name` (password `pw-NAME`) and returns a logged-in client.
    pub async fn user(&self, name: &str) -> (Client, UserId) {
        let mut c = self.client().await;
        let id = c.register(name, &pw(name)).await.expect("register");
        c.login(id, &pw(name)).await.expect("login");
        (c, id)
    }

    /// Registers `name` without logging in.
    pub async fn register(&self, name: &str) -> UserId {
        let mut c = self.client().await;
        c.register(name, &pw(name)).await.expect("register")
    }
}

/// A stopped server's database, for restarting or inspection.
pub struct Stopped {
    pub dir: Arc<TempDir>,
    pub config: Config,
    pub db_url: String,
    mysql: Arc<Option<services::MariaDb>>,
}

impl Stopped {
    /// Every stored password hash, read straight from the database.
    pub async fn password_hashes(&self) -> Vec<String> {
        let sql = "SELECT password_hash FROM users";
        if self.db_url.starts_with("mysql:") {
            let pool = sqlx::MySqlPool::connect(&self.db_url).await.expect("mysql");
            let hashes = sqlx::query_scalar(sql)
                .fetch_all(&pool)
                .await
                .expect("query");
            pool.close().await;
            hashes
        } else {
            let pool = sqlx::SqlitePool::connect(&self.db_url)
                .await
                .expect("sqlite");
            let hashes = sqlx::query_scalar(sql)
                .fetch_all(&pool)
                .await
                .expect("query");
            pool.close().await;
            hashes
        }
    }
}

/// Whether this run tests the MySQL backend.
pub fn is_mysql() -> bool {
    std::env::var("CHAT_TEST_BACKEND").is_ok_and(|b| b == "mysql")
}

pub fn pw(name: &str) -> String {
    format!("pw-{name}")
}

/// Awaits `f`, failing the test if it takes more than 10 seconds.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

/// The next push that is not a chat message (a reply without reqid, or a
/// notice), as JSON.
pub async fn next_other(c: &mut Client) -> Value {
    loop {
        match within(c.next_push()).await.expect("connection closed") {
            // Presence (msgid 19) comes and goes with other users, and
            // "the group changed" (40) with other members.
            Push::Other(v) if v["msgid"] == 19 || v["msgid"] == 40 => continue,
            Push::Other(v) => return v,
            Push::Message(_) => continue,
        }
    }
}

/// The next push with `msgid`, skipping every other one.
pub async fn next_with_msgid(c: &mut Client, msgid: i64) -> Value {
    loop {
        if let Push::Other(v) = within(c.next_push()).await.expect("connection closed")
            && v["msgid"] == msgid
        {
            return v;
        }
    }
}

/// Makes two logged-in users friends as users do: `a` asks, `b` accepts.
/// Waits for the pushes it causes (the request to `b`; the acceptance
/// and `b`'s presence to `a`), so that they do not surprise the test later.
pub async fn befriend(a: &mut Client, a_id: UserId, b: &mut Client, b_id: UserId) {
    assert!(
        a.add_friend(b_id).await.expect("ask"),
        "a request is pending"
    );
    next_with_msgid(b, 31).await;
    b.answer_friend(a_id, true).await.expect("accept");
    next_with_msgid(a, 32).await;
    let online = next_with_msgid(a, 19).await;
    assert_eq!(online["id"].as_i64(), Some(b_id.0), "{online}");
}

/// Asserts that no chat message arrives within a short while.
pub async fn assert_quiet(c: &mut Client) {
    let got = tokio::time::timeout(Duration::from_millis(300), c.next_message()).await;
    if let Ok(Some(m)) = got {
        panic!("expected no message, got {m:?}");
    }
}

/// A TCP proxy in front of a server, whose connections can be broken the
/// ways networks break: cut (both ends see the connection close) or frozen
/// (nothing passes and nobody is told). Connections made later pass.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<std::sync::Mutex<(CancellationToken, CancellationToken)>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        Self::start_at("127.0.0.1:0".parse().expect("addr"), target).await
    }

    /// A proxy listening on `listen` (port 0: any).
    pub async fn start_at(listen: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(std::sync::Mutex::new((
            CancellationToken::new(),
            CancellationToken::new(),
        )));
        let tokens = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (cut, freeze) = tokens.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                        _ = freeze.cancelled() => {
                            // hold both sockets open, passing nothing
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Proxy { addr, cut, task }
    }

    /// Closes every connection made so far.
    pub fn cut(&self) {
        let mut t = self.cut.lock().expect("lock");
        t.0.cancel();
        t.0 = CancellationToken::new();
    }

    /// Stops every connection made so far from passing anything, silently.
    pub fn freeze(&self) {
        let mut t = self.cut.lock().expect("lock");
        t.1.cancel();
        t.1 = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
