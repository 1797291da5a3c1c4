//! Redis Cluster routing for Sluice's own command set.
//!
//! Every key of a task and its shard feed share one hash slot, and every
//! command Sluice sends names its keys at a known place, so routing is a
//! slot lookup: a map of slot ranges to primaries (from `CLUSTER SLOTS`) and
//! one ordinary connection pool per primary. After `MOVED`, `ASK`,
//! `TRYAGAIN`, `CLUSTERDOWN` or a node that cannot be reached, the map is
//! read again from the nodes and the command is retried, a bounded number
//! of times, but only when it cannot have run (a command that was sent and
//! lost its connection is answered with the error: the caller decides, as
//! the publisher does with idempotency keys).
//!
//! Why not the redis crate's cluster client: on this version, once a primary
//! is killed, the whole client kept repairing its connection to the dead
//! node and stalled requests for healthy slots too. Here a
//! dead primary fails only the commands for its own slots until its replica
//! is promoted.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::pool::Pool;
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Value};

use crate::direct;
use crate::error::{classify, ErrorClass};

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;
/// Attempts for a command that failed without running (redirects, a node
/// that refused the connection, a cluster still electing a primary).
const ATTEMPTS: u32 = 6;
const RETRY_BASE: Duration = Duration::from_millis(50);

/// The hash slot of a key (CRC16/XMODEM of the key or its `{hash tag}`).
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// A slot range and the URL of the primary serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary: String,
}

/// Reads `CLUSTER SLOTS` from one node; node URLs keep the scheme,
/// credentials and options of the cluster URL.
pub async fn slot_map_from(cluster_url: &str, node_url: &str) -> RedisResult<Vec<SlotRange>> {
    let mut conn = direct::node(node_url).await?;
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    let asked = redis::Client::open(node_url)?
        .get_connection_info()
        .addr()
        .to_string();
    let asked_host = asked
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .unwrap_or(asked);
    Ok(parse_slots(&reply, cluster_url, &asked_host))
}

fn parse_slots(reply: &Value, cluster_url: &str, asked_host: &str) -> Vec<SlotRange> {
    let mut out: Vec<SlotRange> = crate::resp::cluster_slots(reply)
        .into_iter()
        .filter_map(|owner| {
            // An empty or "?" endpoint means "the address you reached me on".
            let host = match owner.host.as_str() {
                "" | "?" => asked_host,
                h => h,
            };
            let primary = direct::cluster_node_url(cluster_url, host, owner.port)?;
            Some(SlotRange {
                start: owner.start,
                end: owner.end,
                primary,
            })
        })
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

/// Asks every candidate node for the slot map at once and takes the first
/// answer that has slots: a dead node then costs nothing, where asking in
/// turn would wait out its connect timeout. The other asks are aborted on
/// return. Answers the node that answered and its map.
async fn first_slot_map(
    cluster_url: &str,
    candidates: Vec<String>,
) -> RedisResult<(String, Vec<SlotRange>)> {
    let mut asks = tokio::task::JoinSet::new();
    for node in candidates {
        let url = cluster_url.to_owned();
        asks.spawn(async move {
            let r = slot_map_from(&url, &node).await;
            (node, r)
        });
    }
    let mut last_err = None;
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok((node, Ok(ranges))) if !ranges.is_empty() => return Ok((node, ranges)),
            Ok((_, Ok(_))) => {
                last_err = Some(RedisError::from((
                    ErrorKind::ClusterConnectionNotFound,
                    "a node answered CLUSTER SLOTS with no slots",
                )))
            }
            Ok((_, Err(e))) => last_err = Some(e),
            Err(e) => {
                last_err = Some(RedisError::from((
                    ErrorKind::Io,
                    "slot map query",
                    e.to_string(),
                )))
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        RedisError::from((
            ErrorKind::ClusterConnectionNotFound,
            "no cluster node to ask",
        ))
    }))
}

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Slot(u16),
    /// Keyless and node-local (PING, TIME, CLIENT ...): any primary.
    AnyPrimary,
    /// `FUNCTION LOAD/DELETE/FLUSH/RESTORE`: every primary.
    AllPrimaries,
}

