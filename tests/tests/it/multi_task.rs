//! Many tasks on one connection, against a real Redis: `GET /v1/events?
//! task=a&task=b` (one SSE stream, every frame's `id:` a cursor of every
//! task's position) and `GET /v1/ws` (subscribe and unsubscribe messages).
//!
//! Each test checks a guarantee of README "Many tasks on one connection"
//! task by task with the delivery checker: every event once and in order
//! (or an announced reset) across reconnects, tasks that end or reset
//! leaving the others alone, authorization and limits per task, one
//! bounded queue and one history page per connection however many tasks
//! it follows, latest-value mode, and the tasks-per-connection histogram.
//! Every frame's cursor is decoded and checked against the frame it ends.
//!
//! The bytes a page of 100 progress bars receives in each mode are
//! measured by an ignored test (`bytes_per_mode_of_a_page_of_100_progress_bars`,
//! tests/BENCHMARKS.md).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_broker::{Outgoing, PublishOptions, Publisher, PublisherConfig};
use sluice_shared::{shard_of, Cursor, Position, TaskId, TaskKeys, DEFAULT_SHARDS};
use sluice_tests::chaos::EdgeProcess;
use sluice_tests::rss::{reset_hwm, status_kib, RssPeak};
use sluice_tests::sse::RawSse;
use sluice_tests::util::metric;
use sluice_tests::{
    unique_task, wait_until, DeliveryLog, EdgeHandle, RedisFixture, SseClient, SseFrame, TestEdge,
    WsClient,
};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "multi-task-secret-0123456789";

async fn publisher(redis: &RedisFixture) -> Publisher {
    Publisher::connect(&redis.url()).await.expect("publisher")
}

/// One event to publish: task, data, final.
type Out = (String, Value, bool);

/// Publishes `events` in order, in pipelines of up to 100 (events of one
/// task are appended in order); a final event has type `done`.
async fn publish_all(p: &Publisher, events: &[Out]) {
    for chunk in events.chunks(100) {
        let ids: Vec<TaskId> = chunk
            .iter()
            .map(|(t, _, _)| TaskId::parse(t).expect("task id"))
            .collect();
        let data: Vec<Vec<u8>> = chunk
            .iter()
            .map(|(_, d, _)| sluice_shared::codec::encode_data(d).expect("encode"))
            .collect();
        let batch: Vec<Outgoing<'_>> = chunk
            .iter()
            .zip(&ids)
            .zip(&data)
            .map(|(((_, _, fin), task), data)| Outgoing {
                task,
                kind: if *fin { "done" } else { "progress" },
                data,
                opts: PublishOptions {
                    is_final: *fin,
                    idempotency_key: None,
                },
            })
            .collect();
        for r in p.publish_batch(&batch).await {
            r.expect("publish");
        }
    }
}

/// The stream's task order: sorted, each task once.
fn sorted(tasks: &[String]) -> Vec<String> {
    let mut v = tasks.to_vec();
    v.sort();
    v.dedup();
    v
}

fn query(tasks: &[String], extra: &str) -> String {
    let mut q: Vec<String> = tasks.iter().map(|t| format!("task={t}")).collect();
    if !extra.is_empty() {
        q.push(extra.to_owned());
    }
    format!("/v1/events?{}", q.join("&"))
}

fn stream_url(edge: &EdgeHandle, tasks: &[String], extra: &str) -> String {
    edge.url(&query(tasks, extra))
}

/// A cursor made by hand (as the edge makes them): `at` gives each task's
/// position.
fn cursor(tasks: &[String], at: impl Fn(&str) -> Option<Position>) -> String {
    let tasks = sorted(tasks);
    let hash = Cursor::set_hash(tasks.iter().map(String::as_str));
    let positions: Vec<Option<Position>> = tasks.iter().map(|t| at(t)).collect();
    let mut out = String::new();
    Cursor::encode_into(hash, &positions, &mut out);
    out
}

async fn connect(url: &str, cursor: Option<&str>) -> SseClient {
    match cursor {
        Some(c) => SseClient::connect_with(url, None, &[("last-event-id", c)]).await,
        None => SseClient::connect(url, None).await,
    }
}

/// Status and JSON body of a request that must be refused.
async fn refused(url: &str, last_event_id: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("a JSON error body");
    assert!(body["message"].is_string(), "{body}");
    (status, body)
}

/// Frames of an SSE stream, from either client.
trait Frames {
    async fn event(&mut self) -> Option<SseFrame>;
}

impl Frames for SseClient {
    async fn event(&mut self) -> Option<SseFrame> {
        self.next_event(T).await
    }
}

impl Frames for RawSse {
    async fn event(&mut self) -> Option<SseFrame> {
        self.next_event(T).await
    }
}

/// What one client of a stream of many tasks received, task by task,
/// across its reconnects. Every frame is checked as it is recorded: its
/// task is one of the stream's, its `id:` is a cursor of this task set
/// whose position for the frame's task is the frame's own (`pos`), and
/// whose other positions are those of the frame before.
struct Received {
    tasks: Vec<String>,
    hash: u32,
    logs: BTreeMap<String, DeliveryLog>,
    /// Tasks whose final event (or closed reset) arrived.
    ended: BTreeSet<String>,
    /// (task, seq) in arrival order.
    arrivals: Vec<(String, u64)>,
    last_id: Option<String>,
    last_cursor: Option<Vec<Option<Position>>>,
}

impl Received {
    fn new(tasks: &[String]) -> Self {
        let tasks = sorted(tasks);
        Received {
            hash: Cursor::set_hash(tasks.iter().map(String::as_str)),
            logs: tasks
                .iter()
                .map(|t| (t.clone(), DeliveryLog::default()))
                .collect(),
            tasks,
            ended: BTreeSet::new(),
            arrivals: Vec::new(),
            last_id: None,
            last_cursor: None,
        }
    }

    fn record(&mut self, f: &SseFrame) {
        let v = f.json();
        let reset = f.event.as_deref() == Some("sluice.reset");
        let task = v["task"].as_str().expect("task").to_owned();
        let seq = v["seq"].as_u64().expect("seq");
        let i = self
            .tasks
            .iter()
            .position(|t| *t == task)
            .unwrap_or_else(|| panic!("a frame of {task}, which the stream does not follow"));
        let id = f.id.clone().expect("every frame has an id");
        let cursor = Cursor::parse(&id, self.hash, self.tasks.len())
            .unwrap_or_else(|e| panic!("id {id} is not a cursor of this stream: {e}"));
        let at = cursor.positions[i].expect("the cursor holds the frame's task");
        assert_eq!(at.seq, seq, "{task}: the cursor's seq is the frame's");
        let pos = if reset {
            v["latest"]["pos"].as_str()
        } else {
            v["pos"].as_str()
        };
        if let Some(pos) = pos {
            assert_eq!(
                Position::parse(pos),
                Ok(at),
                "{task}: the cursor holds the frame's position"
            );
        }
        if let Some(before) = &self.last_cursor {
            for (k, (now, was)) in cursor.positions.iter().zip(before).enumerate() {
                if k != i {
                    assert_eq!(
                        now, was,
                        "a frame of {task} moved the position of {}",
                        self.tasks[k]
                    );
                }
            }
        }
        self.last_cursor = Some(cursor.positions);
        self.last_id = Some(id);
        let log = self.logs.get_mut(&task).expect("log");
        if reset {
            log.reset(seq);
            if v["state"] == "closed" {
                self.ended.insert(task.clone());
            }
        } else {
            assert!(
                !self.ended.contains(&task),
                "{task}: an event after its final one"
            );
            log.event(seq);
            if v["final"] == json!(true) {
                self.ended.insert(task.clone());
            }
        }
        self.arrivals.push((task, seq));
    }

