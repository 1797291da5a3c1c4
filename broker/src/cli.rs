//! Command-line parsing and dispatch; one module per subcommand.

mod demo;
mod publish;
mod snapshot;
mod status;
mod tail;
mod token;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sluice producer and operator CLI")]
pub struct Cli {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub command: Command,
}

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish one event; prints its seq.
    Publish(publish::PublishArgs),
    /// Print a task's events as JSON lines, then follow it until its final event.
    Tail(tail::TailArgs),
    /// Print a task's snapshot (latest event and state) as JSON.
    Snapshot(snapshot::SnapshotArgs),
    /// Show the edge nodes, their connections and lag, and the shard feeds.
    Status(status::StatusArgs),
    /// Demo producer: a few tasks publishing progress in a loop.
    Demo(demo::DemoArgs),
    /// Print a subscriber token (HS256 JWT) for the given tasks/patterns.
    Token(token::TokenArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Publish(a) => publish::run(&cli.redis, a).await,
        Command::Tail(a) => tail::run(&cli.redis, a).await,
        Command::Snapshot(a) => snapshot::run(&cli.redis, a).await,
        Command::Status(a) => status::run(&cli.redis, a).await,
        Command::Demo(a) => demo::run(&cli.redis, a).await,
        Command::Token(a) => token::run(a),
    }
}

pub fn parse_task(s: &str) -> anyhow::Result<sluice_shared::TaskId> {
    sluice_shared::TaskId::parse(s).map_err(|e| anyhow::anyhow!("invalid task id {s:?}: {e}"))
}
