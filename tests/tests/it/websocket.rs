//! The WebSocket transport: same semantics as SSE.

use std::time::Duration;

use serde_json::json;
use sluice_broker::Publisher;
use sluice_tests::{unique_task, DeliveryLog, TestEdge, WsClient, WsItem};

const T: Duration = Duration::from_secs(10);

fn ws_url(edge: &sluice_tests::EdgeHandle, path: &str) -> String {
    format!("ws://{}{}", edge.addr, path)
}

#[tokio::test]
async fn websocket_snapshot_live_resume_and_end() {
    sluice_tests::init_logs();
    let (redis, a) = TestEdge::redis().node("wa").start().await;
    let b = TestEdge::on(&redis.url()).node("wb").start().await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("ws");
    for i in 1..=3 {
        p.publish(&task, "progress", &json!({"i": i}))
            .await
            .expect("publish");
    }

    // No resume point: the snapshot, then live.
    let mut c = WsClient::connect(&ws_url(&a, &format!("/v1/tasks/{task}/ws")))
        .await
        .expect("upgrade");
    let snap = c.envelope(T).await;
    assert_eq!(snap["seq"], json!(3));
    assert_eq!(snap["type"], json!("progress"));
    p.publish(&task, "progress", &json!({"i": 4}))
        .await
        .expect("publish");
    assert_eq!(c.envelope(T).await["seq"], json!(4));
    c.close().await;

    // Resume on the other node with ?after=, through the final event.
    for i in 5..=9 {
        p.publish(&task, "progress", &json!({"i": i}))
            .await
            .expect("publish");
    }
    p.finish(&task, "done", &json!({})).await.expect("finish");
    let mut log = DeliveryLog::default();
    (1..=4).for_each(|s| log.event(s));
    let mut c = WsClient::connect(&ws_url(&b, &format!("/v1/tasks/{task}/ws?after=4")))
        .await
        .expect("upgrade");
    let code = loop {
        match c.next(T).await {
            WsItem::Envelope(v) => log.event(v["seq"].as_u64().expect("seq")),
            WsItem::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(1000), "close 1000 after the final event");
    let v = log.check(1, 10);
    assert!(v.is_exact(), "{v:?}");

    // Resume at the final event: close 1000 at once.
    let mut c = WsClient::connect(&ws_url(&a, &format!("/v1/tasks/{task}/ws?after=10")))
        .await
        .expect("upgrade");
    assert!(matches!(c.next(T).await, WsItem::Closed(Some(1000))));

    // Beyond the task's seq: a sluice.reset envelope with the snapshot.
    let t2 = unique_task("ws-reuse");
    p.publish(&t2, "progress", &json!(1))
        .await
        .expect("publish");
    let mut c = WsClient::connect(&ws_url(&a, &format!("/v1/tasks/{t2}/ws?after=50")))
        .await
        .expect("upgrade");
    let reset = c.envelope(T).await;
    assert_eq!(reset["type"], json!("sluice.reset"));
    assert_eq!(reset["seq"], json!(1));
    assert_eq!(reset["data"]["seq"], json!(1));
    assert_eq!(reset["data"]["state"], json!("open"));

    // Bad input is refused before the upgrade.
    assert_eq!(
        WsClient::connect(&ws_url(&a, "/v1/tasks/bad%20id/ws"))
            .await
            .err(),
        Some(400)
    );
    assert_eq!(
        WsClient::connect(&ws_url(&a, &format!("/v1/tasks/{t2}/ws?after=-3")))
            .await
            .err(),
        Some(400)
    );
    // A plain GET (no upgrade) gets a JSON error, not a crash.
    let r = reqwest::get(a.url(&format!("/v1/tasks/{t2}/ws")))
        .await
        .expect("get");
    assert!(r.status().is_client_error());
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], json!("websocket_upgrade_required"));
}

/// A peer that never answers pings is closed and releases what it held.
#[tokio::test]
async fn websocket_peer_that_misses_pongs_is_closed() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--heartbeat-secs", "1"])
        .start()
        .await;
    let task = unique_task("ws-dead");
    // A raw client: handshake, then never read or answer again.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /v1/tasks/{task}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    let state = edge.state.clone();
    sluice_tests::wait_until("session registered", T, || {
        let st = state.clone();
        async move { st.metrics.connection_tasks.get() == 1 }
    })
    .await;
    // Pings every second; no pong; closed after about two intervals.
    sluice_tests::wait_until("dead peer closed", Duration::from_secs(15), || {
        let st = state.clone();
        async move {
            st.metrics.connection_tasks.get() == 0
                && st.limits.in_use() == 0
                && st.hub.task_count() == 0
        }
    })
    .await;
    drop(s);
}
