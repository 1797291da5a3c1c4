//! The backend behind an edge node. Two implementations share one contract
//! (and one conformance suite in `sluice-tests`):
//!
//! - [`redis::RedisStore`]: production. Publish is the atomic
//!   `sluice_publish` function; history is the task log; the live feed is one
//!   consumer-group reader per node over all shard feeds (on a cluster, one
//!   per shard).
//! - [`memory::MemoryStore`]: the embedded single-node default. Same
//!   semantics, kept in this process (lost on restart).
//!
//! # Layout
//!
//! - `store.rs` (this module): the [`Store`] contract, [`FeedSink`] (where
//!   the live feed delivers: the hub) and [`StoreError`].
//! - `store/memory.rs`: [`memory::MemoryStore`].
//! - `store/redis/mod.rs`: [`redis::RedisStore`]; beside it `feed.rs` (the
//!   feed reader), `loss.rs` (loss detection per shard feed) and
//!   `control.rs` (the reader's short commands).
//!
//! Guarantees every implementation gives:
//! - seqs of a task are 1, 2, 3 ... with no gaps, assigned at publish;
//! - `history(task, after, n)` returns retained events with seq > after in
//!   order; the first returned seq is `after + 1` unless those events are no
//!   longer retained;
//! - the feed delivers the events of one task in seq order; it may miss events
//!   (a Redis blip, a trimmed feed) and then calls [`FeedSink::resync`] or
//!   leaves a gap that the subscriber fills from history.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sluice_broker::connect::ConnectError;
use sluice_broker::{PublishError, PublishOptions, Published, Unavailable};
use sluice_shared::event::Snapshot;
use sluice_shared::{Seq, StoredEvent, TaskId};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot serve the call right now (Redis away, refused,
    /// too slow, or answering with an error): retry later.
    #[error("backend unavailable: {0}")]
    Unavailable(#[source] Unavailable),
    #[error("stored data of task {task} is corrupt: {what}")]
    Corrupt { task: String, what: String },
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The Redis URL or pool cannot be used (configuration, not an outage).
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl StoreError {
    /// The backend failed the call (for metrics): unavailable, for reads
    /// and publishes alike.
    pub fn is_backend_failure(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Publish(p) => p.is_unavailable(),
            StoreError::Corrupt { .. } | StoreError::Connect(_) => false,
        }
    }
}

impl From<Unavailable> for StoreError {
    fn from(e: Unavailable) -> Self {
        StoreError::Unavailable(e)
    }
}

impl From<sluice_broker::ReadError> for StoreError {
    fn from(e: sluice_broker::ReadError) -> Self {
        match e {
            sluice_broker::ReadError::Redis(e) => StoreError::Unavailable(e.into()),
            sluice_broker::ReadError::Corrupt { task, what } => StoreError::Corrupt { task, what },
        }
    }
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        StoreError::Unavailable(e.into())
    }
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        StoreError::Unavailable(e.into())
    }
}

/// Where the live feed delivers: the node's hub.
pub trait FeedSink: Send + Sync {
    /// True when some local subscriber follows `task` (lets the reader skip
    /// decoding events nobody here wants).
    fn wants(&self, task: &str) -> bool;
    /// One live event, in seq order per task.
    fn deliver(&self, event: &StoredEvent);
    /// The feed lost its place: every subscription must re-check history.
    fn resync(&self);
    /// Re-syncs only the subscriptions whose task is in one of `shards`
    /// (of `total`). By default, all of them.
    fn resync_shards(&self, _shards: &[u32], _total: u32) {
        self.resync();
    }
    /// The feed is attached and delivering (readiness).
    fn set_live(&self, live: bool);
    /// The node's consumer-group lag on one shard feed (metrics).
    fn report_lag(&self, _shard: u32, _lag: u64) {}
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"redis"` or `"memory"`.
    fn kind(&self) -> &'static str;

    async fn publish(
        &self,
        task: &TaskId,
        kind: &str,
        data: &Value,
        opts: &PublishOptions,
    ) -> Result<Published, StoreError>;

    /// The latest event and state; `None` for an unknown task.
    async fn snapshot(&self, task: &TaskId) -> Result<Option<Snapshot>, StoreError>;

    /// Retained events with seq > `after`, oldest first, at most `limit`.
    async fn history(
        &self,
        task: &TaskId,
        after: Seq,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Cheap reachability check (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Runs the live feed into `sink` until `cancel` fires. Reconnects by
    /// itself; never returns early except on cancel.
    async fn run_feed(&self, sink: Arc<dyn FeedSink>, cancel: CancellationToken);

    /// Gives the store the node's metrics (Redis call timings and errors).
    fn attach_metrics(&self, _metrics: std::sync::Arc<crate::metrics::Metrics>) {}

    /// Releases what this node holds in the backend (its consumer groups),
    /// at the end of a drain.
    async fn release(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
