//! Dead, slow and hostile peers: every connection the node accepts is
//! counted and bounded, and given deadlines, whether or not it ever becomes
//! a request or reads what it is sent.
//!
//! - a connection that sends no complete request head within
//!   `--head-timeout-secs` (silent, one byte at a time, idle keep-alive) is
//!   closed;
//! - a body slower than `--body-timeout-secs` is answered 408;
//! - over `--max-open-connections` a connection is answered 503 at once, and
//!   the node says it is not ready;
//! - a peer that accepts no bytes for `--write-timeout-secs` is closed
//!   ("stalled"), SSE or WebSocket, whether events still flow or the task
//!   went quiet; a WebSocket peer that reads nothing at all misses its pongs.
//!
//! Every edge here runs in this process: its counters are read directly.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_edge::metrics::Transport;
use sluice_tests::{unique_task, wait_until, EdgeHandle, TestEdge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);
const KEY: &str = "pk-hostile-0123456789";

/// Reads until the peer closes (Ok(bytes read)) or `within` passes (Err).
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Ok(()) => Ok(got),
        Err(_) => Err(got),
    }
}

/// A client socket with a small receive buffer, so that a peer that stops
/// reading fills the path between them quickly.
fn small_window(addr: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    s.connect(&addr.into()).expect("connect");
    s.set_nonblocking(true).expect("nonblocking");
    TcpStream::from_std(s.into()).expect("tokio stream")
}

async fn publish(edge: &EdgeHandle, http: &reqwest::Client, task: &str, data: &Value) {
    let r = http
        .post(edge.url(&format!("/v1/tasks/{task}/events")))
        .bearer_auth(KEY)
        .json(&json!({"type": "progress", "data": data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
}

#[tokio::test]
async fn connections_that_never_become_requests_are_closed() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--head-timeout-secs", "1"])
        .start()
        .await;
    let m = edge.state.metrics.clone();
    let before = m.head_timeouts.get();
    // Silent sockets.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(edge.addr).await.expect("connect"));
    }
    // One byte at a time, never finishing the head.
    let mut trickle = TcpStream::connect(edge.addr).await.expect("connect");
    let trickler = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
            .iter()
            .cycle()
            .take(600)
        {
            if trickle.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    // Idle keep-alive after one request.
    let mut idle = TcpStream::connect(edge.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    for s in silent.iter_mut() {
        assert!(
            closed_within(s, T).await.is_ok(),
            "a silent connection must be closed"
        );
    }
    let answered = closed_within(&mut idle, T)
        .await
        .expect("an idle keep-alive connection must be closed");
    assert!(
        answered.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answered)
    );
    assert!(
        tokio::time::timeout(T, trickler)
            .await
            .expect("trickler ends")
            .expect("joined"),
        "a connection sending one byte at a time must be closed"
    );
    assert!(m.head_timeouts.get() - before >= 21);
    wait_until("no open TCP connection left", T, || async {
        m.tcp_connections.get() <= 1 // at most the readiness probe's
    })
    .await;
}

#[tokio::test]
async fn a_body_slower_than_its_deadline_is_answered_408() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--body-timeout-secs", "1", "--publish-key", KEY])
        .start()
        .await;
    let task = unique_task("slowbody");
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(edge.addr).await.expect("connect");
        let head = format!(
            "POST /v1/tasks/{task}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"type\":"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        bodies.push(s);
    }
    for s in bodies.iter_mut() {
        let got = closed_within(s, T).await.expect("answered and closed");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains(r#""error":"body_timeout""#), "{text}");
    }
    assert_eq!(edge.state.metrics.body_timeouts.get(), 10);
    let snapshot = reqwest::get(edge.url(&format!("/v1/tasks/{task}")))
        .await
        .expect("snapshot");
    assert_eq!(snapshot.status(), 404, "nothing was published");
}

#[tokio::test]
async fn every_connection_counts_against_the_open_connection_limit() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--max-connections", "2", "--max-open-connections", "4"])
        .start()
        .await;
    let m = edge.state.metrics.clone();
    // Let the readiness probe's connection go.
    wait_until("probe closed", T, || async { m.tcp_connections.get() == 0 }).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(edge.addr).await.expect("connect"));
    }
    let mut keep_alive = TcpStream::connect(edge.addr).await.expect("connect");
    wait_until("four open", T, || async { m.tcp_connections.get() == 4 }).await;
    // The fifth is answered at once and closed.
    let mut over = TcpStream::connect(edge.addr).await.expect("connect");
    let got = closed_within(&mut over, T).await.expect("closed at once");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body: Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).expect("body")).expect("json body");
    assert_eq!(body["error"], json!("too_many_open_connections"));
    assert_eq!(m.tcp_refused.get(), 1);
    // Asked over a connection it already holds, the node says it is full.
    keep_alive
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(T, keep_alive.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("at open-connection limit"), "{text}");
    // Freed slots are usable again.
    drop(held);
    wait_until("slots freed", T, || async { m.tcp_connections.get() == 1 }).await;
    let ready = reqwest::get(edge.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(edge.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("sluice_edge_tcp_connections 2"),
        "the keep-alive connection and this one: {metrics}"
    );
    assert!(metrics.contains("sluice_edge_tcp_connections_refused_total 1"));
}

