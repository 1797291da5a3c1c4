//! Subscriptions: one (connection, task) pair with its own cursor, the
//! position of the last delivered event, and the [`Mux`] that drives every
//! subscription of one connection. Every way of getting events — snapshot on
//! connect, resume, gap filling, slow-client catch-up, re-sync after the
//! feed lost its place — reduces to one rule: deliver from `last + 1`,
//! reading the task log until caught up, then live; anything at or below
//! `last` is skipped.
//!
//! A connection's memory is bounded however many tasks it follows: one
//! live queue per connection (`queue_capacity` events, shared `Arc`s, each
//! tagged with its subscription), at most one history page at a time (the
//! subscriptions that must read history take turns, a page each, so one
//! busy task cannot starve the others), the snapshots read when the tasks
//! were opened, and a few hundred bytes of state per task.
//!
//! Positions are verified ([`sluice_shared::position`]): a resume point
//! with a tag is checked against the store (the task's epoch, the event at
//! that seq) before anything is delivered, and after every re-sync the
//! event delivered last is checked again; a mismatch is a `sluice.reset`,
//! never a silent continuation in another history.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_shared::event::{Snapshot, TaskState};
use sluice_shared::position::{Position, Tag};
use sluice_shared::{Seq, TaskId};
use tokio::time::Instant;

use crate::hub::{ConnQueue, Hub, Registration};
use crate::metrics::Metrics;
use crate::server::direct::Direct;
use crate::store::{PageLimit, Store, StoreError};
use crate::wire::Event;

/// Default history page size for resume and catch-up.
pub const DEFAULT_HISTORY_PAGE: usize = 1000;
/// Failed history reads a connection retries before it gives up and closes
/// (about 30 s in all with the waits below).
const FILL_RETRIES: u32 = 20;
const FILL_RETRY_BASE: Duration = Duration::from_millis(50);
const FILL_RETRY_MAX: Duration = Duration::from_secs(2);
/// Live events delivered in a row before a subscription waiting to read
/// history gets its turn (so a steady live flow cannot starve catch-up).
const FILL_EVERY: u32 = 256;

/// Where a subscriber wants to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No resume point: the snapshot (latest event), then live.
    Latest,
    /// Resume point: every retained event after it, then live. Verified
    /// first when it carries a tag.
    After(Position),
}

impl Start {
    /// After a bare (unverified) seq.
    pub fn after(seq: Seq) -> Start {
        Start::After(Position::bare(seq))
    }
}

/// How a connection's tasks are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every event of every task, in order.
    All,
    /// At most one event per task per interval, always the newest; final
    /// events and resets are never held back or dropped.
    Latest(Duration),
}

/// What opening one task found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// The task is followed.
    Streaming,
    /// The resume point is at or past the task's final event: nothing more
    /// will ever come (a single-task SSE answers 204, WebSocket closes 1000).
    Finished,
}

/// One event for one of the connection's tasks (`index`: the task's place
/// in [`Mux::tasks`]).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub index: usize,
    pub ev: Arc<Event>,
}

/// What opening subscriptions needs: the hub to register with, the store
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

    /// The subscriptions of one new connection. `end_when_done`: the
    /// connection ends once every task it follows has ended (SSE); a
    /// WebSocket of `/v1/ws` stays open for more subscriptions.
    pub fn mux(&self, mode: Mode, end_when_done: bool) -> Mux {
        let queue = ConnQueue::new(self.hub.queue_capacity());
        let tick = match mode {
            Mode::Latest(every) => {
                let mut t = tokio::time::interval_at(Instant::now() + every, every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(t)
            }
            Mode::All => None,
        };
        Mux {
            ctx: self.clone(),
            subs: Vec::new(),
            queue,
            mode,
            end_when_done,
            tick,
            next_fill: 0,
            live_streak: 0,
            fill_failures: 0,
            retry_at: None,
            direct: None,
        }
    }
}

