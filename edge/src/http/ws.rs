//! `GET /v1/tasks/{task}/ws` and `GET /v1/ws`: WebSocket, one text frame
//! per envelope.
//!
//! Same subscriptions and session as SSE (resume with `?after=` or
//! `Last-Event-ID`, gap filling, catch-up, `sluice.reset`). On `/v1/ws` the
//! client chooses its tasks with messages, at any time:
//! `{"op":"subscribe","task":"…","after":…}` (`after` optional: a seq or a
//! position) and `{"op":"unsubscribe","task":"…"}`; each is answered with
//! `{"op":"subscribed","task":"…","state":"streaming"|"finished"}`,
//! `{"op":"unsubscribed","task":"…"}` or
//! `{"op":"error","task":"…","error":"<code>","message":"…"}` (a refused
//! task leaves the others alone). Envelopes carry `task`, `seq` and `pos`,
//! the position to subscribe again from. The session runs
//! on the node's tasks and owns everything the connection holds; it ends
//! when the client leaves (a client's close frame is echoed, its code
//! included: RFC 6455 §5.5.1), a write stalls, pongs stop, the task ends (close
//! 1000), the node drains (close 1012, at a jittered moment inside the drain
//! window) or the backend cannot serve it (close 1013). A client message
//! over [`MAX_CLIENT_MESSAGE`] closes it with 1009 (Message Too Big). Over
//! the connection limit the upgrade itself is refused with 503.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use sluice_shared::TaskId;
use tokio::time::Instant;

use super::admission::admit;
use super::extract::{Caller, StreamMode, Subscribe};
use crate::error::ApiError;
use crate::limits::ConnGuard;
use crate::metrics::Transport;
use crate::server::io::Peer;
use crate::session::{Conn, Control, End, Framing, Heard, Session, Sessions};
use crate::subscription::{Delivery, Mode, Opened, Start};

/// Largest message a client may send (a subscribe request).
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// The socket read buffer of a session. The WebSocket library's default is
/// 128 KiB, zero-filled at every read: 146 KiB of RSS per idle WebSocket.
/// A client sends only small requests (at most [`MAX_CLIENT_MESSAGE`]); a
/// larger frame makes the buffer grow to fit it.
const READ_BUFFER: usize = 1024;
/// Close codes.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Any other failed read (a frame the protocol does not allow).
pub const CLOSE_POLICY: u16 = 1008;
/// A client message or frame over [`MAX_CLIENT_MESSAGE`].
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_RESTART: u16 = 1012;
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// Longest wait to write the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn subscribe(
    State(sessions): State<Arc<Sessions>>,
    peer: Option<Extension<Arc<Peer>>>,
    Subscribe { task, start }: Subscribe,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = limited(upgrade)?;
    let guard = admit(&sessions, Transport::Ws)?;
    let peer = peer.map(|Extension(p)| p);
    Ok(upgrade
        .on_upgrade(move |socket| {
            let tasks = sessions.tasks.clone();
            let session = serve(sessions, socket, task, start, guard, peer);
            async move {
                tasks.track(session).await;
            }
        })
        .into_response())
}

/// A WebSocket upgrade with the client's limits (a non-upgrade request is
/// refused with a JSON error): messages and frames up to
/// [`MAX_CLIENT_MESSAGE`], a small read buffer ([`READ_BUFFER`]), no write
/// buffering (frames go out as written).
fn limited(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    let upgrade = upgrade
        .map_err(|e| ApiError::new(e.status(), "websocket_upgrade_required", e.body_text()))?;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0))
}

