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
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::model::{GroupId, Seq, UserId};
use crate::protocol::codec::FrameCodec;
use crate::protocol::requests::{self as wire, Call};
use crate::protocol::{ChatFrame, HistoryTarget, msgid, replies};
use crate::tls::TlsClient;

pub use crate::protocol::replies::Sent;

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
    /// Reads a success as `T` (a refusal is an error).
    pub fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T, ClientError> {
        let ok = self.ok()?;
        serde_json::from_value(Value::Object(ok.0))
            .map_err(|e| ClientError::Protocol(e.to_string()))
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
    /// A message (as sent, edited or recalled), or an event that changed
    /// message `n` (`RecallOf(n)`, `EditOf(n)`, whose new text is `text`).
    pub kind: crate::model::MsgKind,
    /// An edit event's new text.
    pub text: Option<String>,
}

impl Message {
    /// Reads a ONE_CHAT_MSG or GROUP_CHAT_MSG object.
    pub fn from_json(v: &Value) -> Option<Message> {
        let kind = v.get("msgid")?.as_i64()?;
        if kind != msgid::ONE_CHAT && kind != msgid::GROUP_CHAT {
            return None;
        }
        use serde::Deserialize;
        ChatFrame::deserialize(v).ok().map(Message::from)
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

impl From<ChatFrame<'_>> for Message {
    fn from(f: ChatFrame<'_>) -> Self {
        let kind = f.kind();
        Message {
            from: f.id,
            name: f.name.into_owned(),
            group: f.groupid,
            to: f.toid,
            msg: f.msg.into_owned(),
            time: f.time.into_owned(),
            kind,
            text: f.text.map(|t| t.into_owned()),
            seq: f.seq,
            ts: f.ts,
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
    /// The user's devices (the one logged in is marked `current`).
    pub devices: Vec<replies::DeviceInfo>,
    /// Conversations with unread messages, or read by their peer.
    pub reads: Vec<replies::ReadEntry>,
    /// The users this user blocks.
    pub blocked: Vec<UserId>,
    /// Pending friend requests to this user.
    pub requests: Vec<replies::UserRef>,
    /// Invitations to private groups this user holds.
    pub invitations: Vec<replies::InviteEntry>,
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

/// The write half of a plain or TLS connection.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Where a client connects: an address, plain or over TLS.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: String,
    pub tls: Option<TlsClient>,
}

impl Endpoint {
    /// Plain TCP to `addr`.
    pub fn plain(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_owned(),
            tls: None,
        }
    }

    /// Connects (and runs the TLS handshake, if any).
    pub async fn connect(&self) -> Result<Client, ClientError> {
        match &self.tls {
            None => Client::connect(self.addr.as_str()).await,
            Some(tls) => {
                let tcp = TcpStream::connect(self.addr.as_str()).await?;
                tcp.set_nodelay(true)?;
                Ok(Client::over_io(tls.connect(tcp).await?))
            }
        }
    }
}

impl From<&str> for Endpoint {
    fn from(addr: &str) -> Self {
        Endpoint::plain(addr)
    }
}

impl From<&String> for Endpoint {
    fn from(addr: &String) -> Self {
        Endpoint::plain(addr)
    }
}

/// A connection to a chat server.
pub struct Client {
    writer: FramedWrite<Writer, FrameCodec>,
    pending: Pending,
    pushes: mpsc::Receiver<Push>,
    next_reqid: AtomicU64,
    /// The device logins and resumes name ([`Client::set_device`]).
    device: Option<String>,
    /// Stops the reader task when the client is dropped: the task owns the
    /// read half, and the connection closes only once both halves are gone.
    _reader: tokio_util::sync::DropGuard,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("next_reqid", &self.next_reqid)
            .finish_non_exhaustive()
    }
}

impl From<replies::Contact> for Contact {
    fn from(c: replies::Contact) -> Self {
        Contact {
            id: c.id,
            name: c.name,
            online: c.state == replies::State::Online,
            role: c.role,
        }
    }
}

impl From<replies::LoggedIn<'_>> for LoginInfo {
    fn from(r: replies::LoggedIn<'_>) -> Self {
        LoginInfo {
            id: r.id,
            name: r.name,
            friends: r.friends.into_iter().map(Contact::from).collect(),
            groups: r
                .groups
                .into_iter()
                .map(|g| Group {
                    id: g.id,
                    name: g.groupname,
                    desc: g.groupdesc,
                    members: g.users.into_iter().map(Contact::from).collect(),
                })
                .collect(),
            offline: r.offlinemsg.into_iter().map(Message::from).collect(),
            devices: r.devices,
            reads: r.reads,
            blocked: r.blocked,
            requests: r.requests,
            invitations: r.invitations,
            token: r.token,
            acks: r.acks,
        }
    }
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
        Ok(Self::over_io(stream))
    }

    /// Speaks the protocol over any byte stream (a TLS stream, say).
    pub fn over_io(stream: impl AsyncRead + AsyncWrite + Send + 'static) -> Client {
        let (read, write) = tokio::io::split(stream);
        let write: Writer = Box::new(write);
        let pending: Pending = Arc::default();
        let (push_tx, pushes) = mpsc::channel(4096);
        let mut reader = FramedRead::new(read, FrameCodec::new(MAX_INCOMING_FRAME));
        let table = pending.clone();
        let dropped = tokio_util::sync::CancellationToken::new();
        let guard = dropped.clone().drop_guard();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = dropped.cancelled() => break,
                    frame = reader.next() => match frame {
                        Some(Ok(frame)) => frame,
                        _ => break,
                    },
                };
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
        Client {
            writer: FramedWrite::new(write, FrameCodec::new(MAX_INCOMING_FRAME)),
            pending,
            pushes,
            next_reqid: AtomicU64::new(1),
            device: None,
            _reader: guard,
        }
    }

    /// Sends a request object (a `reqid` is added) and waits for its reply.
    /// For requests this library does not type (tests of bad input).
    pub async fn request(&mut self, mut req: Value) -> Result<Reply, ClientError> {
        let reqid = self.next_reqid.fetch_add(1, Ordering::Relaxed);
        if let Value::Object(o) = &mut req {
            o.insert("reqid".into(), reqid.into());
        }
        let bytes = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.exchange(reqid, bytes).await
    }

    /// Sends a typed request and reads its typed reply.
    pub async fn call<C: Call>(&mut self, req: &C) -> Result<C::Reply, ClientError> {
        let reqid = self.next_reqid.fetch_add(1, Ordering::Relaxed);
        self.exchange(reqid, wire::frame(req, Some(reqid)))
            .await?
            .parse()
    }

    /// Writes a frame carrying `reqid` and waits for the reply echoing it.
    async fn exchange(&mut self, reqid: u64, frame: Vec<u8>) -> Result<Reply, ClientError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = lock(&self.pending);
            if waiters.closed {
                return Err(ClientError::Closed);
            }
            waiters.by_reqid.insert(reqid, tx);
        }
        if let Err(e) = self.writer.send(Bytes::from(frame)).await {
            lock(&self.pending).by_reqid.remove(&reqid);
            return Err(frame_error(e));
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
        match tokio::time::timeout(timeout, self.call(&wire::Ping {})).await {
            Ok(pong) => pong.map(|_| start.elapsed()),
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

    /// Names the device the next logins and resumes are for (1 to 64
    /// visible ASCII characters): a user's devices are online together,
    /// each with its own positions, and a login replaces only the older
    /// session of the same device. Without one, the classic device.
    pub fn set_device(&mut self, device: Option<&str>) {
        self.device = device.map(str::to_owned);
    }

    /// Marks a conversation read up to `seq` (the user's other devices are
    /// told, and, unless `private`, the peer or the group's members).
    /// Returns how far it is read now.
    pub async fn read(
        &mut self,
        with: HistoryTarget,
        seq: Seq,
        private: bool,
    ) -> Result<Seq, ClientError> {
        let (toid, groupid) = target_ids(with);
        let req = wire::Read {
            toid,
            groupid,
            seq,
            private,
        };
        Ok(self.call(&req).await?.seq)
    }

    /// Takes back message `seq` (one's own within the recall window, or,
    /// for a group's creator, any): every participant's devices get an
    /// event (`recall`), and history shows it recalled. Returns the
    /// event's own `seq`.
    pub async fn recall(&mut self, with: HistoryTarget, seq: Seq) -> Result<Seq, ClientError> {
        let (toid, groupid) = target_ids(with);
        let req = wire::Recall {
            toid,
            groupid,
            seq,
            cmid: None,
        };
        Ok(self.call(&req).await?.seq)
    }

    /// Changes the text of one's own message `seq` (within the edit
    /// window); returns the event's own `seq`.
    pub async fn edit(
        &mut self,
        with: HistoryTarget,
        seq: Seq,
        msg: &str,
    ) -> Result<Seq, ClientError> {
        let (toid, groupid) = target_ids(with);
        let req = wire::Edit {
            toid,
            groupid,
            seq,
            msg: msg.to_owned(),
            cmid: None,
        };
        Ok(self.call(&req).await?.seq)
    }

    /// Blocks `user`: neither messages the other one to one, befriends the
    /// other or sees the other's presence; their friendship ends.
    pub async fn block(&mut self, user: UserId) -> Result<(), ClientError> {
        self.call(&wire::Block { userid: user }).await.map(drop)
    }

    /// Ends the block of `user`.
    pub async fn unblock(&mut self, user: UserId) -> Result<(), ClientError> {
        self.call(&wire::Unblock { userid: user }).await.map(drop)
    }

    /// Deletes this user's account (`password` confirms it): every session
    /// of it ends, and this connection is logged out.
    pub async fn delete_account(&mut self, password: &str) -> Result<(), ClientError> {
        let req = wire::DeleteAccount {
            password: password.to_owned(),
        };
        self.call(&req).await.map(drop)
    }

    /// Takes one-to-one messages from friends only (or from anyone).
    pub async fn set_only_friends(&mut self, on: bool) -> Result<bool, ClientError> {
        let req = wire::Settings {
            only_friends: Some(on),
        };
        Ok(self.call(&req).await?.only_friends)
    }

    /// Tells the peer or the group that the user is typing (stored nowhere;
    /// not answered unless refused).
    pub async fn typing(&mut self, with: HistoryTarget) -> Result<(), ClientError> {
        let (toid, groupid) = target_ids(with);
        let frame = wire::frame(&wire::Typing { toid, groupid }, None);
        self.writer
            .send(Bytes::from(frame))
            .await
            .map_err(frame_error)
    }

    /// The user's devices, and which are online.
    pub async fn devices(&mut self) -> Result<Vec<replies::DeviceInfo>, ClientError> {
        Ok(self.call(&wire::Devices {}).await?.devices)
    }

    /// Logs another of the user's devices out (`""`: the classic device):
    /// its session ends with errno 63 and its resume tokens stop working.
    pub async fn device_logout(&mut self, device: &str) -> Result<(), ClientError> {
        let req = wire::DeviceLogout {
            device: device.to_owned(),
        };
        self.call(&req).await.map(drop)
    }

    pub async fn register(&mut self, name: &str, password: &str) -> Result<UserId, ClientError> {
        let req = wire::Register {
            name: name.to_owned(),
            password: password.to_owned(),
        };
        Ok(self.call(&req).await?.id)
    }

    pub async fn login(&mut self, id: UserId, password: &str) -> Result<LoginInfo, ClientError> {
        self.login_as(id, password, false).await
    }

    /// Logs in as a client that acknowledges what it receives: the server
    /// stores only acknowledged positions, so what this session received
    /// but never acknowledged comes again to the next one.
    pub async fn login_acking(
        &mut self,
        id: UserId,
        password: &str,
    ) -> Result<LoginInfo, ClientError> {
        self.login_as(id, password, true).await
    }

    async fn login_as(
        &mut self,
        id: UserId,
        password: &str,
        acks: bool,
    ) -> Result<LoginInfo, ClientError> {
        let req = wire::Login {
            device: self.device.clone(),
            id,
            password: password.to_owned(),
            acks,
        };
        Ok(self.call(&req).await?.into())
    }

    /// [`resume`](Self::resume) as a client that acknowledges.
    pub async fn resume_acking(&mut self, token: &str) -> Result<LoginInfo, ClientError> {
        self.resume_as(token, true).await
    }

    /// Acknowledges everything up to each position (cumulative per
    /// conversation). Not answered unless refused; a refusal arrives as a
    /// push (msgid 118).
    pub async fn ack(&mut self, positions: &[(HistoryTarget, Seq)]) -> Result<(), ClientError> {
        let acks = positions
            .iter()
            .map(|&(target, seq)| {
                let (toid, groupid) = target_ids(target);
                wire::AckEntry { toid, groupid, seq }
            })
            .collect();
        let frame = wire::frame(&wire::Ack { acks }, None);
        self.writer
            .send(Bytes::from(frame))
            .await
            .map_err(frame_error)
    }

    /// Logs in with the token of an earlier login (after a broken
    /// connection, say), without the password. The reply is a login's,
    /// offline messages included; the token stays the same.
    pub async fn resume(&mut self, token: &str) -> Result<LoginInfo, ClientError> {
        self.resume_as(token, false).await
    }

    async fn resume_as(&mut self, token: &str, acks: bool) -> Result<LoginInfo, ClientError> {
        let req = wire::Resume {
            device: self.device.clone(),
            token: token.to_owned(),
            acks,
        };
        Ok(self.call(&req).await?.into())
    }
}

/// The wire's `toid`/`groupid` pair for a conversation.
fn target_ids(target: HistoryTarget) -> (Option<UserId>, Option<GroupId>) {
    match target {
        HistoryTarget::User(u) => (Some(u), None),
        HistoryTarget::Group(g) => (None, Some(g)),
    }
}

fn frame_error(e: crate::protocol::codec::FrameError) -> ClientError {
    match e {
        crate::protocol::codec::FrameError::Io(e) => ClientError::Io(e),
        other => ClientError::Protocol(other.to_string()),
    }
}

impl Client {
    pub async fn logout(&mut self) -> Result<(), ClientError> {
        self.call(&wire::Logout {}).await.map(drop)
    }

    pub async fn chat(&mut self, to: UserId, msg: &str) -> Result<Sent, ClientError> {
        self.send(HistoryTarget::User(to), msg, None).await
    }

    pub async fn group_chat(&mut self, group: GroupId, msg: &str) -> Result<Sent, ClientError> {
        self.send(HistoryTarget::Group(group), msg, None).await
    }

    /// Sends with the client's own message id `cmid`: sending again with
    /// the same id (after a lost reply, say) stores nothing new and answers
    /// with the original's `seq` and `ts`.
    pub async fn send_with_id(
        &mut self,
        to: HistoryTarget,
        msg: &str,
        cmid: &str,
    ) -> Result<Sent, ClientError> {
        self.send(to, msg, Some(cmid)).await
    }

    async fn send(
        &mut self,
        to: HistoryTarget,
        msg: &str,
        cmid: Option<&str>,
    ) -> Result<Sent, ClientError> {
        let (msg, cmid) = (msg.to_owned(), cmid.map(str::to_owned));
        match to {
            HistoryTarget::User(toid) => self.call(&wire::OneChat { toid, msg, cmid }).await,
            HistoryTarget::Group(groupid) => {
                self.call(&wire::GroupChat { groupid, msg, cmid }).await
            }
        }
    }

    /// Asks `friendid` to be friends; true when a request is pending,
    /// false when they are friends now (it had asked too).
    pub async fn add_friend(&mut self, friendid: UserId) -> Result<bool, ClientError> {
        Ok(self.call(&wire::AddFriend { friendid }).await?.pending)
    }

    /// The user's pending friend requests, both ways.
    pub async fn friend_requests(&mut self) -> Result<replies::FriendRequestList, ClientError> {
        self.call(&wire::FriendRequests {}).await
    }

    /// Accepts or declines `userid`'s friend request.
    pub async fn answer_friend(
        &mut self,
        userid: UserId,
        accept: bool,
    ) -> Result<replies::FriendAnswered, ClientError> {
        self.call(&wire::FriendAnswer { userid, accept }).await
    }

    pub async fn del_friend(&mut self, friendid: UserId) -> Result<(), ClientError> {
        self.call(&wire::DelFriend { friendid }).await.map(drop)
    }

    pub async fn friends(&mut self) -> Result<Vec<Contact>, ClientError> {
        let list = self.call(&wire::ShowFriendList {}).await?;
        Ok(list.friends.into_iter().map(Contact::from).collect())
    }

    pub async fn create_group(&mut self, name: &str, desc: &str) -> Result<GroupId, ClientError> {
        self.create_group_as(name, desc, false).await
    }

    /// Creates a group, private (joined by invitation or approved request
    /// only) or public.
    pub async fn create_group_as(
        &mut self,
        name: &str,
        desc: &str,
        private: bool,
    ) -> Result<GroupId, ClientError> {
        let req = wire::CreateGroup {
            groupname: name.to_owned(),
            groupdesc: Some(desc.to_owned()),
            private,
        };
        Ok(self.call(&req).await?.groupid)
    }

    /// Invites `userid` into a group (owner or admin).
    pub async fn group_invite(
        &mut self,
        groupid: GroupId,
        userid: UserId,
    ) -> Result<replies::MemberChanged, ClientError> {
        self.call(&wire::GroupInvite { groupid, userid }).await
    }

    /// Asks to join a private group.
    pub async fn group_join_request(&mut self, groupid: GroupId) -> Result<(), ClientError> {
        self.call(&wire::GroupJoinRequest { groupid })
            .await
            .map(drop)
    }

    /// Without `userid`: answers one's invitation to the group. With it
    /// (owner or admin): answers that user's request to join.
    pub async fn group_answer(
        &mut self,
        groupid: GroupId,
        userid: Option<UserId>,
        accept: bool,
    ) -> Result<replies::MemberChanged, ClientError> {
        self.call(&wire::GroupAnswer {
            groupid,
            userid,
            accept,
        })
        .await
    }

    /// The owner makes `userid` "admin" or "normal", or hands the group
    /// over to it ("creator").
    pub async fn set_group_role(
        &mut self,
        groupid: GroupId,
        userid: UserId,
        role: &str,
    ) -> Result<replies::MemberChanged, ClientError> {
        self.call(&wire::SetGroupRole {
            groupid,
            userid,
            role: role.to_owned(),
        })
        .await
    }

    /// Removes a member (owner or admin).
    pub async fn group_remove(
        &mut self,
        groupid: GroupId,
        userid: UserId,
    ) -> Result<replies::MemberChanged, ClientError> {
        self.call(&wire::GroupRemove { groupid, userid }).await
    }

    /// Renames a group or changes its description (owner or admin).
    pub async fn group_update(
        &mut self,
        groupid: GroupId,
        name: Option<&str>,
        desc: Option<&str>,
    ) -> Result<(), ClientError> {
        self.call(&wire::GroupUpdate {
            groupid,
            groupname: name.map(str::to_owned),
            groupdesc: desc.map(str::to_owned),
        })
        .await
        .map(drop)
    }

    /// Dissolves a group (its owner).
    pub async fn group_dissolve(&mut self, groupid: GroupId) -> Result<(), ClientError> {
        self.call(&wire::GroupDissolve { groupid }).await.map(drop)
    }

    /// A group's members with their roles, and (to its owner and admins)
    /// its pending invitations and requests.
    pub async fn group_info(
        &mut self,
        groupid: GroupId,
    ) -> Result<replies::GroupDetails, ClientError> {
        self.call(&wire::GroupInfo { groupid }).await
    }

    pub async fn join_group(&mut self, groupid: GroupId) -> Result<(), ClientError> {
        self.call(&wire::AddGroup { groupid }).await.map(drop)
    }

    pub async fn leave_group(&mut self, groupid: GroupId) -> Result<(), ClientError> {
        self.call(&wire::DelGroup { groupid }).await.map(drop)
    }

    /// Up to `limit` messages of the conversation with a user or a group
    /// before sequence number `before` (newest when `None`), newest first.
    pub async fn history(
        &mut self,
        with: HistoryTarget,
        before: Option<Seq>,
        limit: Option<u32>,
    ) -> Result<Vec<Message>, ClientError> {
        let (toid, groupid) = target_ids(with);
        let req = wire::History {
            toid,
            groupid,
            before,
            limit: limit.map(u64::from),
        };
        let page = self.call(&req).await?;
        Ok(page.messages.into_iter().map(Message::from).collect())
    }
}
