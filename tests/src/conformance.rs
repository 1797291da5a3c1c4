//! The `Store` contract as one suite, run against every implementation
//! (memory, Redis, Redis Cluster) by the integration tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishError, PublishOptions, PublisherConfig};
use sluice_edge::store::{FeedSink, Store, StoreError};
use sluice_shared::event::TaskState;
use sluice_shared::{StoredEvent, TaskId};
use tokio_util::sync::CancellationToken;

use crate::{unique_task, wait_until};

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

pub async fn conformance(store: Arc<dyn Store>) {
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

    let task = TaskId::parse(&unique_task("conf")).expect("task");

    // Unknown task.
    assert!(store.snapshot(&task).await.expect("snapshot").is_none());
    assert!(store
        .history(&task, 0, 10)
        .await
        .expect("history")
        .is_empty());

    // Seqs 1, 2, 3 with no gaps.
    for i in 1..=3u64 {
        let p = store
            .publish(&task, "progress", &json!({"i": i}), &opts(false, None))
            .await
            .expect("publish");
        assert_eq!(p.seq, i);
        assert!(!p.duplicate);
    }

    // Idempotency: a retry returns the first seq and appends nothing.
    let a = store
        .publish(
            &task,
            "progress",
            &json!({"i": 4}),
            &opts(false, Some("k4")),
        )
        .await
        .expect("publish");
    let b = store
        .publish(
            &task,
            "progress",
            &json!({"i": 4}),
            &opts(false, Some("k4")),
        )
        .await
        .expect("retry");
    assert_eq!((a.seq, a.duplicate), (4, false));
    assert_eq!((b.seq, b.duplicate), (4, true));

    // Snapshot.
    let s = store
        .snapshot(&task)
        .await
        .expect("snapshot")
        .expect("known");
    assert_eq!(s.seq, 4);
    assert_eq!(s.state, TaskState::Open);
    assert_eq!(s.latest.data, json!({"i": 4}));
    assert_eq!(s.latest.seq, 4);

    // History pages.
    let h = store.history(&task, 1, 2).await.expect("history");
    assert_eq!(h.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    let h = store.history(&task, 4, 10).await.expect("history");
    assert!(h.is_empty());
    let h = store.history(&task, u64::MAX, 10).await.expect("history");
    assert!(h.is_empty());

    // Bad input is refused and stores nothing.
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

    // Final closes the task; later publishes are refused, but a retry of
    // the final publish with its key answers its seq.
    let f = store
        .publish(
            &task,
            "done",
            &json!({"ok": true}),
            &opts(true, Some("fin")),
        )
        .await
        .expect("final");
    assert_eq!(f.seq, 5);
    let r = store
        .publish(&task, "late", &json!(1), &opts(false, None))
        .await;
    assert!(
        matches!(r, Err(StoreError::Publish(PublishError::Closed(_)))),
        "{r:?}"
    );
    let again = store
        .publish(
            &task,
            "done",
            &json!({"ok": true}),
            &opts(true, Some("fin")),
        )
        .await
        .expect("retried final");
    assert_eq!((again.seq, again.duplicate), (5, true));
    let s = store.snapshot(&task).await.expect("s").expect("s");
    assert_eq!((s.seq, s.state), (5, TaskState::Closed));
    assert!(s.latest.is_final);

    // The log keeps at most log_cap (50, approximately on Redis) entries;
    // the first retained seq then is > 1.
    let long = TaskId::parse(&unique_task("conf-long")).expect("task");
    for _ in 0..400 {
        store
            .publish(&long, "p", &json!(0), &opts(false, None))
            .await
            .expect("publish");
    }
    let h = store.history(&long, 0, 1000).await.expect("history");
    assert!(h.len() < 400, "log was trimmed ({} kept)", h.len());
    assert!(h[0].seq > 1);
    assert_eq!(h.last().map(|e| e.seq), Some(400));
    for w in h.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "retained history is contiguous");
    }

    // The feed delivered every event of `task` once, in order.
    wait_until("feed caught up", Duration::from_secs(10), || {
        let s = sink.clone();
        async move {
            s.events
                .lock()
                .expect("lock")
                .iter()
                .filter(|e| e.task.starts_with("conf-long"))
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
