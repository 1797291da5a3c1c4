//! The node registry, read side: what edge nodes report about themselves
//! (written by the edge's `registry` module) and what the shard feeds say
//! about each node's consumer group. Shared by `sluice status` and the
//! edge's dashboard, so both show the same numbers.
//!
//! Keys (see `sluice_shared::keys`):
//! - `sluice:nodes`: sorted set, member = node id, score = last heartbeat
//!   (ms since the epoch). The score is the truth about liveness.
//! - `sluice:node:<id>`: hash of the node's last report ([`NodeInfo`]).
//!
//! Lag comes from `XINFO GROUPS` on every shard feed (`lag` of the group
//! `edge:<id>`; Redis reports it as unknown after some trims and deletions).

use std::collections::{BTreeMap, HashMap};

use redis::aio::ConnectionLike;
use redis::Value;
use serde::{Deserialize, Serialize};
use sluice_shared::keys;

use crate::function::FeedsFn;

/// What one node last reported in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// The address it serves on (as seen by the node itself).
    pub address: String,
    pub version: String,
    pub shards: u32,
    pub started_ms: i64,
    /// Last heartbeat, ms since the epoch (the registry's score).
    pub last_seen_ms: i64,
    pub connections: u64,
    pub max_connections: u64,
    pub subscriptions: u64,
    pub tasks: u64,
    pub delivered: u64,
    pub feed_events: u64,
    pub published: u64,
    pub delivered_per_sec: f64,
    pub feed_events_per_sec: f64,
    pub published_per_sec: f64,
    pub draining: bool,
}

impl NodeInfo {
    /// The hash fields of the registry entry (`last_seen_ms` included, so
    /// the hash alone is readable too).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("address", self.address.clone()),
            ("version", self.version.clone()),
            ("shards", self.shards.to_string()),
            ("started_ms", self.started_ms.to_string()),
            ("last_seen_ms", self.last_seen_ms.to_string()),
            ("connections", self.connections.to_string()),
            ("max_connections", self.max_connections.to_string()),
            ("subscriptions", self.subscriptions.to_string()),
            ("tasks", self.tasks.to_string()),
            ("delivered", self.delivered.to_string()),
            ("feed_events", self.feed_events.to_string()),
            ("published", self.published.to_string()),
            (
                "delivered_per_sec",
                format!("{:.2}", self.delivered_per_sec),
            ),
            (
                "feed_events_per_sec",
                format!("{:.2}", self.feed_events_per_sec),
            ),
            (
                "published_per_sec",
                format!("{:.2}", self.published_per_sec),
            ),
            ("draining", u8::from(self.draining).to_string()),
        ]
    }

    /// Parses a registry hash. Missing or malformed fields read as zero /
    /// empty: the registry is advisory and never worth failing over.
    pub fn from_fields(id: &str, f: &HashMap<String, String>, last_seen_ms: i64) -> Self {
        fn num<T: std::str::FromStr + Default>(f: &HashMap<String, String>, k: &str) -> T {
            f.get(k).and_then(|v| v.parse().ok()).unwrap_or_default()
        }
        let text = |k: &str| f.get(k).cloned().unwrap_or_default();
        NodeInfo {
            id: id.to_owned(),
            address: text("address"),
            version: text("version"),
            shards: num(f, "shards"),
            started_ms: num(f, "started_ms"),
            last_seen_ms,
            connections: num(f, "connections"),
            max_connections: num(f, "max_connections"),
            subscriptions: num(f, "subscriptions"),
            tasks: num(f, "tasks"),
            delivered: num(f, "delivered"),
            feed_events: num(f, "feed_events"),
            published: num(f, "published"),
            delivered_per_sec: num(f, "delivered_per_sec"),
            feed_events_per_sec: num(f, "feed_events_per_sec"),
            published_per_sec: num(f, "published_per_sec"),
            draining: f.get("draining").map(|v| v == "1").unwrap_or(false),
        }
    }
}

/// One consumer group across the feeds of a shard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupInfo {
    pub group: String,
    /// The node id when the group is an edge's (`edge:<id>`).
    pub node: Option<String>,
    /// Feeds of the shard where the group exists (for an edge: the feeds it
    /// follows there).
    pub feeds: u32,
    /// Entries of those feeds the group has not read, where Redis knows.
    pub lag: u64,
    /// Feeds where Redis cannot tell the group's lag (after some trims).
    pub unknown: u32,
}

/// One shard (hash tag): its feeds' total length and who follows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardStats {
    pub shard: u32,
    /// Feeds of the shard that exist (were written to or followed).
    pub feeds: u32,
    pub length: u64,
    pub groups: Vec<GroupInfo>,
}

