//! Redis connections. Short commands share a deadpool pool with a response
//! timeout; blocking reads get a dedicated connection with the response
//! timeout disabled (with the crate's default 500 ms timeout a longer
//! `BLOCK` is abandoned client-side while the server keeps it, and a
//! `NOACK` read then swallows the next message).

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

/// Default response timeout of pooled connections.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default pool size.
pub const DEFAULT_POOL_SIZE: usize = 32;

/// A Redis URL or pool that cannot be used (a configuration error, not an
/// outage).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad Redis URL")]
    Url(#[source] redis::RedisError),
    #[error("cannot build the Redis pool")]
    Pool(#[source] deadpool_redis::BuildError),
    #[error("cannot build the Redis pool: a cluster URL needs at least one seed node")]
    NoSeeds,
}

/// Installs rustls' crypto provider (ring) once, for `rediss://` URLs.
/// Harmless when another provider is already installed.
pub fn init_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Scheme prefix of a Redis Cluster URL: `redis+cluster://h1:p1,h2:p2`
/// (`rediss+cluster://` for TLS). Credentials given once apply to every seed
/// node: `redis+cluster://user:pass@h1:p1,h2:p2`.
pub const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster://", "rediss+cluster://"];

/// The parts of a cluster URL: node scheme (`redis://` or `rediss://`),
/// credentials (with the `@`), the host list, and what follows it.
fn cluster_parts(url: &str) -> Option<(&'static str, &str, &str, &str)> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix(CLUSTER_SCHEMES[0]) {
        ("redis://", r)
    } else {
        ("rediss://", url.strip_prefix(CLUSTER_SCHEMES[1])?)
    };
    let (auth, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, tail) = match hosts.find(['/', '#']) {
        Some(i) => (&hosts[..i], &hosts[i..]),
        None => (hosts, ""),
    };
    Some((scheme, auth, hosts, tail))
}

/// The seed node URLs of a cluster URL, or `None` for a single-node URL.
pub fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, auth, hosts, tail) = cluster_parts(url)?;
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}{auth}{h}{tail}"))
            .collect(),
    )
}

/// The URL of one node of the cluster named by `url` (same scheme,
/// credentials and options as the seeds).
pub fn cluster_node_url(url: &str, host: &str, port: u16) -> Option<String> {
    let (scheme, auth, _, tail) = cluster_parts(url)?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Some(format!("{scheme}{auth}{host}:{port}{tail}"))
}

/// A connection to one node for short commands, with the default connect
/// and response timeouts.
pub async fn node(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    init_tls();
    let client = redis::Client::open(url)?;
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// A pool for short commands: one Redis, or a Redis Cluster (commands are
/// routed by key; `FUNCTION LOAD` goes to every primary).
#[derive(Clone)]
pub enum RedisPool {
    Single(Pool),
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
    Single(deadpool_redis::Connection),
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
    pub async fn get(&self) -> Result<PooledConn, deadpool_redis::PoolError> {
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

/// A pool error as a Redis error (the backend's own error when there is one),
/// for callers that handle both alike.
pub fn pool_error(e: deadpool_redis::PoolError) -> redis::RedisError {
    match e {
        deadpool_redis::PoolError::Backend(e) => e,
        other => redis::RedisError::from((redis::ErrorKind::Io, "Redis pool", other.to_string())),
    }
}

/// A pool of connections to one Redis node.
pub fn single_pool(url: &str, size: usize) -> Result<Pool, ConnectError> {
    init_tls();
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
    let manager = Manager::new_with_config(url, cfg).map_err(ConnectError::Url)?;
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
        .create_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
        .recycle_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
        .build()
        .map_err(ConnectError::Pool)
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

/// A dedicated single-node connection for blocking reads: no response
/// timeout (the caller bounds every `BLOCK` itself).
pub async fn dedicated(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    init_tls();
    let client = redis::Client::open(url)?;
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Hides the password of a Redis URL for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cluster_urls() {
        assert_eq!(super::cluster_seeds("redis://h:1"), None);
        assert_eq!(
            super::cluster_seeds("redis+cluster://u:p@a:1,b:2/#insecure"),
            Some(vec![
                "redis://u:p@a:1/#insecure".to_string(),
                "redis://u:p@b:2/#insecure".to_string()
            ])
        );
        assert_eq!(
            super::cluster_seeds("rediss+cluster://a:1,b:2"),
            Some(vec!["rediss://a:1".to_string(), "rediss://b:2".to_string()])
        );
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            super::redact_url("redis://u:secret@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(super::redact_url("redis://h:6379"), "redis://h:6379");
    }
}
