//! A session's push queue: bounded, many senders (the hub, on any thread),
//! one receiver (the session's task).
//!
//! Written here rather than taken from `tokio::sync::mpsc` for its size:
//! every logged-in connection has one, mostly idle, and tokio's channel
//! allocates about 1 KiB when it is made (a cache-padded channel of 512
//! bytes and a first block of 32 slots), which was a sixth of an idle
//! connection's memory. This one is a mutex-guarded `VecDeque` and a
//! `Notify` in one small allocation; the deque allocates only once pushes
//! arrive, and gives back what a burst made it grow to.
//!
//! The queue also carries the two other things the hub and the session tell
//! each other, in the same allocation: that pushes were dropped on a full
//! queue (the session then catches up from the store), and that the session
//! has ended (its receiver is dropped once it has stored its positions; a
//! login replacing it waits for that).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::model::Push;

/// After a burst, a drained queue keeping room for more than this many
/// pushes gives it back.
const KEEP_WHEN_EMPTY: usize = 16;

struct Shared {
    queue: Mutex<VecDeque<Push>>,
    capacity: usize,
    senders: AtomicUsize,
    receiver_gone: AtomicBool,
    /// A push was dropped on a full queue since the receiver last asked.
    lagging: AtomicBool,
    /// Wakes the receiver; a notification sent while it is not waiting is
    /// kept for its next wait, so none is lost.
    ready: Notify,
    /// Wakes those waiting for the receiver to go ([`PushSender::ended`]).
    gone: Notify,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Push>> {
        // Nothing panics while holding the lock; a poisoned queue is still
        // a consistent one.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue holding at most `capacity` pushes.
pub fn push_queue(capacity: usize) -> (PushSender, PushReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
        lagging: AtomicBool::new(false),
        ready: Notify::new(),
        gone: Notify::new(),
    });
    (PushSender(shared.clone()), PushReceiver { shared })
}

/// Why a push was not queued.
#[derive(Debug)]
pub enum SendError {
    /// The queue holds its capacity: the session lags.
    Full(Push),
    /// The session has ended.
    Closed(Push),
}

/// The hub's end: never waits.
pub struct PushSender(Arc<Shared>);

impl PushSender {
    /// Queues `push` unless the queue is full or the session has ended.
    pub fn try_send(&self, push: Push) -> Result<(), SendError> {
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return Err(SendError::Closed(push));
        }
        {
            let mut queue = self.0.queue();
            if queue.len() >= self.0.capacity {
                return Err(SendError::Full(push));
            }
            queue.push_back(push);
        }
        self.0.ready.notify_one();
        Ok(())
    }

    /// Notes that a push was dropped on a full queue; true if none had
    /// been since the receiver last asked ([`PushReceiver::take_lagging`]).
    pub fn mark_lagging(&self) -> bool {
        !self.0.lagging.swap(true, Ordering::AcqRel)
    }

    /// Resolves once the receiver is gone: the session has ended.
    pub async fn ended(&self) {
        let gone = self.0.gone.notified();
        tokio::pin!(gone);
        // Registered before the flag is read, so a receiver dropped in
        // between still wakes this wait.
        gone.as_mut().enable();
        if self.0.receiver_gone.load(Ordering::Acquire) {
            return;
        }
        gone.await;
    }
}

impl Clone for PushSender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        PushSender(self.0.clone())
    }
}

impl Drop for PushSender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The receiver learns there will be no more.
            self.0.ready.notify_one();
        }
    }
}

impl std::fmt::Debug for PushSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSender")
            .field("queued", &self.0.queue().len())
            .finish()
    }
}

/// The session's end.
pub struct PushReceiver {
    shared: Arc<Shared>,
}

impl PushReceiver {
    /// The next push; `None` once every sender is gone and the queue is
    /// empty. Cancel-safe: a push is taken off the queue only when it is
    /// returned.
    pub async fn recv(&mut self) -> Option<Push> {
        loop {
            if let Some(push) = self.try_recv() {
                return Some(push);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                // A push queued just before the last sender went.
                return self.try_recv();
            }
            self.shared.ready.notified().await;
        }
    }

