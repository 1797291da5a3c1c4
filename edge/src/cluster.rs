//! What the registry shares with the rest of the node (the dashboard):
//! this node's start time and advertised address, and the latest view of
//! the cluster, refreshed only while someone watches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sluice_broker::nodes::ClusterStatus;

/// Who this node is to the others and, while someone watches the
/// dashboard, the latest cluster view.
pub struct ClusterView {
    pub started_ms: i64,
    address: Mutex<String>,
    latest: Mutex<Option<Arc<ClusterStatus>>>,
    watchers: AtomicUsize,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            started_ms: now_ms(),
            address: Mutex::new(String::new()),
            latest: Mutex::new(None),
            watchers: AtomicUsize::new(0),
        }
    }
}

/// A dashboard viewer; while any exists the registry refreshes the view.
pub struct Watcher(Arc<ClusterView>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ClusterView {
    /// Registers a viewer unless `max` are already watching.
    pub fn watch(self: &Arc<Self>, max: usize) -> Option<Watcher> {
        self.watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Watcher(self.clone()))
    }

    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    /// The latest cluster view (`None` on the memory store, or before the
    /// first refresh).
    pub fn latest(&self) -> Option<Arc<ClusterStatus>> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_latest(&self, s: Option<Arc<ClusterStatus>>) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The address this node serves on, as advertised.
    pub fn address(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_address(&self, a: String) {
        *self.address.lock().unwrap_or_else(|p| p.into_inner()) = a;
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_are_capped_and_released() {
        let v = Arc::new(ClusterView::default());
        let a = v.watch(2).expect("first");
        let _b = v.watch(2).expect("second");
        assert!(v.watch(2).is_none());
        drop(a);
        assert_eq!(v.watchers(), 1);
        assert!(v.watch(2).is_some());
    }
}
