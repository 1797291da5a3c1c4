//! The session driver every transport shares. A [`Session`] drives one
//! subscription to one peer. It decides what to write and when: batches of
//! events, heartbeats after quiet intervals, the end of the stream, the
//! close at a jittered moment once the node drains. It keeps the delivery
//! metrics and the connection's log line. A transport only frames bytes
//! ([`Framing`]): SSE into a response body, WebSocket into frames, with its
//! own ping/pong and close codes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use sluice_shared::TaskId;
use tokio::time::{Instant, Interval, Sleep};

use crate::lifecycle::{Draining, Tasks};
use crate::limits::{ConnGuard, Limits};
use crate::metrics::{Metrics, Transport, TransportLabel};
use crate::server::io::Peer;
use crate::subscription::{Subscription, Subscriptions};
use crate::wire::Event;

/// Most events written in one batch.
pub const BATCH: usize = 64;
/// A batch takes no more events once it holds this many bytes (SSE writes
/// a batch as one body chunk, copied together: a batch of large events
/// would be a copy of up to [`BATCH`] of them).
pub const BATCH_BYTES: usize = 64 * 1024;

/// What every client session of a node shares.
pub struct Sessions {
    pub subscriptions: Subscriptions,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    pub draining: Draining,
    /// Quiet time before a heartbeat (SSE comment, WebSocket ping).
    pub heartbeat: Duration,
    /// Once draining, each session closes at a random moment inside it.
    pub drain_window: Duration,
    /// Where sessions that outlive their request run (WebSocket).
    pub tasks: Tasks,
}

/// Why a session ended: the driver's reasons and the peer's. Each transport
/// writes it its own way (SSE: a `retry:` on drain; WebSocket: a close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The task's final event was delivered, or the resume point is past it.
    Finished,
    /// The node drains; the client should reconnect, to another node.
    Draining,
    /// The backend cannot serve the session (history unreadable for ~30 s,
    /// or unreachable when the session opened).
    BackendUnavailable,
    /// A write failed or did not complete within its deadline.
    WriteFailed,
    /// The peer stopped answering pings.
    PongTimeout,
    /// The peer closed the session.
    PeerClosed,
    /// The peer sent a message over the size limit.
    TooBig,
    /// The peer broke the protocol.
    ProtocolError,
}

impl End {
    /// The reason in the connection's log line.
    pub fn reason(self) -> &'static str {
        match self {
            End::Finished => "task finished",
            End::Draining => "node draining",
            End::BackendUnavailable => "backend unavailable",
            End::WriteFailed => "write failed",
            End::PongTimeout => "pong timeout",
            End::PeerClosed => "client closed",
            End::TooBig => "message too big",
            End::ProtocolError => "protocol error",
        }
    }
}

/// How one transport writes a session. The driver calls one method at a
/// time and never again after [`Framing::finish`].
pub trait Framing: Send {
    /// Writes one batch of events, in order. An error ends the session.
    fn send(&mut self, events: &[Arc<Event>]) -> impl Future<Output = Result<(), End>> + Send;

    /// Tells the peer the session is alive after a quiet interval (and may
    /// find that the peer is not).
    fn heartbeat(&mut self) -> impl Future<Output = Result<(), End>> + Send;

    /// Resolves when the peer ends the session; a peer that cannot speak
    /// (SSE) never does. Must be cancel-safe: the driver polls it against
    /// everything else and drops it when something else happens first.
    fn peer_end(&mut self) -> impl Future<Output = End> + Send;

    /// Writes the end of the session.
    fn finish(&mut self, end: End) -> impl Future<Output = ()> + Send;
}

/// What one connection holds while it lives: its admission (the connection
/// slot), its place in the "connection tasks" gauge and its log line.
/// Dropping it releases all of them.
pub struct Conn {
    transport: Transport,
    log: ConnLog,
    _alive: AliveGuard,
    _guard: ConnGuard,
}

impl Conn {
    /// `peer`: the socket's side of the connection (absent when the router
    /// runs without the node's accept loop, as in unit tests).
    pub fn new(
        metrics: &Arc<Metrics>,
        transport: Transport,
        task: &TaskId,
        guard: ConnGuard,
        peer: Option<Arc<Peer>>,
    ) -> Self {
        Conn {
            transport,
            log: ConnLog::new(transport.as_str(), task, peer),
            _alive: AliveGuard::new(metrics),
            _guard: guard,
        }
    }

    /// Records why the connection ended (its log line says so).
    pub fn ended(&mut self, end: End) {
        self.log.reason = end.reason();
    }
}

/// One subscription driven to one peer.
pub struct Session<F> {
    sub: Subscription,
    framing: F,
    heartbeat: Interval,
    drain: DrainTimer,
    delivered: Counter,
    metrics: Arc<Metrics>,
    conn: Conn,
    ended: bool,
}

