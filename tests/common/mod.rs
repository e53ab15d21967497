//! Starts the real server on an ephemeral port with a fresh SQLite file, and
//! helpers to talk to it as clients do.
#![allow(dead_code)]

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
    pub dir: Arc<TempDir>,
    pub config: Config,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir, config).await
    }

    async fn start_in(dir: Arc<TempDir>, config: Config) -> TestServer {
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let node = Node::open(&url, config.clone()).await.expect("open node");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(node.serve(listener, shutdown.clone()));
        TestServer {
            addr,
            dir,
            config,
            shutdown,
            task,
        }
    }

    /// Shuts the server down gracefully and waits until it has.
    pub async fn stop(self) -> (Arc<TempDir>, Config) {
        self.shutdown.cancel();
        within(self.task).await.expect("server task");
        (self.dir, self.config)
    }

    /// Stops the server and starts a new one on the same database.
    pub async fn restart(self) -> TestServer {
        let (dir, config) = self.stop().await;
        Self::start_in(dir, config).await
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
            Push::Other(v) => return v,
            Push::Message(_) => continue,
        }
    }
}

/// Asserts that no chat message arrives within a short while.
pub async fn assert_quiet(c: &mut Client) {
    let got = tokio::time::timeout(Duration::from_millis(300), c.next_message()).await;
    if let Ok(Some(m)) = got {
        panic!("expected no message, got {m:?}");
    }
}
