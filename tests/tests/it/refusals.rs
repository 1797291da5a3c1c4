//! Refusals an EventSource survives. A browser's EventSource that gets any
//! answer but 200 closes for good, so a stream request that accepts
//! `text/event-stream` is refused with `200 text/event-stream`, the reason
//! as a comment and a jittered `retry:`, then the end of the stream: the
//! browser comes back (with its Last-Event-ID) after the delay. Every other
//! request (no `text/event-stream` in `Accept`, a WebSocket upgrade) keeps
//! the `503` with `Retry-After` and the JSON error. Both count as refusals.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use sluice_tests::chaos::proxy::PausableProxy;
use sluice_tests::sse::SseDecoder;
use sluice_tests::{spawn_edge, unique_task, RedisFixture, SseClient, TestEdge, WsClient};

const T: Duration = Duration::from_secs(20);
const EVENT_STREAM: &str = "text/event-stream";

/// `GET url` with `Accept: accept` (none if `None`).
async fn get(url: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    tokio::time::timeout(T, req.send())
        .await
        .expect("an answer within the timeout")
        .expect("request")
}

/// What an SSE refusal said: its reason and its `retry:` (ms).
#[derive(Debug)]
struct SseRefusal {
    reason: String,
    retry_ms: u64,
}

/// Reads a whole response that must be an SSE refusal: 200
/// `text/event-stream`, a `Sluice-Refused` header naming the reason, and a
/// body that ends at once and holds the reason as a comment and a `retry:`
/// line, with no blank line, so no parser dispatches anything (EventSource
/// applies `retry:` as it reads the line; httpx-sse and the harness's own
/// decoder yield no event from it).
async fn sse_refusal(resp: reqwest::Response) -> SseRefusal {
    assert_eq!(resp.status(), 200, "an SSE refusal is a 200");
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], EVENT_STREAM);
    let header = h
        .get("sluice-refused")
        .expect("a Sluice-Refused header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = tokio::time::timeout(T, resp.text())
        .await
        .expect("the refusal's body ends at once")
        .expect("body");
    let lines: Vec<&str> = body.split_terminator('\n').collect();
    let [comment, retry] = lines[..] else {
        panic!("two lines: {body:?}");
    };
    assert!(body.ends_with('\n') && !body.contains("\n\n"), "{body:?}");
    let reason = comment.strip_prefix(": ").expect("a comment first");
    assert_eq!(reason, header, "the comment names the header's reason");
    let retry_ms = retry
        .strip_prefix("retry: ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("a retry: line: {body:?}"));
    let mut d = SseDecoder::default();
    assert!(d.feed(body.as_bytes()));
    assert_eq!(d.next_dispatched(), None, "nothing is dispatched: {body:?}");
    SseRefusal {
        reason: reason.to_owned(),
        retry_ms,
    }
}

/// Checks a 503 JSON refusal and returns its reason and `Retry-After`.
async fn json_refusal(resp: reqwest::Response) -> (String, u64) {
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("sluice-refused").is_none());
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    let body: serde_json::Value = resp.json().await.expect("a JSON error body");
    assert!(body["message"].is_string(), "{body}");
    let code = body["error"].as_str().expect("error code").to_owned();
    (code, retry_after)
}

fn assert_retry(r: &SseRefusal, reason: &str, ms: RangeInclusive<u64>) {
    assert_eq!(r.reason, reason);
    assert!(ms.contains(&r.retry_ms), "{r:?} outside {ms:?}");
}

