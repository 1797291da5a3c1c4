//! Auth and bad input, against a real Redis: subscriber tokens (401/403 on
//! SSE, WebSocket, snapshot and history), key rotation, publish keys, secure
//! by default, validation of every input, corrupt stored data.

use std::time::Duration;

use serde_json::json;
use sluice_broker::Publisher;
use sluice_shared::token::Claims;
use sluice_tests::{unique_task, RedisFixture, SseClient, TestEdge, WsClient, WsItem};

const T: Duration = Duration::from_secs(10);
const S1: &str = "first-secret-0123456789";
const S2: &str = "second-secret-0123456789";

fn token(secret: &str, tasks: &[&str]) -> String {
    let tasks: Vec<String> = tasks.iter().map(|s| s.to_string()).collect();
    sluice_broker::token::issue(secret, &tasks, Duration::from_secs(600), Some("test"))
        .expect("token")
}

fn expired(secret: &str, task: &str) -> String {
    expiring(secret, task, 1_000_000)
}

/// A token for `task` that expires at `exp` (Unix seconds).
fn expiring(secret: &str, task: &str, exp: u64) -> String {
    let claims = Claims {
        tasks: vec![task.into()],
        exp,
        iat: None,
        sub: None,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

async fn status_and_error(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    let mut req = client.get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    if status == 200 {
        return (status, String::new());
    }
    let body: serde_json::Value = r.json().await.expect("JSON error body");
    assert!(body["message"].is_string(), "{body}");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn tokens_gate_every_read_endpoint() {
    sluice_tests::init_logs();
    let secrets = format!("{S1},{S2}");
    let (redis, edge) = TestEdge::redis()
        .secure()
        .args(&["--auth-secret", &secrets, "--admin-listen", "127.0.0.1:0"])
        .start()
        .await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = format!("reports-{}", unique_task("auth"));
    let other = unique_task("other");
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish");
    p.publish(&other, "progress", &json!(1))
        .await
        .expect("publish");
    let client = reqwest::Client::new();

    let exact = token(S1, &[&task]);
    let prefix = token(S1, &["reports-*"]);
    let rotated = token(S2, &[&task]);
    let wrong_sig = token("not-the-secret-at-all-0000", &[&task]);
    let old = expired(S1, &task);
    for path in [
        format!("/v1/tasks/{task}"),
        format!("/v1/tasks/{task}/history?after=0"),
    ] {
        let url = edge.url(&path);
        assert_eq!(
            status_and_error(&client, &url, None).await,
            (401, "unauthorized".into()),
            "{path}"
        );
        assert_eq!(
            status_and_error(&client, &url, Some("garbage")).await.0,
            401
        );
        assert_eq!(
            status_and_error(&client, &url, Some(&wrong_sig)).await.0,
            401
        );
        assert_eq!(status_and_error(&client, &url, Some(&old)).await.0, 401);
        assert_eq!(status_and_error(&client, &url, Some(&exact)).await.0, 200);
        assert_eq!(status_and_error(&client, &url, Some(&prefix)).await.0, 200);
        assert_eq!(
            status_and_error(&client, &url, Some(&rotated)).await.0,
            200,
            "second secret verifies"
        );
        // ?token= works too (EventSource cannot set headers).
        let sep = if path.contains('?') { '&' } else { '?' };
        assert_eq!(
            status_and_error(&client, &format!("{url}{sep}token={exact}"), None)
                .await
                .0,
            200
        );
    }
    // Valid token, other task: 403.
    let url = edge.url(&format!("/v1/tasks/{other}"));
    assert_eq!(
        status_and_error(&client, &url, Some(&prefix)).await,
        (403, "forbidden".into())
    );

    // SSE.
    let sse = edge.url(&format!("/v1/tasks/{task}/events"));
    assert_eq!(SseClient::connect(&sse, None).await.status, 401);
    let bad = format!("Bearer {wrong_sig}");
    assert_eq!(
        SseClient::connect_with(&sse, None, &[("authorization", &bad)])
            .await
            .status,
        401
    );
    let forbidden = SseClient::connect(
        &edge.url(&format!("/v1/tasks/{other}/events?token={prefix}")),
        None,
    )
    .await;
    assert_eq!(forbidden.status, 403);
    let mut ok = SseClient::connect(&format!("{sse}?token={prefix}"), None).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.next_event(T).await.expect("snapshot").seq(), Some(1));

    // WebSocket.
    let ws = format!("ws://{}/v1/tasks/{task}/ws", edge.addr);
    assert_eq!(WsClient::connect(&ws).await.err(), Some(401));
    assert_eq!(
        WsClient::connect(&format!(
            "ws://{}/v1/tasks/{other}/ws?token={exact}",
            edge.addr
        ))
        .await
        .err(),
        Some(403)
    );
    let mut c = WsClient::connect(&format!("{ws}?token={rotated}"))
        .await
        .expect("allowed");
    assert_eq!(c.envelope(T).await["seq"], json!(1));

    let m = client
        .get(edge.admin_url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        m.contains(r#"sluice_edge_connections_refused_total{reason="forbidden"}"#),
        "{m}"
    );
}

/// The token is a credential for opening a stream, not for keeping it: a
/// stream opened before the token's `exp` keeps receiving events after it,
/// while a new connection with the same token is refused 401 (so is every
/// reconnect, which is where an expired token stops working).
#[tokio::test]
async fn streams_outlive_their_token_and_reconnects_recheck_it() {
    sluice_tests::init_logs();
    const PK: &str = "pk-expiry-0123456789";
    let edge = TestEdge::memory()
        .secure()
        .args(&["--auth-secret", S1, "--publish-key", PK])
        .start()
        .await;
    let client = reqwest::Client::new();
    let task = unique_task("exp");
    let publish = |n: u64| {
        let req = client
            .post(edge.url(&format!("/v1/tasks/{task}/events")))
            .bearer_auth(PK)
            .json(&json!({"type": "progress", "data": n}));
        async move {
            let r = req.send().await.expect("publish");
            assert_eq!(r.status(), 201);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let exp = now + 2;
    let tok = expiring(S1, &task, exp);
    publish(1).await;
    let sse_url = edge.url(&format!("/v1/tasks/{task}/events?token={tok}"));
    let ws_url = format!("ws://{}/v1/tasks/{task}/ws?token={tok}", edge.addr);
    let mut sse = SseClient::connect(&sse_url, None).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_event(T).await.expect("snapshot").seq(), Some(1));
    let mut ws = WsClient::connect(&ws_url).await.expect("upgrade");
    assert_eq!(ws.envelope(T).await["seq"], json!(1));

    // Wait until the node refuses the token (its `exp` plus the verifier's
    // leeway have passed), asking the snapshot endpoint.
    let snapshot = edge.url(&format!("/v1/tasks/{task}"));
    sluice_tests::wait_until("the token refused", Duration::from_secs(30), || {
        let (client, url) = (client.clone(), snapshot.clone());
        let tok = tok.clone();
        async move { status_and_error(&client, &url, Some(&tok)).await.0 == 401 }
    })
    .await;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(after > exp, "refused only past exp");
    // New connections with it: 401.
    let refused = SseClient::connect(&sse_url, None).await;
    assert_eq!(refused.status, 401);
    let body: serde_json::Value =
        serde_json::from_str(refused.body.as_deref().expect("body")).expect("JSON error");
    assert_eq!(body["error"], json!("unauthorized"));
    assert_eq!(body["message"], json!("token expired"));
    assert_eq!(WsClient::connect(&ws_url).await.err(), Some(401));

    // The streams opened before `exp` still deliver.
    publish(2).await;
    assert_eq!(
        sse.next_event(T).await.expect("live after exp").seq(),
        Some(2)
    );
    assert_eq!(ws.envelope(T).await["seq"], json!(2));
}

#[tokio::test]
async fn publish_keys_and_secure_defaults() {
    sluice_tests::init_logs();
    let client = reqwest::Client::new();
    let task = unique_task("pubkey");

    // Keys configured (two, for rotation): missing or wrong is 401.
    let (redis, edge) = TestEdge::redis()
        .args(&["--publish-key", "k-one,k-two"])
        .start()
        .await;
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let body = json!({"type": "progress", "data": {"pct": 1}});
    let r = client.post(&url).json(&body).send().await.expect("post");
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("k-three")
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("k-two")
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    // Idempotent retry over HTTP: 200 with the first seq.
    let body_k = json!({"type": "progress", "data": 2, "idempotency_key": "once"});
    let a: serde_json::Value = client
        .post(&url)
        .bearer_auth("k-one")
        .json(&body_k)
        .send()
        .await
        .expect("p")
        .json()
        .await
        .expect("j");
    let r = client
        .post(&url)
        .bearer_auth("k-one")
        .json(&body_k)
        .send()
        .await
        .expect("p");
    assert_eq!(r.status(), 200);
    let b: serde_json::Value = r.json().await.expect("j");
    assert_eq!(a["seq"], b["seq"]);
    assert_eq!(b["duplicate"], json!(true));
    drop(edge);

    // No key configured and not demo: publishing over HTTP is refused.
    let edge = TestEdge::on(&redis.url()).start().await;
    let r = client
        .post(edge.url(&format!("/v1/tasks/{task}/events")))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);

    // Secure by default: no secret and neither --insecure nor --demo.
    use clap::Parser;
    let c = sluice_edge::Config::try_parse_from(["sluice-edge"]).expect("parses");
    let err = c.validate().expect_err("refuses to start open");
    assert!(err.contains("--insecure"), "{err}");
    let c = sluice_edge::Config::try_parse_from(["sluice-edge", "--auth-secret", "short"])
        .expect("parses");
    assert!(c.validate().is_err(), "weak secrets are refused");
    for ok in [
        vec!["sluice-edge", "--insecure"],
        vec!["sluice-edge", "--demo"],
        vec!["sluice-edge", "--auth-secret", S1],
    ] {
        sluice_edge::Config::try_parse_from(ok)
            .expect("parses")
            .validate()
            .expect("valid");
    }
    // The effective config logged at start never shows secrets.
    let c = sluice_edge::Config::try_parse_from([
        "sluice-edge",
        "--auth-secret",
        S1,
        "--publish-key",
        "pk-secret",
        "--redis-url",
        "redis://user:pw-secret@h:1",
    ])
    .expect("parses");
    let shown = c.redacted();
    for secret in [S1, "pk-secret", "pw-secret"] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

/// Malformed task ids, on every read endpoint: 400.
async fn bad_task_ids_are_refused(client: &reqwest::Client, edge: &sluice_tests::EdgeHandle) {
    let long_id = "x".repeat(129);
    let bad_tasks = [
        "a%20b",
        "a%2Fb",
        "%FF",
        "%7Bs1%7D",
        long_id.as_str(),
        "caf%C3%A9",
        "a*b",
    ];
    for t in bad_tasks {
        for path in [
            format!("/v1/tasks/{t}"),
            format!("/v1/tasks/{t}/history"),
            format!("/v1/tasks/{t}/events"),
        ] {
            let (status, _) = status_and_error(client, &edge.url(&path), None).await;
            assert_eq!(status, 400, "{path}");
        }
    }
}

/// Malformed `Last-Event-ID` and `?after=`: 400 `invalid_resume_point`.
async fn bad_resume_points_are_refused(edge: &sluice_tests::EdgeHandle, task: &str) {
    let sse = edge.url(&format!("/v1/tasks/{task}/events"));
    for id in ["abc", "-1", "1.5", "99999999999999999999999", "0x10", " "] {
        let c = SseClient::connect_with(&sse, None, &[("last-event-id", id)]).await;
        assert_eq!(c.status, 400, "Last-Event-ID {id:?}");
        let body: serde_json::Value =
            serde_json::from_str(c.body.as_deref().expect("body")).expect("json");
        assert_eq!(body["error"], json!("invalid_resume_point"));
    }
    for q in ["after=abc", "after=-5", "after=18446744073709551616"] {
        assert_eq!(
            SseClient::connect(&format!("{sse}?{q}"), None).await.status,
            400,
            "{q}"
        );
    }
}

/// Malformed history queries: 400 `invalid_*`.
async fn bad_history_queries_are_refused(
    client: &reqwest::Client,
    edge: &sluice_tests::EdgeHandle,
    task: &str,
) {
    for q in ["limit=0", "limit=-1", "limit=1001", "limit=x", "after=1e3"] {
        let (status, code) = status_and_error(
            client,
            &edge.url(&format!("/v1/tasks/{task}/history?{q}")),
            None,
        )
        .await;
        assert_eq!(status, 400, "{q}");
        assert!(code.starts_with("invalid_"), "{code}");
    }
}

/// Malformed, oversized or invalid publish bodies: 400 or 413, with the
/// JSON error body.
async fn bad_publish_bodies_are_refused(
    client: &reqwest::Client,
    edge: &sluice_tests::EdgeHandle,
    task: &str,
) {
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let deep = format!(
        "{{\"type\":\"x\",\"data\":{}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let huge = format!("{{\"type\":\"x\",\"data\":\"{}\"}}", "y".repeat(300 * 1024));
    let big_data = format!("{{\"type\":\"x\",\"data\":\"{}\"}}", "y".repeat(70 * 1024));
    let cases: Vec<(String, u16)> = vec![
        ("not json".into(), 400),
        ("{}".into(), 400),
        (r#"{"type":"sluice.reset","data":1}"#.into(), 400),
        (r#"{"type":"has space","data":1}"#.into(), 400),
        (r#"{"type":"x","data":1,"final":"yes"}"#.into(), 400),
        (r#"{"type":"x","data":1,"extra":true}"#.into(), 400),
        (r#"{"type":"x","data":1,"idempotency_key":""}"#.into(), 400),
        (deep, 400),
        (huge, 413),
        (big_data, 413),
        ("\u{0}\u{1}\u{2}".into(), 400),
    ];
    for (body, want) in cases {
        let r = client
            .post(&url)
            .bearer_auth("pk")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), want, "{}", &body[..body.len().min(60)]);
        let e: serde_json::Value = r.json().await.expect("JSON error body");
        assert!(e["error"].is_string() && e["message"].is_string(), "{e}");
    }
}

/// Wrong method, unknown path: JSON too.
async fn wrong_method_and_unknown_path_answer_json(
    client: &reqwest::Client,
    edge: &sluice_tests::EdgeHandle,
    task: &str,
) {
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let r = client.delete(&url).send().await.expect("delete");
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json")["error"],
        json!("method_not_allowed")
    );
    let (status, code) = status_and_error(client, &edge.url("/v2/nothing"), None).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}

/// A WebSocket client sending an oversized message is closed (1009).
async fn oversized_websocket_message_closes(edge: &sluice_tests::EdgeHandle, task: &str) {
    let mut c = WsClient::connect(&format!("ws://{}/v1/tasks/{task}/ws", edge.addr))
        .await
        .expect("ws");
    assert_eq!(c.envelope(T).await["seq"], json!(1));
    use futures_util::SinkExt;
    let _ = c
        .socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "z".repeat(64 * 1024).into(),
        ))
        .await;
    // Exactly 1009 (Message Too Big): not 1008, and not a bare drop without
    // a close frame.
    match c.next(T).await {
        WsItem::Closed(code) => assert_eq!(code, Some(1009), "close code"),
        WsItem::Envelope(v) => panic!("expected a close, got {v}"),
    }
}

/// Every malformed input gets a 4xx with the JSON error body, never a 500,
/// never a crash, and never touches stored data.
#[tokio::test]
async fn bad_input_is_refused_without_touching_data() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--publish-key", "pk"])
        .start()
        .await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("input");
    p.publish(&task, "progress", &json!({"pct": 5}))
        .await
        .expect("publish");
    let client = reqwest::Client::new();
    let before: serde_json::Value = client
        .get(edge.url(&format!("/v1/tasks/{task}")))
        .send()
        .await
        .expect("g")
        .json()
        .await
        .expect("j");

    bad_task_ids_are_refused(&client, &edge).await;
    bad_resume_points_are_refused(&edge, &task).await;
    bad_history_queries_are_refused(&client, &edge, &task).await;
    bad_publish_bodies_are_refused(&client, &edge, &task).await;
    wrong_method_and_unknown_path_answer_json(&client, &edge, &task).await;
    oversized_websocket_message_closes(&edge, &task).await;

    // Nothing changed in the store, and the node still serves.
    let after: serde_json::Value = client
        .get(edge.url(&format!("/v1/tasks/{task}")))
        .send()
        .await
        .expect("g")
        .json()
        .await
        .expect("j");
    assert_eq!(before, after);
    assert_eq!(
        client
            .get(edge.url("/healthz"))
            .send()
            .await
            .expect("h")
            .status(),
        200
    );
}

/// A corrupt or foreign entry in a feed or log never crashes the reader:
/// it is skipped (feed) or answered with a reset (history), and delivery
/// goes on.
#[tokio::test]
async fn corrupt_stream_entries_are_skipped() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().start().await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("corrupt");
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish");
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));

    let keys = sluice_shared::TaskKeys::new(&sluice_shared::TaskId::parse(&task).expect("t"), 16);
    let mut conn = redis.conn().await;
    for fields in [
        vec![
            ("task", task.as_bytes().to_vec()),
            ("e", b"\xc1\xff garbage".to_vec()),
        ],
        vec![("task", task.as_bytes().to_vec())],
        vec![("task", b"\xff\xfe".to_vec()), ("e", b"x".to_vec())],
        vec![("foreign", b"producer".to_vec())],
    ] {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&keys.feed).arg("*");
        for (k, v) in fields {
            cmd.arg(k).arg(v);
        }
        let _: String = cmd.query_async(&mut conn).await.expect("xadd junk");
    }
    p.publish(&task, "progress", &json!(2))
        .await
        .expect("publish");
    assert_eq!(
        c.next_event(T).await.expect("live after junk").seq(),
        Some(2)
    );
    p.publish(&task, "progress", &json!(3))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("live 3").seq(), Some(3));

    // A corrupt log entry where history is needed: rebuild the task log
    // with entry 2 replaced by garbage (same id, same field name), so a
    // client resuming after 1 must read through it.
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&keys.log)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("xrange");
    let ids: Vec<&str> = entries.ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["1-0", "2-0", "3-0"], "the log as published");
    let _: i64 = redis::cmd("DEL")
        .arg(&keys.log)
        .query_async(&mut conn)
        .await
        .expect("del");
    for entry in &entries.ids {
        let mut fields: Vec<(&String, &redis::Value)> = entry.map.iter().collect();
        fields.sort_by_key(|(k, _)| k.as_str());
        assert_eq!(
            fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["e"],
            "log entries hold one field"
        );
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&keys.log).arg(&entry.id);
        for (k, v) in fields {
            cmd.arg(k);
            if entry.id == "2-0" {
                cmd.arg(b"\x00not msgpack".to_vec());
            } else {
                let redis::Value::BulkString(bytes) = v else {
                    panic!("log entry value is a bulk string: {v:?}");
                };
                cmd.arg(bytes.clone());
            }
        }
        let id: String = cmd.query_async(&mut conn).await.expect("xadd");
        assert_eq!(id, entry.id);
    }
    let resets_before = metric(&edge.url("/metrics"), "sluice_edge_resets_total").await;
    let mut c2 =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=1")), None).await;
    assert_eq!(c2.status, 200);
    let reset = c2.next_event(T).await.expect("reset");
    assert_eq!(
        reset.event.as_deref(),
        Some("sluice.reset"),
        "the unreadable event 2 is answered with a reset, not skipped: {reset:?}"
    );
    assert_eq!(reset.seq(), Some(3), "the reset carries the snapshot's seq");
    let snap = reset.json();
    assert_eq!(snap["task"], json!(task));
    assert_eq!(snap["seq"], json!(3));
    assert_eq!(snap["state"], json!("open"));
    assert_eq!(snap["latest"]["seq"], json!(3));
    assert_eq!(snap["latest"]["data"], json!(3));
    assert_eq!(
        metric(&edge.url("/metrics"), "sluice_edge_resets_total").await,
        resets_before + 1
    );
    // Then live, from the snapshot's seq on.
    p.publish(&task, "progress", &json!(4))
        .await
        .expect("publish");
    let live = c2.next_event(T).await.expect("live after the reset");
    assert_eq!(live.seq(), Some(4));
    assert_eq!(live.event.as_deref(), Some("progress"));
    assert_eq!(c.next_event(T).await.expect("live 4").seq(), Some(4));

    let h = reqwest::get(edge.url(&format!("/v1/tasks/{task}/history?after=1")))
        .await
        .expect("history");
    assert_eq!(h.status(), 500, "a corrupt entry is reported, not hidden");
    assert_eq!(
        h.json::<serde_json::Value>().await.expect("json")["error"],
        json!("corrupt_data")
    );
    assert_eq!(
        reqwest::get(edge.url("/healthz"))
            .await
            .expect("h")
            .status(),
        200
    );
}

