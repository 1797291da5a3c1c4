//! The `Store` contract, clause by clause, run against every implementation
//! (memory, Redis, Redis Cluster) by the integration tests.
//!
//! Each clause is an `async fn(Arc<dyn Store>)` on a task of its own, and
//! [`store_conformance!`](crate::store_conformance) makes one `#[tokio::test]`
//! per clause for a backend, so a failure names the clause and the backend
//! (`store_conformance::redis::final_closes_the_task`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishError, PublishOptions, PublisherConfig};
use sluice_edge::store::{FeedSink, PageLimit, Store, StoreError};
use sluice_shared::event::TaskState;
use sluice_shared::{StoredEvent, TaskId};
use tokio_util::sync::CancellationToken;

use crate::{unique_task, wait_until};

/// One `#[tokio::test]` per clause of the `Store` contract, in a module
/// named after the backend. `$setup` is an async fn (a path, resolved from
/// inside that module: `super::...`) returning the store and whatever must
/// outlive the test (a container, a cluster, a lock).
///
/// ```ignore
/// sluice_tests::store_conformance!(memory, super::memory_store);
/// ```
#[macro_export]
macro_rules! store_conformance {
    ($backend:ident, $setup:path) => {
        $crate::store_conformance!(@clauses $backend, $setup,
            unknown_task_has_no_snapshot_and_no_history,
            seqs_start_at_one_without_gaps,
            idempotent_retry_returns_the_first_seq,
            snapshot_shows_the_latest_event,
            history_pages_after_a_seq,
            history_pages_stop_at_their_byte_budget,
            bad_input_is_refused_and_stores_nothing,
            final_event_closes_the_task,
            log_is_trimmed_to_its_cap_and_stays_contiguous,
            feed_delivers_every_event_once_in_order,
        );
    };
    (@clauses $backend:ident, $setup:path, $($clause:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $clause() {
                    $crate::init_logs();
                    let (store, _keep) = $setup().await;
                    $crate::conformance::$clause(store).await;
                }
            )+
        }
    };
}

#[derive(Default)]
pub struct Collect {
    events: Mutex<Vec<StoredEvent>>,
    live: std::sync::atomic::AtomicBool,
}

impl FeedSink for Collect {
    fn wants(&self, _task: &str) -> bool {
        true
    }
    fn deliver(&self, event: &StoredEvent) {
        self.events.lock().expect("lock").push(event.clone());
    }
    fn resync(&self) {}
    fn set_live(&self, live: bool) {
        self.live.store(live, std::sync::atomic::Ordering::SeqCst);
    }
}

pub fn config() -> PublisherConfig {
    PublisherConfig {
        log_cap: 50,
        ..PublisherConfig::default()
    }
}

fn opts(is_final: bool, key: Option<&str>) -> PublishOptions {
    PublishOptions {
        is_final,
        idempotency_key: key.map(String::from),
    }
}

fn new_task(prefix: &str) -> TaskId {
    TaskId::parse(&unique_task(prefix)).expect("task")
}

/// Seqs 1, 2, 3 with no gaps.
async fn publish_three(store: &dyn Store, task: &TaskId) {
    for i in 1..=3u64 {
        let p = store
            .publish(task, "progress", &json!({"i": i}), &opts(false, None))
            .await
            .expect("publish");
        assert_eq!(p.seq, i);
        assert!(!p.duplicate);
    }
}

/// Seq 4 with the idempotency key `k4`, then its retry: the retry returns
/// the first seq and appends nothing.
async fn publish_keyed_twice(store: &dyn Store, task: &TaskId) {
    let a = store
        .publish(task, "progress", &json!({"i": 4}), &opts(false, Some("k4")))
        .await
        .expect("publish");
    let b = store
        .publish(task, "progress", &json!({"i": 4}), &opts(false, Some("k4")))
        .await
        .expect("retry");
    assert_eq!((a.seq, a.duplicate), (4, false));
    assert_eq!((b.seq, b.duplicate), (4, true));
}

