//! What every subcommand shares: the Redis arguments and task id parsing.

use clap::Args;

#[derive(Debug, Args, Clone)]
pub struct RedisArgs {
    /// Redis URL (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS).
    #[arg(
        long,
        env = "SLUICE_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,
    /// Shard count of the deployment (must match every edge and producer).
    #[arg(long, env = "SLUICE_SHARDS", default_value_t = sluice_shared::DEFAULT_SHARDS, global = true)]
    pub shards: u32,
}

/// A task id argument, or a clear error.
pub fn parse_task(s: &str) -> anyhow::Result<sluice_shared::TaskId> {
    sluice_shared::TaskId::parse(s).map_err(|e| anyhow::anyhow!("invalid task id {s:?}: {e}"))
}
