//! `GET /v1/tasks/{task}/ws`: WebSocket, one text frame per envelope.
//!
//! Same subscription and session as SSE (resume with `?after=N` or
//! `Last-Event-ID`, gap filling, catch-up, `sluice.reset`). The session runs
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
use super::extract::Subscribe;
use crate::error::ApiError;
use crate::limits::ConnGuard;
use crate::metrics::Transport;
use crate::server::io::Peer;
use crate::session::{Conn, End, Framing, Session, Sessions};
use crate::subscription::{Opening, Start};
use crate::wire::Event;

/// Largest message a client may send (clients send nothing meaningful).
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
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
    let upgrade = upgrade
        .map_err(|e| ApiError::new(e.status(), "websocket_upgrade_required", e.body_text()))?;
    let guard = admit(&sessions, Transport::Ws)?;
    let peer = peer.map(|Extension(p)| p);
    let upgrade = upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .write_buffer_size(0);
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

/// One WebSocket session, from opening the subscription to the close frame.
async fn serve(
    sessions: Arc<Sessions>,
    socket: WebSocket,
    task: TaskId,
    start: Start,
    guard: ConnGuard,
    peer: Option<Arc<Peer>>,
) {
    let mut conn = Conn::new(&sessions.metrics, Transport::Ws, &task, guard, peer);
    let mut frames = WsFrames::new(socket, sessions.heartbeat);
    let end = match sessions.subscriptions.open(task, start).await {
        Ok(Opening::Stream(sub)) => {
            return Session::new(&sessions, conn, sub, frames).run().await;
        }
        Ok(Opening::Finished) => End::Finished,
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
    async fn send(&mut self, events: &[Arc<Event>]) -> Result<(), End> {
        for ev in events {
            let Ok(text) = Utf8Bytes::try_from(ev.json.clone()) else {
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
    async fn peer_end(&mut self) -> End {
        loop {
            match self.rx.next().await {
                Some(Ok(Message::Pong(_))) => {
                    self.last_pong = Instant::now();
                    self.awaiting_pong = false;
                }
                Some(Ok(Message::Close(_))) | None => return End::PeerClosed,
                Some(Ok(_)) => {} // clients send nothing meaningful
                Some(Err(e)) => {
                    tracing::debug!(cause = %e, "websocket read failed");
                    return if is_too_big(&e) {
                        End::TooBig
                    } else {
                        End::ProtocolError
                    };
                }
            }
        }
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
