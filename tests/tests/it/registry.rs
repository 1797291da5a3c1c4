//! The node registry against a real Redis: a SIGKILLed edge process is
//! removed by the survivors (its consumer groups on every feed and its
//! registry entry) within the grace period plus one sweep, while a second
//! edge keeps serving; two janitors never both remove a node; a drained
//! node removes itself; `sluice status` shows nodes, feed lengths and lag.
//!
//! The killed node must be a separate process, so this file runs the real
//! binaries (`sluice-edge`, and `sluice` for `status`), built on first use
//! by `sluice_tests::bins` (`SLUICE_TEST_BIN_DIR` to use binaries built
//! elsewhere).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{json, Value};
use sluice_broker::function::FeedsFn;
use sluice_broker::nodes::NodeInfo;
use sluice_broker::Publisher;
use sluice_edge::registry::Registry;
use sluice_shared::keys;
use sluice_tests::{unique_task, wait_until, RedisFixture, SseClient, TestEdge};

const GRACE_SECS: u64 = 2;
const T: Duration = Duration::from_secs(20);

fn bin(name: &str) -> PathBuf {
    sluice_tests::bins::bin(name)
}

async fn binaries_ready() {
    tokio::task::spawn_blocking(|| bin("sluice"))
        .await
        .expect("build task");
}

