//! The feed reader: one per node (on a cluster, one per shard), tailing the
//! feeds its node follows through the node's consumer group
//! (`edge:<node-id>`) with `XREADGROUP ... NOACK` (one read covers every
//! followed feed of its shards: a blocking read up to [`BLOCK_MAX_FEEDS`]
//! feeds, a read every [`poll_every`] beyond, where blocking on every feed
//! would cost Redis more), on a dedicated connection whose response timeout
//! is disabled (a timed-out blocking read left on the server would swallow
//! the next message). It is the only Redis reader of live events on the
//! node, whatever the number of connections.
//!
//! It follows only the feeds local subscriptions need
//! ([`crate::interest::Interest`]): before each read it joins the feeds
//! that became wanted (`sluice_feeds_join`: the group is created at the
//! feed's end, then the feeds' subscriptions catch up from the task logs,
//! so nothing published before the group existed is missed) and leaves the
//! feeds nobody needed for the grace period (`sluice_feeds_leave`: the
//! group is destroyed, nothing is left behind). Subscriptions waiting for a
//! join are released by [`FeedSink::joined`]. A feed that becomes wanted
//! while the read blocks interrupts it (`CLIENT UNBLOCK`). With nothing to
//! follow the reader sends no read at all, only a `PING` per [`BLOCK`].
//!
//! Its life is a loop of sessions: attach (find the node, connect, load the
//! function, drop this node's groups on feeds it does not need, join the
//! ones it does, take a first count), re-sync every local subscription of
//! its shards, then read until an error; then back off and attach again.
//!
//! Losing its place (Redis restarted, the group destroyed, a feed trimmed
//! past the cursor) is detected (`super::loss`, counters read with
//! `sluice_feeds_check`) and answered with [`FeedSink::resync_tasks`]: the
//! subscriptions of the feeds concerned re-check their task logs from their
//! last delivered seq.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{RedisError, Value};
use sluice_broker::connect::RedisPool as Pool;
use sluice_broker::error::{classify, Chain, ErrorClass};
use sluice_broker::function::FeedsFn;
use sluice_broker::{connect, resp, Unavailable};
use sluice_shared::codec;
use sluice_shared::keys::{self, FeedId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::control::Control;
use super::loss::{Sample, ShardCount};
use crate::interest::Interest;
use crate::store::FeedSink;

/// Longest single blocking read; bounds how stale a cancel check can be even
/// if `CLIENT UNBLOCK` fails, and how late a feed past its grace is left.
pub const BLOCK: Duration = Duration::from_secs(2);
/// Entries per read.
pub const BATCH: usize = 1024;
/// Largest reply whose events may be written to idle connections from the
/// reader's task ([`crate::server::direct`]).
pub const DIRECT_MAX_ENTRIES: usize = 8;
/// Up to this many followed feeds the reader blocks on them; beyond, it
/// polls ([`poll_every`]).
pub const BLOCK_MAX_FEEDS: usize = 32;
const POLL_PER_FEED: Duration = Duration::from_micros(20);
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(10);
/// How often the reader checks that it did not lose entries.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a cancelled read may take to return after `CLIENT UNBLOCK`.
const UNBLOCK_SLACK: Duration = Duration::from_secs(1);
/// How long a read interrupted for a join is given to return before the
/// `CLIENT UNBLOCK` is sent again.
const UNBLOCK_RETRY: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Kept short: after a failover the reader should attach to the promoted
/// primary within a couple of seconds of it serving.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub node_id: String,
    pub group: String,
    /// The shards whose feeds this reader follows (on a cluster, one).
    pub shards: Vec<u32>,
    /// The deployment's shard count.
    pub total: u32,
    /// Also follow each shard's legacy feed, always (a migration from the
    /// first schema: README "Migrating from 16 feeds").
    pub legacy: bool,
}

impl FeedSettings {
    pub fn new(node_id: &str, shards: u32, legacy: bool) -> Self {
        FeedSettings {
            node_id: node_id.to_owned(),
            group: keys::group_name(node_id),
            shards: (0..shards.max(1)).collect(),
            total: shards.max(1),
            legacy,
        }
    }

