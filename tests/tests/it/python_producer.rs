//! A producer in another language: `tests/python/producer.py` publishes with
//! Python's `redis` package (PyPI) through `FCALL sluice_publish`, computing
//! the shard and keys itself; the events are read back through an edge over
//! SSE and must match what Python sent, seq for seq.
//!
//! Needs `python3` with the `redis` and `msgpack` packages (tests/setup.sh
//! installs them); `SLUICE_PYTHON` names another interpreter.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_shared::{shard_of, TaskId, TaskKeys, DEFAULT_SHARDS};
use sluice_tests::{unique_task, DeliveryLog, RedisFixture, SseClient, TestEdge};

const T: Duration = Duration::from_secs(10);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/producer.py")
}

/// Runs the producer script; returns its JSON lines.
fn run_producer(args: &[&str]) -> Vec<Value> {
    let py = sluice_tests::python();
    let probe = Command::new(&py)
        .args(["-c", "import redis, msgpack"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e} (set SLUICE_PYTHON)"));
    assert!(
        probe.status.success(),
        "{py} lacks the redis/msgpack packages (tests/setup.sh installs them: \
         python3 -m pip install redis msgpack): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let out = Command::new(&py)
        .arg(script())
        .args(args)
        .output()
        .expect("run producer.py");
    assert!(
        out.status.success(),
        "producer.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("producer prints JSON lines"))
        .collect()
}

/// Python's shard hash and keys agree with the Rust key schema.
#[test]
fn python_shard_hash_matches_rust() {
    let tasks = [
        "a",
        "foobar",
        "job-42",
        "export:2026-11-23.x_Y",
        &"z".repeat(128),
    ];
    let mut args = vec!["--task", "unused", "--print-shards"];
    args.extend(tasks.iter().copied());
    let lines = run_producer(&args);
    assert_eq!(lines.len(), tasks.len());
    for (line, task) in lines.iter().zip(tasks) {
        let keys = TaskKeys::new(&TaskId::parse(task).expect("valid"), DEFAULT_SHARDS);
        assert_eq!(
            line["shard"],
            json!(shard_of(task, DEFAULT_SHARDS)),
            "{task}"
        );
        assert_eq!(line["log"], json!(keys.log));
        assert_eq!(line["meta"], json!(keys.meta));
        assert_eq!(line["feed"], json!(keys.feed));
    }
}

#[tokio::test]
async fn python_producer_events_arrive_through_an_edge() {
    sluice_tests::init_logs();
    // The edge loads the function at start (as in a deployment).
    let (redis, edge) = TestEdge::redis().start().await;
    let task = unique_task("py");

    // A client follows the task before anything is published: it waits.
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let mut live = SseClient::connect(&url, None).await;
    assert_eq!(live.status, 200);

    const N: u64 = 25;
    let count = N.to_string();
    let lines = {
        let url = redis.url();
        let task = task.clone();
        tokio::task::spawn_blocking(move || {
            run_producer(&[
                "--redis-url",
                &url,
                "--task",
                &task,
                "--count",
                &count,
                "--final",
            ])
        })
        .await
        .expect("producer thread")
    };

    let published: Vec<&Value> = lines.iter().filter(|l| l["op"] == "publish").collect();
    assert_eq!(published.len() as u64, N);
    for (i, l) in published.iter().enumerate() {
        assert_eq!(l["seq"], json!(i as u64 + 1), "seqs 1, 2, 3 ...");
        assert_eq!(l["duplicate"], json!(false));
    }
    let op = |name: &str| {
        lines
            .iter()
            .find(|l| l["op"] == name)
            .unwrap_or_else(|| panic!("producer printed no {name} line: {lines:?}"))
    };
    // The retried idempotency key got the first seq back and appended nothing.
    assert_eq!(op("retry")["seq"], json!(1));
    assert_eq!(op("retry")["duplicate"], json!(true));
    assert_eq!(op("final")["seq"], json!(N + 1));
    assert_eq!(op("after-final")["error"], json!("SLUICE_CLOSED"));
    assert_eq!(op("invalid")["error"], json!("SLUICE_INVALID"));

    // The live client saw every event, in order, then the end of the stream.
    let mut log = DeliveryLog::default();
    let mut envelopes = Vec::new();
    while let Some(f) = live.next_event(T).await {
        log.event(f.seq().expect("id"));
        envelopes.push((f.event.clone(), f.json()));
    }
    let v = log.check(1, N + 1);
    assert!(v.is_exact(), "live: {v:?}");
    for (i, (event, env)) in envelopes.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(env["task"], json!(task));
        assert_eq!(env["seq"], json!(seq));
        if seq <= N {
            assert_eq!(event.as_deref(), Some("progress"));
            assert_eq!(env["type"], json!("progress"));
            assert_eq!(
                env["data"], published[i]["data"],
                "data of seq {seq} as Python sent it"
            );
            assert_eq!(env["final"], json!(false));
        } else {
            assert_eq!(env["type"], json!("done"));
            assert_eq!(env["data"], json!({"url": format!("/files/{task}")}));
            assert_eq!(env["final"], json!(true));
        }
        assert!(env["ts"].as_str().expect("ts").ends_with('Z'));
    }

    // A replay from the start gives the same, and the snapshot says closed.
    let mut replay = SseClient::connect(&format!("{url}?after=0"), None).await;
    assert_eq!(replay.status, 200);
    let mut log = DeliveryLog::default();
    while let Some(f) = replay.next_event(T).await {
        log.event(f.seq().expect("id"));
    }
    assert!(log.check(1, N + 1).is_exact(), "{:?}", log.check(1, N + 1));
    let snap: Value = reqwest::get(edge.url(&format!("/v1/tasks/{task}")))
        .await
        .expect("snapshot")
        .json()
        .await
        .expect("json");
    assert_eq!(snap["seq"], json!(N + 1));
    assert_eq!(snap["state"], json!("closed"));
    let done = SseClient::connect(&url, Some(N + 1)).await;
    assert_eq!(
        done.status, 204,
        "resume at the final event ends EventSource"
    );
}

/// A Python producer can load the function itself (a deployment whose edges
/// are not up yet) and publish on a fresh Redis.
#[tokio::test]
async fn python_producer_loads_the_function_on_a_fresh_redis() {
    let redis = RedisFixture::start().await;
    let lua = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../broker/src/sluice_publish.lua");
    let task = unique_task("pyload");
    let lines = {
        let url = redis.url();
        let task = task.clone();
        let lua = lua.display().to_string();
        tokio::task::spawn_blocking(move || {
            run_producer(&[
                "--redis-url",
                &url,
                "--task",
                &task,
                "--count",
                "3",
                "--load-function",
                &lua,
            ])
        })
        .await
        .expect("producer thread")
    };
    let seqs: Vec<&Value> = lines
        .iter()
        .filter(|l| l["op"] == "publish")
        .map(|l| &l["seq"])
        .collect();
    assert_eq!(seqs, vec![&json!(1), &json!(2), &json!(3)]);
    // An edge started afterwards reads them from the task log.
    let edge = TestEdge::on(&redis.url()).start().await;
    let h: Vec<Value> = reqwest::get(edge.url(&format!("/v1/tasks/{task}/history?after=0")))
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert_eq!(h.len(), 3);
    assert_eq!(h[2]["data"]["label"], json!("step 3 \u{2713} caf\u{e9}"));
    assert_eq!(h[2]["data"]["big"], json!((1u64 << 40) + 3));
}
