//! A session: one connection's state, and its delivery.
//!
//! The connection task reads frames and hands them to the service; for
//! everything it writes besides replies it asks the session: the next push
//! ([`Service::handle_push`]: nothing for a duplicate, the message, or the
//! gap before it first), the next page of stored messages
//! ([`Service::backlog_page`]), and when positions are due to be stored
//! ([`Service::flush_cursors`]). What a session has delivered, and what of
//! it the client has acknowledged, lives in its
//! [`super::delivery::DeliveryState`].

use std::collections::HashMap;

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::Service;
use super::delivery::{DeliveryState, Incoming, Reads, Unconfirmed};
use super::requests::Handler;
use crate::hub::Kick;
use crate::limits::{AddrKey, Budget};
use crate::metrics::{METRICS, inc};
use crate::model::{ChatMessage, Push, Seq, UserId};
use crate::protocol::replies::{Pong, ServerInfo as ServerInfoReply};
use crate::protocol::requests as wire;
use crate::protocol::{ErrCode, Fail, render_push};

impl Handler for wire::ServerInfo {
    async fn handle(self, svc: &Service, s: &mut Session) -> Result<ServerInfoReply, Fail> {
        Ok(ServerInfoReply {
            node: svc.config.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            client: s.ip.map(|ip| ip.to_canonical().to_string()),
        })
    }
}

/// A heartbeat: the connection has promised more (see
/// [`Session::heartbeats`]).
impl Handler for wire::Ping {
    async fn handle(self, _svc: &Service, _s: &mut Session) -> Result<Pong, Fail> {
        Ok(Pong {
            ts: crate::store::now_ms(),
        })
    }
}

/// A logged-in user's side of a session.
pub(super) struct LoggedIn {
    pub(super) id: UserId,
    /// The user and the device this session is for.
    pub(super) reader: crate::store::Reader,
    /// The session's id ([`Session::id`]): what it sends is not pushed
    /// back to it, only to the user's other sessions.
    pub(super) session: u64,
    /// How many typing notices it may send.
    pub(super) typing: crate::limits::Bucket,
    /// Receivers found to take this user's one-to-one messages, and when
    /// (see `blocking`).
    pub(super) reach: HashMap<UserId, (Instant, u64)>,
    pub(super) name: String,
    /// Dropped with the session, after [`Service::end_session`] stored
    /// its positions: a newer login replacing it waits for that.
    pub(super) pushes: crate::hub::queue::PushReceiver,
    /// The hash of the resume token this session was given or resumed
    /// with; logout revokes it.
    pub(super) token_hash: Option<String>,
    /// What this session delivered, what its client has, what waits.
    pub(super) delivery: DeliveryState,
    /// Per direct conversation this session sent to: the last sequence
    /// number it sent there and the receiver's stored position when last
    /// looked up, so that the unread quota costs a store read only near
    /// the limit.
    pub(super) unread_sent: HashMap<crate::model::Conversation, (Seq, Seq)>,
    /// Who hears when this user comes and goes: friends, and members of
    /// its small groups (see [`Service::announce`]).
    pub(super) contacts: Vec<UserId>,
}

