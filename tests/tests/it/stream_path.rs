//! The stream path (`edge/src/server/stream.rs`): SSE stream requests are
//! answered straight to the socket, not through the HTTP layer. What a
//! client relies on of HTTP/1.1 still holds there: keep-alive after an
//! answer of known length and after a stream that ended (the chunked body
//! terminated), `Connection: close`, other requests on the same connection
//! afterwards (handed to the HTTP layer), a stream request after another
//! request (served by the HTTP layer), and a client that closes its socket
//! ends its session at once, with no write needed to notice.

use std::time::Duration;

use serde_json::json;
use sluice_edge::metrics::Transport;
use sluice_tests::{unique_task, wait_until, EdgeHandle, TestEdge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);
const KEY: &str = "pk-stream-path-0123456789";

async fn edge() -> EdgeHandle {
    TestEdge::memory()
        // No heartbeat inside a test: a session must end without a write.
        .args(&["--publish-key", KEY, "--heartbeat-secs", "600"])
        .start()
        .await
}

/// Publishes `n` events, the last one final.
async fn publish_final(edge: &EdgeHandle, task: &str, n: u64) {
    let http = reqwest::Client::new();
    for i in 1..=n {
        let r = http
            .post(edge.url(&format!("/v1/tasks/{task}/events")))
            .bearer_auth(KEY)
            .json(&json!({"type": "progress", "data": {"i": i}, "final": i == n}))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
    }
}

