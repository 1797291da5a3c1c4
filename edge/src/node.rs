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

use crate::config::Config;
use crate::hub::Hub;
use crate::lifecycle::{Draining, Tasks};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::state::AppState;
use crate::store::{FeedSink, Store};
use crate::subscription::Subscriptions;
use crate::{app, auth, demo, registry};

/// How long past the drain window the node waits for its last connections.
pub const DRAIN_SLACK: Duration = Duration::from_secs(2);
/// How long the feed reader, then everything else, may take to stop before
/// it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running node. Dropping it without [`Node::stop`] aborts everything it
/// runs, without draining.
pub struct Node {
    state: Arc<AppState>,
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
        let state = Arc::new(app_state(
            config,
            node_id,
            store,
            Draining::child_of(&root),
            &tasks,
        ));
        let app = app::router(state.clone());
        let feed = {
            let (store, stop) = (state.store.clone(), stop_feed.clone());
            let sink: Arc<dyn FeedSink> = state.hub.clone();
            AbortOnDropHandle::new(tasks.spawn(async move { store.run_feed(sink, stop).await }))
        };
        if config.demo {
            tasks.spawn(demo::run(state.store.clone(), stop_rest.clone()));
        }
        let addr = listener.local_addr()?;
        registry::spawn(&tasks, &state, addr, &stop_rest)?;
        tracing::info!(node = %state.node_id, %addr, store = state.store.kind(), "sluice-edge serving");
        let server = {
            let stop = stop_rest.clone();
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            AbortOnDropHandle::new(tasks.spawn(async move { serve.await }))
        };
        abort_on_error.disarm();
        Ok(Node {
            state,
            tasks,
            root,
            stop_feed,
            stop_rest,
            feed,
            server,
        })
    }

    /// The node's state (tests read its counters).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` fires, then drains and stops.
    pub async fn run_until(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.stop().await
    }

    /// Drains and stops, in the order of the module documentation.
    pub async fn stop(mut self) {
        let limits = &self.state.limits;
        self.state.draining.start();
        tracing::info!(
            open = limits.in_use(),
            window_secs = self.state.sessions.drain_window.as_secs(),
            "draining"
        );
        let window = self.state.sessions.drain_window + DRAIN_SLACK;
        let drained = tokio::time::timeout(window, limits.idle()).await;
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
        if let Err(e) = self.state.store.release().await {
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
        tracing::info!(node = %self.state.node_id, "stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// What every handler shares.
fn app_state(
    config: &Config,
    node_id: String,
    store: Arc<dyn Store>,
    draining: Draining,
    tasks: &Tasks,
) -> AppState {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(config.queue_capacity, metrics.clone());
    store.attach_metrics(metrics.clone());
    let verifier =
        (!config.auth_secret.is_empty()).then(|| auth::Verifier::new(&config.auth_secret));
    if verifier.is_none() {
        tracing::warn!("subscriber auth is OFF (--insecure/--demo): anyone can read any task");
    }
    let limits = Arc::new(Limits::new(
        config.max_connections,
        config.max_connect_rate,
        metrics.clone(),
    ));
    AppState {
        node_id,
        store: store.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        limits: limits.clone(),
        sessions: Arc::new(Sessions {
            subscriptions: Subscriptions::new(hub, store, metrics.clone(), config.history_page),
            limits,
            metrics,
            draining: draining.clone(),
            heartbeat: config.heartbeat(),
            drain_window: config.drain(),
            tasks: tasks.clone(),
        }),
        draining,
        verifier,
        demo: config.demo,
        publish_keys: config.publish_key.clone(),
        config: config.clone(),
        cluster: Default::default(),
    }
}
