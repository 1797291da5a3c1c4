//! Sluice's read side: an edge node serving task events over SSE (and
//! WebSocket), from Redis (or an embedded store), with exact resume.
//!
//! ```text
//! FeedReader (one per node) ─▶ Hub (task ─▶ subscribers, encode once)
//!     ─▶ Subscription (bounded queue, last seq) ─▶ SSE body / WS session
//! catch-up, resume, gap fill: Store::history from the task log
//! ```
//!
//! [`run`] is the library entry the binary calls; tests start a [`Node`]
//! to read its state.

pub mod app;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod feed;
pub mod health;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod session;
pub mod state;
pub mod store;
pub mod subscription;
pub mod transport;
pub mod wire;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use node::Node;

use crate::store::Store;

/// Builds the configured store: Redis when a URL is given, else memory.
pub async fn build_store(config: &Config, node_id: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.redis_url {
        Some(url) => {
            Arc::new(store::redis::RedisStore::connect(url, node_id, config.publisher()).await?)
        }
        None => Arc::new(store::memory::MemoryStore::new(config.publisher())),
    })
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
    Node::start(&config, node_id, store, listener)
        .await?
        .run_until(shutdown)
        .await;
    Ok(())
}
