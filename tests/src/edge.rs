//! Edge nodes started in-process on `127.0.0.1:0`: [`TestEdge`] (with a
//! Redis container, on a running Redis, or on the memory store) and the
//! lower-level [`spawn_edge`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sluice_edge::status::NodeStatus;
use sluice_edge::{Config, Listeners, Node};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::redis_fixture::RedisFixture;

pub struct EdgeHandle {
    pub addr: SocketAddr,
    /// The admin listener's address (`--admin-listen`), when set.
    pub admin: Option<SocketAddr>,
    pub state: Arc<NodeStatus>,
    pub shutdown: CancellationToken,
    join: Option<JoinHandle<()>>,
}

impl EdgeHandle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on the admin listener; the edge must have been started with
    /// `--admin-listen 127.0.0.1:0`.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self
            .admin
            .expect("the edge was started with --admin-listen");
        format!("http://{admin}{path}")
    }

    /// Starts draining and waits for the node to stop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(j) = self.join.take() {
            let r = tokio::time::timeout(Duration::from_secs(30), j)
                .await
                .expect("edge stops within 30 s");
            r.expect("edge task");
        }
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts an edge with `args` (as on the command line, without the program
/// name; `--listen` is set here; `--admin-listen 127.0.0.1:0` adds an admin
/// listener, see [`EdgeHandle::admin_url`]) and waits until `/readyz` says
/// ready.
pub async fn spawn_edge(args: &[&str]) -> EdgeHandle {
    let mut argv = vec!["sluice-edge", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(args);
    let config = Config::try_parse_from(argv).expect("valid edge config");
    config.validate().expect("valid edge config");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let addr = listeners.public.local_addr().expect("addr");
    let admin = listeners
        .admin
        .as_ref()
        .map(|l| l.local_addr().expect("admin addr"));
    let node_id = config.node_id();
    let store = sluice_edge::build_store(&config, &node_id)
        .await
        .expect("store");
    let shutdown = CancellationToken::new();
    let node = Node::start(&config, node_id, store, listeners)
        .await
        .expect("edge started");
    let state = node.status();
    let join = tokio::spawn(node.run_until(shutdown.clone()));
    let edge = EdgeHandle {
        addr,
        admin,
        state,
        shutdown,
        join: Some(join),
    };
    let client = reqwest::Client::new();
    let url = edge.url("/readyz");
    crate::util::wait_until("edge ready", Duration::from_secs(10), || {
        let client = client.clone();
        let url = url.clone();
        async move { matches!(client.get(&url).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    edge
}

/// The usual way to start an edge in a test: a fresh Redis container (or a
/// running Redis, or the memory store) and `--insecure`, plus the test's
/// own flags.
///
/// ```ignore
/// let (redis, edge) = TestEdge::redis().args(&["--heartbeat-secs", "1"]).start().await;
/// let b = TestEdge::on(&redis.url()).node("b").start().await;
/// let mem = TestEdge::memory().args(&["--publish-key", "pk"]).start().await;
/// ```
#[must_use = "call .start()"]
pub struct TestEdge<S> {
    store: S,
    insecure: bool,
    args: Vec<String>,
}

/// [`TestEdge`] on a Redis container of its own ([`RedisFixture`]).
pub struct FreshRedis;
/// [`TestEdge`] on the embedded memory store.
pub struct Memory;
/// [`TestEdge`] on a Redis (or Redis Cluster) that is already running.
pub struct OnRedis(String);

impl<S> TestEdge<S> {
    fn with(store: S) -> Self {
        TestEdge {
            store,
            insecure: true,
            args: Vec::new(),
        }
    }

    /// More edge flags, as on the command line.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// `--node-id <id>`.
    pub fn node(self, id: &str) -> Self {
        self.args(&["--node-id", id])
    }

    /// Without `--insecure` (the test passes its auth flags).
    pub fn secure(mut self) -> Self {
        self.insecure = false;
        self
    }

    async fn spawn(&self, redis_url: Option<&str>) -> EdgeHandle {
        let mut argv: Vec<&str> = Vec::new();
        if let Some(url) = redis_url {
            argv.extend(["--redis-url", url]);
        }
        if self.insecure {
            argv.push("--insecure");
        }
        argv.extend(self.args.iter().map(String::as_str));
        spawn_edge(&argv).await
    }
}

impl TestEdge<FreshRedis> {
    /// An edge on a Redis container started for it.
    pub fn redis() -> Self {
        Self::with(FreshRedis)
    }

    /// Starts Redis, then the edge; keep both handles alive.
    pub async fn start(self) -> (RedisFixture, EdgeHandle) {
        let redis = RedisFixture::start().await;
        let edge = self.spawn(Some(&redis.url())).await;
        (redis, edge)
    }
}

impl TestEdge<Memory> {
    /// An edge on the memory store (no Redis).
    pub fn memory() -> Self {
        Self::with(Memory)
    }

    pub async fn start(self) -> EdgeHandle {
        self.spawn(None).await
    }
}

impl TestEdge<OnRedis> {
    /// An edge on the Redis at `url` (another node of a test's Redis, or a
    /// cluster).
    pub fn on(url: &str) -> Self {
        Self::with(OnRedis(url.to_owned()))
    }

    pub async fn start(self) -> EdgeHandle {
        self.spawn(Some(&self.store.0)).await
    }
}
