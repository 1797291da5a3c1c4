//! `/healthz` (the process answers), `/readyz` (the backend is reachable,
//! the feed is attached, the node is not draining and below its connection
//! limit) and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::status::NodeStatus;

pub async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(status): State<Arc<NodeStatus>>) -> Response {
    let reasons = status.unready_reasons().await;
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "node": status.node_id,
        "reasons": reasons,
        "connections": status.limits.in_use(),
        "max_connections": status.limits.max(),
    });
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub async fn metrics(State(status): State<Arc<NodeStatus>>) -> Response {
    let registry = status.metrics.registry();
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
