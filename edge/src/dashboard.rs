//! The dashboard's stats: one `event: stats` frame per second for
//! `GET /v1/dashboard/events` (see `http::dashboard`):
//!
//! - `node`: this node's connections, subscriptions, tasks and rates;
//! - `top_tasks`: tasks with the most local subscribers;
//! - `cluster` (Redis store): every registered node with its connections,
//!   rates and lag, and every shard feed's length and groups, as
//!   `sluice status --json` shows them; `null` on the memory store;
//! - `demo` (`--demo`): the latest snapshot of each demo task's current round;
//! - `watched`: the latest event of each task the viewer asked for, which
//!   the page draws as progress bars from `data.pct`. They are followed like
//!   any client's tasks: one connection's subscriptions ([`Mux`]) in latest
//!   mode, the newest event of each task twice a second.
//!
//! The stream ends when the node starts draining (the browser's EventSource
//! then reconnects, through the load balancer, to another node), so it never
//! holds up shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use sluice_broker::nodes::{ClusterStatus, NodeInfo};
use sluice_shared::event::{Snapshot, TaskState};
use sluice_shared::TaskId;
use tokio::time::{Instant, Interval};

use crate::cluster::Watcher;
use crate::demo::DEMO_TASKS;
use crate::status::{Counters, NodeStatus};
use crate::store::PageLimit;
use crate::subscription::{Mode, Mux, Start, Subscriptions, DEFAULT_HISTORY_PAGE};
use crate::wire::Event;

/// How often a watched task's bar may move.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Time between two stats frames.
pub const FRAME_EVERY: Duration = Duration::from_secs(1);
/// Tasks listed under "top tasks".
pub const TOP_TASKS: usize = 10;
/// Highest demo round the discovery probes (about 2^20).
const MAX_DEMO_ROUND: u64 = 1 << 20;

/// The stats stream of one viewer (who holds `watcher` while it lasts),
/// following the `watched` tasks.
pub fn stats(
    status: Arc<NodeStatus>,
    watcher: Watcher,
    watched: Vec<TaskId>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let session = StatsSession::new(status, watcher, watched);
    futures_util::stream::unfold(session, |mut s| async move {
        s.step().await.map(|b| (Ok(b), s))
    })
}

/// One stats frame.
#[derive(Debug, Serialize)]
pub struct Frame<'a> {
    pub at_ms: i64,
    pub node: LocalNode,
    pub top_tasks: Vec<TopTask>,
    pub cluster: Option<&'a ClusterStatus>,
    pub demo: Option<Vec<TaskProgress>>,
    pub watched: &'a [TaskProgress],
}

#[derive(Debug, Serialize)]
pub struct LocalNode {
    #[serde(flatten)]
    pub info: NodeInfo,
    pub store: &'static str,
    /// The live feed is attached.
    pub live: bool,
    pub uptime_secs: u64,
}

#[derive(Debug, Serialize)]
pub struct TopTask {
    pub task: String,
    pub subscribers: usize,
}

/// A task's progress: its latest event, as a bar.
#[derive(Debug, Serialize)]
pub struct TaskProgress {
    pub task: String,
    pub seq: u64,
    /// Type of the latest event.
    pub event: Option<String>,
    /// `data.pct` of the latest event, when it has one.
    pub pct: Option<f64>,
    /// `open`, `closed`, or `pending` (no event yet).
    pub state: &'static str,
}

impl TaskProgress {
    /// The bar of a task from the event delivered last for it (an
    /// envelope, or a reset whose data is the snapshot).
    fn from_event(task: String, ev: &Event) -> Self {
        let env: serde_json::Value = serde_json::from_slice(&ev.json).unwrap_or_default();
        if ev.is_reset {
            let snap: Option<Snapshot> = serde_json::from_value(env["data"].clone()).ok();
            return TaskProgress::of(task, snap.as_ref());
        }
        TaskProgress {
            task,
            seq: ev.seq,
            event: env["type"].as_str().map(str::to_owned),
            pct: env["data"].get("pct").and_then(|p| p.as_f64()),
            state: if ev.is_final {
                TaskState::Closed.as_str()
            } else {
                TaskState::Open.as_str()
            },
        }
    }

    fn of(task: String, snap: Option<&Snapshot>) -> Self {
        match snap {
            Some(s) => TaskProgress {
                task,
                seq: s.seq,
                event: Some(s.latest.kind.clone()),
                pct: s.latest.data.get("pct").and_then(|p| p.as_f64()),
                state: s.state.as_str(),
            },
            None => TaskProgress {
                task,
                seq: 0,
                event: None,
                pct: None,
                state: "pending",
            },
        }
    }
}

struct StatsSession {
    status: Arc<NodeStatus>,
    tick: Interval,
    before: Counters,
    demo: Option<DemoRounds>,
    /// The watched tasks not yet opened (opened with the first frame).
    to_open: Vec<TaskId>,
    /// The watched tasks' subscriptions, and each one's bar.
    mux: Mux,
    bars: Vec<TaskProgress>,
    started: bool,
    _watcher: Watcher,
}

