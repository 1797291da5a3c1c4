//! The workspace's binaries (`sluice-edge`, `sluice`) for tests that run
//! them as processes.
//!
//! Cargo only hands an integration test the binaries of its own package
//! (`CARGO_BIN_EXE_*`), so [`bin`] runs `cargo build --bins -p sluice-edge
//! -p sluice-broker` once per test process, into the target directory the
//! test executable lives in (a no-op when they are up to date; `cargo test`
//! releases the build lock before it runs tests). `SLUICE_TEST_BIN_DIR`
//! points at binaries built elsewhere.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

/// Path of the workspace binary `name`, built on first use. Blocks: call it
/// from `spawn_blocking` in async code.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(build) {
        Ok(d) => d.join(name),
        Err(e) => panic!("{e}"),
    }
}

/// [`bin`] from async code.
pub async fn bin_async(name: &str) -> PathBuf {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || bin(&name))
        .await
        .expect("build task")
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
    let target = profile_dir
        .parent()
        .ok_or("unexpected test executable path")?;
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
    // Not the variables cargo set for this test process: build scripts
    // watch some of them (ring reruns on `CARGO_MANIFEST_DIR` and
    // `CARGO_PKG_*`), and a nested build that sees them rebuilds ring,
    // rustls, redis and the workspace, and the next outer build rebuilds
    // them back (tens of seconds each way).
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(workspace)
        .args([
            "build",
            "--bins",
            "-p",
            "sluice-edge",
            "-p",
            "sluice-broker",
        ])
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
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build the binaries: {e}"))?;
    if !status.success() {
        return Err(format!("building the binaries failed: {status}"));
    }
    eprintln!("binaries ready in {:.1}s", started.elapsed().as_secs_f64());
    Ok(profile_dir)
}
