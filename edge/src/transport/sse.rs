//! `GET /v1/tasks/{task}/events`: Server-Sent Events.
//!
//! The body is a stream that owns everything the connection holds (the
//! admission guard, the hub registration): when hyper drops it — the client
//! left, a write failed, the node shut down — all of it is released. It ends
//! by itself after the final event, on drain (after a short `retry:` at a
//! jittered moment inside the drain window) and on shutdown.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use tokio::time::{Instant, Interval, Sleep};

use crate::app::{parse_query, parse_seq, parse_task};
use crate::error::ApiError;
use crate::limits::{ConnGuard, Refusal};
use crate::metrics::{RefuseReason, Transport, TransportLabel};
use crate::state::SharedState;
use crate::subscription::{Opening, Start, Subscription};
use crate::transport::ConnLog;
use crate::wire::Event;

/// Range of the initial `retry:` (ms), jittered so reconnect storms spread.
pub const RETRY_MS: std::ops::Range<u64> = 1_000..5_000;
/// Range of the `retry:` sent when draining (ms): reconnect soon, elsewhere.
pub const DRAIN_RETRY_MS: std::ops::Range<u64> = 100..1_000;
/// Most events written in one chunk.
const BATCH: usize = 64;

/// Admission common to SSE and WebSocket: draining, limit and rate.
pub fn admit(state: &SharedState, transport: Transport) -> Result<ConnGuard, ApiError> {
    if state.is_draining() {
        state.metrics.refuse(RefuseReason::Draining);
        return Err(ApiError::unavailable(
            "draining",
            "this node is draining; reconnect to another",
            1,
        ));
    }
    state.limits.try_admit(transport).map_err(|r| {
        let jitter = rand::rng().random_range(1..=5);
        match r {
            Refusal::Full => {
                state.metrics.refuse(RefuseReason::ConnectionLimit);
                ApiError::unavailable(
                    "too_many_connections",
                    "this node is at its connection limit",
                    jitter,
                )
            }
            Refusal::Rate => {
                state.metrics.refuse(RefuseReason::ConnectRate);
                ApiError::unavailable(
                    "connect_rate_limited",
                    "too many new connections; retry shortly",
                    jitter,
                )
            }
        }
    })
}

/// The resume point from `Last-Event-ID` (wins: browsers send it on
/// reconnect while the URL keeps the original `after`) or `?after=`.
pub fn resume_point(
    headers: &HeaderMap,
    query: &std::collections::HashMap<String, String>,
) -> Result<Start, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let v = v.to_str().map_err(|_| {
            ApiError::bad_request("invalid_resume_point", "Last-Event-ID is not ASCII")
        })?;
        return Ok(Start::After(parse_seq("Last-Event-ID", v)?));
    }
    match query.get("after") {
        Some(v) => Ok(Start::After(parse_seq("after", v)?)),
        None => Ok(Start::Latest),
    }
}

