//! Subscription semantics over SSE against a real Redis: snapshot then live,
//! exact resume across nodes, replay, gap filling, resets, the end of a task.

use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};
use sluice_shared::{TaskId, TaskKeys, DEFAULT_SHARDS};
use sluice_tests::{unique_task, DeliveryLog, RedisFixture, SseClient, TestEdge};

const T: Duration = Duration::from_secs(10);

async fn publisher(redis: &RedisFixture) -> Publisher {
    Publisher::connect(&redis.url()).await.expect("publisher")
}

#[tokio::test]
async fn snapshot_on_connect_then_live() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let task = unique_task("snap");
    for i in 1..=5 {
        p.publish(&task, "progress", &json!({"pct": i * 10}))
            .await
            .expect("publish");
    }
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.headers["content-type"], "text/event-stream");
    let first = c.next_frame(T).await.expect("retry frame");
    let retry = first.retry.expect("stream starts with retry:");
    assert!((1000..5000).contains(&retry), "jittered retry {retry}");
    let snap = c.next_event(T).await.expect("snapshot event");
    assert_eq!(snap.seq(), Some(5));
    assert_eq!(snap.event.as_deref(), Some("progress"));
    let env = snap.json();
    assert_eq!(env["task"], json!(task));
    assert_eq!(env["seq"], json!(5));
    assert_eq!(env["data"], json!({"pct": 50}));
    assert_eq!(env["final"], json!(false));
    assert!(env["ts"].as_str().expect("ts").ends_with('Z'));

    p.publish(&task, "progress", &json!({"pct": 60}))
        .await
        .expect("publish");
    let live = c.next_event(T).await.expect("live event");
    assert_eq!(live.seq(), Some(6));
    p.finish(&task, "done", &json!({})).await.expect("finish");
    let fin = c.next_event(T).await.expect("final");
    assert_eq!(fin.seq(), Some(7));
    assert_eq!(fin.json()["final"], json!(true));
    assert!(
        c.next_frame(T).await.is_none(),
        "stream ends after the final event"
    );

    // The snapshot endpoint agrees.
    let s: serde_json::Value = reqwest::get(edge.url(&format!("/v1/tasks/{task}")))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(s["seq"], json!(7));
    assert_eq!(s["state"], json!("closed"));
    assert_eq!(s["latest"]["type"], json!("done"));
    let r = reqwest::get(edge.url("/v1/tasks/never-seen-task"))
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], json!("not_found"));
}

