//! Cross-origin reads (`--cors-origin`): the answers a browser needs before
//! it lets a page on another origin read streams, snapshots and history
//! (preflight, `Access-Control-Allow-Origin`, `Vary: Origin`, the headers a
//! page may send and read), and none for an origin not on the list.

use std::time::Duration;

use sluice_tests::{unique_task, EdgeHandle, TestEdge};

const T: Duration = Duration::from_secs(20);
const APP: &str = "https://app.example.com";

async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(T, req.send())
        .await
        .expect("an answer within the timeout")
        .expect("request")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn preflight(
    edge: &EdgeHandle,
    path: &str,
    origin: &str,
    headers: &str,
) -> reqwest::Response {
    send(
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, edge.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", headers),
    )
    .await
}

#[tokio::test]
async fn listed_origins_may_read_and_others_get_no_cors_headers() {
    let edge = TestEdge::memory()
        .args(&["--cors-origin", &format!("{APP},http://localhost:3000")])
        .args(&["--publish-key", "pk"])
        .start()
        .await;
    let task = unique_task("cors");
    let http = reqwest::Client::new();
    let published = send(
        http.post(edge.url(&format!("/v1/tasks/{task}/events")))
            .bearer_auth("pk")
            .json(&serde_json::json!({"type": "progress", "data": {"pct": 1}})),
    )
    .await;
    assert_eq!(published.status(), 201);

    // The preflight of an EventSource/fetch carrying a token and a resume
    // point: allowed for a listed origin, and only reads.
    let r = preflight(
        &edge,
        "/v1/events?task=a",
        APP,
        "authorization, last-event-id",
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    let allowed = header(&r, "access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("last-event-id"),
        "{allowed}"
    );
    let methods = header(&r, "access-control-allow-methods").unwrap_or("");
    assert!(
        methods.contains("GET") && !methods.contains("POST"),
        "{methods}"
    );
    assert!(header(&r, "vary")
        .unwrap_or("")
        .to_ascii_lowercase()
        .contains("origin"));

    // Reads: the snapshot, history with its paging headers readable, a
    // stream, and errors too.
    for path in [
        format!("/v1/tasks/{task}"),
        format!("/v1/tasks/{task}/history?after=0"),
        "/v1/tasks/unknown-cors-task".to_owned(),
    ] {
        let r = send(http.get(edge.url(&path)).header("origin", APP)).await;
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            Some(APP),
            "{path}"
        );
        assert!(
            header(&r, "vary")
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("origin"),
            "{path}"
        );
        let exposed = header(&r, "access-control-expose-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            exposed.contains("sluice-more") && exposed.contains("sluice-next-after"),
            "{exposed}"
        );
    }
    let stream = send(
        http.get(edge.url(&format!("/v1/tasks/{task}/events")))
            .header("origin", "http://localhost:3000")
            .header("accept", "text/event-stream"),
    )
    .await;
    assert_eq!(stream.status(), 200);
    assert_eq!(
        header(&stream, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    drop(stream);

    // Another origin: answered, but with nothing that lets its page read.
    let r = preflight(
        &edge,
        "/v1/events?task=a",
        "https://evil.example",
        "authorization",
    )
    .await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = send(
        http.get(edge.url(&format!("/v1/tasks/{task}")))
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    edge.stop().await;
}

#[tokio::test]
async fn any_origin_reads_without_credentials() {
    let edge = TestEdge::memory()
        .args(&["--cors-origin", "*"])
        .start()
        .await;
    let r = preflight(&edge, "/v1/events?task=a", APP, "last-event-id").await;
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    let allowed = header(&r, "access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(allowed.contains("last-event-id"), "{allowed}");
    assert!(
        !allowed.contains("authorization"),
        "with *, tokens travel in ?token=: {allowed}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn without_the_flag_no_cors_headers_and_bad_origins_refuse_to_start() {
    let edge = TestEdge::memory().start().await;
    let r = preflight(&edge, "/v1/events?task=a", APP, "last-event-id").await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    edge.stop().await;

    let bin = sluice_tests::bins::bin_async("sluice-edge").await;
    for bad in [
        "app.example.com",
        "https://app.example.com/",
        "*,https://a.example",
    ] {
        let out = tokio::time::timeout(
            T,
            tokio::process::Command::new(&bin)
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    "--insecure",
                    "--cors-origin",
                    bad,
                ])
                .env_remove("SLUICE_CORS_ORIGIN")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the node must refuse to start, not run")
        .expect("exit");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--cors-origin"),
            "{bad}"
        );
    }
}
