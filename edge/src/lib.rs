//! Sluice's read side: an edge node serving task events over SSE (and
//! WebSocket), from Redis (or an embedded store), with exact resume.
//!
//! ```text
//! FeedReader (one per node) ─▶ Hub (task ─▶ subscribers, encode once)
//!     ─▶ Subscription (bounded queue, last seq) ─▶ SSE body / WS session
//! catch-up, resume, gap fill: Store::history from the task log
//! ```
//!
//! [`run`] is the library entry the binary and the tests call.

pub mod app;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod health;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod state;
pub mod store;
pub mod subscription;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::{FeedSink, Store};

/// Builds the configured store: Redis when a URL is given, else memory.
pub async fn build_store(config: &Config, node_id: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.redis_url {
        Some(url) => {
            Arc::new(store::redis::RedisStore::connect(url, node_id, config.publisher()).await?)
        }
        None => Arc::new(store::memory::MemoryStore::new(config.publisher())),
    })
}

/// A running node's handles, for tests and the binary.
pub struct Node {
    pub state: Arc<AppState>,
}

/// Runs a node on `listener` until `shutdown` fires, then drains: readiness
/// goes false, new connections are refused, existing clients are asked to
/// reconnect elsewhere over the drain window, the node's consumer groups
/// are released, and the function returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let node_id = config.node_id();
    let store = build_store(&config, &node_id).await?;
    run_with_store(config, node_id, store, listener, shutdown, |_| {}).await
}

/// [`run`] with a given store; `on_start` sees the node's state once it
/// serves (tests use it to read counters).
pub async fn run_with_store(
    config: Config,
    node_id: String,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
    on_start: impl FnOnce(Arc<AppState>),
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(config.queue_capacity, metrics.clone());
    store.attach_metrics(metrics.clone());
    let verifier =
        (!config.auth_secret.is_empty()).then(|| auth::Verifier::new(&config.auth_secret));
    if verifier.is_none() {
        tracing::warn!("subscriber auth is OFF (--insecure/--demo): anyone can read any task");
    }
    let stop = CancellationToken::new();
    let state = Arc::new(AppState {
        node_id: node_id.clone(),
        store: store.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        limits: Limits::new(
            config.max_connections,
            config.max_connect_rate,
            metrics.clone(),
        ),
        heartbeat: config.heartbeat(),
        drain_window: config.drain(),
        history_page: config.history_page,
        drain: shutdown.clone(),
        draining: AtomicBool::new(false),
        tracker: TaskTracker::new(),
        verifier,
        demo: config.demo,
        publish_keys: config.publish_key.clone(),
        config: config.clone(),
        cluster: Default::default(),
    });

    let background = TaskTracker::new();
    // The feed reader stops first at shutdown, so destroying the node's
    // groups cannot race with a reader that would recreate them.
    let feed_stop = CancellationToken::new();
    let feed = {
        let store = store.clone();
        let sink: Arc<dyn FeedSink> = hub.clone();
        let feed_stop = feed_stop.clone();
        tokio::spawn(async move { store.run_feed(sink, feed_stop).await })
    };
    if config.demo {
        let store = store.clone();
        let stop = stop.clone();
        background.spawn(async move { demo::run(store, stop).await });
    }

    let addr = listener.local_addr()?;
    registry::spawn(&background, &state, addr, &stop)?;
    tracing::info!(node = %node_id, %addr, store = store.kind(), "sluice-edge serving");
    on_start(state.clone());

    let app = app::router(state.clone());
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    shutdown.cancelled().await;
    state.draining.store(true, Ordering::Release);
    tracing::info!(
        open = state.limits.in_use(),
        window_secs = state.drain_window.as_secs(),
        "draining"
    );
    // Streams close themselves at jittered moments inside the window.
    let deadline = tokio::time::Instant::now() + state.drain_window + Duration::from_secs(2);
    while state.limits.in_use() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    feed_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), feed)
        .await
        .is_err()
    {
        tracing::warn!("feed reader did not stop within 5 s");
    }
    if let Err(e) = store.release().await {
        tracing::warn!(cause = %e, "could not release consumer groups");
    }
    stop.cancel();
    state.tracker.close();
    background.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), state.tracker.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), background.wait()).await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(cause = %e, "server error at shutdown"),
        Ok(Err(e)) => tracing::warn!(cause = %e, "server task failed"),
        Err(_) => tracing::warn!("server did not stop within 5 s"),
    }
    tracing::info!(node = %node_id, "stopped");
    Ok(())
}
