//! A node's lifetime. [`Node::start`] builds the node's parts and starts
//! everything it runs (feed reader, registry, demo producer, HTTP server
//! and, with `--admin-listen`, the admin server; WebSocket sessions join
//! later) on one [`Tasks`]. [`Node::stop`] drains
//! and stops them in order:
//!
//! 1. draining: readiness goes false and new streams are refused;
//! 2. every stream closes at a jittered moment inside the drain window (the
//!    node is told when the last connection closed; it waits at most the
//!    window plus [`DRAIN_SLACK`]);
//! 3. the feed reader stops (so nothing recreates the node's groups);
//! 4. the node's consumer groups are released;
//! 5. everything else stops (registry, demo, servers), and whatever is still
//!    running after [`STOP_GRACE`] is aborted.
//!
//! One root token owns it all: each phase is a child token, and cancelling
//! the root (also when a `Node` is dropped) aborts every task the node runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::auth::Access;
use crate::cluster::ClusterView;
use crate::config::{Config, OperatorSurface, ADMIN_MAX_OPEN_CONNECTIONS};
use crate::http::tasks::HistoryPageBytes;
use crate::http::{self, AppState, Publishing};
use crate::hub::Hub;
use crate::lifecycle::{Draining, Tasks};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::server::{self, Connections, ServerLimits};
use crate::session::Sessions;
use crate::status::NodeStatus;
use crate::store::{FeedSink, Store};
use crate::subscription::Subscriptions;
use crate::{demo, registry};

/// How long past the drain window the node waits for its last connections.
pub const DRAIN_SLACK: Duration = Duration::from_secs(2);
/// How long the feed reader, then everything else, may take to stop before
/// it is aborted.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The node's listening sockets, bound before anything else starts.
pub struct Listeners {
    /// `--listen`: the public API.
    pub public: TcpListener,
    /// `--admin-listen`: the operator surface, when configured.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `--listen` and, when set, `--admin-listen`. The error is one
    /// line naming the address (the binary exits 2 with it).
    pub async fn bind(config: &Config) -> Result<Listeners, String> {
        let public = bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { public, admin })
    }
}

/// Connections the kernel queues for the accept loop (capped by
/// `net.core.somaxconn`). A burst of clients connecting at once (a drained
/// node's, a load balancer failing over) must fit: with tokio's default of
/// 1 024, 5 000 clients connecting together lost SYNs and waited a second
/// for their retransmission (connect p99 1.0 s, 5 000 in 1.1 s; nchan 0.3 s).
const BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen().map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// A running node. Dropping it without [`Node::stop`] aborts everything it
/// runs, without draining.
pub struct Node {
    status: Arc<NodeStatus>,
    drain_window: Duration,
    tasks: Tasks,
    /// Cancelled last (or on drop): aborts whatever still runs.
    root: CancellationToken,
    /// Phase 3: stops the feed reader.
    stop_feed: CancellationToken,
    /// Phase 5: stops the registry, the demo producer and the servers.
    stop_rest: CancellationToken,
    feed: AbortOnDropHandle<Option<()>>,
    /// The public server, then the admin one when there is one.
    servers: Vec<AbortOnDropHandle<Option<()>>>,
}

impl Node {
    /// Builds the node around `store` and starts serving on `listeners`.
    /// An admin listener is served only when `config` sets
    /// `--admin-listen` (and then must be given).
    pub async fn start(
        config: &Config,
        node_id: String,
        store: Arc<dyn Store>,
        listeners: Listeners,
    ) -> anyhow::Result<Node> {
        let surface = config.operator_surface();
        let admin_listener = match (surface, listeners.admin) {
            (OperatorSurface::Admin(_), Some(l)) => Some(l),
            (OperatorSurface::Admin(addr), None) => {
                anyhow::bail!("--admin-listen {addr} is set but no admin listener was bound")
            }
            (_, Some(_)) => anyhow::bail!("an admin listener was given without --admin-listen"),
            (_, None) => None,
        };
        let listener = listeners.public;
        let root = CancellationToken::new();
        // Until the node is built, an early return aborts what was started.
        let abort_on_error = root.clone().drop_guard();
        let tasks = Tasks::new(root.clone());
        let (stop_feed, stop_rest) = (root.child_token(), root.child_token());
        let status = Arc::new(parts(config, node_id, store, Draining::child_of(&root)));
        let body = http::body::BodyDeadline {
            timeout: config.body_timeout(),
            metrics: status.metrics.clone(),
        };
        let state = app_state(config, &status, &tasks);
        let app = http::router(
            state.clone(),
            body.clone(),
            surface == OperatorSurface::Public,
            http::cors::layer(&config.cors_origin),
        );
        let feed = {
            let (store, stop) = (status.store.clone(), stop_feed.clone());
            let sink: Arc<dyn FeedSink> = status.hub.clone();
            AbortOnDropHandle::new(tasks.spawn(async move { store.run_feed(sink, stop).await }))
        };
        if config.demo {
            tasks.spawn(demo::run(
                status.store.clone(),
                status.metrics.clone(),
                stop_rest.clone(),
            ));
        }
        let addr = listener.local_addr()?;
        status.cluster.set_address(registry::advertised(addr));
        registry::spawn(
            &tasks,
            &status,
            config.redis_url.as_deref(),
            config.node_grace(),
            stop_rest.clone(),
        )?;
        tracing::info!(node = %status.node_id, %addr, store = status.store.kind(), "sluice-edge serving");
        let limits = ServerLimits {
            max_open: config.max_open_connections(),
            head_timeout: config.head_timeout(),
            write_timeout: config.write_timeout(),
        };
        let mut servers = vec![AbortOnDropHandle::new(tasks.spawn(server::serve(
            listener,
            app,
            limits,
            status.connections.clone(),
            tasks.clone(),
            stop_rest.clone(),
        )))];
        match admin_listener {
            Some(admin) => {
                let admin_addr = admin.local_addr()?;
                tracing::info!(addr = %admin_addr, "operator surface (dashboard, /metrics) on the admin listener");
                // Connections of its own: operators never take the public
                // port's slots, nor make the node look full.
                let max_open = ADMIN_MAX_OPEN_CONNECTIONS;
                let conns = Arc::new(Connections::new(max_open, status.metrics.clone()));
                servers.push(AbortOnDropHandle::new(tasks.spawn(server::serve(
                    admin,
                    http::admin_router(state, body),
                    ServerLimits { max_open, ..limits },
                    conns,
                    tasks.clone(),
                    stop_rest.clone(),
                ))));
            }
            None if surface == OperatorSurface::Off => tracing::warn!(
                "the operator surface (/, /v1/dashboard/events, /metrics) is not served: \
                 subscriber auth is on and no admin listener is set; \
                 pass --admin-listen ADDR (SLUICE_ADMIN_LISTEN) on a private address to serve it"
            ),
            None => {}
        }
        abort_on_error.disarm();
        Ok(Node {
            status,
            drain_window: config.drain(),
            tasks,
            root,
            stop_feed,
            stop_rest,
            feed,
            servers,
        })
    }

