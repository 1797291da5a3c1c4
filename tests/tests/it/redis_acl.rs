//! The minimal Redis ACLs documented in the README work: an edge runs, tails
//! and serves under the edge ACL; a producer publishes under the producer
//! ACL; neither can touch keys outside `sluice:*` nor run other commands.

use std::time::Duration;

use serde_json::json;
use sluice_broker::Publisher;
use sluice_tests::{unique_task, RedisFixture, SseClient, TestEdge};

const T: Duration = Duration::from_secs(10);

/// The edge: read task keys, tail the feeds with its consumer groups,
/// publish over HTTP (FCALL and what the function runs), load the function,
/// keep its registry entry. Kept in sync with README.md "Redis ACLs".
pub const EDGE_ACL: &str = "on >edge-pass-0123 resetkeys ~sluice:* resetchannels -@all \
    +ping +hello +auth +select +client|id +client|unblock +client|setname +unwatch \
    +hmget +hgetall +exists +xrange +xrevrange +xlen +xinfo|groups +xinfo|stream +xreadgroup +xgroup|create +xgroup|destroy \
    +fcall +function|load +xadd +hget +hset +expire +time \
    +del +set +get +pexpire +zadd +zrange +zrangebyscore +zrem +zscore +evalsha +eval";

/// A producer: FCALL and the commands the function runs.
pub const PRODUCER_ACL: &str = "on >producer-pass-0123 resetkeys ~sluice:* resetchannels -@all \
    +ping +hello +auth +select +client|setname +unwatch \
    +fcall +function|load +xadd +hget +hset +xrevrange +expire +time";

async fn setuser(redis: &RedisFixture, name: &str, rules: &str) {
    let mut conn = redis.conn().await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(name);
    for r in rules.split_whitespace() {
        cmd.arg(r);
    }
    let _: String = cmd.query_async(&mut conn).await.expect("ACL SETUSER");
}

#[tokio::test]
async fn edge_and_producer_work_under_minimal_acls() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    setuser(&redis, "sluice-edge", EDGE_ACL).await;
    setuser(&redis, "sluice-producer", PRODUCER_ACL).await;
    let edge_url = format!(
        "redis://sluice-edge:edge-pass-0123@127.0.0.1:{}",
        redis.port
    );
    let producer_url = format!(
        "redis://sluice-producer:producer-pass-0123@127.0.0.1:{}",
        redis.port
    );

    let edge = TestEdge::on(&edge_url)
        .args(&["--publish-key", "pk"])
        .start()
        .await;
    let p = Publisher::connect(&producer_url)
        .await
        .expect("producer connects and loads the function");
    let task = unique_task("acl");
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish under the producer ACL");

    let mut c =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.next_event(T).await.expect("history").seq(), Some(1));
    p.publish(&task, "progress", &json!(2))
        .await
        .expect("publish");
    assert_eq!(
        c.next_event(T)
            .await
            .expect("live via the consumer group")
            .seq(),
        Some(2)
    );
    // HTTP publish through the edge (FCALL under the edge ACL).
    let r = reqwest::Client::new()
        .post(edge.url(&format!("/v1/tasks/{task}/events")))
        .bearer_auth("pk")
        .json(&json!({"type": "progress", "data": 3}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert_eq!(c.next_event(T).await.expect("live").seq(), Some(3));
    let snap = reqwest::get(edge.url(&format!("/v1/tasks/{task}")))
        .await
        .expect("snapshot");
    assert_eq!(snap.status(), 200);

    // Neither user can do anything else.
    let mut producer = redis::Client::open(producer_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let denied: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg("other:key")
        .query_async(&mut producer)
        .await;
    assert!(denied.is_err(), "producer cannot read other keys");
    let denied: redis::RedisResult<String> =
        redis::cmd("FLUSHALL").query_async(&mut producer).await;
    assert!(denied.is_err());
    let mut edge_conn = redis::Client::open(edge_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let denied: redis::RedisResult<String> = redis::cmd("SET")
        .arg("other:key")
        .arg("x")
        .query_async(&mut edge_conn)
        .await;
    assert!(denied.is_err(), "edge cannot write outside sluice:*");
    let denied: redis::RedisResult<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("*")
        .query_async(&mut edge_conn)
        .await;
    assert!(denied.is_err());
    edge.stop().await;
}
