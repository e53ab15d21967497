//! `chatbench relay`: the floor every figure is compared against.
//!
//! A bare in-memory relay that speaks just enough of the classic frames for
//! the benchmark to run against it unchanged: REG and LOGIN are answered
//! (any password, ids handed out in order), a ONE_CHAT_MSG frame is copied
//! to the receiver's socket if it is logged in here. No storage, no acks, no
//! checks: one read and one write per message. Whatever the real server costs
//! above this is what storing, numbering, acknowledging and checking cost.
//!
//! With a log file ([`run_durable`]) it is the floor for any server that
//! keeps the promise: each message is appended to the log and made
//! durable (`fdatasync`, shared by every message that arrived meanwhile: a
//! group commit) before it is acknowledged to its sender and forwarded. No
//! index, no numbering per conversation, no delivery positions, no checks:
//! the least a durable, acknowledging relay can do.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use chat::protocol::codec::FrameCodec;
use chat::protocol::{Reply, msgid, replies};

#[derive(Default)]
struct Relay {
    next_id: AtomicI64,
    online: Mutex<HashMap<i64, mpsc::UnboundedSender<Bytes>>>,
    /// The durable log's writer thread, if there is one.
    log: Option<std::sync::mpsc::Sender<(Bytes, oneshot::Sender<u64>)>>,
}

/// Size of the log file: written with zeros once, then overwritten from
/// the start whenever its end is reached, so appends never change the
/// file's size (which would make every `fdatasync` a journal commit).
const LOG_BYTES: u64 = 64 << 20;

/// Appends messages to `file` on a thread of its own: everything that
/// arrived while the last batch was syncing is written in one `pwrite` and
/// synced with one `fdatasync`, then every sender in the batch is answered
/// with its message's number.
fn log_writer(
    file: std::fs::File,
    jobs: std::sync::mpsc::Receiver<(Bytes, oneshot::Sender<u64>)>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut offset = 0u64;
    let mut number = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut waiting = Vec::new();
    while let Ok(first) = jobs.recv() {
        waiting.push(first);
        while let Ok(more) = jobs.try_recv() {
            waiting.push(more);
        }
        buf.clear();
        for (frame, _) in &waiting {
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(frame);
        }
        if offset + buf.len() as u64 > LOG_BYTES {
            offset = 0;
        }
        file.write_all_at(&buf, offset)?;
        file.sync_data()?;
        offset += buf.len() as u64;
        for (_, done) in waiting.drain(..) {
            number += 1;
            let _ = done.send(number);
        }
    }
    Ok(())
}

/// The fields the relay looks at.
#[derive(Deserialize)]
struct Frame {
    msgid: i64,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    toid: Option<i64>,
    #[serde(default)]
    reqid: Option<serde_json::Value>,
}

/// Serves `listener` until the process ends.
pub async fn run(listener: TcpListener) -> std::io::Result<()> {
    serve_all(listener, Relay::default()).await
}

/// Serves `listener` as the durable relay, its log at `path` (created, and
/// filled with [`LOG_BYTES`] of zeros first).
pub async fn run_durable(listener: TcpListener, path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(LOG_BYTES >> 20) {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    let (tx, jobs) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("relay-log".into())
        .spawn(move || {
            if let Err(e) = log_writer(file, jobs) {
                eprintln!("relay log failed: {e}");
                std::process::exit(1);
            }
        })?;
    let relay = Relay {
        log: Some(tx),
        ..Relay::default()
    };
    serve_all(listener, relay).await
}

async fn serve_all(listener: TcpListener, relay: Relay) -> std::io::Result<()> {
    let relay = Arc::new(relay);
    loop {
        let (stream, _) = listener.accept().await?;
        let relay = relay.clone();
        tokio::spawn(async move { serve(relay, stream).await });
    }
}

async fn serve(relay: Arc<Relay>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, FrameCodec::new(1 << 20));
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let mut me = None;
    loop {
        tokio::select! {
            frame = conn.next() => {
                let Some(Ok(frame)) = frame else { break };
                let Ok(f) = serde_json::from_slice::<Frame>(&frame) else { continue };
                let reply = match f.msgid {
                    msgid::REG => {
                        let id = relay.next_id.fetch_add(1, Ordering::Relaxed) + 1;
                        let name = "relay".to_owned();
                        Some(Reply::ok_with(msgid::REG_ACK, &replies::Registered {
                            id: chat::model::UserId(id),
                            name,
                        }))
                    }
                    msgid::LOGIN => {
                        let id = f.id.unwrap_or(0);
                        if let Ok(mut online) = relay.online.lock() {
                            online.insert(id, tx.clone());
                        }
                        me = Some(id);
                        let reply = replies::LoggedIn {
                            id: chat::model::UserId(id),
                            name: "relay".into(),
                            offlinemsg: Vec::new(),
                            friends: Vec::new(),
                            groups: Vec::new(),
                            token: None,
                            acks: false,
                            more: false,
                            device: None,
                            devices: Vec::new(),
                            reads: Vec::new(),
                            blocked: Vec::new(),
                            only_friends: false,
                            requests: Vec::new(),
                            invitations: Vec::new(),
                        };
                        Some(Reply::ok_with(msgid::LOGIN_ACK, &reply))
                    }
                    msgid::ONE_CHAT => {
                        let mut ack = None;
                        if let Some(log) = &relay.log {
                            let (done, stored) = oneshot::channel();
                            if log.send((frame.clone(), done)).is_err() {
                                break;
                            }
                            let Ok(seq) = stored.await else { break };
                            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                            let sent = replies::Sent { seq: chat::model::Seq(seq), ts: 0, time: String::new() };
                            ack = Some(Reply::ok_with(msgid::ack_for(msgid::ONE_CHAT), &sent));
                        }
                        let to = f.toid.unwrap_or(0);
                        let peer = relay.online.lock().ok().and_then(|o| o.get(&to).cloned());
                        if let Some(peer) = peer {
                            let _ = peer.send(frame);
                        }
                        ack
                    }
                    _ => None,
                };
                if let Some(reply) = reply
                    && conn.send(reply.reqid(f.reqid.as_ref()).to_bytes()).await.is_err()
                {
                    break;
                }
            }
            Some(out) = rx.recv() => {
                if conn.feed(out).await.is_err() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    if conn.feed(more).await.is_err() {
                        break;
                    }
                }
                if conn.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    if let (Some(id), Ok(mut online)) = (me, relay.online.lock()) {
        online.remove(&id);
    }
}
