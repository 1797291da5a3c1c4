//! `/healthz` (the process answers), `/readyz` (the backend is reachable,
//! the feed is attached and the node is not draining: it can serve
//! requests), `/capacity` (ready *and* below its connection limit: it can
//! take another stream) and `/metrics`.
//!
//! Readiness leaves connection capacity out on purpose: a load balancer
//! removes a node that is not ready from every route, so if "full" made a
//! node unready, a fleet whose every edge is full would stop serving
//! publishes, snapshots and history too. Route streams on `/capacity` and
//! everything else on `/readyz` (deploy/haproxy.cfg does).

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
    verdict(&status, "ready", reasons)
}

/// 200 when the node is ready and can take another stream; 503 with the
/// reasons otherwise (`at connection limit` among them).
pub async fn capacity(State(status): State<Arc<NodeStatus>>) -> Response {
    let mut reasons = status.unready_reasons().await;
    if status.limits.at_limit() {
        reasons.push("at connection limit");
    }
    verdict(&status, "available", reasons)
}

/// 200 with `{<flag>: true, ...}` when there is no reason against, else 503
/// with the reasons; both with the node's connection figures.
fn verdict(status: &NodeStatus, flag: &str, reasons: Vec<&'static str>) -> Response {
    let ok = reasons.is_empty();
    let body = serde_json::json!({
        flag: ok,
        "node": status.node_id,
        "reasons": reasons,
        "connections": status.limits.in_use(),
        "max_connections": status.limits.max(),
    });
    let code = if ok {
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
