//! The feed reader: one per node, tailing every shard feed through the node's
//! consumer group (`edge:<node-id>`) with `XREADGROUP ... NOACK BLOCK`, on a
//! dedicated connection whose response timeout is disabled (a timed-out
//! blocking read left on the server would swallow the next message). It is
//! the only Redis reader of live events on the node, whatever the number of
//! connections.
//!
//! Losing its place (Redis restarted, the group destroyed, the feed trimmed
//! past the cursor) is detected and answered with [`FeedSink::resync`]: every
//! local subscription re-checks the task log from its last delivered seq.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;
use sluice_broker::connect::RedisPool as Pool;
use sluice_broker::{connect, resp};
use sluice_shared::{codec, keys};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::FeedSink;

/// Longest single blocking read; bounds how stale a cancel check can be even
/// if `CLIENT UNBLOCK` fails.
pub const BLOCK: Duration = Duration::from_secs(2);
/// Entries per read.
pub const BATCH: usize = 1024;
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
    /// Set once a session attached (its groups exist, it is reading).
    attached: std::sync::atomic::AtomicBool,
    url: String,
    pool: Pool,
    settings: FeedSettings,
    sink: Arc<dyn FeedSink>,
}

/// Per-shard accounting to detect skipped entries: the group's
/// `entries-read` at the last check, and what we received since.
#[derive(Clone, Copy, Default)]
struct ShardCount {
    base: Option<u64>,
    received: u64,
    /// The feed's `entries-added` at the last check: a stream never adds
    /// fewer entries over time, so a smaller value means Redis went back in
    /// time (restart without persistence, a failover that lost writes).
    added: Option<u64>,
    /// High-water mark of `entries-added - length - entries-read`: how many
    /// entries were trimmed off the feed without this group reading them.
    /// Redis keeps counting `entries-read` one by one after such a trim, so
    /// the figure stays at what was missed; only a rise is a new loss.
    trimmed_unread: u64,
}

enum ReadOutcome {
    Cancelled,
    /// The connection or the groups need rebuilding.
    Reconnect(String),
}

impl FeedReader {
    pub fn new(url: String, pool: Pool, settings: FeedSettings, sink: Arc<dyn FeedSink>) -> Self {
        FeedReader {
            attached: std::sync::atomic::AtomicBool::new(false),
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
                match self.session(&cancel).await {
                    ReadOutcome::Cancelled => break,
                    ReadOutcome::Reconnect(cause) => {
                        // A session that had attached starts the backoff
                        // over: one blip must not leave every later
                        // reconnect waiting the maximum.
                        if self.attached.swap(false, std::sync::atomic::Ordering::AcqRel) {
                            backoff = BACKOFF_MIN;
                        }
                        self.sink.set_live(false);
                        tracing::warn!(cause = %cause, retry_in_ms = backoff.as_millis() as u64, "feed reader lost Redis");
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            self.sink.set_live(false);
            tracing::debug!("feed reader stopped");
        }
        .instrument(span)
        .await
    }

    /// One connection's life: set up groups, then read until an error.
    async fn session(&self, cancel: &CancellationToken) -> ReadOutcome {
        // On a cluster, every feed of this reader lives on one primary (the
        // store runs one reader per shard): connect to that node directly,
        // found from the slot map, and find it again after any error or
        // MOVED. That is how the reader follows failovers and resharding
        // without a cluster client that stalls every request while it
        // repairs one lost node.
        let node = match self.node_url().await {
            Ok(n) => n,
            Err(e) => return ReadOutcome::Reconnect(e.to_string()),
        };
        let mut conn = match connect::dedicated(&node).await {
            Ok(c) => c,
            Err(e) => return ReadOutcome::Reconnect(e.to_string()),
        };
        let mut ctl = match self.control(&node).await {
            Ok(c) => c,
            Err(e) => return ReadOutcome::Reconnect(e),
        };
        if let Err(e) = self.ensure_groups(&mut ctl).await {
            return ReadOutcome::Reconnect(e);
        }
        // The publish function lives on every primary; a replica promoted
        // by a failover (or a Redis restarted empty) may lack it.
        if let Err(e) = ctl.load_function().await {
            return ReadOutcome::Reconnect(e);
        }
        // A blocked read is stopped at once with CLIENT UNBLOCK on cancel.
        let client_id: Option<i64> = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .ok();
        let mut counts = vec![ShardCount::default(); self.settings.feeds.len()];
        if let Err(e) = self.check(&mut ctl, &mut counts).await {
            return ReadOutcome::Reconnect(e);
        }
        // Whatever happened while we were not reading (first start, a Redis
        // restart, a destroyed group) is recovered from the task logs.
        self.resync();
        self.sink.set_live(true);
        tracing::info!(shards = self.settings.feeds.len(), "feed reader attached");
        self.attached
            .store(true, std::sync::atomic::Ordering::Release);
        let mut last_check = Instant::now();

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

        loop {
            let read = cmd.query_async::<Value>(&mut conn);
            tokio::pin!(read);
            // Cancel-safety: dropping `read` would leave a blocked read on the
            // server, so on cancel we unblock it and let it finish first.
            let reply = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    ctl.unblock(client_id).await;
                    let _ = tokio::time::timeout(BLOCK + UNBLOCK_SLACK, &mut read).await;
                    return ReadOutcome::Cancelled;
                }
                r = &mut read => r,
            };
            match reply {
                Ok(v) => self.dispatch(&v, &mut counts),
                Err(e) if is_nogroup(&e) => {
                    // Redis restarted empty or someone destroyed our group.
                    return ReadOutcome::Reconnect(format!("consumer group gone: {e}"));
                }
                Err(e) => return ReadOutcome::Reconnect(e.to_string()),
            }
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                match self.check(&mut ctl, &mut counts).await {
                    Ok(true) => {
                        tracing::warn!("feed entries were trimmed before this node read them; resyncing subscriptions");
                        self.resync();
                    }
                    Ok(false) => {}
                    Err(e) => return ReadOutcome::Reconnect(e),
                }
            }
        }
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
    async fn control(&self, node: &str) -> Result<Control, String> {
        if self.pool.is_cluster() {
            connect::node(node)
                .await
                .map(Control::Node)
                .map_err(|e| e.to_string())
        } else {
            Ok(Control::Pool(self.pool.clone()))
        }
    }

