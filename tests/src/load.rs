//! The load generator behind `sluice-load` (and the smoke test): opens many
//! SSE or WebSocket connections to an edge, publishes through the
//! [`Publisher`], and reports what arrived (lost / duplicated per
//! connection, from seqs), how fast, end-to-end latency from the envelope
//! `ts`, and the edge process's RSS and CPU.
//!
//! Every connection subscribes with `?after=0` to a task nobody used before,
//! so it must receive every seq its task gets: expected = the task's last
//! published seq.

pub mod conn;
pub mod publish;
pub mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_broker::publisher::PublisherConfig;
use sluice_broker::Publisher;
use sluice_shared::TaskId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use conn::Outcome;
use publish::{Pace, Plan};
pub use report::{EdgeUsage, Latency, ProcSample, Report, Stats};

/// Connections being opened at once.
const CONNECT_CONCURRENCY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
    /// Every other connection SSE, the rest WebSocket.
    Mixed,
}

/// One run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub edge: SocketAddr,
    pub redis_url: String,
    pub transport: Transport,
    pub connections: usize,
    pub tasks: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.<n> (round robin; 1 = default).
    pub source_addrs: u8,
    /// Events published to every task before connecting (catch-up).
    pub backlog_per_task: u64,
    /// Live publishing phase length (0: none).
    pub duration: Duration,
    /// Events/s in total (0: as fast as possible).
    pub rate: u64,
    pub publish_concurrency: usize,
    /// Events per `publish_batch` call (1: one `publish` per event).
    pub publish_batch: usize,
    pub payload_bytes: usize,
    pub shards: u32,
    /// Publisher log cap (≥ the backlog for catch-up runs).
    pub log_cap: u64,
    /// How long to wait for stragglers after publishing.
    pub drain_timeout: Duration,
    /// Idle phase (connections open, nothing published) before publishing.
    pub idle: Duration,
    pub edge_pid: Option<u32>,
    pub task_prefix: String,
    pub progress: bool,
}

impl LoadConfig {
    pub fn new(edge: SocketAddr, redis_url: impl Into<String>) -> Self {
        LoadConfig {
            edge,
            redis_url: redis_url.into(),
            transport: Transport::Sse,
            connections: 100,
            tasks: 10,
            source_addrs: 1,
            backlog_per_task: 0,
            duration: Duration::from_secs(5),
            rate: 0,
            publish_concurrency: 16,
            publish_batch: 1,
            payload_bytes: 64,
            shards: sluice_shared::DEFAULT_SHARDS,
            log_cap: sluice_broker::publisher::DEFAULT_LOG_CAP,
            drain_timeout: Duration::from_secs(15),
            idle: Duration::ZERO,
            edge_pid: None,
            task_prefix: "load".into(),
            progress: false,
        }
    }
}

fn source(cfg: &LoadConfig, i: usize) -> Option<IpAddr> {
    (cfg.source_addrs > 1).then(|| {
        let k = 1 + (i % usize::from(cfg.source_addrs)) as u8;
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, k))
    })
}

