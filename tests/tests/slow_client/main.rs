//! Slow-client catch-up with bounded memory. In a test binary of its own:
//! the edge runs in this process ([`spawn_edge`]), so the RSS it measures
//! (`/proc/self/status`) is the edge's, and no other test may run in it.

use sluice_tests::rss::{reset_hwm, rss_kib, status_kib, RssPeak};
use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use sluice_edge::wire::Event;
use sluice_shared::StoredEvent;
use sluice_tests::checker::Received;
use sluice_tests::{spawn_edge, unique_task, DeliveryLog, RedisFixture, SseClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(20);
/// README's defaults, passed explicitly: the bound is computed from them.
const PAGE: usize = sluice_edge::subscription::DEFAULT_HISTORY_PAGE;
const PAGE_BYTES: usize = sluice_edge::store::DEFAULT_HISTORY_PAGE_BYTES;
const MIB: f64 = 1024.0 * 1024.0;

/// A delivery log whose vectors already hold `n` entries' worth of touched
/// memory, so that filling it does not count as growth of the edge.
fn preallocated_log(n: usize) -> DeliveryLog {
    let mut log = DeliveryLog::default();
    log.received.resize(n, Received::Event(0));
    log.received.clear();
    log.marks.resize(n, Some(0));
    log.marks.clear();
    log
}

/// Opens an SSE request on a raw socket and returns it without reading.
async fn raw_sse(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    s
}

/// Reads SSE frames from a raw HTTP/1.1 chunked response, collecting event
/// ids until `until` is seen. Streams: it keeps only the bytes of the line
/// being read, so the reader itself adds next to nothing to the RSS.
async fn read_raw_ids(s: &mut TcpStream, until: u64, log: &mut DeliveryLog) {
    const CHUNK: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(2 * CHUNK);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = tokio::time::timeout(T, s.read(&mut chunk))
            .await
            .expect("read within timeout")
            .expect("read");
        assert!(n > 0, "stream ended before seq {until}");
        buf.extend_from_slice(&chunk[..n]);
        // "id: <position>" lines. The edge writes each batch of frames as one HTTP
        // chunk, so chunk framing ("\r\n<hex>\r\n") always sits between
        // frames, never inside an id line.
        let mut scanned = 0;
        while let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line = &buf[scanned..scanned + pos];
            scanned += pos + 1;
            if let Some(rest) = line.strip_prefix(b"id: ") {
                let seq = sluice_shared::Position::parse(std::str::from_utf8(rest).expect("ascii"))
                    .expect("a position")
                    .seq;
                log.event(seq);
                if seq == until {
                    return;
                }
            }
        }
        buf.drain(..scanned);
    }
}

/// What one event of this test costs the edge, from its real encodings
/// (the same calls the edge makes).
struct EventSize {
    /// `Event::sse` (`id: <seq>\nevent: progress\ndata: <envelope>\n\n`),
    /// allocated at its exact length; `Event::json` is a slice of it.
    sse: usize,
    /// `Event::json`, the envelope.
    json: usize,
    /// The `Event` struct inside its `Arc` (two counters).
    header: usize,
    /// The MessagePack bytes Redis stores and returns for the event.
    stored: usize,
}

impl EventSize {
    /// The largest event of the run: the longest seq, `final: true`.
    fn of(task: &str, seq: u64, data: serde_json::Value) -> EventSize {
        let ev = StoredEvent {
            task: task.to_owned(),
            seq,
            kind: "progress".into(),
            data,
            ts: 1_800_000_000_000,
            is_final: true,
            epoch: 0,
        };
        let encoded = Event::from_history(&ev);
        assert_eq!(encoded.json.len(), ev.envelope_json().len());
        EventSize {
            sse: encoded.sse.len(),
            json: encoded.json.len(),
            header: std::mem::size_of::<Event>() + 2 * std::mem::size_of::<usize>(),
            stored: sluice_shared::codec::encode_event(&ev)
                .expect("encode")
                .len(),
        }
    }