/// One connection's state.
pub struct Session {
    pub(super) id: u64,
    pub(super) user: Option<LoggedIn>,
    /// Cancelled by the hub when a newer login replaces this session.
    pub(super) kick: Kick,
    /// The client sent a PING, so it promised heartbeats: a silence longer
    /// than the heartbeat timeout means its network or process died.
    pub(super) heartbeats: bool,
    /// The client's address (from a PROXY header behind a trusted
    /// balancer); SERVER_INFO tells it, the limits count it ([`Session::peer`]).
    pub(super) ip: Option<std::net::IpAddr>,
    /// This connection's request and byte allowance.
    pub(super) budget: Budget,
    /// How long the connection waits before its next frame (over budget).
    pub(super) delay: std::time::Duration,
    /// Whether this may be the original client: a plain TCP connection
    /// that has declared none of our extensions (`reqid`, `cmid`, `acks`,
    /// our own requests). Such a session gets only what the original
    /// server sent, in frames its one-read-per-frame reader can parse.
    pub(super) classic: bool,
    /// Frames that follow the reply to the current request (the offline
    /// messages a classic login reply had no room for).
    pub(super) after_reply: Vec<Bytes>,
    /// What was written to the original client and is not yet counted as
    /// read.
    pub(super) unconfirmed: Unconfirmed,
    /// Before login: the connection has sent a registration, login or
    /// resume (a person at a menu), not only frames that were refused.
    pub(super) useful: bool,
    /// Before login: frames refused since connecting or the last logout.
    pub(super) refused: u32,
    /// Whether the client has hung up, asked by a login just before it
    /// replaces the user's session elsewhere ([`Session::set_peer_check`]).
    pub(super) peer_gone: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// How long ago the client's last bytes arrived ([`Session::set_peer_check`]).
    pub(super) data_age: Option<Box<dyn Fn() -> Option<std::time::Duration> + Send + Sync>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user", &self.user.as_ref().map(|u| u.id))
            .finish()
    }
}

impl Session {
    /// Tells the session how to learn that its client has hung up (the
    /// transport knows; the service has no socket).
    pub fn set_peer_check(
        &mut self,
        gone: impl Fn() -> bool + Send + Sync + 'static,
        age: impl Fn() -> Option<std::time::Duration> + Send + Sync + 'static,
    ) {
        self.peer_gone = Some(Box::new(gone));
        self.data_age = Some(Box::new(age));
    }

    /// How long ago the client's last bytes arrived, if the transport knows.
    pub(super) fn request_age(&self) -> Option<std::time::Duration> {
        self.data_age.as_ref().and_then(|age| age())
    }

    /// Whether the client is known to have hung up.
    pub(super) fn client_left(&self) -> bool {
        self.peer_gone.as_ref().is_some_and(|gone| gone())
    }

    /// Where the connection comes from, as the limits count it.
    pub(super) fn peer(&self) -> Option<AddrKey> {
        self.ip.map(AddrKey::of)
    }

    /// The logged-in user, if any.
    pub fn user_id(&self) -> Option<UserId> {
        self.user.as_ref().map(|u| u.id)
    }

    /// Waits for the next push to this session; never resolves before login.
    pub async fn next_push(&mut self) -> Option<Push> {
        match self.user.as_mut() {
            Some(u) => {
                // Pushes were dropped: read them from the store first.
                if u.pushes.take_lagging() {
                    return Some(Push::Resync);
                }
                u.pushes.recv().await
            }
            None => std::future::pending().await,
        }
    }

    /// How long to wait before reading the next frame: nonzero when the
    /// last one went over this connection's budget.
    pub fn take_delay(&mut self) -> std::time::Duration {
        std::mem::take(&mut self.delay)
    }

    /// Whether the client promised heartbeats (it has sent a PING).
    pub fn heartbeats(&self) -> bool {
        self.heartbeats
    }

    /// Whether this may be the original client, whose reader takes one
    /// frame per `recv` of at most 1024 bytes: frames to it must leave one
    /// at a time, spaced, and each fit that read
    /// ([`crate::protocol::classic`]).
    pub fn classic(&self) -> bool {
        self.classic
    }

    /// Not logged in, and has sent nothing but frames that were refused: a
    /// socket with no person behind it, held to the short login deadline.
    pub fn noisy(&self) -> bool {
        self.user.is_none() && !self.useful && self.refused > 0
    }

    /// When the next write to the original client may be counted as read.
    pub fn next_confirm_due(&self) -> Option<Instant> {
        self.unconfirmed.next_due()
    }

    /// Cancelled when a newer login replaces this session.
    pub fn kick_token(&self) -> Kick {
        self.kick.clone()
    }

    /// Drops delivered positions not yet stored: after a failed write the
    /// client may not have them, so they are delivered again next time.
    pub fn forget_unsaved_deliveries(&mut self) {
        if let Some(me) = self.user.as_mut() {
            me.delivery.forget_unsaved();
        }
    }

