//! The publishing side of a load run: `concurrency` workers share one
//! [`Publisher`] (its pool holds one connection per worker), each publishing
//! to its own slice of the tasks, flat out or paced to a total rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::publisher::PublishOptions;
use sluice_broker::{Outgoing, Publisher};
use sluice_shared::TaskId;
use tokio::time::Instant;

use super::report::Stats;

/// What the workers publish.
pub struct Plan {
    pub tasks: Arc<Vec<TaskId>>,
    /// Highest seq published per task (what its subscribers must reach).
    pub last_seq: Arc<Vec<AtomicU64>>,
    /// MessagePack `data` of every event.
    pub data: Arc<Vec<u8>>,
    pub concurrency: usize,
    /// Events per publish call (`publish_batch` when above 1).
    pub batch: usize,
}

/// How long and how fast.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Exactly `per_task` events to every task, flat out.
    Count { per_task: u64 },
    /// For `for_secs`, at `rate` events/s in total (0: flat out).
    Timed { for_secs: f64, rate: u64 },
}

/// Publishes according to `pace`; returns when done.
pub async fn run(publisher: &Publisher, plan: &Plan, pace: Pace, stats: &Arc<Stats>) {
    let mut workers = tokio::task::JoinSet::new();
    let n = plan.concurrency.max(1);
    let start = Instant::now();
    for w in 0..n {
        let publisher = publisher.clone();
        let tasks = plan.tasks.clone();
        let last_seq = plan.last_seq.clone();
        let data = plan.data.clone();
        let stats = stats.clone();
        let batch = plan.batch;
        workers.spawn(async move {
            // Worker w publishes the w-th, (w+n)-th ... event of the round
            // robin over all tasks, so every worker is busy whatever the
            // number of tasks.
            let total_tasks = tasks.len() as u64;
            let opts = PublishOptions::default();
            let (limit, deadline, interval) = match pace {
                Pace::Count { per_task } => {
                    let all = per_task * total_tasks;
                    (
                        all / n as u64 + u64::from((w as u64) < all % n as u64),
                        None,
                        None,
                    )
                }
                Pace::Timed { for_secs, rate } => (
                    u64::MAX,
                    Some(start + Duration::from_secs_f64(for_secs)),
                    (rate > 0).then(|| Duration::from_secs_f64(n as f64 / rate as f64)),
                ),
            };
            let batch = batch.max(1) as u64;
            let mut i = 0u64;
            while i < limit {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if let Some(iv) = interval {
                    tokio::time::sleep_until(start + iv.mul_f64(i as f64)).await;
                }
                let take = batch.min(limit - i);
                let picks: Vec<usize> = (i..i + take)
                    .map(|k| ((w as u64 + k * n as u64) % total_tasks) as usize)
                    .collect();
                let results = if take == 1 {
                    vec![
                        publisher
                            .publish_encoded(&tasks[picks[0]], "load", &data, &opts)
                            .await,
                    ]
                } else {
                    let events: Vec<Outgoing<'_>> = picks
                        .iter()
                        .map(|&t| Outgoing {
                            task: &tasks[t],
                            kind: "load",
                            data: &data,
                            opts: opts.clone(),
                        })
                        .collect();
                    publisher.publish_batch(&events).await
                };
                for (t, r) in picks.iter().zip(results) {
                    match r {
                        Ok(p) => {
                            last_seq[*t].fetch_max(p.seq, Ordering::Relaxed);
                            stats.published.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if stats.publish_errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                tracing::warn!(cause = %e, "publish failed");
                            }
                        }
                    }
                }
                i += take;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}
