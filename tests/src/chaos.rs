//! Fault-injection harness: the pieces the chaos and soak scenarios
//! (`tests/tests/chaos/faults.rs`, `tests/tests/chaos/soak.rs`) are built
//! from.
//!
//! - [`redis`]: a Redis container on a fixed loopback port that can be
//!   restarted, paused and resumed (`docker restart` / `pause` / `unpause`).
//! - [`producer`]: several publishing tasks that keep going through faults
//!   (retrying with idempotency keys) and record what Redis acknowledged,
//!   epoch by epoch, then publish each task's final event.
//! - [`fleet`]: hundreds of reconnecting SSE and WebSocket clients that resume
//!   from their [`crate::DeliveryLog`] and stop at the final event, 204 or
//!   close 1000.
//! - [`proxy`]: a pausable loopback TCP proxy (stalls one node's Redis).
//! - [`process`]: the real `sluice-edge` binary as a child process (SIGKILL,
//!   RSS and fd sampling).
//! - [`report`]: the checker's verdict over a whole fleet, printed.

pub mod fleet;
pub mod process;
pub mod producer;
pub mod proxy;
pub mod redis;
pub mod report;

pub use fleet::{ClientResult, Fleet, FleetSpec, Transport};
pub use process::EdgeProcess;
pub use producer::{Producer, ProducerSpec};
pub use proxy::PausableProxy;
pub use redis::ChaosRedis;
pub use report::FleetVerdict;

/// Serialises the heavy scenarios of one test binary (a lock of this
/// process): each drives hundreds of connections, a cluster or a browser on
/// a 2-core box, and overlapping them would only measure the scheduler.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}
