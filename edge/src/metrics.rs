//! Prometheus metrics of one node (prometheus-client). Labels stay
//! low-cardinality: never a task id.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label values are lower snake case, as Prometheus conventions have them
/// (`transport="sse"`): each enum names its values in `as_str`.
macro_rules! label_values {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    )*};
}

label_values!(Transport, RefuseReason, RedisOp);

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    /// The name in connection logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: Transport,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RefuseReason {
    ConnectionLimit,
    ConnectRate,
    Draining,
    Unauthorized,
    Forbidden,
    BadRequest,
    Unavailable,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 7] = [
        RefuseReason::ConnectionLimit,
        RefuseReason::ConnectRate,
        RefuseReason::Draining,
        RefuseReason::Unauthorized,
        RefuseReason::Forbidden,
        RefuseReason::BadRequest,
        RefuseReason::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::ConnectionLimit => "connection_limit",
            RefuseReason::ConnectRate => "connect_rate",
            RefuseReason::Draining => "draining",
            RefuseReason::Unauthorized => "unauthorized",
            RefuseReason::Forbidden => "forbidden",
            RefuseReason::BadRequest => "bad_request",
            RefuseReason::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RedisOp {
    Publish,
    Snapshot,
    History,
    Ping,
}

impl RedisOp {
    pub const ALL: [RedisOp; 4] = [
        RedisOp::Publish,
        RedisOp::Snapshot,
        RedisOp::History,
        RedisOp::Ping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RedisOp::Publish => "publish",
            RedisOp::Snapshot => "snapshot",
            RedisOp::History => "history",
            RedisOp::Ping => "ping",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: RedisOp,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: u32,
}

fn redis_histogram() -> Histogram {
    Histogram::new([
        0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
    ])
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: RefuseReason,
}

/// Every metric of the node, cheap to share (`Arc<Metrics>`); values can be
/// read in-process too (tests, dashboard, readiness).
pub struct Metrics {
    pub connections: Family<TransportLabel, Gauge>,
    pub connection_tasks: Gauge,
    pub subscriptions: Gauge,
    pub tasks_subscribed: Gauge,
    pub delivered: Family<TransportLabel, Counter>,
    pub feed_events: Counter,
    pub published: Counter,
    pub catchups: Counter,
    /// Events the hub wrote straight to an idle connection's socket.
    pub direct_writes: Counter,
    pub gaps: Counter,
    pub resets: Counter,
    pub refused: Family<ReasonLabel, Counter>,
    pub delivery_latency: Histogram,
    /// Tasks a stream connection followed (the most at once), observed
    /// when it ends.
    pub connection_subscriptions: Histogram,
    pub redis_duration: Family<OpLabel, Histogram, fn() -> Histogram>,
    pub redis_errors: Family<OpLabel, Counter>,
    pub feed_lag: Family<ShardLabel, Gauge>,
    /// Feeds this node's consumer groups follow now.
    pub feeds_followed: Gauge,
    /// Feeds joined (group created at the feed's end) and left (group
    /// destroyed after the grace period).
    pub feed_joins: Counter,
    pub feed_leaves: Counter,
    /// Open TCP connections: streams, requests and idle keep-alive.
    pub tcp_connections: Gauge,
    /// TCP connections answered 503 and closed: over `--max-open-connections`.
    pub tcp_refused: Counter,
    /// Accepts that failed for lack of resources (EMFILE, ENFILE, ...).
    pub accept_errors: Counter,
    /// Connections closed because the peer accepted no bytes for the write
    /// timeout.
    pub write_stalls: Counter,
    /// Connections closed because no complete request head arrived within
    /// the head timeout (slowloris, idle keep-alive).
    pub head_timeouts: Counter,
    /// Requests whose body did not arrive within the body timeout.
    pub body_timeouts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self::empty();
        // Create every labelled series up front: they show as 0 in /metrics
        // and later lookups only take the read lock.
        for transport in [Transport::Sse, Transport::Ws] {
            let _ = m.connections.get_or_create(&TransportLabel { transport });
            let _ = m.delivered.get_or_create(&TransportLabel { transport });
        }
        for op in RedisOp::ALL {
            let _ = m.redis_errors.get_or_create(&OpLabel { op });
            let _ = m.redis_duration.get_or_create(&OpLabel { op });
        }
        for reason in RefuseReason::ALL {
            let _ = m.refused.get_or_create(&ReasonLabel { reason });
        }
        m
    }
}

impl Metrics {
    fn empty() -> Self {
        let buckets = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Metrics {
            connections: Family::default(),
            connection_tasks: Gauge::default(),
            subscriptions: Gauge::default(),
            tasks_subscribed: Gauge::default(),
            delivered: Family::default(),
            feed_events: Counter::default(),
            published: Counter::default(),
            catchups: Counter::default(),
            direct_writes: Counter::default(),
            gaps: Counter::default(),
            resets: Counter::default(),
            refused: Family::default(),
            delivery_latency: Histogram::new(buckets),
            connection_subscriptions: Histogram::new([
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
            ]),
            redis_duration: Family::new_with_constructor(redis_histogram as fn() -> Histogram),
            redis_errors: Family::default(),
            feed_lag: Family::default(),
            feeds_followed: Gauge::default(),
            feed_joins: Counter::default(),
            feed_leaves: Counter::default(),
            tcp_connections: Gauge::default(),
            tcp_refused: Counter::default(),
            accept_errors: Counter::default(),
            write_stalls: Counter::default(),
            head_timeouts: Counter::default(),
            body_timeouts: Counter::default(),
        }
    }
}

impl Metrics {
    /// Open connections of one transport.
    pub fn connections_of(&self, transport: Transport) -> i64 {
        // One `get_or_create` per statement: its read guard lives to the end
        // of the statement, and a second one in the same expression could
        // need the write lock and deadlock.
        self.connections
            .get_or_create(&TransportLabel { transport })
            .get()
    }

    pub fn open_connections(&self) -> i64 {
        let sse = self.connections_of(Transport::Sse);
        let ws = self.connections_of(Transport::Ws);
        sse + ws
    }

    /// Records one Redis call of the store.
    pub fn redis_call(&self, op: RedisOp, elapsed: std::time::Duration, ok: bool) {
        let label = OpLabel { op };
        self.redis_duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.redis_errors.get_or_create(&label).inc();
        }
    }

    pub fn refuse(&self, reason: RefuseReason) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Registers everything under the `sluice_edge_` prefix.
    pub fn registry(self: &std::sync::Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("sluice_edge");
        r.register(
            "connections",
            "Open client connections",
            self.connections.clone(),
        );
        r.register(
            "connection_tasks",
            "Spawned per-connection tasks alive (WebSocket sessions, SSE bodies)",
            self.connection_tasks.clone(),
        );
        r.register(
            "subscriptions",
            "Live (connection, task) subscriptions",
            self.subscriptions.clone(),
        );
        r.register(
            "tasks_subscribed",
            "Tasks with at least one local subscriber",
            self.tasks_subscribed.clone(),
        );
        r.register(
            "events_delivered",
            "Events written to clients",
            self.delivered.clone(),
        );
        r.register(
            "feed_events",
            "Live events received from the feed for local subscribers",
            self.feed_events.clone(),
        );
        r.register(
            "events_published",
            "Events published through this node (its HTTP API and the --demo producer)",
            self.published.clone(),
        );
        r.register(
            "direct_writes",
            "Events written to an idle connection's socket by the hub, without waking the connection's task (also counted in events_delivered)",
            self.direct_writes.clone(),
        );
        r.register(
            "catchups",
            "Subscribers switched to catch-up from history (queue overflow)",
            self.catchups.clone(),
        );
        r.register(
            "gaps",
            "Gaps in the live feed filled from history",
            self.gaps.clone(),
        );
        r.register(
            "resets",
            "sluice.reset frames sent (history no longer retained)",
            self.resets.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused, by reason",
            self.refused.clone(),
        );
        r.register_with_unit(
            "redis_command_duration",
            "Redis calls made by the store, by operation",
            prometheus_client::registry::Unit::Seconds,
            self.redis_duration.clone(),
        );
        r.register(
            "redis_errors",
            "Failed Redis calls of the store, by operation",
            self.redis_errors.clone(),
        );
        r.register(
            "feed_lag",
            "Feed entries not yet read by this node's consumer groups, summed over the feeds it follows in each shard (entries-added minus entries-read)",
            self.feed_lag.clone(),
        );
        r.register(
            "feeds_followed",
            "Feeds this node follows (has a consumer group on and reads)",
            self.feeds_followed.clone(),
        );
        r.register(
            "feed_joins",
            "Feeds joined because a local subscription needed one of their tasks",
            self.feed_joins.clone(),
        );
        r.register(
            "feed_leaves",
            "Feeds left after no local subscription needed them for the grace period",
            self.feed_leaves.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "Publish timestamp to socket write",
            prometheus_client::registry::Unit::Seconds,
            self.delivery_latency.clone(),
        );
        r.register(
            "connection_subscriptions",
            "Tasks a stream connection followed (the most at once), when it ended",
            self.connection_subscriptions.clone(),
        );
        r.register(
            "tcp_connections",
            "Open TCP connections: streams, requests and idle keep-alive",
            self.tcp_connections.clone(),
        );
        r.register(
            "tcp_connections_refused",
            "TCP connections answered 503 at once: over --max-open-connections",
            self.tcp_refused.clone(),
        );
        r.register(
            "accept_errors",
            "Accepts that failed for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM)",
            self.accept_errors.clone(),
        );
        r.register(
            "write_stalls",
            "Connections closed because the peer took no bytes for --write-timeout-secs",
            self.write_stalls.clone(),
        );
        r.register(
            "head_timeouts",
            "Connections closed without a complete request head within --head-timeout-secs",
            self.head_timeouts.clone(),
        );
        r.register(
            "body_timeouts",
            "Requests refused 408: body not received within --body-timeout-secs",
            self.body_timeouts.clone(),
        );
        r
    }
}
