//! `sluice publish <task> <type> [<json>] [--final] [--idempotency-key K]`

use anyhow::Context;
use clap::Args;
use sluice_broker::{PublishOptions, Publisher, PublisherConfig};

use super::args::RedisArgs;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Task id.
    pub task: String,
    /// Event type.
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// Event data as JSON (default: null).
    pub json: Option<String>,
    /// Mark this as the task's final event (closes the task).
    #[arg(long = "final")]
    pub is_final: bool,
    /// Idempotency key: a retry with the same key appends nothing.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Replicas that must confirm the event (Redis `WAIT`); fails when fewer
    /// do within --wait-timeout-ms (the event is then stored on the primary
    /// only: retry with the same --idempotency-key).
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u32,
    /// How long to wait for --wait-replicas, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub wait_timeout_ms: u64,
}

pub async fn run(redis: &RedisArgs, a: PublishArgs) -> anyhow::Result<()> {
    let data: serde_json::Value = match &a.json {
        Some(s) => serde_json::from_str(s).context("the data argument is not valid JSON")?,
        None => serde_json::Value::Null,
    };
    let config = PublisherConfig {
        shards: redis.shards,
        pool_size: 1,
        wait_replicas: a.wait_replicas,
        wait_timeout: std::time::Duration::from_millis(a.wait_timeout_ms),
        ..PublisherConfig::default()
    };
    let publisher = Publisher::connect_with(&redis.redis_url, config).await?;
    let opts = PublishOptions {
        is_final: a.is_final,
        idempotency_key: a.idempotency_key,
    };
    let p = publisher
        .publish_with(&a.task, &a.kind, &data, opts)
        .await?;
    println!("{}", p.seq);
    Ok(())
}