    /// Whether undelivered messages wait in the store for this session
    /// (after a full offline page, or when live delivery may have missed
    /// some); the connection then asks for [`Service::backlog_page`].
    pub fn has_backlog(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.delivery.wants_page())
    }

    /// Login and resume need a connection that is not logged in yet.
    pub(super) fn logged_out(&self) -> Result<(), Fail> {
        match self.user {
            None => Ok(()),
            Some(_) => Err(Fail::new(
                ErrCode::AlreadyLoggedIn,
                "already logged in on this connection; log out first",
            )),
        }
    }

    pub(super) fn me_mut(&mut self) -> Result<&mut LoggedIn, Fail> {
        self.user
            .as_mut()
            .ok_or_else(|| Fail::new(ErrCode::NotLoggedIn, "please log in first"))
    }
}

impl Service {
    /// A fresh, logged-out session for a new connection from `peer`;
    /// `classic_possible` for a plain TCP connection, where the original
    /// client may be on the other end.
    pub fn open_session(&self, peer: Option<std::net::IpAddr>, classic_possible: bool) -> Session {
        Session {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            user: None,
            kick: Kick::default(),
            heartbeats: false,
            ip: peer,
            budget: Budget::new(&self.config.limits),
            delay: std::time::Duration::ZERO,
            classic: classic_possible,
            after_reply: Vec::new(),
            unconfirmed: Unconfirmed::default(),
            useful: false,
            refused: 0,
            peer_gone: None,
            data_age: None,
        }
    }

    /// Frames were written to the connection, which has now had `bytes`
    /// written in all: what the original client was given starts its
    /// grace period ([`Unconfirmed`]).
    pub fn frames_written(&self, s: &mut Session, bytes: u64) {
        let Some(me) = s
            .user
            .as_ref()
            .filter(|me| me.delivery.reads() == Reads::Confirmed)
        else {
            return;
        };
        let positions = me.delivery.unacknowledged();
        s.unconfirmed.written(
            &me.reader,
            positions,
            bytes,
            Instant::now(),
            self.config.classic_read_grace,
        );
    }

    /// Counts as read what the original client was given at least a grace
    /// period ago, if its TCP has acknowledged the bytes (`acked`: bytes
    /// written less those unacknowledged; `None` if unknown).
    pub fn confirm_reads(&self, s: &mut Session, acked: Option<u64>) {
        for (reader, positions) in s.unconfirmed.confirm(acked, Instant::now()) {
            match s.user.as_mut() {
                Some(me) if me.reader == reader => me.delivery.acknowledge(positions),
                // Logged out (or in as someone else) since: store it
                // directly, the connection that carried it is still open.
                _ => {
                    let store = self.store.clone();
                    self.tasks.spawn(async move {
                        if let Err(e) = store.advance_cursors(&reader, positions).await {
                            tracing::warn!(user = %reader.user, error = %e, "could not store delivery cursors");
                        }
                    });
                }
            }
        }
    }

    /// When this session's delivered positions are due to be stored, if it
    /// has any not stored yet.
    pub fn cursor_flush_due(&self, s: &Session) -> Option<Instant> {
        let me = s.user.as_ref()?;
        me.delivery.flush_due(self.config.cursor_flush_interval)
    }

    /// Writes delivered positions to the store in the background when they
    /// are due (at most once per `cursor_flush_interval`, so a busy session
    /// costs a few writes a second, not one per message).
    pub fn flush_cursors(&self, s: &mut Session) {
        if self
            .cursor_flush_due(s)
            .is_none_or(|due| due > Instant::now())
        {
            return;
        }
        let Some(me) = s.user.as_mut() else { return };
        let Err(positions) = self
            .store
            .queue_cursors(&me.reader, me.delivery.take_flush(Instant::now()))
        else {
            return;
        };
        // The write queue is full: wait for room off the connection's path.
        let store = self.store.clone();
        let reader = me.reader.clone();
        self.tasks.spawn(async move {
            if let Err(e) = store.advance_cursors(&reader, positions).await {
                // Not lost: the messages are redelivered at the next login.
                tracing::warn!(user = %reader.user, error = %e, "could not store delivery cursors");
            }
        });
    }