impl<F: Framing> Session<F> {
    pub fn new(sessions: &Sessions, conn: Conn, sub: Subscription, framing: F) -> Self {
        let hb = sessions.heartbeat;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + hb, hb);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let delivered = sessions
            .metrics
            .delivered
            .get_or_create(&TransportLabel {
                transport: conn.transport,
            })
            .clone();
        tracing::debug!(task = %sub.task(), transport = conn.transport.as_str(), "subscribed");
        Session {
            sub,
            framing,
            heartbeat,
            drain: DrainTimer::new(sessions.draining.clone(), sessions.drain_window),
            delivered,
            metrics: sessions.metrics.clone(),
            conn,
            ended: false,
        }
    }

    pub fn framing_mut(&mut self) -> &mut F {
        &mut self.framing
    }

    /// Drives the session to its end.
    pub async fn run(mut self) {
        while self.step().await {}
    }

    /// Waits for the next thing to do and does it through the framing.
    /// False once the session has ended (its end written). Dropping a step
    /// midway is safe, but SSE and WebSocket never do.
    pub async fn step(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let result = tokio::select! {
            biased;
            () = self.drain.due() => Err(End::Draining),
            end = self.framing.peer_end() => Err(end),
            next = self.sub.next() => match next {
                Ok(Some(first)) => self.deliver(first).await,
                Ok(None) => Err(End::Finished),
                Err(e) => {
                    tracing::warn!(task = %self.sub.task(), transport = self.conn.transport.as_str(), cause = %e, "subscription failed; closing so the client resumes");
                    Err(End::BackendUnavailable)
                }
            },
            _ = self.heartbeat.tick() => self.framing.heartbeat().await,
        };
        let Err(end) = result else {
            return true;
        };
        if end == End::Draining {
            tracing::debug!(task = %self.sub.task(), "closing for drain");
        }
        self.conn.ended(end);
        self.framing.finish(end).await;
        self.ended = true;
        false
    }

    /// Writes `first` and whatever else is ready, up to [`BATCH`] events
    /// or [`BATCH_BYTES`], as one batch.
    async fn deliver(&mut self, first: Arc<Event>) -> Result<(), End> {
        let mut bytes = first.sse.len();
        let mut batch = Vec::with_capacity(8);
        batch.push(first);
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match self.sub.next_ready() {
                Some(ev) => {
                    bytes += ev.sse.len();
                    batch.push(ev);
                }
                None => break,
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.framing.send(&batch).await?;
        self.delivered.inc_by(batch.len() as u64);
        for ev in batch.iter().filter(|e| e.ts > 0) {
            self.metrics
                .delivery_latency
                .observe((now_ms - ev.ts).max(0) as f64 / 1000.0);
        }
        self.conn.log.events += batch.len() as u64;
        self.heartbeat.reset();
        Ok(())
    }
}

/// A session's moment to close once the node drains: drawn at random
/// inside the drain window when draining starts, so the node's clients
/// reconnect spread over the window.
struct DrainTimer {
    draining: Draining,
    window: Duration,
    at: Pin<Box<Sleep>>,
    armed: bool,
}

impl DrainTimer {
    fn new(draining: Draining, window: Duration) -> Self {
        DrainTimer {
            draining,
            window,
            at: Box::pin(tokio::time::sleep(Duration::from_secs(365 * 24 * 3600))),
            armed: false,
        }
    }

    /// Resolves at this session's moment. Cancel-safe: the moment is drawn
    /// once, after draining started, and kept.
    async fn due(&mut self) {
        if !self.armed {
            self.draining.started().await;
            let ms = rand::rng().random_range(0..=self.window.as_millis() as u64);
            self.at
                .as_mut()
                .reset(Instant::now() + Duration::from_millis(ms));
            self.armed = true;
        }
        self.at.as_mut().await
    }
}

/// One log line per connection when it ends: transport, task, duration,
/// events sent and why it ended ("stalled" when the socket's write
/// deadline closed it, whatever the transport saw of it).
struct ConnLog {
    transport: &'static str,
    task: String,
    opened: std::time::Instant,
    events: u64,
    reason: &'static str,
    peer: Option<Arc<Peer>>,
}

impl ConnLog {
    fn new(transport: &'static str, task: &TaskId, peer: Option<Arc<Peer>>) -> Self {
        tracing::debug!(transport, task = %task, "connection opened");
        ConnLog {
            transport,
            task: task.to_string(),
            opened: std::time::Instant::now(),
            events: 0,
            reason: "client went away",
            peer,
        }
    }
}

impl ConnLog {
    /// Why the connection ended, as its log line says.
    fn reason(&self) -> &'static str {
        if self.peer.as_ref().is_some_and(|p| p.stalled()) {
            "stalled"
        } else {
            self.reason
        }
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        tracing::info!(
            transport = self.transport,
            task = %self.task,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            events = self.events,
            reason = self.reason(),
            "connection closed"
        );
    }
}

/// Counts live connection bodies and sessions (the "no task outlives its
/// connection" gauge).
struct AliveGuard(Arc<Metrics>);

impl AliveGuard {
    fn new(m: &Arc<Metrics>) -> Self {
        m.connection_tasks.inc();
        AliveGuard(m.clone())
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.connection_tasks.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_socket_is_the_reason_whatever_the_transport_saw() {
        let task = TaskId::parse("t1").expect("task id");
        let peer = Arc::new(Peer::default());
        let mut log = ConnLog::new("sse", &task, Some(peer.clone()));
        assert_eq!(log.reason(), "client went away");
        log.reason = End::WriteFailed.reason();
        assert_eq!(log.reason(), "write failed");
        peer.mark_stalled();
        assert_eq!(log.reason(), "stalled");
    }
}