/// A client on node A disconnects mid-stream while a producer publishes; it
/// resumes on node B with Last-Event-ID and gets exactly the missing events.
#[tokio::test]
async fn resume_on_another_node_is_exact() {
    sluice_tests::init_logs();
    let (redis, a) = TestEdge::redis().node("a").start().await;
    let b = TestEdge::on(&redis.url()).node("b").start().await;
    let p = publisher(&redis).await;
    let task = unique_task("resume");
    const N: u64 = 400;

    let producer = {
        let p = p.clone();
        let task = task.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                let opts = PublishOptions {
                    is_final: i == N,
                    idempotency_key: None,
                };
                p.publish_with(&task, "progress", &json!({"i": i}), opts)
                    .await
                    .expect("publish");
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    let mut log = DeliveryLog::default();
    let mut c = SseClient::connect(&a.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    assert_eq!(c.status, 200);
    while log.received.len() < 100 {
        let f = c.next_event(T).await.expect("event from A");
        log.event(f.seq().expect("id"));
    }
    drop(c); // disconnect mid-stream

    let last = log.last().expect("received some");
    let mut c = SseClient::connect(&b.url(&format!("/v1/tasks/{task}/events")), Some(last)).await;
    assert_eq!(c.status, 200);
    while let Some(f) = c.next_event(T).await {
        log.event(f.seq().expect("id"));
    }
    producer.await.expect("producer");
    let v = log.check(1, N);
    println!("resume across nodes: {v}");
    assert!(v.is_exact(), "{v:?}");

    // Reconnecting at the final event: 204, so EventSource stops.
    let c = SseClient::connect(&b.url(&format!("/v1/tasks/{task}/events")), Some(N)).await;
    assert_eq!(c.status, 204);
    let c = SseClient::connect(
        &a.url(&format!("/v1/tasks/{task}/events?after={}", N + 5)),
        None,
    )
    .await;
    assert_eq!(c.status, 204);
}

#[tokio::test]
async fn replay_from_zero_and_history_endpoint() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--history-page", "7"])
        .start()
        .await;
    let p = publisher(&redis).await;
    let task = unique_task("replay");
    for i in 1..=50 {
        p.publish(&task, "progress", &json!(i))
            .await
            .expect("publish");
    }
    let mut c =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    let mut log = DeliveryLog::default();
    for _ in 0..50 {
        log.event(c.next_event(T).await.expect("event").seq().expect("id"));
    }
    p.publish(&task, "progress", &json!(51))
        .await
        .expect("publish");
    log.event(c.next_event(T).await.expect("live").seq().expect("id"));
    assert!(log.check(1, 51).is_exact(), "{:?}", log.check(1, 51));

    let h: Vec<serde_json::Value> =
        reqwest::get(edge.url(&format!("/v1/tasks/{task}/history?after=10&limit=5")))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
    assert_eq!(
        h.iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    for bad in [
        "after=-1",
        "after=x",
        "limit=0",
        "limit=100000",
        "after=99999999999999999999999",
    ] {
        let r = reqwest::get(edge.url(&format!("/v1/tasks/{task}/history?{bad}")))
            .await
            .expect("get");
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.expect("json error body");
        assert!(body["error"].is_string() && body["message"].is_string());
    }
}

/// A history response is bounded in bytes as well as events: it ends with
/// the envelope that reaches `--history-page-bytes`, says `Sluice-More:
/// true` and which `after` continues it, and paging on gives every event
/// once. An SSE replay over the same pages is exact.
#[tokio::test]
async fn history_pages_stop_at_their_byte_budget_and_say_how_to_go_on() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--history-page-bytes", "25000"])
        .start()
        .await;
    let p = publisher(&redis).await;
    let task = unique_task("hbytes");
    let blob = "h".repeat(10_000);
    for i in 1..=7 {
        p.publish(&task, "progress", &json!({"i": i, "blob": blob}))
            .await
            .expect("publish");
    }
    let page = |after: u64| {
        let url = edge.url(&format!(
            "/v1/tasks/{task}/history?after={after}&limit=1000"
        ));
        async move {
            let r = reqwest::get(url).await.expect("get");
            assert_eq!(r.status(), 200);
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .unwrap_or_else(|| panic!("no {name} header"))
                    .to_str()
                    .expect("ascii")
                    .to_owned()
            };
            let (more, next) = (header("sluice-more"), header("sluice-next-after"));
            let body: Vec<serde_json::Value> = r.json().await.expect("json");
            let seqs: Vec<u64> = body
                .iter()
                .map(|e| e["seq"].as_u64().expect("seq"))
                .collect();
            (seqs, more, next.parse::<u64>().expect("next after"))
        }
    };
    // Envelopes of ~10 100 bytes: the third reaches 25 000.
    assert_eq!(page(0).await, (vec![1, 2, 3], "true".into(), 3));
    assert_eq!(page(3).await, (vec![4, 5, 6], "true".into(), 6));
    assert_eq!(page(6).await, (vec![7], "false".into(), 7));
    assert_eq!(page(7).await, (vec![], "false".into(), 7));

    let mut c =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    let mut log = DeliveryLog::default();
    for _ in 0..7 {
        log.event(c.next_event(T).await.expect("event").seq().expect("id"));
    }
    assert!(log.check(1, 7).is_exact(), "{:?}", log.check(1, 7));
}

