//! The Redis store: publish through `sluice_publish`, snapshot and history
//! from the task keys, live feed through the node's consumer groups.
//!
//! # Layout
//!
//! - `mod.rs`: [`RedisStore`], the [`Store`] on Redis (one Redis or a
//!   Redis Cluster); it runs the feed readers.
//! - `feed`: the feed reader's state machine (attach, re-sync, read,
//!   back off), one per node or, on a cluster, one per shard.
//! - `loss`: loss detection per shard feed (skipped, trimmed, lost
//!   writes), pure accounting the reader acts on.
//! - `control`: where a reader sends its short commands.
//! - `history`: history pages bounded in bytes.
//!
//! Reply parsing is `sluice_broker::resp`, Redis error classes
//! `sluice_broker::error`, feed keys `sluice_shared::keys`.

mod control;
mod feed;
mod history;
mod loss;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sluice_broker::function::FeedsFn;
use sluice_broker::{
    connect, reader, PublishOptions, Published, Publisher, PublisherConfig, Unavailable,
};
use sluice_shared::event::Snapshot;
use sluice_shared::{keys, Seq, TaskId};
use tokio_util::sync::CancellationToken;

use self::feed::{FeedReader, FeedSettings};
pub use self::history::GROWTH as HISTORY_READ_GROWTH;
use super::{FeedSink, HistoryPage, PageLimit, Store, StoreError};

pub struct RedisStore {
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
    url: String,
    publisher: Publisher,
    feed: FeedSettings,
}

impl RedisStore {
    /// Builds the pool and loads the function. Fails when Redis cannot be
    /// reached at start (the node would not be useful).
    pub async fn connect(
        url: &str,
        node_id: &str,
        config: PublisherConfig,
    ) -> Result<Self, StoreError> {
        let pool = connect::pool(url, config.pool_size)?;
        let shards = config.shards;
        let legacy = config.legacy_feeds;
        let publisher = Publisher::from_pool(pool, config);
        publisher.load_function().await?;
        Ok(RedisStore {
            metrics: std::sync::OnceLock::new(),
            url: url.to_owned(),
            publisher,
            feed: FeedSettings::new(node_id, shards, legacy),
        })
    }

    /// Times `f` and records it under `op` once metrics are attached.
    async fn timed<T>(
        &self,
        op: crate::metrics::RedisOp,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = std::time::Instant::now();
        let r = f.await;
        if let Some(m) = self.metrics.get() {
            let ok = !r.as_ref().is_err_and(StoreError::is_backend_failure);
            m.redis_call(op, start.elapsed(), ok);
        }
        r
    }

    fn shards(&self) -> u32 {
        self.publisher.config().shards
    }

    pub fn pool(&self) -> &sluice_broker::connect::RedisPool {
        self.publisher.pool()
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(
        &self,
        task: &TaskId,
        kind: &str,
        data: &Value,
        opts: &PublishOptions,
    ) -> Result<Published, StoreError> {
        let bytes =
            sluice_shared::codec::encode_data(data).map_err(sluice_broker::PublishError::from)?;
        self.timed(crate::metrics::RedisOp::Publish, async {
            Ok(self
                .publisher
                .publish_encoded(task, kind, &bytes, opts)
                .await?)
        })
        .await
    }

    async fn snapshot(&self, task: &TaskId) -> Result<Option<Snapshot>, StoreError> {
        self.timed(
            crate::metrics::RedisOp::Snapshot,
            bounded(async {
                let mut conn = self.pool().get().await?;
                Ok(reader::snapshot(&mut conn, task, self.shards()).await?)
            }),
        )
        .await
    }

    async fn history(
        &self,
        task: &TaskId,
        after: Seq,
        limit: PageLimit,
    ) -> Result<HistoryPage, StoreError> {
        self.timed(
            crate::metrics::RedisOp::History,
            bounded(async {
                let mut conn = self.pool().get().await?;
                let max_data = self.publisher.config().max_data_bytes;
                history::page(&mut conn, task, self.shards(), after, limit, max_data).await
            }),
        )
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(
            crate::metrics::RedisOp::Ping,
            bounded(async {
                let mut conn = self.pool().get().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok(())
            }),
        )
        .await
    }

    fn attach_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    async fn run_feed(&self, sink: Arc<dyn FeedSink>, cancel: CancellationToken) {
        if !self.pool().is_cluster() {
            let reader = FeedReader::new(
                self.url.clone(),
                self.pool().clone(),
                self.feed.clone(),
                sink,
            );
            reader.run(cancel).await;
            return;
        }
        // Redis Cluster: the shards live on different primaries, so one
        // reader per shard, each on its own cluster connection (it follows
        // the shard's slot across MOVED and failovers).
        let mut readers = tokio::task::JoinSet::new();
        for shard in &self.feed.shards {
            let mut settings = self.feed.clone();
            settings.shards = vec![*shard];
            let reader = FeedReader::new(
                self.url.clone(),
                self.pool().clone(),
                settings,
                sink.clone(),
            );
            let cancel = cancel.clone();
            readers.spawn(async move { reader.run(cancel).await });
        }
        while readers.join_next().await.is_some() {}
    }

    async fn release(&self) -> Result<(), StoreError> {
        let mut conn = self.pool().get().await?;
        let group = keys::group_name(&self.feed.node_id);
        let mut destroyed = 0;
        // One call per shard: its feeds share a slot.
        for shard in 0..self.shards() {
            let feeds: Vec<String> = keys::FeedId::of_shard(shard, true)
                .map(|f| f.key())
                .collect();
            destroyed += FeedsFn::Leave
                .query::<_, _, i64>(&mut conn, &feeds, Some(&group))
                .await?;
        }
        tracing::info!(group = %group, destroyed, "consumer groups destroyed");
        Ok(())
    }
}

/// Every read answers within a bound, even while a cluster connection is
/// riding out a failover: callers (subscriptions, handlers) then report the
/// backend as unavailable and the client resumes later.
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(connect::DEFAULT_RESPONSE_TIMEOUT * 2, f).await {
        Ok(r) => r,
        Err(_) => Err(Unavailable::TimedOut.into()),
    }
}