/// Seqs 1 to 4 as [`publish_three`] and [`publish_keyed_twice`] write them.
async fn publish_four(store: &dyn Store, task: &TaskId) {
    publish_three(store, task).await;
    publish_keyed_twice(store, task).await;
}

/// The final event (seq 5, key `fin`) after [`publish_four`]; later
/// publishes are refused, but a retry of the final publish with its key
/// answers its seq.
async fn publish_final(store: &dyn Store, task: &TaskId) {
    let f = store
        .publish(task, "done", &json!({"ok": true}), &opts(true, Some("fin")))
        .await
        .expect("final");
    assert_eq!(f.seq, 5);
    let r = store
        .publish(task, "late", &json!(1), &opts(false, None))
        .await;
    assert!(
        matches!(r, Err(StoreError::Publish(PublishError::Closed(_)))),
        "{r:?}"
    );
    let again = store
        .publish(task, "done", &json!({"ok": true}), &opts(true, Some("fin")))
        .await
        .expect("retried final");
    assert_eq!((again.seq, again.duplicate), (5, true));
}

/// 400 events on a task of its own (prefix `conf-long`).
async fn publish_long(store: &dyn Store) -> TaskId {
    let long = new_task("conf-long");
    for _ in 0..400 {
        store
            .publish(&long, "p", &json!(0), &opts(false, None))
            .await
            .expect("publish");
    }
    long
}

pub async fn unknown_task_has_no_snapshot_and_no_history(store: Arc<dyn Store>) {
    let task = new_task("conf");
    assert!(store.snapshot(&task).await.expect("snapshot").is_none());
    assert!(store
        .history(&task, 0, PageLimit::events(10))
        .await
        .expect("history")
        .events
        .is_empty());
}

pub async fn seqs_start_at_one_without_gaps(store: Arc<dyn Store>) {
    publish_three(&*store, &new_task("conf")).await;
}

pub async fn idempotent_retry_returns_the_first_seq(store: Arc<dyn Store>) {
    let task = new_task("conf");
    publish_three(&*store, &task).await;
    publish_keyed_twice(&*store, &task).await;
}

pub async fn snapshot_shows_the_latest_event(store: Arc<dyn Store>) {
    let task = new_task("conf");
    publish_four(&*store, &task).await;
    let s = store
        .snapshot(&task)
        .await
        .expect("snapshot")
        .expect("known");
    assert_eq!(s.seq, 4);
    assert_eq!(s.state, TaskState::Open);
    assert_eq!(s.latest.data, json!({"i": 4}));
    assert_eq!(s.latest.seq, 4);
}

pub async fn history_pages_after_a_seq(store: Arc<dyn Store>) {
    let task = new_task("conf");
    publish_four(&*store, &task).await;
    let h = store
        .history(&task, 1, PageLimit::events(2))
        .await
        .expect("history");
    assert_eq!(
        h.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(h.more, "a page that stopped at its event limit says so");
    let h = store
        .history(&task, 1, PageLimit::events(10))
        .await
        .expect("history");
    assert_eq!(seqs(&h), vec![2, 3, 4]);
    assert!(!h.more, "a page that reached the end of the log says so");
    let h = store
        .history(&task, 4, PageLimit::events(10))
        .await
        .expect("history");
    assert!(h.events.is_empty() && !h.more);
    let h = store
        .history(&task, u64::MAX, PageLimit::events(10))
        .await
        .expect("history");
    assert!(h.events.is_empty());
}

fn seqs(page: &sluice_edge::store::HistoryPage) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

/// A page ends with the event whose envelope brings it to the byte budget,
/// holds at least one event however small the budget, and says `more`;
/// reading on from its last seq gives the rest, each event once.
pub async fn history_pages_stop_at_their_byte_budget(store: Arc<dyn Store>) {
    let task = new_task("conf-bytes");
    let blob = "b".repeat(10_000);
    for i in 1..=7 {
        store
            .publish(
                &task,
                "p",
                &json!({"i": i, "blob": blob}),
                &opts(false, None),
            )
            .await
            .expect("publish");
    }
    // Envelopes of ~10 100 bytes: the third reaches 25 000.
    let h = store
        .history(&task, 0, PageLimit::new(1000, 25_000))
        .await
        .expect("history");
    assert_eq!(seqs(&h), vec![1, 2, 3]);
    assert!(h.more);
    let bytes: usize = h.events.iter().map(|e| e.json.len()).sum();
    assert!((25_000..25_000 + 10_200).contains(&bytes), "{bytes} bytes");
    let h = store
        .history(&task, 0, PageLimit::new(1000, 1))
        .await
        .expect("history");
    assert_eq!(seqs(&h), vec![1], "at least one event, whatever the budget");
    assert!(h.more);
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let h = store
            .history(&task, after, PageLimit::new(1000, 25_000))
            .await
            .expect("history");
        all.extend(seqs(&h));
        let Some(last) = h.events.last() else { break };
        after = last.seq;
        if !h.more {
            break;
        }
    }
    assert_eq!(all, (1..=7).collect::<Vec<_>>());
}