    /// Events (not resets) received of `task`.
    fn count(&self, task: &str) -> usize {
        self.logs[task]
            .received
            .iter()
            .filter(|r| matches!(r, sluice_tests::checker::Received::Event(_)))
            .count()
    }

    fn last(&self, task: &str) -> Option<u64> {
        self.logs[task].last()
    }

    fn last_is_reset(&self, task: &str) -> bool {
        matches!(
            self.logs[task].received.last(),
            Some(sluice_tests::checker::Received::Reset(_))
        )
    }

    /// Reads until `done` holds; panics if the stream ends first.
    async fn until(&mut self, s: &mut impl Frames, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            let f = s.event().await.expect("the stream ended too early");
            self.record(&f);
        }
    }

    /// Reads until the stream ends.
    async fn until_it_ends(&mut self, s: &mut impl Frames) {
        while let Some(f) = s.event().await {
            self.record(&f);
        }
    }

    /// Seqs of `task`'s events, in arrival order.
    fn seqs(&self, task: &str) -> Vec<u64> {
        self.arrivals
            .iter()
            .filter(|(t, _)| t == task)
            .map(|(_, s)| *s)
            .collect()
    }
}

/// Five tasks on one stream, from their first event (a hand-made cursor of
/// seq 0 each): history pages of 7 taken in turns, then live events
/// published interleaved while the client reads; it disconnects mid-way and
/// resumes with its last frame's id (the task list in another order, one
/// task twice: the same stream). Every task gets every seq exactly once, in
/// order; the stream ends when the last task sent its final event; the
/// browser's reconnect then gets 204.
#[tokio::test]
async fn many_tasks_over_sse_are_exact_per_task_across_a_reconnect_then_204() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--history-page", "7"])
        .start()
        .await;
    let p = publisher(&redis).await;
    let tasks: Vec<String> = (0..5).map(|i| unique_task(&format!("many{i}"))).collect();
    const BEFORE: u64 = 20;
    const DURING: u64 = 60;
    const LAST: u64 = BEFORE + DURING + 1;
    let history: Vec<Out> = (1..=BEFORE)
        .flat_map(|i| {
            tasks
                .iter()
                .map(move |t| (t.clone(), json!({"i": i}), false))
        })
        .collect();
    publish_all(&p, &history).await;

    let from_zero = cursor(&tasks, |_| Some(Position::bare(0)));
    let url = stream_url(&edge, &tasks, "");
    let mut c = connect(&url, Some(&from_zero)).await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    let producer = {
        let (p, tasks) = (p.clone(), tasks.clone());
        tokio::spawn(async move {
            for i in BEFORE + 1..=BEFORE + DURING {
                for t in &tasks {
                    p.publish(t, "progress", &json!({"i": i}))
                        .await
                        .expect("publish");
                }
            }
            for t in &tasks {
                p.finish(t, "done", &json!({})).await.expect("finish");
            }
        })
    };
    let mut got = Received::new(&tasks);
    got.until(&mut c, |g| tasks.iter().all(|t| g.count(t) >= 30))
        .await;
    drop(c);

    let last = got.last_id.clone().expect("a cursor");
    let mut again: Vec<String> = tasks.iter().rev().cloned().collect();
    again.push(tasks[2].clone());
    let mut c = connect(&stream_url(&edge, &again, ""), Some(&last)).await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    got.until_it_ends(&mut c).await;
    producer.await.expect("producer");
    for t in &tasks {
        let v = got.logs[t].check(1, LAST);
        assert!(v.is_exact(), "{t}: {v:?}");
    }
    assert_eq!(got.ended.len(), tasks.len(), "every task sent its final");

    // Every task has ended: the browser's reconnect gets 204 (EventSource
    // stops), with the cursor as Last-Event-ID or as ?after=.
    let last = got.last_id.clone().expect("a cursor");
    assert_eq!(connect(&url, Some(&last)).await.status, 204);
    let after = stream_url(&edge, &tasks, &format!("after={last}"));
    assert_eq!(connect(&after, None).await.status, 204);
}

/// Publishes `data` as the next event of `task` without its feed entry
/// (written to another stream of the same hash slot): only the task log
/// holds it, as when the feed lost an entry.
async fn publish_past_the_feed(redis: &RedisFixture, task: &str, data: &Value) {
    let keys = TaskKeys::new(&TaskId::parse(task).expect("task"), DEFAULT_SHARDS);
    let elsewhere = format!("sluice:{{s{}}}:not-the-feed", keys.shard);
    let data = sluice_shared::codec::encode_data(data).expect("data");
    let mut conn = redis.conn().await;
    let _: redis::Value = redis::cmd("FCALL")
        .arg("sluice_publish")
        .arg(3)
        .arg(&keys.log)
        .arg(&keys.meta)
        .arg(&elsewhere)
        .arg(task)
        .arg("progress")
        .arg(data)
        .arg("0")
        .arg("")
        .query_async(&mut conn)
        .await
        .expect("fcall");
}

