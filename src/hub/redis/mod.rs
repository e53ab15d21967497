//! The cluster hub: presence and delivery between nodes through Redis.
//!
//! * Presence: `P:devices:ID` maps each logged-in device of a user to
//!   `NODE|INCARNATION|SESSION`, and each node process keeps `P:node:NODE` set to its
//!   incarnation (random per process) with a lease it renews. A user counts
//!   as online only while that very process holds the lease, so the users of
//!   a node killed with SIGKILL become offline by themselves once its lease
//!   runs out (`presence_ttl`), and a node restarted under the same name does
//!   not bring them back; a graceful shutdown deletes both at once.
//!   Claiming, releasing and listing are Lua scripts: one round trip each,
//!   whatever the number of users. They live in [`presence`].
//! * Delivery: each node subscribes to its own channel `P:to:NODE`. A message
//!   for users on other nodes is queued for the node's publisher, which sends
//!   everything waiting in one pipeline: per message, one script call that
//!   looks up where its receivers are and publishes it once per node holding
//!   some of them (none per member). The sender's reply never waits for
//!   it. That, and the payload's format, is [`bus`]. Pub/sub is at most once; that
//!   is fine because every message is stored first: a receiver that misses a publish gets the message at its
//!   next gap check or login, and after the node's subscription comes back
//!   every session is told to catch up from the store.
//! * Group membership changes are announced on `P:groups` so that every node
//!   drops its cached member list.
//! * A login takes over its device's field whoever held it; if an older
//!   session on another node held it, `USER HOLDER FP` is published on
//!   `P:kick`, and the node running that session closes it (errno 54). Should
//!   that publish be missed, the old session still gets no remote pushes
//!   (they follow the field), and its node drops it when it next re-claims
//!   presence. Logging a device out from another is `USER HOLDER - revoke`.
//! * A node delivers to its own sessions directly and routes through Redis
//!   only receivers it has no session of, or whose devices are on several
//!   nodes ([`LocalHub::mark_shared`]): a login that finds the user's other
//!   devices on other nodes publishes `+ USER` on `P:kick`, so that those
//!   nodes route the user's messages to it too, and has its own session
//!   catch up from the store a moment later (for what was delivered
//!   before those nodes heard).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod bus;
mod conn;
mod presence;

pub use conn::Target;

use super::local::LocalHub;
use super::{GroupChange, Hub, HubError, SessionHandle};
use crate::model::{Delivery, Device, GroupId, UserId};

/// How long after a login that found the user's devices on other nodes its
/// session reads from the store what those nodes delivered before they
/// heard of it.
const SHARED_CATCH_UP: Duration = Duration::from_secs(1);
use bus::Bus;
use presence::Presence;

/// Where and how a node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]`, or a Redis Cluster as
    /// `redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]`
    /// ([`Target`]); AUTH comes from the URL.
    pub redis_url: String,
    /// This node's name, unique in the cluster.
    pub node_id: String,
    /// Prefix of every key and channel, so that clusters (or test runs) can
    /// share one Redis.
    pub key_prefix: String,
    /// How long a node's lease lasts without renewal: the bound on how long
    /// the users of a crashed node still look online.
    pub presence_ttl: Duration,
    /// How long a Redis call may take before the request fails with errno 50.
    pub timeout: Duration,
    /// How long the publisher keeps retrying a batch for other nodes (a
    /// Redis restart, a cluster failover) before leaving it to the
    /// receivers' catch-up from the store. Cross-node chat pauses, at most
    /// this long, instead of skipping messages.
    pub publish_retry: Duration,
}

impl ClusterConfig {
    pub fn new(redis_url: &str, node_id: &str) -> Self {
        ClusterConfig {
            redis_url: redis_url.to_owned(),
            node_id: node_id.to_owned(),
            key_prefix: "chat".to_owned(),
            presence_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            publish_retry: Duration::from_secs(10),
        }
    }
}

/// The names of this node's keys and channels in Redis. All of them start
/// with the hash tag `{PREFIX}`, so that in a Redis Cluster they share one
/// slot: every script touches one slot, and a pipeline is one round trip to
/// one shard (whose replica takes over when it fails).
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    node_id: String,
    /// Random per process: tells this run of the node from earlier ones.
    incarnation: String,
}

impl Keys {
    fn user(&self, user: UserId) -> String {
        format!("{{{}}}:devices:{user}", self.prefix)
    }

    fn node_prefix(&self) -> String {
        format!("{{{}}}:node:", self.prefix)
    }

    /// This node's lease.
    fn lease(&self) -> String {
        format!("{}{}", self.node_prefix(), self.node_id)
    }

    fn channel_prefix(&self) -> String {
        format!("{{{}}}:to:", self.prefix)
    }

    fn groups_channel(&self) -> String {
        format!("{{{}}}:groups", self.prefix)
    }

