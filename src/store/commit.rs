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
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::stage::{Stage, WriteGate};
use super::{Reader, StoreError, StoreResult};
use crate::model::{ChatMessage, Conversation, NewMessage, Seq};

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
    /// Move a device's delivery cursors forward (never back).
    Cursors {
        reader: Reader,
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

/// The same for a backend whose driver blocks (SQLite through rusqlite): it
/// runs on a thread of its own, so a whole batch costs one hand-off there
/// and one back, not a round trip per statement.
pub(super) trait BlockingBatchWriter: Send + 'static {
    /// As [`BatchWriter::write_batch`], blocking the writer thread.
    fn write_batch(
        &mut self,
        batch: &[WriteOp],
    ) -> StoreResult<Vec<Option<StoreResult<ChatMessage>>>>;

    /// A writer that stages (`super::stage`): what it shares with readers.
    fn stage(&self) -> Option<Arc<Stage>> {
        None
    }

    /// Whether staged writes should be committed now.
    fn due(&self) -> bool {
        false
    }

    /// Commits what is staged.
    fn flush(&mut self) {}
}

/// Who waits for an op: nobody for a background cursor save.
type Reply = Option<oneshot::Sender<StoreResult<Option<ChatMessage>>>>;

/// One entry of the queue.
enum Job {
    Op(WriteOp, Reply),
    /// Commit what is staged (a reader waits for it: [`Stage::settle`]).
    Settle,
    /// Time to look whether staged writes are due.
    Tick,
    /// Commit what is queued, then stop.
    Close,
}

/// The handle the store keeps: queues writes for its writer.
#[derive(Debug)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Job>,
    tasks: TaskTracker,
    stage: Option<Arc<Stage>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl GroupCommit {
    /// Starts the writer task around `writer`.
    pub(super) fn start(mut writer: impl BatchWriter) -> Self {
        let (queue, mut rx) = mpsc::channel(4 * MAX_BATCH);
        let tasks = TaskTracker::new();
        tasks.spawn(async move {
            let mut batch = Batch::default();
            while batch.fill(rx.recv().await, &mut rx) {
                if batch.ops.is_empty() {
                    continue;
                }
                let started = std::time::Instant::now();
                let result = writer.write_batch(&batch.ops).await;
                batch.answer(result, started);
            }
        });
        tasks.close();
        GroupCommit {
            queue,
            tasks,
            stage: None,
        }
    }

    /// Starts a writer thread around `writer`.
    pub(super) fn start_blocking(
        mut writer: impl BlockingBatchWriter,
        name: &str,
    ) -> std::io::Result<Self> {
        let (queue, mut rx) = mpsc::channel(4 * MAX_BATCH);
        let tasks = TaskTracker::new();
        let stage = writer.stage();
        // The tracker counts the thread until the token drops with it.
        let token = tasks.token();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _token = token;
                let mut batch = Batch::default();
                while batch.fill(rx.blocking_recv(), &mut rx) {
                    if !batch.ops.is_empty() {
                        let started = std::time::Instant::now();
                        let result = writer.write_batch(&batch.ops);
                        batch.answer(result, started);
                    }
                    if batch.settle || writer.due() {
                        writer.flush();
                    }
                }
                writer.flush();
            })?;
        if let Some(stage) = &stage {
            // The writer thread sleeps in the queue; this wakes it when a
            // staged transaction may be due. It ends with the queue.
            let weak = queue.downgrade();
            let every = stage.every;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(queue) = weak.upgrade() else { break };
                    if let Err(mpsc::error::TrySendError::Closed(_)) = queue.try_send(Job::Tick) {
                        break;
                    }
                }
            });
        }
        tasks.close();
        Ok(GroupCommit {
            queue,
            tasks,
            stage,
        })
    }

    /// Returns once every write acknowledged before the call is visible to
    /// the store's other connections (at once unless the writer stages).
    pub(super) async fn settle(&self) -> StoreResult<()> {
        let Some(stage) = &self.stage else {
            return Ok(());
        };
        let ask = || async {
            self.queue
                .send(Job::Settle)
                .await
                .map_err(|_| StoreError::Unavailable("store is closed".into()))
        };
        stage.settle(ask, WRITE_WAIT).await
    }

    /// Before another connection writes: the writer commits what it staged
    /// and, until the guard drops, commits after every batch, so it does not
    /// hold the database's write lock while that connection waits for it.
    pub(super) async fn write_gate(&self) -> StoreResult<Option<WriteGate>> {
        let Some(stage) = &self.stage else {
            return Ok(None);
        };
        let gate = stage.enter_writer();
        self.settle().await?;
        Ok(Some(gate))
    }

    async fn submit(&self, op: WriteOp) -> StoreResult<Option<ChatMessage>> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Job::Op(op, Some(done)))
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
        reader: &Reader,
        positions: Vec<(Conversation, Seq)>,
    ) -> StoreResult<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let reader = reader.clone();
        self.submit(WriteOp::Cursors { reader, positions })
            .await
            .map(drop)
    }

    /// Queues a cursor move without waiting for it: it rides in the next
    /// batch. Gives the positions back when the queue is full or closed.
    pub(super) fn queue_cursors(
        &self,
        reader: &Reader,
        positions: Vec<(Conversation, Seq)>,
    ) -> Result<(), Vec<(Conversation, Seq)>> {
        if positions.is_empty() {
            return Ok(());
        }
        let reader = reader.clone();
        self.queue
            .try_send(Job::Op(WriteOp::Cursors { reader, positions }, None))
            .map_err(|e| match e.into_inner() {
                Job::Op(WriteOp::Cursors { positions, .. }, _) => positions,
                _ => Vec::new(),
            })
    }

    /// Stops taking writes, commits what is queued, and waits for the writer.
    pub(super) async fn close(&self) {
        let _ = self.queue.send(Job::Close).await;
        if tokio::time::timeout(CLOSE_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("queued writes did not finish; some cursor moves may be lost");
        }
    }
}