/// Three tasks: `a` ends (its final event), and the stream goes on; `c`'s
/// history is lost while the stream follows it (its log deleted, and the
/// next event comes after a gap): one `sluice.reset` for `c`, then `c` goes
/// on; while the client is away `b`'s history is trimmed past its
/// position: on resume, one reset for `b`. The other tasks get every event
/// exactly through all of it, and `a` nothing after its final.
#[tokio::test]
async fn a_task_that_ends_or_resets_leaves_the_others_streaming() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let trimming = Publisher::connect_with(
        &redis.url(),
        PublisherConfig {
            log_cap: 10,
            ..PublisherConfig::default()
        },
    )
    .await
    .expect("publisher");
    let (a, b, c) = (
        unique_task("ends"),
        unique_task("trimmed"),
        unique_task("wiped"),
    );
    let tasks = vec![a.clone(), b.clone(), c.clone()];
    let url = stream_url(&edge, &tasks, "");
    // None of them exists yet: the stream waits for their first events.
    let mut s = connect(&url, None).await;
    assert_eq!(s.status, 200);
    let mut got = Received::new(&tasks);
    for i in 1..=5 {
        for t in &tasks {
            p.publish(t, "progress", &json!({"i": i}))
                .await
                .expect("publish");
        }
    }
    p.finish(&a, "done", &json!({})).await.expect("finish");
    got.until(&mut s, |g| {
        g.ended.contains(&a) && g.count(&b) == 5 && g.count(&c) == 5
    })
    .await;

    // `a` ended; the stream goes on for the others.
    p.publish(&b, "progress", &json!({"i": 6}))
        .await
        .expect("publish");
    p.publish(&c, "progress", &json!({"i": 6}))
        .await
        .expect("publish");
    got.until(&mut s, |g| g.last(&b) == Some(6) && g.last(&c) == Some(6))
        .await;

    // `c` loses its history: seq 7 reaches only the log, the log goes,
    // seq 8 arrives live after a gap; the catch-up finds 7 gone.
    publish_past_the_feed(&redis, &c, &json!({"i": 7})).await;
    let c_keys = TaskKeys::new(&TaskId::parse(&c).expect("task"), DEFAULT_SHARDS);
    let mut conn = redis.conn().await;
    let _: i64 = redis::cmd("DEL")
        .arg(&c_keys.log)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    p.publish(&c, "progress", &json!({"i": 8}))
        .await
        .expect("publish");
    p.publish(&b, "progress", &json!({"i": 7}))
        .await
        .expect("publish");
    got.until(&mut s, |g| g.last(&c) == Some(8) && g.last(&b) == Some(7))
        .await;
    assert!(got.last_is_reset(&c), "c: {:?}", got.logs[&c].received);
    p.publish(&c, "progress", &json!({"i": 9}))
        .await
        .expect("publish");
    got.until(&mut s, |g| g.last(&c) == Some(9)).await;

    // The client goes away; `b`'s history is trimmed past its position
    // (seqs 8..=307 with a log of ~10), `c` moves on.
    drop(s);
    let burst: Vec<Out> = (8..=307)
        .map(|i| (b.clone(), json!({"i": i}), false))
        .collect();
    publish_all(&trimming, &burst).await;
    for i in 10..=12 {
        p.publish(&c, "progress", &json!({"i": i}))
            .await
            .expect("publish");
    }
    let last = got.last_id.clone().expect("a cursor");
    let mut s = connect(&url, Some(&last)).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    got.until(&mut s, |g| {
        g.last(&b) == Some(307) && g.last(&c) == Some(12)
    })
    .await;
    assert!(got.last_is_reset(&b), "b: {:?}", got.logs[&b].received);
    p.finish(&b, "done", &json!({})).await.expect("finish");
    p.finish(&c, "done", &json!({})).await.expect("finish");
    got.until_it_ends(&mut s).await;

    let v = got.logs[&a].check(1, 6);
    assert!(v.is_exact(), "a: {v:?}");
    assert_eq!(
        got.seqs(&a),
        (1..=6).collect::<Vec<_>>(),
        "a: nothing after its final"
    );
    let v = got.logs[&b].check(1, 308);
    assert!(v.is_honest() && v.resets == 1, "b: {v:?}");
    let v = got.logs[&c].check(1, 13);
    assert!(v.is_honest() && v.resets == 1, "c: {v:?}");
    assert_eq!(got.ended.len(), 3);
    let last = got.last_id.clone().expect("a cursor");
    assert_eq!(connect(&url, Some(&last)).await.status, 204);
}

/// A resume point past a closed task's final event (a bare seq, which
/// cannot be verified) means nothing more will come, as at the final event
/// itself (README "The end"): that task is finished, not reset. A stream
/// whose tasks are all finished gets 204; with an open task beside it, the
/// stream follows the open one only; a WebSocket subscription answers
/// `finished`.
#[tokio::test]
async fn a_resume_point_past_the_final_event_is_finished() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let (done, open) = (unique_task("done"), unique_task("open"));
    for i in 1..=3 {
        for t in [&done, &open] {
            p.publish(t, "progress", &json!({"i": i}))
                .await
                .expect("publish");
        }
    }
    p.finish(&done, "done", &json!({})).await.expect("finish");
    let only_done = [done.clone()];
    let past = cursor(&only_done, |_| Some(Position::bare(9)));
    let c = connect(&stream_url(&edge, &only_done, ""), Some(&past)).await;
    assert_eq!(c.status, 204, "{:?}", c.body);

    let tasks = [done.clone(), open.clone()];
    let past = cursor(&tasks, |t| {
        Some(Position::bare(if t == done { 9 } else { 3 }))
    });
    let mut s = connect(&stream_url(&edge, &tasks, ""), Some(&past)).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    p.publish(&open, "progress", &json!({"i": 4}))
        .await
        .expect("publish");
    p.finish(&open, "done", &json!({})).await.expect("finish");
    let mut got = Received::new(&tasks);
    got.until_it_ends(&mut s).await;
    assert_eq!(
        got.seqs(&done),
        Vec::<u64>::new(),
        "nothing of the finished task"
    );
    let v = got.logs[&open].check(4, 5);
    assert!(v.is_exact(), "open: {v:?}");

    let mut w = WsClient::connect(&ws_url(&edge, "/v1/ws"))
        .await
        .expect("upgrade");
    let mut ws = WsReceived::default();
    let r = ws
        .request(&mut w, json!({"op": "subscribe", "task": done, "after": 9}))
        .await;
    assert_eq!(
        r,
        json!({"op": "subscribed", "task": done, "state": "finished"})
    );
    w.close().await;
}

fn token(tasks: &[&str]) -> String {
    let tasks: Vec<String> = tasks.iter().map(|s| s.to_string()).collect();
    sluice_broker::token::issue(SECRET, &tasks, Duration::from_secs(600), Some("test"))
        .expect("token")
}

fn ws_url(edge: &EdgeHandle, path: &str) -> String {
    format!("ws://{}{}", edge.addr, path)
}

async fn send(c: &mut WsClient, v: Value) {
    c.socket
        .send(Message::text(v.to_string()))
        .await
        .expect("send");
}

/// What a client of `/v1/ws` received, task by task.
#[derive(Default)]
struct WsReceived {
    logs: BTreeMap<String, DeliveryLog>,
    /// The last `pos` of each task.
    pos: BTreeMap<String, String>,
    /// Tasks whose unsubscribe was acknowledged: no envelope may follow.
    gone: BTreeSet<String>,
}

impl WsReceived {
    fn record(&mut self, v: &Value) {
        let task = v["task"].as_str().expect("envelope task").to_owned();
        assert!(
            !self.gone.contains(&task),
            "an envelope of {task} after its unsubscribe was acknowledged: {v}"
        );
        let seq = v["seq"].as_u64().expect("seq");
        let log = self.logs.entry(task.clone()).or_default();
        if v["type"] == "sluice.reset" {
            log.reset(seq);
        } else {
            log.event(seq);
        }
        self.pos
            .insert(task, v["pos"].as_str().expect("pos").to_owned());
    }

    /// The answer to a request (a message with an `op`), recording the
    /// envelopes that come before it.
    async fn answer(&mut self, c: &mut WsClient) -> Value {
        loop {
            let v = c.envelope(T).await;
            if v.get("op").is_some() {
                return v;
            }
            self.record(&v);
        }
    }

    async fn request(&mut self, c: &mut WsClient, req: Value) -> Value {
        send(c, req).await;
        self.answer(c).await
    }

    async fn until(&mut self, c: &mut WsClient, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            let v = c.envelope(T).await;
            assert!(v.get("op").is_none(), "an answer nobody asked for: {v}");
            self.record(&v);
        }
    }

    fn last(&self, task: &str) -> Option<u64> {
        self.logs.get(task).and_then(DeliveryLog::last)
    }

    fn count(&self, task: &str) -> usize {
        self.logs.get(task).map_or(0, |l| l.received.len())
    }
}

