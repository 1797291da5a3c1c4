//! The memory of a process as the kernel reports it (`/proc/<pid>/status`),
//! for tests that bound what an edge holds: its RSS now, and its peak
//! sampled on a thread of its own (a history page lives for milliseconds;
//! sampling on the test's runtime would miss it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `key:  <n> kB` of `/proc/<pid>/status`, in KiB. Panics when it cannot
/// be read: a memory bound that cannot be measured must not pass.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot measure the edge's memory: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!("cannot measure the edge's memory: no {key} line in /proc/{pid}/status")
        })
}

/// The RSS of `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Resets the kernel's peak-RSS counter (`VmHWM`) of `pid` to its current
/// RSS, so that `VmHWM` later is the exact peak since now (a sampler can
/// miss a spike shorter than its period). False when the kernel refuses.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The highest RSS of a process, sampled every 2 ms until dropped.
pub struct RssPeak {
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    pub fn start(pid: u32) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        RssPeak {
            pid,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak since the start or the previous [`RssPeak::phase_peak`].
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The peak since the previous call (or the start); starts a new phase.
    pub fn phase_peak(&self) -> u64 {
        let now = rss_kib(self.pid);
        self.peak.swap(now, Ordering::Relaxed).max(now)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