/// Reads until `buf` holds `marker` (what was read, all of it), or fails
/// after `T`.
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, marker: &[u8]) {
    let found = tokio::time::timeout(T, async {
        loop {
            if buf.windows(marker.len()).any(|w| w == marker) {
                return true;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        found == Ok(true),
        "no {:?} in {:?}",
        String::from_utf8_lossy(marker),
        String::from_utf8_lossy(buf)
    );
}

fn get(path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{connection}\r\n")
        .into_bytes()
}

/// Whether the peer closed (read returns 0) within `T`; bytes before it
/// are returned.
async fn closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(T, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

#[tokio::test]
async fn one_connection_serves_streams_then_other_requests() {
    sluice_tests::init_logs();
    let edge = edge().await;
    let task = unique_task("keepalive");
    publish_final(&edge, &task, 3).await;
    let mut s = TcpStream::connect(edge.addr).await.expect("connect");

    // Past the final event: 204, no body, and the connection stays.
    s.write_all(&get(&format!("/v1/tasks/{task}/events?after=3"), false))
        .await
        .expect("request");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 204 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );

    // A stream on the same connection: its events, then the end of the
    // chunked body once the final event is out, and the connection stays.
    s.write_all(&get(&format!("/v1/tasks/{task}/events?after=1"), false))
        .await
        .expect("request");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"\r\n0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{text}"
    );
    assert!(
        lower.contains("\r\ncontent-type: text/event-stream"),
        "{text}"
    );
    assert!(text.contains("\"seq\":2"), "{text}");
    assert!(text.contains("\"seq\":3"), "{text}");
    assert!(!text.contains("\"seq\":1,"), "{text}");
    assert!(
        text.ends_with("\r\n0\r\n\r\n"),
        "nothing after the last chunk: {text}"
    );

    // Then a request for the HTTP layer, which closes as asked.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let rest = closed(&mut s).await.expect("closed after the answer");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 "), "{rest}");
}

#[tokio::test]
async fn connection_close_is_honoured_on_the_stream_path() {
    sluice_tests::init_logs();
    let edge = edge().await;
    let task = unique_task("close");
    publish_final(&edge, &task, 2).await;
    let mut s = TcpStream::connect(edge.addr).await.expect("connect");
    s.write_all(&get(&format!("/v1/tasks/{task}/events?after=0"), true))
        .await
        .expect("request");
    let got = closed(&mut s).await.expect("closed after the stream");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(text.contains("\"seq\":2"), "{text}");
    assert!(text.ends_with("\r\n0\r\n\r\n"), "{text}");
}

/// An edge, a task of two events (the second final), and a connection that
/// has already served `GET /healthz` (so its next request goes to the HTTP
/// layer).
async fn after_another_request(name: &str) -> (EdgeHandle, String, TcpStream) {
    sluice_tests::init_logs();
    let edge = edge().await;
    let task = unique_task(name);
    publish_final(&edge, &task, 2).await;
    let mut s = TcpStream::connect(edge.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"\r\n\r\n").await;
    assert!(got.starts_with(b"HTTP/1.1 200 "));
    (edge, task, s)
}

#[tokio::test]
async fn a_stream_after_another_request_is_served_too() {
    let (_edge, task, mut s) = after_another_request("second").await;
    s.write_all(&get(&format!("/v1/tasks/{task}/events?after=0"), false))
        .await
        .expect("request");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"\"seq\":2").await;
    assert!(
        String::from_utf8_lossy(&got).contains("\"seq\":1"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_client_that_closes_ends_its_session_without_a_write() {
    sluice_tests::init_logs();
    let edge = edge().await;
    let m = edge.state.metrics.clone();
    let task = unique_task("gone");
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(edge.addr).await.expect("connect");
        s.write_all(&get(&format!("/v1/tasks/{task}/events"), false))
            .await
            .expect("request");
        let mut got = Vec::new();
        read_until(&mut s, &mut got, b"retry: ").await;
        streams.push(s);
    }
    wait_until("five sessions", T, || async {
        m.connections_of(Transport::Sse) == 5
    })
    .await;
    // Nothing is published and the heartbeat is 10 minutes away: only
    // watching the socket can notice.
    drop(streams);
    wait_until("every session ended", Duration::from_secs(5), || async {
        m.connections_of(Transport::Sse) == 0
    })
    .await;
    wait_until("every socket released", Duration::from_secs(5), || async {
        m.tcp_connections.get() <= 1 // at most the readiness probe's
    })
    .await;
}

/// A WebSocket handshake on a connection that already served a request
/// goes through the HTTP layer's upgrade: the same session, on the socket
/// hyper hands over.
#[tokio::test]
async fn a_websocket_after_another_request_is_served_too() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;

    let (_edge, task, mut s) = after_another_request("ws-second").await;
    let handshake = format!(
        "GET /v1/tasks/{task}/ws?after=0 HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(handshake.as_bytes()).await.expect("handshake");
    // Byte by byte up to the end of the 101's head: what follows is frames.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(T, s.read(&mut b))
            .await
            .expect("101 in time")
            .expect("read");
        assert_eq!(n, 1, "closed before the 101: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(s, Role::Client, None).await;
    let mut seqs = Vec::new();
    let code = loop {
        match tokio::time::timeout(T, ws.next()).await.expect("a frame") {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                seqs.push(v["seq"].as_u64().expect("seq"));
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(code, Some(1000), "the task finished");
}

/// A client's ping is answered with its payload at once, on a quiet task
/// (nothing else is written that would carry it), and so is a second one.
#[tokio::test]
async fn a_websocket_clients_pings_are_answered() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    sluice_tests::init_logs();
    let edge = edge().await;
    let task = unique_task("ping");
    let url = format!("ws://{}/v1/tasks/{task}/ws", edge.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("upgrade");
    for payload in [&b"first"[..], b"second"] {
        ws.send(Message::Ping(payload.to_vec().into()))
            .await
            .expect("ping");
        let pong = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("an answer within 5 s (the heartbeat is 10 minutes away)")
            {
                Some(Ok(Message::Pong(p))) => break p,
                // The unknown task's reset, before anything else.
                Some(Ok(Message::Text(_))) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        };
        assert_eq!(&pong[..], payload);
    }
}

/// The seqs of a raw chunked SSE response, in order, decoded strictly: the
/// chunked framing must be exact (every length right, every chunk ended by
/// CRLF, the terminator last), and every event's `data:` an envelope.
fn seqs(raw: &[u8]) -> Vec<u64> {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let mut rest = &raw[at..];
    let mut body = Vec::new();
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).expect("ascii"), 16)
            .expect("a hex chunk size");
        rest = &rest[line + 2..];
        if size == 0 {
            assert_eq!(rest, b"\r\n", "nothing after the terminator");
            break;
        }
        assert!(rest.len() >= size + 2, "a whole chunk");
        body.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        rest = &rest[size + 2..];
    }
    let text = String::from_utf8(body).expect("UTF-8");
    text.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| {
            let v: serde_json::Value = serde_json::from_str(data).expect("an envelope");
            v["seq"].as_u64().expect("a seq")
        })
        .collect()
}

/// Live events of a one-task stream are written by the hub straight to the
/// socket while the session waits (`direct_writes_total` counts them): every
/// seq still arrives once, in order, for a reader that keeps up and for one
/// that reads nothing until all are published (its socket fills, takes a
/// frame in part, and the rest is written by the connection's own writer
/// before anything else).
#[tokio::test]
async fn direct_writes_deliver_every_event_once_in_order() {
    sluice_tests::init_logs();
    let edge = edge().await;
    let m = edge.state.metrics.clone();
    let task = unique_task("direct");
    let request = get(&format!("/v1/tasks/{task}/events?after=0"), false);
    let mut fast = TcpStream::connect(edge.addr).await.expect("connect");
    fast.write_all(&request).await.expect("request");
    // A small receive window: frames of ~3 KB fill it at once.
    let slow = {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        s.connect(&edge.addr.into()).expect("connect");
        s.set_nonblocking(true).expect("nonblocking");
        TcpStream::from_std(s.into()).expect("tokio stream")
    };
    let mut slow = slow;
    slow.write_all(&request).await.expect("request");
    // What each stream sent before the first event (its head, `retry:`).
    let mut started = [Vec::new(), Vec::new()];
    for (s, got) in [&mut fast, &mut slow].into_iter().zip(started.iter_mut()) {
        read_until(s, got, b"retry: ").await;
    }
    let [fast_start, slow_start] = started;
    wait_until("both sessions", T, || async {
        m.connections_of(Transport::Sse) == 2
    })
    .await;
    let before = m.direct_writes.get();
    const N: u64 = 300;
    let publisher = {
        let url = edge.url(&format!("/v1/tasks/{task}/events"));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let pad = "x".repeat(40_000);
            for i in 1..=N {
                let r = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .json(
                        &json!({"type": "progress", "data": {"i": i, "pad": pad}, "final": i == N}),
                    )
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(r.status(), 201);
            }
        })
    };
    let (published_tx, published_rx) = tokio::sync::oneshot::channel::<()>();
    let publisher = tokio::spawn(async move {
        publisher.await.expect("publisher");
        let _ = published_tx.send(());
    });
    let read_all = |mut s: TcpStream,
                    mut got: Vec<u8>,
                    wait: Option<tokio::sync::oneshot::Receiver<()>>| async move {
        if let Some(wait) = wait {
            let _ = wait.await;
        }
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut chunk = [0u8; 1024];
            while !got.ends_with(b"\r\n0\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the stream ends after the final event");
        got
    };
    let (fast, slow) = tokio::join!(
        read_all(fast, fast_start, None),
        read_all(slow, slow_start, Some(published_rx)),
    );
    publisher.await.expect("publisher");
    let want: Vec<u64> = (1..=N).collect();
    assert_eq!(seqs(&fast), want, "the reader that keeps up");
    assert_eq!(seqs(&slow), want, "the reader that stalled");
    assert!(
        m.direct_writes.get() > before,
        "no event was written directly"
    );
}
