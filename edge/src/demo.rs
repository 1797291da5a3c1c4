//! The `--demo` producer: a few tasks that advance, finish and start again,
//! so a fresh node has something to show.

use std::sync::Arc;
use std::time::Duration;

use sluice_broker::PublishOptions;
use sluice_shared::TaskId;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// Names of the demo tasks (the round number is appended).
pub const DEMO_TASKS: [(&str, u64); 3] = [
    ("demo-export", 150),
    ("demo-build", 90),
    ("demo-training", 400),
];

/// Publishes progress for every demo task until `cancel` fires. Its
/// publishes count in `events_published` like the HTTP API's: they are
/// publishes through this node.
pub async fn run(store: Arc<dyn Store>, metrics: Arc<Metrics>, cancel: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for (name, step_ms) in DEMO_TASKS {
        let (store, metrics) = (store.clone(), metrics.clone());
        let cancel = cancel.clone();
        let step = Duration::from_millis(step_ms);
        tasks.spawn(async move { one(store, metrics, name, step, cancel).await });
    }
    cancel.cancelled().await;
    tasks.shutdown().await;
}

async fn one(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    name: &str,
    step: Duration,
    cancel: CancellationToken,
) {
    let mut round = 1u64;
    loop {
        let Ok(task) = TaskId::parse(&format!("{name}-{round}")) else {
            return;
        };
        for pct in 0..=100u32 {
            let is_final = pct == 100;
            let kind = if is_final { "done" } else { "progress" };
            let data = serde_json::json!({"pct": pct, "round": round});
            let opts = PublishOptions {
                is_final,
                idempotency_key: Some(format!("demo-{pct}")),
            };
            match store.publish(&task, kind, &data, &opts).await {
                Ok(_) => {
                    metrics.published.inc();
                }
                Err(e) => tracing::debug!(cause = %e, "demo publish failed"),
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
            }
        }
        round += 1;
    }
}
