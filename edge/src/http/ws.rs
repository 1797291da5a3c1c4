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
//! the position to subscribe again from. The handshake is answered by
//! [`WsUpgrade`]; the session then runs on the raw socket (in the
//! connection's own task when the request came by the stream path,
//! [`crate::server::stream`]) with the framing of [`crate::ws_frame`], and
//! owns everything the connection holds; it ends
//! when the client leaves (a client's close frame is echoed, its code
//! included: RFC 6455 §5.5.1), a write stalls, pongs stop, the task ends (close
//! 1000), the node drains (close 1012, at a jittered moment inside the drain
//! window) or the backend cannot serve it (close 1013). A client message
//! over [`MAX_CLIENT_MESSAGE`] closes it with 1009 (Message Too Big). Over
//! the connection limit the upgrade itself is refused with 503.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use sluice_shared::TaskId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use super::admission::admit;
use super::extract::{Caller, StreamMode, Subscribe};
use super::ws_upgrade::WsUpgrade;
use crate::error::ApiError;
use crate::limits::ConnGuard;
use crate::metrics::Transport;
use crate::server::io::Peer;
use crate::server::stream::write_all_vectored;
use crate::server::upgrade::Socket;
use crate::session::{Conn, Control, End, Framing, Heard, Session, Sessions};
use crate::subscription::{Delivery, Mode, Opened, Start};
use crate::ws_frame::{self, Incoming, ReadError, Reader, OP_PING, OP_PONG, OP_TEXT};

/// Largest message a client may send (a subscribe request).
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
    upgrade: Result<WsUpgrade, ApiError>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade?;
    let guard = admit(&sessions, Transport::Ws)?;
    let peer = peer.map(|Extension(p)| p);
    let tasks = sessions.tasks.clone();
    Ok(upgrade.on_upgrade(&tasks, move |socket| {
        serve(sessions, socket, task, start, guard, peer)
    }))
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
    upgrade: Result<WsUpgrade, ApiError>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade?;
    caller.check_token()?;
    let guard = admit(&sessions, Transport::Ws)?;
    let peer = peer.map(|Extension(p)| p);
    let control = Control {
        authorize: caller.into_authorize(),
        max_tasks: sessions.max_tasks,
    };
    let tasks = sessions.tasks.clone();
    Ok(upgrade.on_upgrade(&tasks, move |socket| async move {
        let conn = Conn::new(&sessions.metrics, Transport::Ws, None, guard, peer);
        let frames = WsFrames::new(socket, sessions.heartbeat);
        let mux = sessions.subscriptions.mux(mode, false);
        Session::new(&sessions, conn, mux, frames, Some(control))
            .run()
            .await;
    }))
}

