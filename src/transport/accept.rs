//! The one accept loop every listener runs (chat over TCP and TLS, the web
//! listener, metrics).
//!
//! It accepts until shutdown and hands each connection to the listener's
//! handler, whose work runs as a task of the node's tracker, so that
//! shutdown waits for it. An accept error (EMFILE and friends) never ends
//! the loop: it waits for descriptors to free up, 5 ms doubling up to 1 s,
//! keeps serving the connections it has, and a shutdown cuts the wait
//! short.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BACKOFF_FIRST: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts from `listener` until `shutdown`; `handle` decides what to do
/// with each connection, and the future it returns (if any) runs as a task
/// of `tasks`. `what` names the listener in logs.
pub async fn accept_each<H, F>(
    what: &'static str,
    listener: &TcpListener,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    mut handle: H,
) where
    H: FnMut(TcpStream, SocketAddr) -> Option<F>,
    F: Future<Output = ()> + Send + 'static,
{
    let mut backoff = BACKOFF_FIRST;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_FIRST;
                if let Some(work) = handle(stream, peer) {
                    tasks.spawn(work);
                }
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, ?backoff, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_connection_is_handled_as_a_tracked_task_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let accepting = {
            let (tasks, shutdown) = (tasks.clone(), shutdown.clone());
            tokio::spawn(async move {
                accept_each("test", &listener, &tasks, &shutdown, |_stream, peer| {
                    let tx = tx.clone();
                    Some(async move {
                        let _ = tx.send(peer);
                    })
                })
                .await;
            })
        };
        for _ in 0..3 {
            let _c = TcpStream::connect(addr).await.expect("connect");
            rx.recv().await.expect("handled");
        }
        shutdown.cancel();
        accepting.await.expect("loop ends at shutdown");
        tasks.close();
        tasks.wait().await;
    }
}
