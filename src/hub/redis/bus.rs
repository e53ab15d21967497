//! The cluster bus: live messages, kicks and group changes between nodes,
//! over Redis pub/sub.
//!
//! Each node subscribes to its own channel `P:to:NODE`, to `P:kick` and to
//! `P:groups`. [`Bus::send`] queues a message for the publisher task, which
//! sends everything waiting in one pipeline: per message, one script call
//! ([`ROUTE`]) that looks up where its receivers are and publishes it once
//! per node holding some of them. The sender's reply never waits for it.
//!
//! The wire format of a message: one line of receiver ids, one line
//! `CONVERSATION SEQ`, then the ready push frame. The receiving node routes
//! on the header and writes the frame as it is, parsing nothing again.
//! Payloads from nodes that send no header line (`IDS\nFRAME`) still parse.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::{PushKind, Script};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::conn::{Conn, Target};
use super::{Keys, unavailable};
use crate::hub::local::LocalHub;
use crate::hub::{GroupChange, HubError};
use crate::model::{ChatMessage, Conversation, Delivery, Seq, UserId};
use crate::protocol::ChatFrame;

/// Publishes `ARGV[1]` (header and frame) to the channel (`ARGV[2]` .. node) of every node
/// other than ours (`ARGV[3]`) holding a device of one of the receivers,
/// prefixed with those receivers' ids (each once per node).
/// `KEYS[i]` is the presence key of receiver `ARGV[3+i]`.
/// `PUBLISH` becomes `SPUBLISH` on a Redis Cluster ([`Conn::publish_command`]).
const ROUTE: &str = r"
local by_node = {}
for i, k in ipairs(KEYS) do
  local seen = {}
  for _, cur in ipairs(redis.call('HVALS', k)) do
    local node = string.match(cur, '^(.-)|')
    if node and node ~= ARGV[3] and not seen[node] then
      seen[node] = true
      by_node[node] = (by_node[node] or '') .. ARGV[3 + i] .. ','
    end
  end
end
local n = 0
for node, ids in pairs(by_node) do
  redis.call('PUBLISH', ARGV[2] .. node, ids .. '\n' .. ARGV[1])
  n = n + 1
end
return n
";

/// The header line of a notice on the bus, in place of `CONVERSATION SEQ`.
const NOTICE_HEADER: &[u8] = b"notice\n";

/// Messages the publisher sends in one pipeline (one round trip).
const PUBLISH_BATCH: usize = 256;

/// A message on its way to other nodes.
struct Outbound {
    payload: Vec<u8>,
    receivers: Vec<UserId>,
}

/// This node's end of the bus.
pub(super) struct Bus {
    conn: Conn,
    keys: Keys,
    /// How long subscribing may take.
    timeout: Duration,
    /// How long a batch for other nodes is retried.
    publish_retry: Duration,
    /// Told each time the subscription came back after a loss (a Redis
    /// restart, a cluster failover): presence is claimed again.
    pub(super) resubscribed: Notify,
    route: Script,
    /// Messages for receivers on other nodes, in the order they were sent,
    /// for the publisher task.
    outbox: mpsc::Sender<Outbound>,
    outbox_rx: std::sync::Mutex<Option<mpsc::Receiver<Outbound>>>,
    group_changes: broadcast::Sender<GroupChange>,
}

impl Bus {
    pub(super) fn new(conn: Conn, keys: Keys, timeout: Duration, publish_retry: Duration) -> Self {
        let (outbox, outbox_rx) = mpsc::channel(16 * PUBLISH_BATCH);
        let (group_changes, _) = broadcast::channel(1024);
        let route = ROUTE.replace("'PUBLISH'", &format!("'{}'", conn.publish_command()));
        Bus {
            conn,
            keys,
            timeout,
            publish_retry,
            resubscribed: Notify::new(),
            route: Script::new(&route),
            outbox,
            outbox_rx: std::sync::Mutex::new(Some(outbox_rx)),
            group_changes,
        }
    }

