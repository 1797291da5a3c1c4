//! `sluice tail <task> [--after N]`: history, then live, as JSON lines, until
//! the final event. Follows the task log with `XREAD BLOCK` on a dedicated
//! connection (bounded block time, no client-side response timeout).

use std::io::Write;

use clap::Args;
use redis::Value;
use sluice_broker::{connect, reader};
use sluice_shared::TaskKeys;

use super::args::RedisArgs;

/// How long one blocking read waits before the loop checks again.
const BLOCK_MS: u64 = 2_000;
const PAGE: usize = 500;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Task id.
    pub task: String,
    /// Start after this seq (0 = the whole retained history; default: only
    /// the latest event, then live).
    #[arg(long)]
    pub after: Option<u64>,
    /// Stop after printing what is retained (do not follow).
    #[arg(long)]
    pub no_follow: bool,
}

/// Consecutive failed reads (a failover, a restart) before giving up.
const MAX_RETRIES: u32 = 10;

pub async fn run(redis: &RedisArgs, a: TailArgs) -> anyhow::Result<()> {
    let task = super::args::parse_task(&a.task)?;
    let keys = TaskKeys::new(&task, redis.shards);
    let mut conn = connect::dedicated_for_key(&redis.redis_url, &keys.log).await?;
    let mut last = match a.after {
        Some(n) => n,
        None => match reader::snapshot(&mut conn, &task, redis.shards).await? {
            Some(s) => s.seq.saturating_sub(1),
            None => 0,
        },
    };
    let mut failures = 0u32;
    loop {
        match follow(
            &mut conn,
            &task,
            &keys,
            redis.shards,
            &mut last,
            a.no_follow,
        )
        .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                // Lost the node (failover, restart, resharding): reconnect
                // and continue after `last`, so nothing is printed twice.
                failures += 1;
                if failures > MAX_RETRIES {
                    return Err(e);
                }
                eprintln!("sluice: {e:#}; reconnecting ({failures}/{MAX_RETRIES})");
                tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(failures)))
                    .await;
                match connect::dedicated_for_key(&redis.redis_url, &keys.log).await {
                    Ok(c) => {
                        conn = c;
                    }
                    Err(e) => eprintln!("sluice: reconnect failed: {e}"),
                }
            }
        }
    }
}

/// Prints what the log holds after `last`, then follows it; returns once
/// the final event is printed (or at once with `no_follow`).
async fn follow(
    conn: &mut redis::aio::MultiplexedConnection,
    task: &sluice_shared::TaskId,
    keys: &TaskKeys,
    shards: u32,
    last: &mut u64,
    no_follow: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    loop {
        // Drain what the log holds after `last`.
        loop {
            let page = reader::history(conn, task, shards, *last, PAGE).await?;
            if let Some(first) = page.first() {
                if first.seq != *last + 1 {
                    eprintln!(
                        "sluice: events {}..{} are no longer retained",
                        *last + 1,
                        first.seq - 1
                    );
                }
            }
            let n = page.len();
            let mut out = stdout.lock();
            for ev in page {
                *last = ev.seq;
                out.write_all(&ev.envelope_json())?;
                out.write_all(b"\n")?;
                if ev.is_final {
                    out.flush()?;
                    return Ok(());
                }
            }
            out.flush()?;
            if n < PAGE {
                break;
            }
        }
        if no_follow {
            return Ok(());
        }
        // Wait for the next entry of the log.
        let _: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&keys.log)
            .arg(format!("{}-0", *last))
            .query_async(conn)
            .await?;
    }
}
