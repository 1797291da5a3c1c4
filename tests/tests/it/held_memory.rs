//! What one client can make the node hold (README "Memory per
//! connection"): clients that never read, on a task with large events, hold
//! at most the README's formula each, whatever the task's history holds.
//!
//! The edge runs as a process of its own (the real binary, with its
//! allocator), so its RSS (`/proc/<pid>/status`) is the edge's alone and
//! tests running beside this one in the `it` binary do not count.

use sluice_tests::rss::{reset_hwm, status_kib, RssPeak};
use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use sluice_edge::wire::Event;
use sluice_shared::StoredEvent;
use sluice_tests::chaos::EdgeProcess;
use sluice_tests::{unique_task, RedisFixture};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const MIB: f64 = 1024.0 * 1024.0;
/// Event data: a 60 000-byte string (under the default `--max-data-bytes`).
const DATA_BYTES: usize = 60_000;
const EVENTS: u64 = 400;
const SUBSCRIBERS: usize = 5;
const HISTORY_REQUESTS: usize = 5;
/// The edge's flags, passed explicitly: the bound is computed from them.
const QUEUE: usize = 16;
const PAGE: usize = 1000;
const PAGE_BYTES: usize = 1024 * 1024;

/// A request on a socket with a small receive buffer that is never read:
/// the edge fills the kernel's buffers, then holds whatever it has not
/// written.
async fn never_read(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let mut s = socket.connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    s
}

