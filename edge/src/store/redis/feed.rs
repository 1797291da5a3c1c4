//! The feed reader: one per node (on a cluster, one per shard), tailing
//! shard feeds through the node's consumer group (`edge:<node-id>`) with
//! `XREADGROUP ... NOACK BLOCK`, on a dedicated connection whose response
//! timeout is disabled (a timed-out blocking read left on the server would
//! swallow the next message). It is the only Redis reader of live events on
//! the node, whatever the number of connections.
//!
//! Its life is a loop of sessions: attach (find the node, connect, create
//! the groups, load the function, take a first count), re-sync every local
//! subscription, then read until an error; then back off and attach again.
//!
//! Losing its place (Redis restarted, the group destroyed, the feed trimmed
//! past the cursor) is detected (`super::loss`) and answered with
//! [`FeedSink::resync`]: every local subscription re-checks the task log
//! from its last delivered seq.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};
use sluice_broker::connect::RedisPool as Pool;
use sluice_broker::error::{classify, Chain, ErrorClass};
use sluice_broker::{connect, resp, Unavailable};
use sluice_shared::{codec, keys};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::control::Control;
use super::loss::{Sample, ShardCount};
use crate::store::FeedSink;

/// Longest single blocking read; bounds how stale a cancel check can be even
/// if `CLIENT UNBLOCK` fails.
pub const BLOCK: Duration = Duration::from_secs(2);
/// Entries per read.
pub const BATCH: usize = 1024;
/// Largest reply whose events may be written to idle connections from the
/// reader's task ([`crate::server::direct`]).
pub const DIRECT_MAX_ENTRIES: usize = 8;
/// How often the reader checks that it did not lose entries.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a cancelled read may take to return after `CLIENT UNBLOCK`.
const UNBLOCK_SLACK: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Kept short: after a failover the reader should attach to the promoted
/// primary within a couple of seconds of it serving.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub node_id: String,
    pub group: String,
    pub feeds: Vec<String>,
    /// The deployment's shard count (`feeds` may be a subset of them).
    pub shards: u32,
}

impl FeedSettings {
    pub fn new(node_id: &str, shards: u32) -> Self {
        FeedSettings {
            node_id: node_id.to_owned(),
            group: keys::group_name(node_id),
            feeds: keys::feed_keys(shards),
            shards,
        }
    }
}

pub struct FeedReader {
    url: String,
    pool: Pool,
    settings: FeedSettings,
    sink: Arc<dyn FeedSink>,
}