    /// Every feed key of this reader's shards, legacy feeds included.
    fn all_feeds(&self) -> impl Iterator<Item = FeedId> + '_ {
        self.shards.iter().flat_map(|s| FeedId::of_shard(*s, true))
    }
}

pub struct FeedReader {
    url: String,
    pool: Pool,
    settings: FeedSettings,
    sink: Arc<dyn FeedSink>,
    /// What local subscriptions need; `None`: every feed of the shards.
    interest: Option<Arc<Interest>>,
    /// Fires when a feed of these shards becomes wanted.
    wake: Arc<Notify>,
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
    #[error("cannot join or leave feeds")]
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

/// A session's connections and the feeds it follows once it attached.
struct Attached {
    /// The dedicated connection of the blocking reads.
    conn: redis::aio::MultiplexedConnection,
    /// Its `CLIENT ID`, to unblock it on cancel.
    client_id: Option<i64>,
    ctl: Control,
    /// Followed feeds: key and loss accounting.
    followed: BTreeMap<FeedId, Followed>,
}

struct Followed {
    key: String,
    count: ShardCount,
}

impl Attached {
    /// `XREADGROUP GROUP <group> <node> COUNT .. [BLOCK ..] NOACK STREAMS
    /// <feeds...> > ...` over the followed feeds.
    fn read_cmd(&self, settings: &FeedSettings, block: bool) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&settings.group)
            .arg(&settings.node_id)
            .arg("COUNT")
            .arg(BATCH);
        if block {
            cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        cmd.arg("NOACK").arg("STREAMS");
        for f in self.followed.values() {
            cmd.arg(&f.key);
        }
        for _ in &self.followed {
            cmd.arg(">");
        }
        cmd
    }
}

impl FeedReader {
    pub fn new(url: String, pool: Pool, settings: FeedSettings, sink: Arc<dyn FeedSink>) -> Self {
        let interest = sink.interest();
        let wake = match &interest {
            Some(i) => i.watch(&settings.shards),
            None => Arc::new(Notify::new()),
        };
        FeedReader {
            url,
            pool,
            settings,
            sink,
            interest,
            wake,
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
        self.resync_shards();
        self.sink.set_live(true);
        self.sink.feeds_changed(attached.followed.len(), 0);
        tracing::info!(
            shards = self.settings.shards.len(),
            feeds = attached.followed.len(),
            "feed reader attached"
        );
        let result = self.read(&mut attached, cancel).await;
        // Not read any more until the next session attaches (its groups
        // stay, so it resumes where this one stopped).
        self.sink.unfollowed(&self.settings.shards);
        self.sink.feeds_changed(0, attached.followed.len());
        match result {
            Ok(()) => ReadOutcome::Cancelled,
            Err(cause) => ReadOutcome::Reconnect {
                cause,
                attached: true,
            },
        }
    }

    /// Connects to the feeds' node, loads the function, leaves the feeds
    /// not needed (groups an earlier life left behind), joins the ones
    /// needed and takes the first count.
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
        // The functions live on every primary; a replica promoted by a
        // failover (or a Redis restarted empty) may lack them.
        ctl.load_function().await.map_err(FeedError::Function)?;
        let wanted = self.wanted();
        let unwanted: Vec<FeedId> = self
            .settings
            .all_feeds()
            .filter(|f| !wanted.contains(f))
            .collect();
        self.groups(&mut ctl, FeedsFn::Leave, &unwanted)
            .await
            .map_err(FeedError::Groups)?;
        let wanted: Vec<FeedId> = wanted.into_iter().collect();
        self.groups(&mut ctl, FeedsFn::Join, &wanted)
            .await
            .map_err(FeedError::Groups)?;
        // A blocked read is stopped at once with CLIENT UNBLOCK on cancel.
        let client_id: Option<i64> = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .ok();
        self.sink.joined(&wanted);
        let mut attached = Attached {
            conn,
            client_id,
            ctl,
            followed: wanted.into_iter().map(followed).collect(),
        };
        self.check(&mut attached).await.map_err(FeedError::Check)?;
        Ok(attached)
    }