/// One sample of `/metrics`: `name{labels} value` lines summed by name
/// prefix (enough for the few counters read here).
async fn metric(http: &reqwest::Client, addr: std::net::SocketAddr, series: &str) -> f64 {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// README's formula, term by term, from the flags and the largest event.
struct Bound {
    /// The largest event as the edge holds it (its SSE frame; the JSON
    /// envelope is a slice of it).
    event: usize,
}

/// hyper's HTTP/1 write buffer (queued body chunks): `8192 + 4096 * 100`.
/// History requests are served by hyper; SSE streams are not (the stream
/// path writes each batch straight to the socket).
const HYPER_BUF: usize = 8192 + 4096 * 100;
/// An SSE batch stops once it reaches this many bytes.
const BATCH_BYTES: usize = sluice_edge::session::BATCH_BYTES;

/// A Redis reply while a page is read holds at most this many times the
/// budget.
const GROWTH: usize = sluice_edge::store::redis::HISTORY_READ_GROWTH;

impl Bound {
    /// A page being read: the Redis reply (at most `GROWTH` × the budget, or
    /// × one event if larger) and the encoded page (the budget + one event).
    fn page(&self) -> usize {
        GROWTH * PAGE_BYTES.max(self.event) + PAGE_BYTES + self.event
    }

    /// One SSE subscriber (on a connection of its own: the stream path):
    /// its queue, a page and one batch.
    fn subscriber(&self) -> usize {
        QUEUE * self.event + self.page() + BATCH_BYTES + self.event
    }

    /// One history request: a page, then the response body (the page's
    /// envelopes) in hyper's buffer.
    fn history_request(&self) -> usize {
        self.page() + HYPER_BUF
    }
}

/// Growth the formula does not model: the runtime and its threads, the
/// allocator's metadata and the pages it has not returned yet, the Redis
/// pool's read buffers (a connection keeps one as large as the largest
/// bulk string it read), `/metrics` requests.
const ALLOWANCE_MIB: f64 = 12.0;

/// Five SSE subscribers from `?after=0` and five history requests of 1 000
/// events that never read, on a task whose 400 events of 60 KB would be
/// 24 MB per page: the edge's RSS grows by at most README's per-connection
/// bound each (before history pages were bounded in bytes, each subscriber
/// held ~48 MB, and far more while a page was read).
#[tokio::test]
async fn clients_that_never_read_hold_at_most_the_readme_bound() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let edge = EdgeProcess::start(&[
        "--redis-url",
        &redis.url(),
        "--insecure",
        "--queue-capacity",
        &QUEUE.to_string(),
        "--history-page",
        &PAGE.to_string(),
        "--history-page-bytes",
        &PAGE_BYTES.to_string(),
    ])
    .await;
    let p = Publisher::connect_with(&redis.url(), PublisherConfig::default())
        .await
        .expect("publisher");
    let task = unique_task("held");
    let blob = "x".repeat(DATA_BYTES);
    for i in 1..=EVENTS {
        let opts = PublishOptions {
            is_final: false,
            idempotency_key: None,
        };
        p.publish_with(&task, "progress", &json!({"i": i, "blob": blob}), opts)
            .await
            .expect("publish");
    }
    let largest = StoredEvent {
        task: task.clone(),
        seq: EVENTS,
        kind: "progress".into(),
        data: json!({"i": EVENTS, "blob": blob}),
        ts: 1_800_000_000_000,
        is_final: true,
        epoch: 0,
    };
    let bound = Bound {
        event: Event::from_history(&largest).sse.len(),
    };
    let http = reqwest::Client::new();
    let pid = edge.pid;
    let base = status_kib(pid, "VmRSS:");
    let sampler = RssPeak::start(pid);
    // VmHWM from here on is the exact peak (when the kernel allows the reset).
    let hwm_exact = reset_hwm(pid);

    let mut held = Vec::new();
    for _ in 0..SUBSCRIBERS {
        held.push(never_read(edge.addr, &format!("/v1/tasks/{task}/events?after=0")).await);
    }
    for _ in 0..HISTORY_REQUESTS {
        held.push(
            never_read(
                edge.addr,
                &format!("/v1/tasks/{task}/history?after=0&limit=1000"),
            )
            .await,
        );
    }
    // Settled: every client was served a page, and the SSE streams stopped
    // moving (their sockets are full) for ten samples in a row.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (-1.0, 0);
    while still < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the clients' sockets did not fill up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reads = metric(
            &http,
            edge.addr,
            "sluice_edge_redis_command_duration_seconds_count{op=\"history\"}",
        )
        .await;
        let delivered = metric(&http, edge.addr, "sluice_edge_events_delivered_total").await;
        let served = reads >= (SUBSCRIBERS + HISTORY_REQUESTS) as f64;
        still = if served && delivered == last {
            still + 1
        } else {
            0
        };
        last = delivered;
    }
    let hwm = if hwm_exact {
        status_kib(pid, "VmHWM:")
    } else {
        0
    };
    let peak = sampler.peak().max(hwm);
    drop(sampler);
    let growth = peak.saturating_sub(base) as f64 / 1024.0;
    let subscribers = (SUBSCRIBERS * bound.subscriber()) as f64 / MIB;
    let requests = (HISTORY_REQUESTS * bound.history_request()) as f64 / MIB;
    let limit = subscribers + requests + ALLOWANCE_MIB;
    println!(
        "largest event {} B; per subscriber {:.2} MiB (queue {QUEUE} x event + {GROWTH} x page {PAGE_BYTES} \
         + page + event + batch {BATCH_BYTES} + event); per history request {:.2} MiB",
        bound.event,
        bound.subscriber() as f64 / MIB,
        bound.history_request() as f64 / MIB,
    );
    println!(
        "RSS base {base} KiB, peak {peak} KiB (VmHWM {}): growth {growth:.2} MiB; \
         bound {SUBSCRIBERS} x subscriber {subscribers:.2} + {HISTORY_REQUESTS} x request {requests:.2} \
         + allowance {ALLOWANCE_MIB:.0} = {limit:.2} MiB",
        if hwm_exact { "exact" } else { "not resettable" },
    );
    assert!(
        growth <= limit,
        "clients that never read made the edge grow by {growth:.2} MiB, more than README's \
         bound allows ({limit:.2} MiB)"
    );
    drop(held);
}