/// Runs one load scenario to the end and reports.
pub async fn run(cfg: &LoadConfig) -> anyhow::Result<Report> {
    anyhow::ensure!(cfg.tasks > 0, "need at least one task");
    let stats = Arc::new(Stats::default());
    let pubcfg = PublisherConfig {
        shards: cfg.shards,
        log_cap: cfg.log_cap,
        pool_size: cfg.publish_concurrency.max(1),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect_with(&cfg.redis_url, pubcfg).await?;
    let run_id = format!(
        "{}-{}-{:x}",
        cfg.task_prefix,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    );
    let tasks: Vec<TaskId> = (0..cfg.tasks)
        .map(|i| TaskId::parse(&format!("{run_id}-{i}")))
        .collect::<Result<_, _>>()?;
    let payload = serde_json::json!({ "pad": "x".repeat(cfg.payload_bytes) });
    let plan = Plan {
        tasks: Arc::new(tasks),
        last_seq: Arc::new((0..cfg.tasks).map(|_| AtomicU64::new(0)).collect()),
        data: Arc::new(sluice_shared::codec::encode_data(&payload)?),
        concurrency: cfg.publish_concurrency,
        batch: cfg.publish_batch.max(1),
    };
    let bar = progress_bar(cfg.progress);
    let ticker = spawn_ticker(bar.clone(), stats.clone(), cfg.connections);
    let mut report = Report {
        transport: format!("{:?}", cfg.transport).to_lowercase(),
        connections: cfg.connections,
        tasks: cfg.tasks,
        backlog_per_task: cfg.backlog_per_task,
        ..Report::default()
    };

    if cfg.backlog_per_task > 0 {
        bar.set_prefix("backlog");
        let pace = Pace::Count {
            per_task: cfg.backlog_per_task,
        };
        publish::run(&publisher, &plan, pace, &stats).await;
    }

    let mut edge = cfg.edge_pid.map(|pid| EdgeUsage {
        pid,
        ..EdgeUsage::default()
    });
    let sample = |edge: &Option<EdgeUsage>| edge.as_ref().and_then(|e| ProcSample::read(e.pid));
    let baseline = sample(&edge);

    // Connect.
    bar.set_prefix("connect");
    let stop = CancellationToken::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut conns = tokio::task::JoinSet::new();
    let t_connect = Instant::now();
    for i in 0..cfg.connections {
        let task_idx = i % cfg.tasks;
        let task = plan.tasks[task_idx].to_string();
        let (stats, stop, gate) = (stats.clone(), stop.clone(), gate.clone());
        let (edge_addr, src) = (cfg.edge, source(cfg, i));
        let ws = match cfg.transport {
            Transport::Sse => false,
            Transport::Ws => true,
            Transport::Mixed => i % 2 == 1,
        };
        conns.spawn(async move {
            // Held until this connection is established or gave up.
            let Ok(permit) = gate.acquire_owned().await else {
                unreachable!("the gate is never closed")
            };
            let spec = conn::ConnSpec {
                edge: edge_addr,
                source: src,
                key: i,
                task_idx,
                task,
            };
            let r = if ws {
                conn::run_ws(spec, permit, stats.clone(), stop).await
            } else {
                conn::run_sse(spec, permit, stats.clone(), stop).await
            };
            if !r.established {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            r
        });
    }
    // Wait until every connection is established or has given up.
    let connect_deadline = Instant::now() + Duration::from_secs(180);
    while stats.established.load(Ordering::Relaxed) + stats.refused.load(Ordering::Relaxed)
        < cfg.connections as u64
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report.connect_secs = t_connect.elapsed().as_secs_f64();
    report.established = stats.established.load(Ordering::Relaxed);

    if !cfg.idle.is_zero() {
        bar.set_prefix("idle");
        tokio::time::sleep(cfg.idle).await;
    }
    let connected = sample(&edge);
    if let (Some(e), Some(b), Some(c)) = (edge.as_mut(), baseline, connected) {
        e.rss_baseline_kib = b.rss_kib;
        e.rss_connected_kib = c.rss_kib;
        e.rss_per_conn_bytes =
            (c.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / report.established.max(1) as f64;
    }

    // Publish.
    bar.set_prefix("publish");
    stats.reset_latency();
    let delivered_before = stats.delivered.load(Ordering::Relaxed);
    let published_before = stats.published.load(Ordering::Relaxed);
    let t_pub = Instant::now();
    if !cfg.duration.is_zero() {
        let pace = Pace::Timed {
            for_secs: cfg.duration.as_secs_f64(),
            rate: cfg.rate,
        };
        publish::run(&publisher, &plan, pace, &stats).await;
    }
    let pub_secs = t_pub.elapsed().as_secs_f64();
    let after_pub = sample(&edge);
    let delivered_in_window = stats.delivered.load(Ordering::Relaxed) - delivered_before;
    report.publish_secs = pub_secs;
    report.published = stats.published.load(Ordering::Relaxed);
    report.publish_errors = stats.publish_errors.load(Ordering::Relaxed);
    report.published_per_sec =
        (report.published - published_before) as f64 / pub_secs.max(f64::EPSILON);
    report.delivered_per_sec = delivered_in_window as f64 / pub_secs.max(f64::EPSILON);
    if let (Some(e), Some(c), Some(p)) = (edge.as_mut(), connected, after_pub) {
        e.cpu_percent = (p.cpu_ticks.saturating_sub(c.cpu_ticks)) as f64 / report::CLK_TCK * 100.0
            / pub_secs.max(f64::EPSILON);
    }

    // Drain: wait until every connection has what its task got.
    bar.set_prefix("drain");
    let expected: u64 = (0..cfg.connections)
        .map(|i| plan.last_seq[i % cfg.tasks].load(Ordering::Relaxed))
        .sum();
    let t_drain = Instant::now();
    let drain_deadline = t_drain + cfg.drain_timeout;
    while stats.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    report.drain_secs = t_drain.elapsed().as_secs_f64();
    if cfg.backlog_per_task > 0 {
        let secs = t_connect.elapsed().as_secs_f64();
        report.catchup_per_sec = Some(stats.delivered.load(Ordering::Relaxed) as f64 / secs);
    }
    report.latency = stats.latency();
    let end = sample(&edge);
    stop.cancel();
    while let Some(r) = conns.join_next().await {
        if let Ok(r) = r {
            collect(&mut report, &r, &plan);
        }
    }
    report.expected = expected;
    if let (Some(e), Some(x)) = (edge.as_mut(), end) {
        e.rss_end_kib = x.rss_kib;
        e.rss_peak_kib = [
            e.rss_connected_kib,
            x.rss_kib,
            after_pub.map_or(0, |p| p.rss_kib),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
    }
    report.edge = edge;
    ticker.abort();
    bar.finish_and_clear();
    Ok(report)
}

fn collect(report: &mut Report, r: &conn::ConnResult, plan: &Plan) {
    let t = &r.tracker;
    report.delivered += t.delivered;
    report.duplicated += t.duplicated;
    report.resets += t.resets;
    if r.established {
        report.lost += t.lost(plan.last_seq[r.task].load(Ordering::Relaxed));
        match r.outcome {
            Outcome::Failed => report.failed += 1,
            Outcome::Closed => report.closed_by_server += 1,
            Outcome::Cancelled | Outcome::Refused => {}
        }
    } else {
        report.refused += 1;
        report.lost += plan.last_seq[r.task].load(Ordering::Relaxed);
    }
}

fn progress_bar(show: bool) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_draw_target(if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix:8} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

fn spawn_ticker(
    bar: ProgressBar,
    stats: Arc<Stats>,
    connections: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let (mut last_d, mut last_p, mut last_t) = (0u64, 0u64, Instant::now());
        loop {
            tick.tick().await;
            let d = stats.delivered.load(Ordering::Relaxed);
            let p = stats.published.load(Ordering::Relaxed);
            let secs = last_t.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!(
                "conns {}/{}  published {} ({:.0}/s)  delivered {} ({:.0}/s)  errors {}",
                stats.established.load(Ordering::Relaxed),
                connections,
                p,
                (p - last_p) as f64 / secs,
                d,
                (d - last_d) as f64 / secs,
                stats.publish_errors.load(Ordering::Relaxed),
            ));
            bar.tick();
            (last_d, last_p, last_t) = (d, p, Instant::now());
        }
    })
}
