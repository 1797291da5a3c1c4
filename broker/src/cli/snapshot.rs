//! `sluice snapshot <task>`

use clap::Args;
use sluice_broker::{connect, reader};

use super::args::RedisArgs;

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Task id.
    pub task: String,
}

pub async fn run(redis: &RedisArgs, a: SnapshotArgs) -> anyhow::Result<()> {
    let task = super::args::parse_task(&a.task)?;
    let pool = connect::pool(&redis.redis_url, 1)?;
    let mut conn = pool.get().await?;
    match reader::snapshot(&mut conn, &task, redis.shards).await? {
        Some(s) => {
            println!("{}", serde_json::to_string(&s)?);
            Ok(())
        }
        None => anyhow::bail!("task {task} is unknown (no events, or expired)"),
    }
}
