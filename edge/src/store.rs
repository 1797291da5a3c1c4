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
//!   feed reader), `loss.rs` (loss detection per shard feed),
//!   `control.rs` (the reader's short commands) and `history.rs` (history
//!   pages bounded in bytes).
//!
//! Guarantees every implementation gives:
//! - seqs of a task are 1, 2, 3 ... with no gaps, assigned at publish;
//! - `history(task, after, limit)` returns retained events with seq > after
//!   in order, at most `limit.events` of them, and stops once their JSON
//!   envelopes reach `limit.bytes` (always at least one event); the first
//!   returned seq is `after + 1` unless those events are no longer retained;
//!   `more` says the page stopped at its limit and the next read should
//!   start after its last seq;
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

use crate::wire::Event;

/// Default byte budget of one history page (`--history-page-bytes`).
pub const DEFAULT_HISTORY_PAGE_BYTES: usize = 1024 * 1024;

/// How much one history read may return: at most `events` events, and no
/// more once their JSON envelopes add up to `bytes` (the event that reaches
/// the budget is the page's last; a page always holds at least one event,
/// so a reader always makes progress). Bounding bytes as well as events is
/// what keeps a page of large events from costing `events` × their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub events: usize,
    pub bytes: usize,
}

impl PageLimit {
    pub fn new(events: usize, bytes: usize) -> Self {
        PageLimit {
            events: events.max(1),
            bytes: bytes.max(1),
        }
    }

    /// `events` events under the default byte budget.
    pub fn events(events: usize) -> Self {
        PageLimit::new(events, DEFAULT_HISTORY_PAGE_BYTES)
    }
}

/// One page of history, encoded once for every reader (subscriptions queue
/// the events as they are; the history endpoint writes their envelopes).
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// Oldest first.
    pub events: Vec<Arc<Event>>,
    /// The page stopped at its limit (events or bytes), not at the end of
    /// the retained log: more events may follow its last seq.
    pub more: bool,
}

/// Fills a [`HistoryPage`] up to a [`PageLimit`], one decoded event at a
/// time (each is encoded, then its decoded form dropped). Shared by the
/// stores.
pub(crate) struct PageBuilder {
    page: HistoryPage,
    limit: PageLimit,
    bytes: usize,
}

impl PageBuilder {
    pub(crate) fn new(limit: PageLimit) -> Self {
        PageBuilder {
            page: HistoryPage::default(),
            limit,
            bytes: 0,
        }
    }

    /// Encodes and adds one event; false once the page is full.
    pub(crate) fn push(&mut self, ev: &StoredEvent) -> bool {
        let ev = Event::from_history(ev);
        self.bytes += ev.json.len();
        self.page.events.push(ev);
        !self.is_full()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.page.events.len() >= self.limit.events || self.bytes >= self.limit.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.page.events.is_empty()
    }

    /// Events so far.
    pub(crate) fn len(&self) -> usize {
        self.page.events.len()
    }

    /// Envelope bytes so far.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The page; `more` as the store found it.
    pub(crate) fn finish(mut self, more: bool) -> HistoryPage {
        self.page.more = more;
        self.page
    }
}

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

impl From<sluice_broker::connect::PoolError> for StoreError {
    fn from(e: sluice_broker::connect::PoolError) -> Self {
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
    /// Re-syncs only the subscriptions of the tasks `which` accepts (one
    /// shard's, one feed's). By default, all of them.
    fn resync_tasks(&self, _which: &dyn Fn(&str) -> bool) {
        self.resync();
    }
    /// The feeds local subscriptions need: the reader follows only those.
    /// `None` (the default): follow every feed.
    fn interest(&self) -> Option<Arc<crate::interest::Interest>> {
        None
    }
    /// The reader joined `feeds` (their groups exist now): subscriptions
    /// that read history before cannot rely on the feed for what was
    /// published in between. By default they all re-sync.
    fn joined(&self, _feeds: &[sluice_shared::FeedId]) {
        self.resync();
    }
    /// The reader of `shards` stopped reading (it lost Redis).
    fn unfollowed(&self, _shards: &[u32]) {}
    /// The readers joined `joined` feeds and left `left` (metrics).
    fn feeds_changed(&self, _joined: usize, _left: usize) {}
    /// The feed is attached and delivering (readiness).
    fn set_live(&self, live: bool);
    /// The node's consumer-group lag summed over the feeds it follows in
    /// one shard (metrics).
    fn report_lag(&self, _shard: u32, _lag: u64) {}
    /// Whether the events about to be delivered may be written to idle
    /// connections' sockets from the reader's task
    /// ([`crate::server::direct`]): the reader says no for a large batch,
    /// whose writes the connections' own tasks spread over the runtime's
    /// threads instead of one.
    fn allow_direct(&self, _allow: bool) {}
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

    /// Retained events with seq > `after`, oldest first, up to `limit`
    /// (events and bytes, see [`PageLimit`]). What a read holds at once is
    /// about the page's byte budget plus one event, however large the page
    /// would be in events.
    async fn history(
        &self,
        task: &TaskId,
        after: Seq,
        limit: PageLimit,
    ) -> Result<HistoryPage, StoreError>;

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
