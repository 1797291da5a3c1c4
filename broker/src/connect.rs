//! Redis connections. Short commands share a pool ([`crate::pool`]) with a response
//! timeout; blocking reads get a dedicated connection with the response
//! timeout disabled (with the crate's default 500 ms timeout a longer
//! `BLOCK` is abandoned client-side while the server keeps it, and a
//! `NOACK` read then swallows the next message).
//!
//! This module picks one Redis or a Redis Cluster from the URL; the
//! single-node pieces are [`crate::direct`]'s (re-exported here).

use redis::aio::MultiplexedConnection;

pub use crate::direct::{
    cluster_node_url, cluster_seeds, dedicated, init_tls, node, pool_error, redact_url,
    single_pool, ConnectError, CLUSTER_SCHEMES, DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE,
    DEFAULT_RESPONSE_TIMEOUT,
};
pub use crate::pool::PoolError;

/// A pool for short commands: one Redis, or a Redis Cluster (commands are
/// routed by key; `FUNCTION LOAD` goes to every primary).
#[derive(Clone)]
pub enum RedisPool {
    Single(crate::pool::Pool),
    Cluster(crate::cluster::ClusterPool),
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_cluster() {
            "RedisPool::Cluster"
        } else {
            "RedisPool::Single"
        })
    }
}

/// A connection taken from a [`RedisPool`]; returns to it on drop.
pub enum PooledConn {
    Single(crate::pool::Connection),
    Cluster(crate::cluster::ClusterConn),
}

impl redis::aio::ConnectionLike for PooledConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            PooledConn::Single(c) => c.req_packed_command(cmd),
            PooledConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            PooledConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            PooledConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            PooledConn::Single(c) => c.get_db(),
            PooledConn::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisPool {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisPool::Cluster(_))
    }

    /// A connection from the pool (waits at most the pool's timeouts).
    pub async fn get(&self) -> Result<PooledConn, PoolError> {
        Ok(match self {
            RedisPool::Single(p) => PooledConn::Single(p.get().await?),
            RedisPool::Cluster(p) => PooledConn::Cluster(p.get()),
        })
    }
}

/// A pool of multiplexed connections for short commands. `rediss://` URLs
/// use TLS (append `#insecure` to skip certificate verification, for tests
/// only); `redis://user:pass@` URLs authenticate; `redis+cluster://` URLs
/// (see [`CLUSTER_SCHEMES`]) give a cluster pool.
pub fn pool(url: &str, size: usize) -> Result<RedisPool, ConnectError> {
    init_tls();
    if cluster_seeds(url).is_some() {
        return crate::cluster::ClusterPool::new(url, size).map(RedisPool::Cluster);
    }
    single_pool(url, size).map(RedisPool::Single)
}

/// A dedicated connection for blocking reads of `key`: to the Redis of
/// `url`, or on a cluster to the primary that serves `key` right now (after
/// an error, resolve again to follow a failover).
pub async fn dedicated_for_key(url: &str, key: &str) -> redis::RedisResult<MultiplexedConnection> {
    if cluster_seeds(url).is_some() {
        let pool = crate::cluster::ClusterPool::new(url, 1).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cluster URL",
                e.to_string(),
            ))
        })?;
        let node = pool.primary_for(key.as_bytes()).await?;
        return dedicated(&node).await;
    }
    dedicated(url).await
}
