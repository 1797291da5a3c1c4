//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by tests/setup.sh), driven over WebDriver
//! with fantoccini. Two edges share a Redis; the first runs `--demo`. The
//! page must load without console errors, list both nodes from the
//! registry, show the shards (and the feed joined for the followed task),
//! advance the demo bars on its own and advance a followed task's bar when
//! the test publishes. A screenshot is
//! saved to tests/artifacts/dashboard.png.
//!
//! Readiness is always an observable DOM state polled with a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_tests::{unique_task, TestEdge};

use crate::browser::{js, wait_js, Driver, T};

fn bar_pct(task: &str) -> String {
    format!(
        "(function(){{ const b = document.querySelector('.bar[data-task=\"{task}\"]'); \
         return b ? Number(b.dataset.pct) : null; }})()"
    )
}

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    // The demo edge runs without `--insecure`: `--demo` opens it.
    let (redis, demo) = TestEdge::redis()
        .secure()
        .args(&["--demo", "--drain-secs", "1"])
        .start()
        .await;
    let url = redis.url();
    let other = TestEdge::on(&url)
        .args(&["--drain-secs", "1"])
        .start()
        .await;
    let task = unique_task("dash");

    let driver = Driver::start().await;
    let client = driver.browser().await;
    client
        .goto(&demo.url(&format!("/?task={task}")))
        .await
        .expect("open the dashboard");
    assert_eq!(
        client.title().await.expect("title"),
        "Sluice dashboard",
        "the page loaded"
    );

    // Both nodes, from the registry, in the nodes table.
    let rows_expr = "Array.from(document.querySelectorAll('#nodes tbody tr[data-node]')).map(r => r.dataset.node)";
    let (a, b) = (demo.state.node_id.clone(), other.state.node_id.clone());
    wait_js(&client, "both nodes listed", rows_expr, |v| {
        v.as_array()
            .is_some_and(|ids| ids.contains(&json!(a)) && ids.contains(&json!(b)) && ids.len() == 2)
    })
    .await;
    wait_js(
        &client,
        "the live pill",
        "document.getElementById('conn-state').textContent",
        |v| v == "live",
    )
    .await;
    // Sixteen shards. Feeds are followed on demand: the page's followed
    // task makes the demo edge join its feed, and its shard says so.
    wait_js(
        &client,
        "shard cells",
        "document.querySelectorAll('#shards .shard').length",
        |v| v == 16,
    )
    .await;
    wait_js(
        &client,
        "the followed task's feed joined",
        "Array.from(document.querySelectorAll('#shards .shard')).filter(s => /edges [1-9]/.test(s.textContent)).length",
        |v| v.as_u64().is_some_and(|n| n >= 1),
    )
    .await;

    // The followed task's bar advances as the test publishes.
    wait_js(
        &client,
        "followed task shown as pending",
        &bar_pct(&task),
        |v| v == 0,
    )
    .await;
    let http = reqwest::Client::new();
    let publish = |pct: u32, fin: bool| {
        let http = http.clone();
        let endpoint = demo.url(&format!("/v1/tasks/{task}/events"));
        async move {
            let r = http
                .post(endpoint)
                .json(&json!({"type": if fin {"done"} else {"progress"}, "data": {"pct": pct}, "final": fin}))
                .send()
                .await
                .expect("publish");
            assert_eq!(r.status(), 201, "publish accepted");
        }
    };
    for pct in [10, 45, 80] {
        publish(pct, false).await;
        wait_js(&client, &format!("bar at {pct}%"), &bar_pct(&task), |v| {
            v == pct
        })
        .await;
    }
    let width = js(
        &client,
        &format!("document.querySelector('.bar[data-task=\"{task}\"] .fill').style.width"),
    )
    .await;
    assert_eq!(width, json!("80%"));

    // The demo bars move by themselves.
    let demo_expr = "Array.from(document.querySelectorAll('.bar')).filter(b => b.dataset.task.startsWith('demo-build-')).map(b => b.dataset.task + '@' + b.dataset.seq)";
    let first = wait_js(&client, "a demo bar", demo_expr, |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    wait_js(&client, "the demo bar advancing", demo_expr, |v| {
        v.as_array().is_some_and(|a| a.len() == 1) && *v != first
    })
    .await;
    // A subscriber shows up under top tasks.
    let mut sse =
        sluice_tests::SseClient::connect(&demo.url(&format!("/v1/tasks/{task}/events")), None)
            .await;
    assert_eq!(sse.status, 200);
    wait_js(
        &client,
        "top task listed",
        &format!("!!document.querySelector('#top-tasks tr[data-task=\"{task}\"]')"),
        |v| v == true,
    )
    .await;
    wait_js(
        &client,
        "this node's connection count",
        "document.getElementById('c-connections').textContent",
        |v| v.as_str().is_some_and(|t| t.starts_with("1 /")),
    )
    .await;

    let png = client.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(artifacts()).expect("artifacts dir");
    let shot = artifacts().join("dashboard.png");
    std::fs::write(&shot, &png).expect("write screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot saved to {}", shot.display());

    // The first screen tells a newcomer what this is and how to follow a
    // demo job; its curl line works as printed.
    let curl = wait_js(
        &client,
        "the intro's curl line",
        "document.getElementById('intro').hidden ? null : document.getElementById('try-curl').textContent",
        |v| {
            v.as_str()
                .is_some_and(|s| s.starts_with("curl -N http://") && s.contains("/v1/tasks/demo-"))
        },
    )
    .await;
    let line = curl.as_str().unwrap_or_default();
    let target = line.trim_start_matches("curl -N ");
    assert!(
        target.starts_with(&demo.url("/v1/tasks/")),
        "the page's own origin: {line}"
    );
    let js_line = js(&client, "document.getElementById('try-js').textContent").await;
    assert!(
        js_line
            .as_str()
            .is_some_and(|s| s.starts_with("new EventSource(") && s.contains(target)),
        "{js_line}"
    );
    {
        let mut follow = sluice_tests::SseClient::connect(target, None).await;
        assert_eq!(follow.status, 200, "{line}");
        assert!(
            follow.next_event(T).await.is_some(),
            "the intro's stream carries the demo job's events"
        );
    }
    // The counters count the demo's publishes.
    wait_js(
        &client,
        "the demo's publishes counted",
        "document.getElementById('c-published').textContent",
        |v| v.as_str().is_some_and(|t| t != "0" && t != "–"),
    )
    .await;

    // At phone width nothing scrolls sideways.
    client
        .set_window_size(390, 844)
        .await
        .expect("phone-sized window");
    let widths = wait_js(
        &client,
        "no sideways scrolling at 390 px",
        "({ page: document.documentElement.scrollWidth, view: window.innerWidth })",
        |v| {
            v["page"].as_u64().is_some_and(|p| {
                v["view"]
                    .as_u64()
                    .is_some_and(|w| w > 0 && w <= 400 && p <= w)
            })
        },
    )
    .await;
    let phone = client.screenshot().await.expect("phone screenshot");
    let shot = artifacts().join("dashboard-phone.png");
    std::fs::write(&shot, &phone).expect("write screenshot");
    eprintln!(
        "phone-width screenshot ({widths}) saved to {}",
        shot.display()
    );
    client
        .set_window_size(1440, 1200)
        .await
        .expect("desktop-sized window");

    publish(100, true).await;
    wait_js(&client, "bar complete", &bar_pct(&task), |v| v == 100).await;
    wait_js(
        &client,
        "closed bar",
        &format!("document.querySelector('.bar[data-task=\"{task}\"]').className"),
        |v| v == "bar closed",
    )
    .await;
    assert!(
        sse.next_event(T).await.is_some(),
        "subscriber got the events"
    );

    let console = driver.console(&client).await;
    let errors: Vec<&Value> = console
        .iter()
        .filter(|e| e["level"] == json!("SEVERE"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let frames = js(&client, "Number(document.body.dataset.frames || 0)").await;
    assert!(frames.as_u64().is_some_and(|n| n >= 3), "frames {frames}");

    // Draining ends the page's stats stream, so shutdown does not hang on
    // the open dashboard.
    tokio::time::timeout(Duration::from_secs(30), async {
        other.stop().await;
        demo.stop().await;
    })
    .await
    .expect("edges stop with a dashboard open");
    client.close().await.expect("close the browser");
    drop(driver);
}

/// The stats stream without a browser: on the memory store in demo mode it
/// carries this node, no cluster, the three demo tasks and a followed task,
/// and it ends when the node drains.
#[tokio::test]
async fn stats_stream_on_memory_store_ends_on_drain() {
    sluice_tests::init_logs();
    let edge = TestEdge::memory()
        .secure()
        .args(&["--demo", "--drain-secs", "1"])
        .start()
        .await;
    let page = reqwest::get(edge.url("/")).await.expect("page");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .is_ok_and(|c| c.starts_with("text/html")));
    assert!(page.headers().contains_key("content-security-policy"));
    assert!(page
        .text()
        .await
        .expect("body")
        .contains("Sluice dashboard"));

    let bad = reqwest::get(edge.url("/v1/dashboard/events?task=no%20spaces"))
        .await
        .expect("bad task");
    assert_eq!(bad.status(), 400);

    let mut c =
        sluice_tests::SseClient::connect(&edge.url("/v1/dashboard/events?task=followed-1"), None)
            .await;
    assert_eq!(c.status, 200);
    let frame = c.next_event(T).await.expect("stats frame");
    assert_eq!(frame.event.as_deref(), Some("stats"));
    let f = frame.json();
    assert_eq!(f["node"]["id"], json!(edge.state.node_id));
    assert_eq!(f["node"]["store"], json!("memory"));
    assert_eq!(f["node"]["address"], json!(edge.addr.to_string()));
    assert_eq!(f["cluster"], Value::Null);
    assert_eq!(f["demo"].as_array().map(Vec::len), Some(3));
    assert_eq!(f["watched"][0]["task"], json!("followed-1"));
    assert_eq!(f["watched"][0]["state"], json!("pending"));
    let next = c.next_event(T).await.expect("a second frame");
    assert!(next.json()["at_ms"].as_i64() > f["at_ms"].as_i64());

    tokio::time::timeout(Duration::from_secs(15), edge.stop())
        .await
        .expect("a node with an open dashboard stream stops");
    // The stream ended on drain (at most a frame already in flight).
    let mut ended = false;
    for _ in 0..3 {
        if c.next_frame(Duration::from_secs(5)).await.is_none() {
            ended = true;
            break;
        }
    }
    assert!(ended, "the stats stream ends when the node drains");
}
