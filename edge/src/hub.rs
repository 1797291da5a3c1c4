//! The per-node hub: task → local subscribers. The feed reader hands it each
//! live event once; the hub encodes it once ([`Event`]: shared `Bytes` for
//! SSE and WebSocket) and offers it to every subscriber of its task: into
//! the bounded queue of the subscriber's *connection* (one queue per
//! connection, however many tasks it follows, each event tagged with its
//! subscription). It never waits on a client: a full queue flags the
//! subscription as overflowed, and it catches up from history at its own
//! pace.
//!
//! A connection's queue ([`ConnQueue`]) allocates nothing until its first
//! event, and wakes the connection only when it goes from empty to not
//! empty: a connection that is still writing the previous events takes the
//! next ones in the same batch without another wake-up.
//!
//! The lock is a short `std::sync::Mutex` section that never spans an
//! `.await`. The only I/O under it is a direct write's one non-blocking
//! `writev` to an idle connection ([`crate::server::direct`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use sluice_shared::{StoredEvent, TaskId};
use tokio::sync::Notify;

use crate::interest::Interest;
use crate::metrics::Metrics;
use crate::server::direct::Direct;
use crate::store::FeedSink;
use crate::wire::Event;

/// One live event for one subscription of a connection (its id).
pub type Queued = (u64, Arc<Event>);

/// Capacity an emptied queue keeps; more is given back (after a burst).
const KEEP_EMPTY: usize = 16;

/// What the hub and one connection share: the connection's queue of live
/// events, and how the hub tells it that some of its subscriptions must
/// catch up. `wake` is notified when the queue stops being empty and when
/// a subscription is flagged (a permit is kept if the connection is not
/// waiting yet, so no wake-up is lost).
#[derive(Debug)]
pub struct ConnQueue {
    items: Mutex<VecDeque<Queued>>,
    capacity: usize,
    /// Set when the connection takes direct writes
    /// ([`crate::server::direct`]): an event offered while nothing is
    /// queued is written to the socket at once if the connection is idle.
    direct: OnceLock<Arc<Direct>>,
    /// Set with any subscription's `catch_up`.
    pub(crate) flagged: AtomicBool,
    pub(crate) wake: Notify,
}

