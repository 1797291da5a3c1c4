//! The HTTP layer: the routers (routes only: the public one, and the admin
//! one of `--admin-listen`), request extractors ([`extract`]), admission of
//! streams ([`admission`]), the JSON error layer ([`errors`]) and one thin
//! handler module per endpoint family.

pub mod admission;
pub mod body;
pub mod cors;
pub mod dashboard;
pub mod errors;
pub mod extract;
pub mod health;
pub mod publish;
pub mod sse;
pub mod state;
pub mod tasks;
pub mod ws;
pub mod ws_upgrade;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

pub use self::publish::Publishing;
pub use self::state::AppState;

/// The public router: streams, snapshots, history, publishing, health,
/// and, when `operator` is true, the operator surface (`/`,
/// `/v1/dashboard/events`, `/metrics`).
/// Without it those paths are answered 404 like any unknown path.
/// `cors`: the `--cors-origin` layer, if any (the public router only).
pub fn router(
    state: AppState,
    body: body::BodyDeadline,
    operator: bool,
    cors: Option<tower_http::cors::CorsLayer>,
) -> Router {
    let mut routes = Router::new()
        .route(
            "/v1/tasks/{task}/events",
            get(sse::subscribe).post(publish::publish),
        )
        .route("/v1/tasks/{task}/ws", get(ws::subscribe))
        .route("/v1/events", get(sse::subscribe_many))
        .route("/v1/ws", get(ws::subscribe_many))
        .route("/v1/tasks/{task}", get(tasks::snapshot))
        .route("/v1/tasks/{task}/history", get(tasks::history))
        .merge(health_routes());
    if operator {
        routes = routes.merge(operator_routes());
    }
    let router = finish(routes, state, body);
    match cors {
        // Outermost: a preflight is answered before anything else, and
        // every answer (errors included) carries the CORS headers.
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// The admin router (`--admin-listen`): the operator surface, and health
/// for convenience. Nothing that reads or writes a task's events.
pub fn admin_router(state: AppState, body: body::BodyDeadline) -> Router {
    finish(operator_routes().merge(health_routes()), state, body)
}

/// Liveness, readiness and capacity: on every listener (load balancers and
/// orchestrators probe the public port).
fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/capacity", get(health::capacity))
}

/// The operator surface: the dashboard, its stats stream (every live
/// subscription's task id, every node's address, the cluster layout) and
/// `/metrics`. Where it is served: [`crate::config::OperatorSurface`].
fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/", get(dashboard::page))
        .route("/v1/dashboard/events", get(dashboard::events))
}

/// The layers every listener shares: JSON 404s and errors, the body
/// deadline and size limit.
fn finish(routes: Router<AppState>, state: AppState, body: body::BodyDeadline) -> Router {
    routes
        .fallback(errors::not_found)
        .layer(axum::middleware::from_fn_with_state(
            body,
            body::read_within,
        ))
        .layer(axum::middleware::map_response(errors::json_errors))
        .layer(DefaultBodyLimit::max(publish::MAX_BODY_BYTES))
        .with_state(state)
}
