//! Admission of SSE and WebSocket connections: refused while the node
//! drains, at its connection limit or over its connect rate, with a 503, a
//! JSON error and a `Retry-After`.

use rand::Rng;

use crate::error::ApiError;
use crate::limits::{ConnGuard, Refusal};
use crate::metrics::{RefuseReason, Transport};
use crate::session::Sessions;

/// Admits one connection: draining first, then the limit and the rate.
pub fn admit(sessions: &Sessions, transport: Transport) -> Result<ConnGuard, ApiError> {
    let metrics = &sessions.metrics;
    if sessions.draining.is_draining() {
        metrics.refuse(RefuseReason::Draining);
        return Err(draining());
    }
    sessions.limits.try_admit(transport).map_err(|r| {
        let jitter = rand::rng().random_range(1..=5);
        match r {
            Refusal::Full => {
                metrics.refuse(RefuseReason::ConnectionLimit);
                ApiError::unavailable(
                    "too_many_connections",
                    "this node is at its connection limit",
                    jitter,
                )
            }
            Refusal::Rate => {
                metrics.refuse(RefuseReason::ConnectRate);
                ApiError::unavailable(
                    "connect_rate_limited",
                    "too many new connections; retry shortly",
                    jitter,
                )
            }
        }
    })
}

/// The refusal of a draining node.
pub fn draining() -> ApiError {
    ApiError::unavailable("draining", "this node is draining; reconnect to another", 1)
}