/// SSE: every task is authorized (a token for a and b asking a, b and c:
/// 403 naming c). WebSocket: a token is needed for the upgrade, then each
/// subscription is checked on its own: with a token for `a` only, `b` is
/// refused (`forbidden`) and `a` goes on streaming.
#[tokio::test]
async fn every_task_of_a_connection_is_authorized() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .secure()
        .args(&["--auth-secret", SECRET])
        .start()
        .await;
    let p = publisher(&redis).await;
    let (a, b, c) = (
        unique_task("auth-a"),
        unique_task("auth-b"),
        unique_task("auth-c"),
    );
    for t in [&a, &b, &c] {
        p.publish(t, "progress", &json!({"i": 1}))
            .await
            .expect("publish");
    }
    let ab = token(&[&a, &b]);
    let abc = [a.clone(), b.clone(), c.clone()];

    let (status, body) = refused(&stream_url(&edge, &abc, &format!("token={ab}")), None).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    let message = body["message"].as_str().expect("message");
    assert!(message.contains(&c), "403 names the task: {message}");
    let (status, body) = refused(&stream_url(&edge, &abc, ""), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = refused(&stream_url(&edge, &abc, "token=garbage"), None).await;
    assert_eq!(status, 401);

    // The tasks the token covers: both snapshots.
    let ok = [a.clone(), b.clone()];
    let mut s = connect(&stream_url(&edge, &ok, &format!("token={ab}")), None).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    let mut got = Received::new(&ok);
    got.until(&mut s, |g| g.count(&a) == 1 && g.count(&b) == 1)
        .await;
    // And with the token as a bearer header.
    let bearer = format!("Bearer {ab}");
    let s = SseClient::connect_with(
        &stream_url(&edge, &ok, ""),
        None,
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(s.status, 200);

    let ws = ws_url(&edge, "/v1/ws");
    assert_eq!(WsClient::connect(&ws).await.err(), Some(401));
    assert_eq!(
        WsClient::connect(&format!("{ws}?token=garbage"))
            .await
            .err(),
        Some(401)
    );
    let only_a = token(&[&a]);
    let mut w = WsClient::connect(&format!("{ws}?token={only_a}"))
        .await
        .expect("upgrade with a valid token");
    let mut got = WsReceived::default();
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": a}))
        .await;
    assert_eq!(
        r,
        json!({"op": "subscribed", "task": a, "state": "streaming"})
    );
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": b}))
        .await;
    assert_eq!(r["op"], "error");
    assert_eq!(r["task"], json!(b));
    assert_eq!(r["error"], "forbidden");
    for (t, i) in [(&a, 2), (&b, 2), (&a, 3)] {
        p.publish(t, "progress", &json!({"i": i}))
            .await
            .expect("publish");
    }
    got.until(&mut w, |g| g.last(&a) == Some(3)).await;
    let v = got.logs[&a].check(1, 3);
    assert!(v.is_exact(), "a: {v:?}");
    assert_eq!(got.count(&b), 0, "nothing of the refused task");
    w.close().await;
}

/// `--max-tasks-per-connection 3`: a fourth task is refused on SSE (400
/// `too_many_tasks`; a task named twice counts once) and on WebSocket (an
/// error answer; the three others keep streaming; after an unsubscribe
/// there is room again). Bad cursors, modes and messages are refused with
/// their codes.
#[tokio::test]
async fn limits_and_bad_requests_of_many_task_connections() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--max-tasks-per-connection", "3"])
        .start()
        .await;
    let p = publisher(&redis).await;
    let t: Vec<String> = (0..4).map(|i| unique_task(&format!("lim{i}"))).collect();

    let (status, body) = refused(&stream_url(&edge, &t, ""), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("too_many_tasks"))
    );
    let three_named_four_times = [t[0].clone(), t[1].clone(), t[2].clone(), t[0].clone()];
    let s = connect(&stream_url(&edge, &three_named_four_times, ""), None).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    drop(s);

    // Resume points: a cursor only, of this task set.
    let three = &t[..3];
    let url = stream_url(&edge, three, "");
    let other_set = cursor(&t[1..], |_| Some(Position::bare(0)));
    let mine = cursor(three, |_| Some(Position::bare(0)));
    for bad in ["mAAAA", "m", "5", "5.AbCd3w", "garbage", other_set.as_str()] {
        let (status, body) = refused(&url, Some(bad)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_resume_point")),
            "Last-Event-ID {bad}"
        );
        let (status, body) =
            refused(&stream_url(&edge, three, &format!("after={bad}")), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_resume_point")),
            "after={bad}"
        );
    }
    assert_eq!(connect(&url, Some(&mine)).await.status, 200);

    for bad in [
        "mode=fast",
        "mode=latest&interval=10ms",
        "mode=latest&interval=61s",
        "mode=latest&interval=soon",
        "interval=1s",
        "mode=all&interval=1s",
    ] {
        let (status, body) = refused(&stream_url(&edge, three, bad), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_mode")),
            "{bad}"
        );
        assert_eq!(
            WsClient::connect(&ws_url(&edge, &format!("/v1/ws?{bad}")))
                .await
                .err(),
            Some(400),
            "ws {bad}"
        );
    }
    let (status, body) = refused(&edge.url("/v1/events"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("missing_task"))
    );
    let (status, body) = refused(&edge.url("/v1/events?task=bad%20id"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_task"))
    );

    // WebSocket: three subscriptions, the fourth refused.
    let mut w = WsClient::connect(&ws_url(&edge, "/v1/ws"))
        .await
        .expect("upgrade");
    let mut got = WsReceived::default();
    for task in three {
        let r = got
            .request(&mut w, json!({"op": "subscribe", "task": task}))
            .await;
        assert_eq!(r["op"], "subscribed", "{r}");
    }
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": t[3]}))
        .await;
    assert_eq!(
        (r["op"].as_str(), r["task"].as_str(), r["error"].as_str()),
        (Some("error"), Some(t[3].as_str()), Some("too_many_tasks")),
        "{r}"
    );
    // Subscribing again to a task already followed is no fourth task.
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": t[0]}))
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    for (task, code, req) in [
        (
            Some("bad id"),
            "invalid_task",
            json!({"op": "subscribe", "task": "bad id"}),
        ),
        (
            Some(t[0].as_str()),
            "invalid_resume_point",
            json!({"op": "subscribe", "task": t[0], "after": "x"}),
        ),
        (
            Some(t[3].as_str()),
            "not_subscribed",
            json!({"op": "unsubscribe", "task": t[3]}),
        ),
        (
            None,
            "invalid_message",
            json!({"op": "dance", "task": t[0]}),
        ),
        (None, "invalid_message", json!({"op": "subscribe"})),
        (
            None,
            "invalid_message",
            json!({"op": "subscribe", "task": t[0], "after": [1]}),
        ),
    ] {
        let r = got.request(&mut w, req.clone()).await;
        assert_eq!(r["op"], "error", "{req} -> {r}");
        assert_eq!(r["error"], code, "{req} -> {r}");
        assert_eq!(r["task"].as_str(), task, "{req} -> {r}");
    }
    // The three subscriptions are unaffected: every event of each.
    for i in 1..=3 {
        for task in &t {
            p.publish(task, "progress", &json!({"i": i}))
                .await
                .expect("publish");
        }
    }
    got.until(&mut w, |g| three.iter().all(|task| g.last(task) == Some(3)))
        .await;
    for task in three {
        let v = got.logs[task].check(1, 3);
        assert!(v.is_exact(), "{task}: {v:?}");
    }
    assert_eq!(got.count(&t[3]), 0);
    // Room again after an unsubscribe.
    let r = got
        .request(&mut w, json!({"op": "unsubscribe", "task": t[2]}))
        .await;
    assert_eq!(r, json!({"op": "unsubscribed", "task": t[2]}));
    got.gone.insert(t[2].clone());
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": t[3], "after": 0}))
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    got.until(&mut w, |g| g.last(&t[3]) == Some(3)).await;
    let v = got.logs[&t[3]].check(1, 3);
    assert!(v.is_exact(), "{}: {v:?}", t[3]);
    w.close().await;
}