/// Why a session ended without a cancel: the connection or the groups need
/// rebuilding. Every one is answered alike (back off, attach again); the
/// variant says which step failed, the source what Redis said.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("cannot find the primary serving the feed")]
    Route(#[source] RedisError),
    #[error("cannot connect to Redis")]
    Connect(#[source] RedisError),
    #[error("cannot create the consumer groups")]
    Groups(#[source] Unavailable),
    #[error("cannot load the publish function")]
    Function(#[source] Unavailable),
    #[error("cannot check the feeds")]
    Check(#[source] Unavailable),
    /// `NOGROUP`: Redis restarted empty, or someone destroyed the group.
    #[error("consumer group gone")]
    GroupGone(#[source] RedisError),
    #[error("feed read failed")]
    Read(#[source] RedisError),
}

enum ReadOutcome {
    Cancelled,
    Reconnect {
        cause: FeedError,
        /// The session had attached (read the feeds) before it failed.
        attached: bool,
    },
}

/// A session's connections once it attached.
struct Attached {
    /// The dedicated connection of the blocking reads.
    conn: redis::aio::MultiplexedConnection,
    /// Its `CLIENT ID`, to unblock it on cancel.
    client_id: Option<i64>,
    ctl: Control,
    counts: Vec<ShardCount>,
}

impl FeedReader {
    pub fn new(url: String, pool: Pool, settings: FeedSettings, sink: Arc<dyn FeedSink>) -> Self {
        FeedReader {
            url,
            pool,
            settings,
            sink,
        }
    }

    /// Runs until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("feed_reader", group = %self.settings.group);
        async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                if cancel.is_cancelled() {
                    break;
                }
                let (cause, attached) = match self.session(&cancel).await {
                    ReadOutcome::Cancelled => break,
                    ReadOutcome::Reconnect { cause, attached } => (cause, attached),
                };
                // A session that had attached starts the backoff over: one
                // blip must not leave every later reconnect waiting the
                // maximum.
                if attached {
                    backoff = BACKOFF_MIN;
                }
                self.sink.set_live(false);
                tracing::warn!(cause = %Chain(&cause), retry_in_ms = backoff.as_millis() as u64, "feed reader lost Redis");
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            self.sink.set_live(false);
            tracing::debug!("feed reader stopped");
        }
        .instrument(span)
        .await
    }

    /// One connection's life: attach, then read until an error or cancel.
    async fn session(&self, cancel: &CancellationToken) -> ReadOutcome {
        let mut attached = match self.attach().await {
            Ok(a) => a,
            Err(cause) => {
                return ReadOutcome::Reconnect {
                    cause,
                    attached: false,
                }
            }
        };
        // Whatever happened while we were not reading (first start, a Redis
        // restart, a destroyed group) is recovered from the task logs.
        self.resync();
        self.sink.set_live(true);
        tracing::info!(shards = self.settings.feeds.len(), "feed reader attached");
        match self.read(&mut attached, cancel).await {
            Ok(()) => ReadOutcome::Cancelled,
            Err(cause) => ReadOutcome::Reconnect {
                cause,
                attached: true,
            },
        }
    }

    /// Connects to the feeds' node, creates the groups, loads the function
    /// and takes the first count.
    async fn attach(&self) -> Result<Attached, FeedError> {
        // On a cluster, every feed of this reader lives on one primary (the
        // store runs one reader per shard): connect to that node directly,
        // found from the slot map, and find it again after any error or
        // MOVED. That is how the reader follows failovers and resharding
        // without a cluster client that stalls every request while it
        // repairs one lost node.
        let node = self.node_url().await.map_err(FeedError::Route)?;
        let mut conn = connect::dedicated(&node)
            .await
            .map_err(FeedError::Connect)?;
        let mut ctl = self.control(&node).await.map_err(FeedError::Connect)?;
        self.ensure_groups(&mut ctl)
            .await
            .map_err(FeedError::Groups)?;
        // The publish function lives on every primary; a replica promoted
        // by a failover (or a Redis restarted empty) may lack it.
        ctl.load_function().await.map_err(FeedError::Function)?;
        // A blocked read is stopped at once with CLIENT UNBLOCK on cancel.
        let client_id: Option<i64> = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .ok();
        let mut counts = vec![ShardCount::default(); self.settings.feeds.len()];
        self.check(&mut ctl, &mut counts)
            .await
            .map_err(FeedError::Check)?;
        Ok(Attached {
            conn,
            client_id,
            ctl,
            counts,
        })
    }

    /// Reads and dispatches until an error (`Err`) or `cancel` (`Ok`),
    /// checking for lost entries every [`CHECK_EVERY`].
    async fn read(&self, a: &mut Attached, cancel: &CancellationToken) -> Result<(), FeedError> {
        let cmd = self.read_cmd();
        let mut last_check = Instant::now();
        loop {
            let read = cmd.query_async::<Value>(&mut a.conn);
            tokio::pin!(read);
            // Cancel-safety: dropping `read` would leave a blocked read on the
            // server, so on cancel we unblock it and let it finish first.
            let reply = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    a.ctl.unblock(a.client_id).await;
                    let _ = tokio::time::timeout(BLOCK + UNBLOCK_SLACK, &mut read).await;
                    return Ok(());
                }
                r = &mut read => r,
            };
            match reply {
                Ok(v) => self.dispatch(&v, &mut a.counts),
                Err(e) if classify(&e) == ErrorClass::GroupMissing => {
                    return Err(FeedError::GroupGone(e))
                }
                Err(e) => return Err(FeedError::Read(e)),
            }
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                let lost = self
                    .check(&mut a.ctl, &mut a.counts)
                    .await
                    .map_err(FeedError::Check)?;
                if lost {
                    tracing::warn!("feed entries were trimmed before this node read them; resyncing subscriptions");
                    self.resync();
                }
            }
        }
    }

    /// `XREADGROUP GROUP <group> <node> COUNT .. BLOCK .. NOACK STREAMS
    /// <feeds...> > ...`
    fn read_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.settings.group)
            .arg(&self.settings.node_id)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("NOACK")
            .arg("STREAMS");
        for f in &self.settings.feeds {
            cmd.arg(f);
        }
        for _ in &self.settings.feeds {
            cmd.arg(">");
        }
        cmd
    }

    /// Re-syncs the subscriptions this reader feeds: all of them when it
    /// reads every shard, else only those of its shards (on a cluster, one
    /// shard's failover must not send every subscription back to Redis).
    fn resync(&self) {
        if self.settings.feeds.len() as u32 >= self.settings.shards {
            self.sink.resync();
            return;
        }
        let mine: Vec<u32> = self
            .settings
            .feeds
            .iter()
            .filter_map(|f| keys::feed_shard(f))
            .collect();
        self.sink.resync_shards(&mine, self.settings.shards);
    }

    /// The node this reader reads from: the Redis of the URL, or on a
    /// cluster the primary serving this reader's feeds.
    async fn node_url(&self) -> redis::RedisResult<String> {
        match (&self.pool, self.settings.feeds.first()) {
            (Pool::Cluster(cluster), Some(feed)) => cluster.primary_for(feed.as_bytes()).await,
            _ => Ok(self.url.clone()),
        }
    }

    /// Short commands beside the blocking read: the node pool on a single
    /// Redis, a connection of its own to the same node on a cluster.
    async fn control(&self, node: &str) -> redis::RedisResult<Control> {
        if self.pool.is_cluster() {
            connect::node(node).await.map(Control::Node)
        } else {
            Ok(Control::Pool(self.pool.clone()))
        }
    }

    async fn ensure_groups(&self, ctl: &mut Control) -> Result<(), Unavailable> {
        for feed in &self.settings.feeds {
            let mut create = redis::cmd("XGROUP");
            create
                .arg("CREATE")
                .arg(feed)
                .arg(&self.settings.group)
                .arg("$")
                .arg("MKSTREAM");
            match ctl.query(&create).await {
                Ok(_) => {}
                Err(e) if e.class() == Some(ErrorClass::GroupExists) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads every feed's counters, reports the group's lag, and returns
    /// true when entries were lost since the last check (see
    /// [`ShardCount::check`]).
    async fn check(
        &self,
        ctl: &mut Control,
        counts: &mut [ShardCount],
    ) -> Result<bool, Unavailable> {
        let mut lost = false;
        let samples = self.sample(ctl).await?;
        for ((feed, count), now) in self
            .settings
            .feeds
            .iter()
            .zip(counts.iter_mut())
            .zip(samples)
        {
            if let (Some(added), Some(read), Some(shard)) =
                (now.entries_added, now.entries_read, keys::feed_shard(feed))
            {
                self.sink.report_lag(shard, added.saturating_sub(read));
            }
            let found = count.check(now);
            if found.trimmed > 0 {
                tracing::warn!(feed = %feed, missed = found.trimmed, "feed entries were trimmed past this node's cursor; resyncing");
            }
            if found.went_back {
                tracing::warn!(feed = %feed, "the feed went back in time (Redis lost writes); resyncing");
            }
            lost |= found.lost();
        }
        Ok(lost)
    }

    /// `XINFO GROUPS` and `XINFO STREAM` of every feed, in one round trip:
    /// the live read waits for the check, so it must be short (as 32
    /// sequential commands it held every event back for 10–20 ms every
    /// [`CHECK_EVERY`] under load, the edge's p99 delivery latency).
    async fn sample(&self, ctl: &mut Control) -> Result<Vec<Sample>, Unavailable> {
        let feeds = &self.settings.feeds;
        let mut pipe = redis::pipe();
        for feed in feeds {
            pipe.cmd("XINFO").arg("GROUPS").arg(feed);
            pipe.cmd("XINFO").arg("STREAM").arg(feed);
        }
        let replies = ctl.query_pipe(&pipe).await?;
        if replies.len() != 2 * feeds.len() {
            return Err(Unavailable::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "XINFO pipeline",
                format!("{} replies to {} commands", replies.len(), 2 * feeds.len()),
            ))));
        }
        Ok(replies
            .chunks_exact(2)
            .map(|pair| Sample {
                entries_read: resp::xinfo_groups(&pair[0])
                    .into_iter()
                    .find(|g| g.name == self.settings.group)
                    .and_then(|g| g.entries_read),
                entries_added: resp::field_u64(&pair[1], "entries-added"),
                length: resp::field_u64(&pair[1], "length"),
            })
            .collect())
    }

    /// Counts and delivers the entries of one `XREADGROUP` reply. Events
    /// of a small reply are written to idle connections from here; a large
    /// one (the node is busy) goes through the connections' queues, so
    /// their own tasks write in parallel and the next read is not held
    /// back by every subscriber's write.
    fn dispatch(&self, reply: &Value, counts: &mut [ShardCount]) {
        let replies = resp::stream_replies(reply);
        let total: usize = replies
            .iter()
            .map(|(_, entries)| match entries {
                Value::Array(items) => items.len(),
                _ => 0,
            })
            .sum();
        self.sink.allow_direct(total <= DIRECT_MAX_ENTRIES);
        for (stream, entries) in replies {
            let shard = self
                .settings
                .feeds
                .iter()
                .position(|f| f.as_bytes() == stream);
            let Ok(entries) = resp::parse_entries(entries) else {
                tracing::warn!("malformed XREADGROUP reply skipped");
                continue;
            };
            if let Some(i) = shard {
                counts[i].received(entries.len() as u64);
            }
            for (id, fields) in entries {
                self.deliver(&id, &fields);
            }
        }
    }

    /// Delivers one feed entry to the sink if a local subscriber wants its
    /// task; skips (with a warning) an entry that does not decode.
    fn deliver(&self, id: &str, fields: &HashMap<String, Vec<u8>>) {
        let Some(task) = fields.get("task").and_then(|t| std::str::from_utf8(t).ok()) else {
            tracing::warn!(entry = %id, "feed entry without a task field skipped");
            return;
        };
        if !self.sink.wants(task) {
            return;
        }
        let Some(bytes) = fields.get("e") else {
            tracing::warn!(entry = %id, "feed entry without an event skipped");
            return;
        };
        match codec::decode_event(bytes) {
            Ok(ev) if ev.task == task => self.sink.deliver(&ev),
            Ok(_) => tracing::warn!(entry = %id, "feed entry with mismatched task skipped"),
            Err(e) => {
                tracing::warn!(entry = %id, cause = %e, "undecodable feed entry skipped")
            }
        }
    }
}
