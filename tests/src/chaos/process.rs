//! The real `sluice-edge` binary as a child process: what a SIGKILL or a
//! soak needs (a pid to kill and to sample in `/proc`).
//!
//! Cargo only hands an integration test the binaries of its own package, so
//! [`edge_binary`] runs `cargo build --bin sluice-edge` once into the target
//! directory this test executable lives in (a no-op when up to date; the
//! same approach as `tests/tests/registry.rs`). `SLUICE_TEST_BIN_DIR` points
//! at binaries built elsewhere.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

pub struct EdgeProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

/// Path of the `sluice-edge` binary, built on first use.
pub fn edge_binary() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(build) {
        Ok(d) => d.join("sluice-edge"),
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("SLUICE_TEST_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // <target>/<profile>/deps/<this test>
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected test executable path")?
        .to_path_buf();
    let target = profile_dir.parent().ok_or("unexpected test path")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace dir")?;
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--bin", "sluice-edge", "-p", "sluice-edge"])
        .arg("--target-dir")
        .arg(target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build sluice-edge: {e}"))?;
    if !status.success() {
        return Err(format!("building sluice-edge failed: {status}"));
    }
    Ok(profile_dir)
}

impl EdgeProcess {
    /// Starts `sluice-edge --listen 127.0.0.1:<free port> <args>` and waits
    /// for `/readyz`.
    pub async fn start(args: &[&str]) -> EdgeProcess {
        let bin = tokio::task::spawn_blocking(edge_binary)
            .await
            .expect("build task");
        let port = super::free_port();
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
