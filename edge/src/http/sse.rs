//! `GET /v1/tasks/{task}/events` and `GET /v1/events?task=a&task=b`:
//! Server-Sent Events, of one task or many on one stream.
//!
//! One task: each frame's `id:` is the event's position (`17.AbCd3w`).
//! Many tasks: each frame's `id:` is the stream's cursor, every task's
//! position ([`sluice_shared::position::Cursor`]), so a browser that
//! reconnects by itself (same URL, its own `Last-Event-ID`) resumes every
//! task exactly. The stream ends when all its tasks have ended; a
//! reconnect then gets 204.
//!
//! The response body is the session ([`Session`] with [`SseFrames`]): it
//! owns everything the connection holds (the admission guard, the hub
//! registration), so when hyper drops it — the client left, a write failed,
//! the node shut down — all of it is released. It starts with a jittered
//! `retry:`, and ends by itself after the final event, on drain (after a
//! short `retry:` at a jittered moment inside the drain window) and when the
//! backend cannot serve it.
//!
//! A stream the node cannot take now (draining, connection limit, connect
//! rate, backend unreachable) is refused. A browser's EventSource that gets
//! any status but 200 closes for good and never retries, so a request that
//! accepts `text/event-stream` gets a [`refusal`] stream instead of the 503:
//! 200, the reason as a comment, a jittered `retry:`, then the end of the
//! stream; the browser comes back after that delay with its Last-Event-ID.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::Stream;
use rand::Rng;
use sluice_shared::TaskId;

use sluice_shared::position::{Cursor, Position};

use super::admission::{admit, DRAIN_RETRY_MS, RETRY_MS};
use super::extract::{Subscribe, SubscribeMany};
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::server::direct::{Direct, StreamSocket};
use crate::server::io::Peer;
use crate::session::{Conn, End, Framing, Heard, Session, Sessions};
use crate::subscription::{Delivery, Mode, Opened, Start};

/// The header that marks a [`refusal`] stream, naming its reason, for
/// clients other than browsers (which cannot see it).
pub const REFUSED: header::HeaderName = header::HeaderName::from_static("sluice-refused");

pub async fn subscribe(
    State(sessions): State<Arc<Sessions>>,
    peer: Option<Extension<Arc<Peer>>>,
    socket: Option<Extension<StreamSocket>>,
    headers: HeaderMap,
    Subscribe { task, start }: Subscribe,
) -> Response {
    let peer = peer.map(|Extension(p)| p);
    let socket = socket.map(|Extension(s)| s);
    match open(&sessions, task, start, peer, socket).await {
        Ok(resp) => resp,
        Err(e) => refusal(e, &headers),
    }
}

/// `GET /v1/events?task=a&task=b[&mode=latest&interval=1s]`.
pub async fn subscribe_many(
    State(sessions): State<Arc<Sessions>>,
    peer: Option<Extension<Arc<Peer>>>,
    headers: HeaderMap,
    request: Result<SubscribeMany, ApiError>,
) -> Response {
    let peer = peer.map(|Extension(p)| p);
    let result = match request {
        Ok(SubscribeMany {
            tasks,
            starts,
            mode,
        }) => open_many(&sessions, tasks, starts, mode, peer).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => refusal(e, &headers),
    }
}

