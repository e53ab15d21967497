//! A node: the accept loop, and the lifecycle from open to graceful shutdown.
//!
//! [`Node::serve_all`] takes already-bound listeners, so tests bind port 0
//! and run the real server. The accept loop caps connections (refusing extra ones
//! with a `ServerFull` notice instead of running out of file descriptors),
//! backs off on accept errors without ever giving up, and on shutdown stops
//! accepting, lets every session end (users marked offline, cursors stored),
//! then flushes and closes the store.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection;
use crate::hub::Hub;
use crate::hub::local::LocalHub;
use crate::hub::redis::{ClusterConfig, RedisHub};
use crate::limits::{AddrSlot, Gate, addr_slot};
use crate::metrics::{METRICS, PoolUsage, inc};
use crate::service::Service;
use crate::store::mysql::MySqlStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{SharedStore, StoreError};
use crate::tls::TlsAcceptor;
use crate::transport::accept_each;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "unsupported database URL {0:?} (expected sqlite://PATH or mysql://USER:PASS@HOST:PORT/DB)"
    )]
    UnsupportedDb(String),
    #[error("cluster mode (--redis) needs a database all nodes share: --db mysql://...")]
    ClusterNeedsSharedDb,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
}

/// Everything one server process runs.
#[derive(Debug)]
pub struct Node {
    service: Arc<Service>,
    store: SharedStore,
    hub: Arc<dyn Hub>,
}

impl std::fmt::Debug for dyn Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

impl std::fmt::Debug for dyn crate::store::Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Node {
    /// Opens the store named by `db_url` and wires up a node: on its own
    /// (in-process hub) or, with `cluster`, one of many sharing Redis.
    pub async fn open(
        db_url: &str,
        config: Config,
        cluster: Option<ClusterConfig>,
    ) -> Result<Self, StartError> {
        if cluster.is_some() && db_url.starts_with("sqlite:") {
            return Err(StartError::ClusterNeedsSharedDb);
        }
        let store: SharedStore = if db_url.starts_with("sqlite:") {
            Arc::new(SqliteStore::open_with(db_url, config.sqlite_sync, config.sqlite_stage).await?)
        } else if db_url.starts_with("mysql:") || db_url.starts_with("mariadb:") {
            let url = db_url.replacen("mariadb:", "mysql:", 1);
            Arc::new(MySqlStore::open(&url, &config.pool).await?)
        } else {
            return Err(StartError::UnsupportedDb(db_url.to_owned()));
        };
        let hub: Arc<dyn Hub> = match cluster {
            None => Arc::new(LocalHub::new()),
            Some(cluster) => match RedisHub::connect(cluster).await {
                Ok(hub) => hub,
                Err(e) => {
                    store.close().await;
                    return Err(e.into());
                }
            },
        };
        let service = Arc::new(Service::new(store.clone(), hub.clone(), Arc::new(config))?);
        Ok(Node {
            service,
            store,
            hub,
        })
    }

    /// What `/readyz` asks: the store and the hub answer, and the node is
    /// not draining (`shutdown` not yet cancelled).
    pub fn readiness(&self, shutdown: CancellationToken) -> crate::metrics::Readiness {
        let (store, hub) = (self.store.clone(), self.hub.clone());
        std::sync::Arc::new(move || {
            let (store, hub, shutdown) = (store.clone(), hub.clone(), shutdown.clone());
            Box::pin(async move {
                if shutdown.is_cancelled() {
                    return Err("draining: the node is shutting down".to_owned());
                }
                let limit = std::time::Duration::from_secs(2);
                match tokio::time::timeout(limit, store.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("store: {e}")),
                    Err(_) => return Err("store: no answer within 2 s".to_owned()),
                }
                match tokio::time::timeout(limit, hub.ready()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("hub: {e}")),
                    Err(_) => Err("hub: no answer within 2 s".to_owned()),
                }
            })
        })
    }

    /// What the metrics endpoint reads from the store at each scrape.
    pub fn pool_usage(&self) -> impl Fn() -> PoolUsage + Send + Sync + 'static {
        let store = self.store.clone();
        move || store.pool_usage()
    }

    /// Serves every listener given, all under one connection cap, until
    /// `shutdown`; then lets the sessions end and closes the node.
    pub async fn serve_all(self, listeners: Listeners, shutdown: CancellationToken) {
        let config = self.service.config();
        let gate = Gate::new(config.max_connections);
        let sessions = TaskTracker::new();
        let web = async {
            if let Some(l) = listeners.web {
                crate::web::serve(
                    l,
                    self.service.clone(),
                    gate.clone(),
                    sessions.clone(),
                    shutdown.clone(),
                )
                .await;
            }
        };
        let chat = accept_chat(
            &listeners.plain,
            listeners.tls.as_ref(),
            &self.service,
            &gate,
            &sessions,
            &shutdown,
        );
        tokio::join!(web, chat);
        sessions.close();
        if tokio::time::timeout(config.shutdown_grace, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = sessions.len(),
                "sessions did not finish within the grace period"
            );
        }
        drop(listeners.plain);
        drop(listeners.tls);
        self.service.drain().await;
        self.hub.shutdown().await;
        self.store.close().await;
        tracing::info!("server stopped");
    }
}

