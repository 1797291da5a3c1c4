//! The real `sluice-edge` binary as a child process: what a SIGKILL or a
//! soak needs (a pid to kill and to sample in `/proc`).
//!
//! The binary comes from [`crate::bins`] (built on first use).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

pub struct EdgeProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl EdgeProcess {
    /// Starts `sluice-edge --listen 127.0.0.1:<free port> <args>` and waits
    /// for `/readyz`.
    pub async fn start(args: &[&str]) -> EdgeProcess {
        let bin = crate::bins::bin_async("sluice-edge").await;
        let port = crate::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = tokio::process::Command::new(bin)
            .args(["--listen", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start sluice-edge");
        let pid = child.id().expect("child pid");
        let edge = EdgeProcess { child, addr, pid };
        let url = format!("http://{addr}/readyz");
        let http = reqwest::Client::new();
        crate::wait_until("edge process ready", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move { matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) }
        })
        .await;
        edge
    }

    /// SIGKILL: no drain, no cleanup.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL the edge");
    }

    /// Resident set size, KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()
            .map(|d| d.count())
    }
}