    /// Queues a stored message for `receivers` on other nodes. Waits only
    /// when the publisher is far behind (backpressure).
    pub(super) async fn send(
        &self,
        message: &Delivery,
        receivers: Vec<UserId>,
    ) -> Result<(), HubError> {
        let out = Outbound {
            payload: bus_payload(message),
            receivers,
        };
        self.outbox
            .send(out)
            .await
            .map_err(|_| HubError::Unavailable("the node is shutting down".into()))
    }

    /// Queues a notice for the nodes holding some of `receivers`. Never
    /// waits: while the bus is backed up (Redis slow or gone) notices are
    /// dropped, so that no login or logout waits on one.
    pub(super) fn send_notice(&self, frame: &[u8], receivers: Vec<UserId>) {
        let mut payload = Vec::with_capacity(NOTICE_HEADER.len() + frame.len());
        payload.extend_from_slice(NOTICE_HEADER);
        payload.extend_from_slice(frame);
        let _ = self.outbox.try_send(Outbound { payload, receivers });
    }

    /// Tells the node running `holder` (`NODE|INCARNATION|SESSION`) to close
    /// that session of `user`: the user logged in again elsewhere, with the
    /// token of fingerprint `fp` if any (`USER HOLDER FP`, `-` for none).
    pub(super) async fn kick(&self, user: UserId, holder: &str, fp: Option<&str>) {
        self.publish_kick(user, format!("{user} {holder} {}", fp.unwrap_or("-")))
            .await;
    }

    /// Tells the node running `holder` to close that session of `user`:
    /// another device of the user logged its device out.
    pub(super) async fn revoke(&self, user: UserId, holder: &str) {
        self.publish_kick(user, format!("{user} {holder} - revoke"))
            .await;
    }

    /// Tells every node that `user` has devices on several nodes: each
    /// routes the user's messages to the others too.
    pub(super) async fn shared(&self, user: UserId) {
        self.publish_kick(user, format!("+ {user}")).await;
    }

    async fn publish_kick(&self, user: UserId, payload: String) {
        let mut conn = self.conn.clone();
        let sent: Result<i64, _> = redis::cmd(self.conn.publish_command())
            .arg(self.keys.kick_channel())
            .arg(payload)
            .query_async(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::warn!(%user, error = %e, "could not tell the other nodes about a session");
        }
    }

    /// Tells every node that a group's membership changed.
    pub(super) async fn announce_group(&self, group: crate::model::GroupId) {
        let mut conn = self.conn.clone();
        let sent: Result<i64, _> = redis::cmd(self.conn.publish_command())
            .arg(self.keys.groups_channel())
            .arg(group.0)
            .query_async(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::warn!(%group, error = %e, "could not announce a group change");
        }
    }

    /// Membership changes announced by other nodes.
    pub(super) fn group_changes(&self) -> broadcast::Receiver<GroupChange> {
        self.group_changes.subscribe()
    }

