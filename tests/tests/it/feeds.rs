//! Feeds read on demand against a real Redis: an edge follows exactly the
//! feeds its clients need (no group anywhere while idle, the group of the
//! watched task's feed while a client watches it, none again once the
//! grace has passed), and `--legacy-feeds` bridges the two key schemas
//! during a migration (events of old and new producers both arrive; the
//! edge's own publishes go to the old feed, where old edges read them).
//! The churn of joins and leaves under load, with a killed edge, is in
//! `tests/tests/chaos/feeds.rs`.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;
use sluice_broker::{Publisher, PublisherConfig};
use sluice_edge::store::FeedSink;
use sluice_shared::{keys, FeedId, TaskId, TaskKeys, DEFAULT_SHARDS};
use sluice_tests::util::metric;
use sluice_tests::{unique_task, wait_until, SseClient, TestEdge};

const T: Duration = Duration::from_secs(20);

/// The feeds (of the default 16 shards, legacy feeds included) that hold
/// the group `edge:<node>`.
async fn feeds_of(conn: &mut redis::aio::MultiplexedConnection, node: &str) -> Vec<FeedId> {
    let group = keys::group_name(node);
    let mut out = Vec::new();
    for key in keys::feed_keys(DEFAULT_SHARDS, true) {
        let exists: bool = conn.exists(&key).await.expect("exists");
        if !exists {
            continue;
        }
        let reply: redis::streams::StreamInfoGroupsReply =
            conn.xinfo_groups(&key).await.expect("xinfo groups");
        if reply.groups.iter().any(|g| g.name == group) {
            out.push(FeedId::parse(&key).expect("a feed key"));
        }
    }
    out
}

#[tokio::test]
async fn an_edge_follows_only_the_feeds_its_clients_need() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--feed-grace-secs", "1"])
        .start()
        .await;
    let node = edge.state.node_id.clone();
    let mut conn = redis.conn().await;
    let p = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("on-demand");
    p.publish(&task, "progress", &json!({"pct": 1}))
        .await
        .expect("publish");

    // Idle: no group on any feed (the reader sends no read either).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(feeds_of(&mut conn, &node).await, vec![]);
    assert_eq!(edge.state.metrics.feeds_followed.get(), 0);

    // A client: the node joins the task's feed before it reads, so the
    // next event comes live.
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));
    assert_eq!(
        feeds_of(&mut conn, &node).await,
        vec![FeedId::of(&task, DEFAULT_SHARDS)]
    );
    assert_eq!(edge.state.metrics.feeds_followed.get(), 1);
    p.publish(&task, "progress", &json!({"pct": 2}))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("live").seq(), Some(2));
    // Live deliveries are timed, history events are not.
    assert_eq!(
        metric(edge.addr, "sluice_edge_delivery_latency_seconds_count").await,
        1.0,
        "delivered from the feed, not from history"
    );

    // The client leaves: after the grace the node leaves the feed and
    // keeps nothing of it.
    drop(c);
    wait_until("the feed left", T, || {
        let mut c = conn.clone();
        let node = node.clone();
        async move { feeds_of(&mut c, &node).await.is_empty() }
    })
    .await;
    assert_eq!(edge.state.metrics.feeds_followed.get(), 0);
    assert_eq!(edge.state.metrics.feed_joins.get(), 1);
    assert_eq!(edge.state.metrics.feed_leaves.get(), 1);
    let interest = edge.state.hub.interest().expect("a Redis node's interest");
    assert!(interest.is_empty(), "nothing kept of a feed left");
    edge.stop().await;
}

#[tokio::test]
async fn legacy_feeds_bridge_both_schemas() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis()
        .args(&["--legacy-feeds", "--publish-key", "pk"])
        .start()
        .await;
    let mut conn = redis.conn().await;
    let old = Publisher::connect_with(
        &redis.url(),
        PublisherConfig {
            legacy_feeds: true,
            ..PublisherConfig::default()
        },
    )
    .await
    .expect("old-schema publisher");
    let new = Publisher::connect(&redis.url()).await.expect("publisher");
    let task = unique_task("migrating");
    let id = TaskId::parse(&task).expect("task");
    let (legacy_feed, feed) = (
        TaskKeys::legacy(&id, DEFAULT_SHARDS).feed,
        TaskKeys::new(&id, DEFAULT_SHARDS).feed,
    );
    old.publish(&task, "progress", &json!({"pct": 1}))
        .await
        .expect("publish");
    let mut c = SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));
    // An old producer (the legacy feed) and a new one (the task's feed):
    // both arrive live.
    old.publish(&task, "progress", &json!({"pct": 2}))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("old schema").seq(), Some(2));
    new.publish(&task, "progress", &json!({"pct": 3}))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("new schema").seq(), Some(3));
    // The edge's own publishes go to the legacy feed, which edges of the
    // old version read.
    let legacy_before: u64 = conn.xlen(&legacy_feed).await.expect("xlen");
    let feed_before: u64 = conn.xlen(&feed).await.expect("xlen");
    let r = reqwest::Client::new()
        .post(edge.url(&format!("/v1/tasks/{task}/events")))
        .bearer_auth("pk")
        .json(&json!({"type": "progress", "data": {"pct": 4}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert_eq!(c.next_event(T).await.expect("HTTP publish").seq(), Some(4));
    let legacy_after: u64 = conn.xlen(&legacy_feed).await.expect("xlen");
    let feed_after: u64 = conn.xlen(&feed).await.expect("xlen");
    assert_eq!(
        (legacy_after - legacy_before, feed_after - feed_before),
        (1, 0)
    );
    edge.stop().await;
}