/// Every subscription of one connection, delivered through one bounded
/// queue; see the module documentation for the memory bound.
pub struct Mux {
    ctx: Subscriptions,
    subs: Vec<Subscription>,
    queue: Arc<ConnQueue>,
    mode: Mode,
    end_when_done: bool,
    /// Latest mode: when held events go out.
    tick: Option<tokio::time::Interval>,
    /// Where the next search for a subscription to fill starts (turns).
    next_fill: usize,
    /// Live events delivered since the last history read.
    live_streak: u32,
    /// Consecutive history reads that failed (Redis unavailable).
    fill_failures: u32,
    /// After a failed read: no history read before this moment.
    retry_at: Option<Instant>,
    /// Direct writes ([`crate::server::direct`]): the hub writes live events
    /// to the socket while the mux is parked with nothing to do.
    direct: Option<Arc<Direct>>,
}

impl Drop for Mux {
    fn drop(&mut self) {
        if let Some(d) = &self.direct {
            d.close();
        }
    }
}

/// A parked mux: the hub may write directly until it is dropped.
struct Parked(Arc<Direct>);

impl Drop for Parked {
    fn drop(&mut self) {
        // What the hub wrote meanwhile is taken over at the next look
        // ([`Mux::absorb_direct`]); only the idle flag is cleared here.
        self.0.end_park();
    }
}

impl Mux {
    /// Lets the hub write this connection's live events to its socket while
    /// the mux waits with nothing to do. Only for one task delivering every
    /// event (SSE on the stream path); otherwise a no-op.
    pub fn enable_direct(&mut self, direct: Arc<Direct>) {
        if self.mode == Mode::All && self.subs.len() == 1 && self.tick.is_none() {
            self.queue.set_direct(direct.clone());
            self.direct = Some(direct);
        }
    }

    /// Takes over the position direct writes advanced the subscription to.
    fn absorb_direct(&mut self) {
        let Some(d) = &self.direct else { return };
        if let (Some((last, tag)), Some(sub)) = (d.take_advance(), self.subs.first_mut()) {
            sub.last = last;
            sub.last_tag = tag;
            sub.known = true;
        }
    }

    /// Parks for direct writes if the one subscription is live and has
    /// nothing to deliver or read; `None` otherwise (events then queue).
    fn park(&self) -> Option<Parked> {
        let d = self.direct.as_ref()?;
        let [sub] = self.subs.as_slice() else {
            return None;
        };
        let live = sub.reg.is_some()
            && !sub.done
            && !sub.catching_up
            && !sub.verify_last
            && sub.pending.is_empty()
            && sub.held.is_none()
            && self.retry_at.is_none()
            && !self.queue.flagged.load(Ordering::Acquire);
        (live && d.park(sub.last, sub.last_tag)).then(|| Parked(d.clone()))
    }

    /// The tasks followed, in the order they were opened.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = &TaskId> {
        self.subs.iter().map(|s| &s.task)
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether `task` is followed.
    pub fn follows(&self, task: &TaskId) -> bool {
        self.subs.iter().any(|s| &s.task == task)
    }

    /// Each task's position, in [`Mux::tasks`] order: what a client that
    /// got everything delivered so far resumes from (`None`: nothing is
    /// known yet; it starts from the task's snapshot).
    pub fn positions(&self) -> Vec<Option<Position>> {
        self.subs.iter().map(Subscription::position).collect()
    }

    /// Whether every task followed has ended (all their events delivered).
    pub fn all_done(&self) -> bool {
        self.subs.iter().all(|s| s.done && s.pending.is_empty())
    }

