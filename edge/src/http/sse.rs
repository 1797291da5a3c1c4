//! `GET /v1/tasks/{task}/events`: Server-Sent Events.
//!
//! The response body is the session ([`Session`] with [`SseFrames`]): it
//! owns everything the connection holds (the admission guard, the hub
//! registration), so when hyper drops it — the client left, a write failed,
//! the node shut down — all of it is released. It starts with a jittered
//! `retry:`, and ends by itself after the final event, on drain (after a
//! short `retry:` at a jittered moment inside the drain window) and when the
//! backend cannot serve it.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::Stream;
use rand::Rng;

use super::admission::admit;
use super::extract::Subscribe;
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::server::io::Peer;
use crate::session::{Conn, End, Framing, Session, Sessions};
use crate::subscription::Opening;
use crate::wire::Event;

/// Range of the initial `retry:` (ms), jittered so reconnect storms spread.
pub const RETRY_MS: std::ops::Range<u64> = 1_000..5_000;
/// Range of the `retry:` sent when draining (ms): reconnect soon, elsewhere.
pub const DRAIN_RETRY_MS: std::ops::Range<u64> = 100..1_000;

pub async fn subscribe(
    State(sessions): State<Arc<Sessions>>,
    peer: Option<Extension<Arc<Peer>>>,
    Subscribe { task, start }: Subscribe,
) -> Result<Response, ApiError> {
    let guard = admit(&sessions, Transport::Sse)?;
    let sub = match sessions.subscriptions.open(task, start).await? {
        Opening::Finished => return Ok(StatusCode::NO_CONTENT.into_response()),
        Opening::Stream(sub) => sub,
    };
    let peer = peer.map(|Extension(p)| p);
    let conn = Conn::new(&sessions.metrics, Transport::Sse, sub.task(), guard, peer);
    let session = Session::new(&sessions, conn, sub, SseFrames::start());
    Ok(event_stream(body(session)))
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
pub struct SseFrames {
    next: Option<Bytes>,
}

impl SseFrames {
    /// Starts with a jittered `retry:`, so reconnects spread.
    fn start() -> Self {
        let ms = rand::rng().random_range(RETRY_MS);
        SseFrames {
            next: Some(Bytes::from(format!("retry: {ms}\n\n"))),
        }
    }
}

impl Framing for SseFrames {
    async fn send(&mut self, events: &[Arc<Event>]) -> Result<(), End> {
        self.next = Some(match events {
            [one] => one.sse.clone(),
            _ => {
                let mut buf = Vec::with_capacity(events.iter().map(|e| e.sse.len()).sum());
                for e in events {
                    buf.extend_from_slice(&e.sse);
                }
                Bytes::from(buf)
            }
        });
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<(), End> {
        self.next = Some(Bytes::from_static(b": hb\n\n"));
        Ok(())
    }

    async fn peer_end(&mut self) -> End {
        std::future::pending().await
    }

    async fn finish(&mut self, end: End) {
        if end == End::Draining {
            let ms = rand::rng().random_range(DRAIN_RETRY_MS);
            self.next = Some(Bytes::from(format!("retry: {ms}\n\n")));
        }
    }
}