/// One counter or gauge of `/metrics` (0 when absent).
async fn metric(url: &str, name: &str) -> u64 {
    let text = reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().expect("metric value") as u64)
        .unwrap_or(0)
}

/// The real `sluice-edge` binary with its stdout and stderr captured (the
/// shared harness discards them).
struct LoggedEdge {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    logs: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl LoggedEdge {
    async fn start(args: &[&str], rust_log: &str) -> LoggedEdge {
        use tokio::io::AsyncReadExt;
        let bin = tokio::task::spawn_blocking(|| sluice_tests::bins::bin("sluice-edge"))
            .await
            .expect("build sluice-edge");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", sluice_tests::free_port())
            .parse()
            .expect("addr");
        let mut child = tokio::process::Command::new(bin)
            .args(["--listen", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", rust_log)
            .env_remove("SLUICE_LOG_FORMAT")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start sluice-edge");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let outputs: [Box<dyn tokio::io::AsyncRead + Send + Unpin>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut out in outputs {
            let logs = logs.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = out.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    logs.lock().expect("logs").extend_from_slice(&buf[..n]);
                }
            }));
        }
        let edge = LoggedEdge {
            child,
            addr,
            logs,
            readers,
        };
        let http = reqwest::Client::new();
        let url = edge.url("/readyz");
        sluice_tests::wait_until("edge process ready", Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move { matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) }
        })
        .await;
        edge
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM, wait for a clean exit, and return everything it wrote.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("pid");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "SIGTERM sent");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("edge exits after SIGTERM")
            .expect("wait");
        assert!(exit.success(), "drained edge exits 0: {exit}");
        for r in self.readers.drain(..) {
            r.await.expect("log reader");
        }
        let logs = self.logs.lock().expect("logs");
        String::from_utf8_lossy(&logs).into_owned()
    }
}

