//! What every handler shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::subscription::Subscriptions;

pub struct AppState {
    pub node_id: String,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub heartbeat: Duration,
    pub drain_window: Duration,
    /// Opens subscriptions (hub, store, metrics, history page).
    pub subscriptions: Subscriptions,
    /// Fires when the node starts draining (SIGTERM or the caller's token).
    pub drain: CancellationToken,
    pub draining: AtomicBool,
    /// Per-connection tasks (WebSocket sessions): awaited at shutdown.
    pub tracker: TaskTracker,
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
        self.draining.load(Ordering::Acquire)
    }
}

pub type SharedState = Arc<AppState>;