    fn kick_channel(&self) -> String {
        format!("{{{}}}:kick", self.prefix)
    }

    /// What this process's presence values start with.
    fn holder_prefix(&self) -> String {
        format!("{}|{}|", self.node_id, self.incarnation)
    }

    fn holder(&self, session_id: u64) -> String {
        format!("{}{session_id}", self.holder_prefix())
    }
}

/// Presence and delivery across nodes: this node's sessions ([`LocalHub`]),
/// its presence in Redis ([`Presence`]) and its end of the bus ([`Bus`]).
pub struct RedisHub {
    config: ClusterConfig,
    local: Arc<LocalHub>,
    presence: Presence,
    bus: Arc<Bus>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for RedisHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHub")
            .field("node", &self.config.node_id)
            .finish()
    }
}

fn unavailable(e: redis::RedisError) -> HubError {
    crate::metrics::inc(&crate::metrics::METRICS.redis_errors);
    HubError::Unavailable(e.to_string())
}

impl RedisHub {
    /// Connects, announces the node, and starts its subscriber, publisher
    /// and lease tasks.
    pub async fn connect(config: ClusterConfig) -> Result<Arc<RedisHub>, HubError> {
        if config.key_prefix.contains(['{', '}']) {
            return Err(HubError::Unavailable(format!(
                "Redis prefix {:?} must not contain braces (it becomes the keys' hash tag)",
                config.key_prefix
            )));
        }
        if config.node_id.is_empty() || config.node_id.contains(['|', ' ', '\n']) {
            return Err(HubError::Unavailable(format!(
                "node id {:?} must be non-empty, without '|' or spaces",
                config.node_id
            )));
        }
        let target = Target::parse(&config.redis_url)?;
        let conn = target.connect(config.timeout).await.map_err(unavailable)?;
        let keys = Keys {
            prefix: config.key_prefix.clone(),
            node_id: config.node_id.clone(),
            incarnation: incarnation(),
        };
        let hub = Arc::new(RedisHub {
            local: Arc::new(LocalHub::new()),
            presence: Presence::new(conn.clone(), keys.clone(), config.presence_ttl),
            bus: Arc::new(Bus::new(conn, keys, config.timeout, config.publish_retry)),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        hub.presence.renew_lease().await?;
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        hub.tasks.spawn(hub.bus.clone().subscriber(
            target,
            hub.local.clone(),
            subscribed_tx,
            hub.stop.clone(),
        ));
        hub.tasks.spawn(hub.clone().lease_keeper());
        hub.tasks.spawn(hub.bus.clone().publisher(hub.stop.clone()));
        // Do not serve before deliveries for this node can arrive.
        match tokio::time::timeout(hub.config.timeout * 2, subscribed).await {
            Ok(Ok(())) => Ok(hub),
            _ => Err(HubError::Unavailable(
                "could not subscribe to the node channel".into(),
            )),
        }
    }

    /// Renews the node's lease three times per lease period, and claims the
    /// local users' presence again whenever the lease had lapsed.
    async fn lease_keeper(self: Arc<Self>) {
        let period = self.config.presence_ttl / 3;
        let mut reassert = false;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                // After a failover the new primary may lack the last
                // writes (replication is asynchronous): claim again.
                _ = self.bus.resubscribed.notified() => reassert = true,
            }
            match self.presence.renew_lease().await {
                Ok(existed) => reassert |= !existed,
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the node's presence lease");
                    continue;
                }
            }
            if reassert {
                tracing::info!("presence lease had lapsed; claiming local users again");
                reassert = !self.reassert_presence().await;
            }
        }
    }

    /// Claims presence again for every local session (after Redis was
    /// away, perhaps restarted empty). A device that meanwhile logged in on
    /// another node keeps that login; the stale local session is dropped.
    /// Returns whether every claim got an answer.
    async fn reassert_presence(&self) -> bool {
        let mut complete = true;
        for (user, device, session_id) in self.local.sessions() {
            // A login of this device on this node since the snapshot holds
            // it now, and its own takeover claims it: leave it be.
            if self.local_holder(user, &device) != Some(session_id) {
                continue;
            }
            match self.presence.claim(user, &device, session_id).await {
                Ok(Some(others)) => {
                    self.note_siblings(user, session_id, &others).await;
                    // Replaced here while the claim was under way: the
                    // claim may have overwritten the newer session's
                    // takeover, so it claims again (a refusal is for its
                    // own takeover to settle).
                    if let Some(newer) = self
                        .local_holder(user, &device)
                        .filter(|&s| s != session_id)
                        && let Err(e) = self.presence.claim(user, &device, newer).await
                    {
                        tracing::warn!(%user, error = %e, "could not reassert presence");
                        complete = false;
                    }
                }
                Ok(None) => {
                    tracing::warn!(
                        %user,
                        %device,
                        "logged in elsewhere while Redis was away; dropping this session"
                    );
                    // By session, not by device: only the stale one goes.
                    self.local.kick_session(user, session_id, None, false);
                }
                Err(e) => {
                    tracing::warn!(%user, error = %e, "could not reassert presence");
                    complete = false;
                }
            }
        }
        complete
    }

    /// The session holding `device` of `user` on this node, if any.
    fn local_holder(&self, user: UserId, device: &Device) -> Option<u64> {
        self.local
            .sessions_of(user)
            .into_iter()
            .find(|(d, _)| d == device)
            .map(|(_, s)| s)
    }
}

