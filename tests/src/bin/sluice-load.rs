//! `sluice-load`: a load generator for Sluice edges.
//!
//! ```text
//! sluice-load --redis-url redis://127.0.0.1:6379 --edge 127.0.0.1:8080 \
//!     --connections 1000 --tasks 100 --duration 10 [--rate 2000] [--json]
//! sluice-load --redis-url ... --spawn-edge target/release/sluice-edge ...
//! ```
//!
//! See tests/BENCHMARKS.md for the scenarios and their commands.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use sluice_tests::load::{self, LoadConfig, Transport};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TransportArg {
    Sse,
    Ws,
    Mixed,
}

#[derive(Parser, Debug)]
#[command(name = "sluice-load", about = "Load generator for Sluice edges")]
struct Args {
    /// Redis the edge reads from (the publisher writes there).
    #[arg(long, env = "SLUICE_REDIS_URL")]
    redis_url: String,
    /// Edge address (host:port); not needed with --spawn-edge.
    #[arg(long)]
    edge: Option<SocketAddr>,
    /// Start this sluice-edge binary on a free loopback port for the run.
    #[arg(long)]
    spawn_edge: Option<String>,
    /// Extra arguments for the spawned edge (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    edge_arg: Vec<String>,
    /// The edge's pid for RSS/CPU readings (default: the spawned edge, or
    /// the only running `sluice-edge`).
    #[arg(long)]
    edge_pid: Option<u32>,
    #[arg(long, value_enum, default_value_t = TransportArg::Sse)]
    transport: TransportArg,
    #[arg(long, default_value_t = 100)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    /// Spread connections over 127.0.0.1..=127.0.0.N source addresses.
    #[arg(long, default_value_t = 1)]
    source_addrs: u8,
    /// Seconds of live publishing (0: none).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Total publish rate in events/s (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Concurrent publishes in flight.
    #[arg(long, default_value_t = 16)]
    publish_concurrency: usize,
    /// Events per publish call: above 1, each worker sends them with
    /// `Publisher::publish_batch` (one pipeline per shard).
    #[arg(long, default_value_t = 1)]
    publish_batch: usize,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Events published to every task before the clients connect (catch-up).
    #[arg(long, default_value_t = 0)]
    backlog: u64,
    /// Publisher log cap (raise above --backlog for catch-up runs).
    #[arg(long, default_value_t = sluice_broker::publisher::DEFAULT_LOG_CAP)]
    log_cap: u64,
    #[arg(long, default_value_t = sluice_shared::DEFAULT_SHARDS)]
    shards: u32,
    /// Seconds to hold the connections idle before publishing.
    #[arg(long, default_value_t = 0.0)]
    idle: f64,
    /// Seconds to wait for the last events after publishing.
    #[arg(long, default_value_t = 15.0)]
    drain_timeout: f64,
    /// Print the summary as JSON (no progress display).
    #[arg(long)]
    json: bool,
}

/// A child edge, killed on drop.
struct ChildEdge(std::process::Child);

impl Drop for ChildEdge {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn_edge(args: &Args, path: &str) -> anyhow::Result<(ChildEdge, SocketAddr)> {
    let port = sluice_tests::free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let max = (args.connections + 1000).to_string();
    let child = std::process::Command::new(path)
        .args([
            "--listen",
            &addr.to_string(),
            "--redis-url",
            &args.redis_url,
        ])
        .args(["--insecure", "--max-connections", &max])
        .args(["--shards", &args.shards.to_string()])
        .args(&args.edge_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {path}"))?;
    let child = ChildEdge(child);
    // Ready when /readyz answers 200.
    for _ in 0..200 {
        if ready(addr).await {
            return Ok((child, addr));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the spawned edge did not become ready within 10 s")
}

async fn ready(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head)).await,
        Ok(Ok(_))
    ) && head.starts_with(b"HTTP/1.1 200")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (child, edge) = match (&args.spawn_edge, args.edge) {
        (Some(path), _) => {
            let (c, a) = spawn_edge(&args, path).await?;
            (Some(c), a)
        }
        (None, Some(a)) => (None, a),
        (None, None) => anyhow::bail!("give --edge ADDR or --spawn-edge PATH"),
    };
    let edge_pid = args
        .edge_pid
        .or_else(|| child.as_ref().map(|c| c.0.id()))
        .or_else(load::report::find_edge_pid);
    let mut cfg = LoadConfig::new(edge, args.redis_url.clone());
    cfg.transport = match args.transport {
        TransportArg::Sse => Transport::Sse,
        TransportArg::Ws => Transport::Ws,
        TransportArg::Mixed => Transport::Mixed,
    };
    cfg.connections = args.connections;
    cfg.tasks = args.tasks.max(1);
    cfg.source_addrs = args.source_addrs.max(1);
    cfg.backlog_per_task = args.backlog;
    cfg.duration = Duration::from_secs_f64(args.duration.max(0.0));
    cfg.rate = args.rate;
    cfg.publish_concurrency = args.publish_concurrency.max(1);
    cfg.publish_batch = args.publish_batch.max(1);
    cfg.payload_bytes = args.payload;
    cfg.shards = args.shards;
    cfg.log_cap = args.log_cap.max(args.backlog);
    cfg.idle = Duration::from_secs_f64(args.idle.max(0.0));
    cfg.drain_timeout = Duration::from_secs_f64(args.drain_timeout.max(0.0));
    cfg.edge_pid = edge_pid;
    cfg.progress = !args.json;
    let report = load::run(&cfg).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print();
    }
    drop(child);
    Ok(())
}