async fn refused_total(edge: &sluice_tests::EdgeHandle, reason: &str) -> u64 {
    let text = get(&edge.url("/metrics"), None)
        .await
        .text()
        .await
        .expect("metrics");
    let series = format!("sluice_edge_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

#[tokio::test]
async fn connection_limit_refuses_event_sources_with_a_retry() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--max-connections", "1"])
        .start()
        .await;
    let task = unique_task("refuse-full");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let mut held = SseClient::connect(&url, None).await;
    assert_eq!(held.status, 200);
    assert_eq!(held.refused(), None, "an admitted stream is no refusal");
    assert!(held.next_frame(T).await.expect("retry").retry.is_some());

    // What EventSource sends, and a list that includes it.
    for accept in [EVENT_STREAM, "application/json, text/event-stream;q=0.9"] {
        let r = sse_refusal(get(&url, Some(accept)).await).await;
        assert_retry(&r, "too_many_connections", 1_000..=5_000);
    }
    // The harness's client sees the refusal by its header, and no event.
    let mut c = SseClient::connect(&url, None).await;
    assert_eq!((c.status, c.refused()), (200, Some("too_many_connections")));
    assert!(c.next_event(T).await.is_none(), "the refusal ends at once");
    // Anything else keeps the 503.
    for accept in [None, Some("application/json"), Some("*/*")] {
        let (code, retry_after) = json_refusal(get(&url, accept).await).await;
        assert_eq!(code, "too_many_connections", "{accept:?}");
        assert!((1..=5).contains(&retry_after), "{retry_after}");
    }
    let ws = WsClient::connect(&format!("ws://{}/v1/tasks/{task}/ws", edge.addr)).await;
    assert_eq!(ws.err(), Some(503));
    // Every refusal counted, whatever its shape: 3 SSE, 3 JSON, 1 upgrade.
    assert_eq!(refused_total(&edge, "connection_limit").await, 7);

    // Bad requests still fail as such first (400, not a refusal).
    let bad = get(
        &edge.url(&format!("/v1/tasks/{task}/events?after=x")),
        Some(EVENT_STREAM),
    )
    .await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn connect_rate_refuses_event_sources_with_a_retry() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .args(&["--max-connect-rate", "1"])
        .start()
        .await;
    let task = unique_task("refuse-rate");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    // One new connection a second: ask in pairs (an SSE request, then a
    // plain one) until each kind was refused; admitted streams are held.
    let mut held = Vec::new();
    let (mut sse, mut plain) = (None, None);
    let end = tokio::time::Instant::now() + T;
    while sse.is_none() || plain.is_none() {
        assert!(tokio::time::Instant::now() < end, "no refusal of each kind");
        let r = get(&url, Some(EVENT_STREAM)).await;
        if r.headers().contains_key("sluice-refused") {
            sse = Some(sse_refusal(r).await);
        } else {
            assert_eq!(r.status(), 200);
            held.push(r);
        }
        let r = get(&url, None).await;
        if r.status() == 503 {
            plain = Some(json_refusal(r).await);
        } else {
            assert_eq!(r.status(), 200);
            held.push(r);
        }
    }
    let sse = sse.expect("an SSE refusal");
    assert_retry(&sse, "connect_rate_limited", 1_000..=5_000);
    let (code, retry_after) = plain.expect("a JSON refusal");
    assert_eq!(code, "connect_rate_limited");
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    assert!(refused_total(&edge, "connect_rate").await >= 2);
}

#[tokio::test]
async fn draining_node_refuses_event_sources_with_a_short_retry() {
    sluice_tests::init_logs();
    // A long drain window and a few open streams keep the node draining
    // (it stops once its last stream closed, each at a random moment of
    // the window) while the test asks.
    let edge = TestEdge::memory()
        .args(&["--drain-secs", "60"])
        .start()
        .await;
    let task = unique_task("refuse-drain");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let mut open = Vec::new();
    for _ in 0..4 {
        let c = SseClient::connect(&url, None).await;
        assert_eq!(c.status, 200);
        open.push(c);
    }
    let state = edge.state.clone();
    edge.shutdown.cancel();
    sluice_tests::wait_until("node draining", T, || {
        let st = state.clone();
        async move { st.is_draining() }
    })
    .await;
    let r = sse_refusal(get(&url, Some(EVENT_STREAM)).await).await;
    assert_retry(&r, "draining", 100..=1_000);
    let (code, retry_after) = json_refusal(get(&url, None).await).await;
    assert_eq!((code.as_str(), retry_after), ("draining", 1));
    let ws = WsClient::connect(&format!("ws://{}/v1/tasks/{task}/ws", edge.addr)).await;
    assert_eq!(ws.err(), Some(503));
    assert_eq!(refused_total(&edge, "draining").await, 3);
    assert!(
        state.limits.in_use() > 0,
        "the node was still draining its streams"
    );
    drop(open);
}

/// The store cannot serve a new stream (its Redis is gone): an EventSource
/// is told to come back too, instead of a 503 that would end it for good.
#[tokio::test]
async fn unreachable_backend_refuses_event_sources_with_a_retry() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let proxy = PausableProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let edge = spawn_edge(&["--redis-url", &proxy.url(), "--insecure"]).await;
    let task = unique_task("refuse-backend");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    drop(proxy);
    let r = sse_refusal(get(&url, Some(EVENT_STREAM)).await).await;
    assert_retry(&r, "backend_unavailable", 1_000..=3_000);
    let (code, retry_after) = json_refusal(get(&url, None).await).await;
    assert_eq!(code, "backend_unavailable");
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    assert_eq!(edge.state.limits.in_use(), 0, "nothing held");
}
