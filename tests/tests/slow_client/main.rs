//! Slow-client catch-up with bounded memory. In a test binary of its own:
//! the RSS it measures is this process's, so no other test may run in it.

use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use sluice_tests::{spawn_edge, unique_task, DeliveryLog, RedisFixture, SseClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Opens an SSE request on a raw socket and returns it without reading.
async fn raw_sse(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    s
}

/// Reads SSE frames from a raw HTTP/1.1 chunked response, collecting event
/// ids until `until` is seen.
async fn read_raw_ids(s: &mut TcpStream, until: u64, log: &mut DeliveryLog) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut scanned = 0;
    loop {
        let n = tokio::time::timeout(T, s.read(&mut chunk))
            .await
            .expect("read within timeout")
            .expect("read");
        assert!(n > 0, "stream ended before seq {until}");
        buf.extend_from_slice(&chunk[..n]);
        // Find "\nid: N\n" lines (chunk framing never splits our lines in a
        // way that matters: we only scan complete lines).
        while let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = &buf[scanned..scanned + pos];
            scanned += pos + 1;
            if let Some(rest) = line.strip_prefix(b"id: ") {
                let seq: u64 = std::str::from_utf8(rest)
                    .expect("ascii")
                    .trim()
                    .parse()
                    .expect("seq");
                log.event(seq);
                if seq == until {
                    return;
                }
            }
        }
        if scanned > (1 << 20) {
            buf.drain(..scanned);
            scanned = 0;
        }
    }
}

/// A client that stops reading while 20 000 events are published, then
/// reads again, receives every seq exactly once; a normal client on the same
/// task keeps receiving live events; the node's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_catches_up_exactly_with_bounded_memory() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let edge = spawn_edge(&[
        "--redis-url",
        &redis.url(),
        "--insecure",
        "--queue-capacity",
        "256",
    ])
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
    let mut stalled = raw_sse(edge.addr, &format!("/v1/tasks/{task}/events?after=0")).await;
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
