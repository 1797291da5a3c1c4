//! The edge's configuration: every flag also as an env var `SLUICE_*`,
//! parsed into typed values before anything binds.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sluice_broker::PublisherConfig;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
/// Default of `--max-tasks-per-connection`.
pub const DEFAULT_MAX_TASKS_PER_CONNECTION: usize = 100;
pub const DEFAULT_HEARTBEAT_SECS: u64 = 15;
pub const DEFAULT_DRAIN_SECS: u64 = 10;
pub const DEFAULT_NODE_GRACE_SECS: u64 = 30;
/// Open TCP connections allowed beyond `--max-connections` by default (for
/// publishes, snapshots, health checks and keep-alive).
pub const DEFAULT_EXTRA_OPEN_CONNECTIONS: usize = 256;
pub const DEFAULT_HEAD_TIMEOUT_SECS: u64 = 20;
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 20;

/// Most open connections of the admin listener (operators and scrapers).
pub const ADMIN_MAX_OPEN_CONNECTIONS: usize = 64;

/// Where a node serves its operator surface: the dashboard, its stats
/// stream and `/metrics`. They show every live subscription's task id,
/// every node's internal address and the cluster's layout, so a node that
/// checks subscriber tokens never serves them on its public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorSurface {
    /// On its own listener (`--admin-listen`), and nowhere else.
    Admin(SocketAddr),
    /// On the public port: subscriber auth is off anyway (`--insecure`,
    /// `--demo`), and the demo is one command.
    Public,
    /// Nowhere: auth is on and no `--admin-listen` was given.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice-edge",
    version,
    about = "Sluice edge node: SSE and WebSocket fan-out of task events"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Address of the operator surface: the dashboard (`/`), its stats
    /// stream (`/v1/dashboard/events`) and `/metrics`, plus `/healthz`,
    /// `/readyz` and `/capacity`. When set, the public port no longer
    /// serves the first three. Unset: they are served on the public port
    /// only when subscriber auth is off (`--insecure`, `--demo`); with
    /// `--auth-secret` they are not served at all. Never expose it publicly.
    #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Redis URL (`redis://`, `rediss://` for TLS). Absent: an embedded
    /// in-memory store (single node, nothing persisted).
    #[arg(long, env = "SLUICE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// This node's id (names its consumer groups `edge:<id>`). Default:
    /// hostname plus a random suffix.
    #[arg(long, env = "SLUICE_NODE_ID")]
    pub node_id: Option<String>,

    /// Shard count of the deployment (same for every edge and producer).
    #[arg(long, env = "SLUICE_SHARDS", default_value_t = sluice_shared::DEFAULT_SHARDS,
          value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub shards: u32,

    /// Seconds a feed stays followed after the last local subscription
    /// that needed it ended (a reconnecting client finds it still joined).
    #[arg(long, env = "SLUICE_FEED_GRACE_SECS", default_value_t = 30)]
    pub feed_grace_secs: u64,

    /// Migration from the first key schema (one feed per shard): publish to
    /// the shards' legacy feeds and follow them as well as the new feeds.
    /// README "Migrating from 16 feeds".
    #[arg(long, env = "SLUICE_LEGACY_FEEDS")]
    pub legacy_feeds: bool,

    /// Most client connections (SSE + WebSocket) this node holds.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Most open TCP connections of any kind (streams, requests, idle
    /// keep-alive); over it a connection is answered 503 at once and closed.
    /// Default: --max-connections plus 256.
    #[arg(long, env = "SLUICE_MAX_OPEN_CONNECTIONS")]
    pub max_open_connections: Option<usize>,

    /// Seconds a connection may take to send a complete request head,
    /// counted from when it opened or its previous response ended (also
    /// the idle keep-alive timeout).
    #[arg(long, env = "SLUICE_HEAD_TIMEOUT_SECS", default_value_t = DEFAULT_HEAD_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub head_timeout_secs: u64,

    /// Seconds a request may take to send its whole body (publish);
    /// slower requests are answered 408.
    #[arg(long, env = "SLUICE_BODY_TIMEOUT_SECS", default_value_t = DEFAULT_BODY_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_secs: u64,

    /// Seconds a peer may accept no bytes of a write before its connection
    /// is closed ("stalled"). Default: two heartbeat intervals.
    #[arg(long, env = "SLUICE_WRITE_TIMEOUT_SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub write_timeout_secs: Option<u64>,

    /// Most new connections per second (token bucket; 0 = unlimited).
    #[arg(long, env = "SLUICE_MAX_CONNECT_RATE", default_value_t = 0)]
    pub max_connect_rate: u32,

    /// Events queued per subscriber before it is switched to catch-up.
    #[arg(long, env = "SLUICE_QUEUE_CAPACITY", default_value_t = DEFAULT_QUEUE_CAPACITY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub queue_capacity: usize,

    /// Events per history page when resuming or catching up.
    #[arg(long, env = "SLUICE_HISTORY_PAGE", default_value_t = crate::subscription::DEFAULT_HISTORY_PAGE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub history_page: usize,

    /// Byte budget of one history page (resume, catch-up and the history
    /// endpoint): a page ends with the event whose JSON envelope brings it
    /// to this many bytes (always at least one event).
    #[arg(long, env = "SLUICE_HISTORY_PAGE_BYTES", default_value_t = crate::store::DEFAULT_HISTORY_PAGE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024 * 1024 * 1024))]
    pub history_page_bytes: usize,

    /// Most tasks one connection may follow (`/v1/events?task=..`, the
    /// subscriptions of `/v1/ws`). The default keeps a stream URL of 100
    /// task ids of UUID length (about 4.2 KB) and its cursor (about 940
    /// bytes of `Last-Event-ID`) inside common proxies' limits (nginx:
    /// 8 KB per request line or header; HAProxy: 16 KB per request head).
    #[arg(long, env = "SLUICE_MAX_TASKS_PER_CONNECTION", default_value_t = DEFAULT_MAX_TASKS_PER_CONNECTION,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub max_tasks_per_connection: usize,

    /// Seconds between SSE heartbeat comments / WebSocket pings.
    #[arg(long, env = "SLUICE_HEARTBEAT_SECS", default_value_t = DEFAULT_HEARTBEAT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_secs: u64,

    /// Seconds over which a draining node spreads its clients' reconnects.
    #[arg(long, env = "SLUICE_DRAIN_SECS", default_value_t = DEFAULT_DRAIN_SECS)]
    pub drain_secs: u64,

    /// Seconds without a heartbeat after which other nodes treat this one
    /// as dead and destroy its consumer groups and registry entry (Redis).
    #[arg(long, env = "SLUICE_NODE_GRACE_SECS", default_value_t = DEFAULT_NODE_GRACE_SECS,
          value_parser = clap::value_parser!(u64).range(2..=86_400))]
    pub node_grace_secs: u64,

    /// HS256 secret(s) for subscriber tokens; the first signs, all verify.
    #[arg(long, env = "SLUICE_AUTH_SECRET", value_delimiter = ',')]
    pub auth_secret: Vec<String>,

    /// Key(s) accepted for `POST /v1/tasks/{task}/events`.
    #[arg(long, env = "SLUICE_PUBLISH_KEY", value_delimiter = ',')]
    pub publish_key: Vec<String>,

    /// Origins whose pages may read streams, snapshots and history
    /// cross-origin (CORS), comma-separated and exact
    /// (`https://app.example.com`), or `*` for any page without
    /// credentials (then tokens must travel in `?token=`). None: no CORS
    /// headers (same-origin pages only).
    #[arg(long, env = "SLUICE_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,

    /// Serve without subscriber auth (logged loudly).
    #[arg(long, env = "SLUICE_INSECURE")]
    pub insecure: bool,

    /// Demo mode: embedded store unless --redis-url, open auth, and a
    /// built-in producer running a few demo tasks.
    #[arg(long, env = "SLUICE_DEMO")]
    pub demo: bool,

    /// Retained events per task log.
    #[arg(long, env = "SLUICE_LOG_CAP", default_value_t = sluice_broker::publisher::DEFAULT_LOG_CAP)]
    pub log_cap: u64,

    /// Entries kept per feed (approximately: Redis trims whole stream
    /// nodes). Feeds are only for live tailing.
    #[arg(long, env = "SLUICE_FEED_CAP", default_value_t = sluice_broker::publisher::DEFAULT_FEED_CAP)]
    pub feed_cap: u64,

    /// Retention of a closed task, seconds (HTTP publishes through this node).
    #[arg(long, env = "SLUICE_RETENTION_SECS", default_value_t = sluice_broker::publisher::DEFAULT_RETENTION_SECS)]
    pub retention_secs: u64,

    /// Largest accepted event data, bytes (MessagePack-encoded).
    #[arg(long, env = "SLUICE_MAX_DATA_BYTES", default_value_t = sluice_shared::event::DEFAULT_MAX_DATA_BYTES)]
    pub max_data_bytes: usize,

    /// Replicas that must confirm each HTTP publish (Redis `WAIT`) before it
    /// is answered 201; when fewer confirm in time the answer is 503
    /// `not_replicated` (the event is stored on the primary: retry with the
    /// same idempotency_key). 0 answers as soon as the primary stored it.
    #[arg(long, env = "SLUICE_WAIT_REPLICAS", default_value_t = 0)]
    pub wait_replicas: u32,

    /// How long an HTTP publish waits for `--wait-replicas`, milliseconds.
    #[arg(long, env = "SLUICE_WAIT_TIMEOUT_MS", default_value_t = 1000)]
    pub wait_timeout_ms: u64,

    /// Log format.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.auth_secret.is_empty() && !self.insecure && !self.demo {
            return Err("no --auth-secret given: refusing to serve unauthenticated; pass --insecure (or --demo) to run open".into());
        }
        if self.auth_secret.iter().any(|s| s.len() < 16) {
            return Err("every --auth-secret must be at least 16 bytes".into());
        }
        crate::http::cors::validate(&self.cors_origin)?;
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.max_open_connections() < self.max_connections {
            return Err("--max-open-connections must be at least --max-connections".into());
        }
        Ok(())
    }

    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "edge".into());
            format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
        })
    }

    /// Where the operator surface is served (see [`OperatorSurface`]).
    pub fn operator_surface(&self) -> OperatorSurface {
        match self.admin_listen {
            Some(addr) => OperatorSurface::Admin(addr),
            // The same test as `Access`: any secret turns auth on.
            None if self.auth_secret.is_empty() => OperatorSurface::Public,
            None => OperatorSurface::Off,
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// The limit on open TCP connections of any kind.
    pub fn max_open_connections(&self) -> usize {
        self.max_open_connections
            .unwrap_or(self.max_connections + DEFAULT_EXTRA_OPEN_CONNECTIONS)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.unwrap_or(2 * self.heartbeat_secs))
    }

    pub fn head_timeout(&self) -> Duration {
        Duration::from_secs(self.head_timeout_secs)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    pub fn feed_grace(&self) -> Duration {
        Duration::from_secs(self.feed_grace_secs)
    }

    pub fn node_grace(&self) -> Duration {
        Duration::from_secs(self.node_grace_secs)
    }

    /// The limit of a subscription's history pages.
    pub fn history_page(&self) -> crate::store::PageLimit {
        crate::store::PageLimit::new(self.history_page, self.history_page_bytes)
    }

    pub fn publisher(&self) -> PublisherConfig {
        PublisherConfig {
            shards: self.shards,
            log_cap: self.log_cap,
            feed_cap: self.feed_cap,
            retention_secs: self.retention_secs,
            max_data_bytes: self.max_data_bytes,
            wait_replicas: self.wait_replicas,
            wait_timeout: Duration::from_millis(self.wait_timeout_ms),
            legacy_feeds: self.legacy_feeds,
            ..PublisherConfig::default()
        }
    }

    /// The effective configuration for the start-up log, secrets redacted.
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        c.auth_secret = c.auth_secret.iter().map(|_| "***".to_owned()).collect();
        c.publish_key = c.publish_key.iter().map(|_| "***".to_owned()).collect();
        c.redis_url = c
            .redis_url
            .as_deref()
            .map(sluice_broker::connect::redact_url);
        format!("{c:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["sluice-edge"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).expect("valid flags")
    }

    #[test]
    fn the_operator_surface_is_public_only_without_auth() {
        let secret = "0123456789abcdef";
        assert_eq!(
            parse(&["--insecure"]).operator_surface(),
            OperatorSurface::Public
        );
        assert_eq!(
            parse(&["--demo"]).operator_surface(),
            OperatorSurface::Public
        );
        assert_eq!(
            parse(&["--auth-secret", secret]).operator_surface(),
            OperatorSurface::Off
        );
        // --insecure does not turn auth off when a secret is given.
        assert_eq!(
            parse(&["--insecure", "--auth-secret", secret]).operator_surface(),
            OperatorSurface::Off
        );
        let admin: SocketAddr = "127.0.0.1:9090".parse().expect("addr");
        for extra in [&["--insecure"][..], &["--auth-secret", secret][..]] {
            let mut args = vec!["--admin-listen", "127.0.0.1:9090"];
            args.extend_from_slice(extra);
            assert_eq!(
                parse(&args).operator_surface(),
                OperatorSurface::Admin(admin)
            );
        }
    }
}
