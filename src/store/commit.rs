//! Group commit: many concurrent appends and cursor moves, one transaction.
//!
//! Every session that sends a message waits for it to be durable, but they
//! do not each pay for a transaction: a single writer task takes whatever has
//! queued up (up to [`MAX_BATCH`] operations), hands the batch to the
//! backend's [`BatchWriter`] to commit at once, and answers every waiter.
//! Under load hundreds of messages share one commit (and one fsync); when idle
//! a message costs one small transaction. The backends only say how to write
//! a batch; the queueing, batching, answering and orderly close live here.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{StoreError, StoreResult};
use crate::model::{ChatMessage, Conversation, NewMessage, Seq, UserId};

/// Most operations folded into one transaction.
pub(super) const MAX_BATCH: usize = 512;
/// How long a caller waits for its write before giving up with an error
/// (the database may be stalled; the caller must not hang with it).
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);
/// How long closing waits for queued writes.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// One queued write.
pub(super) enum WriteOp {
    /// Store a message and give it the next sequence number.
    Append(NewMessage),
    /// Move a user's delivery cursors forward (never back).
    Cursors {
        user: UserId,
        positions: Vec<(Conversation, Seq)>,
    },
}

/// What a backend does with a batch: commit all of it in one transaction.
pub(super) trait BatchWriter: Send + 'static {
    /// Writes `batch` atomically. On success, one entry per op: the stored
    /// message (or why that message alone was refused, e.g. an unknown
    /// receiver) for an append, `None` for a cursor move. An `Err` fails
    /// every op of the batch.
    fn write_batch(
        &mut self,
        batch: &[WriteOp],
    ) -> impl Future<Output = StoreResult<Vec<Option<StoreResult<ChatMessage>>>>> + Send;
}

type Reply = oneshot::Sender<StoreResult<Option<ChatMessage>>>;

/// The handle the store keeps: queues writes for its writer task.
#[derive(Debug)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<(WriteOp, Reply)>,
    closing: CancellationToken,
    tasks: TaskTracker,
}

impl GroupCommit {
    /// Starts the writer task around `writer`.
    pub(super) fn start(writer: impl BatchWriter) -> Self {
        let (queue, rx) = mpsc::channel(4 * MAX_BATCH);
        let closing = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(run(writer, rx, closing.clone()));
        tasks.close();
        GroupCommit {
            queue,
            closing,
            tasks,
        }
    }

    async fn submit(&self, op: WriteOp) -> StoreResult<Option<ChatMessage>> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send((op, done))
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".into()))?;
        match tokio::time::timeout(WRITE_WAIT, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable("store writer stopped".into())),
            Err(_) => Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            )),
        }
    }

    /// Stores `msg` durably; returns it with its sequence number and time.
    pub(super) async fn append(&self, msg: NewMessage) -> StoreResult<ChatMessage> {
        self.submit(WriteOp::Append(msg))
            .await?
            .ok_or_else(|| StoreError::Unavailable("message not written".into()))
    }

    /// Moves cursors forward; returns when the move is durable.
    pub(super) async fn advance_cursors(
        &self,
        user: UserId,
        positions: Vec<(Conversation, Seq)>,
    ) -> StoreResult<()> {
        if positions.is_empty() {
            return Ok(());
        }
        self.submit(WriteOp::Cursors { user, positions })
            .await
            .map(drop)
    }

    /// Stops taking writes, commits what is queued, and waits for the writer.
    pub(super) async fn close(&self) {
        self.closing.cancel();
        if tokio::time::timeout(CLOSE_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("queued writes did not finish; some cursor moves may be lost");
        }
    }
}

async fn run(
    mut writer: impl BatchWriter,
    mut rx: mpsc::Receiver<(WriteOp, Reply)>,
    closing: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            op = rx.recv() => op,
            _ = closing.cancelled() => {
                // Stop taking new work, but finish what is queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut ops = vec![first.0];
        let mut replies = vec![first.1];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((op, reply)) => {
                    ops.push(op);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        match writer.write_batch(&ops).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome.transpose());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = ops.len(), "write batch failed to commit");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