/// One task's stream. On the stream path (`socket`) the hub writes its live
/// events straight to the socket while the session has nothing else to do
/// ([`crate::server::direct`]).
async fn open(
    sessions: &Arc<Sessions>,
    task: TaskId,
    start: Start,
    peer: Option<Arc<Peer>>,
    socket: Option<StreamSocket>,
) -> Result<Response, ApiError> {
    let guard = admit(sessions, Transport::Sse)?;
    let mut mux = sessions.subscriptions.mux(Mode::All, true);
    if mux.open(task.clone(), start).await? == Opened::Finished {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut conn = Conn::new(&sessions.metrics, Transport::Sse, Some(&task), guard, peer);
    if let Some(socket) = socket {
        let direct = Arc::new(Direct::new(socket.socket.clone(), sessions.metrics.clone()));
        mux.enable_direct(direct.clone());
        socket.put(direct.clone());
        conn = conn.with_direct(direct);
    }
    let session = Session::new(sessions, conn, mux, SseFrames::start(None), None);
    Ok(event_stream(body(session)))
}

/// Opens every task, in order (each registers, then reads its snapshot or
/// checks its resume point): 204 if all have ended already.
async fn open_many(
    sessions: &Arc<Sessions>,
    tasks: Vec<TaskId>,
    starts: Vec<Start>,
    mode: Mode,
    peer: Option<Arc<Peer>>,
) -> Result<Response, ApiError> {
    let guard = admit(sessions, Transport::Sse)?;
    let mut mux = sessions.subscriptions.mux(mode, true);
    let mut finished = 0;
    for (task, start) in tasks.iter().zip(starts) {
        if mux.open(task.clone(), start).await? == Opened::Finished {
            finished += 1;
        }
    }
    if finished == tasks.len() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let cursor = CursorState {
        set_hash: Cursor::set_hash(tasks.iter().map(TaskId::as_str)),
        positions: mux.positions(),
        text: String::new(),
    };
    let conn = Conn::new(
        &sessions.metrics,
        Transport::Sse,
        tasks.first(),
        guard,
        peer,
    );
    let session = Session::new(sessions, conn, mux, SseFrames::start(Some(cursor)), None);
    Ok(event_stream(body(session)))
}

/// The answer to a stream request that failed with `err`. A 503 (come back
/// later) to a request that accepts `text/event-stream` becomes a stream an
/// EventSource survives: 200 with a [`REFUSED`] header and a body of two
/// lines, the reason as a comment and `retry: <ms>`, then the end.
///
/// No blank line follows them, so nothing is dispatched: EventSource applies
/// `retry:` as soon as it reads the line (the field is not part of an
/// event), while parsers that yield a `retry:`-only block as an empty event
/// (httpx-sse does) yield nothing, and the harness's decoder no frame.
/// Everything else (another status, a request that does not accept event
/// streams: `*/*` is no EventSource) keeps its JSON error.
pub fn refusal(err: ApiError, headers: &HeaderMap) -> Response {
    let retry = match err.retry {
        Some(retry) if err.status == StatusCode::SERVICE_UNAVAILABLE => retry,
        _ => return err.into_response(),
    };
    if !accepts_event_stream(headers) {
        return err.into_response();
    }
    let body = format!(": {}\nretry: {}\n", err.code, retry.as_millis());
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        [(REFUSED, err.code)],
        body,
    )
        .into_response()
}

/// Whether `Accept` lists `text/event-stream` (not with `q=0`).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let is_sse = parts
                .next()
                .is_some_and(|m| m.eq_ignore_ascii_case("text/event-stream"));
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
                })
            });
            is_sse && !refused
        })
}

/// A `text/event-stream` response (not buffered by proxies).
pub fn event_stream<S>(chunks: S) -> Response
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// The session as body chunks: each step of the session writes at most one
/// chunk, yielded as soon as it is written.
fn body(session: Session<SseFrames>) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(session, |mut s| async move {
        loop {
            if let Some(chunk) = s.framing_mut().next.take() {
                return Some((Ok(chunk), s));
            }
            if !s.step().await && s.framing_mut().next.is_none() {
                return None;
            }
        }
    })
}

/// SSE framing: every write becomes the next body chunk. The peer cannot
/// speak, so only hyper dropping the body ends a session from its side.
///
/// A blank line only ever ends an event that has data. The opening and
/// draining `retry:` and the heartbeat comment end without one: EventSource
/// applies `retry:` and skips a comment as it reads the line, while common
/// parsers turn a blank line after them into an event with empty data
/// (httpx-sse does after any `retry:`, and after every heartbeat once an
/// event had an id), and `json.loads("")` then fails in the client.
pub struct SseFrames {
    next: Option<Bytes>,
    /// A stream of many tasks: the cursor its frames carry as `id:`.
    cursor: Option<CursorState>,
}