/// Descriptors a node keeps for itself beyond its clients: database and
/// Redis connections, the listener, SQLite's files, logs.
pub const RESERVED_FDS: u64 = 512;

/// Raises this process's open-file limit to its hard limit and returns how
/// many clients fit under it ([`RESERVED_FDS`] kept back), so that the node
/// refuses the client past its cap politely instead of failing `accept`.
pub fn client_capacity() -> Option<usize> {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        let soft: u64 = lim.rlim_cur;
        usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).ok()
    }
    #[cfg(not(unix))]
    None
}

/// What a node listens on: plain TCP always; TLS and the web listener
/// (web client and WebSocket) if configured.
pub struct Listeners {
    pub plain: TcpListener,
    pub tls: Option<(TcpListener, TlsAcceptor)>,
    pub web: Option<TcpListener>,
}

/// What an admitted connection holds for its life.
struct Admitted {
    frames: crate::transport::Frames,
    /// The client's address (from a trusted balancer's PROXY header).
    client: std::net::SocketAddr,
    /// Counts it against its address, unless the accept loop already did.
    _addr_slot: Option<AddrSlot>,
    _open: crate::metrics::OpenConnection,
}

/// One accepted connection: learns the client's address (from a trusted
/// balancer's PROXY header, within the frame deadline) and holds it to the
/// per-address cap unless `counted` already did, then readies the
/// transport (TLS). `None`: it was closed.
async fn admit(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    counted: Option<AddrSlot>,
    acceptor: Option<TlsAcceptor>,
    service: &Service,
    shutdown: &CancellationToken,
    gate: &Gate,
) -> Option<Admitted> {
    let config = service.config();
    let limits = &config.limits;
    let mut held = counted;
    let mut client = peer;
    if config.proxy.trusts(peer.ip()) {
        let read =
            crate::proxy::client_addr(&mut stream, peer, &config.proxy, limits.frame_timeout);
        client = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = read => match r {
                Ok(client) => client,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "no usable PROXY header; closing");
                    inc(&METRICS.limited);
                    return None;
                }
            },
        };
        match addr_slot(gate.per_addr(), limits, client.ip()) {
            Ok(s) => held = s,
            Err(msg) => {
                if acceptor.is_none() {
                    connection::refuse(stream, msg).await;
                }
                return None;
            }
        }
    }
    let open = crate::metrics::OpenConnection::count();
    let frames = connection::open(stream, acceptor, config, shutdown).await?;
    Some(Admitted {
        frames,
        client,
        _addr_slot: held,
        _open: open,
    })
}

/// The chat listeners (plain TCP, and TLS if given), each running the
/// accept loop until `shutdown`. A client is counted under the node's cap
/// at once, and against its address too, in accept order (a balancer's
/// client only once its PROXY header has named it).
async fn accept_chat(
    plain: &TcpListener,
    tls: Option<&(TcpListener, TlsAcceptor)>,
    service: &Arc<Service>,
    gate: &Gate,
    sessions: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let config = service.config();
    let handle = |acceptor: Option<TlsAcceptor>| {
        move |stream: TcpStream, peer: std::net::SocketAddr| {
            // A TLS client cannot read a plain notice: it is only closed (no
            // handshake spent on it).
            let refuse = |stream, msg| {
                let plain = acceptor.is_none();
                Some(Box::pin(async move {
                    if plain {
                        connection::refuse(stream, msg).await;
                    }
                })
                    as std::pin::Pin<
                        Box<dyn std::future::Future<Output = ()> + Send>,
                    >)
            };
            let slot = match gate.slot() {
                Ok(slot) => slot,
                Err(msg) => return refuse(stream, msg),
            };
            let counted = if config.proxy.trusts(peer.ip()) {
                None
            } else {
                match addr_slot(gate.per_addr(), &config.limits, peer.ip()) {
                    Ok(s) => s,
                    Err(msg) => return refuse(stream, msg),
                }
            };
            let (service, shutdown, gate) = (service.clone(), shutdown.clone(), gate.clone());
            let (acceptor, sessions) = (acceptor.clone(), sessions.clone());
            // Admission is a task of its own, and the session another it
            // starts: awaited in one future, the session would keep the
            // admission's state and arguments beside it for its whole life
            // (an idle connection is mostly that future).
            Some(Box::pin(async move {
                let classic_possible = acceptor.is_none();
                let admitted = admit(stream, peer, counted, acceptor, &service, &shutdown, &gate);
                let Some(Admitted {
                    frames,
                    client,
                    _addr_slot,
                    _open,
                }) = admitted.await
                else {
                    return;
                };
                let held = (slot, _addr_slot, _open);
                // Boxed: a task's cell is allocated aligned to 128 bytes,
                // which for one this size leaves free space around it that
                // the allocator seldom reuses (measured: 0.5 KB a
                // connection more than a small cell and a box).
                sessions.spawn(Box::pin(connection::run(
                    frames,
                    client,
                    classic_possible,
                    service,
                    gate,
                    shutdown,
                    held,
                )));
            }))
        }
    };
    let plain = accept_each("chat", plain, sessions, shutdown, handle(None));
    match tls {
        None => plain.await,
        Some((listener, acceptor)) => {
            let tls = accept_each(
                "tls",
                listener,
                sessions,
                shutdown,
                handle(Some(acceptor.clone())),
            );
            tokio::join!(plain, tls);
        }
    }
}
