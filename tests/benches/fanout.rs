//! Micro-benchmark of the hub's fan-out: one feed event delivered to 1, 100
//! and 10 000 local subscribers of one task (encode once, `try_send` an
//! `Arc` into each bounded queue), receivers drained after each event the
//! way connections would (through `Mux::next_ready`, one connection per
//! subscriber, over the memory store).
//!
//! `cargo bench -p sluice-tests --bench fanout`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_edge::hub::{ConnQueue, Hub};
use sluice_edge::metrics::Metrics;
use sluice_edge::store::memory::MemoryStore;
use sluice_edge::store::{FeedSink, Store};
use sluice_edge::subscription::{Mode, Mux, Opened, Start, Subscriptions};
use sluice_shared::{StoredEvent, TaskId};

fn event(seq: u64) -> StoredEvent {
    StoredEvent {
        task: "bench-task".into(),
        seq,
        kind: "progress".into(),
        data: serde_json::json!({"pct": 40, "msg": "hello"}),
        ts: 1_795_410_000_123,
        is_final: false,
        epoch: 0,
    }
}

fn fanout(c: &mut Criterion) {
    let task = TaskId::parse("bench-task").expect("task");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Default::default()));
    let mut g = c.benchmark_group("hub_fanout");
    for n in [1usize, 100, 10_000] {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(256, metrics.clone());
        let opener = Subscriptions::new(
            hub.clone(),
            store.clone(),
            metrics.clone(),
            sluice_edge::store::PageLimit::events(256),
        );
        let mut subs: Vec<Mux> = (0..n)
            .map(|_| {
                let mut mux = opener.mux(Mode::All, true);
                let opened = rt
                    .block_on(mux.open(task.clone(), Start::after(0)))
                    .expect("open");
                assert_eq!(opened, Opened::Streaming);
                mux
            })
            .collect();
        // A few unrelated tasks so the map lookup is not trivial.
        let queue = ConnQueue::new(16);
        let others: Vec<_> = (0..100)
            .map(|i| hub.register(&TaskId::parse(&format!("other-{i}")).expect("task"), &queue))
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        let mut seq = 0u64;
        g.bench_function(format!("deliver+drain/{n}"), |b| {
            b.iter_batched(
                || {
                    seq += 1;
                    event(seq)
                },
                |ev| {
                    hub.deliver(&ev);
                    let mut got = 0usize;
                    for s in subs.iter_mut() {
                        while s.next_ready().is_some() {
                            got += 1;
                        }
                    }
                    assert_eq!(got, n);
                },
                BatchSize::SmallInput,
            )
        });
        drop(others);
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
