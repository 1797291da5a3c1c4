//! Sluice's read side: an edge node serving task events over SSE and
//! WebSocket, from Redis (or an embedded store), with exact resume.
//!
//! ```text
//! FeedReader (one per node) ─▶ Hub (task ─▶ subscribers, encode once)
//!     ─▶ Mux (one bounded queue per connection; a Subscription per task:
//!        position, catch-up) ─▶ Session ─▶ SSE body / WS frames
//! catch-up, resume, gap fill: Store::history from the task log
//! ```
//!
//! # Layout
//!
//! - [`node`]: a node's lifetime: starts its parts and tasks, drains and
//!   stops them in order. [`lifecycle`]: the "draining" fact and the
//!   tracker every node task runs on.
//! - [`server`]: the accept loop: every TCP connection counted and bounded,
//!   head and write deadlines, HTTP/1.1 served by hyper on the node's tasks.
//! - [`http`]: the router, request extractors, admission, and one thin
//!   handler module per endpoint family (tasks, publish, sse, ws, health,
//!   dashboard); its state is one part per concern.
//! - [`session`]: the session driver SSE and WebSocket share (batching,
//!   heartbeats, drain, end of stream, `/v1/ws` subscribe and unsubscribe,
//!   metrics, the connection log); the
//!   transports in `http::sse` and `http::ws` only frame bytes.
//! - [`subscription`]: a connection's tasks (`Mux`: one queue, history
//!   read in turns, latest mode) and each task's verified position:
//!   snapshot, resume, gap fill, catch-up, resets. [`hub`]: the live
//!   fan-out into connections' queues; [`interest`]: which feeds those
//!   subscriptions need (the feed readers follow only those).
//!   [`wire`]: the encoding of events (SSE frame, JSON envelope).
//! - [`store`]: the backend, memory and Redis (the Redis store holds the
//!   live feed reader, `store::redis::feed`).
//! - `allocator` (the binary's jemalloc, set up to return memory),
//!   [`auth`] (subscriber tokens), [`limits`] (connection limit and rate),
//!   [`error`] (JSON API errors), [`metrics`], [`config`], [`fdlimit`] (the
//!   open-file limit, checked at start).
//! - [`status`] (what the node is and holds), [`registry`] (node registry
//!   and janitor, Redis only), [`cluster`] (the registry's view, shared with
//!   the dashboard), [`dashboard`] (its stats stream), [`demo`] (the
//!   `--demo` producer).
//!
//! [`run`] is the entry the binary calls; tests start a [`Node`] to watch
//! its status.

#[cfg(feature = "jemalloc")]
pub mod allocator;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod error;
pub mod fdlimit;
pub mod http;
pub mod hub;
pub mod interest;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod server;
pub mod session;
pub mod status;
pub mod store;
pub mod subscription;
pub mod wire;
pub mod ws_frame;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use node::{Listeners, Node};

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

/// Runs a node on `listeners` until `shutdown` fires, then drains: readiness
/// goes false, new connections are refused, existing clients are asked to
/// reconnect elsewhere over the drain window, the node's consumer groups
/// are released, and the function returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let node_id = config.node_id();
    let store = build_store(&config, &node_id).await?;
    Node::start(&config, node_id, store, listeners)
        .await?
        .run_until(shutdown)
        .await;
    Ok(())
}