pub async fn subscribe(
    State(state): State<SharedState>,
    Path(task): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = parse_task(&task)?;
    let query = parse_query(q.as_deref());
    let start = resume_point(&headers, &query)?;
    crate::auth::authorize(&state, &headers, &query, &task)?;
    let guard = admit(&state, Transport::Sse)?;
    let opening = state.subscriptions.open(task, start).await?;
    let sub = match opening {
        Opening::Finished => return Ok(StatusCode::NO_CONTENT.into_response()),
        Opening::Stream(sub) => sub,
    };
    tracing::debug!(task = %sub.task(), transport = "sse", "subscribed");
    let session = SseSession::new(state, sub, guard);
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

enum Phase {
    Start,
    Running,
    Done,
}

struct SseSession {
    state: SharedState,
    sub: Subscription,
    heartbeat: Interval,
    /// Armed when the node starts draining: this stream's jittered close.
    drain_at: Pin<Box<Sleep>>,
    drain_armed: bool,
    phase: Phase,
    log: ConnLog,
    _guard: ConnGuard,
    _alive: AliveGuard,
}

/// Counts live connection bodies/tasks (the "no task outlives its
/// connection" gauge).
pub struct AliveGuard(Arc<crate::metrics::Metrics>);

impl AliveGuard {
    pub fn new(m: &Arc<crate::metrics::Metrics>) -> Self {
        m.connection_tasks.inc();
        AliveGuard(m.clone())
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.connection_tasks.dec();
    }
}

impl SseSession {
    fn new(state: SharedState, sub: Subscription, guard: ConnGuard) -> Self {
        let hb = state.heartbeat;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let alive = AliveGuard::new(&state.metrics);
        let log = ConnLog::new("sse", sub.task());
        SseSession {
            log,
            state,
            sub,
            heartbeat,
            drain_at: Box::pin(tokio::time::sleep(Duration::from_secs(365 * 24 * 3600))),
            drain_armed: false,
            phase: Phase::Start,
            _guard: guard,
            _alive: alive,
        }
    }

    /// The next chunk to write, or `None` to end the response.
    async fn step(&mut self) -> Option<Bytes> {
        match self.phase {
            Phase::Done => return None,
            Phase::Start => {
                self.phase = Phase::Running;
                let ms = rand::rng().random_range(RETRY_MS);
                return Some(Bytes::from(format!("retry: {ms}\n\n")));
            }
            Phase::Running => {}
        }
        loop {
            if !self.drain_armed && self.state.is_draining() {
                let window = self.state.drain_window.as_millis() as u64;
                let at = rand::rng().random_range(0..=window);
                self.drain_at
                    .as_mut()
                    .reset(Instant::now() + Duration::from_millis(at));
                self.drain_armed = true;
            }
            // Cancel-safety: `sub.next()` keeps its state across drops;
            // `cancelled`, `tick` and `sleep` are cancel-safe.
            tokio::select! {
                biased;
                _ = &mut self.drain_at, if self.drain_armed => {
                    self.phase = Phase::Done;
                    self.log.reason = "node draining";
                    let ms = rand::rng().random_range(DRAIN_RETRY_MS);
                    tracing::debug!(task = %self.sub.task(), "closing for drain");
                    return Some(Bytes::from(format!("retry: {ms}\n\n")));
                }
                _ = self.state.draining.started(), if !self.drain_armed => continue,
                next = self.sub.next() => {
                    return match next {
                        Ok(Some(ev)) => Some(self.batch(ev)),
                        Ok(None) => {
                            self.phase = Phase::Done;
                            self.log.reason = "task finished";
                            None
                        }
                        Err(e) => {
                            tracing::warn!(task = %self.sub.task(), cause = %e, "subscription failed; closing so the client resumes");
                            self.phase = Phase::Done;
                            self.log.reason = "backend unavailable";
                            None
                        }
                    };
                }
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": hb\n\n")),
            }
        }
    }

    /// The first event plus whatever else is ready, in one chunk.
    fn batch(&mut self, first: Arc<Event>) -> Bytes {
        let mut evs = vec![first];
        while evs.len() < BATCH {
            match self.sub.next_ready() {
                Some(ev) => evs.push(ev),
                None => break,
            }
        }
        self.record(&evs);
        self.log.events += evs.len() as u64;
        self.heartbeat.reset();
        if evs.len() == 1 {
            return evs[0].sse.clone();
        }
        let mut buf = Vec::with_capacity(evs.iter().map(|e| e.sse.len()).sum());
        for e in &evs {
            buf.extend_from_slice(&e.sse);
        }
        Bytes::from(buf)
    }

    fn record(&self, evs: &[Arc<Event>]) {
        let m = &self.state.metrics;
        m.delivered
            .get_or_create(&TransportLabel {
                transport: Transport::Sse,
            })
            .inc_by(evs.len() as u64);
        let now = chrono::Utc::now().timestamp_millis();
        for e in evs.iter().filter(|e| e.ts > 0) {
            m.delivery_latency
                .observe((now - e.ts).max(0) as f64 / 1000.0);
        }
    }
}
