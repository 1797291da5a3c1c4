//! `rediss://`: the edge and the publisher talk TLS to Redis when the URL
//! says so. Redis here is the host's `redis-server` (installed by
//! tests/setup.sh) started with a throwaway self-signed certificate on a
//! loopback port; `#insecure` skips verification of that certificate.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sluice_broker::Publisher;
use sluice_tests::{spawn_edge, unique_task, SseClient};

struct TlsRedis {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_tls_redis() -> TlsRedis {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}", unique_task("d")));
    std::fs::create_dir_all(&dir).expect("dir");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl made a certificate");
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--tls-port")
        .arg(port.to_string())
        .arg("--tls-cert-file")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("key.pem"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("cert.pem"))
        .args(["--tls-auth-clients", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (tests/setup.sh installs it)");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let ready = lines
        .by_ref()
        .take(200)
        .map_while(Result::ok)
        .any(|l| l.contains("Ready to accept connections"));
    assert!(ready, "redis-server with TLS started");
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    TlsRedis {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test]
async fn edge_and_publisher_over_tls() {
    sluice_tests::init_logs();
    let redis = start_tls_redis();
    let url = format!("rediss://127.0.0.1:{}/#insecure", redis.port);
    let p = Publisher::connect(&url).await.expect("publisher over TLS");
    let task = unique_task("tls");
    p.publish(&task, "progress", &json!(1))
        .await
        .expect("publish");
    let edge = spawn_edge(&["--redis-url", &url, "--insecure"]).await;
    let mut c =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    assert_eq!(
        c.next_event(Duration::from_secs(10))
            .await
            .expect("history")
            .seq(),
        Some(1)
    );
    p.publish(&task, "progress", &json!(2))
        .await
        .expect("publish");
    assert_eq!(
        c.next_event(Duration::from_secs(10))
            .await
            .expect("live over TLS")
            .seq(),
        Some(2)
    );

    // The same server refuses plain-text connections on its TLS port.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    let r = tokio::time::timeout(Duration::from_secs(10), Publisher::connect(&plain)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "plain text must not work against the TLS port"
    );
    edge.stop().await;
}
