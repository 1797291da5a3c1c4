//! Sluice on a real Redis Cluster: three primaries with a replica each
//! (`redis-server` processes on loopback, tests/src/cluster.rs). The store
//! conformance suite, exact resume across nodes, and a primary failover
//! while publishing, judged by the delivery checker.
//!
//! Every test takes the harness's exclusive lock: one cluster at a time, so
//! six `redis-server` processes and failover timing have the machine's two
//! cores to themselves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use sluice_edge::store::redis::RedisStore;
use sluice_edge::store::Store;
use sluice_shared::{shard_of, DEFAULT_SHARDS};
use sluice_tests::checker::record_ack;
use sluice_tests::cluster::RedisCluster;
use sluice_tests::{unique_task, DeliveryLog, SseClient, TestEdge};

const T: Duration = Duration::from_secs(15);

/// A cluster per clause of the store conformance suite, under the
/// exclusive lock (the cluster is dropped before the lock is released).
async fn cluster_store() -> (
    Arc<dyn Store>,
    (RedisCluster, tokio::sync::MutexGuard<'static, ()>),
) {
    let one = sluice_tests::chaos::exclusive().await;
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(
        &cluster.url(),
        "conformance",
        sluice_tests::conformance::config(),
    )
    .await
    .expect("connect to the cluster");
    (Arc::new(store), (cluster, one))
}

sluice_tests::store_conformance!(store_conformance, super::cluster_store);

#[tokio::test]
async fn publish_batch_on_cluster() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let cluster = RedisCluster::start();
    let p = Publisher::connect(&cluster.url()).await.expect("publisher");
    sluice_tests::conformance::publish_batch_contract(&p).await;
}

#[tokio::test]
async fn exact_resume_across_nodes_on_cluster() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let a = TestEdge::on(&url).node("ca").start().await;
    let b = TestEdge::on(&url).node("cb").start().await;
    let p = Publisher::connect(&url).await.expect("publisher");
    // Tasks on several shards (several primaries).
    let tasks: Vec<String> = (0..6).map(|_| unique_task("ctask")).collect();
    let shards: std::collections::BTreeSet<u32> =
        tasks.iter().map(|t| shard_of(t, DEFAULT_SHARDS)).collect();
    assert!(shards.len() >= 3, "tasks spread over shards");
    const N: u64 = 60;
    let mut clients = Vec::new();
    for t in &tasks {
        p.publish(t, "progress", &json!(1)).await.expect("publish");
        let c = SseClient::connect(&a.url(&format!("/v1/tasks/{t}/events?after=0")), None).await;
        assert_eq!(c.status, 200);
        clients.push(c);
    }
    for i in 2..=N / 2 {
        for t in &tasks {
            p.publish(t, "progress", &json!(i)).await.expect("publish");
        }
    }
    let mut logs = Vec::new();
    for c in &mut clients {
        let mut log = DeliveryLog::default();
        while log.received.len() < (N / 2) as usize {
            log.event(c.next_event(T).await.expect("event").seq().expect("id"));
        }
        logs.push(log);
    }
    drop(clients);
    for i in N / 2 + 1..=N {
        for t in &tasks {
            let opts = PublishOptions {
                is_final: i == N,
                idempotency_key: None,
            };
            p.publish_with(t, "progress", &json!(i), opts)
                .await
                .expect("publish");
        }
    }
    for (t, log) in tasks.iter().zip(&mut logs) {
        let mut c = SseClient::connect(&b.url(&format!("/v1/tasks/{t}/events")), log.last()).await;
        while let Some(f) = c.next_event(T).await {
            log.event(f.seq().expect("id"));
        }
        let v = log.check(1, N);
        assert!(v.is_exact(), "{t}: {v:?}");
    }
    println!(
        "cluster resume: {} tasks x {N} events exact across nodes",
        tasks.len()
    );
}