    /// Publishes queued messages to the nodes of their receivers, as many
    /// as are waiting in one pipeline: one round trip to Redis for a batch,
    /// and no sender ever waits for it (the message is stored already).
    /// At `stop` it publishes what is queued, then returns. Runs once.
    pub(super) async fn publisher(self: Arc<Self>, stop: CancellationToken) {
        let taken = self
            .outbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut outbox) = taken else { return };
        let mut batch: Vec<Outbound> = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let first = tokio::select! {
                biased;
                m = outbox.recv() => m,
                _ = stop.cancelled() => {
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
            pipe.load_script(&self.route).ignore();
            let channel_prefix = self.keys.channel_prefix();
            for m in &batch {
                let mut invocation = self.route.prepare_invoke();
                for u in &m.receivers {
                    invocation.key(self.keys.user(*u));
                }
                invocation
                    .arg(m.payload.as_slice())
                    .arg(&channel_prefix)
                    .arg(&self.keys.node_id);
                for u in &m.receivers {
                    invocation.arg(*u);
                }
                pipe.invoke_script(&invocation).ignore();
            }
            let mut conn = self.conn.clone();
            let mut sent = pipe.query_async::<()>(&mut conn).await;
            // After Redis restarted, or while a cluster fails over, the batch
            // fails; the connection reconnects (and reloads the slot map), so
            // try again for a while: cross-node chat pauses rather than
            // leaving receivers to catch up later. A batch sent twice is
            // harmless: sessions drop what they already have.
            let started = std::time::Instant::now();
            let mut backoff = Duration::from_millis(50);
            while sent.is_err() && started.elapsed() < self.publish_retry && !stop.is_cancelled() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                sent = pipe.query_async::<()>(&mut conn).await;
            }
            match sent {
                Ok(()) => {
                    crate::metrics::METRICS
                        .published_remote
                        .inc_by(batch.len() as u64);
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

    /// Receives deliveries, kicks and group changes for `local`'s sessions;
    /// resubscribes when the connection drops, then has every local session
    /// catch up. `subscribed` is told once the first subscription stands.
    pub(super) async fn subscriber(
        self: Arc<Self>,
        target: Target,
        local: Arc<LocalHub>,
        subscribed: tokio::sync::oneshot::Sender<()>,
        stop: CancellationToken,
    ) {
        match target {
            Target::Single(url) => match redis::Client::open(url.as_str()) {
                Ok(client) => self.subscribe_single(client, local, subscribed, stop).await,
                Err(e) => tracing::error!(error = %e, "bad Redis URL for the cluster bus"),
            },
            Target::Cluster(seeds) => self.subscribe_cluster(seeds, local, subscribed, stop).await,
        }
    }

    /// The node's channels, in the order they are subscribed.
    fn channels(&self) -> [String; 3] {
        [
            format!("{}{}", self.keys.channel_prefix(), self.keys.node_id),
            self.keys.groups_channel(),
            self.keys.kick_channel(),
        ]
    }

    /// Publishes may have been missed while the subscription was away:
    /// cached member lists are dropped, every session catches up from the
    /// store, and presence is claimed again (if Redis restarted empty, or a
    /// replica that took over lacks the last writes).
    fn came_back(&self, local: &LocalHub) {
        tracing::info!("resubscribed to the cluster bus; sessions catch up from the store");
        let _ = self.group_changes.send(GroupChange::All);
        local.resync_all();
        self.resubscribed.notify_one();
    }

    /// A subscription stands: the first one lets the node start serving;
    /// any later one means publishes may have been missed ([`Bus::came_back`]).
    fn stands(&self, first: &mut Option<tokio::sync::oneshot::Sender<()>>, local: &LocalHub) {
        match first.take() {
            Some(tx) => {
                let _ = tx.send(());
            }
            None => self.came_back(local),
        }
    }

    /// One message from one of the node's channels.
    fn on_message(&self, local: &LocalHub, channel: &[u8], payload: &[u8]) {
        if channel == self.keys.groups_channel().as_bytes() {
            if let Some(g) = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                let _ = self.group_changes.send(GroupChange::Group(g));
            }
        } else if channel == self.keys.kick_channel().as_bytes() {
            self.kick_replaced(local, payload);
        } else {
            deliver_published(local, payload);
        }
    }

    /// A standalone Redis: plain SUBSCRIBE on a connection of its own,
    /// made again whenever it drops.
    async fn subscribe_single(
        &self,
        client: redis::Client,
        local: Arc<LocalHub>,
        subscribed: tokio::sync::oneshot::Sender<()>,
        stop: CancellationToken,
    ) {
        let mut subscribed = Some(subscribed);
        let channels = self.channels();
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let mut pubsub = client.get_async_pubsub().await?;
                for c in &channels {
                    pubsub.subscribe(c).await?;
                }
                Ok::<_, redis::RedisError>(pubsub)
            };
            let mut stream = match subscribe_once(&stop, &mut backoff, self.timeout, attempt).await
            {
                Attempt::Subscribed(p) => p.into_on_message(),
                Attempt::Again => continue,
                Attempt::Stop => return,
            };
            self.stands(&mut subscribed, &local);
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                self.on_message(
                    &local,
                    msg.get_channel_name().as_bytes(),
                    msg.get_payload_bytes(),
                );
            }
            tracing::warn!("lost the cluster bus subscription; reconnecting");
        }
    }

    /// A Redis Cluster: sharded SSUBSCRIBE through the cluster connection,
    /// which follows the channels' slot to whichever node serves it and
    /// subscribes again there after a failover or a reshard. Every
    /// confirmation past the first ones means that happened.
    async fn subscribe_cluster(
        &self,
        seeds: Vec<String>,
        local: Arc<LocalHub>,
        subscribed: tokio::sync::oneshot::Sender<()>,
        stop: CancellationToken,
    ) {
        let channels = self.channels();
        let mut backoff = Duration::from_millis(50);
        let mut subscribed = Some(subscribed);
        loop {
            let (tx, mut pushes) = mpsc::unbounded_channel();
            let attempt = async {
                let client = Target::cluster_client(&seeds, self.timeout, Some(tx))?;
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(&channels).await?;
                let slot: u16 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(&channels[0])
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>((conn, slot))
            };
            // The connection must live as long as its subscription.
            let (mut conn, slot) =
                match subscribe_once(&stop, &mut backoff, self.timeout * 2, attempt).await {
                    Attempt::Subscribed(subscribed) => subscribed,
                    Attempt::Again => continue,
                    Attempt::Stop => return,
                };
            self.stands(&mut subscribed, &local);
            // The first confirmation of each channel answers the SSUBSCRIBE
            // above; any later one is a resubscription.
            let mut confirmations = 0;
            let mut lost = false;
            // The subscription is checked where it should be: a connection
            // that issues no commands does not learn that its shard's
            // primary died, so every second the shard serving the node's
            // channel is asked whether anybody listens on it. Twice nobody
            // (or no answer): subscribe again from scratch.
            use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
            let probe = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                slot,
                SlotAddr::Master,
            )));
            let mut check = tokio::time::interval(SUBSCRIPTION_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut misses = 0;
            loop {
                let push = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = pushes.recv() => p,
                    _ = check.tick() => {
                        if subscribers(&mut conn, probe.clone(), &channels[0], self.timeout).await >= 1 {
                            misses = 0;
                        } else {
                            misses += 1;
                            if misses >= 2 {
                                tracing::warn!("nobody listens on this node's channel any more");
                                break;
                            }
                        }
                        continue;
                    }
                };
                let Some(push) = push else { break };
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        if let [channel, payload, ..] = push.data.as_slice() {
                            let (Some(channel), Some(payload)) =
                                (bytes_of(channel), bytes_of(payload))
                            else {
                                continue;
                            };
                            self.on_message(&local, channel, payload);
                        }
                    }
                    PushKind::SSubscribe => {
                        confirmations += 1;
                        if confirmations > channels.len() || lost {
                            // Once per loss: later confirmations of the same
                            // resubscription find nothing new to catch up on.
                            if lost || confirmations % channels.len() == 1 {
                                self.came_back(&local);
                            }
                            lost = false;
                        }
                    }
                    PushKind::Disconnection | PushKind::SUnsubscribe => lost = true,
                    _ => {}
                }
            }
            tracing::warn!("lost the cluster bus subscription; subscribing again");
            pause(&stop, &mut backoff).await;
        }
    }

    /// Closes the local session named by a `USER NODE|INCARNATION|SESSION
    /// [FP [revoke]]` kick, if this process runs it: that device logged in
    /// elsewhere (with the token of fingerprint FP), or was logged out by
    /// another device. `+ USER` says the user has devices on several nodes.
    fn kick_replaced(&self, local: &LocalHub, payload: &[u8]) {
        let Some(text) = std::str::from_utf8(payload).ok() else {
            return;
        };
        if let Some(user) = text.strip_prefix("+ ").and_then(|u| u.parse().ok()) {
            local.mark_shared(user);
            return;
        }
        let mut parts = text.split(' ');
        let (Some(user), Some(holder)) = (parts.next(), parts.next()) else {
            return;
        };
        let fp = parts.next().filter(|f| *f != "-");
        let revoked = parts.next() == Some("revoke");
        let ours = self.keys.holder_prefix();
        let (Ok(user), Some(session)) = (user.parse(), holder.strip_prefix(&ours)) else {
            return;
        };
        if let Ok(session) = session.parse() {
            local.kick_session(user, session, fp, revoked);
        }
    }
}