fn arg_bytes(cmd: &Cmd, i: usize) -> Option<&[u8]> {
    match cmd.args_iter().nth(i)? {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    }
}

/// The target of one of Sluice's commands: where its (first) key is.
fn target_of(cmd: &Cmd) -> Target {
    let Some(name) = arg_bytes(cmd, 0).map(|n| n.to_ascii_uppercase()) else {
        return Target::AnyPrimary;
    };
    let key_at = match name.as_slice() {
        b"FUNCTION" => {
            let sub = arg_bytes(cmd, 1).map(|s| s.to_ascii_uppercase());
            return match sub.as_deref() {
                Some(b"LOAD" | b"DELETE" | b"FLUSH" | b"RESTORE") => Target::AllPrimaries,
                _ => Target::AnyPrimary,
            };
        }
        b"PING" | b"TIME" | b"CLIENT" | b"CLUSTER" | b"INFO" | b"MULTI" | b"EXEC" | b"DISCARD"
        | b"ASKING" => return Target::AnyPrimary,
        // name numkeys key...
        b"FCALL" | b"FCALL_RO" | b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" => {
            let keys = arg_bytes(cmd, 2)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            if keys == 0 {
                return Target::AnyPrimary;
            }
            3
        }
        // XINFO GROUPS key, XGROUP CREATE key ...
        b"XINFO" | b"XGROUP" => 2,
        // ... STREAMS key ...
        b"XREAD" | b"XREADGROUP" => {
            match cmd.args_iter().position(
                |a| matches!(a, redis::Arg::Simple(b) if b.eq_ignore_ascii_case(b"STREAMS")),
            ) {
                Some(i) => i + 1,
                None => return Target::AnyPrimary,
            }
        }
        _ => 1,
    };
    match arg_bytes(cmd, key_at) {
        Some(key) => Target::Slot(key_slot(key)),
        None => Target::AnyPrimary,
    }
}

/// The state a command is routed with.
#[derive(Default)]
struct Map {
    /// Bumped on every refresh; a caller that saw generation N asks for a
    /// refresh only if nobody refreshed since.
    generation: u64,
    ranges: Vec<SlotRange>,
    pools: HashMap<String, Pool>,
}

impl Map {
    fn primary_of(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .map(|r| r.primary.as_str())
    }

    fn primaries(&self) -> Vec<String> {
        let mut p: Vec<String> = self.ranges.iter().map(|r| r.primary.clone()).collect();
        p.sort();
        p.dedup();
        p
    }
}

struct Inner {
    url: String,
    seeds: Vec<String>,
    pool_size: usize,
    map: RwLock<Arc<Map>>,
    refresh: tokio::sync::Mutex<()>,
}

/// A connection pool for a Redis Cluster: cheap to clone, routes each
/// command to the primary of its slot.
#[derive(Clone)]
pub struct ClusterPool {
    inner: Arc<Inner>,
}

