//! One load-generator connection: a raw TCP socket (optionally bound to a
//! chosen 127.0.0.x source address) speaking just enough HTTP/1.1 to follow
//! an SSE stream (chunked or not), or a WebSocket session. Each connection
//! keeps a compact seq tracker instead of a per-event log, so tens of
//! thousands of connections fit in one process.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::report::Stats;
use crate::sse::{ChunkedBody, ResponseHead, SseLine, SseLines, MAX_HEAD};

/// Initial read buffer of one connection.
const READ_BUF: usize = 4 * 1024;

/// What one connection saw, in seq terms.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tracker {
    pub last: u64,
    pub delivered: u64,
    pub duplicated: u64,
    /// Seqs skipped in the middle without a reset.
    pub gaps: u64,
    pub resets: u64,
}

impl Tracker {
    pub fn event(&mut self, seq: u64) {
        if seq <= self.last {
            self.duplicated += 1;
            return;
        }
        self.gaps += seq - self.last - 1;
        self.last = seq;
        self.delivered += 1;
    }

    pub fn reset(&mut self, seq: u64) {
        self.resets += 1;
        self.last = seq;
    }

    /// Events lost against `expected_last` (the task's last published seq).
    pub fn lost(&self, expected_last: u64) -> u64 {
        self.gaps + expected_last.saturating_sub(self.last)
    }
}

/// Where one connection goes.
pub struct ConnSpec {
    pub edge: SocketAddr,
    /// Local address to bind before connecting (None: the kernel's choice).
    pub source: Option<IpAddr>,
    /// Shards the latency histograms.
    pub key: usize,
    pub task_idx: usize,
    pub task: String,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by the load generator (the normal end).
    Cancelled,
    /// The server ended the stream.
    Closed,
    /// Never got a 200 / a WebSocket upgrade.
    Refused,
    /// An I/O or protocol error after it was established.
    Failed,
}

pub struct ConnResult {
    pub task: usize,
    pub tracker: Tracker,
    pub outcome: Outcome,
    pub established: bool,
}

/// Opens a TCP connection from `source` (if any) to `edge`.
pub async fn dial(edge: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = match edge {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(edge).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Follows `/v1/tasks/{task}/events?after=0` until `stop` fires or the
/// stream ends.
pub async fn run_sse(
    spec: ConnSpec,
    permit: OwnedSemaphorePermit,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> ConnResult {
    let ConnSpec {
        edge,
        source,
        key,
        task_idx,
        task,
    } = spec;
    let mut res = ConnResult {
        task: task_idx,
        tracker: Tracker::default(),
        outcome: Outcome::Refused,
        established: false,
    };
    let Ok(mut s) = dial(edge, source).await else {
        return res;
    };
    let req = format!(
        "GET /v1/tasks/{task}/events?after=0 HTTP/1.1\r\nHost: {edge}\r\nAccept: text/event-stream\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return res;
    }
    let mut buf = Vec::with_capacity(READ_BUF);
    // Response head.
    let head = loop {
        if let Some(head) = ResponseHead::parse(&buf) {
            break head;
        }
        if buf.len() > MAX_HEAD {
            return res;
        }
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => { res.outcome = Outcome::Cancelled; return res; }
            r = s.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => return res,
            Ok(_) => {}
        }
    };
    if head.status != 200 || head.refused {
        return res;
    }
    buf.drain(..head.len);
    res.established = true;
    stats.established.fetch_add(1, Ordering::Relaxed);
    drop(permit);

    let mut body = ChunkedBody::new(head.chunked);
    let mut sse = SseParser::default();
    let mut lat = Vec::new();
    res.outcome = loop {
        if !buf.is_empty() {
            let before = res.tracker.delivered;
            let ok = body.feed(&buf, |bytes| sse.feed(bytes, &mut res.tracker, &mut lat));
            buf.clear();
            stats.record(key, res.tracker.delivered - before, &lat);
            lat.clear();
            if !ok {
                break Outcome::Failed;
            }
            if body.ended() {
                break Outcome::Closed;
            }
        }
        // Cancel-safe: `read_buf` either reads or not.
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => break Outcome::Cancelled,
            r = s.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => break Outcome::Closed,
            Err(_) => break Outcome::Failed,
            Ok(_) => {}
        }
    };
    if buf.capacity() > READ_BUF * 16 {
        buf.shrink_to(READ_BUF);
    }
    res
}

/// Follows `/v1/tasks/{task}/ws?after=0` until `stop` fires or it closes.
pub async fn run_ws(
    spec: ConnSpec,
    permit: OwnedSemaphorePermit,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> ConnResult {
    let ConnSpec {
        edge,
        source,
        key,
        task_idx,
        task,
    } = spec;
    let mut res = ConnResult {
        task: task_idx,
        tracker: Tracker::default(),
        outcome: Outcome::Refused,
        established: false,
    };
    let Ok(s) = dial(edge, source).await else {
        return res;
    };
    let url = format!("ws://{edge}/v1/tasks/{task}/ws?after=0");
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, s).await else {
        return res;
    };
    res.established = true;
    stats.established.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let mut lat = Vec::with_capacity(1);
    res.outcome = loop {
        // Cancel-safe: `WebSocketStream::next` keeps partial frames.
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => break Outcome::Cancelled,
            m = ws.next() => m,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let Some(env) = parse_envelope(t.as_bytes()) else {
                    break Outcome::Failed;
                };
                if env.kind == sluice_shared::event::RESET_TYPE {
                    res.tracker.reset(env.seq);
                } else {
                    let before = res.tracker.delivered;
                    res.tracker.event(env.seq);
                    if let Some(us) = env.ts.and_then(latency_us) {
                        lat.push(us);
                    }
                    stats.record(key, res.tracker.delivered - before, &lat);
                    lat.clear();
                }
            }
            Some(Ok(Message::Close(_))) | None => break Outcome::Closed,
            Some(Ok(_)) => {}
            Some(Err(_)) => break Outcome::Failed,
        }
    };
    res
}