/// How often a cluster subscription is checked.
const SUBSCRIPTION_CHECK: Duration = Duration::from_secs(1);

/// How many subscribe to sharded `channel` on the primary that serves it
/// (0 when it cannot be asked).
async fn subscribers(
    conn: &mut redis::cluster_async::ClusterConnection,
    route: redis::cluster_routing::RoutingInfo,
    channel: &str,
    timeout: Duration,
) -> i64 {
    let mut cmd = redis::cmd("PUBSUB");
    cmd.arg("SHARDNUMSUB").arg(channel);
    match tokio::time::timeout(timeout, conn.route_command(cmd, route)).await {
        Ok(Ok(redis::Value::Array(v))) => v
            .iter()
            .find_map(|x| match x {
                redis::Value::Int(n) => Some(*n),
                _ => None,
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// The bytes of a pushed string.
fn bytes_of(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// How one subscription attempt ended.
enum Attempt<T> {
    Subscribed(T),
    /// It failed or timed out (logged; the back-off waited): try again.
    Again,
    /// The node is stopping.
    Stop,
}

/// Runs one subscription attempt for at most `limit`, until `stop`.
async fn subscribe_once<T>(
    stop: &CancellationToken,
    backoff: &mut Duration,
    limit: Duration,
    attempt: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Attempt<T> {
    let outcome = tokio::select! {
        _ = stop.cancelled() => return Attempt::Stop,
        r = tokio::time::timeout(limit, attempt) => r,
    };
    match outcome {
        Ok(Ok(t)) => {
            *backoff = Duration::from_millis(50);
            return Attempt::Subscribed(t);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to the cluster bus"),
        Err(_) => tracing::warn!("subscribing to the cluster bus timed out"),
    }
    pause(stop, backoff).await;
    Attempt::Again
}

async fn pause(stop: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
}

/// Hands a message published by another node to the local sessions it
/// names. The header says where the message belongs, so the frame is passed
/// on as it is, never parsed here.
fn deliver_published(local: &LocalHub, payload: &[u8]) {
    if let Some((ids, rest)) = split_line(payload)
        && let Some(frame) = rest.strip_prefix(NOTICE_HEADER)
    {
        let recipients: Vec<UserId> = String::from_utf8_lossy(ids)
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect();
        local.notify_here(&Bytes::copy_from_slice(frame), &recipients, 0);
        return;
    }
    let Some(Published {
        recipients,
        conv,
        seq,
        sender,
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
        origin: 0,
        sender: sender.as_ref().map_or(UserId(0), |s| s.0),
        sender_device: sender.map(|s| s.1).unwrap_or_default(),
    });
    local.deliver_here(&delivery, &recipients);
}

/// A message taken off the bus.
#[derive(Debug, PartialEq, Eq)]
struct Published<'a> {
    recipients: Vec<UserId>,
    conv: Conversation,
    seq: Seq,
    /// The sender and its device (`None` from a node that does not say).
    sender: Option<(UserId, crate::model::Device)>,
    frame: &'a [u8],
}

fn parse_published(payload: &[u8]) -> Option<Published<'_>> {
    let (ids, rest) = split_line(payload)?;
    let recipients = String::from_utf8_lossy(ids)
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let (conv, seq, sender, frame) = if rest.first() == Some(&b'{') {
        message_of_frame(rest).map(|m| (m.conv, m.seq, None, rest))?
    } else {
        // `CONV SEQ [SENDER:DEVICE]`
        let (header, frame) = split_line(rest)?;
        let mut fields = std::str::from_utf8(header).ok()?.splitn(3, ' ');
        let (conv, seq) = (fields.next()?, fields.next()?);
        let sender = fields.next().and_then(|s| {
            let (id, device) = s.split_once(':')?;
            Some((id.parse().ok()?, crate::model::Device::stored(device)))
        });
        (
            Conversation::from_key(conv)?,
            seq.parse().ok()?,
            sender,
            frame,
        )
    };
    Some(Published {
        recipients,
        conv,
        seq,
        sender,
        frame,
    })
}

/// Splits at the first newline.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == b'\n')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// The bus form of a message: its header line, then its frame.
fn bus_payload(d: &Delivery) -> Vec<u8> {
    let header = format!(
        "{} {} {}:{}\n",
        d.conv.key(),
        d.seq,
        d.sender,
        d.sender_device.as_str()
    );
    let mut out = Vec::with_capacity(header.len() + d.frame.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&d.frame);
    out
}

/// The conversation and number of a frame from a node that sends no header.
fn message_of_frame(frame: &[u8]) -> Option<ChatMessage> {
    ChatFrame::parse(frame)?.message()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupId, Seq, UserId};

    #[test]
    fn bus_frames_decode_back_to_the_stored_message() {
        let m = ChatMessage {
            conv: Conversation::direct(UserId(4), UserId(9)),
            seq: Seq(3),
            sender: UserId(9),
            sender_name: "nine".into(),
            body: "hi\nthere".into(),
            ts_ms: 1_700_000_000_123,
            kind: Default::default(),
        };
        assert_eq!(
            message_of_frame(&crate::protocol::render_push(&m)),
            Some(m.clone())
        );
        let g = ChatMessage {
            conv: Conversation::Group(GroupId(5)),
            ..m
        };
        assert_eq!(message_of_frame(&crate::protocol::render_push(&g)), Some(g));
        assert_eq!(message_of_frame(b"{\"msgid\":2}"), None);
    }

    #[test]
    fn payloads_with_and_without_a_header_line_parse_to_the_same_message() {
        let m = ChatMessage {
            conv: Conversation::Group(GroupId(7)),
            seq: Seq(42),
            sender: UserId(3),
            sender_name: "three".into(),
            body: "hello".into(),
            ts_ms: 1_700_000_000_000,
            kind: Default::default(),
        };
        let frame = crate::protocol::render_push(&m);
        let delivery = Delivery {
            conv: m.conv,
            seq: m.seq,
            frame: frame.clone(),
            arrived: std::time::Instant::now(),
            remote: false,
            origin: 0,
            sender: UserId(3),
            sender_device: crate::model::Device::parse(Some("pho:ne")).expect("device"),
        };
        let mut with_header = b"5,6\n".to_vec();
        with_header.extend_from_slice(&bus_payload(&delivery));
        let mut old = b"5,6\n".to_vec();
        old.extend_from_slice(&frame);
        let expected = Published {
            recipients: vec![UserId(5), UserId(6)],
            conv: Conversation::Group(GroupId(7)),
            seq: Seq(42),
            sender: Some((UserId(3), delivery.sender_device.clone())),
            frame: &frame[..],
        };
        assert_eq!(parse_published(&with_header), Some(expected));
        let old = parse_published(&old).expect("an old payload");
        assert_eq!(
            (old.conv, old.seq, old.frame, old.sender),
            (m.conv, m.seq, &frame[..], None)
        );
        assert_eq!(parse_published(b"5,6"), None);
        assert_eq!(parse_published(b"5\nnot-a-conv 1\n{}"), None);
    }
}
