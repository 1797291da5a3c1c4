//! The node's lifetime as its parts see it: [`Draining`], the one fact
//! "this node is draining", and [`Tasks`], where everything the node runs
//! is spawned so that shutdown can wait for it and abort what overstays.
//! [`crate::node::Node`] owns both and drives them.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Whether the node drains: set once, when shutdown begins. From then on
/// the node reports not ready, refuses new streams, and every stream closes
/// at a jittered moment inside the drain window.
#[derive(Clone, Debug)]
pub struct Draining(CancellationToken);

impl Draining {
    /// A phase of `parent`: cancelling the parent drains too.
    pub(crate) fn child_of(parent: &CancellationToken) -> Self {
        Draining(parent.child_token())
    }

    pub(crate) fn start(&self) {
        self.0.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the node drains (at once if it already does).
    /// Cancel-safe.
    pub async fn started(&self) {
        self.0.cancelled().await
    }
}

/// Every task the node runs, on one tracker. A task spawned here ends when
/// it returns or when the node aborts (its `abort` token: the root of the
/// node's cancellation), whichever comes first; so shutdown can wait for
/// all of them and stop those that overstay instead of leaving them
/// detached.
#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    abort: CancellationToken,
}

impl Tasks {
    pub(crate) fn new(abort: CancellationToken) -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            abort,
        }
    }

    /// Spawns `task` on the node's tracker. The result is `None` if the node
    /// aborted it. The handle may be dropped: the task stays owned by the
    /// node.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(self.track(task))
    }

    /// `task` as a future the node tracks and can abort, for a task someone
    /// else spawns (axum runs WebSocket sessions on its upgrade task).
    pub fn track<F: Future>(&self, task: F) -> impl Future<Output = Option<F::Output>> {
        let abort = self.abort.clone();
        self.tracker.track_future(async move {
            tokio::select! {
                biased;
                _ = abort.cancelled() => None,
                out = task => Some(out),
            }
        })
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits up to `grace` for every task to end, then aborts the rest and
    /// waits for them to unwind. Returns how many were aborted. Nothing can
    /// be spawned afterwards.
    pub(crate) async fn shutdown(&self, grace: Duration) -> usize {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let overstayed = self.tracker.len();
        self.abort.cancel();
        self.tracker.wait().await;
        overstayed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_tasks_and_aborts_what_overstays() {
        let tasks = Tasks::new(CancellationToken::new());
        let quick = tasks.spawn(async { 7 });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stuck = tasks.spawn(async move {
            let _tx = tx; // dropped when the task is aborted
            std::future::pending::<()>().await
        });
        assert_eq!(tasks.shutdown(Duration::from_millis(50)).await, 1);
        assert!(tasks.is_empty());
        assert_eq!(quick.await.expect("joined"), Some(7));
        assert_eq!(stuck.await.expect("joined"), None);
        assert!(rx.await.is_err(), "the stuck task's future was dropped");
    }

    #[tokio::test]
    async fn draining_is_a_phase_of_its_parent() {
        let root = CancellationToken::new();
        let d = Draining::child_of(&root);
        assert!(!d.is_draining());
        root.cancel();
        assert!(d.is_draining());
        d.started().await;
    }
}
