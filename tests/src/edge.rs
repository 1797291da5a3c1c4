//! Edge nodes started in-process on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sluice_edge::status::NodeStatus;
use sluice_edge::{Config, Node};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct EdgeHandle {
    pub addr: SocketAddr,
    pub state: Arc<NodeStatus>,
    pub shutdown: CancellationToken,
    join: Option<JoinHandle<()>>,
}

impl EdgeHandle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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
/// name; `--listen` is set here) and waits until `/readyz` says ready.
pub async fn spawn_edge(args: &[&str]) -> EdgeHandle {
    let mut argv = vec!["sluice-edge", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(args);
    let config = Config::try_parse_from(argv).expect("valid edge config");
    config.validate().expect("valid edge config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node_id = config.node_id();
    let store = sluice_edge::build_store(&config, &node_id)
        .await
        .expect("store");
    let shutdown = CancellationToken::new();
    let node = Node::start(&config, node_id, store, listener)
        .await
        .expect("edge started");
    let state = node.status();
    let join = tokio::spawn(node.run_until(shutdown.clone()));
    let edge = EdgeHandle {
        addr,
        state,
        shutdown,
        join: Some(join),
    };
    let client = reqwest::Client::new();
    let url = edge.url("/readyz");
    crate::wait_until("edge ready", Duration::from_secs(10), || {
        let client = client.clone();
        let url = url.clone();
        async move { matches!(client.get(&url).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    edge
}
