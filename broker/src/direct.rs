//! Connections to one Redis node: URL handling (TLS, credentials, cluster
//! URLs), a pool for short commands, and dedicated connections for blocking
//! reads. Knows nothing of Redis Cluster routing, so both
//! [`crate::connect`] and [`crate::cluster`] build on it.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::pool::{BuildError, Manager, Pool, PoolError};

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
    Pool(#[source] BuildError),
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

/// A pool error as a Redis error (the backend's own error when there is one),
/// for callers that must answer with a Redis error (a `ConnectionLike`).
pub fn pool_error(e: PoolError) -> redis::RedisError {
    match e {
        PoolError::Backend(e) => e,
        other => redis::RedisError::from((redis::ErrorKind::Io, "Redis pool", other.to_string())),
    }
}

/// A pool of connections to one Redis node.
pub fn single_pool(url: &str, size: usize) -> Result<Pool, ConnectError> {
    init_tls();
    let cfg = AsyncConnectionConfig::new()
        .set_response_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(DEFAULT_CONNECT_TIMEOUT));
    let client = redis::Client::open(url).map_err(ConnectError::Url)?;
    Pool::builder(Manager::new(client, cfg))
        .max_size(size.max(1))
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(DEFAULT_RESPONSE_TIMEOUT))
        .create_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
        .recycle_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
        .build()
        .map_err(ConnectError::Pool)
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
