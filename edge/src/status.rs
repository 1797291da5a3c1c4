//! What a node is and holds, as readiness, `/metrics`, the dashboard, the
//! registry and tests observe it.

use std::sync::Arc;
use std::time::Instant;

use sluice_broker::nodes::NodeInfo;

use crate::cluster::{now_ms, ClusterView};
use crate::hub::Hub;
use crate::lifecycle::Draining;
use crate::limits::Limits;
use crate::metrics::{Metrics, Transport, TransportLabel};
use crate::server::Connections;
use crate::store::Store;

pub struct NodeStatus {
    pub node_id: String,
    /// Shard count of the deployment (reported to the registry).
    pub shards: u32,
    /// Runs the `--demo` producer (the dashboard shows its tasks).
    pub demo: bool,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    pub cluster: Arc<ClusterView>,
    /// Open TCP connections and whether the node can accept more.
    pub connections: Arc<Connections>,
    pub draining: Draining,
}

impl NodeStatus {
    pub fn is_draining(&self) -> bool {
        self.draining.is_draining()
    }

    /// Why the node cannot serve requests at all (empty: ready): draining,
    /// accepts failing (out of descriptors), at its limit of open TCP
    /// connections, feed not attached, backend unreachable. A node at its
    /// *stream* limit is still ready: it serves publishes, snapshots and
    /// history; only new streams are refused (see `/capacity`).
    pub async fn unready_reasons(&self) -> Vec<&'static str> {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining");
        }
        if !self.connections.is_accepting() {
            reasons.push("cannot accept connections");
        }
        if self.connections.at_limit() {
            reasons.push("at open-connection limit");
        }
        if !self.hub.is_live() {
            reasons.push("feed not attached");
        }
        let ping = tokio::time::timeout(std::time::Duration::from_secs(2), self.store.ping()).await;
        if !matches!(ping, Ok(Ok(()))) {
            reasons.push("backend unreachable");
        }
        reasons
    }

    /// The node's cumulative counters now.
    pub fn counters(&self) -> Counters {
        Counters::read(&self.metrics)
    }

    /// This node's report, with rates since `before`.
    pub fn report(&self, now: &Counters, before: &Counters) -> NodeInfo {
        let (delivered_per_sec, feed_events_per_sec, published_per_sec) = now.rates_since(before);
        NodeInfo {
            id: self.node_id.clone(),
            address: self.cluster.address(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            shards: self.shards,
            started_ms: self.cluster.started_ms,
            last_seen_ms: now_ms(),
            connections: self.limits.in_use() as u64,
            max_connections: self.limits.max() as u64,
            subscriptions: u64::try_from(self.metrics.subscriptions.get()).unwrap_or(0),
            tasks: self.hub.task_count() as u64,
            delivered: now.delivered,
            feed_events: now.feed_events,
            published: now.published,
            delivered_per_sec,
            feed_events_per_sec,
            published_per_sec,
            draining: self.is_draining(),
        }
    }
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
    pub fn read(m: &Metrics) -> Self {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