pub async fn bad_input_is_refused_and_stores_nothing(store: Arc<dyn Store>) {
    let task = new_task("conf");
    publish_four(&*store, &task).await;
    for kind in ["", "sluice.reset", "has space", &"x".repeat(65)] {
        let r = store
            .publish(&task, kind, &json!(null), &opts(false, None))
            .await;
        assert!(
            matches!(r, Err(StoreError::Publish(PublishError::InvalidType(_)))),
            "{kind:?}: {r:?}"
        );
    }
    let big = json!("x".repeat(70 * 1024));
    let r = store.publish(&task, "big", &big, &opts(false, None)).await;
    assert!(
        matches!(r, Err(StoreError::Publish(PublishError::TooLarge { .. }))),
        "{r:?}"
    );
    assert_eq!(store.snapshot(&task).await.expect("s").expect("s").seq, 4);
}

pub async fn final_event_closes_the_task(store: Arc<dyn Store>) {
    let task = new_task("conf");
    publish_four(&*store, &task).await;
    publish_final(&*store, &task).await;
    let s = store.snapshot(&task).await.expect("s").expect("s");
    assert_eq!((s.seq, s.state), (5, TaskState::Closed));
    assert!(s.latest.is_final);
}

/// The log keeps at most log_cap (50, approximately on Redis) entries; the
/// first retained seq then is > 1.
pub async fn log_is_trimmed_to_its_cap_and_stays_contiguous(store: Arc<dyn Store>) {
    let long = publish_long(&*store).await;
    let h = store
        .history(&long, 0, PageLimit::events(1000))
        .await
        .expect("history")
        .events;
    assert!(h.len() < 400, "log was trimmed ({} kept)", h.len());
    assert!(h[0].seq > 1);
    assert_eq!(h.last().map(|e| e.seq), Some(400));
    for w in h.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "retained history is contiguous");
    }
}

/// The feed delivers every event of a task once, in order (retries and
/// refused publishes included in what was tried), and stops on cancel.
pub async fn feed_delivers_every_event_once_in_order(store: Arc<dyn Store>) {
    let sink = Arc::new(Collect::default());
    let cancel = CancellationToken::new();
    let feed = {
        let store = store.clone();
        let sink: Arc<dyn FeedSink> = sink.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { store.run_feed(sink, cancel).await })
    };
    wait_until("feed live", Duration::from_secs(10), || {
        let s = sink.clone();
        async move { s.live.load(std::sync::atomic::Ordering::SeqCst) }
    })
    .await;

    let task = new_task("conf");
    publish_four(&*store, &task).await;
    publish_final(&*store, &task).await;
    // Published after `task`'s events: once the feed delivered them all,
    // it has delivered everything of `task` it ever will.
    let long = publish_long(&*store).await;

    wait_until("feed caught up", Duration::from_secs(10), || {
        let s = sink.clone();
        let long = long.clone();
        async move {
            s.events
                .lock()
                .expect("lock")
                .iter()
                .filter(|e| e.task == long.as_str())
                .count()
                >= 400
        }
    })
    .await;
    let seen: Vec<u64> = sink
        .events
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| e.task == task.as_str())
        .map(|e| e.seq)
        .collect();
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);

    cancel.cancel();
    // On a cluster a reader may finish its current bounded BLOCK first.
    tokio::time::timeout(Duration::from_secs(30), feed)
        .await
        .expect("feed stops on cancel")
        .expect("feed task");
}