/// The ops of one transaction and who waits for them.
#[derive(Default)]
struct Batch {
    ops: Vec<WriteOp>,
    replies: Vec<Reply>,
    /// A reader asked for a commit.
    settle: bool,
}

impl Batch {
    /// Starts a batch with `first` and whatever else is queued (up to
    /// [`MAX_BATCH`]). After a [`Job::Close`] the queue takes nothing new but
    /// what it holds is still written. False once there is nothing left.
    /// A batch may hold no ops (only a [`Job::Settle`] or [`Job::Tick`]).
    fn fill(&mut self, first: Option<Job>, rx: &mut mpsc::Receiver<Job>) -> bool {
        self.ops.clear();
        self.replies.clear();
        self.settle = false;
        let mut next = first;
        let mut any = false;
        loop {
            match next {
                Some(Job::Op(op, reply)) => {
                    self.ops.push(op);
                    self.replies.push(reply);
                }
                Some(Job::Settle) => self.settle = true,
                Some(Job::Tick) => {}
                Some(Job::Close) => rx.close(),
                None => break,
            }
            any = true;
            if self.ops.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        any
    }

    fn answer(
        &mut self,
        result: StoreResult<Vec<Option<StoreResult<ChatMessage>>>>,
        started: std::time::Instant,
    ) {
        use crate::metrics::METRICS;
        crate::metrics::observe_duration(&METRICS.store_commit, started.elapsed());
        METRICS.store_batch_ops.observe(self.ops.len() as f64);
        if result.is_err() {
            crate::metrics::inc(&METRICS.store_errors);
        }
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in self.replies.drain(..).zip(outcomes) {
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome.transpose());
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = self.ops.len(), "write batch failed to commit");
                for reply in self.replies.drain(..).flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