impl ShardStats {
    /// The largest lag of any edge group on this shard.
    pub fn max_lag(&self) -> Option<u64> {
        self.groups
            .iter()
            .filter(|g| g.node.is_some())
            .map(|g| g.lag)
            .max()
    }
}

/// A node's feeds and lag over the shards, as Redis counts them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeLag {
    pub total: u64,
    /// The largest lag on one shard.
    pub max: u64,
    /// Feeds the node follows (has a group on).
    pub feeds: u32,
    /// Feeds where Redis reports the lag as unknown.
    pub unknown: u32,
    /// Lag per shard where the node follows a feed: `(shard, feeds, lag)`.
    pub shards: Vec<(u32, u32, u64)>,
}

/// A registered node with its age and lag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub info: NodeInfo,
    pub uptime_secs: u64,
    pub last_seen_ago_ms: u64,
    /// Not heard from for longer than the grace period: a janitor will
    /// remove it (and its groups) at its next sweep.
    pub stale: bool,
    pub lag: NodeLag,
}

/// Everything `sluice status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub at_ms: i64,
    pub nodes: Vec<NodeStatus>,
    pub shards: Vec<ShardStats>,
    /// Edge groups on the feeds whose node is not in the registry (a node
    /// that died before its first heartbeat, or one being removed).
    pub orphan_groups: Vec<String>,
}

/// The Redis server's clock, ms since the epoch. Heartbeats are scored
/// and judged by it, so clock skew between edge hosts cannot make a
/// janitor remove a live node.
pub async fn server_time_ms<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<i64> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}

/// Ids and last-seen scores of every registered node, oldest first.
pub async fn node_ids<C: ConnectionLike + Send>(
    conn: &mut C,
) -> redis::RedisResult<Vec<(String, i64)>> {
    let raw: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(keys::NODES_KEY)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(raw.into_iter().map(|(id, s)| (id, s as i64)).collect())
}

/// Every registered node's last report, oldest heartbeat first.
/// ([`collect`] sorts them by id for display.)
pub async fn read_nodes<C: ConnectionLike + Send>(
    conn: &mut C,
) -> redis::RedisResult<Vec<NodeInfo>> {
    let ids = node_ids(conn).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // One command per key (not a pipeline): on a Redis Cluster the keys
    // live in different slots.
    let mut hashes: Vec<HashMap<String, String>> = Vec::with_capacity(ids.len());
    for (id, _) in &ids {
        hashes.push(
            redis::cmd("HGETALL")
                .arg(keys::node_key(id))
                .query_async(conn)
                .await?,
        );
    }
    Ok(ids
        .iter()
        .zip(hashes.iter())
        .map(|((id, seen), h)| NodeInfo::from_fields(id, h, *seen))
        .collect())
}

/// Every shard's feeds, legacy feed included: one `sluice_feeds_stats`
/// call per shard (its keys share a slot).
pub async fn feed_stats<C: ConnectionLike + Send>(
    conn: &mut C,
    shards: u32,
) -> redis::RedisResult<Vec<ShardStats>> {
    let mut out = Vec::with_capacity(shards as usize);
    for shard in 0..shards.max(1) {
        let feeds: Vec<String> = keys::FeedId::of_shard(shard, true)
            .map(|f| f.key())
            .collect();
        let reply: Value = FeedsFn::Stats.query(conn, &feeds, None).await?;
        out.push(parse_shard_stats(shard, &reply));
    }
    Ok(out)
}

/// A `sluice_feeds_stats` reply (pure; malformed parts read as zero).
pub fn parse_shard_stats(shard: u32, reply: &Value) -> ShardStats {
    let items: &[Value] = match reply {
        Value::Array(items) => items,
        _ => &[],
    };
    let int = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let groups = items
        .iter()
        .skip(2)
        .filter_map(|g| match g {
            Value::Array(f) => {
                let name = match f.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => return None,
                };
                Some(GroupInfo {
                    node: keys::group_node(&name).map(str::to_owned),
                    feeds: int(f.get(1)) as u32,
                    lag: int(f.get(2)),
                    unknown: int(f.get(3)) as u32,
                    group: name,
                })
            }
            _ => None,
        })
        .collect();
    ShardStats {
        shard,
        length: int(items.first()),
        feeds: int(items.get(1)) as u32,
        groups,
    }
}

/// Reads the registry and the feeds into one view, ages measured on the
/// Redis server's clock. `grace` decides which nodes count as stale.
pub async fn collect<C: ConnectionLike + Send>(
    conn: &mut C,
    shards: u32,
    grace: std::time::Duration,
) -> redis::RedisResult<ClusterStatus> {
    let now_ms = server_time_ms(conn).await?;
    let infos = read_nodes(conn).await?;
    let shard_stats = feed_stats(conn, shards).await?;
    Ok(assemble(infos, shard_stats, grace, now_ms))
}

