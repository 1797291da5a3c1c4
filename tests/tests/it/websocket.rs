//! The WebSocket transport: same semantics as SSE.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sluice_broker::Publisher;
use sluice_tests::chaos::proxy::PausableProxy;
use sluice_tests::{
    spawn_edge, unique_task, DeliveryLog, RedisFixture, TestEdge, WsClient, WsItem,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

fn ws_url(edge: &sluice_tests::EdgeHandle, path: &str) -> String {
    format!("ws://{}{}", edge.addr, path)
}

/// Reads until the server's close frame and returns its code and reason;
/// envelopes and pings before it are skipped. Panics if the connection ends
/// without a close frame or nothing comes within `within`.
async fn close_frame(c: &mut WsClient, within: Duration) -> (u16, String) {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, c.socket.next())
            .await
            .expect("a close frame within the timeout");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// Server-to-client frames in `bytes` as (opcode, payload). Server frames
/// are unmasked; only short frames (pings, a close) are expected here.
fn raw_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let [b0, b1, rest @ ..] = bytes {
        assert_eq!(b0 & 0x80, 0x80, "unfragmented frames: {bytes:?}");
        assert_eq!(b1 & 0x80, 0, "server frames are not masked: {bytes:?}");
        let len = usize::from(b1 & 0x7f);
        assert!(
            len < 126 && rest.len() >= len,
            "short, complete frame: {bytes:?}"
        );
        out.push((b0 & 0x0f, rest[..len].to_vec()));
        bytes = &rest[len..];
    }
    assert!(bytes.is_empty(), "trailing bytes: {bytes:?}");
    out
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

/// RFC 6455 §5.5.1: an endpoint that receives a Close frame sends one in
/// response, "typically echoing the status code it received"; then the
/// server ends the TCP connection. Without the echo, browsers and Python's
/// `websockets` report 1006 (abnormal closure) for a clean close.
#[tokio::test]
async fn websocket_client_close_is_echoed() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    sluice_tests::init_logs();
    let edge = TestEdge::memory().start().await;
    let state = edge.state.clone();
    for code in [1000u16, 4000] {
        let task = unique_task("ws-close");
        let mut c = WsClient::connect(&ws_url(&edge, &format!("/v1/tasks/{task}/ws")))
            .await
            .expect("upgrade");
        sluice_tests::wait_until("session running", T, || {
            let st = state.clone();
            async move { st.metrics.connection_tasks.get() == 1 }
        })
        .await;
        let close = CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        futures_util::SinkExt::send(&mut c.socket, Message::Close(Some(close)))
            .await
            .expect("send close");
        let echo = tokio::time::timeout(T, c.socket.next())
            .await
            .expect("an answer to the close within the timeout");
        match echo {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), code, "the client's code echoed");
            }
            other => panic!("expected a close frame echoing {code}, got {other:?}"),
        }
        // Then the server ends the connection: a clean end of stream.
        let end = tokio::time::timeout(T, c.socket.next())
            .await
            .expect("the server ends the connection");
        assert!(
            end.is_none(),
            "a clean end after the close handshake: {end:?}"
        );
        sluice_tests::wait_until("session released", T, || {
            let st = state.clone();
            async move { st.metrics.connection_tasks.get() == 0 && st.limits.in_use() == 0 }
        })
        .await;
    }
}

