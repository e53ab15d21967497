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
//!
//! With a SQLite database instead ([`run_durable_sqlite`]) it is the floor
//! for a server that keeps its messages in SQLite, as `chatserver` does: the
//! same group commit, but each message is a row of a table keyed by
//! (conversation, number), the layout that makes history and offline reads
//! one range scan, in a WAL database with `synchronous = FULL`. What
//! `chatserver` costs above this is its own work, not SQLite's.

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
    log: Option<std::sync::mpsc::Sender<Append>>,
}

/// One message for the log's writer: the frame, its sender and receiver,
/// and who waits for its number.
struct Append {
    frame: Bytes,
    from: i64,
    to: i64,
    done: oneshot::Sender<u64>,
}

/// Size of the log file: written with zeros once, then overwritten from
/// the start whenever its end is reached, so appends never change the
/// file's size (which would make every `fdatasync` a journal commit).
const LOG_BYTES: u64 = 64 << 20;

/// Appends messages to `file` on a thread of its own: everything that
/// arrived while the last batch was syncing is written in one `pwrite` and
/// synced with one `fdatasync`, then every sender in the batch is answered
/// with its message's number.
fn log_writer(file: std::fs::File, jobs: std::sync::mpsc::Receiver<Append>) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut offset = 0u64;
    let mut number = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    group_commit(jobs, |waiting| {
        buf.clear();
        for job in waiting.iter() {
            let len = u32::try_from(job.frame.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&job.frame);
        }
        if offset + buf.len() as u64 > LOG_BYTES {
            offset = 0;
        }
        file.write_all_at(&buf, offset)?;
        file.sync_data()?;
        offset += buf.len() as u64;
        Ok(waiting
            .iter()
            .map(|_| {
                number += 1;
                number
            })
            .collect())
    })
}

/// The writer thread's loop: takes everything that queued up while the
/// last batch was written, has `write` make it durable, then answers every
/// waiter with the number `write` gave its message.
fn group_commit(
    jobs: std::sync::mpsc::Receiver<Append>,
    mut write: impl FnMut(&[Append]) -> std::io::Result<Vec<u64>>,
) -> std::io::Result<()> {
    let mut waiting = Vec::new();
    while let Ok(first) = jobs.recv() {
        waiting.push(first);
        while let Ok(more) = jobs.try_recv() {
            waiting.push(more);
        }
        let numbers = write(&waiting)?;
        for (job, number) in waiting.drain(..).zip(numbers) {
            let _ = job.done.send(number);
        }
    }
    Ok(())
}

/// The SQLite floor's writer: one transaction per batch, each message a
/// row numbered within its conversation (counters kept in memory, as
/// `chatserver`'s writer keeps them).
///
/// With a log (`staged`), the design to beat it: each batch is made
/// durable by one append and `fdatasync` to the log, as in the flat
/// durable relay, and acknowledged; the rows reach SQLite in one larger
/// transaction every `every`, so a conversation's page is written once per
/// many messages instead of once per message. Once that transaction has
/// committed (synchronously), the log starts again from its beginning.
fn sqlite_writer(
    conn: rusqlite::Connection,
    jobs: std::sync::mpsc::Receiver<Append>,
    staged: Option<(std::fs::File, std::time::Duration)>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut conn = conn;
    let mut last: HashMap<(i64, i64), u64> = HashMap::new();
    let start = std::time::Instant::now();
    let mut pending: Vec<(String, i64, i64, String, i64)> = Vec::new();
    let mut applied = std::time::Instant::now();
    let mut offset = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    group_commit(jobs, |waiting| {
        let now = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
        let mut numbers = Vec::with_capacity(waiting.len());
        buf.clear();
        for job in waiting {
            let key = (job.from.min(job.to), job.from.max(job.to));
            let seq = last.entry(key).or_insert(0);
            *seq += 1;
            numbers.push(*seq);
            let conv = format!("d:{}:{}", key.0, key.1);
            let body = String::from_utf8_lossy(&job.frame).into_owned();
            if staged.is_some() {
                let len = u32::try_from(job.frame.len()).unwrap_or(u32::MAX);
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&seq.to_le_bytes());
                buf.extend_from_slice(conv.as_bytes());
                buf.extend_from_slice(&job.frame);
            }
            pending.push((conv, *seq as i64, job.from, body, now));
        }
        if let Some((log, _)) = &staged {
            if offset + buf.len() as u64 > LOG_BYTES {
                return Err(std::io::Error::other("staging log full"));
            }
            log.write_all_at(&buf, offset)?;
            log.sync_data()?;
            offset += buf.len() as u64;
        }
        let due = match &staged {
            Some((_, every)) => applied.elapsed() >= *every,
            None => true,
        };
        if due {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(std::io::Error::other)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO messages (conv, seq, sender_id, body, sent_at) VALUES (?, ?, ?, ?, ?)",
                    )
                    .map_err(std::io::Error::other)?;
                for (conv, seq, from, body, at) in pending.drain(..) {
                    insert
                        .execute(rusqlite::params![conv, seq, from, body, at])
                        .map_err(std::io::Error::other)?;
                }
            }
            tx.commit().map_err(std::io::Error::other)?;
            applied = std::time::Instant::now();
            offset = 0;
        }
        Ok(numbers)
    })
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
    let file = zeroed_log(path)?;
    serve_logged(listener, move |jobs| log_writer(file, jobs)).await
}

/// Creates the log file at `path`, [`LOG_BYTES`] of zeros, synced.
fn zeroed_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
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
    Ok(file)
}

/// Serves `listener` as the SQLite floor, its database at `path` (created
/// afresh).
///
/// With `apply_every`, messages are made durable in a log beside it
/// (`PATH.log`) and reach the database in one transaction per interval
/// ([`sqlite_writer`]).
pub async fn run_durable_sqlite(
    listener: TcpListener,
    path: &std::path::Path,
    apply_every: Option<std::time::Duration>,
) -> std::io::Result<()> {
    let staged = match apply_every {
        Some(every) => {
            let mut log = path.as_os_str().to_owned();
            log.push(".log");
            Some((zeroed_log(std::path::Path::new(&log))?, every))
        }
        None => None,
    };
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let conn = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         CREATE TABLE messages (conv TEXT NOT NULL, seq INTEGER NOT NULL, \
         sender_id INTEGER NOT NULL, body TEXT NOT NULL, sent_at INTEGER NOT NULL, \
         PRIMARY KEY (conv, seq)) WITHOUT ROWID;",
    )
    .map_err(std::io::Error::other)?;
    serve_logged(listener, move |jobs| sqlite_writer(conn, jobs, staged)).await
}

/// Starts `writer` on a thread of its own and serves `listener`, every
/// message going through it before it is acknowledged and forwarded.
async fn serve_logged(
    listener: TcpListener,
    writer: impl FnOnce(std::sync::mpsc::Receiver<Append>) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, jobs) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("relay-log".into())
        .spawn(move || {
            if let Err(e) = writer(jobs) {
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
                        let to = f.toid.unwrap_or(0);
                        if let Some(log) = &relay.log {
                            let (done, stored) = oneshot::channel();
                            let from = me.unwrap_or(0);
                            if log.send(Append { frame: frame.clone(), from, to, done }).is_err() {
                                break;
                            }
                            let Ok(seq) = stored.await else { break };
                            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                            let sent = replies::Sent { seq: chat::model::Seq(seq), ts: 0, time: String::new() };
                            ack = Some(Reply::ok_with(msgid::ack_for(msgid::ONE_CHAT), &sent));
                        }
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