/// `GET /v1/ws[?mode=latest&interval=1s]`: a WebSocket whose tasks the
/// client subscribes to and unsubscribes from with messages. The token
/// (if the node checks them) is read at the upgrade: without a valid one
/// the upgrade is refused (401); each subscription is then checked
/// against its `tasks` claim.
pub async fn subscribe_many(
    State(sessions): State<Arc<Sessions>>,
    peer: Option<Extension<Arc<Peer>>>,
    StreamMode(mode): StreamMode,
    caller: Caller,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = limited(upgrade)?;
    caller.check_token()?;
    let guard = admit(&sessions, Transport::Ws)?;
    let peer = peer.map(|Extension(p)| p);
    let control = Control {
        authorize: caller.into_authorize(),
        max_tasks: sessions.max_tasks,
    };
    Ok(upgrade
        .on_upgrade(move |socket| {
            let tasks = sessions.tasks.clone();
            async move {
                let conn = Conn::new(&sessions.metrics, Transport::Ws, None, guard, peer);
                let frames = WsFrames::new(socket, sessions.heartbeat);
                let mux = sessions.subscriptions.mux(mode, false);
                let session = Session::new(&sessions, conn, mux, frames, Some(control));
                tasks.track(session.run()).await;
            }
        })
        .into_response())
}

/// One WebSocket session of one task, from opening the subscription to the
/// close frame.
async fn serve(
    sessions: Arc<Sessions>,
    socket: WebSocket,
    task: TaskId,
    start: Start,
    guard: ConnGuard,
    peer: Option<Arc<Peer>>,
) {
    let mut conn = Conn::new(&sessions.metrics, Transport::Ws, Some(&task), guard, peer);
    let mut frames = WsFrames::new(socket, sessions.heartbeat);
    let mut mux = sessions.subscriptions.mux(Mode::All, true);
    let end = match mux.open(task, start).await {
        Ok(Opened::Streaming) => {
            return Session::new(&sessions, conn, mux, frames, None).run().await;
        }
        Ok(Opened::Finished) => End::Finished,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot open subscription");
            End::BackendUnavailable
        }
    };
    conn.ended(end);
    frames.finish(end).await;
}

/// WebSocket framing: one text frame per envelope, pings as heartbeats
/// (a peer that has not answered the previous one within two intervals is
/// gone), and a close frame with a code for every way a session ends.
/// Writes have no timer of their own: the socket's write deadline
/// (`--write-timeout-secs`, [`crate::server::io`]) fails a write the peer
/// does not take.
struct WsFrames {
    tx: SplitSink<WebSocket, Message>,
    rx: SplitStream<WebSocket>,
    /// The ping interval.
    interval: Duration,
    last_pong: Instant,
    awaiting_pong: bool,
}

impl WsFrames {
    fn new(socket: WebSocket, interval: Duration) -> Self {
        let (tx, rx) = socket.split();
        WsFrames {
            tx,
            rx,
            interval,
            last_pong: Instant::now(),
            awaiting_pong: false,
        }
    }
}

impl Framing for WsFrames {
    async fn send(&mut self, batch: &[Delivery]) -> Result<(), End> {
        for d in batch {
            let Ok(text) = Utf8Bytes::try_from(d.ev.json.clone()) else {
                continue;
            };
            if self.tx.feed(Message::Text(text)).await.is_err() {
                return Err(End::WriteFailed);
            }
        }
        self.tx.flush().await.map_err(|_| End::WriteFailed)
    }

    async fn heartbeat(&mut self) -> Result<(), End> {
        if self.awaiting_pong && self.last_pong.elapsed() > self.interval * 2 {
            return Err(End::PongTimeout);
        }
        match self.tx.send(Message::Ping(Default::default())).await {
            Ok(()) => {
                self.awaiting_pong = true;
                Ok(())
            }
            Err(_) => Err(End::WriteFailed),
        }
    }

    /// Cancel-safe: `rx.next()` is, and the pong state only changes after
    /// it returned.
    async fn heard(&mut self) -> Heard {
        loop {
            match self.rx.next().await {
                Some(Ok(Message::Pong(_))) => {
                    self.last_pong = Instant::now();
                    self.awaiting_pong = false;
                }
                Some(Ok(Message::Close(_))) | None => return Heard::End(End::PeerClosed),
                Some(Ok(Message::Text(text))) => return request(text.as_str()),
                Some(Ok(_)) => {} // pings are answered by tungstenite
                Some(Err(e)) => {
                    tracing::debug!(cause = %e, "websocket read failed");
                    return Heard::End(if is_too_big(&e) {
                        End::TooBig
                    } else {
                        End::ProtocolError
                    });
                }
            }
        }
    }

    async fn reply(&mut self, message: serde_json::Value) -> Result<(), End> {
        let text = Utf8Bytes::from(message.to_string());
        self.tx
            .send(Message::Text(text))
            .await
            .map_err(|_| End::WriteFailed)
    }