/// `/v1/ws` while events flow: `x` from `after: 0` and `y` from its
/// snapshot, a producer publishing both; `x` is unsubscribed mid-way:
/// nothing of it after the acknowledgement (checked with an event of `x`
/// published before one of `y` on the same feed shard); `x` subscribed
/// again from its last `pos` continues exactly. `after` as a bare seq
/// number works; the socket stays open after every task ended; a resume
/// point at the final event answers `finished`.
#[tokio::test]
async fn websocket_subscribe_and_unsubscribe_while_events_flow() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let x = unique_task("wsx");
    // `y` on `x`'s shard: one feed stream carries both, in publish order.
    let y = loop {
        let y = unique_task("wsy");
        if shard_of(&y, DEFAULT_SHARDS) == shard_of(&x, DEFAULT_SHARDS) {
            break y;
        }
    };
    let z = unique_task("wsz");
    for i in 1..=10 {
        p.publish(&z, "progress", &json!({"i": i}))
            .await
            .expect("publish");
    }
    for t in [&x, &y] {
        p.publish(t, "progress", &json!({"i": 1}))
            .await
            .expect("publish");
    }
    let mut w = WsClient::connect(&ws_url(&edge, "/v1/ws"))
        .await
        .expect("upgrade");
    let mut got = WsReceived::default();
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": x, "after": 0}))
        .await;
    assert_eq!(
        r,
        json!({"op": "subscribed", "task": x, "state": "streaming"})
    );
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": y}))
        .await;
    assert_eq!(
        r,
        json!({"op": "subscribed", "task": y, "state": "streaming"})
    );

    const N: u64 = 200;
    let producer = {
        let (p, x, y) = (p.clone(), x.clone(), y.clone());
        tokio::spawn(async move {
            for i in 2..=N {
                for t in [&x, &y] {
                    p.publish(t, "progress", &json!({"i": i}))
                        .await
                        .expect("publish");
                }
            }
        })
    };
    got.until(&mut w, |g| g.count(&x) >= 60).await;
    let r = got
        .request(&mut w, json!({"op": "unsubscribe", "task": x}))
        .await;
    assert_eq!(r, json!({"op": "unsubscribed", "task": x}));
    got.gone.insert(x.clone());
    producer.await.expect("producer");
    p.publish(&x, "progress", &json!({"i": N + 1}))
        .await
        .expect("publish");
    p.publish(&y, "progress", &json!({"i": N + 1}))
        .await
        .expect("publish");
    got.until(&mut w, |g| g.last(&y) == Some(N + 1)).await;
    got.gone.remove(&x);

    // Again from the last position: the events it missed, then live.
    let at = got.pos[&x].clone();
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": x, "after": at}))
        .await;
    assert_eq!(
        r,
        json!({"op": "subscribed", "task": x, "state": "streaming"})
    );
    got.until(&mut w, |g| g.last(&x) == Some(N + 1)).await;
    p.finish(&x, "done", &json!({})).await.expect("finish");
    p.finish(&y, "done", &json!({})).await.expect("finish");
    got.until(&mut w, |g| {
        g.last(&x) == Some(N + 2) && g.last(&y) == Some(N + 2)
    })
    .await;
    let v = got.logs[&x].check(1, N + 2);
    assert!(v.is_exact(), "x: {v:?}");
    let v = got.logs[&y].check(1, N + 2);
    assert!(v.is_exact(), "y: {v:?}");

    // Both ended; the socket is still open. A bare seq as `after`.
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": z, "after": 5}))
        .await;
    assert_eq!(
        r,
        json!({"op": "subscribed", "task": z, "state": "streaming"})
    );
    got.until(&mut w, |g| g.last(&z) == Some(10)).await;
    let v = got.logs[&z].check(6, 10);
    assert!(v.is_exact(), "z: {v:?}");
    // From the final event of `x`: nothing more will come.
    let r = got
        .request(&mut w, json!({"op": "unsubscribe", "task": x}))
        .await;
    assert_eq!(r["op"], "unsubscribed");
    let at = got.pos[&x].clone();
    let r = got
        .request(&mut w, json!({"op": "subscribe", "task": x, "after": at}))
        .await;
    assert_eq!(
        r,
        json!({"op": "subscribed", "task": x, "state": "finished"})
    );
    w.close().await;
}

/// One connection follows 50 tasks with `--queue-capacity 16`: one task
/// floods (a backlog of 3 000 events of 4 KB read from history in pages of
/// 100, and 600 more published live while the others publish), the 49
/// others publish 3 events each. Every task gets every seq exactly once,
/// the flooding one through catch-up; and the others are not starved: each
/// one's last event arrives before the flood's final event (if the flood
/// read its pages without giving the others their turns, they would come
/// after its whole backlog, about 12 MB). The client reads through a small
/// receive buffer, so the edge cannot be far ahead of it.
#[tokio::test]
async fn a_flooding_task_does_not_starve_the_others_on_its_connection() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--queue-capacity", "16", "--history-page", "100"])
        .start()
        .await;
    let p = publisher(&redis).await;
    let flood = unique_task("flood");
    let others: Vec<String> = (0..49).map(|i| unique_task(&format!("calm{i}"))).collect();
    let mut tasks = others.clone();
    tasks.push(flood.clone());
    const BACKLOG: u64 = 3000;
    const LIVE: u64 = 600;
    const EACH: u64 = 3;
    const FINAL: u64 = BACKLOG + LIVE + 1;
    let blob = "f".repeat(4000);
    let backlog: Vec<Out> = (1..=BACKLOG)
        .map(|i| (flood.clone(), json!({"i": i, "blob": blob}), false))
        .collect();
    publish_all(&p, &backlog).await;

    let from = cursor(&tasks, |t| (t == flood).then(|| Position::bare(0)));
    let mut s = RawSse::request_with(
        edge.addr,
        &query(&tasks, ""),
        &[("last-event-id", &from)],
        Some(16 * 1024),
    )
    .await;
    s.read_head().await;
    assert_eq!(s.status, 200);
    let mut got = Received::new(&tasks);
    got.until(&mut s, |g| g.count(&flood) >= 100).await;

    let started_at = got.arrivals.len();
    let producer = {
        let (p, flood, others) = (p.clone(), flood.clone(), others.clone());
        tokio::spawn(async move {
            let per_round = LIVE / EACH;
            for round in 1..=EACH {
                let mut batch: Vec<Out> = Vec::new();
                for (k, t) in others.iter().enumerate() {
                    batch.push((t.clone(), json!({"round": round}), false));
                    // The flood's live events between the others'.
                    let n = per_round * (k as u64 + 1) / others.len() as u64
                        - per_round * k as u64 / others.len() as u64;
                    for _ in 0..n {
                        batch.push((flood.clone(), json!({"live": round}), false));
                    }
                }
                publish_all(&p, &batch).await;
            }
            p.finish(&flood, "done", &json!({})).await.expect("finish");
        })
    };
    got.until(&mut s, |g| {
        g.ended.contains(&flood) && others.iter().all(|t| g.count(t) == EACH as usize)
    })
    .await;
    producer.await.expect("producer");

    let v = got.logs[&flood].check(1, FINAL);
    assert!(v.is_exact(), "flood: {v:?}");
    for t in &others {
        let v = got.logs[t].check(1, EACH);
        assert!(v.is_exact(), "{t}: {v:?}");
    }
    let at = |task: &str, seq: u64| {
        got.arrivals
            .iter()
            .position(|(t, s)| t == task && *s == seq)
            .expect("arrived")
    };
    let flood_final = at(&flood, FINAL);
    let others_last = others.iter().map(|t| at(t, EACH)).max().expect("others");
    let flood_between = got.arrivals[started_at..others_last]
        .iter()
        .filter(|(t, _)| *t == flood)
        .count();
    let flood_after = got.arrivals[started_at..]
        .iter()
        .filter(|(t, _)| *t == flood)
        .count();
    println!(
        "the others' last event came after {flood_between} of the {flood_after} flood events \
         delivered once they started publishing"
    );
    assert!(
        others_last < flood_final,
        "the other tasks waited for the flood's whole backlog: their last event arrived at \
         frame {others_last}, after the flood's final at {flood_final}"
    );
}

