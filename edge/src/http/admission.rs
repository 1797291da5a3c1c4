//! Admission of SSE and WebSocket connections: refused while the node
//! drains, at its connection limit or over its connect rate, each refusal
//! counted and told when to come back, at a jittered moment so a storm of
//! retries spreads. The refusal is an [`ApiError`] (503, a JSON error and a
//! `Retry-After`); the SSE handler answers event-stream requests with a
//! stream of just a `retry:` instead ([`super::sse::refusal`]), since a
//! browser's EventSource gives up for good on a 503.

use std::ops::RangeInclusive;
use std::time::Duration;

use rand::Rng;

use crate::error::ApiError;
use crate::limits::{ConnGuard, Refusal};
use crate::metrics::{RefuseReason, Transport};
use crate::session::Sessions;

/// Range of the delay (ms) after which a client refused at the connection
/// limit or the connect rate comes back (`Retry-After` 1–5 s).
pub const RETRY_MS: RangeInclusive<u64> = 1_000..=5_000;
/// Range of the delay (ms) after which a client refused by a draining node
/// comes back, to another node (`Retry-After` 1 s).
pub const DRAIN_RETRY_MS: RangeInclusive<u64> = 100..=1_000;

/// Admits one connection: draining first, then the limit and the rate.
pub fn admit(sessions: &Sessions, transport: Transport) -> Result<ConnGuard, ApiError> {
    let metrics = &sessions.metrics;
    if sessions.draining.is_draining() {
        metrics.refuse(RefuseReason::Draining);
        return Err(draining());
    }
    sessions.limits.try_admit(transport).map_err(|r| match r {
        Refusal::Full => {
            metrics.refuse(RefuseReason::ConnectionLimit);
            ApiError::unavailable(
                "too_many_connections",
                "this node is at its connection limit",
                jittered(RETRY_MS),
            )
        }
        Refusal::Rate => {
            metrics.refuse(RefuseReason::ConnectRate);
            ApiError::unavailable(
                "connect_rate_limited",
                "too many new connections; retry shortly",
                jittered(RETRY_MS),
            )
        }
    })
}

/// The refusal of a draining node.
pub fn draining() -> ApiError {
    ApiError::unavailable(
        "draining",
        "this node is draining; reconnect to another",
        jittered(DRAIN_RETRY_MS),
    )
}

fn jittered(ms: RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rand::rng().random_range(ms))
}
