//! API errors: JSON `{"error": "<code>", "message": "<sentence>"}` with the
//! right status, and a `Retry-After` on the 503s.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use sluice_broker::error::Chain;
use sluice_broker::PublishError;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// When to come back (503s): `Retry-After` in whole seconds, rounded
    /// up; an SSE refusal's `retry:` in milliseconds.
    pub retry: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: come back after `retry`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry: Duration) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: message.into(),
            retry: Some(retry),
        }
    }

    /// `Retry-After` (seconds, rounded up, at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        let ms = u64::try_from(self.retry?.as_millis()).unwrap_or(u64::MAX);
        Some(ms.div_ceil(1000).max(1))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "message": self.message});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs() {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(cause = %Chain(&cause), "backend unavailable");
                backend_unavailable()
            }
            StoreError::Connect(cause) => {
                tracing::warn!(cause = %Chain(&cause), "backend unavailable");
                backend_unavailable()
            }
            StoreError::Corrupt { task, what } => {
                tracing::error!(task = %task, cause = %what, "corrupt stored data");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "corrupt_data",
                    format!("stored data of task {task} cannot be read"),
                )
            }
            StoreError::Publish(p) => p.into(),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match &e {
            PublishError::InvalidTask(_) => ApiError::bad_request("invalid_task", e.to_string()),
            PublishError::InvalidType(_) => ApiError::bad_request("invalid_type", e.to_string()),
            PublishError::InvalidIdempotencyKey(_) => {
                ApiError::bad_request("invalid_idempotency_key", e.to_string())
            }
            PublishError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            PublishError::Closed(_) => {
                ApiError::new(StatusCode::CONFLICT, "task_closed", e.to_string())
            }
            PublishError::Encode(_) | PublishError::Json(_) => {
                ApiError::bad_request("invalid_data", e.to_string())
            }
            PublishError::Rejected(_) => {
                ApiError::bad_request("rejected", e.refusal().unwrap_or_default())
            }
            PublishError::NotReplicated { .. } => {
                tracing::warn!(cause = %e, "publish not confirmed by enough replicas");
                ApiError::unavailable(
                    "not_replicated",
                    format!("{e}; retry with the same idempotency_key"),
                    Duration::from_secs(1),
                )
            }
            PublishError::Unavailable(_) | PublishError::Connect(_) => {
                tracing::warn!(cause = %Chain(&e), "publish failed: backend unavailable");
                backend_unavailable()
            }
        }
    }
}

/// Range of the jittered delay after which a caller comes back when the
/// store was unreachable (ms): the clients of one outage spread their
/// retries instead of coming back together.
pub const BACKEND_RETRY_MS: std::ops::RangeInclusive<u64> = 1_000..=3_000;

/// 503 `backend_unavailable`: the store cannot serve the call right now.
fn backend_unavailable() -> ApiError {
    let ms = rand::rng().random_range(BACKEND_RETRY_MS);
    ApiError::unavailable(
        "backend_unavailable",
        "the event store is unreachable; retry shortly",
        Duration::from_millis(ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_broker::Unavailable;

    fn server_error(line: &str) -> redis::RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    fn api(e: impl Into<ApiError>) -> (u16, &'static str, String, Option<u64>) {
        let e = e.into();
        let retry = e.retry_after_secs();
        (e.status.as_u16(), e.code, e.message, retry)
    }

    const UNREACHABLE: &str = "the event store is unreachable; retry shortly";

    #[test]
    fn unavailable_backends_answer_503() {
        let io =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        for e in [
            StoreError::Unavailable(Unavailable::Redis(io.clone())),
            StoreError::Unavailable(Unavailable::TimedOut),
            StoreError::Unavailable(Unavailable::from(sluice_broker::connect::PoolError::Closed)),
            StoreError::Connect(sluice_broker::connect::ConnectError::NoSeeds),
            StoreError::Publish(PublishError::from(io.clone())),
            StoreError::Publish(PublishError::Unavailable(Unavailable::NoReply)),
        ] {
            let (status, code, message, retry) = api(e);
            assert_eq!(
                (status, code, message),
                (503, "backend_unavailable", UNREACHABLE.to_owned())
            );
            assert!(retry.is_some_and(|s| (1..=3).contains(&s)), "{retry:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let after =
            |ms| ApiError::unavailable("x", "y", Duration::from_millis(ms)).retry_after_secs();
        assert_eq!(after(100), Some(1));
        assert_eq!(after(1_000), Some(1));
        assert_eq!(after(1_001), Some(2));
        assert_eq!(after(5_000), Some(5));
        assert_eq!(ApiError::not_found("x").retry_after_secs(), None);
    }

    #[test]
    fn refusals_keep_their_codes_and_messages() {
        let rejected = PublishError::Rejected(server_error("SLUICE_INVALID bad event type"));
        assert_eq!(
            api(rejected),
            (400, "rejected", "bad event type".to_owned(), None)
        );
        assert_eq!(
            api(PublishError::Closed("job-1".into())),
            (
                409,
                "task_closed",
                "task job-1 is closed: it already received its final event".to_owned(),
                None
            )
        );
        assert_eq!(
            api(PublishError::TooLarge { size: 9, max: 8 }),
            (
                413,
                "too_large",
                "event data is 9 bytes encoded; the limit is 8".to_owned(),
                None
            )
        );
        let (status, code, message, retry) = api(PublishError::NotReplicated {
            seq: 4,
            acked: 0,
            wanted: 1,
        });
        assert_eq!((status, code, retry), (503, "not_replicated", Some(1)));
        assert!(
            message.ends_with("; retry with the same idempotency_key"),
            "{message}"
        );
        assert_eq!(
            api(StoreError::Corrupt {
                task: "job-1".into(),
                what: "entry 1-0 has no event".into()
            }),
            (
                500,
                "corrupt_data",
                "stored data of task job-1 cannot be read".to_owned(),
                None
            )
        );
    }
}