/// Waits until `done(sample)` holds for ten samples of `/metrics` in a row
/// (100 ms apart), 60 s at most; `sample` is read from the edge each time.
async fn settle(
    addr: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&[f64]) -> bool,
    series: &[&str],
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (Vec::new(), 0);
    while still < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut sample = Vec::new();
        for s in series {
            sample.push(metric(addr, s).await);
        }
        still = if done(&sample) && sample == last {
            still + 1
        } else {
            0
        };
        last = sample;
    }
}

/// A connection that follows 100 tasks and never reads holds what README's
/// formula allows one subscriber (one queue of `--queue-capacity` events,
/// one history page, hyper's buffer, one batch) plus a few KiB per task,
/// not a queue per task. Each task has a backlog (2 events of 60 KB, read
/// from history in turns, until the socket is full) and then 5 more events
/// of 60 KB each come live while the connection is stalled: 30 MB that a
/// queue per task would hold, against the 16 events of the connection's
/// one queue (the others are read from history once the client reads).
/// The edge runs as a process of its own so its RSS is its alone
/// (`held_memory.rs` explains the terms of the formula).
#[tokio::test]
async fn a_connection_of_100_tasks_that_never_reads_holds_one_queue_not_one_per_task() {
    sluice_tests::init_logs();
    const TASKS: usize = 100;
    const BACKLOG: u64 = 2;
    const LIVE: u64 = 5;
    const DATA_BYTES: usize = 60_000;
    const QUEUE: usize = 16;
    const PAGE_BYTES: usize = 256 * 1024;
    /// State a followed task may hold (README: a few hundred bytes).
    const PER_TASK_STATE: usize = 4 * 1024;
    const ALLOWANCE_MIB: f64 = 12.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let redis = RedisFixture::start().await;
    let p = publisher(&redis).await;
    let tasks: Vec<String> = (0..TASKS)
        .map(|i| unique_task(&format!("wide{i}")))
        .collect();
    let blob = "w".repeat(DATA_BYTES);
    let events = |from: u64, to: u64| -> Vec<Out> {
        (from..=to)
            .flat_map(|i| {
                tasks.iter().map(move |t| {
                    (
                        t.clone(),
                        json!({"i": i, "blob": "w".repeat(DATA_BYTES)}),
                        false,
                    )
                })
            })
            .collect()
    };
    for chunk in events(1, BACKLOG).chunks(20) {
        publish_all(&p, chunk).await;
    }
    // Started after the backlog: its feed reader starts at the end.
    let edge = EdgeProcess::start(&[
        "--redis-url",
        &redis.url(),
        "--insecure",
        "--queue-capacity",
        &QUEUE.to_string(),
        "--history-page-bytes",
        &PAGE_BYTES.to_string(),
    ])
    .await;
    let largest = sluice_shared::StoredEvent {
        task: tasks[0].clone(),
        seq: BACKLOG + LIVE,
        kind: "progress".into(),
        data: json!({"i": BACKLOG + LIVE, "blob": blob}),
        ts: 1_800_000_000_000,
        is_final: true,
        epoch: 0,
    };
    let event = sluice_edge::wire::Event::from_history(&largest).sse.len();
    let growth_factor = sluice_edge::store::redis::HISTORY_READ_GROWTH;
    let page = growth_factor * PAGE_BYTES.max(event) + PAGE_BYTES + event;
    let hyper_buf = 8192 + 4096 * 100;
    let connection = QUEUE * event + page + hyper_buf + sluice_edge::session::BATCH_BYTES + event;
    let limit = (connection + TASKS * PER_TASK_STATE) as f64 / MIB + ALLOWANCE_MIB;

    let pid = edge.pid;
    let base = status_kib(pid, "VmRSS:");
    let sampler = RssPeak::start(pid);
    let hwm_exact = reset_hwm(pid);
    let from_zero = cursor(&tasks, |_| Some(Position::bare(0)));
    let s = RawSse::request_with(
        edge.addr,
        &query(&tasks, ""),
        &[("last-event-id", &from_zero)],
        Some(64 * 1024),
    )
    .await;
    // The edge follows the 100 tasks and joined their feeds, and its
    // writes stopped (the socket is full).
    let feeds: std::collections::BTreeSet<_> = tasks
        .iter()
        .map(|t| sluice_shared::FeedId::of(t, DEFAULT_SHARDS))
        .collect();
    let delivered = "sluice_edge_events_delivered_total{";
    settle(
        edge.addr,
        "the client's socket full",
        |m| m[0] == TASKS as f64 && m[1] > 0.0 && m[2] == feeds.len() as f64,
        &[
            "sluice_edge_subscriptions",
            delivered,
            "sluice_edge_feeds_followed",
        ],
    )
    .await;
    let written = metric(edge.addr, delivered).await;
    // Then every task publishes while the connection is stalled, and the
    // edge has offered all of it to the connection.
    for chunk in events(BACKLOG + 1, BACKLOG + LIVE).chunks(20) {
        publish_all(&p, chunk).await;
    }
    let live = (TASKS as u64 * LIVE) as f64;
    settle(
        edge.addr,
        "the live events offered",
        |m| m[0] == live && m[1] == written,
        &["sluice_edge_feed_events_total", delivered],
    )
    .await;
    let hwm = if hwm_exact {
        status_kib(pid, "VmHWM:")
    } else {
        0
    };
    let peak = sampler.peak().max(hwm);
    drop(sampler);
    // What the edge holds for the stalled connection, once the node's
    // transient memory (the feed reader's replies, 30 MB here, read
    // whatever the subscribers) went back: the allocator returns freed
    // pages after a second. A queue per task would hold the live events
    // for good.
    let held = || status_kib(pid, "VmRSS:").saturating_sub(base) as f64 / 1024.0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut growth = held();
    while growth > limit && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        growth = held();
    }
    let caught_up = metric(edge.addr, "sluice_edge_catchups_total").await;
    println!(
        "event {event} B; one connection {:.2} MiB (queue {QUEUE} x event + page {:.2} MiB + hyper + batch + event) \
         + {TASKS} x {PER_TASK_STATE} B + allowance {ALLOWANCE_MIB:.0} = {limit:.2} MiB; \
         RSS base {base} KiB, peak {peak} KiB (the feed burst), held {growth:.2} MiB more than the base; \
         {written} events written before the socket filled; {caught_up} subscriptions switched to catch-up \
         by the full queue",
        connection as f64 / MIB,
        page as f64 / MIB,
    );
    assert!(
        growth <= limit,
        "a stalled connection of {TASKS} tasks makes the edge hold {growth:.2} MiB, more than \
         one connection's bound ({limit:.2} MiB)"
    );
    assert_eq!(
        caught_up, TASKS as f64,
        "every task beyond the queue's capacity was left to catch up"
    );
    drop(s);
}

