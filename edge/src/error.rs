//! API errors: JSON `{"error": "<code>", "message": "<sentence>"}` with the
//! right status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_broker::error::Chain;
use sluice_broker::PublishError;

use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: message.into(),
            retry_after: Some(retry_after),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "message": self.message});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
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
                    1,
                )
            }
            PublishError::Unavailable(_) | PublishError::Connect(_) => {
                tracing::warn!(cause = %Chain(&e), "publish failed: backend unavailable");
                backend_unavailable()
            }
        }
    }
}

/// 503 `backend_unavailable`: the store cannot serve the call right now.
fn backend_unavailable() -> ApiError {
    ApiError::unavailable(
        "backend_unavailable",
        "the event store is unreachable; retry shortly",
        2,
    )
}
