//! The session driver every transport shares. A [`Session`] drives one
//! connection's subscriptions (a [`Mux`]: one task or many) to one peer. It
//! decides what to write and when: batches of events, heartbeats after
//! quiet intervals, the end of the stream, the close at a jittered moment
//! once the node drains, and, on a WebSocket of `/v1/ws`, the peer's
//! subscribe and unsubscribe requests ([`Heard`]) with their answers. It
//! keeps the delivery metrics and the connection's log line. A transport
//! only frames bytes ([`Framing`]): SSE into a response body, WebSocket into
//! frames, with its own ping/pong and close codes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use sluice_shared::TaskId;
use tokio::time::{Instant, Interval, Sleep};

use crate::error::ApiError;
use crate::lifecycle::{Draining, Tasks};
use crate::limits::{ConnGuard, Limits};
use crate::metrics::{Metrics, Transport, TransportLabel};
use crate::server::direct::Direct;
use crate::server::io::Peer;
use crate::subscription::{Delivery, Mux, Opened, Start, Subscriptions};

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
    /// Most tasks one connection may follow (`--max-tasks-per-connection`).
    pub max_tasks: usize,
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

/// What the peer said: the end of the session, or (WebSocket of `/v1/ws`)
/// a request to change the tasks it follows.
#[derive(Debug)]
pub enum Heard {
    End(End),
    /// Follow `task` from `after` (a seq, or a position `17.AbCd3w`; none:
    /// from the snapshot).
    Subscribe {
        task: String,
        after: Option<String>,
    },
    Unsubscribe {
        task: String,
    },
    /// A message that is none of these: answered with an error, the
    /// session goes on.
    Invalid(String),
}

/// How one transport writes a session. The driver calls one method at a
/// time and never again after [`Framing::finish`].
pub trait Framing: Send {
    /// Writes one batch of events, in order. An error ends the session.
    fn send(&mut self, batch: &[Delivery]) -> impl Future<Output = Result<(), End>> + Send;

    /// Tells the peer the session is alive after a quiet interval (and may
    /// find that the peer is not).
    fn heartbeat(&mut self) -> impl Future<Output = Result<(), End>> + Send;

    /// Resolves when the peer says something that matters to the driver;
    /// a peer that cannot speak (SSE) never does. Must be cancel-safe: the
    /// driver polls it against everything else and drops it when something
    /// else happens first.
    fn heard(&mut self) -> impl Future<Output = Heard> + Send;

    /// Writes one answer to the peer (a JSON message); only transports
    /// whose peer can ask ([`Heard::Subscribe`]) are asked to.
    fn reply(&mut self, message: serde_json::Value)
        -> impl Future<Output = Result<(), End>> + Send;

    /// Writes the end of the session.
    fn finish(&mut self, end: End) -> impl Future<Output = ()> + Send;
}

/// Whether the caller may read a task (the token's `tasks` claim).
pub type Authorize = Box<dyn Fn(&TaskId) -> Result<(), ApiError> + Send + Sync>;

/// What a session whose peer changes its task set needs: who may read
/// what, and how many tasks one connection may follow.
pub struct Control {
    pub authorize: Authorize,
    pub max_tasks: usize,
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
    /// `task`: the task the connection was opened for (the first one of
    /// many; none for `/v1/ws`).
    pub fn new(
        metrics: &Arc<Metrics>,
        transport: Transport,
        task: Option<&TaskId>,
        guard: ConnGuard,
        peer: Option<Arc<Peer>>,
    ) -> Self {
        Conn {
            transport,
            log: ConnLog::new(transport.as_str(), task, peer, metrics.clone()),
            _alive: AliveGuard::new(metrics),
            _guard: guard,
        }
    }

    /// Records how many tasks the connection follows now.
    fn following(&mut self, tasks: usize) {
        self.log.tasks = self.log.tasks.max(tasks);
    }

    /// Counts the events the hub writes directly to this connection
    /// ([`crate::server::direct`]) in its log line.
    pub fn with_direct(mut self, direct: Arc<Direct>) -> Self {
        self.log.direct = Some(direct);
        self
    }

