//! What wakes the relay's loops: the commits announced on the change feed, collapsed.
//!
//! - **Once more, not once per commit.** A loop that is busy while commits arrive runs one
//!   more cycle when it is done, which reads everything they wrote. (A feed receiver per loop
//!   queued every commit and replayed each as a cycle of its own: with four dispatch loops,
//!   every order placed cost four leases, three of them finding nothing, each a transaction of
//!   four round trips to the database.)
//! - **One loop for new rows, the others for a backlog.** A new outbox row wakes the first
//!   dispatch loop only; the other `--batches-in-flight` loops are woken when a batch comes
//!   back full (more is due than one batch holds), each full batch waking one more. Rows
//!   committed while the first loop is busy go out together in its next lease, where idle
//!   loops would each have leased one or two of them: at 500 orders/s on Postgres, four loops
//!   woken by every commit ran 3,257 lease transactions for 5,000 orders, and this wake-up 855,
//!   with the machine 89–92 % busy instead of 96 % and scheduled → adapter p50 17–22 instead of
//!   25–27 ms (`docs/benchmarks.md`). A backlog still has every loop overlapping
//!   batches, so the relay drains at its bare limit.
//! - **Events in batches.** Publishing history events is off the orders' way to their
//!   partners, and every status change of every order is a commit: the publishing loop runs
//!   at most once per `--publish-interval` (100 ms) unless its last batch was full, so a busy
//!   system publishes many events per cycle instead of a cycle (a transaction of eight round
//!   trips) per event. An event reaches the order-events topic at most that much later.

use tokio::sync::{
    Notify,
    broadcast::{self, error::RecvError},
};
use tokio_util::sync::CancellationToken;
use waybill_service_kit::db::Change;

/// The relay's loops' wake-ups.
#[derive(Debug, Default)]
pub(super) struct Wakeups {
    /// New outbox rows: wakes the first dispatch loop.
    pub(super) dispatch: Notify,
    /// A batch came back full: wakes one of the other dispatch loops.
    pub(super) backlog: Notify,
    /// Any commit (new rows, new history events): wakes the publishing loop.
    pub(super) publish: Notify,
}

impl Wakeups {
    /// Turns the feed's changes into wake-ups until `shutdown` (or until the feed closes: the
    /// loops poll alone then).
    pub(super) async fn forward(
        &self,
        mut feed: broadcast::Receiver<Change>,
        shutdown: &CancellationToken,
    ) {
        loop {
            let change = tokio::select! {
                () = shutdown.cancelled() => return,
                change = feed.recv() => change,
            };
            match change {
                Ok(Change::Outbox) => {
                    self.dispatch.notify_one();
                    self.publish.notify_one();
                }
                Ok(Change::OrderStatus(_)) => self.publish.notify_one(),
                // Missed changes may have been anything: look.
                Err(RecvError::Lagged(_)) => {
                    self.dispatch.notify_one();
                    self.publish.notify_one();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    /// Whether `notify` has a wake-up for its next waiter.
    async fn woken(notify: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), notify.notified())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn commits_while_busy_wake_a_loop_once_and_status_changes_only_publishing() {
        let (sender, receiver) = broadcast::channel(16);
        let wakeups = Arc::new(Wakeups::default());
        let shutdown = CancellationToken::new();
        let forwarding = tokio::spawn({
            let (wakeups, shutdown) = (Arc::clone(&wakeups), shutdown.clone());
            async move { wakeups.forward(receiver, &shutdown).await }
        });
        for _ in 0..5 {
            sender.send(Change::Outbox).unwrap();
        }
        sender.send(Change::OrderStatus(uuid::Uuid::nil())).unwrap();
        tokio::task::yield_now().await;
        // Five commits while nobody waited: one wake-up each, not five.
        assert!(woken(&wakeups.dispatch).await);
        assert!(!woken(&wakeups.dispatch).await);
        assert!(woken(&wakeups.publish).await);
        assert!(!woken(&wakeups.publish).await);

        sender.send(Change::OrderStatus(uuid::Uuid::nil())).unwrap();
        assert!(woken(&wakeups.publish).await);
        assert!(!woken(&wakeups.dispatch).await);

        shutdown.cancel();
        forwarding.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn one_outbox_row_wakes_one_of_the_waiting_loops() {
        let wakeups = Arc::new(Wakeups::default());
        let woken_loops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let loops: Vec<_> = (0..4)
            .map(|_| {
                let (wakeups, woken_loops) = (Arc::clone(&wakeups), Arc::clone(&woken_loops));
                tokio::spawn(async move {
                    wakeups.dispatch.notified().await;
                    woken_loops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        // Every loop is waiting before the commit arrives.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (sender, receiver) = broadcast::channel(16);
        let shutdown = CancellationToken::new();
        let forwarding = tokio::spawn({
            let (wakeups, shutdown) = (Arc::clone(&wakeups), shutdown.clone());
            async move { wakeups.forward(receiver, &shutdown).await }
        });
        sender.send(Change::Outbox).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(woken_loops.load(std::sync::atomic::Ordering::SeqCst), 1);

        shutdown.cancel();
        forwarding.await.unwrap();
        for waiting in loops {
            waiting.abort();
        }
    }
}