/// Every task's position as of the frame being written (each frame's `id:`
/// is the cursor after that frame).
struct CursorState {
    set_hash: u32,
    positions: Vec<Option<Position>>,
    text: String,
}

impl SseFrames {
    /// Starts with a jittered `retry:`, so reconnects spread. Like every
    /// line but an event's, it ends with no blank line (see [`SseFrames`]).
    fn start(cursor: Option<CursorState>) -> Self {
        let ms = rand::rng().random_range(RETRY_MS);
        SseFrames {
            next: Some(Bytes::from(format!("retry: {ms}\n"))),
            cursor,
        }
    }
}

impl Framing for SseFrames {
    async fn send(&mut self, batch: &[Delivery]) -> Result<(), End> {
        let Some(cursor) = &mut self.cursor else {
            // One task: the frames as encoded once for every subscriber.
            self.next = Some(match batch {
                [one] => one.ev.sse.clone(),
                _ => {
                    let mut buf = Vec::with_capacity(batch.iter().map(|d| d.ev.sse.len()).sum());
                    for d in batch {
                        buf.extend_from_slice(&d.ev.sse);
                    }
                    Bytes::from(buf)
                }
            });
            return Ok(());
        };
        // Many tasks: each frame's id is the cursor after it.
        let mut buf = Vec::new();
        for d in batch {
            if let Some(p) = cursor.positions.get_mut(d.index) {
                *p = Some(d.ev.position());
            }
            Cursor::encode_into(cursor.set_hash, &cursor.positions, &mut cursor.text);
            buf.extend_from_slice(b"id: ");
            buf.extend_from_slice(cursor.text.as_bytes());
            buf.push(b'\n');
            buf.extend_from_slice(d.ev.sse_body());
        }
        self.next = Some(Bytes::from(buf));
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), End> {
        self.next = Some(Bytes::from_static(b": hb\n"));
        Ok(())
    }

    async fn heard(&mut self) -> Heard {
        std::future::pending().await
    }

    async fn reply(&mut self, _: serde_json::Value) -> Result<(), End> {
        Ok(())
    }

    async fn finish(&mut self, end: End) {
        if end == End::Draining {
            let ms = rand::rng().random_range(DRAIN_RETRY_MS);
            self.next = Some(Bytes::from(format!("retry: {ms}\n")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn event_stream_accepts() {
        for yes in [
            &["text/event-stream"][..],
            &["Text/Event-Stream"],
            &["application/json, text/event-stream;q=0.5"],
            &["application/json", "text/event-stream"],
        ] {
            assert!(accepts_event_stream(&accept(yes)), "{yes:?}");
        }
        for no in [
            &[][..],
            &["*/*"],
            &["text/*"],
            &["application/json"],
            &["text/event-stream; q=0"],
            &["text/event-streams"],
        ] {
            assert!(!accepts_event_stream(&accept(no)), "{no:?}");
        }
    }

    #[tokio::test]
    async fn only_503s_to_event_sources_become_retry_streams() {
        let busy = || {
            ApiError::unavailable(
                "too_many_connections",
                "full",
                std::time::Duration::from_millis(2_345),
            )
        };
        let r = refusal(busy(), &accept(&["text/event-stream"]));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[&REFUSED], "too_many_connections");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
        let body = axum::body::to_bytes(r.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b": too_many_connections\nretry: 2345\n");

        let r = refusal(busy(), &accept(&["*/*"]));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let r = refusal(
            ApiError::bad_request("invalid_task", "bad"),
            &accept(&["text/event-stream"]),
        );
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
