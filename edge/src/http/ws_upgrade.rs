//! The WebSocket handshake (RFC 6455 §4.2) as an extractor: the request is
//! checked (a GET with `Connection: upgrade`, `Upgrade: websocket`,
//! `Sec-WebSocket-Version: 13` and a key; anything else is refused with the
//! JSON error `websocket_upgrade_required`), and the handler's answer is
//! the 101 with `Sec-WebSocket-Accept`. The session then runs on the raw
//! socket: on the stream path, in the connection's own task
//! ([`crate::server::upgrade`]); on a connection the HTTP layer serves, on
//! the node's tasks once hyper hands the socket over.

use std::future::Future;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};

use crate::error::ApiError;
use crate::lifecycle::Tasks;
use crate::server::upgrade::{Socket, UpgradeSlot};

/// A checked WebSocket handshake, to be answered with [`WsUpgrade::on_upgrade`].
pub struct WsUpgrade {
    key: HeaderValue,
    how: How,
}

enum How {
    /// A request read on the stream path.
    Stream(UpgradeSlot),
    /// A request served by the HTTP layer.
    Http(hyper::upgrade::OnUpgrade),
}

fn refused(status: StatusCode, message: &str) -> ApiError {
    ApiError::new(status, "websocket_upgrade_required", message)
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.method != Method::GET {
            return Err(refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket handshake is a GET request",
            ));
        }
        if !lists(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "the Connection header does not list 'upgrade'",
            ));
        }
        if !lists(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "the Upgrade header does not list 'websocket'",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v != "13")
        {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "the Sec-WebSocket-Key header is missing",
            ));
        };
        let how = if let Some(slot) = parts.extensions.remove::<UpgradeSlot>() {
            How::Stream(slot)
        } else if let Some(on) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
            How::Http(on)
        } else {
            return Err(refused(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(WsUpgrade { key, how })
    }
}

impl WsUpgrade {
    /// The 101 answer; `session` runs on the socket once it is written.
    pub fn on_upgrade<F, Fut>(self, tasks: &Tasks, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = accept_key(self.key.as_bytes());
        match self.how {
            How::Stream(slot) => slot.put(Box::new(move |socket| Box::pin(session(socket)))),
            How::Http(on) => {
                tasks.spawn(async move {
                    match on.await {
                        Ok(upgraded) => session(Box::new(TokioIo::new(upgraded))).await,
                        Err(e) => tracing::debug!(cause = %e, "websocket upgrade failed"),
                    }
                });
            }
        }
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// `Sec-WebSocket-Accept` for a key: base64 of the SHA-1 of the key and the
/// protocol's GUID.
fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_of_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
