//! Test harness of Sluice: a Redis container fixture (testcontainers), edge
//! nodes started in-process on `127.0.0.1:0`, SSE clients and a delivery
//! checker. Integration tests live in `tests/`, one file per scenario.

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
pub use edge::{spawn_edge, EdgeHandle};
pub use redis_fixture::RedisFixture;
pub use sse::{SseClient, SseFrame};
pub use ws::{WsClient, WsItem};

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
