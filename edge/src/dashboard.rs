//! `GET /`: the live dashboard, one self-contained page (inline CSS and JS,
//! no CDN, no build step), and `GET /v1/dashboard/events`: the node's stats
//! as Server-Sent Events, one `event: stats` frame per second:
//!
//! - `node`: this node's connections, subscriptions, tasks and rates;
//! - `top_tasks`: tasks with the most local subscribers;
//! - `cluster` (Redis store): every registered node with its connections,
//!   rates and lag, and every shard feed's length and groups, as
//!   `sluice status --json` shows them; `null` on the memory store;
//! - `demo` (`--demo`): the latest snapshot of each demo task's current round;
//! - `watched`: the latest snapshot of each task the viewer asked for with
//!   `?task=a&task=b` (at most [`MAX_WATCHED`]; with auth on, `?token=` must
//!   allow each), which the page draws as progress bars from `data.pct`.
//!   The page passes its own `?task=` on, so `/?task=job-42` follows job-42.
//!
//! The stats stream ends when the node starts draining (the browser's
//! EventSource then reconnects, through the load balancer, to another node),
//! so it never holds up shutdown. Viewers are capped per node.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_broker::nodes::{ClusterStatus, NodeInfo};
use sluice_shared::event::{Snapshot, TaskState};
use sluice_shared::TaskId;
use tokio::time::{Instant, Interval};

use crate::demo::DEMO_TASKS;
use crate::error::ApiError;
use crate::registry::{self, Counters, Watcher};
use crate::state::SharedState;

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");
/// Time between two stats frames.
pub const FRAME_EVERY: Duration = Duration::from_secs(1);
/// Most dashboard streams one node serves at once.
pub const MAX_VIEWERS: usize = 32;
/// Tasks listed under "top tasks".
pub const TOP_TASKS: usize = 10;
/// Most tasks one viewer can follow.
pub const MAX_WATCHED: usize = 8;
/// Highest demo round the discovery probes (about 2^20).
const MAX_DEMO_ROUND: u64 = 1 << 20;

/// Scripts and styles are inline; nothing may load from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
        .into_response()
}

pub async fn events(
    State(state): State<SharedState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let watched = watched_tasks(&state, q.as_deref(), &headers)?;
    if state.is_draining() {
        return Err(ApiError::unavailable(
            "draining",
            "this node is draining; reconnect to another",
            1,
        ));
    }
    let Some(watcher) = state.cluster.watch(MAX_VIEWERS) else {
        return Err(ApiError::unavailable(
            "too_many_viewers",
            format!("this node serves at most {MAX_VIEWERS} dashboards at once"),
            5,
        ));
    };
    tracing::debug!(
        viewers = state.cluster.watchers(),
        "dashboard viewer joined"
    );
    let session = StatsSession::new(state, watcher, watched);
    let body = Body::from_stream(futures_util::stream::unfold(session, |mut s| async move {
        s.step().await.map(|b| (Ok::<_, Infallible>(b), s))
    }));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// One stats frame.
#[derive(Debug, Serialize)]
pub struct Frame<'a> {
    pub at_ms: i64,
    pub node: LocalNode,
    pub top_tasks: Vec<TopTask>,
    pub cluster: Option<&'a ClusterStatus>,
    pub demo: Option<Vec<TaskProgress>>,
    pub watched: Vec<TaskProgress>,
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

/// The `?task=` list of a stats request, each checked like a subscription.
fn watched_tasks(
    state: &SharedState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Vec<TaskId>, ApiError> {
    let raw = query.unwrap_or("");
    let params = crate::app::parse_query(Some(raw));
    let mut tasks: Vec<TaskId> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if k != "task" {
            continue;
        }
        for t in v.split(',').filter(|t| !t.is_empty()) {
            let task = crate::app::parse_task(t)?;
            if !tasks.contains(&task) {
                tasks.push(task);
            }
        }
    }
    if tasks.len() > MAX_WATCHED {
        return Err(ApiError::bad_request(
            "too_many_tasks",
            format!("a dashboard follows at most {MAX_WATCHED} tasks"),
        ));
    }
    for task in &tasks {
        crate::auth::authorize(state, headers, &params, task)?;
    }
    Ok(tasks)
}

struct StatsSession {
    state: SharedState,
    tick: Interval,
    before: Counters,
    demo: Option<DemoRounds>,
    watched: Vec<TaskId>,
    started: bool,
    _watcher: Watcher,
}

impl StatsSession {
    fn new(state: SharedState, watcher: Watcher, watched: Vec<TaskId>) -> Self {
        let mut tick = tokio::time::interval_at(Instant::now(), FRAME_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let before = Counters::read(&state);
        let demo = state.demo.then(DemoRounds::default);
        StatsSession {
            state,
            tick,
            before,
            demo,
            watched,
            started: false,
            _watcher: watcher,
        }
    }

    /// The next chunk, or `None` once the node drains.
    async fn step(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(Bytes::from_static(b"retry: 1000\n\n"));
        }
        let draining = self.state.draining.clone();
        // Cancel-safety: `tick` is cancel-safe; a frame being built when the
        // node drains is dropped, and the stream ends.
        tokio::select! {
            biased;
            () = draining.started() => None,
            frame = self.next_frame() => Some(frame),
        }
    }

    async fn next_frame(&mut self) -> Bytes {
        self.tick.tick().await;
        let state = &self.state;
        let now = Counters::read(state);
        let info = registry::local_report(state, &now, &self.before);
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
        let mut watched = Vec::with_capacity(self.watched.len());
        for task in &self.watched {
            let snap = snapshot(state, task).await;
            watched.push(TaskProgress::of(task.to_string(), snap.as_ref()));
        }
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
    async fn frame(&mut self, state: &SharedState) -> Vec<TaskProgress> {
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
async fn snapshot(state: &SharedState, task: &TaskId) -> Option<Snapshot> {
    match state.store.snapshot(task).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(task = %task, cause = %e, "dashboard snapshot failed");
            None
        }
    }
}

async fn demo_snapshot(state: &SharedState, name: &str, round: u64) -> Option<Snapshot> {
    let task = TaskId::parse(&format!("{name}-{round}")).ok()?;
    snapshot(state, &task).await
}

/// The last existing round of a demo task (1 when none exists yet).
async fn discover(state: &SharedState, name: &str) -> u64 {
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

#[cfg(test)]
mod tests {
    #[test]
    fn page_is_self_contained() {
        let page = super::PAGE;
        assert!(page.contains("/v1/dashboard/events"));
        for external in ["http://", "https://", "//cdn", "<link rel=\"stylesheet\""] {
            assert!(!page.contains(external), "page must not load {external}");
        }
    }
}
