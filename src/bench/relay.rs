//! `chatbench relay`: the floor every figure is compared against.
//!
//! A bare in-memory relay that speaks just enough of the classic frames for
//! the benchmark to run against it unchanged: REG and LOGIN are answered
//! (any password, ids handed out in order), a ONE_CHAT_MSG frame is copied
//! to the receiver's socket if it is logged in here. No storage, no acks, no
//! checks: one read and one write per message. Whatever the real server costs
//! above this is what storing, numbering, acknowledging and checking cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use crate::protocol::codec::FrameCodec;
use crate::protocol::{Reply, msgid, replies};

#[derive(Default)]
struct Relay {
    next_id: AtomicI64,
    online: Mutex<HashMap<i64, mpsc::UnboundedSender<Bytes>>>,
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
    let relay = Arc::new(Relay::default());
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
                        Some(Reply::ok_with(msgid::REG_ACK, &replies::Registered { id, name }))
                    }
                    msgid::LOGIN => {
                        let id = f.id.unwrap_or(0);
                        if let Ok(mut online) = relay.online.lock() {
                            online.insert(id, tx.clone());
                        }
                        me = Some(id);
                        let reply = replies::LoggedIn {
                            id,
                            name: "relay".into(),
                            offlinemsg: Vec::new(),
                            friends: Vec::new(),
                            groups: Vec::new(),
                            token: None,
                            acks: false,
                        };
                        Some(Reply::ok_with(msgid::LOGIN_ACK, &reply))
                    }
                    msgid::ONE_CHAT => {
                        let to = f.toid.unwrap_or(0);
                        let peer = relay.online.lock().ok().and_then(|o| o.get(&to).cloned());
                        if let Some(peer) = peer {
                            let _ = peer.send(frame.clone());
                        }
                        None
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