/// Joins registry entries with the groups found on the feeds (pure).
pub fn assemble(
    infos: Vec<NodeInfo>,
    shards: Vec<ShardStats>,
    grace: std::time::Duration,
    now_ms: i64,
) -> ClusterStatus {
    let mut lags: BTreeMap<&str, NodeLag> = BTreeMap::new();
    for s in &shards {
        for g in &s.groups {
            let Some(node) = g.node.as_deref() else {
                continue;
            };
            let l = lags.entry(node).or_default();
            l.feeds += g.feeds;
            l.unknown += g.unknown;
            l.total += g.lag;
            l.max = l.max.max(g.lag);
            l.shards.push((s.shard, g.feeds, g.lag));
        }
    }
    let registered: std::collections::HashSet<&str> = infos.iter().map(|i| i.id.as_str()).collect();
    let mut orphan_groups: Vec<String> = lags
        .keys()
        .filter(|n| !registered.contains(*n))
        .map(|n| keys::group_name(n))
        .collect();
    orphan_groups.sort();
    let grace_ms = grace.as_millis() as i64;
    let mut nodes: Vec<NodeStatus> = infos
        .iter()
        .map(|info| {
            let ago = now_ms.saturating_sub(info.last_seen_ms).max(0);
            NodeStatus {
                lag: lags.get(info.id.as_str()).cloned().unwrap_or_default(),
                uptime_secs: (now_ms.saturating_sub(info.started_ms).max(0) / 1000) as u64,
                last_seen_ago_ms: ago as u64,
                stale: ago > grace_ms,
                info: info.clone(),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.info.id.cmp(&b.info.id));
    ClusterStatus {
        at_ms: now_ms,
        nodes,
        shards,
        orphan_groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn node_info_round_trips_through_hash_fields() {
        let n = NodeInfo {
            id: "a".into(),
            address: "10.0.0.1:8080".into(),
            version: "0.1.0".into(),
            shards: 16,
            started_ms: 5,
            last_seen_ms: 9,
            connections: 3,
            max_connections: 10,
            subscriptions: 4,
            tasks: 2,
            delivered: 100,
            feed_events: 50,
            published: 7,
            delivered_per_sec: 1.5,
            feed_events_per_sec: 0.25,
            published_per_sec: 0.0,
            draining: true,
        };
        let map: HashMap<String, String> = n
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(NodeInfo::from_fields("a", &map, 9), n);
        let partial = NodeInfo::from_fields("b", &HashMap::new(), 1);
        assert_eq!(partial.id, "b");
        assert_eq!(partial.connections, 0);
    }

    #[test]
    fn parses_shard_stats_and_joins_lag() {
        let group = |name: &str, feeds: i64, lag: i64, unknown: i64| {
            Value::Array(vec![
                bulk(name),
                Value::Int(feeds),
                Value::Int(lag),
                Value::Int(unknown),
            ])
        };
        let reply = Value::Array(vec![
            Value::Int(10),
            Value::Int(4),
            group("edge:a", 3, 3, 0),
            group("edge:ghost", 1, 0, 1),
            group("reporting", 1, 1, 0),
            Value::Int(7),
        ]);
        let shard = parse_shard_stats(5, &reply);
        assert_eq!((shard.shard, shard.length, shard.feeds), (5, 10, 4));
        let groups = &shard.groups;
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].node.as_deref(), Some("a"));
        assert_eq!((groups[0].feeds, groups[0].lag), (3, 3));
        assert_eq!(groups[1].unknown, 1);
        assert_eq!(groups[2].node, None);
        assert_eq!(shard.max_lag(), Some(3));
        assert_eq!(parse_shard_stats(1, &Value::Nil).groups, vec![]);
        let info = NodeInfo {
            id: "a".into(),
            started_ms: 0,
            last_seen_ms: 1_000,
            ..NodeInfo::default()
        };
        let s = assemble(
            vec![info],
            vec![shard],
            std::time::Duration::from_secs(2),
            4_000,
        );
        assert_eq!(s.nodes[0].lag.total, 3);
        assert_eq!(s.nodes[0].lag.feeds, 3);
        assert_eq!(s.nodes[0].lag.shards, vec![(5, 3, 3)]);
        assert!(s.nodes[0].stale, "3 s without a heartbeat > 2 s grace");
        assert_eq!(s.nodes[0].uptime_secs, 4);
        assert_eq!(s.orphan_groups, vec!["edge:ghost".to_owned()]);
    }
}
