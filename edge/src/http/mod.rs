//! The HTTP layer: the router (routes only), request extractors
//! ([`extract`]), admission of streams ([`admission`]), the JSON error layer
//! ([`errors`]) and one thin handler module per endpoint family.

pub mod admission;
pub mod body;
pub mod dashboard;
pub mod errors;
pub mod extract;
pub mod health;
pub mod publish;
pub mod sse;
pub mod state;
pub mod tasks;
pub mod ws;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

pub use self::publish::Publishing;
pub use self::state::AppState;

pub fn router(state: AppState, body: body::BodyDeadline) -> Router {
    Router::new()
        .route(
            "/v1/tasks/{task}/events",
            get(sse::subscribe).post(publish::publish),
        )
        .route("/v1/tasks/{task}/ws", get(ws::subscribe))
        .route("/v1/tasks/{task}", get(tasks::snapshot))
        .route("/v1/tasks/{task}/history", get(tasks::history))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/capacity", get(health::capacity))
        .route("/metrics", get(health::metrics))
        .route("/", get(dashboard::page))
        .route("/v1/dashboard/events", get(dashboard::events))
        .fallback(errors::not_found)
        .layer(axum::middleware::from_fn_with_state(
            body,
            body::read_within,
        ))
        .layer(axum::middleware::map_response(errors::json_errors))
        .layer(DefaultBodyLimit::max(publish::MAX_BODY_BYTES))
        .with_state(state)
}