    /// Bytes the edge holds per event in a queue or a buffered page: one
    /// `Arc<Event>` with its SSE frame (the envelope inside it).
    fn held(&self) -> usize {
        self.sse + self.header
    }

    /// Events in one history page: `--history-page`, or fewer once their
    /// envelopes reach `--history-page-bytes`.
    fn page_events(&self) -> usize {
        PAGE.min(PAGE_BYTES.div_ceil(self.json))
    }

    /// Bytes of a history page while it is read: the Redis replies (about
    /// the page's stored bytes when, as here, its events are alike in size;
    /// `store/redis/history.rs` parses and decodes each one entry at a time,
    /// dropping each) and the encoded page.
    fn page_read(&self) -> usize {
        self.page_events() * (self.held() + self.stored)
    }
}

/// Growth of the RSS the formula does not model, with its parts (for this
/// test's two connections and its in-process clients):
/// - the batch being written (64 frames × ~2.2 KB = 139 KB) per
///   connection (the stream path holds no HTTP buffer; hyper's, at most
///   400 KiB per connection, were counted here before it): 2 × 0.14 MiB;
/// - the feed reader's batches while publishing: the producer awaits every
///   publish and runs in this process, so the reader trails it by a few
///   entries; 64 entries × (`held` + `stored`) (~4.4 KB) ≈ 0.3 MiB;
/// - the test's own clients (reqwest's buffers, the publisher's pipeline)
///   and the runtime (tokio blocking threads' stacks, timer wheels,
///   metrics families), a few hundred KiB;
/// - glibc keeps up to `M_TRIM_THRESHOLD` (128 KiB) free at the top of
///   each of its per-thread arenas (2 workers, the blocking pool, the
///   sampler): ~1 MiB.
///
/// Sum ≈ 3.3 MiB, rounded to 4. Measured: the publish phase grows by
/// 1.0–1.4 MiB more than the stalled queue holds.
const ALLOWANCE_MIB: f64 = 4.0;

