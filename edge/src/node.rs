//! A node's lifetime. [`Node::start`] builds the node's parts and starts
//! everything it runs (feed reader, registry, demo producer, HTTP server;
//! WebSocket sessions join later) on one [`Tasks`]. [`Node::stop`] drains
//! and stops them in order:
//!
//! 1. draining: readiness goes false and new streams are refused;
//! 2. every stream closes at a jittered moment inside the drain window (the
//!    node is told when the last connection closed; it waits at most the
//!    window plus [`DRAIN_SLACK`]);
//! 3. the feed reader stops (so nothing recreates the node's groups);
//! 4. the node's consumer groups are released;
//! 5. everything else stops (registry, demo, server), and whatever is still
//!    running after [`STOP_GRACE`] is aborted.
//!
//! One root token owns it all: each phase is a child token, and cancelling
//! the root (also when a `Node` is dropped) aborts every task the node runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::auth::Access;
use crate::cluster::ClusterView;
use crate::config::Config;
use crate::http::tasks::HistoryPageBytes;
use crate::http::{self, AppState, Publishing};
use crate::hub::Hub;
use crate::lifecycle::{Draining, Tasks};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::status::NodeStatus;
use crate::store::{FeedSink, Store};
use crate::subscription::Subscriptions;
use crate::{demo, registry};

/// How long past the drain window the node waits for its last connections.
pub const DRAIN_SLACK: Duration = Duration::from_secs(2);
/// How long the feed reader, then everything else, may take to stop before
/// it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running node. Dropping it without [`Node::stop`] aborts everything it
/// runs, without draining.
pub struct Node {
    status: Arc<NodeStatus>,
    drain_window: Duration,
    tasks: Tasks,
    /// Cancelled last (or on drop): aborts whatever still runs.
    root: CancellationToken,
    /// Phase 3: stops the feed reader.
    stop_feed: CancellationToken,
    /// Phase 5: stops the registry, the demo producer and the server.
    stop_rest: CancellationToken,
    feed: AbortOnDropHandle<Option<()>>,
    server: AbortOnDropHandle<Option<std::io::Result<()>>>,
}

impl Node {
    /// Builds the node around `store` and starts serving on `listener`.
    pub async fn start(
        config: &Config,
        node_id: String,
        store: Arc<dyn Store>,
        listener: TcpListener,
    ) -> anyhow::Result<Node> {
        let root = CancellationToken::new();
        // Until the node is built, an early return aborts what was started.
        let abort_on_error = root.clone().drop_guard();
        let tasks = Tasks::new(root.clone());
        let (stop_feed, stop_rest) = (root.child_token(), root.child_token());
        let status = Arc::new(parts(config, node_id, store, Draining::child_of(&root)));
        let app = http::router(app_state(config, &status, &tasks));
        let feed = {
            let (store, stop) = (status.store.clone(), stop_feed.clone());
            let sink: Arc<dyn FeedSink> = status.hub.clone();
            AbortOnDropHandle::new(tasks.spawn(async move { store.run_feed(sink, stop).await }))
        };
        if config.demo {
            tasks.spawn(demo::run(status.store.clone(), stop_rest.clone()));
        }
        let addr = listener.local_addr()?;
        status.cluster.set_address(registry::advertised(addr));
        registry::spawn(
            &tasks,
            &status,
            config.redis_url.as_deref(),
            config.node_grace(),
            stop_rest.clone(),
        )?;
        tracing::info!(node = %status.node_id, %addr, store = status.store.kind(), "sluice-edge serving");
        let server = {
            let stop = stop_rest.clone();
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            AbortOnDropHandle::new(tasks.spawn(async move { serve.await }))
        };
        abort_on_error.disarm();
        Ok(Node {
            status,
            drain_window: config.drain(),
            tasks,
            root,
            stop_feed,
            stop_rest,
            feed,
            server,
        })
    }

    /// What the node is and holds (readiness, counters, its id).
    pub fn status(&self) -> Arc<NodeStatus> {
        self.status.clone()
    }

    /// Serves until `shutdown` fires, then drains and stops.
    pub async fn run_until(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.stop().await
    }

    /// Drains and stops, in the order of the module documentation.
    pub async fn stop(mut self) {
        let limits = &self.status.limits;
        self.status.draining.start();
        tracing::info!(
            open = limits.in_use(),
            window_secs = self.drain_window.as_secs(),
            "draining"
        );
        let drained = tokio::time::timeout(self.drain_window + DRAIN_SLACK, limits.idle()).await;
        if drained.is_err() {
            tracing::warn!(
                open = limits.in_use(),
                "connections still open after the drain window"
            );
        }
        self.stop_feed.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut self.feed)
            .await
            .is_err()
        {
            tracing::warn!("feed reader did not stop within 5 s; aborting it");
            self.feed.abort();
        }
        if let Err(e) = self.status.store.release().await {
            tracing::warn!(cause = %e, "could not release consumer groups");
        }
        self.stop_rest.cancel();
        let aborted = self.tasks.shutdown(STOP_GRACE).await;
        if aborted > 0 {
            tracing::warn!(
                aborted,
                "tasks still running 5 s after the stop were aborted"
            );
        }
        match (&mut self.server).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => tracing::warn!(cause = %e, "server error at shutdown"),
            Ok(None) => tracing::warn!("server did not stop within 5 s"),
            Err(e) => tracing::warn!(cause = %e, "server task failed"),
        }
        tracing::info!(node = %self.status.node_id, "stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// The node's shared parts, as its status holds them.
fn parts(
    config: &Config,
    node_id: String,
    store: Arc<dyn Store>,
    draining: Draining,
) -> NodeStatus {
    let metrics = Arc::new(Metrics::default());
    store.attach_metrics(metrics.clone());
    NodeStatus {
        node_id,
        shards: config.shards,
        demo: config.demo,
        hub: Hub::new(config.queue_capacity, metrics.clone()),
        limits: Arc::new(Limits::new(
            config.max_connections,
            config.max_connect_rate,
            metrics.clone(),
        )),
        cluster: Arc::new(ClusterView::default()),
        store,
        metrics,
        draining,
    }
}

/// The router's state: each handler's part of the node.
fn app_state(config: &Config, status: &Arc<NodeStatus>, tasks: &Tasks) -> AppState {
    let access = Arc::new(Access::new(&config.auth_secret, status.metrics.clone()));
    if access.is_open() {
        tracing::warn!("subscriber auth is OFF (--insecure/--demo): anyone can read any task");
    }
    let sessions = Sessions {
        subscriptions: Subscriptions::new(
            status.hub.clone(),
            status.store.clone(),
            status.metrics.clone(),
            config.history_page(),
        ),
        limits: status.limits.clone(),
        metrics: status.metrics.clone(),
        draining: status.draining.clone(),
        heartbeat: config.heartbeat(),
        drain_window: config.drain(),
        tasks: tasks.clone(),
    };
    AppState {
        status: status.clone(),
        access,
        store: status.store.clone(),
        history_page_bytes: HistoryPageBytes(config.history_page_bytes),
        publishing: Arc::new(Publishing::new(
            config.publish_key.clone(),
            config.demo,
            status.store.clone(),
            status.metrics.clone(),
        )),
        sessions: Arc::new(sessions),
    }
}