/// What the load generator takes from an SSE stream (`id`, whether the
/// event is a reset, the envelope's `ts`), read with the harness's line
/// parser ([`SseLines`]): nothing is allocated per line or per event.
#[derive(Default)]
struct SseParser {
    lines: SseLines,
    id: Option<u64>,
    reset: bool,
    ts: Option<i64>,
}

impl SseParser {
    /// False when a line grew past [`crate::sse::MAX_LINE`].
    fn feed(&mut self, bytes: &[u8], t: &mut Tracker, lat: &mut Vec<u64>) -> bool {
        let Self {
            lines,
            id,
            reset,
            ts,
        } = self;
        lines.feed(bytes, |line| match line {
            SseLine::End => {
                // Dispatch.
                if let Some(seq) = id.take() {
                    if std::mem::take(reset) {
                        t.reset(seq);
                    } else {
                        t.event(seq);
                        if let Some(us) = ts.take().and_then(latency_us) {
                            lat.push(us);
                        }
                    }
                }
                *reset = false;
                *ts = None;
            }
            SseLine::Field(b"id", v) => {
                *id = crate::sse::id_seq(v);
            }
            SseLine::Field(b"event", v) => {
                *reset = v == sluice_shared::event::RESET_TYPE.as_bytes();
            }
            SseLine::Field(b"data", v) => *ts = envelope_ts(v),
            SseLine::Field(..) | SseLine::Comment(_) => {}
        })
    }
}

#[derive(serde::Deserialize)]
struct EnvLite {
    seq: u64,
    #[serde(rename = "type")]
    kind: String,
    ts: String,
}

struct Env {
    seq: u64,
    kind: String,
    ts: Option<i64>,
}

fn parse_envelope(json: &[u8]) -> Option<Env> {
    let e: EnvLite = serde_json::from_slice(json).ok()?;
    Some(Env {
        seq: e.seq,
        kind: e.kind,
        ts: parse_ts(e.ts.as_bytes()),
    })
}

/// The envelope's `ts` (ms since the epoch). `ts` comes after `data` in the
/// envelope, so the last `"ts":"` is the envelope's own.
fn envelope_ts(json: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"ts\":\"";
    let at = json.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    parse_ts(json.get(at..at + 24)?)
}

/// Parses `YYYY-MM-DDTHH:MM:SS.mmmZ` into ms since the Unix epoch.
pub fn parse_ts(s: &[u8]) -> Option<i64> {
    if s.len() < 24 || s[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut n = 0i64;
        for &b in s.get(r)? {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n * 10 + i64::from(b - b'0');
        }
        Some(n)
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Microseconds from `ts_ms` to now (wall clock; the edge, Redis and the
/// load generator share this machine's clock).
fn latency_us(ts_ms: i64) -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_micros() as i64;
    Some((now - ts_ms * 1000).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_parses() {
        assert_eq!(
            parse_ts(b"2026-11-23T05:00:00.123Z"),
            Some(1_795_410_000_123)
        );
        assert_eq!(parse_ts(b"1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_ts(b"garbage"), None);
    }

    #[test]
    fn chunked_sse_split_anywhere() {
        let frames = "retry: 100\n\n: hb\n\nid: 1\nevent: k\ndata: {\"data\":{\"ts\":\"x\"},\"ts\":\"2026-11-23T05:00:00.123Z\",\"final\":false}\n\nid: 2\nevent: k\ndata: {}\n\nid: 5\nevent: sluice.reset\ndata: {}\n\nid: 6\nevent: k\ndata: {}\n\n";
        let mut wire = Vec::new();
        for part in frames.as_bytes().chunks(7) {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        for split in [1usize, 3, 64, wire.len()] {
            let mut body = ChunkedBody::new(true);
            let mut sse = SseParser::default();
            let mut t = Tracker::default();
            let mut lat = Vec::new();
            for piece in wire.chunks(split) {
                assert!(body.feed(piece, |b| sse.feed(b, &mut t, &mut lat)));
            }
            assert_eq!((t.last, t.delivered, t.resets, t.gaps), (6, 3, 1, 0));
            assert_eq!(lat.len(), 1);
        }
    }

    #[test]
    fn tracker_counts() {
        let mut t = Tracker::default();
        for s in [1, 2, 2, 4] {
            t.event(s);
        }
        assert_eq!((t.delivered, t.duplicated, t.gaps), (3, 1, 1));
        assert_eq!(t.lost(6), 3);
    }
}
