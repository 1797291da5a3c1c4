//! `/healthz` (the process answers), `/readyz` (the backend is reachable,
//! the feed is attached, the node is not draining and below its connection
//! limit) and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::state::SharedState;

pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<SharedState>) -> Response {
    let mut reasons = Vec::new();
    if state.is_draining() {
        reasons.push("draining");
    }
    if state.limits.at_limit() {
        reasons.push("at connection limit");
    }
    if !state.hub.is_live() {
        reasons.push("feed not attached");
    }
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    if !matches!(ping, Ok(Ok(()))) {
        reasons.push("backend unreachable");
    }
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "node": state.node_id,
        "reasons": reasons,
        "connections": state.limits.in_use(),
        "max_connections": state.limits.max(),
    });
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

pub async fn metrics(State(state): State<SharedState>) -> Response {
    let registry = state.metrics.registry();
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