/// A client that stops reading while 20 000 events are published, then
/// reads again, receives every seq exactly once; a normal client on the same
/// task keeps receiving live events; the node's memory stays within
/// README's bound ("Slow clients"): per connection, its queue plus one
/// history page, whatever the number of events published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_catches_up_exactly_with_bounded_memory() {
    sluice_tests::init_logs();
    const N: u64 = 20_000;
    // README's defaults, passed explicitly: the bound below is computed
    // from them.
    const QUEUE: usize = 256;
    // The stalled client and the normal one.
    const CONNECTIONS: usize = 2;
    let redis = RedisFixture::start().await;
    let edge = spawn_edge(&[
        "--redis-url",
        &redis.url(),
        "--insecure",
        "--queue-capacity",
        &QUEUE.to_string(),
        "--history-page",
        &PAGE.to_string(),
        "--history-page-bytes",
        &PAGE_BYTES.to_string(),
        // The client stalls for as long as 20 000 publishes take: longer
        // than the default write timeout on a loaded machine. A client is
        // caught up only if it reads again within the write timeout.
        "--write-timeout-secs",
        "600",
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
    // ~2 KiB of data per event: buffering all of them for the stalled
    // client would take N × `held` ≈ 120 MiB.
    let blob = "x".repeat(2000);
    let size = EventSize::of(&task, N, json!({"i": N, "blob": blob}));

    p.publish(&task, "progress", &json!({"i": 0, "blob": blob}))
        .await
        .expect("first");
    let mut stalled = raw_sse(edge.addr, &format!("/v1/tasks/{task}/events?after=0")).await;
    let mut normal =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    assert_eq!(normal.next_event(T).await.expect("first").seq(), Some(1));

    let mut normal_log = preallocated_log(N as usize);
    let mut slow_log = preallocated_log(N as usize);
    let sampler = RssPeak::start(std::process::id());
    let base = rss_kib(std::process::id());
    let hwm_exact = reset_hwm(std::process::id());

    // Phase 1: 20 000 events while one client does not read.
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
    normal_log.event(1);
    while let Some(f) = normal.next_event(T).await {
        normal_log.event(f.seq().expect("id"));
    }
    producer.await.expect("producer");
    let publish_peak = sampler.phase_peak();
    let catchups = edge.state.metrics.catchups.get();

    // Phase 2: the stalled client reads again and catches up from Redis.
    read_raw_ids(&mut stalled, N, &mut slow_log).await;
    let catch_up_peak = sampler.phase_peak();
    drop(sampler);
    // VmHWM: the exact peak since `reset_hwm` (when the kernel allowed it).
    let hwm = if hwm_exact {
        status_kib(std::process::id(), "VmHWM:")
    } else {
        0
    };
    let peak = publish_peak.max(catch_up_peak).max(hwm);

    let v = normal_log.check(1, N);
    println!("normal client: {v}");
    assert!(v.is_exact(), "{v:?}");
    let v = slow_log.check(1, N);
    println!("stalled client: {v}; catchups={catchups}");
    assert!(v.is_exact(), "{v:?}");

    // README: per connection, its queue plus one history page. Every
    // connection has a queue; a page is read only by a connection that
    // overflowed: the stalled one, and the normal one too if it fell
    // behind on this busy box (then `catchups` counts its overflows).
    let pages = if catchups > 1 { CONNECTIONS } else { 1 };
    let queue_term = (CONNECTIONS * QUEUE * size.held()) as f64 / MIB;
    let page_term = size.page_read() as f64 / MIB;
    // While publishing, the stalled client holds its queue; a page is read
    // then only if the normal client overflowed.
    let publish_bound = queue_term + (pages - 1) as f64 * page_term + ALLOWANCE_MIB;
    let total_bound = queue_term + pages as f64 * page_term + ALLOWANCE_MIB;
    let mib = |kib: u64| kib.saturating_sub(base) as f64 / 1024.0;
    let (publish_growth, growth) = (mib(publish_peak), mib(peak));
    println!(
        "per event: sse={} (json={} inside it) + header={} = held {} B; stored={} B; \
         a page: {} events (--history-page {PAGE}, --history-page-bytes {PAGE_BYTES}); \
         page_read = events x (held + stored) = {} B",
        size.sse,
        size.json,
        size.header,
        size.held(),
        size.stored,
        size.page_events(),
        size.page_read(),
    );
    println!(
        "bound: queues {CONNECTIONS} x {QUEUE} x held = {queue_term:.2} MiB, \
         pages {pages} x page_read = {:.2} MiB, allowance {ALLOWANCE_MIB:.1} MiB; \
         publish phase <= {publish_bound:.2} MiB, whole run <= {total_bound:.2} MiB",
        pages as f64 * page_term,
    );
    println!(
        "measured: RSS base {base} KiB; growth publish phase {publish_growth:.2} MiB, \
         catch-up phase {:.2} MiB, VmHWM {}; peak growth {growth:.2} MiB",
        mib(catch_up_peak),
        if hwm_exact {
            format!("{:.2} MiB", mib(hwm))
        } else {
            "not resettable (sampled peak only)".to_owned()
        },
    );
    assert!(
        publish_growth <= publish_bound,
        "while the client was stalled the edge grew by {publish_growth:.2} MiB, \
         more than its queues allow ({publish_bound:.2} MiB): is the queue bounded?"
    );
    assert!(
        growth <= total_bound,
        "the edge grew by {growth:.2} MiB, more than queue plus one history page \
         per connection allows ({total_bound:.2} MiB)"
    );
    assert!(
        catchups >= 1,
        "the stalled client overflowed its queue and was switched to catch-up"
    );
}