/// A client of the failover scenario: follows `base` (a task's SSE URL)
/// from seq 1 to the final event, reconnecting with its resume point
/// whenever a stream ends early, and logs every event and reset with the
/// producer's mark. Returns the task, the log and its reconnects.
async fn follow_marked(base: String, t: String) -> (String, DeliveryLog, u32) {
    let mut log = DeliveryLog::default();
    let mut reconnects = 0u32;
    loop {
        let mut c =
            SseClient::connect(&format!("{base}?after={}", log.last().unwrap_or(0)), None).await;
        if c.status == 204 {
            break;
        }
        if c.status != 200 {
            reconnects += 1;
            assert!(reconnects < 200, "{t}: too many failed reconnects");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        while let Ok(Some(f)) = c.try_next_event(Duration::from_secs(30)).await {
            let seq = f.seq().expect("id");
            let env = f.json();
            if f.event.as_deref() == Some("sluice.reset") {
                log.marked_reset(seq, env["latest"]["data"]["mark"].as_u64());
            } else {
                log.marked_event(seq, env["data"]["mark"].as_u64());
                if env["final"] == json!(true) {
                    return (t, log, reconnects);
                }
            }
        }
        reconnects += 1;
        assert!(reconnects < 200, "{t}: too many reconnects");
    }
    (t, log, reconnects)
}

/// A primary is killed while a producer publishes; its replica takes over.
/// Replication is asynchronous, so acknowledged writes may be lost. The test
/// knows which case it ran into (every publish carries its round as a mark,
/// and the acknowledged seqs show whether Redis numbered again):
/// - no acknowledged write lost (the usual case on loopback, where the
///   replica gets each write before the client gets its answer): every
///   client saw every seq exactly once, 0 lost, 0 duplicated, 0 resets;
/// - writes lost: every client is judged by content: a justified reset,
///   then exactly the final history; never a silent gap or switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_failover_while_publishing() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let a = TestEdge::on(&url).node("fa").start().await;
    let b = TestEdge::on(&url).node("fb").start().await;
    let config = PublisherConfig {
        pool_size: 8,
        ..PublisherConfig::default()
    };
    let p = Publisher::connect_with(&url, config)
        .await
        .expect("publisher");
    let tasks: Vec<String> = (0..8).map(|_| unique_task("fo")).collect();
    const N: u64 = 300;

    // Clients: one per task per edge.
    let mut clients = tokio::task::JoinSet::new();
    for t in &tasks {
        for edge in [&a, &b] {
            let base = edge.url(&format!("/v1/tasks/{t}/events"));
            clients.spawn(follow_marked(base, t.clone()));
        }
    }

    let victim_shard = shard_of(&tasks[0], DEFAULT_SHARDS);
    let victim = cluster.primary_of_shard(victim_shard);
    let mut acked: std::collections::HashMap<String, Vec<Vec<u64>>> = Default::default();
    let mut publish_errors = 0u64;
    let mut killed_at = None;
    let mut victim_back_after = None;
    let mut longest_stall = Duration::ZERO;
    for i in 1..=N {
        if i == N / 3 {
            cluster.kill(victim);
            killed_at = Some(std::time::Instant::now());
            println!(
                "failover: killed primary 127.0.0.1:{victim} (shard {victim_shard}) at publish {i}"
            );
        }
        for t in &tasks {
            let opts = PublishOptions {
                is_final: i == N,
                idempotency_key: Some(format!("e{i}")),
            };
            // Retry with the same idempotency key until Redis answers.
            let mut tries = 0;
            let started = std::time::Instant::now();
            loop {
                match p
                    .publish_with(t, "progress", &json!({ "mark": i }), opts.clone())
                    .await
                {
                    Ok(r) => {
                        record_ack(acked.entry(t.clone()).or_default(), r.seq, i);
                        longest_stall = longest_stall.max(started.elapsed());
                        if t == &tasks[0] && victim_back_after.is_none() {
                            victim_back_after = killed_at.map(|k| k.elapsed());
                        }
                        break;
                    }
                    Err(e) => {
                        publish_errors += 1;
                        tries += 1;
                        assert!(tries < 400, "publish kept failing: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
    cluster.wait_healed(Duration::from_secs(30));
    let victim_back_after = victim_back_after.unwrap_or_default();
    let renumbered = acked.values().filter(|h| h.len() > 1).count();

    let mut total = sluice_tests::checker::Verdict::default();
    while let Some(r) = clients.join_next().await {
        let (t, log, _reconnects) = r.expect("client");
        let histories = &acked[&t];
        let v = log.check_histories(histories);
        if histories.len() == 1 {
            // Nothing this task acknowledged was lost: exactly once, no
            // reset.
            assert!(v.is_exact(), "{t}: {v:?}");
            assert_eq!(v.delivered as u64, N, "{t}: {v:?}");
        } else {
            assert!(v.is_honest(), "{t} (Redis lost writes): {v:?}");
        }
        total.delivered += v.delivered;
        total.lost.extend(v.lost);
        total.duplicated.extend(v.duplicated);
        total.resets += v.resets;
        total.unannounced_gaps.extend(v.unannounced_gaps);
    }
    println!(
        "failover: {} clients, {total}, tasks renumbered after lost writes={renumbered} publish_retries={publish_errors} victim_shard_publishing_again_after={:.2}s longest_publish_stall={:.2}s",
        tasks.len() * 2,
        victim_back_after.as_secs_f64(),
        longest_stall.as_secs_f64(),
    );
}

/// Measures the Redis egress of the feed readers, which follow only the
/// feeds their clients need: the same publishing (1 500 events over 48
/// tasks) runs with no edge, with one edge whose client watches 4 of the
/// tasks, and with two more edges that watch nothing; then with the three
/// edges watching 4 tasks each. The cluster's output bytes (replication
/// excluded) are compared: idle edges add next to nothing, and what an
/// edge draws follows what its clients watch, not the publish rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_egress_grows_with_interest_not_edges() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let p = Publisher::connect(&url).await.expect("publisher");
    p.load_function().await.expect("function");
    const EVENTS: u64 = 1_500;
    let payload = json!({ "pct": 50, "msg": "x".repeat(200) });
    let tasks: Vec<String> = (0..48).map(|_| unique_task("egress")).collect();
    // Every task exists before anyone watches it.
    for t in &tasks {
        p.publish(t, "progress", &payload).await.expect("publish");
    }

    // Publishes EVENTS events over the tasks and returns the cluster's
    // output bytes meanwhile (after a pause for joins and readers to settle).
    let phase = |what: &'static str| {
        let p = p.clone();
        let tasks = tasks.clone();
        let payload = payload.clone();
        let cluster = &cluster;
        async move {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let before = cluster.output_bytes();
            for i in 0..EVENTS {
                let t = &tasks[(i as usize) % tasks.len()];
                p.publish(t, "progress", &payload).await.expect("publish");
            }
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            let bytes = cluster.output_bytes() - before;
            println!("egress: {what}: {bytes} bytes for {EVENTS} events");
            bytes
        }
    };
    // A client of `edge` watching 4 tasks, reading what it is sent.
    let watch = |edge: &sluice_tests::EdgeHandle, from: usize| {
        let url = edge.url(&format!(
            "/v1/events?{}",
            tasks[from..from + 4]
                .iter()
                .map(|t| format!("task={t}"))
                .collect::<Vec<_>>()
                .join("&")
        ));
        tokio::spawn(async move {
            let mut c = SseClient::connect(&url, None).await;
            let mut n = 0u64;
            while c.next_event(Duration::from_secs(30)).await.is_some() {
                n += 1;
            }
            n
        })
    };
    let none = phase("no edge").await;
    let a = TestEdge::on(&url).node("ea").start().await;
    let wa = watch(&a, 0);
    let one = phase("1 edge watching 4 tasks").await;
    let b = TestEdge::on(&url).node("eb").start().await;
    let c = TestEdge::on(&url).node("ec").start().await;
    let three_idle = phase("3 edges, 2 of them idle").await;
    let wb = watch(&b, 4);
    let wc = watch(&c, 8);
    let three = phase("3 edges watching 4 tasks each").await;
    let per_event = |bytes: u64| bytes.saturating_sub(none) as f64 / EVENTS as f64;
    println!(
        "egress: Redis output per published event beyond the publisher's ({:.0} B): \
         1 edge watching 4 of 48 tasks {:.0} B; plus 2 idle edges {:.0} B; 3 edges watching 4 each {:.0} B",
        none as f64 / EVENTS as f64,
        per_event(one),
        per_event(three_idle),
        per_event(three),
    );
    drop((a, b, c));
    for w in [wa, wb, wc] {
        let _ = w.await;
    }
    // An edge reading every feed draws each event once (over 400 B with
    // this payload); one watching a twelfth of the tasks draws a fraction.
    assert!(
        per_event(one) < 200.0,
        "an edge watching 4 of 48 tasks reads only their feeds: none={none} one={one}"
    );
    // Idle edges follow no feed: at most their heartbeats.
    assert!(
        per_event(three_idle) < 1.5 * per_event(one) + 20.0,
        "idle edges add next to nothing: one={one} three_idle={three_idle}"
    );
    // Three edges watching as much each draw about three times one.
    assert!(
        per_event(three) > 2.0 * per_event(one),
        "egress follows what is watched: one={one} three={three}"
    );
}

/// What one client saw of one task: events `(seq, data)` and resets, in
/// arrival order, across its reconnects.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Event(u64, serde_json::Value),
    Reset(u64),
}

/// Tasks for the lost-writes scenario: four on the shards of one primary
/// (the victim), four on the other primaries.
struct VictimTasks {
    victim: u16,
    victim_shards: Vec<u32>,
    on_victim: Vec<String>,
    elsewhere: Vec<String>,
}

fn victim_tasks(cluster: &RedisCluster) -> VictimTasks {
    let first = unique_task("lw");
    let victim = cluster.primary_of_shard(shard_of(&first, DEFAULT_SHARDS));
    let victim_shards: Vec<u32> = (0..DEFAULT_SHARDS)
        .filter(|s| cluster.primary_of_shard(*s) == victim)
        .collect();
    let mut on_victim = vec![first];
    let mut elsewhere = Vec::new();
    for _ in 0..10_000 {
        if on_victim.len() == 4 && elsewhere.len() == 4 {
            break;
        }
        let t = unique_task("lw");
        if victim_shards.contains(&shard_of(&t, DEFAULT_SHARDS)) {
            if on_victim.len() < 4 {
                on_victim.push(t);
            }
        } else if elsewhere.len() < 4 {
            elsewhere.push(t);
        }
    }
    assert_eq!(
        on_victim.len() + elsewhere.len(),
        8,
        "tasks for both groups"
    );
    VictimTasks {
        victim,
        victim_shards,
        on_victim,
        elsewhere,
    }
}

/// A client of the lost-writes scenario: follows `base` (a task's SSE URL)
/// from seq 1 to the final event, reconnecting from the last position it
/// got (the frame's `id:`, verified by the edge: a reconnect into another
/// history must be a reset too), and records what it saw by content. `got`
/// shows its last seq to the scenario. Returns the task, what it saw and
/// its reconnects.
async fn follow_by_content(
    base: String,
    t: String,
    got: Arc<AtomicU64>,
) -> (String, Vec<Seen>, u32) {
    let mut seen = Vec::new();
    let mut last = "0".to_owned();
    let mut reconnects = 0u32;
    loop {
        let mut c = SseClient::connect(&format!("{base}?after={last}"), None).await;
        if c.status == 204 {
            break;
        }
        if c.status == 200 {
            while let Ok(Some(f)) = c.try_next_event(Duration::from_secs(30)).await {
                let seq = f.seq().expect("id");
                last = f.id.clone().expect("id");
                assert!(
                    last.contains('.'),
                    "{t}: the id {last} is not a verified position"
                );
                got.store(seq, Ordering::SeqCst);
                let env = f.json();
                if f.event.as_deref() == Some("sluice.reset") {
                    seen.push(Seen::Reset(seq));
                } else {
                    seen.push(Seen::Event(seq, env["data"].clone()));
                    if env["final"] == json!(true) {
                        return (t, seen, reconnects);
                    }
                }
            }
        }
        reconnects += 1;
        assert!(reconnects < 300, "{t}: too many reconnects");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (t, seen, reconnects)
}

/// The final history `(seq, data)` of every task, as Redis holds it now.
async fn final_histories(
    p: &Publisher,
    tasks: &[String],
) -> std::collections::HashMap<String, Vec<(u64, serde_json::Value)>> {
    let mut conn = p.pool().get().await.expect("conn");
    let mut finals = std::collections::HashMap::new();
    for t in tasks {
        let id = sluice_shared::TaskId::parse(t).expect("id");
        let h = sluice_broker::reader::history(&mut conn, &id, DEFAULT_SHARDS, 0, 10_000)
            .await
            .expect("history");
        let h: Vec<(u64, serde_json::Value)> = h.into_iter().map(|e| (e.seq, e.data)).collect();
        finals.insert(t.clone(), h);
    }
    finals
}

/// After its last reset (or from the start), a client saw exactly the
/// task's final history, by content. Returns how many resets it got.
fn assert_final_history_after_last_reset(
    t: &str,
    seen: &[Seen],
    history: &[(u64, serde_json::Value)],
) -> usize {
    let (from, tail): (u64, Vec<&Seen>) =
        match seen.iter().rposition(|s| matches!(s, Seen::Reset(_))) {
            Some(i) => {
                let Seen::Reset(r) = seen[i] else {
                    unreachable!()
                };
                (r, seen[i + 1..].iter().collect())
            }
            None => (0, seen.iter().collect()),
        };
    let got: Vec<(u64, serde_json::Value)> = tail
        .iter()
        .map(|s| match s {
            Seen::Event(seq, d) => (*seq, d.clone()),
            Seen::Reset(_) => unreachable!(),
        })
        .collect();
    // Every client asked for seq 1 on (`?after=0`): with no reset it
    // must have seen the whole history from the start.
    let want: Vec<(u64, serde_json::Value)> =
        history.iter().filter(|(s, _)| *s > from).cloned().collect();
    assert_eq!(
        got, want,
        "{t}: after its last reset (seq {from}; 0: none) the client must see exactly the final history"
    );
    seen.iter().filter(|s| matches!(s, Seen::Reset(_))).count()
}

/// A failover that loses acknowledged writes, made deterministic: the
/// victim's replica is stopped (SIGSTOP) while the primary acknowledges a
/// run of publishes, then the primary is killed and the replica resumed and
/// promoted. Those events are gone and the tasks' next events reuse their
/// seqs. Every client must either see exactly the final history, or get a
/// `sluice.reset` and then exactly the final history from the reset's seq:
/// never a silent gap, never the new events hidden under seqs it already has.
/// Judged by content, not only by seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_failover_losing_writes_resets_clients() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    let a = TestEdge::on(&url).node("la").start().await;
    let b = TestEdge::on(&url).node("lb").start().await;
    let p = Publisher::connect(&url).await.expect("publisher");
    let VictimTasks {
        victim,
        victim_shards,
        on_victim,
        elsewhere,
    } = victim_tasks(&cluster);
    let tasks: Vec<String> = on_victim.iter().chain(&elsewhere).cloned().collect();
    const N: u64 = 200;
    const LOST_ROUNDS: u64 = 15;
    for t in &tasks {
        p.publish(t, "progress", &json!(0)).await.expect("publish");
    }

    let mut clients = tokio::task::JoinSet::new();
    // The last seq each client received, by task (to know when the clients
    // of the victim's tasks have seen what the primary acknowledged alone).
    let mut progress: Vec<(String, Arc<AtomicU64>)> = Vec::new();
    for t in &tasks {
        for edge in [&a, &b] {
            let base = edge.url(&format!("/v1/tasks/{t}/events"));
            let got = Arc::new(AtomicU64::new(0));
            progress.push((t.clone(), got.clone()));
            clients.spawn(follow_by_content(base, t.clone(), got));
        }
    }

    let replica = cluster.replica_of(victim);
    let publish = |t: String, i: u64| {
        let p = p.clone();
        async move {
            let opts = PublishOptions {
                is_final: i == N,
                idempotency_key: Some(format!("e{i}")),
            };
            for _ in 0..400 {
                if p.publish_with(&t, "progress", &json!(i), opts.clone())
                    .await
                    .is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("publish kept failing");
        }
    };
    let mut killed_at = None;
    let mut back_after = None;
    for i in 1..=N {
        if i == N / 4 {
            cluster.signal(replica, true);
            cluster.cut_replication(victim);
        }
        if i == N / 4 + LOST_ROUNDS {
            // Let the edges deliver what the primary acknowledged (seq `i`:
            // the first publish was seq 1, round `r` is seq `r + 1`), then
            // lose it with the primary.
            let victim_clients: Vec<Arc<AtomicU64>> = progress
                .iter()
                .filter(|(t, _)| on_victim.contains(t))
                .map(|(_, got)| got.clone())
                .collect();
            sluice_tests::wait_until("clients saw the unreplicated events", T, || {
                let all = victim_clients.iter().all(|g| g.load(Ordering::SeqCst) >= i);
                async move { all }
            })
            .await;
            cluster.kill(victim);
            cluster.signal(replica, false);
            killed_at = Some(std::time::Instant::now());
            println!(
                "lost writes: stopped replica {replica}, killed primary {victim} (shards {victim_shards:?}) after {LOST_ROUNDS} acknowledged rounds"
            );
        }
        for t in &tasks {
            publish(t.clone(), i).await;
            if t == &tasks[0] && back_after.is_none() {
                back_after = killed_at.map(|k| k.elapsed());
            }
        }
    }
    cluster.wait_healed(Duration::from_secs(30));

    let finals = final_histories(&p, &tasks).await;
    let lost_events: usize = on_victim
        .iter()
        .map(|t| N as usize + 1 - finals[t].len())
        .sum();

    let (mut resets_victim, mut resets_other, mut clients_n) = (0, 0, 0);
    while let Some(r) = clients.join_next().await {
        let (t, seen, _reconnects) = r.expect("client");
        clients_n += 1;
        let resets = assert_final_history_after_last_reset(&t, &seen, &finals[&t]);
        if on_victim.contains(&t) {
            resets_victim += resets;
            assert!(
                resets > 0,
                "{t}: saw events Redis then lost, but got no reset"
            );
        } else {
            resets_other += resets;
        }
    }
    println!(
        "lost writes: {clients_n} clients; {lost_events} acknowledged events lost on {} tasks; resets: {resets_victim} on those tasks, {resets_other} on other primaries' tasks; publishing to the victim's slots again {:.2}s after the kill",
        on_victim.len(),
        back_after.unwrap_or_default().as_secs_f64()
    );
    assert!(
        lost_events > 0,
        "the scenario must lose acknowledged writes"
    );
    assert_eq!(
        resets_other, 0,
        "tasks on the other primaries lost nothing and must not be reset"
    );
}

/// `wait_replicas`: a publish counts only once a replica confirmed it. With
/// the replica stopped, the library answers `NotReplicated` (the event is on
/// the primary; a retry with the same idempotency key appends nothing and
/// waits again) and the edge's HTTP publish answers 503 `not_replicated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_for_a_replica() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let config = PublisherConfig {
        wait_replicas: 1,
        // Generous: the first WAIT after the cluster formed took >300 ms
        // here (later ones about 1 ms).
        wait_timeout: Duration::from_millis(2000),
        ..PublisherConfig::default()
    };
    let p = Publisher::connect_with(&url, config)
        .await
        .expect("publisher");
    let task = unique_task("wait");
    let key = |k: &str| PublishOptions {
        is_final: false,
        idempotency_key: Some(k.to_owned()),
    };
    let first = p
        .publish_with(&task, "progress", &json!(1), key("a"))
        .await
        .expect("a replica confirms");
    assert_eq!(first.seq, 1);

    let edge = TestEdge::on(&url)
        .args(&[
            "--publish-key",
            "pk-0123456789",
            "--wait-replicas",
            "1",
            "--wait-timeout-ms",
            "300",
        ])
        .start()
        .await;
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        http.post(edge.url(&format!("/v1/tasks/{task}/events")))
            .bearer_auth("pk-0123456789")
            .json(&body)
            .send()
    };

    let primary = cluster.primary_of_shard(shard_of(&task, DEFAULT_SHARDS));
    let replica = cluster.replica_of(primary);
    cluster.signal(replica, true);
    let err = p
        .publish_with(&task, "progress", &json!(2), key("b"))
        .await
        .expect_err("no replica can confirm");
    match err {
        sluice_broker::PublishError::NotReplicated { seq, acked, wanted } => {
            assert_eq!((seq, acked, wanted), (2, 0, 1));
        }
        other => panic!("expected NotReplicated, got {other}"),
    }
    let r = post(json!({"type": "progress", "data": 3, "idempotency_key": "c"}))
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.expect("json error");
    assert_eq!(body["error"], "not_replicated", "{body}");
    cluster.signal(replica, false);

    // Retried with the same keys once the replica is back: nothing appended
    // twice, and now confirmed.
    let mut confirmed = None;
    for _ in 0..50 {
        match p.publish_with(&task, "progress", &json!(2), key("b")).await {
            Ok(r) => {
                confirmed = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let again = confirmed.expect("confirmed once the replica is back");
    assert_eq!((again.seq, again.duplicate), (2, true));
    let r = post(json!({"type": "progress", "data": 3, "idempotency_key": "c"}))
        .await
        .expect("post");
    assert_eq!(r.status(), 200, "a duplicate of seq 3");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["seq"], 3);
    assert_eq!(body["duplicate"], true);
}