    async fn ensure_groups(&self, ctl: &mut Control) -> Result<(), String> {
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
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Compares the group's `entries-read` with what we received. Returns
    /// true when entries were skipped (trimmed before we read them).
    async fn check(&self, ctl: &mut Control, counts: &mut [ShardCount]) -> Result<bool, String> {
        let mut lost = false;
        for (i, feed) in self.settings.feeds.iter().enumerate() {
            let mut groups = redis::cmd("XINFO");
            groups.arg("GROUPS").arg(feed);
            let reply = ctl.query(&groups).await.map_err(|e| e.to_string())?;
            let read = resp::xinfo_groups(&reply)
                .into_iter()
                .find(|g| g.name == self.settings.group)
                .and_then(|g| g.entries_read);
            let mut stream = redis::cmd("XINFO");
            stream.arg("STREAM").arg(feed);
            let info = ctl.query(&stream).await.map_err(|e| e.to_string())?;
            let added = resp::field_u64(&info, "entries-added");
            if let (Some(a), Some(r)) = (added, read) {
                if let Some(shard) = keys::feed_shard(feed) {
                    self.sink.report_lag(shard, a.saturating_sub(r));
                }
            }
            let c = &mut counts[i];
            let skipped = match (c.base, read) {
                (Some(base), Some(now)) => now.saturating_sub(base) > c.received,
                (Some(_), None) => true,
                _ => false,
            };
            let went_back = matches!((c.added, added), (Some(before), Some(now)) if now < before);
            // Entries trimmed past our cursor before we read them. The
            // `entries-read` comparison above only sees them once the group
            // reads again — and, as Redis increments `entries-read` by one
            // per delivered entry, not even then — so a node whose stall
            // outlived the feed would otherwise wait for the next event of
            // each task (forever, if the trimmed one was a final event).
            let trimmed_unread = match (added, resp::field_u64(&info, "length"), read) {
                (Some(added), Some(len), Some(read)) => {
                    added.saturating_sub(len).saturating_sub(read)
                }
                _ => c.trimmed_unread,
            };
            let trimmed = c.base.is_some() && trimmed_unread > c.trimmed_unread;
            if trimmed {
                tracing::warn!(feed = %feed, missed = trimmed_unread - c.trimmed_unread, "feed entries were trimmed past this node's cursor; resyncing");
            }
            if went_back {
                tracing::warn!(feed = %feed, "the feed went back in time (Redis lost writes); resyncing");
            }
            lost |= skipped || went_back || trimmed;
            *c = ShardCount {
                base: read,
                received: 0,
                added: added.or(c.added),
                trimmed_unread: trimmed_unread.max(c.trimmed_unread),
            };
        }
        Ok(lost)
    }

    fn dispatch(&self, reply: &Value, counts: &mut [ShardCount]) {
        for (stream, entries) in resp::stream_replies(reply) {
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
                counts[i].received += entries.len() as u64;
            }
            for (id, fields) in entries {
                let Some(task) = fields.get("task").and_then(|t| std::str::from_utf8(t).ok())
                else {
                    tracing::warn!(entry = %id, "feed entry without a task field skipped");
                    continue;
                };
                if !self.sink.wants(task) {
                    continue;
                }
                let Some(bytes) = fields.get("e") else {
                    tracing::warn!(entry = %id, "feed entry without an event skipped");
                    continue;
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
    }
}

/// Where a reader sends its short commands (group setup, checks, unblock).
enum Control {
    Pool(Pool),
    Node(redis::aio::MultiplexedConnection),
}

impl Control {
    async fn query(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self {
            Control::Pool(pool) => {
                let mut conn = pool.get().await.map_err(connect::pool_error)?;
                cmd.query_async(&mut conn).await
            }
            Control::Node(conn) => cmd.query_async(conn).await,
        }
    }

    async fn load_function(&mut self) -> Result<(), String> {
        match self {
            Control::Pool(pool) => crate::store::redis::reload_function(pool)
                .await
                .map_err(|e| e.to_string()),
            Control::Node(conn) => sluice_broker::function::load(conn)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn unblock(&mut self, client_id: Option<i64>) {
        let Some(id) = client_id else { return };
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("UNBLOCK").arg(id);
        let _ = self.query(&cmd).await;
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}
