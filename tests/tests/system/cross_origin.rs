//! A page on another origin reads from the edge (`--cors-origin`), in
//! headless Chromium: the common deployment where app.example.com streams
//! from a separate host. The page is served by a tiny server of the test on
//! its own port (`http://127.0.0.1:<page port>`), the edge listens on
//! another, and allows exactly that origin. From the page: an EventSource
//! receives every event of a task to its final one, and a `fetch` of the
//! snapshot with an `Authorization` header (which needs a preflight)
//! succeeds. The same page reached as `http://localhost:<page port>` is
//! another origin, not on the list: there the EventSource fails for good and
//! the fetch is blocked, so the first half cannot pass by accident.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::{unique_task, EdgeHandle, TestEdge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::browser::{js, wait_js, Driver};

const PK: &str = "pk-cross-origin-0123456789";

/// Serves one blank HTML page on every path until `stop` fires.
async fn serve_page(listener: TcpListener, stop: CancellationToken) {
    let page = "<!doctype html><title>another origin</title><p>app</p>";
    loop {
        let (mut sock, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        tokio::spawn(async move {
            // Read the request head (browsers send small GETs), then answer.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

async fn publish(http: &reqwest::Client, edge: &EdgeHandle, task: &str, n: u64, last: bool) {
    let r = http
        .post(edge.url(&format!("/v1/tasks/{task}/events")))
        .bearer_auth(PK)
        .json(&json!({"type": if last { "done" } else { "progress" }, "data": {"n": n}, "final": last}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 201, "publish accepted");
}

/// Opens an EventSource on `stream` and fetches `snapshot` with an
/// `Authorization` header; records what each did in `window.__x`.
fn probe(stream: &str, snapshot: &str) -> String {
    format!(
        "(function() {{
            const x = {{ seqs: [], ended: false, errors: 0, state: null, fetched: null, blocked: null }};
            window.__x = x;
            const es = new EventSource({stream:?});
            x.es = es;
            const on = ev => {{
                const env = JSON.parse(ev.data);
                x.seqs.push(env.seq);
                if (env.final) {{ x.ended = true; es.close(); }}
            }};
            es.addEventListener('progress', on);
            es.addEventListener('done', on);
            es.addEventListener('error', () => {{ x.errors++; }});
            fetch({snapshot:?}, {{ headers: {{ 'Authorization': 'Bearer not-needed-auth-is-off' }} }})
                .then(r => r.json()).then(j => {{ x.fetched = j.seq; }})
                .catch(e => {{ x.blocked = String(e); }});
            return true;
        }})()"
    )
}

const STATE: &str =
    "({ seqs: window.__x.seqs, ended: window.__x.ended, errors: window.__x.errors, \
                     state: window.__x.es.readyState, fetched: window.__x.fetched, \
                     blocked: window.__x.blocked })";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_streams_and_fetches_another_does_not() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind page");
    let page_port = listener.local_addr().expect("addr").port();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_page(listener, stop.clone()));
    let allowed = format!("http://127.0.0.1:{page_port}");
    let edge = TestEdge::memory()
        .args(&["--publish-key", PK, "--cors-origin", &allowed])
        .start()
        .await;
    let task = unique_task("cors-page");
    let http = reqwest::Client::new();
    for n in 1..=3 {
        publish(&http, &edge, &task, n, false).await;
    }
    let stream = edge.url(&format!("/v1/tasks/{task}/events?after=0"));
    let snapshot = edge.url(&format!("/v1/tasks/{task}"));

    let driver = Driver::start().await;
    let client = driver.browser().await;
    client
        .goto(&format!("{allowed}/app"))
        .await
        .expect("open the page");
    js(&client, &probe(&stream, &snapshot)).await;
    wait_js(&client, "the first events", STATE, |v| {
        v["seqs"] == json!([1, 2, 3]) && v["fetched"] == json!(3)
    })
    .await;
    // Live events and the final one reach the cross-origin EventSource.
    publish(&http, &edge, &task, 4, false).await;
    publish(&http, &edge, &task, 5, true).await;
    let v: Value = wait_js(&client, "the final event", STATE, |v| {
        v["ended"] == json!(true)
    })
    .await;
    assert_eq!(v["seqs"], json!([1, 2, 3, 4, 5]), "{v}");
    assert_eq!(v["errors"], json!(0), "{v}");
    assert_eq!(v["blocked"], Value::Null, "{v}");

    // The same page from an origin that is not on the list.
    let other = format!("http://localhost:{page_port}");
    client
        .goto(&format!("{other}/app"))
        .await
        .expect("open the page on the other origin");
    let task2 = unique_task("cors-page-denied");
    publish(&http, &edge, &task2, 1, false).await;
    let stream2 = edge.url(&format!("/v1/tasks/{task2}/events?after=0"));
    let snapshot2 = edge.url(&format!("/v1/tasks/{task2}"));
    js(&client, &probe(&stream2, &snapshot2)).await;
    let v = wait_js(&client, "the refusal", STATE, |v| {
        v["state"] == json!(2) && v["blocked"].is_string()
    })
    .await;
    assert_eq!(
        v["seqs"],
        json!([]),
        "nothing crosses to an origin not allowed: {v}"
    );
    assert_eq!(v["fetched"], Value::Null, "{v}");
    let console = driver.console(&client).await;
    assert!(
        console
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains("CORS"))),
        "the browser says why: {console:#?}"
    );

    client.close().await.expect("close the browser");
    drop(driver);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
