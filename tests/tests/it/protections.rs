//! Per-node protections: bounded queues with lossless catch-up, connection
//! limits, released resources for abandoned connections, drain, connect
//! rate limiting.

use std::time::Duration;

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher};
use sluice_tests::sse::RawSse;
use sluice_tests::{unique_task, DeliveryLog, SseClient, TestEdge, WsClient};
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn connection_limit_is_exact_and_guarded() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&[
            "--max-connections",
            "3",
            "--publish-key",
            "pk-limit-0123456789",
        ])
        .start()
        .await;
    let task = unique_task("limit");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = SseClient::connect(&url, None).await;
        assert_eq!(c.status, 200);
        assert!(c.next_frame(T).await.expect("retry").retry.is_some());
        open.push(c);
    }
    // An EventSource is told to retry (200, then the end: refusals.rs);
    // anything else gets the 503.
    let refused = SseClient::connect(&url, None).await;
    assert_eq!(
        (refused.status, refused.refused()),
        (200, Some("too_many_connections"))
    );
    let refused = reqwest::get(&url).await.expect("plain GET");
    assert_eq!(refused.status(), 503);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&retry_after));
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"], json!("too_many_connections"));
    assert_eq!(
        WsClient::connect(&format!("ws://{}/v1/tasks/{task}/ws", edge.addr))
            .await
            .err(),
        Some(503)
    );
    // A full node stays ready (it serves everything but new streams), and
    // says it is full on /capacity.
    let ready = reqwest::get(edge.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 200, "a full node is still ready");
    let cap = reqwest::get(edge.url("/capacity")).await.expect("capacity");
    assert_eq!(cap.status(), 503, "no capacity at the limit");
    let cap: serde_json::Value = cap.json().await.expect("json");
    assert_eq!(cap["reasons"], json!(["at connection limit"]), "{cap}");
    let http = reqwest::Client::new();
    let published = http
        .post(edge.url(&format!("/v1/tasks/{task}/events")))
        .bearer_auth("pk-limit-0123456789")
        .json(&json!({"type": "progress", "data": {"pct": 1}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 201, "a full node takes publishes");
    let snap = reqwest::get(edge.url(&format!("/v1/tasks/{task}")))
        .await
        .expect("snapshot");
    assert_eq!(snap.status(), 200, "a full node serves snapshots");
    let hist = reqwest::get(edge.url(&format!("/v1/tasks/{task}/history")))
        .await
        .expect("history");
    assert_eq!(hist.status(), 200, "a full node serves history");

    drop(open.pop());
    let state = edge.state.clone();
    sluice_tests::wait_until("slot freed", T, || {
        let st = state.clone();
        async move { st.limits.in_use() == 2 }
    })
    .await;
    let c = SseClient::connect(&url, None).await;
    assert_eq!(c.status, 200);
    open.push(c);
    drop(open);
    sluice_tests::wait_until("all released", T, || {
        let st = state.clone();
        async move { st.limits.in_use() == 0 && st.metrics.open_connections() == 0 }
    })
    .await;
    let cap = reqwest::get(edge.url("/capacity")).await.expect("capacity");
    assert_eq!(cap.status(), 200);
    let m = reqwest::get(edge.url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        m.contains(r#"sluice_edge_connections_refused_total{reason="connection_limit"} 3"#),
        "{m}"
    );
}

/// 1 000 connections opened and abandoned (half closed cleanly, half
/// dropped mid-stream): every counter returns to its baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_connections_release_everything() {
    sluice_tests::init_logs();
    // Heartbeats far apart: releasing must not depend on a heartbeat write
    // failing (WebSocket clients here do not read, so they never answer pings).
    let (redis, edge) = TestEdge::redis()
        .args(&["--heartbeat-secs", "300"])
        .start()
        .await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let tasks: Vec<String> = (0..10).map(|_| unique_task("churn")).collect();
    for t in &tasks {
        p.publish(t, "progress", &json!(1)).await.expect("publish");
    }
    let state = edge.state.clone();
    let base_tasks = state.metrics.connection_tasks.get();
    assert_eq!(base_tasks, 0);

    let mut sse = Vec::new();
    let mut ws = Vec::new();
    for i in 0..1000usize {
        let t = &tasks[i % tasks.len()];
        if i % 4 == 3 {
            let c = WsClient::connect(&format!("ws://{}/v1/tasks/{t}/ws", edge.addr))
                .await
                .expect("ws");
            ws.push(c);
        } else {
            let s = RawSse::connect(edge.addr, &format!("/v1/tasks/{t}/events")).await;
            assert_eq!(s.status, 200);
            sse.push(s.stream);
        }
    }
    sluice_tests::wait_until("1000 connections open", T, || {
        let st = state.clone();
        async move { st.limits.in_use() == 1000 }
    })
    .await;
    assert_eq!(state.hub.task_count(), 10);
    for t in &tasks {
        p.publish(t, "progress", &json!(2)).await.expect("publish");
    }
    // Half clean, half dropped mid-stream (RST via zero linger).
    for (i, s) in sse.into_iter().enumerate() {
        if i % 2 == 0 {
            let mut s = s;
            let _ = s.shutdown().await;
        } else {
            // Zero linger: the close sends RST, like a vanished peer.
            let std = s.into_std().expect("std socket");
            let sock = socket2::SockRef::from(&std);
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(std);
        }
    }
    for (i, c) in ws.into_iter().enumerate() {
        if i % 2 == 0 {
            c.close().await;
        } else {
            drop(c);
        }
    }
    sluice_tests::wait_until("every connection released", Duration::from_secs(30), || {
        let st = state.clone();
        async move {
            st.limits.in_use() == 0
                && st.metrics.open_connections() == 0
                && st.metrics.connection_tasks.get() == 0
                && st.metrics.subscriptions.get() == 0
                && st.hub.task_count() == 0
        }
    })
    .await;
    println!(
        "after 1000 abandoned connections: in_use={} tasks={} subscriptions={}",
        state.limits.in_use(),
        state.metrics.connection_tasks.get(),
        state.metrics.subscriptions.get()
    );
}

/// Draining node A (SIGTERM equivalent) while a producer publishes: its
/// clients are told to reconnect, resume on node B and miss nothing; A
/// destroys its consumer groups and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_clients_without_loss() {
    sluice_tests::init_logs();
    let (redis, a) = TestEdge::redis()
        .node("drain-a")
        .args(&["--drain-secs", "2"])
        .start()
        .await;
    let b = TestEdge::on(&redis.url()).node("drain-b").start().await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("drain");
    const N: u64 = 600;
    const CLIENTS: usize = 20;
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish");

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let a_url = a.url(&format!("/v1/tasks/{task}/events?after=0"));
        let b_url = b.url(&format!("/v1/tasks/{task}/events"));
        clients.spawn(async move {
            let mut log = DeliveryLog::default();
            let mut c = SseClient::connect(&a_url, None).await;
            assert_eq!(c.status, 200);
            let mut drain_retry = None;
            while let Some(f) = c.next_frame(T).await {
                if let Some(seq) = f.seq() {
                    log.event(seq);
                } else if f.retry.is_some() && !log.received.is_empty() {
                    drain_retry = f.retry;
                }
            }
            let reconnects = drain_retry.is_some();
            let mut c = SseClient::connect(&b_url, log.last()).await;
            if c.status == 200 {
                while let Some(f) = c.next_event(T).await {
                    log.event(f.seq().expect("id"));
                }
            } else {
                assert_eq!(c.status, 204);
            }
            (log, reconnects)
        });
    }
    let producer = {
        let p = p.clone();
        let task = task.clone();
        tokio::spawn(async move {
            for i in 2..=N {
                let opts = PublishOptions {
                    is_final: i == N,
                    idempotency_key: None,
                };
                p.publish_with(&task, "progress", &json!(i), opts)
                    .await
                    .expect("publish");
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };
    let state = a.state.clone();
    sluice_tests::wait_until("clients on A", T, || {
        let st = state.clone();
        async move { st.limits.in_use() == CLIENTS }
    })
    .await;
    // Drain while events flow: wait until A has delivered some to its
    // clients (the producer is still far from the end).
    let state = a.state.clone();
    sluice_tests::wait_until("events flowing on A", T, || {
        let st = state.clone();
        async move {
            let label = sluice_edge::metrics::TransportLabel {
                transport: sluice_edge::metrics::Transport::Sse,
            };
            st.metrics.delivered.get_or_create(&label).get() >= 5 * CLIENTS as u64
        }
    })
    .await;
    let a_url = a.url("/readyz");
    a.shutdown.cancel();
    // Readiness goes false as soon as the node's stop task runs.
    sluice_tests::wait_until("A not ready", T, || {
        let a_url = a_url.clone();
        async move { reqwest::get(&a_url).await.is_ok_and(|r| r.status() == 503) }
    })
    .await;
    let refused = SseClient::connect(&a.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(refused.refused(), Some("draining"));

    let mut drained = 0;
    while let Some(r) = clients.join_next().await {
        let (log, reconnected) = r.expect("client");
        let v = log.check(1, N);
        assert!(v.is_exact(), "{v:?}");
        drained += usize::from(reconnected);
    }
    producer.await.expect("producer");
    println!("drain: {CLIENTS} clients exact, {drained} got a drain retry:");
    assert!(drained > 0);
    a.stop().await;
    // A's groups are gone; B's remain (B followed the task's feed for the
    // clients that moved to it, and keeps it for the grace period).
    let mut conn = redis.conn().await;
    let feed = sluice_shared::TaskKeys::new(
        &sluice_shared::TaskId::parse(&task).expect("task"),
        sluice_shared::DEFAULT_SHARDS,
    )
    .feed;
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&feed)
        .query_async(&mut conn)
        .await
        .expect("xinfo");
    let text = format!("{groups:?}");
    assert!(!text.contains("edge:drain-a"), "{text}");
    assert!(text.contains("edge:drain-b"), "{text}");
}

#[tokio::test]
async fn connect_rate_limit_refuses_bursts() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--max-connect-rate", "5"])
        .start()
        .await;
    let task = unique_task("rate");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let mut ok = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let c = SseClient::connect(&url, None).await;
        assert_eq!(c.status, 200);
        match c.refused() {
            None => ok.push(c),
            Some(reason) => {
                refused += 1;
                assert_eq!(reason, "connect_rate_limited");
            }
        }
    }
    assert!(ok.len() >= 5 && ok.len() < 20, "{} admitted", ok.len());
    assert_eq!(refused + ok.len(), 20);
}

