//! Micro-benchmarks of the per-event encoding work: the MessagePack codec
//! (what the feed reader decodes once per event), the JSON envelope and the
//! SSE frame (what the hub builds once per event per node).
//!
//! `cargo bench -p sluice-tests --bench codec`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_edge::wire::{sse_frame, Event};
use sluice_shared::{codec, Position, StoredEvent};
use std::hint::black_box;

fn event(payload: usize) -> StoredEvent {
    StoredEvent {
        task: "job-42".into(),
        seq: 17,
        kind: "progress".into(),
        data: serde_json::json!({"pct": 40, "msg": "x".repeat(payload)}),
        ts: 1_795_410_000_123,
        is_final: false,
        epoch: 0,
    }
}

fn codec_benches(c: &mut Criterion) {
    for payload in [16usize, 1024] {
        let ev = event(payload);
        let bytes = codec::encode_event(&ev).expect("encode");
        let mut g = c.benchmark_group(format!("codec/{payload}B"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("encode_event", |b| {
            b.iter(|| codec::encode_event(black_box(&ev)))
        });
        g.bench_function("decode_event", |b| {
            b.iter(|| codec::decode_event(black_box(&bytes)))
        });
        g.bench_function("envelope_json", |b| {
            b.iter(|| black_box(&ev).envelope_json())
        });
        let json = ev.envelope_json();
        let pos = Position::of(&ev);
        g.bench_function("sse_frame", |b| {
            b.iter(|| sse_frame(black_box(pos), "progress", black_box(&json)))
        });
        g.bench_function("Event::from_stored", |b| {
            b.iter(|| Event::from_stored(black_box(&ev)))
        });
        g.bench_function("decode+from_stored", |b| {
            b.iter(|| {
                let ev = codec::decode_event(black_box(&bytes)).expect("decode");
                Event::from_stored(&ev)
            })
        });
        g.finish();
    }
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
