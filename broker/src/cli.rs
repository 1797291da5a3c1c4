//! Command-line parsing and dispatch; one module per subcommand, and `args`
//! for what they share.

mod args;
mod demo;
mod publish;
mod snapshot;
mod status;
mod tail;
mod tls;
mod token;

use clap::{Parser, Subcommand};

pub use args::RedisArgs;

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Sluice producer and operator CLI")]
pub struct Cli {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(subcommand)]
    pub command: Command,
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
    /// Write a self-signed certificate and key (one PEM, HAProxy's format)
    /// for trying TLS and HTTP/2 at the load balancer.
    TlsCert(tls::TlsCertArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Publish(a) => publish::run(&cli.redis, a).await,
        Command::Tail(a) => tail::run(&cli.redis, a).await,
        Command::Snapshot(a) => snapshot::run(&cli.redis, a).await,
        Command::Status(a) => status::run(&cli.redis, a).await,
        Command::Demo(a) => demo::run(&cli.redis, a).await,
        Command::Token(a) => token::run(a),
        Command::TlsCert(a) => tls::run(a),
    }
}