    /// The feeds to follow now: those local subscriptions need (or every
    /// feed of the shards without an interest), and the legacy feeds when
    /// migrating.
    fn wanted(&self) -> BTreeSet<FeedId> {
        let s = &self.settings;
        let mut wanted: BTreeSet<FeedId> = match &self.interest {
            Some(i) => i.wanted(&s.shards, Instant::now()),
            None => s
                .shards
                .iter()
                .flat_map(|sh| FeedId::of_shard(*sh, false))
                .collect(),
        };
        if s.legacy {
            wanted.extend(s.shards.iter().map(|sh| FeedId::legacy(*sh)));
        }
        wanted
    }

    /// Runs one feed function over `feeds`, one call per shard (a shard's
    /// feeds share a slot), in one round trip.
    async fn groups(
        &self,
        ctl: &mut Control,
        f: FeedsFn,
        feeds: &[FeedId],
    ) -> Result<Vec<Value>, Unavailable> {
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for keys in by_shard(feeds).values() {
            pipe.add_command(f.cmd(keys, Some(&self.settings.group)));
        }
        ctl.query_pipe(&pipe).await
    }

    /// Joins the feeds that became wanted and leaves those past their
    /// grace; the subscriptions of joined feeds catch up from the task logs
    /// (events published before the group existed are there).
    async fn follow(&self, a: &mut Attached) -> Result<(), Unavailable> {
        let wanted = self.wanted();
        let left: Vec<FeedId> = a
            .followed
            .keys()
            .filter(|f| !wanted.contains(f))
            .copied()
            .collect();
        let joined: Vec<FeedId> = wanted
            .iter()
            .filter(|f| !a.followed.contains_key(f))
            .copied()
            .collect();
        if !left.is_empty() {
            self.groups(&mut a.ctl, FeedsFn::Leave, &left).await?;
            for f in &left {
                a.followed.remove(f);
            }
            for shard in left.iter().map(|f| f.shard).collect::<BTreeSet<_>>() {
                if !a.followed.keys().any(|f| f.shard == shard) {
                    self.sink.report_lag(shard, 0);
                }
            }
        }
        if !joined.is_empty() {
            self.groups(&mut a.ctl, FeedsFn::Join, &joined).await?;
            a.followed.extend(joined.iter().copied().map(followed));
            self.sink.joined(&joined);
        }
        if !left.is_empty() || !joined.is_empty() {
            self.sink.feeds_changed(joined.len(), left.len());
            tracing::debug!(
                joined = joined.len(),
                left = left.len(),
                followed = a.followed.len(),
                "feeds followed changed"
            );
        }
        Ok(())
    }

