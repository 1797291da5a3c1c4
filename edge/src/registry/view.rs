//! What the registry shares with the rest of the node (the dashboard):
//! this node's identity and report, and the latest cluster view, refreshed
//! only while someone watches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_broker::nodes::{ClusterStatus, NodeInfo};

use crate::metrics::{Transport, TransportLabel};
use crate::state::AppState;

/// What the registry shares with the rest of the node: who this node is
/// and, while someone watches the dashboard, the latest cluster view.
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

    pub(super) fn set_latest(&self, s: Option<Arc<ClusterStatus>>) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The address this node serves on, as advertised.
    pub fn address(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_address(&self, a: String) {
        *self.address.lock().unwrap_or_else(|p| p.into_inner()) = a;
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Cumulative counters of a node, turned into rates between two readings.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    pub delivered: u64,
    pub feed_events: u64,
    pub published: u64,
    pub at: Instant,
}

impl Counters {
    pub fn read(state: &AppState) -> Self {
        let m = &state.metrics;
        let delivered = [Transport::Sse, Transport::Ws]
            .into_iter()
            .map(|transport| {
                m.delivered
                    .get_or_create(&TransportLabel { transport })
                    .get()
            })
            .sum();
        Counters {
            delivered,
            feed_events: m.feed_events.get(),
            published: m.published.get(),
            at: Instant::now(),
        }
    }

    /// Per-second rates since `before`: (delivered, feed events, published).
    pub fn rates_since(&self, before: &Counters) -> (f64, f64, f64) {
        let secs = self.at.duration_since(before.at).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        (
            rate(self.delivered, before.delivered),
            rate(self.feed_events, before.feed_events),
            rate(self.published, before.published),
        )
    }
}

/// This node's report, with rates since `before`.
pub fn local_report(state: &AppState, now: &Counters, before: &Counters) -> NodeInfo {
    let (delivered_per_sec, feed_events_per_sec, published_per_sec) = now.rates_since(before);
    NodeInfo {
        id: state.node_id.clone(),
        address: state.cluster.address(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        shards: state.config.shards,
        started_ms: state.cluster.started_ms,
        last_seen_ms: now_ms(),
        connections: state.limits.in_use() as u64,
        max_connections: state.limits.max() as u64,
        subscriptions: u64::try_from(state.metrics.subscriptions.get()).unwrap_or(0),
        tasks: state.hub.task_count() as u64,
        delivered: now.delivered,
        feed_events: now.feed_events,
        published: now.published,
        delivered_per_sec,
        feed_events_per_sec,
        published_per_sec,
        draining: state.is_draining(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    #[test]
    fn rates() {
        let t = Instant::now();
        let a = Counters {
            delivered: 10,
            feed_events: 0,
            published: 5,
            at: t,
        };
        let b = Counters {
            delivered: 30,
            feed_events: 4,
            published: 5,
            at: t + Duration::from_secs(2),
        };
        assert_eq!(b.rates_since(&a), (10.0, 2.0, 0.0));
    }
}
