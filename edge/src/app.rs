//! The router. Handlers are thin adapters from HTTP to the hub and store.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sluice_broker::PublishOptions;
use sluice_shared::{Seq, TaskId};

use crate::error::ApiError;
use crate::health;
use crate::state::SharedState;
use crate::transport::{sse, ws};

/// Largest accepted request body (publish): the data limit plus envelope.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Default and largest `limit` of a history request.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
pub const MAX_HISTORY_LIMIT: usize = 1000;

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/v1/tasks/{task}/events", get(sse::subscribe).post(publish))
        .route("/v1/tasks/{task}/ws", get(ws::subscribe))
        .route("/v1/tasks/{task}", get(snapshot))
        .route("/v1/tasks/{task}/history", get(history))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/", get(crate::dashboard::page))
        .route("/v1/dashboard/events", get(crate::dashboard::events))
        .fallback(not_found)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Turns the framework's own plain-text rejections (bad percent-encoding in
/// the path, body over the limit, wrong method...) into the SPEC's JSON error
/// body, so every 4xx/5xx a client sees has the same shape.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = status
        .canonical_reason()
        .unwrap_or("request refused")
        .to_owned();
    let mut out = ApiError::new(status, code, message).into_response();
    if let Some(v) = resp.headers().get(header::RETRY_AFTER) {
        out.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    out
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Parses the `{task}` path segment.
pub fn parse_task(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).map_err(|e| ApiError::bad_request("invalid_task", format!("task id {e}")))
}

/// Parses the query string into a map; repeated keys keep the last value.
pub fn parse_query(raw: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Parses a seq given by a client (`after`, `Last-Event-ID`).
pub fn parse_seq(what: &str, raw: &str) -> Result<Seq, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_resume_point",
            format!("{what} must be a non-negative integer seq"),
        ));
    }
    raw.parse::<Seq>().map_err(|_| {
        ApiError::bad_request("invalid_resume_point", format!("{what} is out of range"))
    })
}

async fn snapshot(
    State(state): State<SharedState>,
    Path(task): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = parse_task(&task)?;
    crate::auth::authorize(&state, &headers, &parse_query(q.as_deref()), &task)?;
    match state.store.snapshot(&task).await? {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::not_found(format!("task {task} is unknown"))),
    }
}

async fn history(
    State(state): State<SharedState>,
    Path(task): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = parse_task(&task)?;
    let q = parse_query(q.as_deref());
    crate::auth::authorize(&state, &headers, &q, &task)?;
    let after = match q.get("after") {
        Some(v) => parse_seq("after", v)?,
        None => 0,
    };
    let limit = match q.get("limit") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_HISTORY_LIMIT}"),
                ))
            }
        },
        None => DEFAULT_HISTORY_LIMIT,
    };
    let events = state.store.history(&task, after, limit).await?;
    let mut body = Vec::with_capacity(events.len() * 128 + 2);
    body.push(b'[');
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&ev.envelope_json());
    }
    body.push(b']');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
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

/// Largest nesting depth of published JSON data.
pub const MAX_JSON_DEPTH: usize = 64;

async fn publish(
    State(state): State<SharedState>,
    Path(task): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_publish_key(&state, &headers)?;
    let task = parse_task(&task)?;
    if json_depth(&body) > MAX_JSON_DEPTH {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("JSON nesting deeper than {MAX_JSON_DEPTH}"),
        ));
    }
    let req: PublishBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("body is not a valid publish request: {e}"),
        )
    })?;
    let opts = PublishOptions {
        is_final: req.is_final,
        idempotency_key: req.idempotency_key,
    };
    let p = state
        .store
        .publish(&task, &req.kind, &req.data, &opts)
        .await?;
    if !p.duplicate {
        state.metrics.published.inc();
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

fn check_publish_key(state: &SharedState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.publish_keys.is_empty() {
        if state.demo {
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
    if state
        .publish_keys
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

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn seqs() {
        assert_eq!(parse_seq("after", "0").ok(), Some(0));
        assert_eq!(parse_seq("after", " 17 ").ok(), Some(17));
        for bad in [
            "",
            "-1",
            "1.5",
            "abc",
            "0x10",
            "99999999999999999999999",
            "18446744073709551616",
        ] {
            assert!(parse_seq("after", bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_seq("after", "18446744073709551615").ok(),
            Some(u64::MAX)
        );
    }

    #[test]
    fn depth() {
        assert_eq!(json_depth(br#"{"a":[1,{"b":"[[[["}]}"#), 3);
        assert_eq!(json_depth(b"1"), 0);
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("hv"));
        assert_eq!(bearer(&h), Some("abc"));
    }
}