/// A peer that never answers pings is closed (1001, "pong timeout") and
/// releases what it held, while a healthy peer on the same node, answering
/// the same pings, stays open well past that moment.
#[tokio::test]
async fn websocket_peer_that_misses_pongs_is_closed() {
    sluice_tests::init_logs();
    let hb = Duration::from_secs(1);
    let edge = spawn_edge(&["--insecure", "--heartbeat-secs", "1"]).await;
    let state = edge.state.clone();

    // The negative control: a client that keeps reading, so tokio-tungstenite
    // answers each ping with a pong. It counts the pings it sees and returns
    // (ending its task) only if the server closes it.
    let alive_task = unique_task("ws-alive");
    let alive = WsClient::connect(&ws_url(&edge, &format!("/v1/tasks/{alive_task}/ws")))
        .await
        .expect("upgrade");
    let alive_pings = Arc::new(AtomicUsize::new(0));
    let alive_ended = Arc::new(AtomicBool::new(false));
    let reader = {
        let (pings, ended) = (alive_pings.clone(), alive_ended.clone());
        let mut socket = alive.socket;
        tokio::spawn(async move {
            let why = loop {
                match socket.next().await {
                    Some(Ok(Message::Ping(_))) => {
                        pings.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(Ok(Message::Close(f))) => break format!("closed: {f:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("failed: {e}"),
                    None => break "ended".to_owned(),
                }
            };
            ended.store(true, Ordering::SeqCst);
            why
        })
    };

    // The dead peer: a raw client that completes the handshake, then neither
    // reads nor answers until the server has given up on it.
    let task = unique_task("ws-dead");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(edge.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /v1/tasks/{task}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let head_end = loop {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed during the handshake");
        received.extend_from_slice(&buf[..n]);
        if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(String::from_utf8_lossy(&received[..head_end]).starts_with("HTTP/1.1 101"));
    let upgraded = Instant::now();
    let mut frames = received.split_off(head_end);
    sluice_tests::wait_until("both sessions registered", T, || {
        let st = state.clone();
        async move { st.metrics.connection_tasks.get() == 2 && st.hub.task_count() == 2 }
    })
    .await;

    // Pings every second; no pong; closed after about two intervals, and
    // everything it held is released. The healthy peer keeps its share.
    sluice_tests::wait_until("dead peer closed", T, || {
        let (st, alive_ended) = (state.clone(), alive_ended.clone());
        async move {
            alive_ended.load(Ordering::SeqCst)
                || (st.metrics.connection_tasks.get() == 1
                    && st.limits.in_use() == 1
                    && st.hub.task_count() == 1)
        }
    })
    .await;
    let dead_after = upgraded.elapsed();
    if alive_ended.load(Ordering::SeqCst) {
        panic!("the healthy peer was closed: {:?}", reader.await);
    }
    assert!(
        dead_after >= hb * 2 - Duration::from_millis(250),
        "closed after {dead_after:?}, before two missed intervals"
    );

    // What the dead peer was sent: pings, then close 1001 "pong timeout",
    // then the end of the connection.
    tokio::time::timeout(T, s.read_to_end(&mut frames))
        .await
        .expect("the server ends the dead connection")
        .expect("read");
    let frames = raw_frames(&frames);
    let (close, pings) = frames.split_last().expect("frames sent to the dead peer");
    assert!(!pings.is_empty(), "pinged before being closed: {frames:?}");
    assert!(
        pings
            .iter()
            .all(|(op, payload)| *op == 0x9 && payload.is_empty()),
        "{frames:?}"
    );
    assert_eq!(close.0, 0x8, "a close frame last: {frames:?}");
    let (code, reason) = close.1.split_at(2);
    assert_eq!(u16::from_be_bytes([code[0], code[1]]), 1001, "close code");
    assert_eq!(std::str::from_utf8(reason).expect("utf-8"), "pong timeout");

    // The healthy peer outlives the dead one by three more intervals (each
    // ping it answers is another interval), and is still open.
    let seen = alive_pings.load(Ordering::SeqCst);
    let pings = alive_pings.clone();
    sluice_tests::wait_until("three more pings to the healthy peer", T, || {
        let (pings, ended) = (pings.clone(), alive_ended.clone());
        async move { ended.load(Ordering::SeqCst) || pings.load(Ordering::SeqCst) >= seen + 3 }
    })
    .await;
    if alive_ended.load(Ordering::SeqCst) {
        panic!("the healthy peer was closed: {:?}", reader.await);
    }
    assert_eq!(state.metrics.connection_tasks.get(), 1);
    assert_eq!(state.limits.in_use(), 1);
    assert_eq!(state.hub.task_count(), 1);
    reader.abort();
}

/// A draining node closes each WebSocket with 1012 at a random moment inside
/// the drain window, refuses new upgrades with 503, and stops.
#[tokio::test]
async fn websocket_clients_of_a_draining_node_get_close_1012() {
    sluice_tests::init_logs();
    let window = Duration::from_secs(2);
    let edge = spawn_edge(&["--insecure", "--drain-secs", "2"]).await;
    let task = unique_task("ws-drain");
    const CLIENTS: usize = 8;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let c = WsClient::connect(&ws_url(&edge, &format!("/v1/tasks/{task}/ws")))
            .await
            .expect("upgrade");
        clients.push(c);
    }
    let state = edge.state.clone();
    sluice_tests::wait_until("sessions running", T, || {
        let st = state.clone();
        async move { st.metrics.connection_tasks.get() == CLIENTS as i64 }
    })
    .await;

    let started = Instant::now();
    edge.shutdown.cancel();
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let frame = close_frame(&mut c, window + T).await;
                (frame, started.elapsed())
            })
        })
        .collect();
    // Meanwhile new upgrades are refused.
    sluice_tests::wait_until("node draining", T, || {
        let st = state.clone();
        async move { st.is_draining() }
    })
    .await;
    assert_eq!(
        WsClient::connect(&ws_url(&edge, &format!("/v1/tasks/{task}/ws")))
            .await
            .err(),
        Some(503)
    );

    let mut at = Vec::new();
    for c in closes {
        let ((code, reason), after) = c.await.expect("client");
        assert_eq!(code, 1012, "close code ({reason})");
        assert_eq!(reason, "node draining; reconnect");
        assert!(
            after <= window + Duration::from_millis(1500),
            "closed {after:?} after the drain began, window {window:?}"
        );
        at.push(after);
    }
    // Spread over the window, not all at once (8 uniform draws over 2 s fall
    // within 100 ms of each other with probability below 1e-8).
    let spread = *at.iter().max().expect("closes") - *at.iter().min().expect("closes");
    assert!(spread >= Duration::from_millis(100), "closes at {at:?}");
    assert_eq!(state.metrics.connection_tasks.get(), 0);
    edge.stop().await;
}

/// A session the backend cannot serve is closed with 1013 ("backend
/// unavailable"): here the node's Redis goes away (the proxy between them
/// stops and drops every connection) and a new subscription cannot read the
/// task's snapshot. A session opened before the outage is kept.
#[tokio::test]
async fn websocket_session_the_backend_cannot_serve_gets_close_1013() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let proxy = PausableProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let edge = spawn_edge(&["--redis-url", &proxy.url(), "--insecure"]).await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("ws-1013");
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish");
    let url = ws_url(&edge, &format!("/v1/tasks/{task}/ws"));

    // While Redis answers, a session opens normally.
    let mut before = WsClient::connect(&url).await.expect("upgrade");
    assert_eq!(before.envelope(T).await["seq"], json!(1));

    drop(proxy);
    let mut c = WsClient::connect(&url).await.expect("upgrade");
    let (code, reason) = close_frame(&mut c, Duration::from_secs(15)).await;
    assert_eq!((code, reason.as_str()), (1013, "backend unavailable"));
    assert_eq!(
        edge.state.limits.in_use(),
        1,
        "the session opened before the outage is still held"
    );
    before.close().await;
}