/// The node raises its open-file soft limit to the hard one at start, and
/// refuses to start (exit 2, one line) when `--max-connections` cannot fit
/// under the hard limit: a node that runs out of descriptors under load
/// cannot accept anything, not even `/healthz`.
#[tokio::test]
async fn max_connections_must_fit_under_the_open_file_limit() {
    let bin = sluice_tests::bins::bin_async("sluice-edge").await;
    let run = |nofile: &'static str, max: &'static str| {
        let bin = bin.clone();
        async move {
            let mut cmd = tokio::process::Command::new("prlimit");
            cmd.arg(format!("--nofile={nofile}"))
                .arg(&bin)
                .args(["--insecure", "--listen", "127.0.0.1:0"])
                .args(["--max-connections", max])
                .kill_on_drop(true)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().expect("prlimit (util-linux) runs")
        }
    };
    // Does not fit: exit 2 with one clear line.
    let out = tokio::time::timeout(T, run("1024:1024", "1000").await.wait_with_output())
        .await
        .expect("the node must refuse to start, not run")
        .expect("exit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sluice-edge:"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("--max-connections 1000") && lines[0].contains("1024"),
        "{err}"
    );
    // Fits once the soft limit is raised to the hard one: the node starts
    // and logs the limit in force.
    let mut child = run("1024:4096", "1000").await;
    let mut stderr = child.stderr.take().expect("stderr");
    let mut seen = String::new();
    let found = tokio::time::timeout(T, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        loop {
            let n = stderr.read(&mut buf).await.expect("read");
            if n == 0 {
                return false;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("open_files") && seen.contains("4096") {
                return true;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    assert_eq!(found, Ok(true), "{seen}");
}
