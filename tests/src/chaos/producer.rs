//! The producer of a fault scenario: `workers` tasks publishing round-robin
//! over their share of the scenario's tasks, one event per task every
//! `interval`, through whatever the scenario does to Redis.
//!
//! A publish that fails is retried with the same idempotency key until Redis
//! answers, so a reply lost in a fault never turns into a duplicate. Every
//! publish carries a *mark* in its data (`"mark": n`, unique in the run), so
//! a client's event can be told apart from another one with the same seq.
//! What Redis acknowledged is recorded per task as *histories* of marks: an
//! acknowledged seq at or below the previous one means Redis lost writes
//! (restart without persistence, a failover that lost a primary's tail) and
//! numbering went on from what it kept. That record is what the checker
//! compares every client against, by content
//! ([`crate::DeliveryLog::check_histories`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one publish is retried before the scenario fails.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct ProducerSpec {
    pub tasks: Vec<String>,
    pub workers: usize,
    /// Pause between two rounds of one worker (one event per task a round).
    pub interval: Duration,
    pub config: PublisherConfig,
}

/// Per task: the last acknowledged seq of each history (each numbered from
/// 1).
pub type Epochs = HashMap<String, Vec<u64>>;

/// Per task: the marks of each history it had, `h[k]` being seq `k + 1`.
pub type Histories = HashMap<String, Vec<Vec<u64>>>;

/// The mark of an event's payload (`data.mark`).
pub fn mark_of(data: &serde_json::Value) -> Option<u64> {
    data.get("mark").and_then(serde_json::Value::as_u64)
}

#[derive(Default)]
struct Record {
    histories: Mutex<Histories>,
    published: AtomicU64,
    retries: AtomicU64,
    /// The next mark (marks start at 1).
    marks: AtomicU64,
}

impl Record {
    fn next_mark(&self) -> u64 {
        self.marks.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn ack(&self, task: &str, seq: u64, mark: u64) {
        let mut all = self.histories.lock().unwrap_or_else(|p| p.into_inner());
        let hs = all.entry(task.to_owned()).or_default();
        crate::checker::record_ack(hs, seq, mark);
        self.published.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Producer {
    publisher: Publisher,
    spec: ProducerSpec,
    record: Arc<Record>,
    stop: CancellationToken,
    /// While true, workers publish nothing (finals still go out).
    hold: watch::Sender<bool>,
    /// Workers in the middle of a round.
    busy: Arc<AtomicUsize>,
    workers: JoinSet<()>,
}

/// What the producer did, for the checker and the report.
#[derive(Debug, Clone)]
pub struct Produced {
    pub histories: Histories,
    pub published: u64,
    pub retries: u64,
}

/// The last seq of each history, per task.
fn epochs_of(histories: &Histories) -> Epochs {
    histories
        .iter()
        .map(|(t, hs)| (t.clone(), hs.iter().map(|h| h.len() as u64).collect()))
        .collect()
}

impl Producer {
    /// Connects (Redis must be up) and starts publishing.
    pub async fn start(url: &str, spec: ProducerSpec) -> Producer {
        let publisher = Publisher::connect_with(url, spec.config.clone())
            .await
            .expect("producer connects");
        let record = Arc::new(Record::default());
        let stop = CancellationToken::new();
        let (hold, _) = watch::channel(false);
        let busy = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        let n = spec.workers.max(1);
        for w in 0..n {
            let mine: Vec<String> = spec.tasks.iter().skip(w).step_by(n).cloned().collect();
            let (p, r, s, interval) = (
                publisher.clone(),
                record.clone(),
                stop.clone(),
                spec.interval,
            );
            let mut held = hold.subscribe();
            let busy = busy.clone();
            workers.spawn(async move {
                let mut round = 0u64;
                while !s.is_cancelled() {
                    // Announce the round before looking at the hold flag, so
                    // `hold` either sees this round or this round sees it.
                    busy.fetch_add(1, Ordering::SeqCst);
                    if *held.borrow() {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        // Cancel-safe: `cancelled` and `wait_for`.
                        tokio::select! {
                            biased;
                            _ = s.cancelled() => break,
                            _ = held.wait_for(|h| !*h) => {}
                        }
                        continue;
                    }
                    for task in &mine {
                        let key = format!("r{round}");
                        let data = json!({ "round": round, "mark": r.next_mark() });
                        publish(&p, &r, task, "progress", data, false, &key).await;
                    }
                    busy.fetch_sub(1, Ordering::SeqCst);
                    round += 1;
                    // Cancel-safe: `cancelled` and `sleep`.
                    tokio::select! {
                        biased;
                        _ = s.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            });
        }
        Producer {
            publisher,
            spec,
            record,
            stop,
            hold,
            busy,
            workers,
        }
    }

    /// Events acknowledged so far.
    pub fn published(&self) -> u64 {
        self.record.published.load(Ordering::Relaxed)
    }

    /// Stops publishing until [`Producer::release`]; returns once rounds
    /// in progress completed, so nothing is published after it returns.
    pub async fn hold(&self) {
        self.hold.send_replace(true);
        let busy = self.busy.clone();
        crate::wait_until("producer rounds finished", RETRY_FOR, || {
            let busy = busy.clone();
            async move { busy.load(Ordering::SeqCst) == 0 }
        })
        .await;
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    /// The last acknowledged seq of each history so far, per task.
    pub fn epochs(&self) -> Epochs {
        epochs_of(
            &self
                .record
                .histories
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Waits until at least `n` events were acknowledged.
    pub async fn wait_published(&self, n: u64, deadline: Duration) {
        let r = self.record.clone();
        crate::wait_until("producer progress", deadline, || {
            let r = r.clone();
            async move { r.published.load(Ordering::Relaxed) >= n }
        })
        .await;
    }

    /// Stops the workers and publishes every task's final event.
    pub async fn finish(mut self) -> Produced {
        self.stop.cancel();
        while self.workers.join_next().await.is_some() {}
        let mut finals = JoinSet::new();
        for task in self.spec.tasks.clone() {
            let (p, r) = (self.publisher.clone(), self.record.clone());
            finals.spawn(async move {
                let data = json!({ "ok": true, "mark": r.next_mark() });
                publish(&p, &r, &task, "done", data, true, "final").await;
            });
        }
        while finals.join_next().await.is_some() {}
        Produced {
            histories: self
                .record
                .histories
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            published: self.record.published.load(Ordering::Relaxed),
            retries: self.record.retries.load(Ordering::Relaxed),
        }
    }
}

/// One event, retried with the same idempotency key until acknowledged.
async fn publish(
    p: &Publisher,
    r: &Record,
    task: &str,
    kind: &str,
    data: serde_json::Value,
    is_final: bool,
    key: &str,
) {
    let opts = PublishOptions {
        is_final,
        idempotency_key: Some(key.to_owned()),
    };
    let end = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        match p.publish_with(task, kind, &data, opts.clone()).await {
            Ok(done) => {
                r.ack(task, done.seq, mark_of(&data).unwrap_or(0));
                return;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < end,
                    "publish to {task} kept failing for {RETRY_FOR:?}: {e}"
                );
                r.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