    /// Follows `task` from `start`: registers with the hub first (and waits
    /// for the node to join the task's feed if it does not follow it yet),
    /// then reads the store (so no live event can fall between the read and the
    /// registration), and verifies a tagged resume point. A task that is
    /// already followed is left as it is.
    pub async fn open(&mut self, task: TaskId, start: Start) -> Result<Opened, StoreError> {
        if let Some(sub) = self.subs.iter().find(|s| s.task == task) {
            return Ok(if sub.done {
                Opened::Finished
            } else {
                Opened::Streaming
            });
        }
        let reg = self.ctx.hub.register(&task, &self.queue);
        // A feed this node does not follow yet is joined first (bounded).
        self.ctx.hub.await_join(&reg).await;
        let mut sub = Subscription {
            task,
            reg: Some(reg),
            last: 0,
            last_tag: None,
            known: false,
            verify_last: false,
            pending: VecDeque::new(),
            catching_up: false,
            done: false,
            held: None,
            ends_after_reset: false,
        };
        let opened = sub.open(&self.ctx, start, self.mode).await?;
        self.subs.push(sub);
        Ok(opened)
    }

    /// Stops following `task`; false if it was not followed.
    pub fn close(&mut self, task: &TaskId) -> bool {
        let before = self.subs.len();
        self.subs.retain(|s| &s.task != task);
        self.next_fill = 0;
        self.subs.len() != before
    }

    /// The next event that is ready without I/O (a buffered history page,
    /// snapshot or reset, or a queued live event), or `None` if getting one
    /// needs to wait. Lets transports batch several events into one write.
    pub fn next_ready(&mut self) -> Option<Delivery> {
        self.take_flags();
        for (index, sub) in self.subs.iter_mut().enumerate() {
            if let Some(ev) = sub.pop_pending(self.mode) {
                return Some(Delivery { index, ev });
            }
        }
        while let Some((id, ev)) = self.queue.pop() {
            let Some(index) = self.index_of(id) else {
                continue; // closed since
            };
            if let Some(ev) = self.subs[index].accept_live(ev, self.mode, &self.ctx.metrics) {
                self.live_streak = self.live_streak.saturating_add(1);
                return Some(Delivery { index, ev });
            }
        }
        None
    }