/// `?mode=latest&interval=300ms` over SSE: 200 progress events published
/// as fast as possible to each of three tasks reach the client as far
/// fewer (the newest per interval), each task's seqs strictly increasing up
/// to the newest; resuming with the cursor after 100 more gives the newest
/// (300) first, not the missed ones; every final event arrives, last.
#[tokio::test]
async fn latest_mode_sends_the_newest_event_per_interval_and_every_final() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let tasks: Vec<String> = (0..3).map(|i| unique_task(&format!("bar{i}"))).collect();
    const BURST: u64 = 200;
    let url = stream_url(&edge, &tasks, "mode=latest&interval=300ms");
    let mut s = connect(&url, None).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    let burst = |from: u64, to: u64| -> Vec<Out> {
        (from..=to)
            .flat_map(|i| {
                tasks
                    .iter()
                    .map(move |t| (t.clone(), json!({"pct": i}), false))
            })
            .collect()
    };
    publish_all(&p, &burst(1, BURST)).await;
    let mut got = Received::new(&tasks);
    got.until(&mut s, |g| tasks.iter().all(|t| g.last(t) == Some(BURST)))
        .await;
    drop(s);

    publish_all(&p, &burst(BURST + 1, 2 * BURST)).await;
    let resumed_at = got.arrivals.len();
    let last = got.last_id.clone().expect("a cursor");
    let mut s = connect(&url, Some(&last)).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    got.until(&mut s, |g| {
        tasks.iter().all(|t| g.last(t) == Some(2 * BURST))
    })
    .await;
    for t in &tasks {
        let first = got.arrivals[resumed_at..]
            .iter()
            .find(|(task, _)| task == t)
            .map(|(_, seq)| *seq);
        assert_eq!(
            first,
            Some(2 * BURST),
            "{t}: the newest first after a resume"
        );
    }
    for t in &tasks {
        p.finish(t, "done", &json!({})).await.expect("finish");
    }
    got.until_it_ends(&mut s).await;
    for t in &tasks {
        let seqs = got.seqs(t);
        println!("{t}: {} events of {}: {seqs:?}", seqs.len(), 2 * BURST + 1);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{t}: seqs strictly increase: {seqs:?}"
        );
        assert!(
            seqs.len() as u64 <= BURST,
            "{t}: {} events of {} published: latest mode sent most of them",
            seqs.len(),
            2 * BURST + 1
        );
        assert_eq!(seqs.last(), Some(&(2 * BURST + 1)), "{t}: the final last");
        assert!(got.ended.contains(t), "{t}: the final arrived");
    }
    let last = got.last_id.clone().expect("a cursor");
    assert_eq!(connect(&url, Some(&last)).await.status, 204);
}

/// Latest-value mode never holds a final event back until the next tick:
/// with `interval=60s`, a task's final event reaches the client within the
/// harness's 10 s read timeout (held, it would come at the tick, after the
/// timeout), after the newest progress of that task and alone ending it,
/// while the other task of the stream stays open; then that one's final
/// ends the stream.
#[tokio::test]
async fn latest_mode_never_holds_a_final_back() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let tasks: Vec<String> = (0..2).map(|i| unique_task(&format!("fin{i}"))).collect();
    let url = stream_url(&edge, &tasks, "mode=latest&interval=60s");
    let mut s = connect(&url, None).await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    let mut got = Received::new(&tasks);
    for round in 0..2 {
        let (t, other) = (&tasks[round], &tasks[1 - round]);
        for i in 1..=5 {
            for open in &tasks[round..] {
                p.publish(open, "progress", &json!({ "i": i }))
                    .await
                    .expect("publish");
            }
        }
        p.finish(t, "done", &json!({})).await.expect("finish");
        got.until(&mut s, |g| g.ended.contains(t)).await;
        let seqs = got.seqs(t);
        assert_eq!(
            seqs.last(),
            Some(&(5 * (round as u64 + 1) + 1)),
            "{t}: {seqs:?}"
        );
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{t}: {seqs:?}");
        if round == 0 {
            assert!(!got.ended.contains(other), "{other} is still open");
        }
    }
    got.until_it_ends(&mut s).await;
    assert_eq!(got.ended.len(), 2);
}

/// `sluice_edge_connection_subscriptions` (tasks per connection, observed
/// when it closes): an SSE stream of three tasks (one named twice) counts
/// 3; a WebSocket that followed at most two at once counts 2.
#[tokio::test]
async fn the_tasks_per_connection_histogram_counts_closed_connections() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--heartbeat-secs", "1"])
        .start()
        .await;
    let p = publisher(&redis).await;
    let tasks: Vec<String> = (0..3).map(|i| unique_task(&format!("hist{i}"))).collect();
    for t in &tasks {
        p.publish(t, "progress", &json!({"i": 1}))
            .await
            .expect("publish");
    }
    let h = "sluice_edge_connection_subscriptions";
    let count = format!("{h}_count");
    let sum = format!("{h}_sum");
    assert_eq!(metric(edge.addr, &count).await, 0.0);

    let named = [tasks.clone(), vec![tasks[0].clone()]].concat();
    let mut s = connect(&stream_url(&edge, &named, ""), None).await;
    assert_eq!(s.status, 200);
    let mut got = Received::new(&tasks);
    got.until(&mut s, |g| tasks.iter().all(|t| g.count(t) == 1))
        .await;
    drop(s);
    wait_until("the SSE connection observed", T, || {
        let count = count.clone();
        async move { metric(edge.addr, &count).await == 1.0 }
    })
    .await;
    assert_eq!(metric(edge.addr, &sum).await, 3.0);

    let mut w = WsClient::connect(&ws_url(&edge, "/v1/ws"))
        .await
        .expect("upgrade");
    let mut ws = WsReceived::default();
    for (op, t) in [
        ("subscribe", &tasks[0]),
        ("subscribe", &tasks[1]),
        ("unsubscribe", &tasks[0]),
        ("subscribe", &tasks[2]),
    ] {
        let r = ws.request(&mut w, json!({"op": op, "task": t})).await;
        assert_ne!(r["op"], "error", "{r}");
    }
    w.close().await;
    wait_until("the WebSocket observed", T, || {
        let count = count.clone();
        async move { metric(edge.addr, &count).await == 2.0 }
    })
    .await;
    assert_eq!(metric(edge.addr, &sum).await, 5.0);
    assert_eq!(
        metric(edge.addr, &format!("{h}_bucket{{le=\"1.0\"}}")).await,
        0.0
    );
    assert_eq!(
        metric(edge.addr, &format!("{h}_bucket{{le=\"2.0\"}}")).await,
        1.0
    );
    assert_eq!(
        metric(edge.addr, &format!("{h}_bucket{{le=\"5.0\"}}")).await,
        2.0
    );
}

