//! Slow-client catch-up with bounded memory. In a test binary of its own:
//! the RSS it measures is this process's, so no other test may run in it.

use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use sluice_tests::sse::RawSse;
use sluice_tests::{unique_task, DeliveryLog, SseClient, TestEdge};

const T: Duration = Duration::from_secs(20);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Reads the stalled client's stream until seq `until`, logging every
/// event.
async fn read_raw_ids(s: &mut RawSse, until: u64, log: &mut DeliveryLog) {
    loop {
        let f = s
            .next_event(T)
            .await
            .unwrap_or_else(|| panic!("stream ended before seq {until}"));
        let seq = f.seq().expect("id");
        log.event(seq);
        if seq == until {
            return;
        }
    }
}

/// A client that stops reading while 20 000 events are published, then
/// reads again, receives every seq exactly once; a normal client on the same
/// task keeps receiving live events; the node's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_catches_up_exactly_with_bounded_memory() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--queue-capacity", "256"])
        .start()
        .await;
    // The log must hold all 20 000 events, or catching up ends in a reset.
    let config = PublisherConfig {
        log_cap: 50_000,
        ..PublisherConfig::default()
    };
    let p = Publisher::connect_with(&redis.url(), config)
        .await
        .expect("publisher");
    let task = unique_task("slow");
    const N: u64 = 20_000;
    // ~2 KiB per event: buffering everything for the stalled client would
    // take > 40 MiB.
    let blob = "x".repeat(2000);

    p.publish(&task, "progress", &json!({"i": 0, "blob": blob}))
        .await
        .expect("first");
    // A raw socket: the request is sent, nothing is read until later.
    let mut stalled = RawSse::request(edge.addr, &format!("/v1/tasks/{task}/events?after=0")).await;
    let mut normal =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    assert_eq!(normal.next_event(T).await.expect("first").seq(), Some(1));

    let base = rss_kib();
    let producer = {
        let p = p.clone();
        let task = task.clone();
        let blob = blob.clone();
        tokio::spawn(async move {
            for i in 2..=N {
                let opts = PublishOptions {
                    is_final: i == N,
                    idempotency_key: None,
                };
                p.publish_with(&task, "progress", &json!({"i": i, "blob": blob}), opts)
                    .await
                    .expect("publish");
            }
        })
    };
    let mut normal_log = DeliveryLog::default();
    normal_log.event(1);
    let mut peak = base;
    while let Some(f) = normal.next_event(T).await {
        normal_log.event(f.seq().expect("id"));
        if normal_log.received.len() % 500 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    producer.await.expect("producer");
    peak = peak.max(rss_kib());
    let v = normal_log.check(1, N);
    println!("normal client: {v}");
    assert!(v.is_exact(), "{v:?}");

    let catchups = edge.state.metrics.catchups.get();
    assert!(
        catchups >= 1,
        "the stalled client overflowed its queue and was switched to catch-up"
    );

    let mut slow_log = DeliveryLog::default();
    read_raw_ids(&mut stalled, N, &mut slow_log).await;
    peak = peak.max(rss_kib());
    let v = slow_log.check(1, N);
    let growth_mib = peak.saturating_sub(base) as f64 / 1024.0;
    println!(
        "stalled client: {v}; catchups={catchups}; RSS base={} KiB peak={} KiB growth={growth_mib:.1} MiB",
        base, peak
    );
    assert!(v.is_exact(), "{v:?}");
    // The bound depends on the queue capacity and page size, not on N:
    // 256 queued + one page of 1000 events of ~2.3 KiB each is ~3 MiB;
    // allow generous slack for allocator behaviour and the test's own
    // clients. Unbounded buffering would exceed 40 MiB.
    assert!(growth_mib < 32.0, "edge memory grew by {growth_mib:.1} MiB");
}
