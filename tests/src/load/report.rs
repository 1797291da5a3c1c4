//! Shared counters, latency histograms and the edge process's resource use
//! (from `/proc`), and the run's summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histograms are sharded so connections rarely share a lock.
const SHARDS: usize = 16;
/// Highest latency tracked (µs): 10 minutes.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Counters shared by every connection and the publisher.
pub struct Stats {
    pub established: AtomicU64,
    /// Connections that gave up before being established.
    pub refused: AtomicU64,
    pub delivered: AtomicU64,
    pub published: AtomicU64,
    pub publish_errors: AtomicU64,
    hists: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            established: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            hists: (0..SHARDS)
                .map(|_| Mutex::new(new_hist()))
                .collect::<Vec<_>>(),
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // 3 significant digits over 1 µs..10 min; bounds are constants.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures are valid"))
    })
}

impl Stats {
    /// Counts `delivered` events and records their latencies (µs).
    pub fn record(&self, key: usize, delivered: u64, latencies_us: &[u64]) {
        if delivered > 0 {
            self.delivered.fetch_add(delivered, Ordering::Relaxed);
        }
        if latencies_us.is_empty() {
            return;
        }
        let mut h = self.hists[key % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for &us in latencies_us {
            h.saturating_record(us.clamp(1, MAX_LATENCY_US));
        }
    }

    /// Clears the latency histograms (to measure one phase only).
    pub fn reset_latency(&self) {
        for h in &self.hists {
            h.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
    }

    pub fn latency(&self) -> Latency {
        let mut all = new_hist();
        for h in &self.hists {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            let _ = all.add(&*h);
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: all.len(),
            p50_ms: ms(all.value_at_quantile(0.50)),
            p90_ms: ms(all.value_at_quantile(0.90)),
            p99_ms: ms(all.value_at_quantile(0.99)),
            p999_ms: ms(all.value_at_quantile(0.999)),
            max_ms: ms(all.max()),
        }
    }
}

/// End-to-end latency: receive time minus the envelope `ts` (publish time on
/// the Redis clock, truncated to the millisecond, so figures carry up to
/// +1 ms of rounding, +0.5 ms on average).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
}

/// Assumed `sysconf(_SC_CLK_TCK)` (100 on every Linux this runs on).
pub const CLK_TCK: f64 = 100.0;

impl ProcSample {
    pub fn read(pid: u32) -> Option<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the `(comm)`: state is field 3; utime 14, stime 15.
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some(ProcSample {
            rss_kib,
            cpu_ticks: utime + stime,
        })
    }
}

/// Finds a running `sluice-edge` process when exactly one exists.
pub fn find_edge_pid() -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            if comm.trim() == "sluice-edge" {
                found.push(pid);
            }
        }
    }
    (found.len() == 1).then(|| found[0])
}

/// The edge's resource use over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeUsage {
    pub pid: u32,
    /// Before any load connection.
    pub rss_baseline_kib: u64,
    /// With every connection established (before publishing).
    pub rss_connected_kib: u64,
    /// (connected - baseline) / established, in bytes.
    pub rss_per_conn_bytes: f64,
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
    /// CPU used during the publish phase, in % of one core.
    pub cpu_percent: f64,
}

/// The summary of one run (`--json` prints it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub transport: String,
    pub connections: usize,
    pub tasks: usize,
    pub established: u64,
    pub refused: u64,
    pub failed: u64,
    pub closed_by_server: u64,
    pub connect_secs: f64,
    pub backlog_per_task: u64,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_secs: f64,
    pub published_per_sec: f64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub resets: u64,
    /// Delivered during the publish phase / its length.
    pub delivered_per_sec: f64,
    /// Catch-up: events delivered from connect until everything expected
    /// arrived, divided by that time (only when a backlog was published).
    pub catchup_per_sec: Option<f64>,
    /// Seconds after publishing stopped until every expected event arrived.
    pub drain_secs: f64,
    pub latency: Latency,
    pub edge: Option<EdgeUsage>,
}

impl Report {
    pub fn print(&self) {
        println!(
            "connections: {} established / {} requested ({} tasks, {}), refused {}, failed {}, closed by server {}, connect {:.2}s",
            self.established, self.connections, self.tasks, self.transport, self.refused, self.failed, self.closed_by_server, self.connect_secs
        );
        println!(
            "published:   {} in {:.2}s = {:.0}/s (errors {}){}",
            self.published,
            self.publish_secs,
            self.published_per_sec,
            self.publish_errors,
            if self.backlog_per_task > 0 {
                format!(", backlog {} per task", self.backlog_per_task)
            } else {
                String::new()
            }
        );
        println!(
            "events:      expected {} delivered {} lost {} duplicated {} resets {}",
            self.expected, self.delivered, self.lost, self.duplicated, self.resets
        );
        println!(
            "throughput:  {:.0} delivered events/s during publishing; drained {:.2}s after",
            self.delivered_per_sec, self.drain_secs
        );
        if let Some(c) = self.catchup_per_sec {
            println!("catch-up:    {c:.0} events/s");
        }
        let l = &self.latency;
        println!(
            "latency ms:  p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ({} samples)",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.samples
        );
        if let Some(e) = &self.edge {
            println!(
                "edge pid {}: RSS baseline {} KiB, connected {} KiB ({:.0} B/conn), peak {} KiB, end {} KiB; CPU {:.0}% of a core while publishing",
                e.pid, e.rss_baseline_kib, e.rss_connected_kib, e.rss_per_conn_bytes, e.rss_peak_kib, e.rss_end_kib, e.cpu_percent
            );
        }
    }
}