    /// Records why the connection ended (its log line says so).
    pub fn ended(&mut self, end: End) {
        self.log.reason = end.reason();
    }
}

/// One connection's subscriptions driven to one peer.
pub struct Session<F> {
    mux: Mux,
    framing: F,
    control: Option<Control>,
    heartbeat: Interval,
    drain: DrainTimer,
    delivered: Counter,
    metrics: Arc<Metrics>,
    conn: Conn,
    ended: bool,
}

impl<F: Framing> Session<F> {
    /// `control`: set when the peer may change its task set (`/v1/ws`).
    pub fn new(
        sessions: &Sessions,
        mut conn: Conn,
        mux: Mux,
        framing: F,
        control: Option<Control>,
    ) -> Self {
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
        conn.following(mux.len());
        tracing::debug!(
            tasks = mux.len(),
            transport = conn.transport.as_str(),
            "subscribed"
        );
        Session {
            mux,
            framing,
            control,
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
            heard = self.framing.heard() => match heard {
                Heard::End(end) => Err(end),
                heard => self.command(heard).await,
            },
            next = self.mux.next() => match next {
                Ok(Some(first)) => self.deliver(first).await,
                Ok(None) => Err(End::Finished),
                Err(e) => {
                    tracing::warn!(transport = self.conn.transport.as_str(), cause = %e, "subscription failed; closing so the client resumes");
                    Err(End::BackendUnavailable)
                }
            },
            _ = self.heartbeat.tick() => self.framing.heartbeat().await,
        };
        let Err(end) = result else {
            return true;
        };
        if end == End::Draining {
            tracing::debug!(tasks = self.mux.len(), "closing for drain");
        }
        self.conn.ended(end);
        self.framing.finish(end).await;
        self.ended = true;
        false
    }

    /// The session's subscriptions (a transport reads their positions).
    pub fn mux(&self) -> &Mux {
        &self.mux
    }

    /// Does what the peer asked (subscribe, unsubscribe) and answers it.
    /// A refused request is answered with an error and leaves every other
    /// subscription alone; only a failed write ends the session.
    async fn command(&mut self, heard: Heard) -> Result<(), End> {
        let Some(control) = &self.control else {
            return Ok(());
        };
        let answer = match heard {
            Heard::End(end) => return Err(end),
            Heard::Invalid(why) => refused(None, "invalid_message", &why),
            Heard::Unsubscribe { task } => match TaskId::parse(&task) {
                Err(e) => refused(Some(&task), "invalid_task", &format!("task id {e}")),
                Ok(id) if self.mux.close(&id) => {
                    serde_json::json!({"op": "unsubscribed", "task": task})
                }
                Ok(_) => refused(Some(&task), "not_subscribed", "this task is not followed"),
            },
            Heard::Subscribe { task, after } => {
                let parsed = TaskId::parse(&task)
                    .map_err(|e| ("invalid_task", format!("task id {e}")))
                    .and_then(|id| {
                        let start = match after.as_deref() {
                            None => Start::Latest,
                            Some(raw) => Start::After(
                                sluice_shared::Position::parse(raw)
                                    .map_err(|e| ("invalid_resume_point", format!("after {e}")))?,
                            ),
                        };
                        Ok((id, start))
                    });
                match parsed {
                    Err((code, why)) => refused(Some(&task), code, &why),
                    Ok((id, start)) => {
                        if let Err(e) = (control.authorize)(&id) {
                            refused(Some(&task), e.code, &e.message)
                        } else if !self.mux.follows(&id) && self.mux.len() >= control.max_tasks {
                            refused(
                                Some(&task),
                                "too_many_tasks",
                                &format!(
                                    "a connection follows at most {} tasks (--max-tasks-per-connection)",
                                    control.max_tasks
                                ),
                            )
                        } else {
                            // Subscribing again starts the task again, from
                            // the new resume point (or its snapshot).
                            self.mux.close(&id);
                            match self.mux.open(id, start).await {
                                Ok(opened) => {
                                    self.conn.following(self.mux.len());
                                    let state = match opened {
                                        Opened::Streaming => "streaming",
                                        Opened::Finished => "finished",
                                    };
                                    serde_json::json!({"op": "subscribed", "task": task, "state": state})
                                }
                                Err(e) => {
                                    tracing::warn!(task = %task, cause = %e, "cannot open subscription");
                                    refused(
                                        Some(&task),
                                        "backend_unavailable",
                                        "the backend cannot serve this task now; subscribe again later",
                                    )
                                }
                            }
                        }
                    }
                }
            }
        };
        self.framing.reply(answer).await
    }