    /// Reads and dispatches until an error (`Err`) or `cancel` (`Ok`),
    /// following the wanted feeds and checking for lost entries every
    /// [`CHECK_EVERY`].
    async fn read(&self, a: &mut Attached, cancel: &CancellationToken) -> Result<(), FeedError> {
        let mut last_check = Instant::now();
        loop {
            self.follow(a).await.map_err(FeedError::Groups)?;
            if a.followed.is_empty() {
                // Nothing to read: wait for a feed to be wanted, checking
                // the connection once per BLOCK (a dead Redis must show in
                // readiness, as it would with a read pending).
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(BLOCK) => {
                        redis::cmd("PING")
                            .query_async::<()>(&mut a.conn)
                            .await
                            .map_err(FeedError::Read)?;
                    }
                }
                continue;
            }
            // A blocking read costs Redis about a microsecond per stream it
            // names each time it blocks and wakes; past BLOCK_MAX_FEEDS
            // feeds the reader polls instead ([`poll_every`]).
            let blocking = a.followed.len() <= BLOCK_MAX_FEEDS;
            let reply = if blocking {
                match self.blocking_read(a, cancel).await {
                    Some(reply) => reply,
                    None => return Ok(()),
                }
            } else {
                a.read_cmd(&self.settings, false)
                    .query_async::<Value>(&mut a.conn)
                    .await
            };
            match reply {
                Ok(v) => self.dispatch(&v, &mut a.followed),
                Err(e) if classify(&e) == ErrorClass::GroupMissing => {
                    return Err(FeedError::GroupGone(e))
                }
                Err(e) => return Err(FeedError::Read(e)),
            }
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                let lost = self.check(a).await.map_err(FeedError::Check)?;
                if !lost.is_empty() {
                    tracing::warn!(feeds = lost.len(), "feed entries were lost before this node read them; resyncing their subscriptions");
                    self.resync_feeds(&lost);
                }
            }
            if !blocking {
                // A feed becoming wanted ends the pause: it is joined at
                // once.
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(poll_every(a.followed.len())) => {}
                }
            }
        }
    }

    /// One blocking read of the followed feeds; `None` on cancel.
    /// Cancel-safety: dropping the read would leave it blocked on the
    /// server, so on cancel (or to join a feed) it is unblocked and let
    /// finish first.
    async fn blocking_read(
        &self,
        a: &mut Attached,
        cancel: &CancellationToken,
    ) -> Option<redis::RedisResult<Value>> {
        let cmd = a.read_cmd(&self.settings, true);
        let read = cmd.query_async::<Value>(&mut a.conn);
        tokio::pin!(read);
        Some(tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                a.ctl.unblock(a.client_id).await;
                let _ = tokio::time::timeout(BLOCK + UNBLOCK_SLACK, &mut read).await;
                return None;
            }
            // Polled before the wake-up, so the read is on its way when a
            // wake-up interrupts it.
            r = &mut read => r,
            _ = self.wake.notified() => {
                // The UNBLOCK travels on another connection and may reach
                // Redis before the read does: repeat it until the read
                // returns (within BLOCK in any case).
                loop {
                    a.ctl.unblock(a.client_id).await;
                    if let Ok(r) = tokio::time::timeout(UNBLOCK_RETRY, &mut read).await {
                        break r;
                    }
                }
            }
        })
    }

    /// Re-syncs every subscription of this reader's shards (all of them
    /// when it reads every shard: on a cluster, one shard's failover must
    /// not send every subscription back to Redis).
    fn resync_shards(&self) {
        let s = &self.settings;
        if s.shards.len() as u32 >= s.total {
            self.sink.resync();
            return;
        }
        let (shards, total) = (&s.shards, s.total);
        self.sink
            .resync_tasks(&|task| shards.contains(&keys::shard_of(task, total)));
    }

    /// Re-syncs the subscriptions of `feeds` (a legacy feed's: its shard's).
    fn resync_feeds(&self, feeds: &[FeedId]) {
        let total = self.settings.total;
        self.sink.resync_tasks(&|task| {
            let f = FeedId::of(task, total);
            feeds.contains(&f) || feeds.contains(&FeedId::legacy(f.shard))
        });
    }

    /// The node this reader reads from: the Redis of the URL, or on a
    /// cluster the primary serving this reader's shard.
    async fn node_url(&self) -> redis::RedisResult<String> {
        match (&self.pool, self.settings.shards.first()) {
            (Pool::Cluster(cluster), Some(shard)) => {
                cluster
                    .primary_for(FeedId::legacy(*shard).key().as_bytes())
                    .await
            }
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

    /// Reads the followed feeds' counters, reports the lag per shard, and
    /// returns the feeds that lost entries since the last check (see
    /// [`ShardCount::check`]).
    async fn check(&self, a: &mut Attached) -> Result<Vec<FeedId>, Unavailable> {
        let feeds: Vec<FeedId> = a.followed.keys().copied().collect();
        let replies = self.groups(&mut a.ctl, FeedsFn::Check, &feeds).await?;
        // Replies come shard by shard, feeds in order within each (the
        // order of `by_shard`, which is the followed map's).
        let samples: Vec<Sample> = replies
            .iter()
            .flat_map(|r| match r {
                Value::Array(items) => items.chunks_exact(3).map(sample).collect(),
                _ => Vec::new(),
            })
            .collect();
        if samples.len() != feeds.len() {
            return Err(Unavailable::Redis(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "sluice_feeds_check",
                format!("{} samples for {} feeds", samples.len(), feeds.len()),
            ))));
        }
        let mut lost = Vec::new();
        let mut lag: BTreeMap<u32, u64> = BTreeMap::new();
        for (feed, now) in feeds.iter().zip(samples) {
            let Some(f) = a.followed.get_mut(feed) else {
                continue;
            };
            if let (Some(added), Some(read)) = (now.entries_added, now.entries_read) {
                *lag.entry(feed.shard).or_default() += added.saturating_sub(read);
            }
            let found = f.count.check(now);
            if found.trimmed > 0 {
                tracing::warn!(feed = %f.key, missed = found.trimmed, "feed entries were trimmed past this node's cursor; resyncing");
            }
            if found.went_back {
                tracing::warn!(feed = %f.key, "the feed went back in time (Redis lost writes); resyncing");
            }
            if found.lost() {
                lost.push(*feed);
            }
        }
        for (shard, lag) in lag {
            self.sink.report_lag(shard, lag);
        }
        Ok(lost)
    }

    /// Counts and delivers the entries of one `XREADGROUP` reply. Events
    /// of a small reply are written to idle connections from here; a large
    /// one (the node is busy) goes through the connections' queues, so
    /// their own tasks write in parallel and the next read is not held
    /// back by every subscriber's write.
    fn dispatch(&self, reply: &Value, followed: &mut BTreeMap<FeedId, Followed>) {
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
            let feed = std::str::from_utf8(stream).ok().and_then(FeedId::parse);
            let Ok(entries) = resp::parse_entries(entries) else {
                tracing::warn!("malformed XREADGROUP reply skipped");
                continue;
            };
            if let Some(f) = feed.and_then(|f| followed.get_mut(&f)) {
                f.count.received(entries.len() as u64);
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

/// The pause between two reads of a reader that polls (more than
/// [`BLOCK_MAX_FEEDS`] feeds followed): [`POLL_PER_FEED`] per feed,
/// between [`POLL_MIN`] and [`POLL_MAX`]. A blocking read costs Redis about
/// a microsecond per stream named each time it blocks and is woken; with
/// 250 watched tasks (about 220 feeds) at a few events per second per feed
/// that was one read of all of them per event, 1 ms of Redis CPU each, and
/// one edge cost Redis more CPU than reading every event of 16 feeds did.
/// A read that does not block costs about 0.2 µs per stream, so polling
/// bounds a reader to about 1 % of a Redis core, at the price of up to
/// this pause on a delivery (4.4 ms for 220 feeds).
fn poll_every(feeds: usize) -> Duration {
    (POLL_PER_FEED * feeds as u32).clamp(POLL_MIN, POLL_MAX)
}

/// A newly followed feed: its key, nothing counted yet.
fn followed(f: FeedId) -> (FeedId, Followed) {
    (
        f,
        Followed {
            key: f.key(),
            count: ShardCount::default(),
        },
    )
}

/// Feed keys grouped by shard, shards and feeds in order.
fn by_shard(feeds: &[FeedId]) -> BTreeMap<u32, Vec<String>> {
    let mut sorted = feeds.to_vec();
    sorted.sort();
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for f in sorted {
        out.entry(f.shard).or_default().push(f.key());
    }
    out
}

/// One feed's `sluice_feeds_check` triple; `-1` is unknown.
fn sample(triple: &[Value]) -> Sample {
    let n = |v: &Value| match v {
        Value::Int(n) if *n >= 0 => Some(*n as u64),
        _ => None,
    };
    Sample {
        entries_added: n(&triple[0]),
        length: n(&triple[1]),
        entries_read: n(&triple[2]),
    }
}
