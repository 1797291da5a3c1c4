//! `/metrics` after a known workload: names, units and values.

use std::time::Duration;

use serde_json::json;
use sluice_tests::{unique_task, SseClient, TestEdge};

const T: Duration = Duration::from_secs(10);

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("series {series} missing in:\n{text}"))
}

#[tokio::test]
async fn metrics_after_a_known_workload() {
    sluice_tests::init_logs();
    let (_redis, edge) = TestEdge::redis()
        .args(&["--publish-key", "pk", "--max-connections", "1"])
        .start()
        .await;
    let client = reqwest::Client::new();
    let task = unique_task("metrics");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    client
        .post(&url)
        .bearer_auth("pk")
        .json(&json!({"type": "p", "data": 0}))
        .send()
        .await
        .expect("post");
    let mut c = SseClient::connect(&url, None).await;
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));
    for i in 1..=4 {
        let r = client
            .post(&url)
            .bearer_auth("pk")
            .json(&json!({"type": "p", "data": i}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    for s in 2..=5 {
        assert_eq!(c.next_event(T).await.expect("live").seq(), Some(s));
    }
    // Over the limit of 1: refused.
    assert_eq!(SseClient::connect(&url, None).await.status, 503);

    let text = client
        .get(edge.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert_eq!(value(&text, "sluice_edge_events_published_total"), 5.0);
    assert_eq!(
        value(
            &text,
            r#"sluice_edge_events_delivered_total{transport="Sse"}"#
        ),
        5.0
    );
    assert_eq!(
        value(&text, r#"sluice_edge_connections{transport="Sse"}"#),
        1.0
    );
    assert_eq!(value(&text, "sluice_edge_subscriptions"), 1.0);
    assert_eq!(value(&text, "sluice_edge_tasks_subscribed"), 1.0);
    assert_eq!(
        value(
            &text,
            r#"sluice_edge_connections_refused_total{reason="ConnectionLimit"}"#
        ),
        1.0
    );
    assert!(value(&text, "sluice_edge_feed_events_total") >= 4.0);
    assert_eq!(
        value(&text, "sluice_edge_delivery_latency_seconds_count"),
        4.0,
        "live events timed"
    );
    assert!(
        value(
            &text,
            r#"sluice_edge_redis_command_duration_seconds_count{op="Publish"}"#
        ) >= 5.0
    );
    assert!(
        value(
            &text,
            r#"sluice_edge_redis_command_duration_seconds_count{op="Snapshot"}"#
        ) >= 1.0
    );
    assert!(
        text.contains("# UNIT sluice_edge_delivery_latency_seconds seconds"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE sluice_edge_redis_errors counter"),
        "{text}"
    );
    // Feed lag per shard, reported by the reader's periodic check.
    sluice_tests::wait_until("feed lag reported", Duration::from_secs(15), || {
        let client = client.clone();
        let url = edge.url("/metrics");
        async move {
            let t = client.get(url).send().await.ok();
            match t {
                Some(r) => r
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("sluice_edge_feed_lag{shard="),
                None => false,
            }
        }
    })
    .await;
    assert!(!text.contains(&task), "no task id in metric labels");
}