impl StatsSession {
    fn new(status: Arc<NodeStatus>, watcher: Watcher, watched: Vec<TaskId>) -> Self {
        let mut tick = tokio::time::interval_at(Instant::now(), FRAME_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let before = status.counters();
        let demo = status.demo.then(DemoRounds::default);
        let mux = Subscriptions::new(
            status.hub.clone(),
            status.store.clone(),
            status.metrics.clone(),
            PageLimit::events(DEFAULT_HISTORY_PAGE),
        )
        .mux(Mode::Latest(WATCH_EVERY), false);
        StatsSession {
            status,
            tick,
            before,
            demo,
            to_open: watched,
            mux,
            bars: Vec::new(),
            started: false,
            _watcher: watcher,
        }
    }

    /// Opens the watched tasks (a store that cannot be read now leaves a
    /// task out of this viewer's bars).
    async fn open_watched(&mut self) {
        for task in std::mem::take(&mut self.to_open) {
            match self.mux.open(task.clone(), Start::Latest).await {
                Ok(_) => self.bars.push(TaskProgress::of(task.to_string(), None)),
                Err(e) => tracing::debug!(task = %task, cause = %e, "dashboard cannot follow task"),
            }
        }
    }

    /// Waits for the next frame's moment, moving the bars meanwhile.
    async fn until_tick(&mut self) {
        loop {
            tokio::select! {
                biased;
                _ = self.tick.tick() => return,
                next = self.mux.next() => match next {
                    Ok(Some(d)) => {
                        if let Some(bar) = self.bars.get_mut(d.index) {
                            *bar = TaskProgress::from_event(std::mem::take(&mut bar.task), &d.ev);
                        }
                    }
                    // The viewer's mux never ends by itself; a store error
                    // leaves the bars as they are until the next frame.
                    Ok(None) | Err(_) => {
                        self.tick.tick().await;
                        return;
                    }
                },
            }
        }
    }

    /// The next chunk, or `None` once the node drains.
    async fn step(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(Bytes::from_static(b"retry: 1000\n"));
        }
        let draining = self.status.draining.clone();
        // Cancel-safety: `tick` is cancel-safe; a frame being built when the
        // node drains is dropped, and the stream ends.
        tokio::select! {
            biased;
            () = draining.started() => None,
            frame = self.next_frame() => Some(frame),
        }
    }

    async fn next_frame(&mut self) -> Bytes {
        if !self.to_open.is_empty() {
            self.open_watched().await;
        }
        self.until_tick().await;
        let state = &*self.status;
        let now = state.counters();
        let info = state.report(&now, &self.before);
        self.before = now;
        let uptime_secs = (info
            .last_seen_ms
            .saturating_sub(state.cluster.started_ms)
            .max(0)
            / 1000) as u64;
        let demo = match &mut self.demo {
            Some(d) => Some(d.frame(state).await),
            None => None,
        };
        let watched = &self.bars;
        let cluster = state.cluster.latest();
        let frame = Frame {
            at_ms: info.last_seen_ms,
            node: LocalNode {
                info,
                store: state.store.kind(),
                live: state.hub.is_live(),
                uptime_secs,
            },
            top_tasks: state
                .hub
                .top_tasks(TOP_TASKS)
                .into_iter()
                .map(|(task, subscribers)| TopTask { task, subscribers })
                .collect(),
            cluster: cluster.as_deref(),
            demo,
            watched,
        };
        let mut out = b"event: stats\ndata: ".to_vec();
        if serde_json::to_writer(&mut out, &frame).is_err() {
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// The current round of each demo task (`<name>-<round>`), found by
/// probing snapshots: galloping then bisecting at first, then moving to the
/// next round once the current one is closed and its successor exists.
#[derive(Default)]
struct DemoRounds {
    rounds: Vec<u64>,
}

impl DemoRounds {
    async fn frame(&mut self, state: &NodeStatus) -> Vec<TaskProgress> {
        if self.rounds.is_empty() {
            for (name, _) in DEMO_TASKS {
                self.rounds.push(discover(state, name).await);
            }
        }
        let mut out = Vec::with_capacity(DEMO_TASKS.len());
        for (i, (name, _)) in DEMO_TASKS.iter().enumerate() {
            let round = self.rounds[i];
            let mut snap = demo_snapshot(state, name, round).await;
            if matches!(&snap, Some(s) if s.state == TaskState::Closed) {
                if let Some(next) = demo_snapshot(state, name, round + 1).await {
                    self.rounds[i] = round + 1;
                    snap = Some(next);
                }
            }
            let task = format!("{name}-{}", self.rounds[i]);
            out.push(TaskProgress::of(task, snap.as_ref()));
        }
        out
    }
}

/// A task's snapshot; errors read as "no snapshot" (the dashboard is
/// best-effort and shows the task as pending).
async fn snapshot(state: &NodeStatus, task: &TaskId) -> Option<Snapshot> {
    match state.store.snapshot(task).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(task = %task, cause = %e, "dashboard snapshot failed");
            None
        }
    }
}

async fn demo_snapshot(state: &NodeStatus, name: &str, round: u64) -> Option<Snapshot> {
    let task = TaskId::parse(&format!("{name}-{round}")).ok()?;
    snapshot(state, &task).await
}

/// The last existing round of a demo task (1 when none exists yet).
async fn discover(state: &NodeStatus, name: &str) -> u64 {
    if demo_snapshot(state, name, 1).await.is_none() {
        return 1;
    }
    let mut lo = 1u64; // exists
    let mut hi = 2u64;
    while hi < MAX_DEMO_ROUND && demo_snapshot(state, name, hi).await.is_some() {
        lo = hi;
        hi *= 2;
    }
    // Invariant: `lo` exists, `hi` does not (or is the cap).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if demo_snapshot(state, name, mid).await.is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}
