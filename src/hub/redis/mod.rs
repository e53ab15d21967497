//! The cluster hub: presence and delivery between nodes through Redis.
//!
//! * Presence: `P:user:ID` holds `NODE|INCARNATION|SESSION` for every
//!   logged-in user, and each node process keeps `P:node:NODE` set to its
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
//!   it. The payload's format is in [`bus`]. Pub/sub is at most once; that
//!   is fine because every message is stored first: a receiver that misses a publish gets the message at its
//!   next gap check or login, and after the node's subscription comes back
//!   every session is told to catch up from the store.
//! * Group membership changes are announced on `P:groups` so that every node
//!   drops its cached member list.
//! * A login takes over the user's presence key whoever held it; if an older
//!   session on another node held it, `USER HOLDER` is published on
//!   `P:kick`, and the node running that session closes it (errno 54). Should
//!   that publish be missed, the old session still gets no remote pushes
//!   (they follow the key), and its node drops it when it next re-claims
//!   presence.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod bus;
mod presence;

use super::local::LocalHub;
use super::{GroupChange, Hub, HubError, SessionHandle};
use crate::model::{Delivery, GroupId, UserId};
use bus::{Published, bus_payload, parse_published};
use presence::{CLAIM, ONLINE, RELEASE, RENEW, ROUTE, TAKEOVER};

/// Where and how a node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]`; AUTH comes from the URL.
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
}

