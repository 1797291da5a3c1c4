//! The process runs out of file descriptors (something besides client
//! connections holds them: connections alone cannot, `--max-open-connections`
//! stops them first). Accepting then fails with `EMFILE`; the node must say
//! so on `/readyz` (asked over a connection it already holds, as a load
//! balancer's keep-alive check would), back off, and serve again once
//! descriptors are free, the connection that waited in the backlog
//! included.
//!
//! The edge runs in this process, so the test exhausts the descriptors of
//! its own process; it holds the chaos lock, so no other test runs
//! meanwhile.

use std::time::{Duration, Instant};

use sluice_tests::TestEdge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const T: Duration = Duration::from_secs(30);
const EMFILE: i32 = 24;

/// One request on an open connection; the status line and the body.
async fn ask(s: &mut TcpStream, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if body.len() >= len {
                let status = head.lines().next().unwrap_or_default().to_owned();
                return (status, body[..len].to_owned());
            }
        }
    }
}

/// Lowers this process's soft open-file limit for a while (opening files
/// until `EMFILE` under a limit of a million would take long); restores it
/// on drop.
struct SoftLimit(u64);

impl SoftLimit {
    fn lower_to(limit: u64) -> SoftLimit {
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        rlimit::setrlimit(rlimit::Resource::NOFILE, limit.min(soft), hard).expect("setrlimit");
        SoftLimit(soft)
    }
}

impl Drop for SoftLimit {
    fn drop(&mut self) {
        if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, self.0, hard);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_descriptors_says_so_and_serves_again() {
    let _one = sluice_tests::chaos::exclusive().await;
    sluice_tests::init_logs();
    let edge = TestEdge::memory().start().await;
    let metrics = edge.state.metrics.clone();
    let mut held = TcpStream::connect(edge.addr).await.expect("connect");
    assert!(ask(&mut held, "/readyz").await.0.contains(" 200 "));
    // The socket of the connection that will wait in the backlog, made
    // while a descriptor is still free.
    let waiting = TcpSocket::new_v4().expect("socket");

    let limit = SoftLimit::lower_to(4096);
    let mut hog = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) if e.raw_os_error() == Some(EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
        assert!(hog.len() < 100_000, "no EMFILE under a soft limit of 4096");
    }
    // The kernel completes the handshake; the node cannot accept it.
    let mut waiting = waiting.connect(edge.addr).await.expect("handshake");
    let started = Instant::now();
    let (status, body) = loop {
        let (status, body) = ask(&mut held, "/readyz").await;
        if body.contains("cannot accept connections") || started.elapsed() > T {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.contains(" 503 "), "{status} {body}");
    assert!(body.contains("cannot accept connections"), "{body}");
    let failures = metrics.accept_errors.get();
    assert!(failures >= 1);
    // Still out of descriptors: it backs off instead of spinning.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = metrics.accept_errors.get() - failures;
    assert!(
        during <= 20,
        "{during} failed accepts in 2 s: the loop must back off (at most a second apart)"
    );

    drop(hog);
    drop(limit);
    // The connection that waited is served, and the node is ready again.
    let (status, _) = ask(&mut waiting, "/healthz").await;
    assert!(status.contains(" 200 "), "{status}");
    let (status, body) = ask(&mut held, "/readyz").await;
    assert!(status.contains(" 200 "), "{status} {body}");
}