    async fn finish(&mut self, end: End) {
        let Some((code, reason)) = close_frame(end) else {
            // The peer closed: tungstenite queued the answer to its close
            // frame when it read it (the same code and reason), to go out
            // on the next write or flush; a close frame of our own would
            // be refused now (the handshake is the peer's). Flushing sends
            // the answer and ends the connection. Nothing to flush if the
            // peer just vanished.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.tx.flush()).await;
            return;
        };
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.tx.send(frame)).await;
    }
}

/// A client's text message: a subscribe or unsubscribe request, or not.
fn request(text: &str) -> Heard {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        op: String,
        task: String,
        #[serde(default)]
        after: Option<serde_json::Value>,
    }
    let req: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            return Heard::Invalid(format!(
                "expected {{\"op\":\"subscribe\"|\"unsubscribe\",\"task\":\"…\",\"after\":…}}: {e}"
            ))
        }
    };
    let after = match req.after {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Heard::Invalid("after must be a seq or a position".into()),
    };
    match (req.op.as_str(), after) {
        ("subscribe", after) => Heard::Subscribe {
            task: req.task,
            after,
        },
        ("unsubscribe", None) => Heard::Unsubscribe { task: req.task },
        ("unsubscribe", Some(_)) => Heard::Invalid("unsubscribe takes no after".into()),
        (op, _) => Heard::Invalid(format!("unknown op {op:?}: subscribe or unsubscribe")),
    }
}

/// The close code and reason that end a session; `None` when the peer
/// closed it (its own frame is echoed).
fn close_frame(end: End) -> Option<(u16, &'static str)> {
    Some(match end {
        End::PeerClosed => return None,
        End::Finished => (CLOSE_NORMAL, "task finished"),
        End::Draining => (CLOSE_RESTART, "node draining; reconnect"),
        End::BackendUnavailable => (CLOSE_TRY_AGAIN, "backend unavailable"),
        End::WriteFailed => (CLOSE_GOING_AWAY, "write failed or stalled"),
        End::PongTimeout => (CLOSE_GOING_AWAY, "pong timeout"),
        End::TooBig => (CLOSE_TOO_BIG, "message too big"),
        End::ProtocolError => (CLOSE_POLICY, "protocol error"),
    })
}

/// Whether a read failed because the client's message (or one frame of it)
/// was over the limits set on the upgrade: tungstenite's
/// `Error::Capacity(CapacityError::MessageTooLong { .. })`, found by type in
/// the source chain of axum's error.
fn is_too_big(e: &axum::Error) -> bool {
    use tungstenite::error::{CapacityError, Error};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(Error::Capacity(CapacityError::MessageTooLong { .. })) = c.downcast_ref() {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::error::{CapacityError, Error, ProtocolError};

    #[test]
    fn only_over_limit_reads_count_as_too_big() {
        let big = axum::Error::new(Error::Capacity(CapacityError::MessageTooLong {
            size: 65_536,
            max_size: 4_096,
        }));
        assert!(is_too_big(&big));
        let other = axum::Error::new(Error::Protocol(ProtocolError::InvalidOpcode(3)));
        assert!(!is_too_big(&other));
        let headers = axum::Error::new(Error::Capacity(CapacityError::TooManyHeaders));
        assert!(!is_too_big(&headers));
    }

    #[test]
    fn close_codes() {
        let code = |end| close_frame(end).map(|(c, _)| c);
        assert_eq!(code(End::Finished), Some(1000));
        assert_eq!(code(End::PeerClosed), None, "the peer's code is echoed");
        assert_eq!(close_frame(End::PongTimeout), Some((1001, "pong timeout")));
        assert_eq!(code(End::WriteFailed), Some(1001));
        assert_eq!(code(End::ProtocolError), Some(1008));
        assert_eq!(code(End::TooBig), Some(1009));
        assert_eq!(
            close_frame(End::Draining),
            Some((1012, "node draining; reconnect"))
        );
        assert_eq!(
            close_frame(End::BackendUnavailable),
            Some((1013, "backend unavailable"))
        );
    }
}
