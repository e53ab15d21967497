//! The async client library: one connection, typed requests, and a stream
//! of pushes.
//!
//! Replies and pushes are told apart by what they are, never by which task
//! reads first (the original client's bug): every request carries a fresh
//! `reqid`, and a frame echoing a pending `reqid` completes that request;
//! anything else (chat messages, server notices) goes to the push stream.
//! `chatclient`, the tests and the load tool all use this.

pub mod command;
pub mod reliable;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::model::{GroupId, Seq, UserId};
use crate::protocol::codec::FrameCodec;
use crate::protocol::msgid;

/// Largest frame the client accepts: a login reply can carry a page of
/// offline messages, far more than a request.
const MAX_INCOMING_FRAME: usize = 16 * 1024 * 1024;

/// What can go wrong for a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server refused ({errno}): {errmsg}")]
    Server { errno: i64, errmsg: String },
    #[error("connection closed")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// The server did not answer within the time allowed: it, or the
    /// network to it, is presumed dead.
    #[error("no answer from the server within {0:?}")]
    Timeout(std::time::Duration),
}

impl ClientError {
    /// The server's errno, for a refusal.
    pub fn errno(&self) -> Option<i64> {
        match self {
            ClientError::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A reply: its JSON object.
#[derive(Debug, Clone)]
pub struct Reply(pub Map<String, Value>);

impl Reply {
    pub fn msgid(&self) -> i64 {
        self.0.get("msgid").and_then(Value::as_i64).unwrap_or(-1)
    }
    pub fn errno(&self) -> i64 {
        self.0.get("errno").and_then(Value::as_i64).unwrap_or(0)
    }
    pub fn errmsg(&self) -> &str {
        self.0.get("errmsg").and_then(Value::as_str).unwrap_or("")
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
    pub fn i64(&self, key: &str) -> Result<i64, ClientError> {
        self.get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| ClientError::Protocol(format!("reply lacks integer `{key}`")))
    }
    /// Turns a refusal into an error.
    pub fn ok(self) -> Result<Reply, ClientError> {
        if self.errno() == 0 {
            Ok(self)
        } else {
            Err(ClientError::Server {
                errno: self.errno(),
                errmsg: self.errmsg().to_owned(),
            })
        }
    }
}

/// A chat message as received (push, offline message or history entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: UserId,
    pub name: String,
    /// `Some(group)` for a group message.
    pub group: Option<GroupId>,
    /// The receiver of a one-to-one message.
    pub to: Option<UserId>,
    pub msg: String,
    pub time: String,
    pub seq: Seq,
    pub ts: i64,
}

impl Message {
    /// Reads a ONE_CHAT_MSG or GROUP_CHAT_MSG object.
    pub fn from_json(v: &Value) -> Option<Message> {
        let kind = v.get("msgid")?.as_i64()?;
        if kind != msgid::ONE_CHAT && kind != msgid::GROUP_CHAT {
            return None;
        }
        Some(Message {
            from: v.get("id")?.as_i64()?,
            name: v.get("name")?.as_str()?.to_owned(),
            group: v.get("groupid").and_then(Value::as_i64),
            to: v.get("toid").and_then(Value::as_i64),
            msg: v.get("msg")?.as_str()?.to_owned(),
            time: v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            seq: v.get("seq").and_then(Value::as_i64).unwrap_or(0),
            ts: v.get("ts").and_then(Value::as_i64).unwrap_or(0),
        })
    }

    /// The conversation this message belongs to, seen by user `me`: the
    /// group, or the other user (what [`Client::ack`] and history name).
    pub fn conversation(&self, me: UserId) -> crate::protocol::HistoryTarget {
        use crate::protocol::HistoryTarget;
        match (self.group, self.to) {
            (Some(g), _) => HistoryTarget::Group(g),
            (None, Some(to)) if self.from == me => HistoryTarget::User(to),
            _ => HistoryTarget::User(self.from),
        }
    }

    /// The original client's rendering.
    pub fn display(&self) -> String {
        match self.group {
            Some(g) => format!(
                "群消息[{g}]:{} [{}]{} said: {}",
                self.time, self.from, self.name, self.msg
            ),
            None => format!(
                "{} [{}]{} said: {}",
                self.time, self.from, self.name, self.msg
            ),
        }
    }
}

/// Something the server sent that was not a reply to a pending request.
#[derive(Debug, Clone)]
pub enum Push {
    Message(Message),
    /// A notice (msgid 100) or anything else.
    Other(Value),
}

/// A friend or group member with presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub id: UserId,
    pub name: String,
    pub online: bool,
    /// Group role, for members.
    pub role: Option<String>,
}

/// A group with its members, as listed at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub desc: String,
    pub members: Vec<Contact>,
}

