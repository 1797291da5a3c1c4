//! A fleet of reconnecting clients, SSE and WebSocket mixed, the way real
//! clients behave: each follows one task from seq 1 (`after=0`), records
//! every frame in its [`DeliveryLog`], and when its connection ends for any
//! reason other than the task's end it reconnects — to the next edge in its
//! list unless the fleet is sticky — resuming with `Last-Event-ID` /
//! `?after=` from [`DeliveryLog::last`]. It stops at the final event, at a
//! `204` or a WebSocket close 1000, or at the fleet's deadline (then it is
//! reported unfinished and the checker shows what it missed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::producer::mark_of;
use crate::sse::{SseLine, SseLines, REFUSED};
use crate::DeliveryLog;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub tasks: Vec<String>,
    /// Client `i` follows `tasks[i % len]`, uses SSE when `i` is even and
    /// WebSocket when odd, and starts on `edges[(i / 2) % len]`.
    pub clients: usize,
    pub edges: Vec<SocketAddr>,
    /// No byte (event, heartbeat or ping) for this long: the connection is
    /// presumed dead and the client reconnects.
    pub idle_timeout: Duration,
    /// Clients still running then give up (reported unfinished).
    pub deadline: Duration,
    /// Reconnect to the same edge after a failure instead of the next one.
    pub sticky: bool,
    /// Client churn: each stream is dropped by its client after a random
    /// lifetime between half and one and a half times this, then resumed.
    pub churn: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ClientResult {
    pub task: String,
    pub transport: Transport,
    pub log: DeliveryLog,
    /// Streams opened (200 / WebSocket upgrade).
    pub connects: u32,
    /// Attempts refused (503, other non-200 answers, a 200 SSE refusal) or
    /// failed to connect.
    pub refused: u32,
    /// Saw the end: the final event, a 204 or a close 1000.
    pub finished: bool,
}

/// Counters shared by every client of a fleet.
#[derive(Default)]
pub struct FleetCounters {
    /// Streams open right now.
    pub open: AtomicUsize,
    /// Streams opened since the start.
    pub connects: AtomicU64,
    /// Events (and resets) received since the start.
    pub received: AtomicU64,
}

pub struct Fleet {
    clients: JoinSet<ClientResult>,
    pub counters: Arc<FleetCounters>,
    drop_all: watch::Sender<u64>,
    pub size: usize,
}

enum Outcome {
    /// The task ended for this client.
    Finished,
    /// The fleet asked every client to drop its connection.
    Dropped,
    /// A stream was open and ended (node died, drained, Redis error, idle).
    Ended,
    /// No stream: refused or could not connect.
    Refused,
}