impl ClusterPool {
    /// `url` is a cluster URL (see [`crate::connect::CLUSTER_SCHEMES`]); `pool_size`
    /// connections at most per primary. Nothing connects until first use.
    pub fn new(url: &str, pool_size: usize) -> Result<Self, direct::ConnectError> {
        let seeds = direct::cluster_seeds(url).unwrap_or_default();
        if seeds.is_empty() {
            return Err(direct::ConnectError::NoSeeds);
        }
        for s in &seeds {
            redis::Client::open(s.as_str()).map_err(direct::ConnectError::Url)?;
        }
        Ok(ClusterPool {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                seeds,
                pool_size: pool_size.max(1),
                map: RwLock::new(Arc::new(Map::default())),
                refresh: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// A connection handle (routes per command; takes nothing up front).
    pub fn get(&self) -> ClusterConn {
        ClusterConn { pool: self.clone() }
    }

    fn map(&self) -> Arc<Map> {
        self.inner
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The URL of the primary serving `key`, from a fresh read of the slot
    /// map (used by readers that keep their own connection to that node).
    pub async fn primary_for(&self, key: &[u8]) -> RedisResult<String> {
        let seen = self.map().generation;
        self.refresh(seen).await?;
        self.map()
            .primary_of(key_slot(key))
            .map(str::to_owned)
            .ok_or_else(|| no_primary(key_slot(key)))
    }

    /// The URLs of every primary, from a fresh read of the slot map.
    pub async fn primaries(&self) -> RedisResult<Vec<String>> {
        let seen = self.map().generation;
        self.refresh(seen).await?;
        Ok(self.map().primaries())
    }

    /// Reads the slot map again unless someone did since generation `seen`.
    /// Asks the primaries it knows and the seeds.
    async fn refresh(&self, seen: u64) -> RedisResult<()> {
        let _one = self.inner.refresh.lock().await;
        let old = self.map();
        if old.generation > seen {
            return Ok(());
        }
        let mut candidates = old.primaries();
        for s in &self.inner.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        let (asked, ranges) = first_slot_map(&self.inner.url, candidates).await?;
        let pools = self.pools_for(&ranges, &old)?;
        if old.ranges != ranges {
            tracing::info!(
                primaries = pools.len(),
                asked = %direct::redact_url(&asked),
                "Redis Cluster slot map updated"
            );
        }
        let map = Map {
            generation: old.generation + 1,
            ranges,
            pools,
        };
        *self.inner.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        Ok(())
    }

    /// One pool per primary of `ranges`: the old map's where it had one.
    fn pools_for(&self, ranges: &[SlotRange], old: &Map) -> RedisResult<HashMap<String, Pool>> {
        let mut pools = HashMap::new();
        for r in ranges {
            if pools.contains_key(&r.primary) {
                continue;
            }
            let pool = match old.pools.get(&r.primary) {
                Some(p) => p.clone(),
                None => direct::single_pool(&r.primary, self.inner.pool_size).map_err(|e| {
                    RedisError::from((
                        ErrorKind::InvalidClientConfig,
                        "cluster node pool",
                        e.to_string(),
                    ))
                })?,
            };
            pools.insert(r.primary.clone(), pool);
        }
        Ok(pools)
    }

    /// The pool of the node a target goes to (refreshing the map once if
    /// it has no answer yet).
    async fn pool_for(&self, target: Target) -> RedisResult<(u64, Vec<Pool>)> {
        for _ in 0..2 {
            let map = self.map();
            let pools: Vec<Pool> = match target {
                Target::Slot(slot) => map
                    .primary_of(slot)
                    .and_then(|p| map.pools.get(p))
                    .cloned()
                    .into_iter()
                    .collect(),
                Target::AnyPrimary => map.pools.values().take(1).cloned().collect(),
                Target::AllPrimaries => map.pools.values().cloned().collect(),
            };
            if !pools.is_empty() {
                return Ok((map.generation, pools));
            }
            self.refresh(map.generation).await?;
        }
        Err(match target {
            Target::Slot(slot) => no_primary(slot),
            _ => RedisError::from((ErrorKind::ClusterConnectionNotFound, "no primaries known")),
        })
    }

    /// Runs `op` on the node(s) of `target`, retrying what cannot have run.
    async fn run<'a, T, F>(&self, target: Target, op: F) -> RedisResult<T>
    where
        F: Fn(crate::pool::Connection) -> redis::RedisFuture<'a, T> + Send + Sync,
        T: Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (generation, pools) = match self.pool_for(target).await {
                Ok(p) => p,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(cause = %e, attempt, "no route yet; retrying");
                    tokio::time::sleep(RETRY_BASE * attempt).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut result = None;
            let mut failure = None;
            for pool in pools {
                let conn = match pool.get().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Never sent: safe to retry after a refresh.
                        failure = Some((true, direct::pool_error(e)));
                        break;
                    }
                };
                match op(conn).await {
                    Ok(v) => result = Some(v),
                    Err(e) => {
                        failure = Some((classify(&e).is_resendable(), e));
                        break;
                    }
                }
            }
            let Some((safe, e)) = failure else {
                return result.ok_or_else(|| no_primary(0));
            };
            if classify(&e).needs_new_route() {
                if let Err(re) = self.refresh(generation).await {
                    tracing::debug!(cause = %re, "slot map refresh failed");
                }
            }
            if !safe || attempt >= ATTEMPTS {
                return Err(e);
            }
            tokio::time::sleep(RETRY_BASE * attempt).await;
        }
    }
}

fn no_primary(slot: u16) -> RedisError {
    RedisError::from((
        ErrorKind::ClusterConnectionNotFound,
        "no primary serves the slot",
        slot.to_string(),
    ))
}

/// A handle that routes every command it is given to the right primary.
pub struct ClusterConn {
    pool: ClusterPool,
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        let target = target_of(cmd);
        Box::pin(async move {
            self.pool
                .run(target, move |mut conn| {
                    Box::pin(async move { conn.req_packed_command(cmd).await })
                })
                .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        // A pipeline goes where its first keyed command goes (Sluice only
        // pipelines commands of one slot).
        let target = pipeline
            .cmd_iter()
            .map(target_of)
            .find(|t| matches!(t, Target::Slot(_)))
            .unwrap_or(Target::AnyPrimary);
        Box::pin(async move {
            self.pool
                .run(target, move |mut conn| {
                    Box::pin(async move {
                        let values = conn.req_packed_commands(pipeline, offset, count).await?;
                        // A pipeline that ignores errors gets them as values:
                        // a redirect there means the slot moved (all of a
                        // one-slot pipeline was refused), so surface it to be
                        // routed again.
                        let redirect = values.iter().find_map(|v| match v {
                            Value::ServerError(e) => Some(RedisError::from(e.clone()))
                                .filter(|e| classify(e) == ErrorClass::NotServed),
                            _ => None,
                        });
                        if let Some(e) = redirect {
                            return Err(e);
                        }
                        Ok(values)
                    })
                })
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from CLUSTER KEYSLOT on Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        // Sluice's keys of one shard share a slot.
        assert_eq!(
            key_slot(b"sluice:{s7}:feed"),
            key_slot(b"sluice:{s7}:t:abc:log")
        );
    }

    #[test]
    fn commands_route_by_their_key() {
        let feed = "sluice:{s3}:feed";
        let slot = key_slot(feed.as_bytes());
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("BLOCK")
            .arg(1)
            .arg("STREAMS")
            .arg(feed)
            .arg(">");
        assert_eq!(target_of(&c), Target::Slot(slot));
        let mut c = redis::cmd("FCALL");
        c.arg("sluice_publish").arg(3).arg(feed).arg("x").arg("y");
        assert_eq!(target_of(&c), Target::Slot(slot));
        let mut c = redis::cmd("XINFO");
        c.arg("GROUPS").arg(feed);
        assert_eq!(target_of(&c), Target::Slot(slot));
        let mut c = redis::cmd("HGETALL");
        c.arg(feed);
        assert_eq!(target_of(&c), Target::Slot(slot));
        let mut c = redis::cmd("FUNCTION");
        c.arg("LOAD").arg("REPLACE").arg("#!lua name=x");
        assert_eq!(target_of(&c), Target::AllPrimaries);
        assert_eq!(target_of(&redis::cmd("PING")), Target::AnyPrimary);
    }

    #[test]
    fn slot_replies_parse_with_the_cluster_urls_credentials() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![
                    Value::BulkString(b"10.0.0.1".to_vec()),
                    Value::Int(7000),
                    Value::BulkString(b"id".to_vec()),
                ]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![Value::BulkString(Vec::new()), Value::Int(7001)]),
            ]),
        ]);
        let ranges = parse_slots(&reply, "redis+cluster://u:p@a:1,b:2/0#x", "10.9.9.9");
        assert_eq!(
            ranges,
            vec![
                SlotRange {
                    start: 0,
                    end: 5460,
                    primary: "redis://u:p@10.0.0.1:7000/0#x".into()
                },
                SlotRange {
                    start: 5461,
                    end: 16383,
                    primary: "redis://u:p@10.9.9.9:7001/0#x".into()
                },
            ]
        );
    }
}
