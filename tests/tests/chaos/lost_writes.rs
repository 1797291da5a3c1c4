//! A Redis Cluster failover that loses the primary's acknowledged tail,
//! seen by clients that hold positions (`<seq>.<tag>`) of it. Unlike a
//! wipe or a restart without persistence, the task's meta survives on the
//! promoted replica: the epoch is the same, and only the fingerprint of the
//! event at the client's seq tells the two histories apart.
//!
//! The scenario is made deterministic: the first events are confirmed by
//! the replica (`WAIT`), then the replica is stopped (SIGSTOP) and its link
//! cut while the primary acknowledges the tail, the primary is killed and
//! the replica resumed and promoted.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use sluice_shared::{shard_of, Position, DEFAULT_SHARDS};
use sluice_tests::cluster::RedisCluster;
use sluice_tests::{unique_task, EdgeHandle, SseClient, SseFrame, TestEdge};

const T: Duration = Duration::from_secs(15);
/// Failure detection (node timeout 2 s), election, and the edge finding
/// the new primary.
const FAILOVER: Duration = Duration::from_secs(30);
const RESET: &str = "sluice.reset";
/// Events the replica confirmed; the tail up to `N` is the primary's only.
const K: u64 = 5;
const N: u64 = 10;
/// The new history goes on past `N`, to `M`.
const M: u64 = 13;

fn data(history: &str, i: u64) -> Value {
    json!({ "h": history, "i": i })
}

/// Publishes event `i` of `history` with seq `i`, retrying (same
/// idempotency key) while the task's slots have no primary.
async fn publish(p: &Publisher, task: &str, history: &str, i: u64) {
    let opts = PublishOptions {
        is_final: false,
        idempotency_key: Some(format!("{history}-{i}")),
    };
    let end = tokio::time::Instant::now() + FAILOVER;
    loop {
        match p
            .publish_with(task, "progress", &data(history, i), opts.clone())
            .await
        {
            Ok(r) => {
                assert_eq!(r.seq, i, "{history} event {i} got seq {}", r.seq);
                return;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < end,
                    "publish kept failing: {e}"
                );
                // Polling the cluster until it serves the slot again.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn position(f: &SseFrame) -> Position {
    let id = f.id.as_deref().expect("id");
    let p = Position::parse(id).expect("the id is a position");
    assert!(p.tag.is_some(), "a tagged position: {id}");
    p
}

async fn sse(edge: &EdgeHandle, task: &str, last_event_id: &str) -> SseClient {
    let c = SseClient::connect_with(
        &edge.url(&format!("/v1/tasks/{task}/events")),
        None,
        &[("last-event-id", last_event_id)],
    )
    .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.refused(), None);
    c
}

fn assert_event(f: &SseFrame, seq: u64, history: &str) {
    assert_ne!(f.event.as_deref(), Some(RESET), "{f:?}");
    assert_eq!(f.seq(), Some(seq), "{f:?}");
    assert_eq!(f.json()["data"], data(history, seq), "{f:?}");
}

fn assert_reset(f: &SseFrame, seq: u64, latest: &Value) {
    assert_eq!(
        f.event.as_deref(),
        Some(RESET),
        "the events after this client's position were lost: expected a reset, got {f:?}"
    );
    assert_eq!(f.seq(), Some(seq), "{f:?}");
    assert_eq!(f.json()["latest"]["data"], *latest, "{f:?}");
}

/// A client that left holding the position of seq `N` (acknowledged by
/// the primary only) resumes after the failover, once the task is past
/// `N` again in the new history: a reset, although the epoch is the same.
/// A position of the kept part (seq `K`) resumes exactly, without one. A
/// client that stayed connected through the failover gets a reset when
/// its node re-attaches to the promoted replica (the task is then behind
/// the client: seq `K` < `N`), then the new history live. That reset comes
/// from comparing seqs, not tags: nothing is published until it arrived,
/// as a cluster offers no way to hold the node back while the new history
/// passes the client (the tag check of a connected client is tested on a
/// single Redis behind a paused proxy, `it/lost_writes.rs`).
///
/// Checked: with `Subscription::open` ignoring tags, or with the re-sync's
/// `verify` a no-op, the resume from seq `N` gets `N+1..` silently and
/// this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_losing_the_tail_resets_its_positions() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let edge = TestEdge::on(&url).node("lw").start().await;
    let p = Publisher::connect(&url).await.expect("publisher");
    let replicated = Publisher::connect_with(
        &url,
        PublisherConfig {
            wait_replicas: 1,
            wait_timeout: Duration::from_secs(5),
            ..PublisherConfig::default()
        },
    )
    .await
    .expect("publisher");
    let task = unique_task("lwpos");
    let primary = cluster.primary_of_shard(shard_of(&task, DEFAULT_SHARDS));
    let replica = cluster.replica_of(primary);

    // 1..K, confirmed by the replica.
    for i in 1..=K {
        publish(&replicated, &task, "kept", i).await;
    }
    let mut connected =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    for seq in 1..=K {
        assert_event(&connected.next_event(T).await.expect("event"), seq, "kept");
    }

    // K+1..N, acknowledged by the primary alone.
    cluster.signal(replica, true);
    cluster.cut_replication(primary);
    for i in K + 1..=N {
        publish(&p, &task, "lost", i).await;
    }
    for seq in K + 1..=N {
        assert_event(&connected.next_event(T).await.expect("event"), seq, "lost");
    }
    let mut c = sse(&edge, &task, "0").await;
    let mut seen = Vec::new();
    for seq in 1..=N {
        let f = c.next_event(T).await.expect("event");
        assert_event(&f, seq, if seq <= K { "kept" } else { "lost" });
        seen.push(position(&f));
    }
    drop(c);
    let (kept_k, lost_n) = (seen[K as usize - 1], seen[N as usize - 1]);

    cluster.kill(primary);
    cluster.signal(replica, false);
    cluster.wait_promoted(replica, FAILOVER);

    // The connected client: its node re-attaches to the promoted replica,
    // which holds the task at seq K.
    let f = connected.next_event(FAILOVER).await.expect("reset");
    assert_reset(&f, K, &data("kept", K));

    // The new history reuses K+1..N and goes on to M.
    for i in K + 1..=M {
        publish(&p, &task, "new", i).await;
    }
    for seq in K + 1..=M {
        assert_event(&connected.next_event(T).await.expect("event"), seq, "new");
    }

    // The position of seq N: same epoch, another event at that seq.
    let mut c = sse(&edge, &task, &lost_n.to_string()).await;
    let f = c.next_event(T).await.expect("reset");
    assert_reset(&f, M, &data("new", M));
    let reset_at = position(&f);
    assert_eq!(
        reset_at.tag.map(|t| t.epoch()),
        lost_n.tag.map(|t| t.epoch()),
        "the task kept its epoch (its meta survived): the fingerprint told the histories apart"
    );
    drop(c);

    // The position of seq K is in both histories: exact resume, no reset.
    let mut c = sse(&edge, &task, &kept_k.to_string()).await;
    for seq in K + 1..=M {
        assert_event(&c.next_event(T).await.expect("event"), seq, "new");
    }
}