    /// What the node is and holds (readiness, counters, its id).
    pub fn status(&self) -> Arc<NodeStatus> {
        self.status.clone()
    }

    /// Serves until `shutdown` fires, then drains and stops.
    pub async fn run_until(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.stop().await
    }

    /// Drains and stops, in the order of the module documentation.
    pub async fn stop(mut self) {
        let limits = &self.status.limits;
        self.status.draining.start();
        tracing::info!(
            open = limits.in_use(),
            window_secs = self.drain_window.as_secs(),
            "draining"
        );
        let drained = tokio::time::timeout(self.drain_window + DRAIN_SLACK, limits.idle()).await;
        if drained.is_err() {
            tracing::warn!(
                open = limits.in_use(),
                "connections still open after the drain window"
            );
        }
        self.stop_feed.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut self.feed)
            .await
            .is_err()
        {
            tracing::warn!("feed reader did not stop within 5 s; aborting it");
            self.feed.abort();
        }
        if let Err(e) = self.status.store.release().await {
            tracing::warn!(cause = %e, "could not release consumer groups");
        }
        self.stop_rest.cancel();
        let aborted = self.tasks.shutdown(STOP_GRACE).await;
        if aborted > 0 {
            tracing::warn!(
                aborted,
                "tasks still running 5 s after the stop were aborted"
            );
        }
        for server in &mut self.servers {
            match server.await {
                Ok(Some(())) => {}
                Ok(None) => tracing::warn!("server did not stop within 5 s"),
                Err(e) => tracing::warn!(cause = %e, "server task failed"),
            }
        }
        tracing::info!(node = %self.status.node_id, "stopped");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// The node's shared parts, as its status holds them.
fn parts(
    config: &Config,
    node_id: String,
    store: Arc<dyn Store>,
    draining: Draining,
) -> NodeStatus {
    let metrics = Arc::new(Metrics::default());
    store.attach_metrics(metrics.clone());
    NodeStatus {
        node_id,
        shards: config.shards,
        demo: config.demo,
        hub: Hub::with_interest(
            config.queue_capacity,
            metrics.clone(),
            crate::interest::Interest::new(config.shards, config.feed_grace()),
        ),
        limits: Arc::new(Limits::new(
            config.max_connections,
            config.max_connect_rate,
            metrics.clone(),
        )),
        cluster: Arc::new(ClusterView::default()),
        connections: Arc::new(Connections::new(
            config.max_open_connections(),
            metrics.clone(),
        )),
        store,
        metrics,
        draining,
    }
}

/// The router's state: each handler's part of the node.
fn app_state(config: &Config, status: &Arc<NodeStatus>, tasks: &Tasks) -> AppState {
    let access = Arc::new(Access::new(&config.auth_secret, status.metrics.clone()));
    if access.is_open() {
        tracing::warn!("subscriber auth is OFF (--insecure/--demo): anyone can read any task");
    }
    let sessions = Sessions {
        subscriptions: Subscriptions::new(
            status.hub.clone(),
            status.store.clone(),
            status.metrics.clone(),
            config.history_page(),
        ),
        limits: status.limits.clone(),
        metrics: status.metrics.clone(),
        draining: status.draining.clone(),
        heartbeat: config.heartbeat(),
        drain_window: config.drain(),
        tasks: tasks.clone(),
        max_tasks: config.max_tasks_per_connection,
    };
    AppState {
        status: status.clone(),
        access,
        store: status.store.clone(),
        history_page_bytes: HistoryPageBytes(config.history_page_bytes),
        publishing: Arc::new(Publishing::new(
            config.publish_key.clone(),
            config.demo,
            status.store.clone(),
            status.metrics.clone(),
        )),
        sessions: Arc::new(sessions),
    }
}
