//! A client that survives broken connections: exactly once at the
//! application.
//!
//! [`Reliable`] wraps a [`Client`] and keeps what must outlive one
//! connection: the resume token, the last `seq` handed to the application
//! per conversation, and the acknowledgements not yet sent. When the
//! connection breaks (or the server stops answering heartbeats) it
//! reconnects with jittered exponential backoff, resumes with the token
//! (falling back to the password once the token is refused), and carries on:
//!
//! * every message is sent with a client message id (`cmid`); a send whose
//!   answer was lost is sent again with the same id after reconnecting, so
//!   the server stores it once and answers with the original `seq`;
//! * the session declares acknowledgements, so whatever reached this client
//!   but was not acknowledged comes again after a reconnect, and is dropped
//!   here when its `seq` is at or below what the application already got.
//!
//! It never fights another login of the same user: a session replaced
//! elsewhere (errno 54) ends with [`Event::Replaced`] instead of
//! reconnecting.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Client, ClientError, Endpoint, LoginInfo, Message, Push, Sent};
use crate::model::{Seq, UserId};
use crate::protocol::HistoryTarget;

/// How a [`Reliable`] client paces itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// First reconnect delay; doubled after each failed attempt.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Attempts before giving up on a reconnect (the caller may try again).
    pub max_attempts: u32,
    /// Acknowledgements go out at most this often...
    pub ack_interval: Duration,
    /// ...or as soon as this many conversations have news.
    pub ack_batch: usize,
    /// A heartbeat goes out after this long without one.
    pub ping_interval: Duration,
    /// The server is presumed dead when a request or heartbeat goes
    /// unanswered this long.
    pub answer_timeout: Duration,
    /// The device this client is (see [`Client::set_device`]); `None`: the
    /// classic device.
    pub device: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_attempts: 30,
            ack_interval: Duration::from_millis(200),
            ack_batch: 64,
            ping_interval: Duration::from_secs(15),
            answer_timeout: Duration::from_secs(10),
            device: None,
        }
    }
}

/// What happened, for the application.
#[derive(Debug, Clone)]
pub enum Event {
    /// A chat message, each exactly once, in `seq` order per conversation.
    Message(Message),
    /// A notice or other frame from the server.
    Notice(Value),
    /// The connection broke; reconnecting (attempt `attempt`, after `wait`).
    Reconnecting { attempt: u32, wait: Duration },
    /// Connected and logged in again.
    Reconnected,
    /// Another login of this user replaced this session: nothing more comes.
    Replaced,
}

/// Counts since the client was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub reconnects: u64,
    /// Messages that arrived again after a reconnect and were dropped.
    pub duplicates_dropped: u64,
    /// Sends repeated (with their ids) after a broken connection.
    pub resent: u64,
}

/// A logged-in client that reconnects by itself.
#[derive(Debug)]
pub struct Reliable {
    endpoint: Endpoint,
    id: UserId,
    password: String,
    token: Option<String>,
    options: Options,
    conn: Option<Client>,
    /// Messages from a login reply, not yet handed out.
    queued: VecDeque<Message>,
    /// Events to hand out before anything else (reconnect news).
    events: VecDeque<Event>,
    /// The highest `seq` handed to the application, per conversation.
    seen: HashMap<HistoryTarget, Seq>,
    /// Positions handed out but not acknowledged yet.
    to_ack: HashMap<HistoryTarget, Seq>,
    last_ack: Instant,
    last_ping: Instant,
    cmid_prefix: String,
    next_cmid: u64,
    replaced: bool,
    /// Resumes sent but given up on before their answer (timed out, or the
    /// connection broke): each may still be carried out late by a node
    /// that was stalled, and replace the session this client has since
    /// opened. So many replacements by our own token are accounted for.
    abandoned_resumes: u32,
    /// When the session was last replaced by its own token unaccounted
    /// for: one such a minute is let through (a resume abandoned in a way
    /// not counted), a second is another live copy of this session.
    own_replacement: Option<Instant>,
    stats: Stats,
}

impl Reliable {
    /// Connects to `endpoint` (an address, or an [`Endpoint`] with TLS)
    /// and logs in as `id`.
    pub async fn login(
        endpoint: impl Into<Endpoint>,
        id: UserId,
        password: &str,
        options: Options,
    ) -> Result<(Reliable, LoginInfo), ClientError> {
        let endpoint = endpoint.into();
        let mut conn = endpoint.connect().await?;
        conn.set_device(options.device.as_deref());
        let info = conn.login_acking(id, password).await?;
        let mut prefix = [0_u8; 8];
        getrandom::fill(&mut prefix).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut me = Reliable {
            endpoint,
            id,
            password: password.to_owned(),
            token: info.token.clone(),
            options,
            conn: Some(conn),
            queued: VecDeque::new(),
            events: VecDeque::new(),
            seen: HashMap::new(),
            to_ack: HashMap::new(),
            last_ack: Instant::now(),
            abandoned_resumes: 0,
            own_replacement: None,
            last_ping: Instant::now(),
            cmid_prefix: prefix.iter().map(|b| format!("{b:02x}")).collect(),
            next_cmid: 0,
            replaced: false,
            stats: Stats::default(),
        };
        me.queued.extend(info.offline.iter().cloned());
        Ok((me, info))
    }