impl Fleet {
    pub fn start(spec: FleetSpec) -> Fleet {
        assert!(!spec.tasks.is_empty() && !spec.edges.is_empty());
        let counters = Arc::new(FleetCounters::default());
        let (drop_all, drop_rx) = watch::channel(0u64);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("http client");
        let end = Instant::now() + spec.deadline;
        let spec = Arc::new(spec);
        let mut clients = JoinSet::new();
        for i in 0..spec.clients {
            let client = Client {
                task: spec.tasks[i % spec.tasks.len()].clone(),
                transport: if i % 2 == 0 {
                    Transport::Sse
                } else {
                    Transport::Ws
                },
                edge: (i / 2) % spec.edges.len(),
                spec: spec.clone(),
                http: http.clone(),
                counters: counters.clone(),
                drop_rx: drop_rx.clone(),
                end,
            };
            clients.spawn(client.run());
        }
        Fleet {
            clients,
            counters,
            drop_all,
            size: spec.clients,
        }
    }

    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::Relaxed)
    }

    pub fn connects(&self) -> u64 {
        self.counters.connects.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.counters.received.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` streams are open at once.
    pub async fn wait_open(&self, n: usize, deadline: Duration) {
        let c = self.counters.clone();
        crate::wait_until("client streams open", deadline, || {
            let c = c.clone();
            async move { c.open.load(Ordering::Relaxed) >= n }
        })
        .await;
    }

    /// Waits until at least `n` streams were opened since the start.
    pub async fn wait_connects(&self, n: u64, deadline: Duration) {
        let c = self.counters.clone();
        crate::wait_until("client reconnects", deadline, || {
            let c = c.clone();
            async move { c.connects.load(Ordering::Relaxed) >= n }
        })
        .await;
    }

    /// Every client drops its connection at once and reconnects at once
    /// (no backoff): a reconnect storm.
    pub fn drop_all(&self) {
        self.drop_all.send_modify(|g| *g += 1);
    }

    /// Waits for every client to finish (or hit the deadline).
    pub async fn join(mut self) -> Vec<ClientResult> {
        let mut out = Vec::with_capacity(self.size);
        while let Some(r) = self.clients.join_next().await {
            out.push(r.expect("client task"));
        }
        out
    }
}

struct Client {
    task: String,
    transport: Transport,
    edge: usize,
    spec: Arc<FleetSpec>,
    http: reqwest::Client,
    counters: Arc<FleetCounters>,
    drop_rx: watch::Receiver<u64>,
    end: Instant,
}

/// Decrements the open-stream gauge when a stream goes away.
struct OpenGuard(Arc<FleetCounters>);

impl OpenGuard {
    fn new(c: &Arc<FleetCounters>) -> Self {
        c.open.fetch_add(1, Ordering::Relaxed);
        c.connects.fetch_add(1, Ordering::Relaxed);
        OpenGuard(c.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(1_000);

impl Client {
    async fn run(mut self) -> ClientResult {
        let mut r = ClientResult {
            task: self.task.clone(),
            transport: self.transport,
            log: DeliveryLog::default(),
            connects: 0,
            refused: 0,
            finished: false,
        };
        let mut backoff = BACKOFF_MIN;
        while Instant::now() < self.end {
            self.drop_rx.borrow_and_update();
            let left = self.end.saturating_duration_since(Instant::now());
            let session = async {
                match self.transport {
                    Transport::Sse => self.sse(&mut r).await,
                    Transport::Ws => self.ws(&mut r).await,
                }
            };
            let outcome = tokio::time::timeout(left, session)
                .await
                .unwrap_or(Outcome::Ended);
            match outcome {
                Outcome::Finished => {
                    r.finished = true;
                    break;
                }
                Outcome::Dropped => {
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Outcome::Ended => backoff = BACKOFF_MIN,
                Outcome::Refused => {
                    r.refused += 1;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            if !self.spec.sticky {
                self.edge = (self.edge + 1) % self.spec.edges.len();
            }
            // Jitter spreads the herd, as a browser's `retry:` does.
            let jitter = Duration::from_millis(rand_ms(backoff.as_millis() as u64));
            tokio::time::sleep(backoff / 2 + jitter / 2).await;
        }
        r
    }

    fn addr(&self) -> SocketAddr {
        self.spec.edges[self.edge]
    }

    async fn sse(&mut self, r: &mut ClientResult) -> Outcome {
        let url = format!("http://{}/v1/tasks/{}/events", self.addr(), self.task);
        let resume = r.log.last().unwrap_or(0);
        let req = self
            .http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("last-event-id", resume.to_string());
        let resp = match tokio::time::timeout(self.spec.idle_timeout, req.send()).await {
            Ok(Ok(resp)) => resp,
            _ => return Outcome::Refused,
        };
        match resp.status().as_u16() {
            // A 200 refusal (for browsers, which give up on any other
            // status) is a refusal all the same.
            200 if !resp.headers().contains_key(REFUSED) => {}
            204 => return Outcome::Finished,
            _ => return Outcome::Refused,
        }
        let _open = OpenGuard::new(&self.counters);
        r.connects += 1;
        let lifetime = lifetime(self.spec.churn);
        tokio::pin!(lifetime);
        let mut body = resp.bytes_stream();
        let mut sse = FrameReader::default();
        loop {
            // Cancel-safe: `changed`, `sleep` and `next` on a body stream.
            let chunk = tokio::select! {
                biased;
                _ = self.drop_rx.changed() => return Outcome::Dropped,
                _ = &mut lifetime => return Outcome::Dropped,
                c = tokio::time::timeout(self.spec.idle_timeout, body.next()) => c,
            };
            match chunk {
                Ok(Some(Ok(b))) if sse.feed(&b) => {}
                _ => return Outcome::Ended,
            }
            while let Some(f) = sse.frames.pop_front() {
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                if f.reset {
                    r.log.marked_reset(f.seq, f.mark);
                } else {
                    r.log.marked_event(f.seq, f.mark);
                    if f.is_final {
                        return Outcome::Finished;
                    }
                }
            }
        }
    }

    async fn ws(&mut self, r: &mut ClientResult) -> Outcome {
        let resume = r.log.last().unwrap_or(0);
        let url = format!(
            "ws://{}/v1/tasks/{}/ws?after={resume}",
            self.addr(),
            self.task
        );
        let connect = tokio_tungstenite::connect_async(&url);
        let mut socket = match tokio::time::timeout(self.spec.idle_timeout, connect).await {
            Ok(Ok((s, _))) => s,
            _ => return Outcome::Refused,
        };
        let _open = OpenGuard::new(&self.counters);
        r.connects += 1;
        let lifetime = lifetime(self.spec.churn);
        tokio::pin!(lifetime);
        loop {
            // Cancel-safe: `changed`, `sleep` and `next` on a WebSocket
            // stream.
            let msg = tokio::select! {
                biased;
                _ = self.drop_rx.changed() => return Outcome::Dropped,
                _ = &mut lifetime => return Outcome::Dropped,
                m = tokio::time::timeout(self.spec.idle_timeout, socket.next()) => m,
            };
            match msg {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                        return Outcome::Ended;
                    };
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                    if v["type"] == "sluice.reset" {
                        // The data is the snapshot; its latest event holds
                        // the mark.
                        r.log
                            .marked_reset(seq, mark_of(&v["data"]["latest"]["data"]));
                    } else {
                        r.log.marked_event(seq, mark_of(&v["data"]));
                        if v["final"] == true {
                            return Outcome::Finished;
                        }
                    }
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    let code = f.map(|f| u16::from(f.code));
                    return if code == Some(1000) {
                        Outcome::Finished
                    } else {
                        Outcome::Ended
                    };
                }
                Ok(Some(Ok(_))) => {}
                _ => return Outcome::Ended,
            }
        }
    }
}

/// What a client takes from one SSE frame.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    seq: u64,
    reset: bool,
    is_final: bool,
    /// The producer's mark (`data.mark` of the envelope; of the snapshot's
    /// latest event for a reset).
    mark: Option<u64>,
}

/// Frames from an SSE body fed in pieces, read with the harness's line
/// parser ([`SseLines`]): the `data:` JSON is parsed where it lies in the
/// input, nothing else is copied (thousands of clients share the cores with
/// the edges under test).
#[derive(Default)]
struct FrameReader {
    lines: SseLines,
    seq: Option<u64>,
    reset: bool,
    data: Option<serde_json::Value>,
    frames: std::collections::VecDeque<Frame>,
}

impl FrameReader {
    /// False when a line grew past [`crate::sse::MAX_LINE`].
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let Self {
            lines,
            seq,
            reset,
            data,
            frames,
        } = self;
        lines.feed(bytes, |line| match line {
            // A frame carrying data; heartbeats and `retry:`-only frames
            // have none.
            SseLine::End => {
                let reset = std::mem::take(reset);
                if let (Some(seq), Some(data)) = (seq.take(), data.take()) {
                    let (is_final, mark) = if reset {
                        (false, mark_of(&data["latest"]["data"]))
                    } else {
                        (data["final"] == true, mark_of(&data["data"]))
                    };
                    frames.push_back(Frame {
                        seq,
                        reset,
                        is_final,
                        mark,
                    });
                }
                *seq = None;
                *data = None;
            }
            SseLine::Field(b"id", v) => {
                *seq = crate::sse::id_seq(v);
            }
            SseLine::Field(b"event", v) => *reset = v == b"sluice.reset",
            SseLine::Field(b"data", v) => *data = serde_json::from_slice(v).ok(),
            SseLine::Field(..) | SseLine::Comment(_) => {}
        })
    }
}

/// Sleeps for one stream's churn lifetime (forever without churn).
async fn lifetime(churn: Option<Duration>) {
    match churn {
        Some(c) => {
            let ms = c.as_millis() as u64;
            tokio::time::sleep(Duration::from_millis(ms / 2 + rand_ms(ms))).await
        }
        None => std::future::pending().await,
    }
}

/// A cheap uniform-ish number in `0..=max` (no RNG dependency needed).
fn rand_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos % (max + 1)
}

#[cfg(test)]
mod tests {
    use super::{Frame, FrameReader};

    /// One SSE block (without its blank line) through the fleet's reader.
    fn parse_sse(raw: &[u8]) -> Option<Frame> {
        let mut r = FrameReader::default();
        assert!(r.feed(raw) && r.feed(b"\n\n"));
        let f = r.frames.pop_front();
        assert!(r.frames.is_empty());
        f
    }

    fn frame(seq: u64, reset: bool, is_final: bool, mark: Option<u64>) -> Option<Frame> {
        Some(Frame {
            seq,
            reset,
            is_final,
            mark,
        })
    }

    #[test]
    fn sse_frames() {
        assert_eq!(
            parse_sse(
                b"id: 3\nevent: progress\ndata: {\"seq\":3,\"data\":{\"mark\":7},\"final\":false}"
            ),
            frame(3, false, false, Some(7))
        );
        assert_eq!(
            parse_sse(b"id: 9\nevent: done\ndata: {\"seq\":9,\"final\":true}"),
            frame(9, false, true, None)
        );
        assert_eq!(
            parse_sse(
                b"id: 2\nevent: sluice.reset\ndata: {\"seq\":2,\"latest\":{\"data\":{\"mark\":4}}}"
            ),
            frame(2, true, false, Some(4))
        );
        assert_eq!(parse_sse(b": hb"), None);
        assert_eq!(parse_sse(b"retry: 1500"), None);
    }
}