    /// Ends a session: stores its delivered positions, then marks it
    /// offline (so that a login right after finds them stored).
    pub async fn end_session(&self, s: &mut Session) {
        if let Some(me) = s.user.take() {
            if let Err(e) = self
                .store
                .advance_cursors(&me.reader, me.delivery.advanced())
                .await
            {
                tracing::warn!(user = %me.id, error = %e, "could not store delivery cursors");
            }
            self.hub.disconnect(me.id, s.id).await;
            // Presence is best effort: it never holds up the end of a
            // session by more than a moment, even with Redis or the
            // database down.
            self.announce_offline(me.id, &me.name, &me.contacts).await;
            METRICS.sessions_online.dec();
            tracing::info!(user = %me.id, session = s.id, "user offline");
        }
    }

    /// Turns a push for this session into the frames to write: nothing for a
    /// duplicate, the message itself when it is next in its conversation, and
    /// first whatever it skipped (from the store) when it is ahead.
    pub async fn handle_push(&self, s: &mut Session, push: Push) -> Vec<Bytes> {
        let Some(me) = s.user.as_mut() else {
            return Vec::new();
        };
        let d = match push {
            Push::Message(d) => d,
            Push::Resync => {
                me.delivery.resync();
                return Vec::new();
            }
            // Someone changed who may reach them: ask again next time.
            // (Never written to the client.)
            Push::Notice(frame) if crate::protocol::reach_of(&frame).is_some() => {
                if let Some(user) = crate::protocol::reach_of(&frame) {
                    me.reach.remove(&user);
                    self.reach_changed();
                }
                return Vec::new();
            }
            // Another device of the user joined or left a group: this
            // session delivers its messages from there, or no more. (The
            // session that made the change knows already: joining twice
            // changes nothing.)
            Push::Notice(frame) if crate::protocol::membership_of(&frame).is_some() => {
                if let Some((group, member, seq)) = crate::protocol::membership_of(&frame) {
                    let conv = crate::model::Conversation::Group(group);
                    match (member, me.delivery.knows(conv)) {
                        (true, false) => me.delivery.join(conv, seq),
                        (false, true) => me.delivery.leave(conv),
                        _ => return Vec::new(),
                    }
                }
                if s.classic {
                    return Vec::new();
                }
                return vec![Bytes::clone(&frame)];
            }
            // A friend request of this user was accepted: it hears of the
            // new friend's comings and goings from now on, and they of its.
            Push::Notice(frame) if crate::protocol::accepted_friend_of(&frame).is_some() => {
                if let Some(friend) = crate::protocol::accepted_friend_of(&frame)
                    && !me.contacts.contains(&friend)
                {
                    me.contacts.push(friend);
                }
                if s.classic {
                    return Vec::new();
                }
                return vec![Bytes::clone(&frame)];
            }
            // Presence is ours; the original server never sent it.
            Push::Notice(_) if s.classic => return Vec::new(),
            Push::Notice(frame) => return vec![Bytes::clone(&frame)],
        };
        let m = &*d;
        if m.sender == me.id && m.sender_device == me.reader.device {
            // Sent from this very device, by an earlier session of it (the
            // client reconnected while its send was under way): it has it.
            me.delivery.record_own(m.conv, m.seq);
            return Vec::new();
        }
        match me.delivery.classify(m.conv, m.seq) {
            Incoming::Duplicate => Vec::new(),
            Incoming::InOrder => {
                me.delivery.delivered(m.conv, m.seq);
                inc(if d.remote {
                    &METRICS.delivered_remote
                } else {
                    &METRICS.delivered_local
                });
                crate::metrics::observe_duration(&METRICS.delivery_latency, d.arrived.elapsed());
                vec![d.frame.clone()]
            }
            Incoming::Gap { after } => {
                match self.store.between(m.conv, after, m.seq, &me.reader).await {
                    Ok(missing) => {
                        let mut out: Vec<Bytes> = missing.iter().map(render_push).collect();
                        METRICS.delivered_from_store.inc_by(missing.len() as u64);
                        out.push(d.frame.clone());
                        me.delivery.delivered(m.conv, m.seq);
                        out
                    }
                    Err(e) => {
                        // Hold it back rather than skip what is missing: it stays
                        // past the cursor, so the next gap fill or login brings it.
                        tracing::warn!(user = %me.id, error = %e, "could not fill a delivery gap");
                        Vec::new()
                    }
                }
            }
        }
    }