impl ClusterConfig {
    pub fn new(redis_url: &str, node_id: &str) -> Self {
        ClusterConfig {
            redis_url: redis_url.to_owned(),
            node_id: node_id.to_owned(),
            key_prefix: "chat".to_owned(),
            presence_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Presence and delivery across nodes.
pub struct RedisHub {
    config: ClusterConfig,
    /// Random per process: tells this run of the node from earlier ones.
    incarnation: String,
    conn: ConnectionManager,
    local: Arc<LocalHub>,
    scripts: Scripts,
    group_changes: broadcast::Sender<GroupChange>,
    /// Messages for receivers on other nodes, in the order they were sent,
    /// for the publisher task.
    outbox: tokio::sync::mpsc::Sender<Outbound>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// A message on its way to other nodes.
struct Outbound {
    payload: Vec<u8>,
    receivers: Vec<UserId>,
}

/// Messages the publisher sends in one pipeline (one round trip).
const PUBLISH_BATCH: usize = 256;

struct Scripts {
    renew: Script,
    claim: Script,
    takeover: Script,
    release: Script,
    online: Script,
    route: Script,
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
    /// Connects, announces the node, and starts its subscriber and lease tasks.
    pub async fn connect(config: ClusterConfig) -> Result<Arc<RedisHub>, HubError> {
        let client = redis::Client::open(config.redis_url.as_str()).map_err(unavailable)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client.clone(), manager)
            .await
            .map_err(unavailable)?;
        if config.node_id.is_empty() || config.node_id.contains(['|', ' ', '\n']) {
            return Err(HubError::Unavailable(format!(
                "node id {:?} must be non-empty, without '|' or spaces",
                config.node_id
            )));
        }
        let (group_changes, _) = broadcast::channel(1024);
        let (outbox, outbox_rx) = tokio::sync::mpsc::channel(16 * PUBLISH_BATCH);
        let hub = Arc::new(RedisHub {
            outbox,
            incarnation: incarnation(),
            conn,
            local: Arc::new(LocalHub::new()),
            scripts: Scripts {
                renew: Script::new(RENEW),
                claim: Script::new(CLAIM),
                takeover: Script::new(TAKEOVER),
                release: Script::new(RELEASE),
                online: Script::new(ONLINE),
                route: Script::new(ROUTE),
            },
            group_changes,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        hub.renew_lease().await?;
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        hub.tasks
            .spawn(hub.clone().subscriber(client, subscribed_tx));
        hub.tasks.spawn(hub.clone().lease_keeper());
        hub.tasks.spawn(hub.clone().publisher(outbox_rx));
        // Do not serve before deliveries for this node can arrive.
        match tokio::time::timeout(hub.config.timeout * 2, subscribed).await {
            Ok(Ok(())) => Ok(hub),
            _ => Err(HubError::Unavailable(
                "could not subscribe to the node channel".into(),
            )),
        }
    }

    /// Publishes queued messages to the nodes of their receivers, as many
    /// as are waiting in one pipeline: one round trip to Redis for a batch,
    /// and no sender ever waits for it (the message is stored already).
    /// At shutdown it publishes what is queued, then stops.
    async fn publisher(self: Arc<Self>, mut outbox: tokio::sync::mpsc::Receiver<Outbound>) {
        let mut batch: Vec<Outbound> = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let first = tokio::select! {
                biased;
                m = outbox.recv() => m,
                _ = self.stop.cancelled() => {
                    outbox.close();
                    outbox.recv().await
                }
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < PUBLISH_BATCH {
                match outbox.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            // Loading is cheap and makes the batch work after a Redis restart.
            pipe.load_script(&self.scripts.route).ignore();
            for m in &batch {
                let mut invocation = self.scripts.route.prepare_invoke();
                for u in &m.receivers {
                    invocation.key(self.user_key(*u));
                }
                invocation
                    .arg(m.payload.as_slice())
                    .arg(self.channel_prefix())
                    .arg(&self.config.node_id);
                for u in &m.receivers {
                    invocation.arg(*u);
                }
                pipe.invoke_script(&invocation).ignore();
            }
            let mut conn = self.conn.clone();
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => {
                    crate::metrics::METRICS
                        .published_remote
                        .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    // Stored already: receivers get them at their next gap
                    // check, resync or login.
                    let e = unavailable(e);
                    tracing::warn!(messages = batch.len(), error = %e, "live delivery to other nodes failed");
                }
            }
            batch.clear();
        }
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}:user:{user}", self.config.key_prefix)
    }

    fn node_prefix(&self) -> String {
        format!("{}:node:", self.config.key_prefix)
    }

    fn channel_prefix(&self) -> String {
        format!("{}:to:", self.config.key_prefix)
    }

    fn groups_channel(&self) -> String {
        format!("{}:groups", self.config.key_prefix)
    }

    fn kick_channel(&self) -> String {
        format!("{}:kick", self.config.key_prefix)
    }

    /// What this process's presence values start with.
    fn holder_prefix(&self) -> String {
        format!("{}|{}|", self.config.node_id, self.incarnation)
    }

    fn holder(&self, session_id: u64) -> String {
        format!("{}{session_id}", self.holder_prefix())
    }

    /// Renews the node's lease; `Ok(false)` when it had lapsed.
    async fn renew_lease(&self) -> Result<bool, HubError> {
        let mut conn = self.conn.clone();
        let ttl = u64::try_from(self.config.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        let existed: i64 = self
            .scripts
            .renew
            .key(format!("{}{}", self.node_prefix(), self.config.node_id))
            .arg(ttl)
            .arg(&self.incarnation)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(existed == 1)
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
            }
            match self.renew_lease().await {
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

    /// Receives deliveries and group changes; resubscribes when the
    /// connection drops, then has every local session catch up.
    async fn subscriber(
        self: Arc<Self>,
        client: redis::Client,
        subscribed: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut subscribed = Some(subscribed);
        let own = format!("{}{}", self.channel_prefix(), self.config.node_id);
        let groups = self.groups_channel();
        let kicks = self.kick_channel();
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&own).await?;
                pubsub.subscribe(&groups).await?;
                pubsub.subscribe(&kicks).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(self.config.timeout, attempt) => r,
            };
            let mut stream = match pubsub {
                Ok(Ok(p)) => p.into_on_message(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot subscribe to the cluster bus");
                    self.pause(&mut backoff).await;
                    continue;
                }
                Err(_) => {
                    tracing::warn!("subscribing to the cluster bus timed out");
                    self.pause(&mut backoff).await;
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            match subscribed.take() {
                Some(tx) => {
                    let _ = tx.send(());
                }
                // Publishes may have been missed while we were away. (If
                // Redis restarted empty, the lease keeper claims presence again.)
                None => {
                    tracing::info!(
                        "resubscribed to the cluster bus; sessions catch up from the store"
                    );
                    let _ = self.group_changes.send(GroupChange::All);
                    self.local.resync_all();
                }
            }
            loop {
                let msg = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                if msg.get_channel_name() == groups {
                    if let Some(g) = std::str::from_utf8(msg.get_payload_bytes())
                        .ok()
                        .and_then(|s| s.parse().ok())
                    {
                        let _ = self.group_changes.send(GroupChange::Group(g));
                    }
                } else if msg.get_channel_name() == kicks {
                    self.kick_replaced(msg.get_payload_bytes());
                } else {
                    self.deliver_published(msg.get_payload_bytes());
                }
            }
            tracing::warn!("lost the cluster bus subscription; reconnecting");
        }
    }

    async fn pause(&self, backoff: &mut Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }

    /// Closes the local session named by a `USER NODE|INCARNATION|SESSION`
    /// kick, if this process runs it: that user logged in elsewhere.
    fn kick_replaced(&self, payload: &[u8]) {
        let Some((user, holder)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.split_once(' '))
        else {
            return;
        };
        let ours = self.holder_prefix();
        let (Ok(user), Some(session)) = (user.parse(), holder.strip_prefix(&ours)) else {
            return;
        };
        if let Ok(session) = session.parse() {
            self.local.kick_session(user, session);
        }
    }

    /// Hands a message published by another node to the local sessions it
    /// names. The payload is `ID,ID,...\nCONV SEQ\nFRAME`: the small header
    /// says where the message belongs, so the frame is passed on as it is,
    /// never parsed here. (`ID,...\nFRAME`, from a node of the version
    /// before, still works: the frame is parsed for its conversation.)
    fn deliver_published(&self, payload: &[u8]) {
        let Some(Published {
            recipients,
            conv,
            seq,
            frame,
        }) = parse_published(payload)
        else {
            tracing::warn!("undecodable message on the cluster bus");
            return;
        };
        let delivery = Arc::new(Delivery {
            conv,
            seq,
            frame: Bytes::copy_from_slice(frame),
            arrived: std::time::Instant::now(),
            remote: true,
        });
        self.local.deliver_here(&delivery, &recipients);
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
        // Reserve locally first: two logins on this node cannot both get
        // past here, so the claim below never races one of our own.
        let session_id = handle.session_id;
        self.local.connect(user, handle).await?;
        let mut conn = self.conn.clone();
        let previous: Result<String, _> = self
            .scripts
            .takeover
            .key(self.user_key(user))
            .arg(self.holder(session_id))
            .invoke_async(&mut conn)
            .await;
        let previous = match previous {
            Ok(p) => p,
            Err(e) => {
                self.local.disconnect(user, session_id).await;
                return Err(unavailable(e));
            }
        };
        // An older session on this node was replaced by `local.connect`;
        // one elsewhere (or in an earlier run of this node) is told to go.
        if !previous.is_empty() {
            let sent: Result<i64, _> = conn
                .publish(self.kick_channel(), format!("{user} {previous}"))
                .await;
            if let Err(e) = sent {
                tracing::warn!(user, error = %e, "could not tell the replaced session to close");
            }
        }
        Ok(())
    }

    async fn disconnect(&self, user: UserId, session_id: u64) {
        self.local.disconnect(user, session_id).await;
        self.release(&[(user, session_id)]).await;
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>, HubError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.online.prepare_invoke();
        for u in users {
            invocation.key(self.user_key(*u));
        }
        invocation.arg(self.node_prefix());
        let mut conn = self.conn.clone();
        let flags: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }

    async fn deliver(&self, message: Arc<Delivery>, recipients: &[UserId]) -> Result<(), HubError> {
        let elsewhere = self.local.deliver_here(&message, recipients);
        if elsewhere.is_empty() {
            return Ok(());
        }
        let out = Outbound {
            payload: bus_payload(&message),
            receivers: elsewhere,
        };
        // Waits only when the publisher is far behind (backpressure).
        self.outbox
            .send(out)
            .await
            .map_err(|_| HubError::Unavailable("the node is shutting down".into()))
    }

    async fn group_changed(&self, group: GroupId) {
        let mut conn = self.conn.clone();
        let sent: Result<i64, _> = conn.publish(self.groups_channel(), group).await;
        if let Err(e) = sent {
            tracing::warn!(group, error = %e, "could not announce a group change");
        }
    }

    fn group_changes(&self) -> Option<broadcast::Receiver<GroupChange>> {
        Some(self.group_changes.subscribe())
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let sessions = self.local.sessions();
        self.release(&sessions).await;
        let mut conn = self.conn.clone();
        let gone: Result<i64, _> = conn
            .del(format!("{}{}", self.node_prefix(), self.config.node_id))
            .await;
        if let Err(e) = gone {
            tracing::warn!(error = %e, "could not remove the node's lease; it expires by itself");
        }
        self.local.shutdown().await;
    }
}

impl RedisHub {
    /// Runs the claim script for `user`'s session: 1 if this process now
    /// holds the user, 0 if a live session elsewhere does.
    async fn claim(
        &self,
        conn: &mut ConnectionManager,
        user: UserId,
        session_id: u64,
    ) -> Result<i64, redis::RedisError> {
        self.scripts
            .claim
            .key(self.user_key(user))
            .arg(self.holder(session_id))
            .arg(self.node_prefix())
            .arg(&self.incarnation)
            .invoke_async(conn)
            .await
    }

    /// Claims presence again for every local session (after Redis was
    /// away, perhaps restarted empty). A user who meanwhile logged in on
    /// another node keeps that login; the stale local session is dropped.
    /// Returns whether every claim got an answer.
    async fn reassert_presence(&self) -> bool {
        let mut complete = true;
        let mut conn = self.conn.clone();
        for (user, session_id) in self.local.sessions() {
            match self.claim(&mut conn, user, session_id).await {
                Ok(1) => {}
                Ok(_) => {
                    tracing::warn!(
                        user,
                        "logged in elsewhere while Redis was away; dropping this session"
                    );
                    self.local.kick(user);
                }
                Err(e) => {
                    tracing::warn!(user, error = %e, "could not reassert presence");
                    complete = false;
                }
            }
        }
        complete
    }

    async fn release(&self, sessions: &[(UserId, u64)]) {
        if sessions.is_empty() {
            return;
        }
        let mut invocation = self.scripts.release.prepare_invoke();
        for (u, _) in sessions {
            invocation.key(self.user_key(*u));
        }
        for (_, s) in sessions {
            invocation.arg(self.holder(*s));
        }
        let mut conn = self.conn.clone();
        let released: Result<i64, _> = invocation.invoke_async(&mut conn).await;
        if let Err(e) = released {
            // The node's lease still bounds how long they look online.
            tracing::warn!(error = %e, "could not clear presence");
        }
    }
}
