//! `sluice status [--json]`: the edge nodes in the registry (address,
//! version, uptime, connections, feeds followed, lag, last heartbeat), every
//! shard's feeds (length, who follows how many of them, lag per node), and
//! edge groups with no registered node.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use sluice_broker::connect;
use sluice_broker::nodes::{self, ClusterStatus};

use super::args::RedisArgs;

/// Must match the edges' `--node-grace-secs` to flag the same nodes as stale.
pub const DEFAULT_GRACE_SECS: u64 = 30;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Seconds without a heartbeat after which a node is shown as stale
    /// (the edges' --node-grace-secs).
    #[arg(long, env = "SLUICE_NODE_GRACE_SECS", default_value_t = DEFAULT_GRACE_SECS)]
    pub grace_secs: u64,
}

pub async fn run(redis: &RedisArgs, a: StatusArgs) -> anyhow::Result<()> {
    let pool = connect::pool(&redis.redis_url, 1)?;
    let mut conn = pool.get().await?;
    let status = nodes::collect(&mut conn, redis.shards, Duration::from_secs(a.grace_secs)).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The human-readable report: a node table, then a shard table.
pub fn render(s: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "nodes: {}", s.nodes.len());
    table(&mut out, &node_rows(s));
    let _ = writeln!(out, "\nshards: {}", s.shards.len());
    table(&mut out, &shard_rows(s));
    if !s.orphan_groups.is_empty() {
        let _ = writeln!(
            out,
            "\nedge groups without a registered node: {}",
            s.orphan_groups.join(" ")
        );
    }
    out
}

/// The node table: a header, then one row per node.
fn node_rows(s: &ClusterStatus) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "NODE",
        "ADDRESS",
        "VERSION",
        "UPTIME",
        "CONNS",
        "SUBS",
        "TASKS",
        "FEEDS",
        "LAG",
        "LAST SEEN",
        "STATE",
    ]
    .map(String::from)
    .to_vec()];
    for n in &s.nodes {
        let state = if n.stale {
            "stale"
        } else if n.info.draining {
            "draining"
        } else {
            "up"
        };
        let lag = if n.lag.unknown > 0 {
            format!("{}+?", n.lag.total)
        } else {
            n.lag.total.to_string()
        };
        rows.push(vec![
            n.info.id.clone(),
            n.info.address.clone(),
            n.info.version.clone(),
            human_secs(n.uptime_secs),
            n.info.connections.to_string(),
            n.info.subscriptions.to_string(),
            n.info.tasks.to_string(),
            n.lag.feeds.to_string(),
            lag,
            format!("{:.1}s ago", n.last_seen_ago_ms as f64 / 1000.0),
            state.to_owned(),
        ]);
    }
    rows
}

/// The shard table: a header, then one row per shard (hash tag).
fn shard_rows(s: &ClusterStatus) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "SHARD",
        "FEEDS",
        "LENGTH",
        "GROUPS",
        "MAX LAG",
        "NODE=FEEDS/LAG",
    ]
    .map(String::from)
    .to_vec()];
    for sh in &s.shards {
        let by_node: Vec<String> = sh
            .groups
            .iter()
            .filter_map(|g| {
                let node = g.node.as_deref()?;
                let unknown = if g.unknown > 0 { "+?" } else { "" };
                Some(format!("{node}={}/{}{unknown}", g.feeds, g.lag))
            })
            .collect();
        rows.push(vec![
            sh.shard.to_string(),
            sh.feeds.to_string(),
            sh.length.to_string(),
            sh.groups.len().to_string(),
            sh.max_lag().map_or("-".to_owned(), |l| l.to_string()),
            by_node.join(" "),
        ]);
    }
    rows
}

fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_broker::nodes::{GroupInfo, NodeInfo, ShardStats};

    #[test]
    fn renders_nodes_and_shards() {
        let s = nodes::assemble(
            vec![NodeInfo {
                id: "edge-a".into(),
                address: "127.0.0.1:8080".into(),
                version: "0.1.0".into(),
                started_ms: 0,
                last_seen_ms: 3_600_000,
                connections: 12,
                ..NodeInfo::default()
            }],
            vec![ShardStats {
                shard: 0,
                feeds: 3,
                length: 42,
                groups: vec![GroupInfo {
                    group: "edge:edge-a".into(),
                    node: Some("edge-a".into()),
                    feeds: 2,
                    lag: 5,
                    unknown: 0,
                }],
            }],
            Duration::from_secs(30),
            3_600_500,
        );
        let text = render(&s);
        assert!(text.contains("edge-a"), "{text}");
        assert!(text.contains("1h00m"), "{text}");
        assert!(text.contains("0.5s ago"), "{text}");
        assert!(text.contains("edge-a=2/5"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.starts_with("0 ") && l.contains("42")));
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(90_000), "1d01h");
    }
}