/// `sluice status --json` against `url`.
async fn status_json(url: &str) -> Value {
    let out = tokio::process::Command::new(bin("sluice"))
        .args(["--redis-url", url, "status", "--json", "--grace-secs"])
        .arg(GRACE_SECS.to_string())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run sluice status");
    assert!(
        out.status.success(),
        "sluice status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

async fn status_text(url: &str) -> String {
    let out = tokio::process::Command::new(bin("sluice"))
        .args(["--redis-url", url, "status"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run sluice status");
    assert!(out.status.success(), "sluice status failed");
    String::from_utf8(out.stdout).expect("utf8")
}

fn node_ids(status: &Value) -> Vec<String> {
    status["nodes"]
        .as_array()
        .expect("nodes array")
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect()
}

/// Every feed of the default 16 shards, legacy feeds included.
const ALL_FEEDS: u32 = 16 * (keys::FEEDS_PER_SHARD + 1);

/// Feeds (of the default 16 shards, legacy feeds included) that have the
/// group `edge:<node>`.
async fn feeds_with_group(conn: &mut redis::aio::MultiplexedConnection, node: &str) -> u32 {
    let group = keys::group_name(node);
    sluice_broker::nodes::feed_stats(conn, sluice_shared::DEFAULT_SHARDS)
        .await
        .expect("feed stats")
        .iter()
        .flat_map(|s| &s.groups)
        .filter(|g| g.group == group)
        .map(|g| g.feeds)
        .sum()
}

/// An edge node in its own process.
struct EdgeProcess {
    child: tokio::process::Child,
}

impl EdgeProcess {
    fn start(redis_url: &str, node_id: &str) -> Self {
        let child = tokio::process::Command::new(bin("sluice-edge"))
            .args(["--listen", "127.0.0.1:0", "--insecure"])
            .args(["--redis-url", redis_url, "--node-id", node_id])
            .args(["--node-grace-secs", &GRACE_SECS.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start sluice-edge");
        EdgeProcess { child }
    }

    /// SIGKILL: no drain, no cleanup of its own.
    async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL the edge");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_removed_by_survivors() {
    sluice_tests::init_logs();
    binaries_ready().await;
    let redis = RedisFixture::start().await;
    let url = redis.url();
    let grace = GRACE_SECS.to_string();
    let survivor = TestEdge::on(&url)
        .args(&["--node-grace-secs", &grace])
        .start()
        .await;
    let victim_id = unique_task("victim");
    let mut victim = EdgeProcess::start(&url, &victim_id);
    let conn = redis.conn().await;

    // The victim registers and serves.
    let victim_entry = |s: &Value| {
        s["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["id"] == json!(victim_id)))
            .cloned()
    };
    wait_until("victim registered with its address", T, || {
        let url = url.clone();
        let id = victim_id.clone();
        async move {
            let s = status_json(&url).await;
            s["nodes"].as_array().is_some_and(|ns| {
                ns.iter().any(|n| {
                    n["id"] == json!(id) && n["address"].as_str().is_some_and(|a| !a.is_empty())
                })
            })
        }
    })
    .await;
    let victim_addr = victim_entry(&status_json(&url).await).expect("victim")["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let ready = reqwest::get(format!("http://{victim_addr}/readyz"))
        .await
        .expect("victim answers");
    assert_eq!(ready.status(), 200, "victim is ready");
    // Feeds are followed on demand: a client of the victim makes it join
    // its task's feed.
    let p = Publisher::connect(&url).await.expect("publisher");
    let watched = unique_task("victim-watched");
    p.publish(&watched, "progress", &json!({"pct": 0}))
        .await
        .expect("publish");
    let mut watcher = SseClient::connect(
        &format!("http://{victim_addr}/v1/tasks/{watched}/events"),
        None,
    )
    .await;
    assert_eq!(watcher.status, 200);
    assert_eq!(
        watcher.next_event(T).await.expect("snapshot").seq(),
        Some(1)
    );
    wait_until("victim follows its client's feed", T, || {
        let mut c = conn.clone();
        let id = victim_id.clone();
        async move { feeds_with_group(&mut c, &id).await == 1 }
    })
    .await;
    let status = status_json(&url).await;
    let ids = node_ids(&status);
    assert!(
        ids.contains(&victim_id) && ids.contains(&survivor.state.node_id),
        "{ids:?}"
    );
    let victim_entry = victim_entry(&status).expect("victim in status");
    assert_eq!(victim_entry["version"], json!(env!("CARGO_PKG_VERSION")));
    assert_eq!(victim_entry["stale"], json!(false));
    assert_eq!(victim_entry["lag"]["feeds"], json!(1));
    assert_eq!(status["shards"].as_array().map(Vec::len), Some(16));
    let text = status_text(&url).await;
    assert!(
        text.contains(&victim_id) && text.contains(&victim_addr),
        "{text}"
    );

    // SIGKILL: the victim cannot clean up after itself.
    victim.kill().await;
    let killed_at = Instant::now();
    let victim_key = keys::node_key(&victim_id);
    wait_until(
        "survivor removed the dead node",
        Duration::from_secs(60),
        || {
            let mut c = conn.clone();
            let id = victim_id.clone();
            let key = victim_key.clone();
            async move {
                let in_set: Option<f64> = c.zscore(keys::NODES_KEY, &id).await.unwrap_or(Some(0.0));
                let hash: bool = c.exists(&key).await.unwrap_or(true);
                in_set.is_none() && !hash && feeds_with_group(&mut c, &id).await == 0
            }
        },
    )
    .await;
    let took = killed_at.elapsed();
    eprintln!(
        "dead node removed {:.2}s after SIGKILL (grace {GRACE_SECS}s, sweep every {}s)",
        took.as_secs_f64(),
        sluice_edge::registry::BEAT_EVERY.as_secs()
    );
    // Grace + one sweep + the heartbeat interval before the kill, with
    // slack for a loaded 2-core machine.
    let bound = Duration::from_secs(GRACE_SECS)
        + 2 * sluice_edge::registry::BEAT_EVERY
        + Duration::from_secs(5);
    assert!(took <= bound, "removal took {took:?}, bound {bound:?}");
    let ids = node_ids(&status_json(&url).await);
    assert!(
        !ids.contains(&victim_id),
        "status still lists the dead node: {ids:?}"
    );
    assert!(ids.contains(&survivor.state.node_id), "{ids:?}");
    assert!(!status_text(&url).await.contains(&victim_id));

    // The survivor still delivers (joining the task's feed for its new
    // client).
    let task = unique_task("after-reap");
    p.publish(&task, "progress", &json!({"pct": 1}))
        .await
        .expect("publish");
    let mut c = SseClient::connect(&survivor.url(&format!("/v1/tasks/{task}/events")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));
    p.publish(&task, "progress", &json!({"pct": 2}))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("live").seq(), Some(2));
    survivor.stop().await;
}

/// A dead node as a crashed edge that followed every feed leaves it: a
/// stale registry entry and a group on every feed, legacy feeds included.
async fn plant_dead_node(conn: &mut redis::aio::MultiplexedConnection, id: &str, seen_ms: i64) {
    for shard in 0..sluice_shared::DEFAULT_SHARDS {
        let feeds: Vec<String> = keys::FeedId::of_shard(shard, true)
            .map(|f| f.key())
            .collect();
        let _: i64 = FeedsFn::Join
            .query(conn, &feeds, Some(&keys::group_name(id)))
            .await
            .expect("create groups");
    }
    let info = NodeInfo {
        id: id.to_owned(),
        address: "127.0.0.1:1".into(),
        last_seen_ms: seen_ms,
        ..NodeInfo::default()
    };
    let _: () = redis::cmd("HSET")
        .arg(keys::node_key(id))
        .arg(info.to_fields())
        .query_async(conn)
        .await
        .expect("hset");
    let _: () = conn.zadd(keys::NODES_KEY, id, seen_ms).await.expect("zadd");
}

fn registry(url: &str, id: &str) -> Registry {
    let pool = sluice_broker::connect::pool(url, 2).expect("pool");
    Registry::new(
        pool,
        id,
        sluice_shared::DEFAULT_SHARDS,
        Duration::from_secs(GRACE_SECS),
    )
}

#[tokio::test]
async fn janitors_never_both_remove_a_node() {
    sluice_tests::init_logs();
    let redis = RedisFixture::start().await;
    let url = redis.url();
    let mut conn = redis.conn().await;
    let j = registry(&url, "janitor-0");
    let now = j.server_time().await.expect("Redis time");
    plant_dead_node(&mut conn, "ghost", now - 60_000).await;
    plant_dead_node(&mut conn, "alive", now).await;

    // Another janitor holds the ghost: this one leaves it alone.
    let _: () = conn
        .set(keys::node_reap_lock_key("ghost"), "someone-else")
        .await
        .expect("set lock");
    assert!(j.sweep(now).await.expect("sweep").is_empty());
    assert_eq!(feeds_with_group(&mut conn, "ghost").await, ALL_FEEDS);
    let _: () = conn
        .del(keys::node_reap_lock_key("ghost"))
        .await
        .expect("del lock");

    // Eight janitors sweep at once: exactly one removes the ghost.
    let janitors: Vec<Registry> = (0..8)
        .map(|i| registry(&url, &format!("janitor-{i}")))
        .collect();
    let results = futures_util::future::join_all(janitors.iter().map(|j| j.sweep(now))).await;
    let reaped: Vec<String> = results
        .into_iter()
        .flat_map(|r| r.expect("sweep"))
        .collect();
    assert_eq!(reaped, vec!["ghost".to_owned()]);
    assert_eq!(feeds_with_group(&mut conn, "ghost").await, 0);
    let score: Option<f64> = conn.zscore(keys::NODES_KEY, "ghost").await.expect("zscore");
    assert!(score.is_none());
    let hash: bool = conn.exists(keys::node_key("ghost")).await.expect("exists");
    assert!(!hash);
    let lock: bool = conn
        .exists(keys::node_reap_lock_key("ghost"))
        .await
        .expect("exists");
    assert!(!lock, "the janitor released its lock");

    // The live node and a janitor's own stale entry are left alone.
    assert_eq!(feeds_with_group(&mut conn, "alive").await, ALL_FEEDS);
    plant_dead_node(&mut conn, "janitor-0", now - 60_000).await;
    assert!(janitors[0].sweep(now).await.expect("sweep").is_empty());
    assert_eq!(feeds_with_group(&mut conn, "janitor-0").await, ALL_FEEDS);
}

#[tokio::test]
async fn drained_node_removes_itself() {
    sluice_tests::init_logs();
    let (redis, edge) = TestEdge::redis().args(&["--drain-secs", "0"]).start().await;
    let id = edge.state.node_id.clone();
    let mut conn = redis.conn().await;
    wait_until("node registered", T, || {
        let mut c = conn.clone();
        let id = id.clone();
        async move {
            let s: Option<f64> = c.zscore(keys::NODES_KEY, &id).await.unwrap_or(None);
            s.is_some()
        }
    })
    .await;
    let fields: std::collections::HashMap<String, String> =
        conn.hgetall(keys::node_key(&id)).await.expect("hgetall");
    assert_eq!(fields.get("id"), Some(&id));
    assert_eq!(fields.get("address"), Some(&edge.addr.to_string()));
    assert!(fields.contains_key("connections") && fields.contains_key("last_seen_ms"));
    edge.stop().await;
    let s: Option<f64> = conn.zscore(keys::NODES_KEY, &id).await.expect("zscore");
    assert!(s.is_none(), "a drained node leaves the registry");
    let hash: bool = conn.exists(keys::node_key(&id)).await.expect("exists");
    assert!(!hash);
    assert_eq!(feeds_with_group(&mut conn, &id).await, 0);
}

#[tokio::test]
async fn status_shows_feed_length_and_lag() {
    sluice_tests::init_logs();
    binaries_ready().await;
    let redis = RedisFixture::start().await;
    let url = redis.url();
    let mut conn = redis.conn().await;
    // A registered node that reads nothing: its lag is what was published
    // after its group was created.
    let now = sluice_edge::registry::now_ms();
    plant_dead_node(&mut conn, "lagger", now + 3_600_000).await;
    let p = Publisher::connect(&url).await.expect("publisher");
    let task = unique_task("lagging");
    for i in 0..5 {
        p.publish(&task, "progress", &json!({ "pct": i }))
            .await
            .expect("publish");
    }
    let shard = sluice_shared::shard_of(&task, sluice_shared::DEFAULT_SHARDS) as usize;

    let s = status_json(&url).await;
    assert_eq!(node_ids(&s), vec!["lagger".to_owned()]);
    assert_eq!(s["nodes"][0]["lag"]["total"], json!(5));
    assert_eq!(s["nodes"][0]["lag"]["feeds"], json!(ALL_FEEDS));
    assert_eq!(
        s["nodes"][0]["lag"]["shards"].as_array().map(Vec::len),
        Some(16)
    );
    assert_eq!(s["nodes"][0]["address"], json!("127.0.0.1:1"));
    let sh = &s["shards"][shard];
    assert_eq!(sh["length"], json!(5));
    assert_eq!(sh["groups"][0]["group"], json!("edge:lagger"));
    assert_eq!(sh["groups"][0]["lag"], json!(5));
    assert_eq!(s["orphan_groups"], json!([]));

    let text = status_text(&url).await;
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("{shard} ")))
        .unwrap_or_else(|| panic!("shard row in\n{text}"));
    assert!(row.contains("lagger=65/5"), "{row}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("lagger ") && l.contains("127.0.0.1:1")),
        "{text}"
    );

    // A group without a registry entry is reported as an orphan.
    let _: () = conn.zrem(keys::NODES_KEY, "lagger").await.expect("zrem");
    let s = status_json(&url).await;
    assert!(node_ids(&s).is_empty());
    assert_eq!(s["orphan_groups"], json!(["edge:lagger"]));
}