    /// Writes `first` and whatever else is ready, up to [`BATCH`] events
    /// or [`BATCH_BYTES`], as one batch.
    async fn deliver(&mut self, first: Delivery) -> Result<(), End> {
        let mut bytes = first.ev.sse.len();
        let mut batch = Vec::with_capacity(8);
        batch.push(first);
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match self.mux.next_ready() {
                Some(d) => {
                    bytes += d.ev.sse.len();
                    batch.push(d);
                }
                None => break,
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.framing.send(&batch).await?;
        self.delivered.inc_by(batch.len() as u64);
        for ev in batch.iter().map(|d| &d.ev).filter(|e| e.ts > 0) {
            self.metrics
                .delivery_latency
                .observe((now_ms - ev.ts).max(0) as f64 / 1000.0);
        }
        self.conn.log.events += batch.len() as u64;
        self.heartbeat.reset();
        Ok(())
    }
}

/// An error answer to a peer's request.
fn refused(task: Option<&str>, code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"op": "error", "task": task, "error": code, "message": message})
}

/// A session's moment to close once the node drains: drawn at random
/// inside the drain window when draining starts, so the node's clients
/// reconnect spread over the window.
struct DrainTimer {
    draining: Draining,
    window: Duration,
    /// The moment, once draining started (no timer is held before).
    at: Option<Pin<Box<Sleep>>>,
}

impl DrainTimer {
    fn new(draining: Draining, window: Duration) -> Self {
        DrainTimer {
            draining,
            window,
            at: None,
        }
    }

    /// Resolves at this session's moment. Cancel-safe: the moment is drawn
    /// once, after draining started, and kept.
    async fn due(&mut self) {
        let at = match &mut self.at {
            Some(at) => at,
            None => {
                self.draining.started().await;
                let ms = rand::rng().random_range(0..=self.window.as_millis() as u64);
                self.at
                    .insert(Box::pin(tokio::time::sleep(Duration::from_millis(ms))))
            }
        };
        at.as_mut().await
    }
}

/// One log line per connection when it ends: transport, task (the first
/// one), how many tasks it followed, duration, events sent and why it
/// ended ("stalled" when the socket's write deadline closed it, whatever
/// the transport saw of it). The task count goes to the
/// `connection_subscriptions` histogram too.
struct ConnLog {
    transport: &'static str,
    task: String,
    tasks: usize,
    opened: std::time::Instant,
    events: u64,
    reason: &'static str,
    peer: Option<Arc<Peer>>,
    metrics: Arc<Metrics>,
    /// Events written directly by the hub, counted there.
    direct: Option<Arc<Direct>>,
}

impl ConnLog {
    fn new(
        transport: &'static str,
        task: Option<&TaskId>,
        peer: Option<Arc<Peer>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let task = task.map_or_else(|| "-".to_owned(), |t| t.to_string());
        tracing::debug!(transport, task = %task, "connection opened");
        ConnLog {
            transport,
            task,
            tasks: 0,
            opened: std::time::Instant::now(),
            events: 0,
            reason: "client went away",
            peer,
            metrics,
            direct: None,
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
        self.metrics
            .connection_subscriptions
            .observe(self.tasks as f64);
        tracing::info!(
            transport = self.transport,
            task = %self.task,
            tasks = self.tasks,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            events = self.events + self.direct.as_ref().map_or(0, |d| d.count()),
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
        let mut log = ConnLog::new(
            "sse",
            Some(&task),
            Some(peer.clone()),
            Arc::new(Metrics::default()),
        );
        assert_eq!(log.reason(), "client went away");
        log.reason = End::WriteFailed.reason();
        assert_eq!(log.reason(), "write failed");
        peer.mark_stalled();
        assert_eq!(log.reason(), "stalled");
    }
}
