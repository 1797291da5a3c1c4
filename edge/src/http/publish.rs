//! `POST /v1/tasks/{task}/events`: publish one event over HTTP, with a
//! publish key (open in `--demo` when no key is configured).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_broker::PublishOptions;
use sluice_shared::TaskId;

use super::extract::{bearer, parse_task};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::Store;

/// Largest accepted request body (publish): the data limit plus envelope.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest nesting depth of published JSON data.
pub const MAX_JSON_DEPTH: usize = 64;

/// What publishing over HTTP needs.
pub struct Publishing {
    /// Accepted publish keys; none: publishing is disabled, unless `open`.
    keys: Vec<String>,
    /// `--demo` without keys: anyone may publish.
    open: bool,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Publishing {
    pub fn new(
        keys: Vec<String>,
        demo: bool,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Publishing {
            keys,
            open: demo,
            store,
            metrics,
        }
    }

    fn check_key(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.keys.is_empty() {
            if self.open {
                return Ok(());
            }
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "publish_disabled",
                "publishing over HTTP is disabled on this node (no --publish-key configured)",
            ));
        }
        let given = bearer(headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a publish key is required (Authorization: Bearer)",
            )
        })?;
        if self
            .keys
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), given.as_bytes()))
        {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the publish key is not valid",
            ))
        }
    }
}

pub async fn publish(
    State(publishing): State<Arc<Publishing>>,
    PublishRequest { task, body }: PublishRequest,
) -> Result<Response, ApiError> {
    let opts = PublishOptions {
        is_final: body.is_final,
        idempotency_key: body.idempotency_key,
    };
    let p = publishing
        .store
        .publish(&task, &body.kind, &body.data, &opts)
        .await?;
    if !p.duplicate {
        publishing.metrics.published.inc();
    }
    let status = if p.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(serde_json::json!({"seq": p.seq, "duplicate": p.duplicate})),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default, rename = "final")]
    is_final: bool,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// A publish request, checked in this order: the path's encoding and the
/// body's size (the framework's own 400 and 413), the publish key (401, or
/// 403 when publishing is disabled), the task id (400), the body's nesting
/// and shape (400).
pub struct PublishRequest {
    task: TaskId,
    body: PublishBody,
}

impl<S: Send + Sync> FromRequest<S> for PublishRequest
where
    Arc<Publishing>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let Path(raw) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let headers = parts.headers.clone();
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let checked = Arc::<Publishing>::from_ref(state)
            .check_key(&headers)
            .and_then(|()| parse_task(&raw))
            .and_then(|task| Ok((task, parse_body(&bytes)?)));
        match checked {
            Ok((task, body)) => Ok(PublishRequest { task, body }),
            Err(e) => Err(e.into_response()),
        }
    }
}

fn parse_body(body: &[u8]) -> Result<PublishBody, ApiError> {
    if json_depth(body) > MAX_JSON_DEPTH {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("JSON nesting deeper than {MAX_JSON_DEPTH}"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("body is not a valid publish request: {e}"),
        )
    })
}

/// Compares a given key with a configured one without leaking either's
/// content or length through timing: both are hashed to 32 bytes (SHA-256)
/// and the digests compared in constant time.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.as_slice().ct_eq(db.as_slice()).into()
}

/// Nesting depth of a JSON text (brackets outside strings), without parsing.
pub fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in body {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[["}]}"#), 3);
        assert_eq!(json_depth(b"1"), 0);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"key", b"kez"));
        assert!(!constant_time_eq(b"key", b"key2"));
        assert!(!constant_time_eq(b"", b"key"));
        assert!(constant_time_eq(b"", b""));
    }
}