/// Tokens sent as `?token=` (EventSource cannot set headers) never reach
/// the logs, even at trace level: not on a served subscription, a 401, a
/// 403, a snapshot, history, WebSocket, the dashboard or a framework
/// rejection. The logs were captured for real: they name the task.
#[tokio::test]
async fn query_tokens_are_never_logged() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let admin = format!("127.0.0.1:{}", sluice_tests::free_port());
    let edge = LoggedEdge::start(
        &[
            "--redis-url",
            &redis.url(),
            "--admin-listen",
            &admin,
            "--auth-secret",
            S1,
            "--drain-secs",
            "1",
            "--heartbeat-secs",
            "1",
        ],
        "trace",
    )
    .await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("logged");
    let other = unique_task("logged-other");
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish");
    let valid = token(S1, &[&task]);
    let wrong_sig = token("not-the-secret-at-all-0000", &[&task]);
    let opaque = format!("sk_live_{}", unique_task("Zq9").replace('-', "x"));
    let secrets = [valid.as_str(), wrong_sig.as_str(), opaque.as_str()];

    // A served SSE subscription: snapshot, a live event, a heartbeat.
    let mut c = SseClient::connect(
        &edge.url(&format!("/v1/tasks/{task}/events?token={valid}")),
        None,
    )
    .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));
    p.publish(&task, "progress", &json!(2))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("live").seq(), Some(2));
    // A resumed one, with the token after the resume point.
    let mut r = SseClient::connect(
        &edge.url(&format!("/v1/tasks/{task}/events?after=0&token={valid}")),
        None,
    )
    .await;
    assert_eq!(r.next_event(T).await.expect("history").seq(), Some(1));
    drop(r);
    // Refused ones: 401 (bad signature, opaque junk), 403 (other task).
    for bad in [&wrong_sig, &opaque] {
        let c = SseClient::connect(
            &edge.url(&format!("/v1/tasks/{task}/events?token={bad}")),
            None,
        )
        .await;
        assert_eq!(c.status, 401);
    }
    let c403 = SseClient::connect(
        &edge.url(&format!("/v1/tasks/{other}/events?token={valid}")),
        None,
    )
    .await;
    assert_eq!(c403.status, 403);
    // Snapshot, history, 404, bad path, dashboard.
    let http = reqwest::Client::new();
    for (path, status) in [
        (format!("/v1/tasks/{task}?token={valid}"), 200),
        (format!("/v1/tasks/{task}?token={wrong_sig}"), 401),
        (
            format!("/v1/tasks/{task}/history?after=0&token={valid}"),
            200,
        ),
        (
            format!("/v1/tasks/{task}/history?after=0&token={opaque}"),
            401,
        ),
        (
            format!("/v1/tasks/{task}/history?after=x&token={valid}"),
            400,
        ),
        (format!("/v1/no-such-endpoint?token={valid}"), 404),
        (format!("/v1/tasks/%FF%FE/events?token={valid}"), 400),
    ] {
        let resp = http.get(edge.url(&path)).send().await.expect("request");
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }
    let mut dash = SseClient::connect(
        &format!("http://{admin}/v1/dashboard/events?task={task}&token={valid}"),
        None,
    )
    .await;
    assert_eq!(dash.status, 200);
    assert!(dash.next_event(T).await.is_some(), "dashboard frame");
    drop(dash);
    // WebSocket: served and refused.
    let mut ws = WsClient::connect(&format!(
        "ws://{}/v1/tasks/{task}/ws?after=0&token={valid}",
        edge.addr
    ))
    .await
    .expect("ws with a valid token");
    assert_eq!(ws.envelope(T).await["seq"], json!(1));
    ws.close().await;
    assert_eq!(
        WsClient::connect(&format!(
            "ws://{}/v1/tasks/{task}/ws?token={opaque}",
            edge.addr
        ))
        .await
        .err(),
        Some(401)
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = edge.stop().await;
    // The capture is real: the node's own lines, with the task id that was
    // in the same URLs as the tokens.
    assert!(logs.contains("sluice-edge serving"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("connection closed") && l.contains(&task)),
        "a connection line names the task: {logs}"
    );
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "debug/trace lines were enabled: {logs}"
    );
    for secret in secrets {
        // Each token, and its signature (the part that must stay secret).
        let tail = secret.rsplit('.').next().unwrap_or(secret);
        for needle in [secret, tail] {
            if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
                panic!("a token reached the logs: {line}");
            }
        }
    }
    assert!(!logs.contains(S1), "the auth secret is redacted");
}