/// What one client of the benchmark received.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    bytes: u64,
    events: u64,
    /// Bytes of the `id: ...\n` lines (SSE of many tasks: the cursor).
    id_bytes: u64,
}

/// Reads an SSE stream to its end, counting body bytes and events.
async fn tally_sse(url: String) -> Tally {
    let resp = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut decoder = sluice_tests::sse::SseDecoder::default();
    let mut tally = Tally::default();
    let mut ended = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body");
        tally.bytes += chunk.len() as u64;
        assert!(decoder.feed(&chunk));
        while let Some(f) = decoder.next_frame() {
            if f.is_event() {
                tally.events += 1;
                tally.id_bytes += f.id.as_ref().map_or(0, |id| id.len() as u64 + 5);
                if f.json()["final"] == json!(true) {
                    ended += 1;
                }
            }
        }
    }
    assert!(ended > 0, "the stream ended after the finals");
    tally
}

/// Reads a `/v1/ws` socket subscribed to `tasks` until every task's final
/// event, counting text bytes (envelopes) and events.
async fn tally_ws(mut w: WsClient, tasks: Vec<String>) -> Tally {
    let mut tally = Tally::default();
    let mut ended = BTreeSet::new();
    while ended.len() < tasks.len() {
        let msg = tokio::time::timeout(Duration::from_secs(60), w.socket.next())
            .await
            .expect("a message within a minute")
            .expect("open")
            .expect("message");
        if let Message::Text(text) = msg {
            let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
            if v.get("op").is_some() {
                continue;
            }
            tally.bytes += text.len() as u64;
            tally.events += 1;
            if v["final"] == json!(true) {
                ended.insert(v["task"].as_str().expect("task").to_owned());
            }
        }
    }
    w.close().await;
    tally
}

/// The benchmark of tests/BENCHMARKS.md "A page of 100 progress bars:
/// bytes per mode": 100 tasks each publishing 10 progress events a second
/// (data of about 200 bytes) for 20 s, then a final event each; four
/// clients follow all of them at once, so the workload is the same for
/// each: SSE and WebSocket, each in the normal mode and in latest mode
/// with `interval=1s`.
///
/// ```sh
/// cargo test -p sluice-tests --test it \
///     multi_task::bytes_per_mode_of_a_page_of_100_progress_bars -- --ignored --nocapture
/// ```
#[tokio::test]
#[ignore = "a 20 s measurement for tests/BENCHMARKS.md; run it with --ignored"]
async fn bytes_per_mode_of_a_page_of_100_progress_bars() {
    sluice_tests::init_logs();
    const TASKS: usize = 100;
    const RATE: u64 = 10;
    const SECS: u64 = 20;
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let tasks: Vec<String> = (0..TASKS)
        .map(|i| format!("bar-{i:03}-{}", unique_task("b")))
        .collect();
    let sse_all = tokio::spawn(tally_sse(stream_url(&edge, &tasks, "")));
    let sse_latest = tokio::spawn(tally_sse(stream_url(
        &edge,
        &tasks,
        "mode=latest&interval=1s",
    )));
    let mut ws_clients = Vec::new();
    for mode in ["", "?mode=latest&interval=1s"] {
        let mut w = WsClient::connect(&ws_url(&edge, &format!("/v1/ws{mode}")))
            .await
            .expect("upgrade");
        let mut got = WsReceived::default();
        for t in &tasks {
            let r = got
                .request(&mut w, json!({"op": "subscribe", "task": t}))
                .await;
            assert_eq!(r["op"], "subscribed");
        }
        ws_clients.push(tokio::spawn(tally_ws(w, tasks.clone())));
    }
    // Both SSE streams are open (they registered before answering).
    let state = edge.state.clone();
    wait_until("four connections following every task", T, || {
        let st = state.clone();
        async move { st.metrics.subscriptions.get() == 4 * TASKS as i64 }
    })
    .await;

    let step = "x".repeat(168);
    let sample = json!({"pct": 100, "step": 1000, "msg": step});
    let data_bytes = sample.to_string().len();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let started = tokio::time::Instant::now();
    for n in 1..=RATE * SECS {
        tick.tick().await;
        let batch: Vec<Out> = tasks
            .iter()
            .map(|t| {
                let pct = n * 100 / (RATE * SECS);
                (
                    t.clone(),
                    json!({"pct": pct, "step": n, "msg": step}),
                    false,
                )
            })
            .collect();
        publish_all(&p, &batch).await;
    }
    let published_for = started.elapsed();
    let finals: Vec<Out> = tasks
        .iter()
        .map(|t| (t.clone(), json!({"pct": 100, "step": "done"}), true))
        .collect();
    publish_all(&p, &finals).await;
    let published = (RATE * SECS + 1) * TASKS as u64;
    let rows = [
        ("SSE, mode=all", sse_all.await.expect("client")),
        (
            "SSE, mode=latest&interval=1s",
            sse_latest.await.expect("client"),
        ),
        (
            "WebSocket, mode=all",
            ws_clients.remove(0).await.expect("client"),
        ),
        (
            "WebSocket, mode=latest&interval=1s",
            ws_clients.remove(0).await.expect("client"),
        ),
    ];
    println!(
        "{TASKS} tasks x {RATE} events/s x {SECS} s (+1 final each) = {published} events published \
         in {published_for:.1?}; data {data_bytes} bytes; task ids of {} characters on average",
        tasks.iter().map(String::len).sum::<usize>() as f64 / TASKS as f64,
    );
    println!("| client | bytes received | events | bytes/event | of which id: line |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, t) in rows {
        println!(
            "| {name} | {} | {} | {:.0} | {:.0} |",
            t.bytes,
            t.events,
            t.bytes as f64 / t.events.max(1) as f64,
            t.id_bytes as f64 / t.events.max(1) as f64,
        );
    }
}

/// `/v1/ws`: subscribing again to a task already followed starts it again
/// from the new `after` (here: back to seq 3 of 5, so 4 and 5 come again).
#[tokio::test]
async fn subscribing_again_starts_the_task_again_from_the_new_point() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = publisher(&redis).await;
    let t = unique_task("again");
    for i in 1..=5 {
        p.publish(&t, "progress", &json!({"i": i}))
            .await
            .expect("publish");
    }
    let mut w = WsClient::connect(&ws_url(&edge, "/v1/ws"))
        .await
        .expect("upgrade");
    send(&mut w, json!({"op": "subscribe", "task": t, "after": 0})).await;
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let v = w.envelope(T).await;
        if v.get("op").is_some() {
            assert_eq!(
                v,
                json!({"op": "subscribed", "task": t, "state": "streaming"})
            );
            continue;
        }
        seqs.push(v["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    send(&mut w, json!({"op": "subscribe", "task": t, "after": 3})).await;
    let ack = w.envelope(T).await;
    assert_eq!(
        ack,
        json!({"op": "subscribed", "task": t, "state": "streaming"})
    );
    let again: Vec<Option<u64>> = vec![
        w.envelope(T).await["seq"].as_u64(),
        w.envelope(T).await["seq"].as_u64(),
    ];
    assert_eq!(again, vec![Some(4), Some(5)]);
}