/// The contract of [`Publisher::publish_batch`], on whatever Redis the
/// publisher points at (one Redis or a cluster): one result per event in
/// order, per-task order kept across shards, failures in place, retries
/// with idempotency keys deduplicated, the history as published.
pub async fn publish_batch_contract(p: &sluice_broker::Publisher) {
    use sluice_broker::{Outgoing, PublishError, PublishOptions};
    use sluice_shared::{codec, TaskId};

    let tasks: Vec<TaskId> = (0..6)
        .map(|_| TaskId::parse(&crate::unique_task("batch")).expect("id"))
        .collect();
    let closed = TaskId::parse(&crate::unique_task("batch-closed")).expect("id");
    p.finish(closed.as_str(), "done", &serde_json::json!(null))
        .await
        .expect("close a task");
    let data: Vec<Vec<u8>> = (0..5)
        .map(|i| codec::encode_data(&serde_json::json!({ "i": i })).expect("encode"))
        .collect();
    let mut batch = Vec::new();
    for (i, d) in data.iter().enumerate() {
        for t in &tasks {
            batch.push(Outgoing {
                task: t,
                kind: "progress",
                data: d,
                opts: PublishOptions {
                    is_final: false,
                    idempotency_key: Some(format!("k{i}")),
                },
            });
        }
    }
    let bad = codec::encode_data(&serde_json::json!(1)).expect("encode");
    batch.push(Outgoing {
        task: &tasks[0],
        kind: "bad type!",
        data: &bad,
        opts: PublishOptions::default(),
    });
    batch.push(Outgoing {
        task: &closed,
        kind: "progress",
        data: &bad,
        opts: PublishOptions::default(),
    });
    let results = p.publish_batch(&batch).await;
    assert_eq!(results.len(), batch.len(), "one result per event");
    for (n, r) in results.iter().take(30).enumerate() {
        let want_seq = (n / tasks.len()) as u64 + 1;
        match r {
            Ok(pb) => assert_eq!((pb.seq, pb.duplicate), (want_seq, false), "event {n}"),
            Err(e) => panic!("event {n} failed: {e}"),
        }
    }
    assert!(
        matches!(results[30], Err(PublishError::InvalidType(_))),
        "{:?}",
        results[30]
    );
    assert!(
        matches!(results[31], Err(PublishError::Closed(_))),
        "{:?}",
        results[31]
    );

    // A retried batch appends nothing: the same seqs, marked duplicates.
    let again = p.publish_batch(&batch[..30]).await;
    for (n, r) in again.iter().enumerate() {
        let pb = r.as_ref().expect("retry answered");
        assert_eq!((pb.seq, pb.duplicate), ((n / tasks.len()) as u64 + 1, true));
    }

    // Stored in batch order, data intact.
    let mut conn = p.pool().get().await.expect("conn");
    for t in &tasks {
        let h = sluice_broker::reader::history(&mut conn, t, p.config().shards, 0, 100)
            .await
            .expect("history");
        let got: Vec<(u64, serde_json::Value)> = h.into_iter().map(|e| (e.seq, e.data)).collect();
        let want: Vec<(u64, serde_json::Value)> = (0..5)
            .map(|i| (i as u64 + 1, serde_json::json!({ "i": i })))
            .collect();
        assert_eq!(got, want, "{t}");
    }
}
