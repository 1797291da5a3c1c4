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
