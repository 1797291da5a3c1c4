//! Soak: steady publishing and constant client churn against one edge
//! process, sampling its resident memory (`VmRSS`) and open file descriptors
//! from `/proc/<pid>`. After a warm-up, the medians of the first and last
//! thirds of the samples are compared: either growing beyond a tolerance
//! fails the test (a leak of memory, tasks or sockets per connection would
//! show as a steady climb). The churning clients are checked like the chaos
//! fleets: 0 lost, 0 duplicated across all their reconnects.
//!
//! Bounded: `SLUICE_SOAK_SECS` (default 20) of load, then the final events.
//!
//! ```sh
//! cargo test -p sluice-tests --test chaos -- --nocapture soak::
//! SLUICE_SOAK_SECS=600 cargo test -p sluice-tests --test chaos -- --nocapture soak::
//! ```

use std::time::{Duration, Instant};

use sluice_broker::PublisherConfig;
use sluice_tests::chaos::{EdgeProcess, Fleet, FleetSpec, FleetVerdict, Producer, ProducerSpec};
use sluice_tests::{unique_task, RedisFixture};

const DEFAULT_SOAK_SECS: u64 = 20;
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Allowed growth of the RSS median: 20 % plus 8 MiB (allocator noise).
const RSS_TOLERANCE: (f64, u64) = (0.20, 8 * 1024);
/// Allowed growth of the open-fd median: 10 % plus 16 (connections in
/// flight differ from sample to sample under churn).
const FD_TOLERANCE: (f64, u64) = (0.10, 16);

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// `(first-third median, last-third median, grew beyond tolerance)`.
fn trend(samples: &[u64], (ratio, slack): (f64, u64)) -> (u64, u64, bool) {
    let third = (samples.len() / 3).max(1);
    let first = median(&samples[..third]);
    let last = median(&samples[samples.len() - third..]);
    let limit = (first as f64 * (1.0 + ratio)) as u64 + slack;
    (first, last, last > limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_rss_and_fds_stay_flat() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let secs: u64 = std::env::var("SLUICE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SOAK_SECS)
        .max(6);
    let redis = RedisFixture::start().await;
    let url = redis.url();
    let edge =
        EdgeProcess::start(&["--redis-url", &url, "--insecure", "--heartbeat-secs", "1"]).await;
    let tasks: Vec<String> = (0..16).map(|_| unique_task("soak")).collect();
    let clients = 200;
    let fleet = Fleet::start(FleetSpec {
        tasks: tasks.clone(),
        clients,
        edges: vec![edge.addr],
        idle_timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(secs + 120),
        sticky: true,
        // About 200 reconnects a second, each resuming from its last seq.
        churn: Some(Duration::from_secs(1)),
    });
    let producer = Producer::start(
        &url,
        ProducerSpec {
            tasks: tasks.clone(),
            workers: 4,
            interval: Duration::from_millis(50),
            config: PublisherConfig::default(),
        },
    )
    .await;

    let started = Instant::now();
    let warm_up = Duration::from_secs(secs / 4);
    let (mut rss, mut fds) = (Vec::new(), Vec::new());
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(SAMPLE_EVERY).await;
        if started.elapsed() < warm_up {
            continue;
        }
        rss.push(edge.rss_kib().expect("edge RSS"));
        fds.push(edge.open_fds().expect("edge fds") as u64);
    }
    let connects = fleet.connects();
    let v = FleetVerdict::new("soak", &producer.finish().await, &fleet.join().await);
    let (rss_first, rss_last, rss_grew) = trend(&rss, RSS_TOLERANCE);
    let (fd_first, fd_last, fd_grew) = trend(&fds, FD_TOLERANCE);
    eprintln!(
        "SOAK {secs}s (warm-up {}s, {} samples): clients={clients} connects={connects} \
         rss_kib first-third median={rss_first} last-third median={rss_last} max={} | \
         fds first-third median={fd_first} last-third median={fd_last} max={}",
        warm_up.as_secs(),
        rss.len(),
        rss.iter().max().copied().unwrap_or(0),
        fds.iter().max().copied().unwrap_or(0),
    );
    v.assert_ok(false);
    assert!(
        !rss_grew,
        "edge RSS trends upward: {rss_first} KiB -> {rss_last} KiB"
    );
    assert!(
        !fd_grew,
        "edge open fds trend upward: {fd_first} -> {fd_last}"
    );
}

#[test]
fn trend_detects_growth() {
    let flat: Vec<u64> = (0..30).map(|i| 1000 + (i % 3)).collect();
    assert!(!trend(&flat, (0.1, 0)).2);
    let rising: Vec<u64> = (0..30).map(|i| 1000 + i * 50).collect();
    assert!(trend(&rising, (0.1, 0)).2);
}
