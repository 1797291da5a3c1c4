//! The node registry and its janitor (Redis store only).
//!
//! Every [`BEAT_EVERY`] the node writes what it holds into
//! `sluice:node:<id>` (a hash, [`NodeInfo`]) and its last-seen time into the
//! sorted set `sluice:nodes`, both on the Redis server's clock (`TIME`), so
//! clock skew between edge hosts never makes a live node look dead. In the
//! same tick it sweeps: every node whose
//! last heartbeat is older than the grace period (`--node-grace-secs`) is
//! dead, and this node removes its consumer groups (`edge:<id>` on every
//! feed of every shard, legacy feeds included) and its registry entries.
//!
//! Janitors never fight: a janitor first takes `sluice:node:<id>:reaping`
//! with `SET NX PX` (other janitors skip that node), re-checks under the lock
//! that the node is still stale, destroys its groups (idempotent), deletes
//! its hash, and removes it from the set only if its score is still stale (a
//! one-key script, so it is atomic and Redis Cluster safe). A node that was
//! only cut off and comes back finds its groups gone, recreates them and
//! resyncs its subscriptions from the task logs (the feed reader's NOGROUP
//! path), and its next heartbeat registers it again: nothing is lost.
//!
//! On drain the node removes its own entry. The registry uses its own small
//! pool, so a busy store pool never delays a heartbeat.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::connect;
use sluice_broker::connect::RedisPool as Pool;
use sluice_broker::function::FeedsFn;
use sluice_broker::nodes::{self, ClusterStatus, NodeInfo};
use sluice_shared::keys;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::cluster::now_ms;
use crate::lifecycle::Tasks;
use crate::status::NodeStatus;
use crate::store::StoreError;

/// Time between heartbeats (and sweeps).
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// Most dead nodes one sweep removes.
pub const MAX_REAP_PER_SWEEP: usize = 32;
/// How long a janitor's claim on a dead node lasts if it dies mid-way.
pub const REAP_LOCK_TTL: Duration = Duration::from_secs(30);
/// Connections of the registry's own pool.
const POOL_SIZE: usize = 2;

/// Removes a member from the registry set only if its score is still at or
/// below the cutoff (it did not heartbeat since it was judged dead).
const ZREM_IF_STALE: &str = r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0";

/// Deletes a lock only if we still own it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The address to advertise: the bound address, with the host name in
/// place of an unspecified IP (`0.0.0.0`).
pub fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        if let Ok(host) = std::env::var("HOSTNAME") {
            if !host.is_empty() {
                return format!("{host}:{}", addr.port());
            }
        }
    }
    addr.to_string()
}

/// On the Redis store (`redis_url`), starts the registry on `tasks` until
/// `stop` fires; nodes on the memory store have no registry.
pub fn spawn(
    tasks: &Tasks,
    status: &Arc<NodeStatus>,
    redis_url: Option<&str>,
    grace: Duration,
    stop: CancellationToken,
) -> Result<(), StoreError> {
    let Some(url) = redis_url else {
        return Ok(());
    };
    if status.store.kind() != "redis" {
        return Ok(());
    }
    let pool = connect::pool(url, POOL_SIZE)?;
    let registry = Registry::new(pool, &status.node_id, status.shards, grace);
    let span = tracing::info_span!("registry", node = %status.node_id);
    tasks.spawn(registry.run(status.clone(), stop).instrument(span));
    Ok(())
}

/// One node's handle on the registry: heartbeat, sweep, deregister.
pub struct Registry {
    pool: Pool,
    node_id: String,
    shards: u32,
    grace: Duration,
}

impl Registry {
    pub fn new(pool: Pool, node_id: &str, shards: u32, grace: Duration) -> Self {
        Registry {
            pool,
            node_id: node_id.to_owned(),
            shards,
            grace,
        }
    }