    /// The next page of messages waiting in the store: stores the positions
    /// delivered so far (everything before has been written to the client),
    /// then sends what lies past them, one page at a time.
    pub async fn backlog_page(&self, s: &mut Session) -> Vec<Bytes> {
        let Some(me) = s.user.as_mut() else {
            return Vec::new();
        };
        let page_size = self.config.offline_page.max(1);
        let positions = me.delivery.begin_page();
        let page = async {
            self.store.advance_cursors(&me.reader, positions).await?;
            self.store.undelivered(&me.reader, page_size).await
        };
        let page = match page.await {
            Ok(page) => page,
            Err(e) => {
                // Still stored: offered again at the next gap fill or login.
                tracing::warn!(user = %me.id, error = %e, "could not read undelivered messages");
                return Vec::new();
            }
        };
        // Pushes may have delivered some of these meanwhile.
        let fresh: Vec<ChatMessage> = page
            .iter()
            .filter(|m| me.delivery.classify(m.conv, m.seq) != Incoming::Duplicate)
            .cloned()
            .collect();
        // Only an empty page says that nothing is left (see
        // `Store::undelivered`), so the whole page counts, not only what is
        // fresh.
        me.delivery.page_sent(&page);
        METRICS.delivered_from_store.inc_by(fresh.len() as u64);
        chronological(fresh).iter().map(render_push).collect()
    }
}

/// A page comes ordered by conversation (so that cursors stay correct); users
/// read it in time order. Sorting on each conversation's running maximum of
/// the timestamp interleaves conversations by time but can never put a
/// conversation's messages out of sequence, even if the clock stepped back.
pub(super) fn chronological(page: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut running: HashMap<crate::model::Conversation, i64> = HashMap::new();
    let mut keyed: Vec<(i64, ChatMessage)> = page
        .into_iter()
        .map(|m| {
            let t = running.entry(m.conv).or_insert(i64::MIN);
            *t = (*t).max(m.ts_ms);
            (*t, m)
        })
        .collect();
    keyed.sort_by_key(|(t, m)| (*t, m.conv, m.seq));
    keyed.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conversation;
    use crate::model::{GroupId, Seq, UserId};

    fn msg(conv: Conversation, seq: i64, ts_ms: i64) -> ChatMessage {
        ChatMessage {
            conv,
            seq: Seq(seq),
            sender: UserId(9),
            sender_name: "x".into(),
            body: String::new(),
            ts_ms,
            kind: Default::default(),
        }
    }

    #[test]
    fn offline_pages_interleave_by_time_but_keep_each_conversation_in_order() {
        let (a, b) = (
            Conversation::Group(GroupId(1)),
            Conversation::Group(GroupId(2)),
        );
        // conversation a's clock stepped back between seq 1 and 2
        let page = vec![
            msg(a, 1, 50),
            msg(a, 2, 10),
            msg(a, 3, 60),
            msg(b, 1, 20),
            msg(b, 2, 55),
        ];
        let order: Vec<_> = chronological(page)
            .iter()
            .map(|m| (m.conv, m.seq))
            .collect();
        assert_eq!(
            order,
            vec![
                (b, Seq(1)),
                (a, Seq(1)),
                (a, Seq(2)),
                (b, Seq(2)),
                (a, Seq(3))
            ]
        );
    }
}
