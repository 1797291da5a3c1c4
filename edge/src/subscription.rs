//! A subscription: one (connection, task) pair with its own cursor, the last
//! delivered seq. Every way of getting events — snapshot on connect, resume,
//! gap filling, slow-client catch-up, re-sync after the feed lost its place —
//! reduces to one rule: deliver from `last + 1`, reading the task log until
//! caught up, then live; anything at or below `last` is skipped.
//!
//! Memory per subscription is bounded: the live queue (`queue_capacity`
//! events, shared `Arc`s) plus at most one history page, which is bounded
//! in bytes (`--history-page-bytes`) as well as in events
//! (`--history-page`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_shared::event::{Snapshot, TaskState};
use sluice_shared::{Seq, TaskId};

use crate::hub::{Hub, Registration};
use crate::metrics::Metrics;
use crate::store::{PageLimit, Store, StoreError};
use crate::wire::Event;

/// Default history page size for resume and catch-up.
pub const DEFAULT_HISTORY_PAGE: usize = 1000;
/// Failed history reads a subscription retries before it gives up and the
/// connection closes (about 30 s in all with the waits below).
const FILL_RETRIES: u32 = 20;
const FILL_RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(50);
const FILL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a subscriber wants to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No resume point: the snapshot (latest event), then live.
    Latest,
    /// Resume point: every retained event with seq > N, then live.
    After(Seq),
}

/// The outcome of opening a subscription.
pub enum Opening {
    /// The resume point is at or past the task's final event: nothing more
    /// will ever come (SSE answers 204, WebSocket closes 1000).
    Finished,
    Stream(Subscription),
}

pub struct Subscription {
    task: TaskId,
    reg: Registration,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Last delivered seq.
    last: Seq,
    /// Fingerprint of the last delivered event (0: none, or a reset).
    last_digest: u64,
    /// After a re-sync: check that the store still holds the event delivered
    /// last, under its seq, before going on (Redis may have lost
    /// acknowledged writes, then given the same seqs to new events).
    verify_last: bool,
    /// Ready to deliver, in order (a history page, a snapshot, a reset).
    pending: VecDeque<Arc<Event>>,
    /// History must be read from `last + 1` before going live.
    catching_up: bool,
    /// The final event was delivered.
    done: bool,
    page: PageLimit,
    /// Consecutive history reads that failed (Redis unavailable).
    fill_failures: u32,
}

/// What opening a subscription needs: the hub to register with, the store
/// to read, the metrics to count in and the history page's limit. Cheap to
/// clone.
#[derive(Clone)]
pub struct Subscriptions {
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    page: PageLimit,
}

impl Subscriptions {
    pub fn new(
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        page: PageLimit,
    ) -> Self {
        Subscriptions {
            hub,
            store,
            metrics,
            page: PageLimit::new(page.events, page.bytes),
        }
    }

    /// Opens a subscription to `task` from `start`. Registers with the hub
    /// first, then reads the store, so no live event can fall between the
    /// read and the registration.
    pub async fn open(&self, task: TaskId, start: Start) -> Result<Opening, StoreError> {
        let reg = self.hub.register(&task);
        let snapshot = self.store.snapshot(&task).await?;
        let mut sub = Subscription {
            task,
            reg,
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            last: 0,
            last_digest: 0,
            verify_last: false,
            pending: VecDeque::new(),
            catching_up: false,
            done: false,
            page: self.page,
            fill_failures: 0,
        };
        match (start, snapshot) {
            (Start::Latest, None) => {}
            (Start::Latest, Some(s)) => {
                sub.last = s.seq.saturating_sub(1);
                sub.pending.push_back(Event::from_snapshot(&s.latest));
            }
            (Start::After(0), None) => {}
            (Start::After(_), None) => sub.reset(None),
            (Start::After(n), Some(s)) => {
                if n >= s.seq && s.state == TaskState::Closed {
                    return Ok(Opening::Finished);
                }
                if n > s.seq {
                    // The id was reused or the store lost data.
                    sub.reset(Some(&s));
                } else {
                    sub.last = n;
                    sub.catching_up = n < s.seq;
                }
            }
        }
        Ok(Opening::Stream(sub))
    }
}

impl Subscription {
    pub fn task(&self) -> &TaskId {
        &self.task
    }

    fn reset(&mut self, snapshot: Option<&Snapshot>) {
        self.metrics.resets.inc();
        self.pending.clear();
        self.pending.push_back(Event::reset(&self.task, snapshot));
        // A closed task ends the stream right after the reset.
        self.done = snapshot.is_some_and(|s| s.state == TaskState::Closed);
        self.catching_up = false;
    }