impl RedisHub {
    /// What this process's presence values start with.
    fn presence_holder_prefix(&self) -> String {
        self.presence.holder_prefix()
    }

    /// `session` of `user` holds its device, and `others` hold the user's
    /// other devices: if some are on other nodes, from now on each side
    /// routes the user's messages to the other too, and this session reads
    /// from the store, a moment later, what those nodes delivered before
    /// they heard.
    async fn note_siblings(&self, user: UserId, session_id: u64, others: &[String]) {
        let ours = self.presence_holder_prefix();
        if !others.iter().any(|h| !h.starts_with(&ours)) {
            return;
        }
        self.local.mark_shared(user);
        self.bus.shared(user).await;
        let (local, stop) = (self.local.clone(), self.stop.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(SHARED_CATCH_UP) => local.resync_session(user, session_id),
            }
        });
    }
}

/// A value that differs between runs of a node: time and process id.
fn incarnation() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

#[async_trait]
impl Hub for RedisHub {
    async fn connect(&self, user: UserId, handle: SessionHandle) -> Result<(), HubError> {
        // Reserve locally first: two logins of a device on this node cannot
        // both get past here, so the claim below never races one of our own.
        let session_id = handle.session_id;
        let device = handle.device.clone();
        let fp = handle.token_fp.clone();
        self.local.connect(user, handle).await?;
        let found = match self.presence.take_over(user, &device, session_id).await {
            Ok(p) => p,
            Err(e) => {
                self.local.disconnect(user, session_id).await;
                return Err(e);
            }
        };
        // An older session on this node was replaced by `local.connect`;
        // one elsewhere (or in an earlier run of this node) is told to go.
        if !found.previous.is_empty() {
            tracing::info!(%user, %device, session = session_id, previous = %found.previous, token = fp.as_deref().unwrap_or_default(), "took the device over");
            self.bus.kick(user, &found.previous, fp.as_deref()).await;
        }
        self.note_siblings(user, session_id, &found.others).await;
        Ok(())
    }

    async fn disconnect(&self, user: UserId, session_id: u64) {
        let device = self
            .local
            .sessions_of(user)
            .into_iter()
            .find(|(_, id)| *id == session_id)
            .map(|(d, _)| d);
        self.local.disconnect(user, session_id).await;
        if let Some(device) = device {
            self.presence.release(&[(user, device, session_id)]).await;
        }
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>, HubError> {
        self.presence.online(users).await
    }

    async fn online_devices(&self, user: UserId) -> Result<Vec<Device>, HubError> {
        Ok(self
            .presence
            .devices(user)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    async fn end_device(&self, user: UserId, device: &Device) -> Result<bool, HubError> {
        if self.local.revoke_device(user, device) {
            return Ok(true);
        }
        let holder = self
            .presence
            .devices(user)
            .await?
            .into_iter()
            .find(|(d, _)| d == device)
            .map(|(_, h)| h);
        match holder {
            Some(holder) => {
                self.bus.revoke(user, &holder).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn deliver(&self, message: Arc<Delivery>, recipients: &[UserId]) -> Result<(), HubError> {
        let elsewhere = self.local.deliver_here(&message, recipients);
        if elsewhere.is_empty() {
            return Ok(());
        }
        self.bus.send(&message, elsewhere).await
    }

    async fn notify_except(&self, frame: bytes::Bytes, recipients: &[UserId], origin: u64) {
        let elsewhere = self.local.notify_here(&frame, recipients, origin);
        if !elsewhere.is_empty() {
            self.bus.send_notice(&frame, elsewhere);
        }
    }

    async fn group_changed(&self, group: GroupId) {
        self.bus.announce_group(group).await;
    }

    fn group_changes(&self) -> Option<broadcast::Receiver<GroupChange>> {
        Some(self.bus.group_changes())
    }

    async fn ready(&self) -> Result<(), HubError> {
        if self.presence.lease_held().await? {
            Ok(())
        } else {
            Err(HubError::Unavailable(
                "this node's presence lease is not held".into(),
            ))
        }
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let sessions = self.local.sessions();
        self.presence.release(&sessions).await;
        self.presence.drop_lease().await;
        self.local.shutdown().await;
    }
}