    /// The next event to deliver; `None` once every task has ended (when
    /// the connection ends with them). Cancel-safe: state only changes
    /// after an `.await` returns.
    pub async fn next(&mut self) -> Result<Option<Delivery>, StoreError> {
        loop {
            // Before anything reads the position (a history read among
            // them): what the hub wrote directly while this was parked. The
            // hub writes only while `next` is parked, so this is the one
            // place to take it over.
            self.absorb_direct();
            let starved = self.live_streak >= FILL_EVERY && self.fill_candidate().is_some();
            if !starved {
                if let Some(d) = self.next_ready() {
                    return Ok(Some(d));
                }
            }
            if self.end_when_done && self.all_done() {
                return Ok(None);
            }
            if let Some(i) = self.fill_candidate() {
                self.live_streak = 0;
                self.next_fill = i + 1;
                let mode = self.mode;
                match self.subs[i].fill(&self.ctx, mode).await {
                    Ok(()) => {
                        self.fill_failures = 0;
                        self.retry_at = None;
                    }
                    Err(StoreError::Unavailable(cause)) if self.fill_failures < FILL_RETRIES => {
                        // Redis is away for a moment (restart, failover):
                        // keep the connection and its cursors, deliver what
                        // else there is, and try again. Closing would make
                        // the client resume from positions that can only
                        // be checked once Redis is back anyway.
                        self.fill_failures += 1;
                        let wait = FILL_RETRY_BASE
                            .saturating_mul(1 << self.fill_failures.min(5))
                            .min(FILL_RETRY_MAX);
                        tracing::debug!(task = %self.subs[i].task, cause = %cause, retry_in_ms = wait.as_millis() as u64, "history read failed; retrying");
                        self.retry_at = Some(Instant::now() + wait);
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            let retry_at = self.retry_at;
            // Nothing to deliver or read: the hub may write to the socket
            // directly while this waits (dropping the guard ends it).
            let parked = self.park();
            // Every branch is cancel-safe (`notified`, `tick`,
            // `sleep_until`). A wake-up (an event queued, a subscription
            // flagged) is taken by `next_ready` at the top of the loop.
            tokio::select! {
                biased;
                _ = self.queue.wake.notified() => {}
                _ = tick(&mut self.tick) => {
                    for sub in &mut self.subs {
                        sub.release_held();
                    }
                }
                () = sleep_until(retry_at) => self.retry_at = None,
            }
            drop(parked);
        }
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.subs
            .iter()
            .position(|s| s.reg.as_ref().is_some_and(|r| r.id() == id))
    }

    /// Subscriptions the hub flagged (their queue overflowed, or the feed
    /// lost its place) catch up from history, checking first that the
    /// event they delivered last is still there.
    fn take_flags(&mut self) {
        if !self.queue.flagged.load(Ordering::Acquire)
            || !self.queue.flagged.swap(false, Ordering::AcqRel)
        {
            return;
        }
        for sub in &mut self.subs {
            let flagged = sub
                .reg
                .as_ref()
                .is_some_and(|r| r.shared.catch_up.swap(false, Ordering::AcqRel));
            if flagged && !sub.done {
                sub.catching_up = true;
                sub.verify_last = sub.last_tag.is_some();
            }
        }
    }

    /// The next subscription (in turns) that must read the store and may:
    /// no page is buffered (one page per connection at a time) and no
    /// failed read is waiting out its delay.
    fn fill_candidate(&self) -> Option<usize> {
        if self.retry_at.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        if self.subs.iter().any(|s| !s.pending.is_empty()) {
            return None;
        }
        let n = self.subs.len();
        (0..n)
            .map(|k| (self.next_fill + k) % n)
            .find(|&i| self.subs[i].catching_up && !self.subs[i].done)
    }
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One task of a connection.
pub struct Subscription {
    task: TaskId,
    /// Membership in the hub; dropped once the task ended.
    reg: Option<Registration>,
    /// Last delivered seq, and the tag of that event (`None`: not verified,
    /// or nothing delivered).
    last: Seq,
    last_tag: Option<Tag>,
    /// Whether `last` is a position the client holds (false until the
    /// first delivery when it started from the snapshot).
    known: bool,
    /// Check that the store still holds the event delivered last, under
    /// its seq, before going on (Redis may have lost acknowledged writes,
    /// then given the same seqs to new events).
    verify_last: bool,
    /// Ready to deliver, in order (a history page, a snapshot, a reset).
    pending: VecDeque<Arc<Event>>,
    /// The store must be read from `last + 1` before going live.
    catching_up: bool,
    /// The final event was delivered.
    done: bool,
    /// Latest mode: the newest live event not yet delivered.
    held: Option<Arc<Event>>,
    /// The reset queued is of a closed task: the subscription ends with it.
    ends_after_reset: bool,
}

impl Subscription {
    pub fn task(&self) -> &TaskId {
        &self.task
    }

    fn position(&self) -> Option<Position> {
        self.known.then_some(Position {
            seq: self.last,
            tag: self.last_tag,
        })
    }

    /// The first read: where the subscription starts.
    async fn open(
        &mut self,
        ctx: &Subscriptions,
        start: Start,
        mode: Mode,
    ) -> Result<Opened, StoreError> {
        let snapshot = ctx.store.snapshot(&self.task).await?;
        match (start, snapshot) {
            (Start::Latest, None) => self.known = true,
            (Start::Latest, Some(s)) => {
                self.last = s.seq.saturating_sub(1);
                self.pending.push_back(Event::from_snapshot(&s));
            }
            (Start::After(p), None) if p.seq == 0 => self.known = true,
            (Start::After(p), None) => {
                self.set_position(p);
                self.reset(&ctx.metrics, None);
            }
            (Start::After(p), Some(s)) => {
                self.set_position(p);
                let at = s.position();
                let epoch_differs =
                    matches!((p.tag, at.tag), (Some(a), Some(b)) if a.epoch() != b.epoch());
                if p.tag.is_none() && p.seq > s.seq && s.state == TaskState::Closed {
                    // A bare seq past the final event: the end, as at it
                    // (unverified; a position there is another history:
                    // nothing follows a final event in the same one).
                    self.finish();
                    return Ok(Opened::Finished);
                }
                if epoch_differs || p.seq > s.seq {
                    // Another history (the store lost the task and it was
                    // recreated), or an id reused.
                    self.reset(&ctx.metrics, Some(&s));
                } else if p.seq == s.seq {
                    if p.tag.is_some() && p.tag != at.tag {
                        self.reset(&ctx.metrics, Some(&s));
                    } else if s.state == TaskState::Closed {
                        self.finish();
                        return Ok(Opened::Finished);
                    }
                } else {
                    self.catching_up = true;
                    self.verify_last = p.tag.is_some();
                    if mode != Mode::All && !self.verify_last {
                        // Latest mode: the snapshot is the newest event.
                        self.catching_up = false;
                        self.pending.push_back(Event::from_snapshot(&s));
                    }
                }
            }
        }
        Ok(Opened::Streaming)
    }

    fn set_position(&mut self, p: Position) {
        self.last = p.seq;
        self.last_tag = p.tag;
        self.known = true;
    }

    fn finish(&mut self) {
        self.done = true;
        self.pending.clear();
        self.held = None;
        self.catching_up = false;
        // Nothing more will come: leave the hub.
        self.reg = None;
    }

    fn reset(&mut self, metrics: &Metrics, snapshot: Option<&Snapshot>) {
        metrics.resets.inc();
        self.pending.clear();
        self.held = None;
        self.pending.push_back(Event::reset(&self.task, snapshot));
        self.catching_up = false;
        self.ends_after_reset = snapshot.is_some_and(|s| s.state == TaskState::Closed);
    }

    /// The next buffered event to deliver (a page, a snapshot, a reset).
    fn pop_pending(&mut self, mode: Mode) -> Option<Arc<Event>> {
        while let Some(ev) = self.pending.pop_front() {
            if ev.is_reset {
                self.last = ev.seq;
                self.last_tag = ev.tag;
                self.known = true;
                // A closed task ends right after its reset.
                if self.ends_after_reset {
                    self.finish();
                }
                return Some(ev);
            }
            if ev.seq <= self.last && self.known {
                continue;
            }
            if mode == Mode::All && ev.seq > self.last + 1 && self.known {
                // Not contiguous (cannot happen for pages): refill.
                self.pending.clear();
                self.catching_up = true;
                return None;
            }
            self.deliver(&ev);
            return Some(ev);
        }
        None
    }

    fn deliver(&mut self, ev: &Event) {
        self.last = ev.seq;
        self.last_tag = ev.tag;
        self.known = true;
        if ev.is_final {
            self.finish();
        }
    }

    /// A live event from the connection's queue: delivered now, held
    /// (latest mode), or dropped (already delivered, or to be read from
    /// history: the store holds every event the feed carries).
    fn accept_live(&mut self, ev: Arc<Event>, mode: Mode, metrics: &Metrics) -> Option<Arc<Event>> {
        if self.done {
            return None;
        }
        let tail = self.pending.back().map_or(self.last, |e| e.seq);
        let tail = self.held.as_ref().map_or(tail, |h| h.seq.max(tail));
        if ev.seq <= tail {
            return None;
        }
        if self.catching_up {
            return None;
        }
        match mode {
            Mode::All => {
                if ev.seq == tail + 1 && self.pending.is_empty() {
                    self.deliver(&ev);
                    return Some(ev);
                }
                if ev.seq != tail + 1 {
                    // Missed feed entries: fill from the task log.
                    metrics.gaps.inc();
                }
                self.catching_up = true;
                None
            }
            Mode::Latest(_) => {
                if ev.is_final && self.pending.is_empty() {
                    self.held = None;
                    self.deliver(&ev);
                    return Some(ev);
                }
                // Newer than anything buffered: hold it for the next tick
                // (a final event behind a buffered one goes out with it).
                if ev.is_final {
                    self.pending.push_back(ev);
                } else {
                    self.held = Some(ev);
                }
                None
            }
        }
    }

    /// Latest mode, on the interval's tick: the held event goes out.
    fn release_held(&mut self) {
        if self.pending.is_empty() {
            if let Some(ev) = self.held.take() {
                self.pending.push_back(ev);
            }
        }
    }

    /// Reads the store once for a subscription that is catching up.
    async fn fill(&mut self, ctx: &Subscriptions, mode: Mode) -> Result<(), StoreError> {
        if self.verify_last {
            // Cleared only once the check ran: a failed read retries it.
            let reset = self.verify(ctx).await?;
            self.verify_last = false;
            if reset {
                return Ok(());
            }
        }
        if let Mode::Latest(_) = mode {
            // Only the newest event matters: the snapshot.
            let snap = ctx.store.snapshot(&self.task).await?;
            self.catching_up = false;
            match snap {
                Some(s) if s.seq > self.last => {
                    self.held = None;
                    self.pending.push_back(Event::from_snapshot(&s));
                }
                Some(s) if s.seq < self.last => self.reset(&ctx.metrics, Some(&s)),
                None if self.last > 0 => self.reset(&ctx.metrics, None),
                _ => {}
            }
            return Ok(());
        }
        if self.take_page(ctx).await? {
            return Ok(());
        }
        // Caught up, unless the log is gone while the task moved on. A
        // snapshot read after the empty page races with publishes (an event
        // appended in between would look lost), so read the snapshot first
        // and the log again: the function writes log and meta atomically,
        // so a log read that follows the snapshot holds every event up to
        // its seq unless Redis trimmed or lost them.
        let snap = ctx.store.snapshot(&self.task).await?;
        if self.take_page(ctx).await? {
            return Ok(());
        }
        match snap {
            Some(s) if s.seq > self.last => self.reset(&ctx.metrics, Some(&s)),
            Some(s) if s.seq < self.last => self.reset(&ctx.metrics, Some(&s)),
            None if self.last > 0 => self.reset(&ctx.metrics, None),
            _ => self.catching_up = false,
        }
        Ok(())
    }

    /// Is the event delivered last (or the resume point) still the one
    /// the store holds under its seq? Redis may have lost acknowledged
    /// writes (a restart without persistence, a failover) and given the
    /// same seqs to new events; then the client gets a reset instead of
    /// silently continuing in the new numbering. True if a reset was
    /// queued.
    async fn verify(&mut self, ctx: &Subscriptions) -> Result<bool, StoreError> {
        let Some(tag) = self.last_tag else {
            return Ok(false);
        };
        if self.last == 0 {
            return Ok(false);
        }
        let one = PageLimit::new(1, ctx.page.bytes);
        let at = match ctx.store.history(&self.task, self.last - 1, one).await {
            Ok(at) => at,
            // Unreadable: the page read that follows answers with a reset.
            Err(StoreError::Corrupt { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let same = match at.events.first().filter(|e| e.seq == self.last) {
            Some(ev) => ev.tag == Some(tag),
            None => {
                // Not retained (trimmed, or lost): the task's epoch decides.
                let snap = ctx.store.snapshot(&self.task).await?;
                match snap {
                    Some(s) => s.position().tag.is_none_or(|t| t.epoch() == tag.epoch()),
                    // The page read and the snapshot comparison that follow
                    // decide.
                    None => true,
                }
            }
        };
        if same {
            return Ok(false);
        }
        tracing::warn!(task = %self.task, seq = self.last, "the store no longer holds the events this client saw (lost writes); sending a reset");
        let snap = ctx.store.snapshot(&self.task).await?;
        self.reset(&ctx.metrics, snap.as_ref());
        Ok(true)
    }

    /// Reads the page after `last` and queues it; false if it was empty.
    /// A page that does not start right after `last` (or cannot be read
    /// back) means the events are no longer retained: that is a reset.
    async fn take_page(&mut self, ctx: &Subscriptions) -> Result<bool, StoreError> {
        let page = match ctx.store.history(&self.task, self.last, ctx.page).await {
            Ok(page) => page,
            Err(StoreError::Corrupt { task, what }) => {
                // The next event cannot be read back: as good as not
                // retained. Tell the client with a reset instead of failing
                // the connection (it would fail again on every reconnect).
                tracing::warn!(task = %task, cause = %what, "unreadable history; sending a reset");
                let snap = ctx.store.snapshot(&self.task).await?;
                self.reset(&ctx.metrics, snap.as_ref());
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
                let snap = ctx.store.snapshot(&self.task).await?;
                self.reset(&ctx.metrics, snap.as_ref());
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

    /// Opens a one-task connection on a fresh hub; the task must not be
    /// finished.
    async fn open(
        store: Arc<dyn Store>,
        task: &TaskId,
        start: Start,
        page: usize,
    ) -> (Mux, Arc<Hub>, Arc<Metrics>) {
        open_limited(store, task, start, PageLimit::events(page)).await
    }

    async fn open_limited(
        store: Arc<dyn Store>,
        task: &TaskId,
        start: Start,
        page: PageLimit,
    ) -> (Mux, Arc<Hub>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(16, metrics.clone());
        let mut mux =
            Subscriptions::new(hub.clone(), store, metrics.clone(), page).mux(Mode::All, true);
        let opened = mux.open(task.clone(), start).await.expect("open");
        assert_eq!(opened, Opened::Streaming, "task is open");
        (mux, hub, metrics)
    }

    async fn next(mux: &mut Mux) -> Arc<Event> {
        mux.next().await.expect("next").expect("an event").ev
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
        let (mut sub, hub, metrics) = open(store.clone(), &task, Start::after(0), 100).await;
        for want in 1..=5 {
            let ev = next(&mut sub).await;
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
        let ev = next(&mut sub).await;
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
        assert_eq!(next(&mut sub).await.seq, 3);
        hub.resync();
        store
            .publish(&task, "progress", &json!({ "nested": { "b": 2 } }), &opts)
            .await
            .expect("publish");
        let ev = next(&mut sub).await;
        assert!(!ev.is_reset);
        assert_eq!(ev.seq, 4);
        // And after a live/history event the fingerprints agree too.
        hub.resync();
        store
            .publish(&task, "progress", &json!({ "nested": { "b": 3 } }), &opts)
            .await
            .expect("publish");
        let ev = next(&mut sub).await;
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
        // Pages of 1 000 events but 7 000 bytes: three events each.
        let limit = PageLimit::new(1000, 7000);
        let (mut sub, _hub, metrics) =
            open_limited(store.clone(), &task, Start::after(0), limit).await;
        let mut seqs = Vec::new();
        for _ in 0..9 {
            let ev = next(&mut sub).await;
            assert!(!ev.is_reset);
            assert!(
                sub.subs[0].pending.len() < 3,
                "a page held more than its bytes"
            );
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
        let (mut sub, _hub, metrics) = open(store.clone(), &task, Start::after(0), 2).await;
        store.race.store(true, Ordering::Release);
        let mut seqs = Vec::new();
        for _ in 0..5 {
            let ev = next(&mut sub).await;
            assert!(!ev.is_reset, "spurious reset after {seqs:?}");
            seqs.push(ev.seq);
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(metrics.resets.get(), 0);
    }
}
