//! Every task the daemon spawns, in one place: tracked, so [`crate::run`] drains them before it returns, and
//! told to stop by one token, so none outlives the daemon.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The daemon's tasks. Cheap to clone; every clone spawns into the same set.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawn a task that ends by itself (its inputs close, or it watches [`Tasks::stopping`]).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawn a task that is dropped when the daemon stops, if it has not ended by then.
    pub fn spawn_until_stopped<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        })
    }

    /// Cancelled once the daemon stops.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Tell every task to stop and wait (at most `within`) for all of them; `false` if some are still running.
    pub async fn drain(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                left = self.tracker.len(),
                "some daemon tasks did not end within {within:?} of the shutdown"
            );
        }
        drained
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_stops_the_tasks_that_wait_for_it_and_waits_for_the_others() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn_until_stopped(std::future::pending());
        let stop = tasks.stopping();
        let finished = tasks.spawn(async move {
            stop.cancelled().await;
            let _ = tx.send(());
        });
        assert!(tasks.drain(Duration::from_secs(5)).await);
        assert!(finished.is_finished());
        rx.await.unwrap();
    }
}