/// What a successful login returns.
#[derive(Debug, Clone)]
pub struct LoginInfo {
    pub id: UserId,
    pub name: String,
    pub friends: Vec<Contact>,
    pub groups: Vec<Group>,
    pub offline: Vec<Message>,
    /// The resume token a password login returns ([`Client::resume`]).
    pub token: Option<String>,
    /// The server confirmed that this session's stored positions follow
    /// its acknowledgements ([`Client::ack`]).
    pub acks: bool,
}

/// The reply to a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub seq: Seq,
    pub ts: i64,
}

/// Requests waiting for their replies, and whether the connection has
/// closed (a request made after that must fail at once: nobody is left to
/// answer or drop its waiter).
#[derive(Debug, Default)]
struct Waiters {
    by_reqid: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

type Pending = Arc<Mutex<Waiters>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, Waiters> {
    p.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection to a chat server.
#[derive(Debug)]
pub struct Client {
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    pending: Pending,
    pushes: mpsc::Receiver<Push>,
    next_reqid: AtomicU64,
}

fn contact(v: &Value) -> Option<Contact> {
    Some(Contact {
        id: v.get("id")?.as_i64()?,
        name: v.get("name")?.as_str()?.to_owned(),
        online: v.get("state")?.as_str()? == "online",
        role: v.get("role").and_then(Value::as_str).map(str::to_owned),
    })
}

/// Items of a classic list: each element a JSON text holding an object.
fn double_encoded(v: Option<&Value>) -> Vec<Value> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| match s {
                    Value::String(s) => serde_json::from_str(s).ok(),
                    other => Some(other.clone()),
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Self::over(TcpStream::connect(addr).await?)
    }

    /// Speaks the protocol over an already connected stream (one bound to a
    /// chosen source address, say).
    pub fn over(stream: TcpStream) -> Result<Client, ClientError> {
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (push_tx, pushes) = mpsc::channel(4096);
        let mut reader = FramedRead::new(read, FrameCodec::new(MAX_INCOMING_FRAME));
        let table = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = reader.next().await {
                let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&frame) else {
                    continue;
                };
                let waiter = obj
                    .get("reqid")
                    .and_then(Value::as_u64)
                    .and_then(|r| lock(&table).by_reqid.remove(&r));
                match waiter {
                    Some(w) => {
                        let _ = w.send(Reply(obj));
                    }
                    None => {
                        let v = Value::Object(obj);
                        let push = Message::from_json(&v).map_or(Push::Other(v), Push::Message);
                        // Waiting here pushes back on the server when the
                        // application does not keep up.
                        if push_tx.send(push).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // Dropping the senders wakes every pending request with Closed.
            let mut waiters = lock(&table);
            waiters.closed = true;
            waiters.by_reqid.clear();
        });
        Ok(Client {
            writer: FramedWrite::new(write, FrameCodec::new(MAX_INCOMING_FRAME)),
            pending,
            pushes,
            next_reqid: AtomicU64::new(1),
        })
    }

    /// Sends a request object (a `reqid` is added) and waits for its reply.
    pub async fn request(&mut self, mut req: Value) -> Result<Reply, ClientError> {
        let reqid = self.next_reqid.fetch_add(1, Ordering::Relaxed);
        if let Value::Object(o) = &mut req {
            o.insert("reqid".into(), reqid.into());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = lock(&self.pending);
            if waiters.closed {
                return Err(ClientError::Closed);
            }
            waiters.by_reqid.insert(reqid, tx);
        }
        let bytes = Bytes::from(
            serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?,
        );
        if let Err(e) = self.writer.send(bytes).await {
            lock(&self.pending).by_reqid.remove(&reqid);
            return Err(match e {
                crate::protocol::codec::FrameError::Io(e) => ClientError::Io(e),
                other => ClientError::Protocol(other.to_string()),
            });
        }
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Sends a heartbeat and waits at most `timeout` for its answer; returns
    /// the round trip. After the first ping the server expects one at least
    /// every heartbeat timeout (45 s by default) and closes a silent
    /// connection, so a client that pings keeps pinging.
    pub async fn ping(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration, ClientError> {
        let start = std::time::Instant::now();
        let req = serde_json::json!({"msgid": msgid::PING});
        match tokio::time::timeout(timeout, self.request(req)).await {
            Ok(reply) => reply?.ok().map(|_| start.elapsed()),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Sends raw bytes as they are (for testing the server with bad input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        let w = self.writer.get_mut();
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// The next push, or `None` once the connection is closed.
    pub async fn next_push(&mut self) -> Option<Push> {
        self.pushes.recv().await
    }

    /// The next chat message, skipping other pushes.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Push::Message(m) = self.next_push().await? {
                return Some(m);
            }
        }
    }

    /// A push already received, without waiting.
    pub fn try_push(&mut self) -> Option<Push> {
        self.pushes.try_recv().ok()
    }

    pub async fn register(&mut self, name: &str, password: &str) -> Result<UserId, ClientError> {
        self.request(json!({"msgid": msgid::REG, "name": name, "password": password}))
            .await?
            .ok()?
            .i64("id")
    }

    pub async fn login(&mut self, id: UserId, password: &str) -> Result<LoginInfo, ClientError> {
        let r = self
            .request(json!({"msgid": msgid::LOGIN, "id": id, "password": password}))
            .await?
            .ok()?;
        login_info(r)
    }

    /// Logs in as a client that acknowledges what it receives: the server
    /// stores only acknowledged positions, so what this session received
    /// but never acknowledged comes again to the next one.
    pub async fn login_acking(
        &mut self,
        id: UserId,
        password: &str,
    ) -> Result<LoginInfo, ClientError> {
        let r = self
            .request(json!({"msgid": msgid::LOGIN, "id": id, "password": password, "acks": true}))
            .await?
            .ok()?;
        login_info(r)
    }

    /// [`resume`](Self::resume) as a client that acknowledges.
    pub async fn resume_acking(&mut self, token: &str) -> Result<LoginInfo, ClientError> {
        let r = self
            .request(json!({"msgid": msgid::RESUME, "token": token, "acks": true}))
            .await?
            .ok()?;
        login_info(r)
    }

    /// Acknowledges everything up to each position (cumulative per
    /// conversation). Not answered unless refused; a refusal arrives as a
    /// push (msgid 118).
    pub async fn ack(
        &mut self,
        positions: &[(crate::protocol::HistoryTarget, Seq)],
    ) -> Result<(), ClientError> {
        use crate::protocol::HistoryTarget;
        let acks: Vec<Value> = positions
            .iter()
            .map(|(target, seq)| match target {
                HistoryTarget::User(u) => json!({"toid": u, "seq": seq}),
                HistoryTarget::Group(g) => json!({"groupid": g, "seq": seq}),
            })
            .collect();
        let frame = serde_json::to_vec(&json!({"msgid": msgid::ACK, "acks": acks}))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.writer
            .send(Bytes::from(frame))
            .await
            .map_err(|e| match e {
                crate::protocol::codec::FrameError::Io(e) => ClientError::Io(e),
                other => ClientError::Protocol(other.to_string()),
            })
    }

    /// Logs in with the token of an earlier login (after a broken
    /// connection, say), without the password. The reply is a login's,
    /// offline messages included; the token stays the same.
    pub async fn resume(&mut self, token: &str) -> Result<LoginInfo, ClientError> {
        let r = self
            .request(json!({"msgid": msgid::RESUME, "token": token}))
            .await?
            .ok()?;
        login_info(r)
    }
}

/// A LOGIN or RESUME reply, read.
fn login_info(r: Reply) -> Result<LoginInfo, ClientError> {
    let friends = double_encoded(r.get("friends"))
        .iter()
        .filter_map(contact)
        .collect();
    let groups = double_encoded(r.get("groups"))
        .iter()
        .filter_map(|g| {
            Some(Group {
                id: g.get("id")?.as_i64()?,
                name: g.get("groupname")?.as_str()?.to_owned(),
                desc: g
                    .get("groupdesc")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                members: double_encoded(g.get("users"))
                    .iter()
                    .filter_map(contact)
                    .collect(),
            })
        })
        .collect();
    let offline = double_encoded(r.get("offlinemsg"))
        .iter()
        .filter_map(Message::from_json)
        .collect();
    Ok(LoginInfo {
        id: r.i64("id")?,
        name: r
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        friends,
        groups,
        offline,
        token: r.get("token").and_then(Value::as_str).map(str::to_owned),
        acks: r.get("acks").and_then(Value::as_bool).unwrap_or(false),
    })
}

impl Client {
    pub async fn logout(&mut self) -> Result<(), ClientError> {
        self.request(json!({"msgid": msgid::LOGOUT}))
            .await?
            .ok()
            .map(drop)
    }

    pub async fn chat(&mut self, to: UserId, msg: &str) -> Result<Sent, ClientError> {
        let r = self
            .request(json!({"msgid": msgid::ONE_CHAT, "toid": to, "msg": msg}))
            .await?
            .ok()?;
        Ok(Sent {
            seq: r.i64("seq")?,
            ts: r.i64("ts")?,
        })
    }

    pub async fn group_chat(&mut self, group: GroupId, msg: &str) -> Result<Sent, ClientError> {
        let r = self
            .request(json!({"msgid": msgid::GROUP_CHAT, "groupid": group, "msg": msg}))
            .await?
            .ok()?;
        Ok(Sent {
            seq: r.i64("seq")?,
            ts: r.i64("ts")?,
        })
    }

    /// Sends with the client's own message id `cmid`: sending again with
    /// the same id (after a lost reply, say) stores nothing new and answers
    /// with the original's `seq` and `ts`.
    pub async fn send_with_id(
        &mut self,
        to: crate::protocol::HistoryTarget,
        msg: &str,
        cmid: &str,
    ) -> Result<Sent, ClientError> {
        use crate::protocol::HistoryTarget;
        let req = match to {
            HistoryTarget::User(u) => {
                json!({"msgid": msgid::ONE_CHAT, "toid": u, "msg": msg, "cmid": cmid})
            }
            HistoryTarget::Group(g) => {
                json!({"msgid": msgid::GROUP_CHAT, "groupid": g, "msg": msg, "cmid": cmid})
            }
        };
        let r = self.request(req).await?.ok()?;
        Ok(Sent {
            seq: r.i64("seq")?,
            ts: r.i64("ts")?,
        })
    }

    pub async fn add_friend(&mut self, friend: UserId) -> Result<(), ClientError> {
        self.request(json!({"msgid": msgid::ADD_FRIEND, "friendid": friend}))
            .await?
            .ok()
            .map(drop)
    }

    pub async fn del_friend(&mut self, friend: UserId) -> Result<(), ClientError> {
        self.request(json!({"msgid": msgid::DEL_FRIEND, "friendid": friend}))
            .await?
            .ok()
            .map(drop)
    }

    pub async fn friends(&mut self) -> Result<Vec<Contact>, ClientError> {
        let r = self
            .request(json!({"msgid": msgid::SHOW_FRIEND_LIST}))
            .await?
            .ok()?;
        Ok(r.get("friends")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(contact).collect())
            .unwrap_or_default())
    }

    pub async fn create_group(&mut self, name: &str, desc: &str) -> Result<GroupId, ClientError> {
        self.request(json!({"msgid": msgid::CREATE_GROUP, "groupname": name, "groupdesc": desc}))
            .await?
            .ok()?
            .i64("groupid")
    }

    pub async fn join_group(&mut self, group: GroupId) -> Result<(), ClientError> {
        self.request(json!({"msgid": msgid::ADD_GROUP, "groupid": group}))
            .await?
            .ok()
            .map(drop)
    }

    pub async fn leave_group(&mut self, group: GroupId) -> Result<(), ClientError> {
        self.request(json!({"msgid": msgid::DEL_GROUP, "groupid": group}))
            .await?
            .ok()
            .map(drop)
    }

    /// Up to `limit` messages of the conversation with a user or a group
    /// before sequence number `before` (newest when `None`), newest first.
    pub async fn history(
        &mut self,
        with: crate::protocol::HistoryTarget,
        before: Option<Seq>,
        limit: Option<u32>,
    ) -> Result<Vec<Message>, ClientError> {
        let mut req = json!({"msgid": msgid::HISTORY});
        match with {
            crate::protocol::HistoryTarget::User(u) => req["toid"] = u.into(),
            crate::protocol::HistoryTarget::Group(g) => req["groupid"] = g.into(),
        }
        if let Some(b) = before {
            req["before"] = b.into();
        }
        if let Some(l) = limit {
            req["limit"] = l.into();
        }
        let r = self.request(req).await?.ok()?;
        Ok(r.get("messages")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Message::from_json).collect())
            .unwrap_or_default())
    }
}