    /// Heartbeat, sweep and (while watched) refresh, every [`BEAT_EVERY`],
    /// until `stop`; then removes this node's entry.
    pub async fn run(self, status: Arc<NodeStatus>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut before = status.counters();
        let mut healthy = true;
        tracing::info!(grace_secs = self.grace.as_secs(), "node registry started");
        loop {
            // Cancel-safety: `tick` is cancel-safe; a dropped round only
            // loses Redis commands on a multiplexed connection (no blocking
            // reads), and the round is not repeated.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let round = async {
                let now = status.counters();
                let mut report = status.report(&now, &before);
                before = now;
                report.last_seen_ms = self.server_time().await?;
                self.beat(&report).await?;
                let reaped = self.sweep(report.last_seen_ms).await?;
                if !reaped.is_empty() {
                    tracing::debug!(count = reaped.len(), "sweep removed dead nodes");
                }
                if status.cluster.watchers() > 0 {
                    let view = self.view().await?;
                    status.cluster.set_latest(Some(Arc::new(view)));
                } else {
                    status.cluster.set_latest(None);
                }
                Ok::<_, StoreError>(())
            };
            let outcome = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = round => r,
            };
            match (outcome, healthy) {
                (Ok(()), false) => {
                    healthy = true;
                    tracing::info!("node registry reachable again");
                }
                (Err(e), true) => {
                    healthy = false;
                    tracing::warn!(cause = %e, "node registry heartbeat failed; retrying every beat");
                }
                _ => {}
            }
        }
        match tokio::time::timeout(Duration::from_secs(3), self.deregister()).await {
            Ok(Ok(())) => tracing::info!("node removed from the registry"),
            Ok(Err(e)) => tracing::warn!(cause = %e, "could not remove node from the registry"),
            Err(_) => tracing::warn!("removing node from the registry timed out"),
        }
    }

    /// The Redis server's clock (ms since the epoch).
    pub async fn server_time(&self) -> Result<i64, StoreError> {
        let mut conn = self.pool.get().await?;
        Ok(nodes::server_time_ms(&mut conn).await?)
    }

    /// Writes this node's report; `report.last_seen_ms` (Redis time) is
    /// its score.
    pub async fn beat(&self, report: &NodeInfo) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let key = keys::node_key(&self.node_id);
        // The hash outlives a dead node long enough for a janitor to find
        // it, and disappears by itself if no node is left to sweep.
        let ttl = (self.grace * 4).max(Duration::from_secs(60));
        // Separate commands, not one pipeline: the keys live in different
        // slots, and a Redis Cluster refuses cross-slot pipelines.
        redis::cmd("HSET")
            .arg(&key)
            .arg(report.to_fields())
            .query_async::<()>(&mut conn)
            .await?;
        redis::cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl.as_millis() as u64)
            .query_async::<()>(&mut conn)
            .await?;
        redis::cmd("ZADD")
            .arg(keys::NODES_KEY)
            .arg(report.last_seen_ms)
            .arg(&self.node_id)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes every node not heard from for longer than the grace period
    /// before `now_ms` (Redis time); returns the ids this janitor removed.
    pub async fn sweep(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let cutoff = now_ms - self.grace.as_millis() as i64;
        let mut conn = self.pool.get().await?;
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::NODES_KEY)
            .arg("-inf")
            .arg(cutoff)
            .arg("LIMIT")
            .arg(0)
            .arg(MAX_REAP_PER_SWEEP)
            .query_async(&mut conn)
            .await?;
        drop(conn);
        let mut reaped = Vec::new();
        for id in dead.into_iter().filter(|id| *id != self.node_id) {
            if self.reap(&id, cutoff).await? {
                reaped.push(id);
            }
        }
        Ok(reaped)
    }

    /// Removes one dead node under its lock. False when another janitor
    /// holds it or the node turned out to be alive.
    async fn reap(&self, id: &str, cutoff: i64) -> Result<bool, StoreError> {
        let mut conn = self.pool.get().await?;
        let lock = keys::node_reap_lock_key(id);
        let got: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(&self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(REAP_LOCK_TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if got.is_none() {
            tracing::debug!(dead = %id, "another janitor is removing this node");
            return Ok(false);
        }
        let result = self.reap_locked(&mut conn, id, cutoff).await;
        let _: Result<i64, _> = redis::Script::new(UNLOCK)
            .key(&lock)
            .arg(&self.node_id)
            .invoke_async(&mut conn)
            .await;
        result
    }

    async fn reap_locked(
        &self,
        conn: &mut sluice_broker::connect::PooledConn,
        id: &str,
        cutoff: i64,
    ) -> Result<bool, StoreError> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(keys::NODES_KEY)
            .arg(id)
            .query_async(conn)
            .await?;
        match score {
            Some(s) if (s as i64) <= cutoff => {}
            // Heartbeated since the sweep read it, or already removed.
            _ => return Ok(false),
        }
        let group = keys::group_name(id);
        // Every feed the node may have followed, legacy feeds included:
        // one call per shard (its feeds share a slot).
        let mut destroyed = 0i64;
        for shard in 0..self.shards.max(1) {
            let feeds: Vec<String> = keys::FeedId::of_shard(shard, true)
                .map(|f| f.key())
                .collect();
            destroyed += FeedsFn::Leave
                .query::<_, _, i64>(conn, &feeds, Some(&group))
                .await?;
        }
        redis::cmd("DEL")
            .arg(keys::node_key(id))
            .query_async::<i64>(conn)
            .await?;
        let removed: i64 = redis::Script::new(ZREM_IF_STALE)
            .key(keys::NODES_KEY)
            .arg(id)
            .arg(cutoff)
            .invoke_async(conn)
            .await?;
        tracing::warn!(
            dead = %id,
            group = %group,
            groups_destroyed = destroyed,
            shards = self.shards,
            unregistered = removed == 1,
            grace_secs = self.grace.as_secs(),
            "removed a node that stopped heartbeating"
        );
        Ok(true)
    }

    /// The registry and feeds as `sluice status` shows them.
    pub async fn view(&self) -> Result<ClusterStatus, StoreError> {
        let mut conn = self.pool.get().await?;
        Ok(nodes::collect(&mut conn, self.shards, self.grace).await?)
    }

    /// Removes this node's own entry (at the end of a drain).
    pub async fn deregister(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        // Two commands: the keys live in different cluster slots.
        redis::cmd("DEL")
            .arg(keys::node_key(&self.node_id))
            .query_async::<()>(&mut conn)
            .await?;
        redis::cmd("ZREM")
            .arg(keys::NODES_KEY)
            .arg(&self.node_id)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_host_for_unspecified_ip() {
        let a: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        assert_eq!(advertised(a), "127.0.0.1:8080");
    }
}