/// Events the feed never delivered (here: written to the log while the feed
/// entry went elsewhere) are filled from the task log before the next one.
#[tokio::test]
async fn gaps_in_the_feed_are_filled_from_history() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let task = unique_task("gap");
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish");
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));

    // Seqs 2 and 3 bypass the feed (same hash slot, another stream).
    let keys = TaskKeys::new(&TaskId::parse(&task).expect("task"), DEFAULT_SHARDS);
    let elsewhere = format!("sluice:{{s{}}}:not-the-feed", keys.shard);
    let mut conn = redis.conn().await;
    for i in 2..=3 {
        let data = sluice_shared::codec::encode_data(&json!(i)).expect("data");
        let _: redis::Value = redis::cmd("FCALL")
            .arg("sluice_publish")
            .arg(3)
            .arg(&keys.log)
            .arg(&keys.meta)
            .arg(&elsewhere)
            .arg(&task)
            .arg("progress")
            .arg(data)
            .arg("0")
            .arg("")
            .query_async(&mut conn)
            .await
            .expect("fcall");
    }
    p.publish(&task, "progress", &json!(4))
        .await
        .expect("publish");
    let mut log = DeliveryLog::default();
    log.event(1);
    for _ in 0..3 {
        log.event(c.next_event(T).await.expect("event").seq().expect("id"));
    }
    let v = log.check(1, 4);
    assert!(v.is_exact(), "{v:?}");
    let m = reqwest::get(edge.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(m.contains("sluice_edge_gaps_total 1"), "{m}");
}

/// When the events after the resume point are no longer retained, the
/// client gets one sluice.reset with the snapshot, then live events.
#[tokio::test]
async fn reset_when_history_is_gone() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let config = PublisherConfig {
        log_cap: 10,
        ..PublisherConfig::default()
    };
    let p = Publisher::connect_with(&redis.url(), config)
        .await
        .expect("publisher");
    let task = unique_task("trim");
    for i in 1..=500 {
        p.publish(&task, "progress", &json!(i))
            .await
            .expect("publish");
    }
    let h = p.pool().get().await.expect("conn");
    drop(h);
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), Some(3)).await;
    assert_eq!(c.status, 200);
    let reset = c.next_event(T).await.expect("reset");
    assert_eq!(reset.event.as_deref(), Some("sluice.reset"));
    assert_eq!(reset.seq(), Some(500));
    let snap = reset.json();
    assert_eq!(snap["seq"], json!(500));
    assert_eq!(snap["state"], json!("open"));
    assert_eq!(snap["latest"]["seq"], json!(500));
    p.publish(&task, "progress", &json!(501))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("live").seq(), Some(501));

    // A resume point beyond the task's seq (the id was reused): reset too.
    let mut c = SseClient::connect(
        &edge.url(&format!("/v1/tasks/{task}/events?after=9000")),
        None,
    )
    .await;
    let reset = c.next_event(T).await.expect("reset");
    assert_eq!(reset.event.as_deref(), Some("sluice.reset"));
    assert_eq!(reset.seq(), Some(501));
}

/// Subscribing to a task with no events yet waits, with heartbeats, for the
/// first event.
#[tokio::test]
async fn unknown_task_waits_with_heartbeats() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--heartbeat-secs", "1"])
        .start()
        .await;
    let task = unique_task("later");
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(c.status, 200);
    assert!(c.next_frame(T).await.expect("retry").retry.is_some());
    let hb = c.next_frame(T).await.expect("heartbeat");
    assert_eq!(hb.comment.as_deref(), Some("hb"));
    let p = publisher(&redis).await;
    p.publish(&task, "started", &json!({}))
        .await
        .expect("publish");
    let ev = c.next_event(T).await.expect("first event");
    assert_eq!(ev.seq(), Some(1));
    assert_eq!(ev.event.as_deref(), Some("started"));
}