    /// The logged-in user.
    pub fn id(&self) -> UserId {
        self.id
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sends `msg` to a user or group, exactly once: across broken
    /// connections it is sent again with the same id until it is answered
    /// (or a reconnect gives up, or the server refuses it).
    pub async fn send(&mut self, to: HistoryTarget, msg: &str) -> Result<Sent, ClientError> {
        self.next_cmid += 1;
        let cmid = format!("{}-{}", self.cmid_prefix, self.next_cmid);
        let mut tries = 0_u64;
        loop {
            let timeout = self.options.answer_timeout;
            let conn = self.connected().await?;
            let outcome = tokio::time::timeout(timeout, conn.send_with_id(to, msg, &cmid)).await;
            match outcome {
                Ok(Ok(sent)) => {
                    self.stats.resent += tries;
                    return Ok(sent);
                }
                Ok(Err(ClientError::Server { errno: 50, .. })) => {
                    // Storage unavailable: the same id makes retrying safe.
                    tokio::time::sleep(self.options.backoff_base).await;
                }
                Ok(Err(e @ ClientError::Server { .. })) => return Err(e),
                Ok(Err(_)) | Err(_) => self.conn = None,
            }
            tries += 1;
        }
    }

    /// The next thing the application should see. Drops duplicates, sends
    /// acknowledgements and heartbeats, and reconnects when the connection
    /// breaks.
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            if self.replaced {
                return Event::Replaced;
            }
            while let Some(m) = self.queued.pop_front() {
                if let Some(m) = self.fresh(m) {
                    return Event::Message(m);
                }
            }
            if self.conn.is_none() {
                if let Err(e) = self.connected().await {
                    // Given up for now; the application decides what next.
                    return Event::Notice(serde_json::json!({"error": e.to_string()}));
                }
                continue;
            }
            if self.to_ack.len() >= self.options.ack_batch
                || (!self.to_ack.is_empty() && self.last_ack.elapsed() >= self.options.ack_interval)
            {
                self.flush_acks().await;
                continue;
            }
            if self.last_ping.elapsed() >= self.options.ping_interval {
                self.last_ping = Instant::now();
                let timeout = self.options.answer_timeout;
                if let Some(conn) = self.conn.as_mut()
                    && conn.ping(timeout).await.is_err()
                {
                    self.conn = None;
                }
                continue;
            }
            let ack_due =
                (!self.to_ack.is_empty()).then(|| self.last_ack + self.options.ack_interval);
            let ping_due = self.last_ping + self.options.ping_interval;
            let wake = ack_due.map_or(ping_due, |a| a.min(ping_due));
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            tokio::select! {
                push = conn.next_push() => match push {
                    Some(Push::Message(m)) => {
                        if let Some(m) = self.fresh(m) {
                            return Event::Message(m);
                        }
                    }
                    Some(Push::Other(v)) => {
                        if v.get("errno").and_then(Value::as_i64) == Some(54) {
                            let own = v.get("resumed").and_then(Value::as_bool) == Some(true);
                            self.replaced = !(own && self.late_attempt_of_ours());
                            self.conn = None;
                        }
                        if v.get("errno").and_then(Value::as_i64) == Some(63) {
                            // Logged out from another device: the token is
                            // gone, and logging in again would only be
                            // undone by the user.
                            self.replaced = true;
                            self.token = None;
                            self.conn = None;
                        }
                        return Event::Notice(v);
                    }
                    None => self.conn = None,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Replaced by a resume with our own token: is it one we gave up on,
    /// carried out late by a node that was stalled? Once for each resume
    /// we abandoned, and once a minute beyond that, yes; more is another
    /// live copy of this session, which we give up to rather than fight.
    fn late_attempt_of_ours(&mut self) -> bool {
        if self.abandoned_resumes > 0 {
            self.abandoned_resumes -= 1;
            return true;
        }
        let free = self
            .own_replacement
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        self.own_replacement = Some(Instant::now());
        free
    }

    /// Whether `m` is new to the application; records it for dedup and
    /// acknowledgement.
    fn fresh(&mut self, m: Message) -> Option<Message> {
        let conv = m.conversation(self.id);
        let seen = self.seen.entry(conv).or_insert(Seq(0));
        if m.seq != 0 && m.seq <= *seen {
            self.stats.duplicates_dropped += 1;
            return None;
        }
        *seen = m.seq;
        self.to_ack.insert(conv, m.seq);
        Some(m)
    }

    /// Acknowledges now what the application has got (before exiting, say;
    /// otherwise acknowledgements go out by themselves).
    pub async fn acknowledge_now(&mut self) {
        if !self.to_ack.is_empty() {
            self.flush_acks().await;
        }
    }

    async fn flush_acks(&mut self) {
        self.last_ack = Instant::now();
        let positions: Vec<_> = self.to_ack.drain().collect();
        if let Some(conn) = self.conn.as_mut()
            && conn.ack(&positions).await.is_err()
        {
            // Not acknowledged means sent again after the reconnect, and
            // dropped here: nothing to keep.
            self.conn = None;
        }
    }

    /// The connection, reconnecting first if it is broken.
    async fn connected(&mut self) -> Result<&mut Client, ClientError> {
        if self.replaced {
            return Err(ClientError::Closed);
        }
        if self.conn.is_none() {
            self.reconnect().await?;
        }
        self.conn.as_mut().ok_or(ClientError::Closed)
    }

    /// Reconnects with jittered exponential backoff and resumes (or logs in
    /// again once the token is refused).
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        // What was handed out but not acknowledged comes again and is
        // dropped as a duplicate; the positions go with the old session.
        self.to_ack.clear();
        let mut last = ClientError::Closed;
        for attempt in 1..=self.options.max_attempts {
            let cap = self
                .options
                .backoff_base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.options.backoff_max);
            let mut wait = jitter(cap);
            if let ClientError::Server { errno: 56, .. } = last {
                // Told to come back later: at least a base delay more.
                wait = wait.max(self.options.backoff_base);
            }
            self.events.push_back(Event::Reconnecting { attempt, wait });
            tokio::time::sleep(wait).await;
            match self.try_login().await {
                Ok((conn, info)) => {
                    self.conn = Some(conn);
                    if let Some(t) = info.token {
                        self.token = Some(t);
                    }
                    self.queued.extend(info.offline);
                    self.last_ack = Instant::now();
                    self.last_ping = Instant::now();
                    self.stats.reconnects += 1;
                    self.events.push_back(Event::Reconnected);
                    return Ok(());
                }
                Err(e @ ClientError::Server { errno: 1, .. }) if self.token.is_none() => {
                    return Err(e);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn try_login(&mut self) -> Result<(Client, LoginInfo), ClientError> {
        let timeout = self.options.answer_timeout;
        let mut resume_sent = false;
        let attempt = async {
            let mut conn = self.endpoint.connect().await?;
            conn.set_device(self.options.device.as_deref());
            if let Some(token) = self.token.clone() {
                resume_sent = true;
                match conn.resume_acking(&token).await {
                    Ok(info) => return Ok((conn, info)),
                    // Expired or revoked: the password, once.
                    Err(ClientError::Server { errno: 1, .. }) => {
                        self.token = None;
                        resume_sent = false;
                    }
                    Err(e) => return Err(e),
                }
            }
            let info = conn.login_acking(self.id, &self.password).await?;
            Ok((conn, info))
        };
        let result = tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)));
        // A server's answer is final; without one the resume may yet be
        // carried out.
        if resume_sent && matches!(result, Err(ref e) if !matches!(e, ClientError::Server { .. })) {
            self.abandoned_resumes = self.abandoned_resumes.saturating_add(1);
        }
        result
    }

    /// The connection for other requests (friends, groups, history),
    /// reconnecting first if it is broken. A request that fails on it
    /// marks it broken only through the next send or event.
    pub async fn client(&mut self) -> Result<&mut Client, ClientError> {
        self.connected().await
    }

    /// Logs out (revoking the token) and closes; nothing reconnects after.
    pub async fn logout(&mut self) -> Result<(), ClientError> {
        self.acknowledge_now().await;
        self.replaced = true;
        match self.conn.take() {
            Some(mut conn) => conn.logout().await,
            None => Ok(()),
        }
    }
}

/// A random delay in `[cap / 2, cap]` ("equal jitter"): reconnecting
/// clients spread out instead of arriving together.
fn jitter(cap: Duration) -> Duration {
    let mut b = [0_u8; 8];
    let r = getrandom::fill(&mut b).map_or(0, |()| u64::from_le_bytes(b));
    let half = cap / 2;
    let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_micros(r % spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_by_its_own_token_is_let_through_once_per_abandoned_resume() {
        let mut r = Reliable {
            endpoint: Endpoint::from("127.0.0.1:9"),
            id: UserId(1),
            password: String::new(),
            token: None,
            options: Options::default(),
            conn: None,
            queued: VecDeque::new(),
            events: VecDeque::new(),
            seen: HashMap::new(),
            to_ack: HashMap::new(),
            last_ack: Instant::now(),
            last_ping: Instant::now(),
            cmid_prefix: String::new(),
            next_cmid: 0,
            replaced: false,
            abandoned_resumes: 2,
            own_replacement: None,
            stats: Stats::default(),
        };
        // two resumes given up on, landing late: both ours
        assert!(r.late_attempt_of_ours());
        assert!(r.late_attempt_of_ours());
        // then one a minute
        assert!(r.late_attempt_of_ours());
        // a fourth within the minute is another live copy
        assert!(!r.late_attempt_of_ours());
        r.abandoned_resumes = 1;
        assert!(r.late_attempt_of_ours(), "a newly abandoned one counts");
        assert!(!r.late_attempt_of_ours());
    }

    #[test]
    fn jitter_stays_between_half_and_the_cap() {
        let cap = Duration::from_millis(400);
        for _ in 0..100 {
            let d = jitter(cap);
            assert!(d >= cap / 2 && d <= cap, "{d:?}");
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