/// One WebSocket session of one task, from opening the subscription to the
/// close frame.
async fn serve(
    sessions: Arc<Sessions>,
    socket: Socket,
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

/// WebSocket framing on the session's socket ([`ws_frame`]): one text frame
/// per envelope (the header encoded once per event, written with the
/// envelope's shared bytes: a batch is one vectored write), pings as
/// heartbeats (a peer that has not answered the previous one within two
/// intervals is gone), the client's pings answered, its close frame echoed
/// (RFC 6455 §5.5.1), and a close frame with a code for every way a session
/// ends. Writes have no timer of their own: the socket's write deadline
/// (`--write-timeout-secs`, [`crate::server::io`]) fails a write the peer
/// does not take.
struct WsFrames {
    io: Socket,
    reader: Reader,
    /// Control frames to write before anything else (pongs); what is left
    /// of them (written bytes are removed as they go, so a write that is
    /// dropped midway loses nothing).
    pending: Vec<u8>,
    /// The peer's close frame (its code and reason, if it gave one), to
    /// echo when the session ends.
    peer_close: Option<Option<(u16, String)>>,
    /// The ping interval.
    interval: Duration,
    last_pong: Instant,
    awaiting_pong: bool,
}

/// Bytes read from the socket at a time (client messages are small).
const READ_CHUNK: usize = 256;

impl WsFrames {
    fn new(io: Socket, interval: Duration) -> Self {
        WsFrames {
            io,
            reader: Reader::new(MAX_CLIENT_MESSAGE),
            pending: Vec::new(),
            peer_close: None,
            interval,
            last_pong: Instant::now(),
            awaiting_pong: false,
        }
    }

    /// Writes the pending control frames. Cancel-safe: what was written is
    /// removed from `pending` as soon as the write returns.
    async fn flush_pending(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            let n = self.io.write(&self.pending).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.pending.drain(..n);
        }
        if self.pending.capacity() > 0 {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Writes one whole frame after the pending ones.
    async fn write_frame(&mut self, frame: &[u8]) -> Result<(), End> {
        self.flush_pending().await.map_err(|_| End::WriteFailed)?;
        self.io.write_all(frame).await.map_err(|_| End::WriteFailed)
    }
}

impl Framing for WsFrames {
    async fn send(&mut self, batch: &[Delivery]) -> Result<(), End> {
        self.flush_pending().await.map_err(|_| End::WriteFailed)?;
        let mut slices = Vec::with_capacity(batch.len() * 2);
        for d in batch {
            slices.push(IoSlice::new(d.ev.ws_head.as_bytes()));
            slices.push(IoSlice::new(&d.ev.json));
        }
        write_all_vectored(&mut self.io, &mut slices)
            .await
            .map_err(|_| End::WriteFailed)
    }

    async fn heartbeat(&mut self) -> Result<(), End> {
        if self.awaiting_pong && self.last_pong.elapsed() > self.interval * 2 {
            return Err(End::PongTimeout);
        }
        self.write_frame(&ws_frame::frame(OP_PING, b"")).await?;
        self.awaiting_pong = true;
        Ok(())
    }

    /// Cancel-safe: a read loses nothing if dropped (bytes are moved into
    /// the reader only after it returned), and neither does the answer to
    /// a ping ([`WsFrames::flush_pending`]).
    async fn heard(&mut self) -> Heard {
        loop {
            if self.flush_pending().await.is_err() {
                return Heard::End(End::WriteFailed);
            }
            match self.reader.take() {
                Ok(Some(Incoming::Text(text))) => return request(&text),
                Ok(Some(Incoming::Binary)) => {}
                Ok(Some(Incoming::Ping(payload))) => {
                    self.pending
                        .extend_from_slice(&ws_frame::frame(OP_PONG, &payload));
                }
                Ok(Some(Incoming::Pong)) => {
                    self.last_pong = Instant::now();
                    self.awaiting_pong = false;
                }
                Ok(Some(Incoming::Close(frame))) => {
                    self.peer_close = Some(frame);
                    return Heard::End(End::PeerClosed);
                }
                Ok(None) => {
                    let mut chunk = [0u8; READ_CHUNK];
                    match self.io.read(&mut chunk).await {
                        Ok(0) => return Heard::End(End::PeerClosed),
                        Ok(n) => self.reader.buf.extend_from_slice(&chunk[..n]),
                        Err(e) => {
                            tracing::debug!(cause = %e, "websocket read failed");
                            return Heard::End(End::PeerClosed);
                        }
                    }
                }
                Err(ReadError::TooBig) => return Heard::End(End::TooBig),
                Err(ReadError::Protocol) => return Heard::End(End::ProtocolError),
            }
        }
    }

    async fn reply(&mut self, message: serde_json::Value) -> Result<(), End> {
        self.write_frame(&ws_frame::frame(OP_TEXT, message.to_string().as_bytes()))
            .await
    }

    async fn finish(&mut self, end: End) {
        let frame = match (close_frame(end), self.peer_close.take()) {
            (Some((code, reason)), _) => ws_frame::close(code, reason),
            // The peer closed: its code and reason echoed, or an empty
            // close frame for an empty one.
            (None, Some(Some((code, reason)))) => ws_frame::close(code, &reason),
            (None, Some(None)) => ws_frame::frame(ws_frame::OP_CLOSE, b""),
            // The peer just vanished: nothing to answer.
            (None, None) => return,
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.write_frame(&frame).await?;
            self.io.shutdown().await.map_err(|_| End::WriteFailed)
        })
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
