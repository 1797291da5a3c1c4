//! Browsers' EventSources through a reconnect storm. An EventSource that
//! gets any answer but 200 closes for good; the edge refuses event-stream
//! requests over its connect rate with a 200 whose body is only a
//! `retry:` (and a comment naming the reason), so the browser comes back.
//! Eight EventSources open at once against `--max-connect-rate 2`: every
//! one must end up receiving the events, none closed.
//!
//! Chromium opens at most six HTTP/1.1 connections per host, and an admitted
//! stream keeps its connection: eight streams to one origin cannot all be
//! open at once whatever the server does. So the eight are split over two
//! tabs on two origins of the same edge (`127.0.0.1` and `localhost`), four
//! each, each tab's EventSources same-origin (the edge has no CORS).

use std::time::Duration;

use fantoccini::wd::WindowHandle;
use fantoccini::Client;
use serde_json::{json, Value};
use sluice_tests::{unique_task, EdgeHandle, TestEdge};

use crate::browser::{js, Driver, T};

const PK: &str = "pk-event-sources-0123456789";
const PER_TAB: usize = 4;

/// Opens `PER_TAB` EventSources on `url` in the current tab, each recording
/// its opens, errors and the seqs of its `progress` events.
fn open_sources(url: &str) -> String {
    format!(
        "(function() {{
            window.__sources = [];
            for (let i = 0; i < {PER_TAB}; i++) {{
                const s = {{ opens: 0, errors: 0, seqs: [] }};
                s.es = new EventSource({url:?});
                s.es.addEventListener('open', () => s.opens++);
                s.es.addEventListener('error', () => s.errors++);
                s.es.addEventListener('progress', ev => s.seqs.push(JSON.parse(ev.data).seq));
                window.__sources.push(s);
            }}
            return window.__sources.length;
        }})()"
    )
}

const STATES: &str = "window.__sources.map(s => ({ state: s.es.readyState, opens: s.opens, \
                      errors: s.errors, seqs: s.seqs }))";

/// Every source of every tab: `{state, opens, errors, seqs}`.
async fn states(client: &Client, tabs: &[WindowHandle]) -> Vec<Value> {
    let mut all = Vec::new();
    for tab in tabs {
        client
            .switch_to_window(tab.clone())
            .await
            .expect("switch tab");
        let v = js(client, STATES).await;
        all.extend(v.as_array().cloned().expect("an array of sources"));
    }
    all
}

/// Waits until every source received exactly seqs `1..=last`; fails at once
/// if one is CLOSED (readyState 2): it would never come back.
async fn wait_all_received(client: &Client, tabs: &[WindowHandle], last: u64) -> Vec<Value> {
    let want: Vec<u64> = (1..=last).collect();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    sluice_tests::wait_until(&format!("all sources got 1..={last}"), T, || {
        let (client, tabs, want, seen) =
            (client.clone(), tabs.to_vec(), want.clone(), seen.clone());
        async move {
            let all = states(&client, &tabs).await;
            let closed: Vec<&Value> = all.iter().filter(|s| s["state"] == json!(2)).collect();
            assert!(
                closed.is_empty(),
                "EventSources closed for good (they never retry): {closed:?} of {all:#?}"
            );
            let done = all.iter().all(|s| {
                serde_json::from_value::<Vec<u64>>(s["seqs"].clone()).is_ok_and(|seqs| seqs == want)
            });
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = all;
            done
        }
    })
    .await;
    let all = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    all
}

async fn publish(http: &reqwest::Client, edge: &EdgeHandle, task: &str, n: u64) {
    let r = http
        .post(edge.url(&format!("/v1/tasks/{task}/events")))
        .bearer_auth(PK)
        .json(&json!({"type": "progress", "data": {"n": n}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 201, "publish accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_sources_survive_a_connect_rate_storm() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let edge = TestEdge::memory()
        .args(&["--max-connect-rate", "2", "--publish-key", PK])
        .start()
        .await;
    let task = unique_task("storm");
    let http = reqwest::Client::new();
    for n in 1..=3 {
        publish(&http, &edge, &task, n).await;
    }

    let driver = Driver::start().await;
    let client = driver.browser().await;
    let port = edge.addr.port();
    let mut tabs = Vec::new();
    for (i, host) in ["127.0.0.1", "localhost"].into_iter().enumerate() {
        if i > 0 {
            let tab = client.new_window(true).await.expect("new tab");
            client
                .switch_to_window(tab.handle)
                .await
                .expect("switch tab");
        }
        let origin = format!("http://{host}:{port}");
        // Any same-origin page will do: the EventSources are injected.
        client
            .goto(&format!("{origin}/healthz"))
            .await
            .expect("open a same-origin page");
        tabs.push(client.window().await.expect("tab handle"));
        let url = format!("{origin}/v1/tasks/{task}/events?after=0");
        assert_eq!(js(&client, &open_sources(&url)).await, json!(PER_TAB));
    }

    // Every source gets the history, however many times it was refused.
    wait_all_received(&client, &tabs, 3).await;
    // And stays live.
    publish(&http, &edge, &task, 4).await;
    let all = wait_all_received(&client, &tabs, 4).await;
    assert_eq!(all.len(), 2 * PER_TAB);
    let retried = all
        .iter()
        .filter(|s| s["errors"].as_u64().is_some_and(|e| e > 0))
        .count();
    let metrics = http
        .get(edge.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let refused: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"sluice_edge_connections_refused_total{reason="connect_rate"} "#)
        })
        .map_or(0.0, |v| v.trim().parse().expect("a count"));
    println!(
        "{} EventSources all live; {retried} came back after a refusal; {refused} refusals",
        all.len()
    );
    assert!(refused >= 1.0, "the storm was refused at least once");
    assert!(retried >= 1, "a refused EventSource came back: {all:#?}");
    assert_eq!(edge.state.limits.in_use(), 2 * PER_TAB);

    client.close().await.expect("close the browser");
    drop(driver);
    tokio::time::timeout(Duration::from_secs(30), edge.stop())
        .await
        .expect("the edge stops");
}
