//! Request bodies read within a deadline: a request that sends its body
//! slower than `--body-timeout-secs` (a slowloris on the publish path)
//! is answered 408 and its connection closed, instead of holding a
//! connection and a handler open for as long as it likes. The body is read
//! whole, up to [`MAX_BODY_BYTES`], before the handler runs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::publish::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What reading a body within its deadline needs.
#[derive(Clone)]
pub struct BodyDeadline {
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// Middleware: reads the body of a request that has one within the
/// deadline, then hands the buffered request on.
pub async fn read_within(
    State(deadline): State<BodyDeadline>,
    req: Request,
    next: Next,
) -> Response {
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    let refusal = match tokio::time::timeout(deadline.timeout, read).await {
        Ok(Ok(collected)) => {
            let req = Request::from_parts(parts, Body::from(collected.to_bytes()));
            return next.run(req).await;
        }
        Err(_) => {
            deadline.metrics.body_timeouts.inc();
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    deadline.timeout.as_secs()
                ),
            )
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is over {MAX_BODY_BYTES} bytes"),
        ),
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "request body unreadable");
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body could not be read",
            )
        }
    };
    // The rest of the body is not read: the connection cannot be reused.
    let mut resp = refusal.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
