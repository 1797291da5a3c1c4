//! The router's state: one part per concern. Handlers and extractors take
//! only the part they need (axum's `FromRef`, derived here).

use std::sync::Arc;

use axum::extract::FromRef;

use super::publish::Publishing;
use super::tasks::HistoryPageBytes;
use crate::auth::Access;
use crate::session::Sessions;
use crate::status::NodeStatus;
use crate::store::Store;

#[derive(Clone, FromRef)]
pub struct AppState {
    /// Readiness, metrics, the dashboard.
    pub status: Arc<NodeStatus>,
    /// Who may read which task (every read route, through the extractors).
    pub access: Arc<Access>,
    /// Snapshot and history.
    pub store: Arc<dyn Store>,
    /// The byte budget of a history response.
    pub history_page_bytes: HistoryPageBytes,
    /// Publish keys and the publish path.
    pub publishing: Arc<Publishing>,
    /// SSE and WebSocket sessions.
    pub sessions: Arc<Sessions>,
}