/// Stalled-peer edges: writes fail after 2 s without progress; heartbeats
/// (and WebSocket pings) every `heartbeat` seconds.
async fn stall_edge(heartbeat: &str) -> EdgeHandle {
    TestEdge::memory()
        .args(&[
            "--heartbeat-secs",
            heartbeat,
            "--write-timeout-secs",
            "2",
            "--publish-key",
            KEY,
        ])
        .start()
        .await
}

/// Opens an SSE stream on a small-window socket and reads its head and the
/// opening `retry:`, then never reads again.
async fn sse_that_stops_reading(edge: &EdgeHandle, task: &str) -> TcpStream {
    let mut s = small_window(edge.addr);
    let req = format!(
        "GET /v1/tasks/{task}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("retry:") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("head in time")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    s
}

/// Events keep flowing to a client that stopped reading: it is closed once
/// the socket has taken no byte for the write timeout, and counted.
#[tokio::test]
async fn an_sse_peer_that_stops_reading_while_events_flow_is_closed() {
    sluice_tests::init_logs();
    let edge = stall_edge("1").await;
    let m = edge.state.metrics.clone();
    let http = reqwest::Client::new();
    let task = unique_task("stall-sse");
    let _client = sse_that_stops_reading(&edge, &task).await;
    assert_eq!(m.connections_of(Transport::Sse), 1);
    let pad = "x".repeat(32 * 1024);
    let mut published = 0;
    while m.write_stalls.get() == 0 {
        assert!(published < 2_000, "never stalled after {published} events");
        publish(&edge, &http, &task, &json!({"i": published, "pad": pad})).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("stalled SSE connection closed", T, || async {
        m.connections_of(Transport::Sse) == 0
    })
    .await;
    assert_eq!(m.write_stalls.get(), 1);
}

/// A client stops reading, then the task goes quiet: nothing new is ever
/// written, and the blocked write still ends at its deadline.
#[tokio::test]
async fn an_sse_peer_that_stops_reading_on_a_quiet_task_is_closed() {
    sluice_tests::init_logs();
    let edge = stall_edge("1").await;
    let m = edge.state.metrics.clone();
    let http = reqwest::Client::new();
    let task = unique_task("stall-quiet");
    let _client = sse_that_stops_reading(&edge, &task).await;
    // One burst, more than the socket buffers hold; then silence.
    let pad = "x".repeat(32 * 1024);
    for i in 0..400 {
        publish(&edge, &http, &task, &json!({"i": i, "pad": pad})).await;
    }
    wait_until("stalled SSE connection closed", T, || async {
        m.connections_of(Transport::Sse) == 0
    })
    .await;
    assert_eq!(m.write_stalls.get(), 1);
}

/// Completes a WebSocket handshake on a small-window socket and returns it
/// unread from then on.
async fn ws_that_stops_reading(edge: &EdgeHandle, task: &str) -> TcpStream {
    let mut s = small_window(edge.addr);
    let req = format!(
        "GET /v1/tasks/{task}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("handshake");
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    // Byte by byte, so nothing after the head is read.
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("handshake in time")
            .expect("read");
        assert!(n > 0, "closed during the handshake");
        got.push(buf[0]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s
}

#[tokio::test]
async fn a_websocket_peer_that_stops_reading_while_events_flow_is_closed() {
    sluice_tests::init_logs();
    let edge = stall_edge("10").await;
    let m = edge.state.metrics.clone();
    let http = reqwest::Client::new();
    let task = unique_task("stall-ws");
    let _client = ws_that_stops_reading(&edge, &task).await;
    wait_until("session open", T, || async {
        m.connections_of(Transport::Ws) == 1
    })
    .await;
    let pad = "x".repeat(32 * 1024);
    let mut published = 0;
    while m.write_stalls.get() == 0 && m.connections_of(Transport::Ws) == 1 {
        assert!(published < 2_000, "never stalled after {published} events");
        publish(&edge, &http, &task, &json!({"i": published, "pad": pad})).await;
        published += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("stalled WebSocket session closed", T, || async {
        m.connections_of(Transport::Ws) == 0
    })
    .await;
    assert_eq!(
        m.write_stalls.get(),
        1,
        "closed by the write deadline, not by missed pongs"
    );
}

/// A WebSocket peer that reads nothing on a quiet task: its socket takes
/// the pings, but it never answers one, so it is closed after two missed
/// pong intervals.
#[tokio::test]
async fn a_websocket_peer_that_reads_nothing_on_a_quiet_task_is_closed() {
    sluice_tests::init_logs();
    let edge = stall_edge("1").await;
    let m = edge.state.metrics.clone();
    let task = unique_task("deaf-ws");
    let _client = ws_that_stops_reading(&edge, &task).await;
    wait_until("session open", T, || async {
        m.connections_of(Transport::Ws) == 1
    })
    .await;
    wait_until("deaf WebSocket session closed", T, || async {
        m.connections_of(Transport::Ws) == 0
    })
    .await;
    assert_eq!(m.write_stalls.get(), 0, "its socket still took bytes");
}

/// Requests the HTTP layer cannot parse are refused before any handler
/// runs; the refusal still carries the JSON error body of every other one.
#[tokio::test]
async fn unparseable_requests_get_json_errors() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory().start().await;
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let probes: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            "431",
            "headers_too_large",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            "414",
            "uri_too_long",
        ),
        (
            b"GET /v1/tasks/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "400",
            "bad_request",
        ),
        (
            b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "400",
            "bad_request",
        ),
    ];
    for (request, status, error) in probes {
        let mut s = TcpStream::connect(edge.addr).await.expect("connect");
        // The server may answer and close before it read everything.
        let _ = s.write_all(&request).await;
        let got = closed_within(&mut s, T).await.expect("answered and closed");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: Value = serde_json::from_str(body).expect("json body");
        assert_eq!(v["error"], json!(error), "{text}");
    }
}

/// A client host that vanishes (no FIN, no RST, no ACKs) on a quiet SSE
/// stream: its socket buffers never fill, so only the kernel notices that
/// the heartbeats go unacknowledged (`TCP_USER_TIMEOUT` = the write
/// timeout). Runs the edge binary and the client in a network namespace of
/// their own, where the client's packets are dropped with iptables
/// (tests/python/dead_host.py; needs root, as the suite has).
#[tokio::test]
async fn a_client_host_that_vanishes_on_a_quiet_sse_stream_is_closed() {
    let edge = sluice_tests::bins::bin_async("sluice-edge").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/dead_host.py");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("unshare")
            .args(["-n", "python3", script])
            .arg(&edge)
            .arg("30")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the scenario ends")
    .expect("unshare (util-linux), python3 and iptables run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("closed_after"),
        "a vanished host must be given up after the write timeout (2 s): {stdout}"
    );
}