/// The embedded store gives the same semantics (resume on the same node).
#[tokio::test]
async fn memory_store_resume_and_end() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--publish-key", "pk-test"])
        .start()
        .await;
    let task = unique_task("mem");
    let client = reqwest::Client::new();
    let publish = |i: u64, fin: bool| {
        let client = client.clone();
        let url = edge.url(&format!("/v1/tasks/{task}/events"));
        async move {
            let r = client
                .post(url)
                .bearer_auth("pk-test")
                .json(&json!({"type": "progress", "data": {"i": i}, "final": fin}))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 201);
            let v: serde_json::Value = r.json().await.expect("json");
            assert_eq!(v["seq"], json!(i));
        }
    };
    for i in 1..=10 {
        publish(i, false).await;
    }
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), Some(4)).await;
    let mut log = DeliveryLog::default();
    for _ in 0..6 {
        log.event(c.next_event(T).await.expect("event").seq().expect("id"));
    }
    drop(c);
    publish(11, false).await;
    publish(12, true).await;
    let mut c =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), log.last()).await;
    while let Some(f) = c.next_event(T).await {
        log.event(f.seq().expect("id"));
    }
    let v = log.check(5, 12);
    assert!(v.is_exact(), "{v:?}");
    let c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), Some(12)).await;
    assert_eq!(c.status, 204);

    // Publishing needs the key.
    let r = client
        .post(edge.url(&format!("/v1/tasks/{task}-x/events")))
        .json(&json!({"type": "p"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
}

/// A resume point on a task that never existed: one `sluice.reset` whose
/// data is the unknown-task snapshot (`"state":"unknown","seq":0,
/// "latest":null`, id 0), then the connection waits, with heartbeats, for
/// the task's first event.
#[tokio::test]
async fn resume_on_an_unknown_task_resets_to_the_unknown_snapshot() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--heartbeat-secs", "1"])
        .start()
        .await;
    let task = unique_task("never");
    for (url, last_event_id) in [
        (format!("/v1/tasks/{task}/events"), Some(5)),
        (format!("/v1/tasks/{task}/events?after=5"), None),
    ] {
        let mut c = SseClient::connect(&edge.url(&url), last_event_id).await;
        assert_eq!(c.status, 200, "{url}");
        let reset = c.next_event(T).await.expect("reset");
        assert_eq!(reset.event.as_deref(), Some("sluice.reset"), "{url}");
        assert_eq!(reset.seq(), Some(0), "{url}: a reconnect resumes from 0");
        assert_eq!(
            reset.json(),
            json!({"task": task, "seq": 0, "state": "unknown", "latest": null}),
            "{url}"
        );
        // The stream stays open and waits for the first event.
        let hb = c.next_frame(T).await.expect("heartbeat, not the end");
        assert_eq!(hb.comment.as_deref(), Some("hb"), "{url}: {hb:?}");
    }

    // Once the task exists, the waiting stream delivers from seq 1.
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), Some(5)).await;
    assert_eq!(
        c.next_event(T).await.expect("reset").event.as_deref(),
        Some("sluice.reset")
    );
    let p = publisher(&redis).await;
    p.publish(&task, "started", &json!({"n": 1}))
        .await
        .expect("publish");
    let first = c.next_event(T).await.expect("first event");
    assert_eq!(first.seq(), Some(1));
    assert_eq!(first.event.as_deref(), Some("started"));
    assert_eq!(first.json()["data"], json!({"n": 1}));
}

/// `Last-Event-ID` wins over `?after` (browsers resend the original URL,
/// with its `after`, when they reconnect).
#[tokio::test]
async fn last_event_id_wins_over_after() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let task = unique_task("both");
    for i in 1..=5 {
        p.publish(&task, "progress", &json!(i))
            .await
            .expect("publish");
    }
    let mut c = SseClient::connect(
        &edge.url(&format!("/v1/tasks/{task}/events?after=1")),
        Some(3),
    )
    .await;
    assert_eq!(c.status, 200);
    let mut seqs = Vec::new();
    for _ in 0..2 {
        seqs.push(c.next_event(T).await.expect("event").seq().expect("id"));
    }
    assert_eq!(seqs, [4, 5], "resumed from Last-Event-ID 3, not after=1");
    // The other way round too: a larger ?after does not win either.
    let mut c = SseClient::connect(
        &edge.url(&format!("/v1/tasks/{task}/events?after=4")),
        Some(2),
    )
    .await;
    assert_eq!(c.next_event(T).await.expect("event").seq(), Some(3));
}
