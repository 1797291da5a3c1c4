//! Test harness of Sluice, and its load generator.
//!
//! # Layout
//!
//! Fixtures:
//! - [`edge`]: [`TestEdge`], an in-process edge on a fresh Redis container,
//!   on a running Redis or on the memory store (`--insecure` plus the
//!   test's flags); [`EdgeHandle`] to reach and stop it.
//! - [`redis_fixture`]: [`RedisFixture`], a Redis container per test.
//! - [`cluster`]: a real Redis Cluster of `redis-server` processes.
//! - [`bins`]: the workspace's binaries, built on first use, for tests that
//!   run them as processes.
//!
//! Clients and judges:
//! - [`sse`]: the one SSE parser ([`sse::SseLines`], [`sse::SseDecoder`]),
//!   [`SseClient`] over reqwest and [`sse::RawSse`] on a raw socket.
//! - [`ws`]: the WebSocket client [`WsClient`].
//! - [`checker`]: [`DeliveryLog`] and its verdict (lost, duplicated, out
//!   of order, unannounced gaps, honest resets).
//! - [`conformance`]: the `Store` contract clause by clause
//!   ([`store_conformance!`] makes a test per clause and backend), and the
//!   `publish_batch` contract.
//!
//! Scenario machinery:
//! - [`chaos`]: fault injection (restartable Redis, pausable proxy, edge
//!   processes), reconnecting client fleets, a producer, the exclusive lock
//!   of the heavy scenarios.
//! - [`load`]: the load generator behind `sluice-load` (`src/bin/`).
//!
//! The integration tests are four binaries in `tests/`: `it` (everything
//! that can share a process), `chaos` (fault, cluster and soak scenarios,
//! one at a time), `system` (compose stack, browser) and `slow_client`
//! (measures its own memory, so it runs alone).

pub mod bins;
pub mod chaos;
pub mod checker;
pub mod cluster;
pub mod conformance;
pub mod edge;
pub mod load;
pub mod redis_fixture;
pub mod sse;
pub mod ws;

pub use checker::DeliveryLog;
pub use edge::{spawn_edge, EdgeHandle, TestEdge};
pub use redis_fixture::RedisFixture;
pub use sse::{SseClient, SseFrame};
pub use ws::{WsClient, WsItem};

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Installs a test log subscriber once (`RUST_LOG` controls it).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A task id unique to one test (tests share nothing but the machine).
pub fn unique_task(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Polls `f` until it returns true or `deadline` passes.
pub async fn wait_until<F, Fut>(what: &str, deadline: std::time::Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
