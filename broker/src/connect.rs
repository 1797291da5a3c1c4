//! Redis connections. Short commands share a deadpool pool with a response
//! timeout; blocking reads get a dedicated connection with the response
//! timeout disabled (see NOTES: with the crate's default 500 ms timeout a
//! longer `BLOCK` is abandoned client-side while the server keeps it, and a
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

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad Redis URL")]
    Url(#[source] redis::RedisError),
    #[error("cannot build the Redis pool: {0}")]
    Pool(String),
}

/// Installs rustls' crypto provider (ring) once, for `rediss://` URLs.
/// Harmless when another provider is already installed.
pub fn init_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A pool of multiplexed connections for short commands. `rediss://` URLs
/// use TLS (append `#insecure` to skip certificate verification, for tests
/// only); `redis://user:pass@` URLs authenticate.
pub fn pool(url: &str, size: usize) -> Result<Pool, ConnectError> {
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
        .map_err(|e| ConnectError::Pool(e.to_string()))
}

/// A dedicated connection for blocking reads: no response timeout (the
/// caller bounds every `BLOCK` itself).
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
    fn redacts_credentials() {
        assert_eq!(
            super::redact_url("redis://u:secret@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(super::redact_url("redis://h:6379"), "redis://h:6379");
    }
}
