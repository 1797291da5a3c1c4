//! What every handler shares.

use std::sync::Arc;

use crate::config::Config;
use crate::hub::Hub;
use crate::lifecycle::Draining;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::session::Sessions;
use crate::store::Store;

pub struct AppState {
    pub node_id: String,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub limits: Arc<Limits>,
    /// What SSE and WebSocket sessions share.
    pub sessions: Arc<Sessions>,
    /// Set when the node starts draining (SIGTERM or the caller's token).
    pub draining: Draining,
    /// Token verifier; `None` when the node runs open.
    pub verifier: Option<crate::auth::Verifier>,
    pub demo: bool,
    pub publish_keys: Vec<String>,
    pub config: Config,
    /// This node's identity and the registry's latest view of the cluster
    /// (dashboard).
    pub cluster: Arc<crate::registry::ClusterView>,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.is_draining()
    }
}

pub type SharedState = Arc<AppState>;
