//! `GET /v1/tasks/{task}/ws`: WebSocket, one text frame per envelope.
//!
//! Same subscription machinery as SSE (resume with `?after=N` or
//! `Last-Event-ID`, gap filling, catch-up, `sluice.reset`). The session task
//! runs on the node's tasks and owns everything the connection
//! holds; it ends when the client leaves, a write stalls, pongs stop, the
//! task ends (close 1000), the node drains (close 1012, at a jittered moment
//! inside the drain window) or the backend cannot serve it (close 1013).
//! A client message over [`MAX_CLIENT_MESSAGE`] closes it with 1009 (Message
//! Too Big). Over the connection limit the upgrade itself is refused with 503.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::time::Instant;

use crate::app::{parse_query, parse_task};
use crate::error::ApiError;
use crate::limits::ConnGuard;
use crate::metrics::{Transport, TransportLabel};
use crate::state::SharedState;
use crate::subscription::{Opening, Start};
use crate::transport::sse::{admit, resume_point, AliveGuard};
use crate::transport::ConnLog;

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

pub async fn subscribe(
    State(state): State<SharedState>,
    Path(task): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let task = parse_task(&task)?;
    let query = parse_query(q.as_deref());
    let start = resume_point(&headers, &query)?;
    crate::auth::authorize(&state, &headers, &query, &task)?;
    let upgrade = upgrade
        .map_err(|e| ApiError::new(e.status(), "websocket_upgrade_required", e.body_text()))?;
    let guard = admit(&state, Transport::Ws)?;
    let upgrade = upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .write_buffer_size(0);
    let st = state.clone();
    Ok(upgrade
        .on_upgrade(move |socket| {
            let tasks = st.tasks.clone();
            let session = session(st, socket, task, start, guard);
            async move {
                tasks.track(session).await;
            }
        })
        .into_response())
}

async fn session(
    state: SharedState,
    mut socket: WebSocket,
    task: sluice_shared::TaskId,
    start: Start,
    guard: ConnGuard,
) {
    let _alive = AliveGuard::new(&state.metrics);
    let _guard = guard;
    let mut log = ConnLog::new("ws", &task);
    let opening = state.subscriptions.open(task, start).await;
    let mut sub = match opening {
        Ok(Opening::Stream(sub)) => sub,
        Ok(Opening::Finished) => {
            log.reason = "task finished";
            close(&mut socket, CLOSE_NORMAL, "task finished").await;
            return;
        }
        Err(e) => {
            tracing::warn!(cause = %e, "cannot open subscription");
            log.reason = "backend unavailable";
            close(&mut socket, CLOSE_TRY_AGAIN, "backend unavailable").await;
            return;
        }
    };
    let (mut tx, mut rx) = socket.split();
    let hb = state.heartbeat;
    let write_deadline = hb * 2;
    let mut ping = tokio::time::interval_at(Instant::now() + hb, hb);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pong = Instant::now();
    let mut awaiting_pong = false;
    let drain_at = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(drain_at);
    let mut drain_armed = false;
    let delivered = state
        .metrics
        .delivered
        .get_or_create(&TransportLabel {
            transport: Transport::Ws,
        })
        .clone();

    let (code, reason): (u16, &'static str) = loop {
        if !drain_armed && state.is_draining() {
            let ms = rand::rng().random_range(0..=state.drain_window.as_millis() as u64);
            drain_at
                .as_mut()
                .reset(Instant::now() + Duration::from_millis(ms));
            drain_armed = true;
        }
        // Cancel-safety: `sub.next()` keeps its state across drops; `rx.next`,
        // `cancelled`, `tick` and `sleep` are cancel-safe.
        tokio::select! {
            biased;
            _ = &mut drain_at, if drain_armed => break (CLOSE_RESTART, "node draining; reconnect"),
            _ = state.draining.started(), if !drain_armed => continue,
            msg = rx.next() => match msg {
                Some(Ok(Message::Pong(_))) => {
                    last_pong = Instant::now();
                    awaiting_pong = false;
                }
                Some(Ok(Message::Close(_))) | None => break (CLOSE_NORMAL, "client closed"),
                Some(Ok(_)) => {} // clients send nothing meaningful
                Some(Err(e)) => {
                    tracing::debug!(cause = %e, "websocket read failed");
                    if is_too_big(&e) {
                        break (CLOSE_TOO_BIG, "message too big");
                    }
                    break (CLOSE_POLICY, "protocol error");
                }
            },
            next = sub.next() => match next {
                Ok(Some(ev)) => {
                    let mut batch = vec![ev];
                    while batch.len() < 64 {
                        match sub.next_ready() {
                            Some(ev) => batch.push(ev),
                            None => break,
                        }
                    }
                    let now_ms = chrono::Utc::now().timestamp_millis();
                    let mut ok = true;
                    for ev in &batch {
                        let text = match Utf8Bytes::try_from(ev.json.clone()) {
                            Ok(t) => t,
                            Err(_) => continue,
                        };
                        if tx.feed(Message::Text(text)).await.is_err() {
                            ok = false;
                            break;
                        }
                        if ev.ts > 0 {
                            state.metrics.delivery_latency.observe((now_ms - ev.ts).max(0) as f64 / 1000.0);
                        }
                    }
                    let flushed = ok && matches!(tokio::time::timeout(write_deadline, tx.flush()).await, Ok(Ok(())));
                    if !flushed {
                        break (CLOSE_GOING_AWAY, "write failed or stalled");
                    }
                    delivered.inc_by(batch.len() as u64);
                    log.events += batch.len() as u64;
                    ping.reset();
                }
                Ok(None) => break (CLOSE_NORMAL, "task finished"),
                Err(e) => {
                    tracing::warn!(cause = %e, "subscription failed");
                    break (CLOSE_TRY_AGAIN, "backend unavailable");
                }
            },
            _ = ping.tick() => {
                if awaiting_pong && last_pong.elapsed() > hb * 2 {
                    break (CLOSE_GOING_AWAY, "pong timeout");
                }
                let sent = tokio::time::timeout(write_deadline, tx.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break (CLOSE_GOING_AWAY, "write failed or stalled");
                }
                awaiting_pong = true;
            }
        }
    };
    log.reason = reason;
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(frame)).await;
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

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.send(frame)).await;
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
}