impl ConnQueue {
    /// A connection's queue of at most `capacity` events.
    pub fn new(capacity: usize) -> Arc<ConnQueue> {
        Arc::new(ConnQueue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            direct: OnceLock::new(),
            flagged: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<Queued>> {
        // Sections only push or pop: a poisoned lock holds a consistent
        // queue.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the hub write to the connection's socket while it is idle.
    pub fn set_direct(&self, direct: Arc<Direct>) {
        let _ = self.direct.set(direct);
    }

    /// Appends one event, or writes it at once (direct writes, nothing
    /// queued before it); false (and nothing queued) when the queue holds
    /// its capacity.
    fn offer(&self, queued: Queued, direct: bool) -> bool {
        let mut items = self.items();
        if direct && items.is_empty() {
            if let Some(direct) = self.direct.get() {
                if direct.try_deliver(&queued.1) {
                    return true;
                }
            }
        }
        if items.len() >= self.capacity {
            return false;
        }
        let was_empty = items.is_empty();
        items.push_back(queued);
        drop(items);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// The oldest queued event.
    pub fn pop(&self) -> Option<Queued> {
        let mut items = self.items();
        let queued = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_EMPTY {
            items.shrink_to(KEEP_EMPTY);
        }
        queued
    }
}

/// What the hub and a subscription share.
#[derive(Debug)]
pub struct SubShared {
    id: u64,
    conn: Arc<ConnQueue>,
    /// Set when the queue overflowed or the feed lost its place; the
    /// subscription then catches up from history.
    pub(crate) catch_up: AtomicBool,
    /// Where the subscription stands with its feed's join: [`JOIN_WAITING`]
    /// (registered before the feed was followed, has not read yet),
    /// [`JOIN_RELEASED`] (the join happened first: its reads see
    /// everything the feed does not carry) or [`JOIN_PROCEEDED`] (reads
    /// without waiting: the feed was followed, or it gave up waiting).
    join: AtomicU8,
}

const JOIN_PROCEEDED: u8 = 0;
const JOIN_WAITING: u8 = 1;
const JOIN_RELEASED: u8 = 2;

impl SubShared {
    fn flag(&self) {
        self.catch_up.store(true, Ordering::Release);
        self.conn.flagged.store(true, Ordering::Release);
        self.conn.wake.notify_one();
    }
}

#[derive(Default)]
struct Inner {
    tasks: HashMap<String, HashMap<u64, Arc<SubShared>>>,
}

pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    live: AtomicBool,
    /// Whether dispatch may write to idle connections directly (the feed
    /// reader turns it off for large batches).
    direct: AtomicBool,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    /// The feeds this node's subscriptions need (the readers follow them).
    interest: Arc<Interest>,
}

/// A subscriber's membership in the hub. Dropping it unregisters.
pub struct Registration {
    hub: Arc<Hub>,
    task: String,
    id: u64,
    pub(crate) shared: Arc<SubShared>,
}

impl Registration {
    /// The id its events carry in the connection's queue.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.task, self.id);
    }
}

impl Hub {
    /// A hub whose interest assumes the default shard count and grace.
    pub fn new(queue_capacity: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let interest = Interest::new(
            sluice_shared::DEFAULT_SHARDS,
            crate::interest::DEFAULT_GRACE,
        );
        Hub::with_interest(queue_capacity, metrics, interest)
    }

    pub fn with_interest(
        queue_capacity: usize,
        metrics: Arc<Metrics>,
        interest: Arc<Interest>,
    ) -> Arc<Self> {
        Arc::new(Hub {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
            live: AtomicBool::new(false),
            direct: AtomicBool::new(true),
            queue_capacity: queue_capacity.max(1),
            metrics,
            interest,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Critical sections only insert/remove map entries and try_send;
        // a poisoned lock holds a consistent map.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The per-connection queue capacity (`--queue-capacity`).
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// Joins the live fan-out of `task`, into the connection's `queue`.
    /// Never waits on I/O.
    pub fn register(self: &Arc<Self>, task: &TaskId, queue: &Arc<ConnQueue>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SubShared {
            id,
            conn: queue.clone(),
            catch_up: AtomicBool::new(false),
            join: AtomicU8::new(JOIN_PROCEEDED),
        });
        {
            let mut inner = self.lock();
            let subs = inner.tasks.entry(task.as_str().to_owned()).or_default();
            if subs.is_empty() {
                self.metrics.tasks_subscribed.inc();
                // Under the hub's lock, so the count of a task's feed
                // follows the map exactly.
                self.interest.add(task.as_str());
            }
            // Under the hub's lock too: `joined` releases or flags every
            // subscription of a joined feed under it.
            if self.interest.pending(task.as_str()) {
                shared.join.store(JOIN_WAITING, Ordering::Release);
            }
            subs.insert(id, shared.clone());
        }
        self.metrics.subscriptions.inc();
        Registration {
            hub: self.clone(),
            task: task.as_str().to_owned(),
            id,
            shared,
        }
    }

    fn unregister(&self, task: &str, id: u64) {
        let mut inner = self.lock();
        if let Some(subs) = inner.tasks.get_mut(task) {
            if subs.remove(&id).is_some() {
                self.metrics.subscriptions.dec();
            }
            if subs.is_empty() {
                inner.tasks.remove(task);
                self.metrics.tasks_subscribed.dec();
                self.interest.remove(task);
            }
        }
    }

    /// Waits (at most [`crate::interest::JOIN_WAIT`]) until the feed of a
    /// subscription registered before its feed was followed is joined, so
    /// that its first history read comes after the group exists. Returns at
    /// once when there is nothing to wait for.
    pub async fn await_join(&self, reg: &Registration) {
        let join = &reg.shared.join;
        let deadline = tokio::time::Instant::now() + crate::interest::JOIN_WAIT;
        loop {
            let joined = self.interest.joined();
            tokio::pin!(joined);
            joined.as_mut().enable();
            if join.load(Ordering::Acquire) != JOIN_WAITING {
                return;
            }
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                // Reads without the join; if it comes after all, the
                // subscription is flagged to catch up then.
                let _ = join.compare_exchange(
                    JOIN_WAITING,
                    JOIN_PROCEEDED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                return;
            }
        }
    }

    /// Number of tasks with local subscribers.
    pub fn task_count(&self) -> usize {
        self.lock().tasks.len()
    }

    /// Subscriber counts per task, most subscribed first (dashboard).
    pub fn top_tasks(&self, n: usize) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .lock()
            .tasks
            .iter()
            .map(|(t, s)| (t.clone(), s.len()))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// True while the live feed is attached.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Offers one encoded event to every local subscriber of its task.
    pub fn dispatch(&self, task: &str, event: &Arc<Event>) {
        let inner = self.lock();
        let Some(subs) = inner.tasks.get(task) else {
            return;
        };
        let direct = self.direct.load(Ordering::Relaxed);
        for sub in subs.values() {
            if sub.catch_up.load(Ordering::Acquire) {
                continue;
            }
            if !sub.conn.offer((sub.id, event.clone()), direct) {
                self.metrics.catchups.inc();
                sub.flag();
            }
        }
    }
}

impl FeedSink for Hub {
    fn wants(&self, task: &str) -> bool {
        self.lock().tasks.contains_key(task)
    }

    fn deliver(&self, event: &StoredEvent) {
        self.metrics.feed_events.inc();
        let encoded = Event::from_stored(event);
        self.dispatch(&event.task, &encoded);
    }

    fn resync(&self) {
        let inner = self.lock();
        for subs in inner.tasks.values() {
            for sub in subs.values() {
                sub.flag();
            }
        }
    }

    fn resync_tasks(&self, which: &dyn Fn(&str) -> bool) {
        let inner = self.lock();
        for (task, subs) in inner.tasks.iter() {
            if !which(task) {
                continue;
            }
            for sub in subs.values() {
                sub.flag();
            }
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    fn allow_direct(&self, allow: bool) {
        self.direct.store(allow, Ordering::Relaxed);
    }

    fn interest(&self) -> Option<Arc<Interest>> {
        Some(self.interest.clone())
    }

    fn joined(&self, feeds: &[sluice_shared::FeedId]) {
        let inner = self.lock();
        let shards = self.interest.shards();
        for (task, subs) in inner.tasks.iter() {
            if !feeds.contains(&sluice_shared::FeedId::of(task, shards)) {
                continue;
            }
            for sub in subs.values() {
                // A subscription still waiting reads after this: the group
                // exists. One that read already may have missed events
                // published between its read and the join.
                let released = sub.join.compare_exchange(
                    JOIN_WAITING,
                    JOIN_RELEASED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if released.is_err() {
                    sub.flag();
                }
            }
        }
        // Under the hub's lock, like `register`'s check of it.
        self.interest.set_followed(feeds, true);
    }

    fn unfollowed(&self, shards: &[u32]) {
        self.interest.unfollow_shards(shards);
    }

    fn feeds_changed(&self, joined: usize, left: usize) {
        self.metrics.feeds_followed.inc_by(joined as i64);
        self.metrics.feeds_followed.dec_by(left as i64);
        self.metrics.feed_joins.inc_by(joined as u64);
        self.metrics.feed_leaves.inc_by(left as u64);
    }

    fn report_lag(&self, shard: u32, lag: u64) {
        let lag = i64::try_from(lag).unwrap_or(i64::MAX);
        self.metrics
            .feed_lag
            .get_or_create(&crate::metrics::ShardLabel { shard })
            .set(lag);
    }
}

#[cfg(test)]
mod tests {
    use sluice_shared::Seq;

    use super::*;

    fn ev(seq: Seq) -> StoredEvent {
        StoredEvent {
            task: "t".into(),
            seq,
            kind: "k".into(),
            data: serde_json::json!(seq),
            ts: 0,
            is_final: false,
            epoch: 0,
        }
    }

    /// A hub whose interest is watched by a (pretend) reader of every
    /// shard, as on a Redis-backed node.
    fn watched_hub() -> Arc<Hub> {
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let all: Vec<u32> = (0..sluice_shared::DEFAULT_SHARDS).collect();
        let _waker = hub.interest.watch(&all);
        hub
    }

    fn feed(task: &str) -> sluice_shared::FeedId {
        sluice_shared::FeedId::of(task, sluice_shared::DEFAULT_SHARDS)
    }

    #[tokio::test]
    async fn a_new_subscription_waits_for_its_feed_and_is_released_by_the_join() {
        let hub = watched_hub();
        let task = TaskId::parse("t").expect("task");
        let queue = ConnQueue::new(hub.queue_capacity());
        let reg = hub.register(&task, &queue);
        let waiting = {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.await_join(&reg).await;
                reg
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits for the join");
        hub.joined(&[feed("t")]);
        let reg = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("released by the join")
            .expect("task");
        // It reads after the join: nothing to catch up.
        assert!(!reg.shared.catch_up.load(Ordering::Acquire));
        // A second subscription of a followed feed does not wait.
        let other = ConnQueue::new(hub.queue_capacity());
        let reg2 = hub.register(&task, &other);
        tokio::time::timeout(std::time::Duration::from_millis(100), hub.await_join(&reg2))
            .await
            .expect("no wait on a followed feed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_that_read_before_the_join_catches_up_after_it() {
        let hub = watched_hub();
        let task = TaskId::parse("t").expect("task");
        let queue = ConnQueue::new(hub.queue_capacity());
        let reg = hub.register(&task, &queue);
        // No join within JOIN_WAIT (Redis slow): it reads anyway.
        hub.await_join(&reg).await;
        assert!(!reg.shared.catch_up.load(Ordering::Acquire));
        // The join comes later: what was published between its read and
        // the group's creation is only in the log.
        hub.joined(&[feed("t")]);
        assert!(reg.shared.catch_up.load(Ordering::Acquire));
        assert!(queue.flagged.load(Ordering::Acquire));
    }

    #[test]
    fn without_a_reader_nothing_waits() {
        // The memory store: no feed reader watches the interest.
        let hub = Hub::new(16, Arc::new(Metrics::default()));
        let task = TaskId::parse("t").expect("task");
        let queue = ConnQueue::new(hub.queue_capacity());
        let reg = hub.register(&task, &queue);
        assert_eq!(reg.shared.join.load(Ordering::Acquire), JOIN_PROCEEDED);
    }

    #[test]
    fn full_queue_flags_and_never_blocks() {
        let hub = Hub::new(2, Arc::new(Metrics::default()));
        let task = TaskId::parse("t").expect("task");
        let queue = ConnQueue::new(hub.queue_capacity());
        let reg = hub.register(&task, &queue);
        for s in 1..=10 {
            hub.deliver(&ev(s));
        }
        assert!(reg.shared.catch_up.load(Ordering::Acquire));
        assert!(queue.flagged.load(Ordering::Acquire));
        for want in 1..=2 {
            let (id, ev) = queue.pop().expect("queued");
            assert_eq!((id, ev.seq), (reg.id(), want));
        }
        assert!(queue.pop().is_none());
        assert_eq!(hub.task_count(), 1);
        drop(reg);
        assert_eq!(hub.task_count(), 0);
        assert!(!hub.wants("t"));
    }
}