    /// The next event that is ready without I/O (a queued live event or a
    /// buffered history page), or `None` if getting one needs to wait. Lets
    /// transports batch several events into one socket write.
    pub fn next_ready(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                if ev.is_reset {
                    self.last = ev.seq;
                    self.last_digest = 0;
                    return Some(ev);
                }
                if ev.seq <= self.last {
                    continue;
                }
                if ev.seq > self.last + 1 {
                    // Not contiguous (cannot happen for pages): refill.
                    self.pending.clear();
                    self.catching_up = true;
                    return None;
                }
                self.last = ev.seq;
                self.last_digest = ev.digest;
                if ev.is_final {
                    self.done = true;
                    self.pending.clear();
                }
                return Some(ev);
            }
            if self.done || self.catching_up || self.reg.shared.catch_up.load(Ordering::Acquire) {
                return None;
            }
            match self.reg.rx.try_recv() {
                Ok(ev) => self.accept_live(ev),
                Err(_) => return None,
            }
        }
    }

    fn accept_live(&mut self, ev: Arc<Event>) {
        if ev.seq <= self.last {
            return;
        }
        if ev.seq == self.last + 1 {
            self.pending.push_back(ev);
        } else {
            // Missed feed entries: fill from the task log.
            self.metrics.gaps.inc();
            self.catching_up = true;
        }
    }

    /// The next event to deliver; `None` once the task's final event was
    /// delivered (or the node is shutting down). Cancel-safe: state only
    /// changes after an `.await` returns.
    pub async fn next(&mut self) -> Result<Option<Arc<Event>>, StoreError> {
        loop {
            if let Some(ev) = self.next_ready() {
                return Ok(Some(ev));
            }
            if self.done {
                return Ok(None);
            }
            if self.reg.shared.catch_up.swap(false, Ordering::AcqRel) {
                // Overflowed or re-sync: drop what was queued, Redis is the
                // buffer from here.
                while self.reg.rx.try_recv().is_ok() {}
                self.catching_up = true;
                self.verify_last = true;
            }
            if self.catching_up {
                match self.fill().await {
                    Ok(()) => self.fill_failures = 0,
                    Err(StoreError::Unavailable(cause)) if self.fill_failures < FILL_RETRIES => {
                        // Redis is away for a moment (restart, failover):
                        // keep the connection and its cursor, and try again.
                        // Closing would make the client resume with a bare
                        // seq, which cannot tell whether Redis lost writes.
                        self.fill_failures += 1;
                        let wait = FILL_RETRY_BASE
                            .saturating_mul(1 << self.fill_failures.min(5))
                            .min(FILL_RETRY_MAX);
                        tracing::debug!(task = %self.task, cause = %cause, retry_in_ms = wait.as_millis() as u64, "history read failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            // Live. Both branches are cancel-safe (`notified` and `recv`).
            tokio::select! {
                biased;
                _ = self.reg.shared.wake.notified() => {}
                ev = self.reg.rx.recv() => match ev {
                    Some(ev) => self.accept_live(ev),
                    None => return Ok(None),
                },
            }
        }
    }

    /// Reads one history page after `last`.
    async fn fill(&mut self) -> Result<(), StoreError> {
        if self.verify_last {
            // Cleared only once the check ran: a failed read retries it.
            let reset = self.last_digest != 0 && self.verify().await?;
            self.verify_last = false;
            if reset {
                return Ok(());
            }
        }
        if self.take_page().await? {
            return Ok(());
        }
        // Caught up, unless the log is gone while the task moved on. A
        // snapshot read after the empty page races with publishes (an event
        // appended in between would look lost), so read the snapshot first
        // and the log again: the function writes log and meta atomically,
        // so a log read that follows the snapshot holds every event up to
        // its seq unless Redis trimmed or lost them.
        let snap = self.store.snapshot(&self.task).await?;
        if self.take_page().await? {
            return Ok(());
        }
        match snap {
            Some(s) if s.seq > self.last => self.reset(Some(&s)),
            Some(s) if s.seq < self.last => self.reset(Some(&s)),
            None if self.last > 0 => self.reset(None),
            _ => self.catching_up = false,
        }
        Ok(())
    }

    /// After a re-sync: is the event delivered last still the one the
    /// store holds under its seq? Redis may have lost acknowledged writes
    /// (a restart without persistence, a failover) and given the same seqs
    /// to new events; then the client gets a reset instead of silently
    /// continuing in the new numbering. True if a reset was queued.
    async fn verify(&mut self) -> Result<bool, StoreError> {
        let one = PageLimit::new(1, self.page.bytes);
        let at = match self.store.history(&self.task, self.last - 1, one).await {
            Ok(at) => at,
            // Unreadable: the page read that follows answers with a reset.
            Err(StoreError::Corrupt { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(ev) = at.events.first().filter(|e| e.seq == self.last) else {
            // Not retained (or not there any more): the page read and the
            // snapshot comparison that follow decide.
            return Ok(false);
        };
        if ev.digest == self.last_digest {
            return Ok(false);
        }
        tracing::warn!(task = %self.task, seq = self.last, "the store no longer holds the events this client saw (lost writes); sending a reset");
        let snap = self.store.snapshot(&self.task).await?;
        self.reset(snap.as_ref());
        Ok(true)
    }

    /// Reads the page after `last` and queues it; false if it was empty.
    /// A page that does not start right after `last` (or cannot be read
    /// back) means the events are no longer retained: that is a reset.
    async fn take_page(&mut self) -> Result<bool, StoreError> {
        let page = match self.store.history(&self.task, self.last, self.page).await {
            Ok(page) => page,
            Err(StoreError::Corrupt { task, what }) => {
                // The next event cannot be read back: as good as not
                // retained. Tell the client with a reset instead of failing
                // the connection (it would fail again on every reconnect).
                tracing::warn!(task = %task, cause = %what, "unreadable history; sending a reset");
                let snap = self.store.snapshot(&self.task).await?;
                self.reset(snap.as_ref());
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        match page.events.first() {
            Some(first) if first.seq == self.last + 1 => {
                // A page cut short (events or bytes): read on after it.
                self.catching_up = page.more;
                self.pending.extend(page.events);
            }
            Some(_) => {
                // The events right after `last` are no longer retained.
                let snap = self.store.snapshot(&self.task).await?;
                self.reset(snap.as_ref());
            }
            None => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use async_trait::async_trait;
    use serde_json::{json, Value};
    use sluice_broker::{PublishOptions, Published, PublisherConfig};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::FeedSink;

    /// A memory store with two faults to inject: `race` makes a publish land
    /// right before the next snapshot read (the interleaving that made a
    /// caught-up subscriber look like it had lost events); `swap` replaces
    /// the backend by another holding different events under the same seqs
    /// (Redis after it lost acknowledged writes and renumbered new events).
    struct FaultyStore {
        inner: std::sync::Mutex<MemoryStore>,
        race: AtomicBool,
    }

    impl FaultyStore {
        fn new() -> Arc<Self> {
            Arc::new(FaultyStore {
                inner: std::sync::Mutex::new(MemoryStore::new(PublisherConfig::default())),
                race: AtomicBool::new(false),
            })
        }

        fn current(&self) -> MemoryStore {
            self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        fn swap(&self, other: MemoryStore) {
            *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = other;
        }
    }

    #[async_trait]
    impl Store for FaultyStore {
        fn kind(&self) -> &'static str {
            "memory"
        }
        async fn publish(
            &self,
            task: &TaskId,
            kind: &str,
            data: &Value,
            opts: &PublishOptions,
        ) -> Result<Published, StoreError> {
            self.current().publish(task, kind, data, opts).await
        }
        async fn snapshot(&self, task: &TaskId) -> Result<Option<Snapshot>, StoreError> {
            if self.race.swap(false, Ordering::AcqRel) {
                let opts = PublishOptions::default();
                self.current()
                    .publish(task, "progress", &json!({"racing": true}), &opts)
                    .await?;
            }
            self.current().snapshot(task).await
        }
        async fn history(
            &self,
            task: &TaskId,
            after: Seq,
            limit: PageLimit,
        ) -> Result<crate::store::HistoryPage, StoreError> {
            self.current().history(task, after, limit).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn run_feed(&self, sink: Arc<dyn FeedSink>, cancel: CancellationToken) {
            self.current().run_feed(sink, cancel).await
        }
    }

    /// Opens a subscription on a fresh hub; the task must not be finished.
    async fn open(
        store: Arc<dyn Store>,
        task: &TaskId,
        start: Start,
        page: usize,
    ) -> (Subscription, Arc<Hub>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(16, metrics.clone());
        let opening =
            Subscriptions::new(hub.clone(), store, metrics.clone(), PageLimit::events(page))
                .open(task.clone(), start)
                .await
                .expect("open");
        let Opening::Stream(sub) = opening else {
            panic!("task is open");
        };
        (sub, hub, metrics)
    }

    #[tokio::test]
    async fn renumbered_events_after_lost_writes_are_announced_with_a_reset() {
        use crate::store::FeedSink as _;
        let store = FaultyStore::new();
        let task = TaskId::parse("renumbered-1").expect("valid id");
        let opts = PublishOptions::default();
        for i in 0..5 {
            store
                .publish(
                    &task,
                    "progress",
                    &json!({ "history": "first", "i": i }),
                    &opts,
                )
                .await
                .expect("publish");
        }
        let (mut sub, hub, metrics) = open(store.clone(), &task, Start::After(0), 100).await;
        for want in 1..=5 {
            let ev = sub.next().await.expect("next").expect("an event");
            assert_eq!(ev.seq, want);
        }
        // Redis comes back without those writes; new events take seqs 1..7.
        let renumbered = MemoryStore::new(PublisherConfig::default());
        for i in 0..7 {
            renumbered
                .publish(
                    &task,
                    "progress",
                    &json!({ "history": "second", "i": i }),
                    &opts,
                )
                .await
                .expect("publish");
        }
        store.swap(renumbered);
        // The node notices (feed went back, reconnect) and re-syncs.
        hub.resync();
        let ev = sub.next().await.expect("next").expect("an event");
        assert!(
            ev.is_reset,
            "seq {} delivered from the new numbering without a reset",
            ev.seq
        );
        assert_eq!(ev.seq, 7, "the reset carries the task's current seq");
        assert_eq!(metrics.resets.get(), 1);
    }

    #[tokio::test]
    async fn a_resync_without_lost_writes_sends_no_reset() {
        use crate::store::FeedSink as _;
        let store = Arc::new(MemoryStore::new(PublisherConfig::default()));
        let task = TaskId::parse("kept-1").expect("valid id");
        let opts = PublishOptions::default();
        for i in 0..3 {
            store
                .publish(
                    &task,
                    "progress",
                    &json!({ "nested": { "b": 1, "a": [i] } }),
                    &opts,
                )
                .await
                .expect("publish");
        }
        let (mut sub, hub, metrics) = open(store.clone(), &task, Start::Latest, 100).await;
        assert_eq!(sub.next().await.expect("next").expect("snapshot").seq, 3);
        hub.resync();
        store
            .publish(&task, "progress", &json!({ "nested": { "b": 2 } }), &opts)
            .await
            .expect("publish");
        let ev = sub.next().await.expect("next").expect("an event");
        assert!(!ev.is_reset);
        assert_eq!(ev.seq, 4);
        // And after a live/history event the fingerprints agree too.
        hub.resync();
        store
            .publish(&task, "progress", &json!({ "nested": { "b": 3 } }), &opts)
            .await
            .expect("publish");
        let ev = sub.next().await.expect("next").expect("an event");
        assert!(!ev.is_reset);
        assert_eq!(ev.seq, 5);
        assert_eq!(metrics.resets.get(), 0);
    }

    #[tokio::test]
    async fn pages_cut_short_by_bytes_are_read_on_until_caught_up() {
        let store = Arc::new(MemoryStore::new(PublisherConfig::default()));
        let task = TaskId::parse("bytes-1").expect("valid id");
        let opts = PublishOptions::default();
        let blob = "z".repeat(3000);
        for i in 0..9 {
            store
                .publish(&task, "progress", &json!({ "i": i, "blob": blob }), &opts)
                .await
                .expect("publish");
        }
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(16, metrics.clone());
        // Pages of 1 000 events but 7 000 bytes: three events each.
        let limit = PageLimit::new(1000, 7000);
        let opening = Subscriptions::new(hub.clone(), store.clone(), metrics.clone(), limit)
            .open(task.clone(), Start::After(0))
            .await
            .expect("open");
        let Opening::Stream(mut sub) = opening else {
            panic!("task is open");
        };
        let mut seqs = Vec::new();
        for _ in 0..9 {
            let ev = sub.next().await.expect("next").expect("an event");
            assert!(!ev.is_reset);
            assert!(sub.pending.len() < 3, "a page held more than its bytes");
            seqs.push(ev.seq);
        }
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
        assert_eq!(metrics.resets.get(), 0);
    }

    #[tokio::test]
    async fn a_publish_racing_the_caught_up_check_is_delivered_not_reset() {
        let store = FaultyStore::new();
        let task = TaskId::parse("race-1").expect("valid id");
        let opts = PublishOptions::default();
        for i in 0..4 {
            store
                .publish(&task, "progress", &json!({ "i": i }), &opts)
                .await
                .expect("publish");
        }
        // Pages of 2: [1,2], [3,4], then an empty page and the caught-up check.
        let (mut sub, _hub, metrics) = open(store.clone(), &task, Start::After(0), 2).await;
        store.race.store(true, Ordering::Release);
        let mut seqs = Vec::new();
        for _ in 0..5 {
            let ev = sub.next().await.expect("next").expect("an event");
            assert!(!ev.is_reset, "spurious reset after {seqs:?}");
            seqs.push(ev.seq);
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(metrics.resets.get(), 0);
    }
}