    /// Whether pushes were dropped on a full queue since last asked (the
    /// session then reads what it missed from the store).
    pub fn take_lagging(&self) -> bool {
        self.shared.lagging.swap(false, Ordering::AcqRel)
    }

    /// The next push if one is queued.
    pub fn try_recv(&mut self) -> Option<Push> {
        let mut queue = self.shared.queue();
        let push = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEEP_WHEN_EMPTY {
            *queue = VecDeque::new();
        }
        push
    }
}

impl Drop for PushReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        // What was queued goes now, not when the last sender does.
        let drained = std::mem::take(&mut *self.shared.queue());
        drop(drained);
        self.shared.gone.notify_waiters();
    }
}

impl std::fmt::Debug for PushReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushReceiver")
            .field("queued", &self.shared.queue().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn notice(n: u8) -> Push {
        Push::Notice(Arc::new(bytes::Bytes::from(vec![n])))
    }

    fn number(p: Push) -> u8 {
        match p {
            Push::Notice(b) => b[0],
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn pushes_arrive_in_order_up_to_the_capacity_and_then_full() {
        let (tx, mut rx) = push_queue(3);
        for n in 0..3 {
            tx.try_send(notice(n)).expect("room");
        }
        assert!(matches!(tx.try_send(notice(9)), Err(SendError::Full(_))));
        for n in 0..3 {
            assert_eq!(rx.recv().await.map(number), Some(n));
        }
        tx.try_send(notice(3)).expect("room again");
        assert_eq!(rx.recv().await.map(number), Some(3));
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_push_from_another_task() {
        let (tx, mut rx) = push_queue(8);
        let waiting = tokio::spawn(async move { rx.recv().await.map(number) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(notice(7)).expect("room");
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.expect("woke").expect("task"), Some(7));
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_nothing() {
        let (tx, mut rx) = push_queue(8);
        // A wait given up (another select branch won) takes nothing.
        let gave_up = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(gave_up.is_err());
        tx.try_send(notice(1)).expect("room");
        tx.try_send(notice(2)).expect("room");
        assert_eq!(rx.recv().await.map(number), Some(1));
        assert_eq!(rx.recv().await.map(number), Some(2));
    }

    #[tokio::test]
    async fn the_receiver_hears_the_end_once_every_sender_is_gone() {
        let (tx, mut rx) = push_queue(8);
        let other = tx.clone();
        tx.try_send(notice(1)).expect("room");
        drop(tx);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.map(number);
            (first, rx.recv().await.map(number))
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(other);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.expect("woke").expect("task"), (Some(1), None));
    }

    #[tokio::test]
    async fn a_gone_receiver_refuses_pushes_and_frees_what_was_queued() {
        let (tx, rx) = push_queue(8);
        let frame = Arc::new(bytes::Bytes::from_static(b"x"));
        tx.try_send(Push::Notice(frame.clone())).expect("room");
        drop(rx);
        assert_eq!(Arc::strong_count(&frame), 1, "the queued push was dropped");
        assert!(matches!(tx.try_send(notice(2)), Err(SendError::Closed(_))));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_back_what_a_burst_grew() {
        let (tx, mut rx) = push_queue(1024);
        for n in 0..200 {
            tx.try_send(notice(n as u8)).expect("room");
        }
        while rx.try_recv().is_some() {}
        assert!(rx.shared.queue().capacity() <= KEEP_WHEN_EMPTY);
    }

    #[tokio::test]
    async fn a_sender_hears_when_the_session_has_ended() {
        let (tx, rx) = push_queue(8);
        let other = tx.clone();
        let waiting = tokio::spawn(async move { other.ended().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the session is still there");
        drop(rx);
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(ended.is_ok(), "woken when the receiver went");
        // Asked after the end, it answers at once.
        let at_once = tokio::time::timeout(Duration::from_millis(100), tx.ended()).await;
        assert!(at_once.is_ok());
    }

    #[test]
    fn dropped_pushes_are_told_to_the_receiver_once() {
        let (tx, rx) = push_queue(1);
        assert!(!rx.take_lagging());
        assert!(tx.mark_lagging(), "the first drop is news");
        assert!(!tx.mark_lagging(), "the second is not");
        assert!(rx.take_lagging() && !rx.take_lagging());
        assert!(tx.mark_lagging(), "news again after the receiver asked");
    }
}
