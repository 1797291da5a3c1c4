//! A short run of the load generator (`sluice-load`'s library) against an
//! in-process edge and a Redis container: every connection must get every
//! event exactly once. Speed is not asserted here (see tests/BENCHMARKS.md).

use std::time::Duration;

use sluice_tests::load::{self, LoadConfig, Transport};
use sluice_tests::TestEdge;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_smoke_sse_and_ws_exact() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let url = redis.url();

    let mut cfg = LoadConfig::new(edge.addr, url.clone());
    cfg.transport = Transport::Mixed;
    cfg.connections = 50;
    cfg.tasks = 10;
    cfg.duration = Duration::from_secs(3);
    cfg.rate = 500;
    cfg.publish_concurrency = 4;
    cfg.task_prefix = "smoke".into();
    let report = load::run(&cfg).await.expect("load run");
    assert_eq!(report.established, 50, "{report:?}");
    assert!(report.published > 100, "{report:?}");
    assert_eq!(report.publish_errors, 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicated, 0, "{report:?}");
    assert_eq!(report.delivered, report.expected, "{report:?}");
    assert!(report.latency.samples > 0, "{report:?}");

    // Catch-up: clients connect 200 events behind.
    let mut cfg = LoadConfig::new(edge.addr, url);
    cfg.connections = 4;
    cfg.tasks = 2;
    cfg.backlog_per_task = 200;
    cfg.duration = Duration::ZERO;
    cfg.task_prefix = "smoke-catchup".into();
    let report = load::run(&cfg).await.expect("catch-up run");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicated, 0, "{report:?}");
    assert_eq!(report.delivered, 4 * 200, "{report:?}");
    assert!(report.catchup_per_sec.is_some());
    edge.stop().await;
}
