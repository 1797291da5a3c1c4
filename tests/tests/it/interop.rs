//! Client libraries nobody on the project wrote: `tests/python/
//! interop_clients.py` drives `sseclient-py`, `httpx-sse` and `websockets`
//! against an edge on a real Redis. Each follows a task published in bursts
//! (sitting through heartbeats between them), drops its connection halfway,
//! resumes as the README says (`Last-Event-ID`, `?after=<position>`), and
//! must see every seq once, in order, to the final event, with no item that
//! is not an event with JSON data.
//!
//! Needs `python3` with `sseclient-py`, `httpx`, `httpx-sse`, `websockets`
//! and `requests` (tests/setup.sh installs them); `SLUICE_PYTHON` names
//! another interpreter.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sluice_tests::TestEdge;

const KEY: &str = "interop-publish-key";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/interop_clients.py")
}

async fn run_clients(base: &str, clients: &[&str]) -> Vec<Value> {
    let py = sluice_tests::python();
    let probe = tokio::process::Command::new(&py)
        .args([
            "-c",
            "import sseclient, httpx, httpx_sse, websockets, requests",
        ])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {py}: {e} (set SLUICE_PYTHON)"));
    assert!(
        probe.status.success(),
        "{py} lacks the client libraries (tests/setup.sh installs them): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let mut cmd = tokio::process::Command::new(&py);
    cmd.arg(script()).args(["--base", base, "--key", KEY]);
    for c in clients {
        cmd.args(["--client", c]);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.kill_on_drop(true).output())
        .await
        .expect("the clients finish within 120 s")
        .expect("run interop_clients.py");
    assert!(
        out.status.success(),
        "interop_clients.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("the script prints JSON lines"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_resume_exactly_and_see_only_events() {
    sluice_tests::init_logs();
    let (_redis, edge) = TestEdge::redis()
        .args(&["--publish-key", KEY, "--heartbeat-secs", "1"])
        .start()
        .await;
    let clients = ["sseclient", "httpx-sse", "websockets"];
    let results = run_clients(&edge.url(""), &clients).await;
    assert_eq!(results.len(), clients.len(), "{results:?}");
    for r in &results {
        // 12 events, each once; no extra item (an empty event would have
        // failed the script already, this says it in the test too).
        assert_eq!(r["seqs"], 12, "{r}");
        assert_eq!(r["items"], 12, "{r}");
        assert!(r["resumed_from"].is_string(), "{r}");
    }
}
