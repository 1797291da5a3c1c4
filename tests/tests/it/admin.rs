//! The operator surface (`/`, `/v1/dashboard/events`, `/metrics`) and
//! where it is served: on `--admin-listen` only when that is set; else on
//! the public port only while subscriber auth is off; with auth on and no
//! admin listener, nowhere (404 JSON, like any unknown path, plus one
//! warning at start). Health, readiness and capacity answer on every
//! listener.

use std::time::Duration;

use sluice_tests::{SseClient, TestEdge};

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "admin-test-secret-0123456789";
const OPERATOR: [&str; 3] = ["/", "/metrics", "/v1/dashboard/events"];
const HEALTH: [&str; 3] = ["/healthz", "/readyz", "/capacity"];

/// `GET url` answers 404 with the API's JSON error body.
async fn assert_not_found(http: &reqwest::Client, url: &str) {
    let r = http.get(url).send().await.expect("request");
    assert_eq!(r.status(), 404, "{url}");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{url}: {content_type}"
    );
    let body: serde_json::Value = r.json().await.expect("JSON error body");
    assert_eq!(body["error"], "not_found", "{url}: {body}");
}

/// The operator surface answers at `url(path)`: the page, the metrics, and
/// a stats stream that sends its first frame.
async fn assert_operator_surface(http: &reqwest::Client, url: impl Fn(&str) -> String) {
    let page = http.get(url("/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .expect("page text")
        .contains("/v1/dashboard/events"));
    let metrics = http.get(url("/metrics")).send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.expect("text").contains("sluice_edge_"));
    let mut stats = SseClient::connect(&url("/v1/dashboard/events"), None).await;
    assert_eq!(stats.status, 200, "{:?}", stats.body);
    assert!(stats.next_event(T).await.is_some(), "a stats frame");
}

async fn assert_health(http: &reqwest::Client, url: impl Fn(&str) -> String) {
    for path in HEALTH {
        let r = http.get(url(path)).send().await.expect("health");
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn with_auth_and_no_admin_listen_the_operator_surface_is_not_served() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .secure()
        .args(&["--auth-secret", SECRET])
        .start()
        .await;
    let http = reqwest::Client::new();
    for path in OPERATOR {
        assert_not_found(&http, &edge.url(path)).await;
    }
    assert_health(&http, |p| edge.url(p)).await;
}

#[tokio::test]
async fn admin_listen_serves_the_operator_surface_there_and_only_there() {
    sluice_tests::init_logs();
    let http = reqwest::Client::new();
    // With auth on, and also with it off: --admin-listen moves the surface.
    for auth in [&["--auth-secret", SECRET][..], &["--insecure"][..]] {
        let edge = TestEdge::memory()
            .secure()
            .args(auth)
            .args(&["--admin-listen", "127.0.0.1:0"])
            .start()
            .await;
        assert_ne!(Some(edge.addr), edge.admin);
        assert_operator_surface(&http, |p| edge.admin_url(p)).await;
        for path in OPERATOR {
            assert_not_found(&http, &edge.url(path)).await;
        }
        assert_health(&http, |p| edge.url(p)).await;
        assert_health(&http, |p| edge.admin_url(p)).await;
        // The admin port serves no task routes.
        assert_not_found(&http, &edge.admin_url("/v1/tasks/job-1")).await;
        assert_not_found(&http, &edge.admin_url("/v1/tasks/job-1/events")).await;
        edge.stop().await;
    }
}

#[tokio::test]
async fn without_auth_the_operator_surface_stays_on_the_public_port() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory().start().await; // --insecure
    let http = reqwest::Client::new();
    assert_operator_surface(&http, |p| edge.url(p)).await;
    assert_health(&http, |p| edge.url(p)).await;
}

/// The binary: an admin address it cannot bind exits 2 with one line; with
/// auth on and no admin listener it says, once, how to enable it.
#[tokio::test]
async fn the_binary_refuses_a_busy_admin_address_and_warns_when_hidden() {
    let bin = sluice_tests::bins::bin_async("sluice-edge").await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let start = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--auth-secret", SECRET])
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("SLUICE_LOG_FORMAT")
            .env_remove("SLUICE_ADMIN_LISTEN")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("start sluice-edge")
    };
    let out = tokio::time::timeout(T, start(&["--admin-listen", &busy_addr]).wait_with_output())
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
        lines[0].contains(&format!("cannot listen on {busy_addr}")),
        "{err}"
    );
    drop(busy);

    let mut child = start(&[]);
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
            if seen.contains("--admin-listen") {
                return true;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    assert_eq!(found, Ok(true), "{seen}");
}
