//! `sluice demo [--tasks N] [--interval 500ms] [--steps 20] [--rounds 0]`:
//! a demo producer. Runs N tasks side by side; each publishes `progress`
//! events from 0 % to 100 % (a `done` final event at the end), then starts
//! again as a new task (`<prefix>-<i>-<round>`). Prints one line per event.
//!
//! Every event carries an idempotency key, so a restarted demo (or a retry
//! after a Redis error) continues a half-done task without duplicates, and
//! rounds that are already closed are skipped. Waits for Redis at start and
//! rides out Redis restarts.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sluice_broker::error::Chain;
use sluice_broker::{PublishError, PublishOptions, Publisher, PublisherConfig};
use tokio::task::JoinSet;

use super::args::RedisArgs;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many tasks run side by side.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tasks: u32,
    /// Time between two events of one task (`250ms`, `1s`; a bare number is
    /// milliseconds).
    #[arg(long, default_value = "500ms", value_parser = parse_interval)]
    pub interval: Duration,
    /// Progress events per task before its final event.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub steps: u32,
    /// Rounds per task slot (0 = forever).
    #[arg(long, default_value_t = 0)]
    pub rounds: u64,
    /// Task id prefix.
    #[arg(long, default_value = "demo")]
    pub prefix: String,
}

/// Parses `250ms`, `2s`, `1.5s` or a bare number of milliseconds.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 0.001)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale <= 3600.0 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!(
            "{s:?} is not an interval like 250ms or 2s (at most 1 hour)"
        )),
    }
}

pub async fn run(redis: &RedisArgs, a: DemoArgs) -> anyhow::Result<()> {
    sluice_shared::TaskId::parse(&format!("{}-1-1", a.prefix))
        .map_err(|e| anyhow::anyhow!("--prefix {:?} makes invalid task ids: {e}", a.prefix))?;
    let config = PublisherConfig {
        shards: redis.shards,
        pool_size: (a.tasks as usize).clamp(1, 16),
        ..PublisherConfig::default()
    };
    let publisher = connect(&redis.redis_url, config).await?;
    println!(
        "demo: {} task(s), an event every {:?}, {} steps each; follow one with \
         GET /v1/tasks/{}-1-<round>/events",
        a.tasks, a.interval, a.steps, a.prefix
    );
    let mut slots = JoinSet::new();
    for i in 1..=a.tasks {
        let publisher = publisher.clone();
        let prefix = a.prefix.clone();
        let (interval, steps, rounds) = (a.interval, a.steps, a.rounds);
        // Stagger the slots so their events interleave.
        let offset = interval.mul_f64(f64::from(i - 1) / f64::from(a.tasks));
        slots.spawn(async move {
            tokio::time::sleep(offset).await;
            slot(&publisher, &prefix, i, interval, steps, rounds).await
        });
    }
    tokio::select! {
        _ = shutdown_signal() => {
            println!("demo: stopping");
            slots.shutdown().await;
            Ok(())
        }
        r = async {
            while let Some(r) = slots.join_next().await {
                r.context("demo task panicked")??;
            }
            Ok::<(), anyhow::Error>(())
        } => r,
    }
}

/// Connects, waiting for Redis (a demo started with its Redis may come up
/// first).
async fn connect(url: &str, config: PublisherConfig) -> anyhow::Result<Publisher> {
    // Say so at once, then every 10 s.
    let mut quiet = 0u32;
    loop {
        match Publisher::connect_with(url, config.clone()).await {
            Ok(p) => return Ok(p),
            Err(PublishError::Connect(e)) => return Err(e.into()),
            Err(e) => {
                if quiet == 0 {
                    eprintln!("demo: waiting for Redis ({})", Chain(&e));
                    quiet = 10;
                }
                quiet -= 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One task slot: round after round of one task.
async fn slot(
    publisher: &Publisher,
    prefix: &str,
    i: u32,
    interval: Duration,
    steps: u32,
    rounds: u64,
) -> anyhow::Result<()> {
    let mut round = 1u64;
    while rounds == 0 || round <= rounds {
        let task = format!("{prefix}-{i}-{round}");
        round += 1;
        'events: for step in 0..=steps {
            let is_final = step == steps;
            let pct = u64::from(step) * 100 / u64::from(steps);
            let (kind, data) = if is_final {
                (
                    "done",
                    serde_json::json!({"pct": 100, "result": format!("/results/{task}")}),
                )
            } else {
                (
                    "progress",
                    serde_json::json!({"pct": pct, "step": step, "of": steps}),
                )
            };
            let opts = PublishOptions {
                is_final,
                idempotency_key: Some(format!("demo-step-{step}")),
            };
            loop {
                match publisher
                    .publish_with(&task, kind, &data, opts.clone())
                    .await
                {
                    Ok(p) => {
                        if !p.duplicate {
                            println!("{task} seq={} {kind} {pct}%", p.seq);
                        }
                        if p.duplicate && !is_final {
                            // Resuming a task a previous run left half done.
                            continue 'events;
                        }
                        break;
                    }
                    // A previous run finished this round: go to the next.
                    Err(PublishError::Closed(_)) => break 'events,
                    Err(e) => {
                        eprintln!("demo: {task}: {}; retrying in 1 s", Chain(&e));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            if !is_final {
                tokio::time::sleep(interval).await;
            }
        }
    }
    Ok(())
}

/// SIGTERM (docker stop; as PID 1 nothing else would end the process) or
/// Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::parse_interval;
    use std::time::Duration;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_interval("40"), Ok(Duration::from_millis(40)));
        for bad in ["", "x", "-1s", "2h", "1e9s", "NaNs"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }
}
