//! `rediss://`: the edge and the publisher talk TLS to Redis when the URL
//! says so. Redis here is the host's `redis-server` (installed by
//! tests/setup.sh) started on a loopback port with a throwaway certificate
//! for `IP:127.0.0.1`, issued by a throwaway test CA.
//!
//! - `#insecure` skips verification of that certificate (tests only);
//! - without it, the certificate is checked against the system's roots,
//!   which do not hold the test CA: the connection is refused;
//! - the system's roots are rustls-native-certs', which read
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR` instead of the platform store when
//!   set: an edge started with `SSL_CERT_FILE=<test CA>` trusts it, and
//!   still checks the host name.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use sluice_broker::Publisher;
use sluice_tests::{free_port, unique_task, SseClient, TestEdge};

const T: Duration = Duration::from_secs(10);

struct TlsRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    /// The test CA's certificate (PEM).
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate it signed (`cert.pem`,
/// `key.pem`) for `IP:127.0.0.1` only.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sluice test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ],
    );
}

fn start_tls_redis() -> TlsRedis {
    let dir = std::env::temp_dir().join(format!("sluice-tls-{}", unique_task("d")));
    std::fs::create_dir_all(&dir).expect("dir");
    make_certificates(&dir);
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
        .arg(dir.join("ca.pem"))
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
    TlsRedis { child, port, dir }
}

/// Every message of an error's source chain, joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The real `sluice-edge` binary, with `envs` set and `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` cleared otherwise; stdout and stderr go to one file.
struct EdgeProc {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
}

impl EdgeProc {
    async fn spawn(args: &[&str], envs: &[(&str, &Path)], log: PathBuf) -> EdgeProc {
        let bin = sluice_tests::bins::bin_async("sluice-edge").await;
        let addr: std::net::SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--listen", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start sluice-edge");
        EdgeProc { child, addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit on its own; its status and output.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the edge did not exit:\n{}", self.output()))
            .expect("wait");
        (status, self.output())
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the edge exited ({status}):\n{}", self.output());
            }
            assert!(
                tokio::time::Instant::now() < end,
                "edge not ready:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    let edge = TestEdge::on(&url).start().await;
    let mut c =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    assert_eq!(c.next_event(T).await.expect("history").seq(), Some(1));
    p.publish(&task, "progress", &json!(2))
        .await
        .expect("publish");
    assert_eq!(c.next_event(T).await.expect("live over TLS").seq(), Some(2));

    // The same server refuses plain-text connections on its TLS port.
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    let r = tokio::time::timeout(Duration::from_secs(10), Publisher::connect(&plain)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "plain text must not work against the TLS port"
    );
    edge.stop().await;
}

/// Without `#insecure`, a certificate from a CA the system does not trust
/// is refused, by the publisher and by the edge (which exits non-zero with
/// the certificate error), instead of talking to an unverified server.
#[tokio::test]
async fn untrusted_certificate_is_refused() {
    sluice_tests::init_logs();
    let redis = start_tls_redis();
    let url = format!("rediss://127.0.0.1:{}/", redis.port);

    let r = tokio::time::timeout(Duration::from_secs(20), Publisher::connect(&url))
        .await
        .expect("the publisher answers within 20 s");
    let err = match r {
        Ok(_) => panic!("a publisher must not connect to an unverified server"),
        Err(e) => chain(&e),
    };
    assert!(
        err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
        "the error names the certificate problem: {err}"
    );

    let edge = EdgeProc::spawn(
        &["--redis-url", &url, "--insecure"],
        &[],
        redis.dir.join("edge-untrusted.log"),
    )
    .await;
    let (status, out) = edge.exit().await;
    assert!(!status.success(), "{status}: {out}");
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.starts_with("sluice-edge: ")
            && last.contains("invalid peer certificate")
            && last.contains("UnknownIssuer"),
        "one clear line with the certificate error, got: {out}"
    );
}

/// `SSL_CERT_FILE` (read by rustls-native-certs in place of the platform
/// store) makes the edge trust a private CA: it connects with verification
/// on, serves, publishes and follows the feed over TLS. The host name is
/// still checked: the same certificate for `localhost` is refused.
#[tokio::test]
async fn edge_trusts_a_ca_from_ssl_cert_file() {
    sluice_tests::init_logs();
    let redis = start_tls_redis();
    let url = format!("rediss://127.0.0.1:{}/", redis.port);
    let ca = redis.ca();
    let mut edge = EdgeProc::spawn(
        &["--redis-url", &url, "--insecure", "--publish-key", "pk-tls"],
        &[("SSL_CERT_FILE", &ca)],
        redis.dir.join("edge-trusted.log"),
    )
    .await;
    edge.wait_ready().await;

    let task = unique_task("tls-ca");
    let http = reqwest::Client::new();
    let publish = |n: u64| {
        let req = http
            .post(edge.url(&format!("/v1/tasks/{task}/events")))
            .bearer_auth("pk-tls")
            .json(&json!({"type": "progress", "data": {"n": n}}));
        async move {
            let r = req.send().await.expect("publish request");
            assert_eq!(r.status(), 201);
            let v: serde_json::Value = r.json().await.expect("json");
            assert_eq!(v["seq"], json!(n));
        }
    };
    publish(1).await;
    let mut c =
        SseClient::connect(&edge.url(&format!("/v1/tasks/{task}/events?after=0")), None).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.next_event(T).await.expect("history").seq(), Some(1));
    publish(2).await;
    let live = c.next_event(T).await.expect("live, from the feed over TLS");
    assert_eq!(live.seq(), Some(2));
    assert_eq!(live.json()["data"], json!({"n": 2}));
    drop(c);
    drop(edge);

    // Trusted CA, wrong name: the certificate is for 127.0.0.1 only.
    let by_name = format!("rediss://localhost:{}/", redis.port);
    let edge = EdgeProc::spawn(
        &["--redis-url", &by_name, "--insecure"],
        &[("SSL_CERT_FILE", &ca)],
        redis.dir.join("edge-wrong-name.log"),
    )
    .await;
    let (status, out) = edge.exit().await;
    assert!(!status.success(), "{status}: {out}");
    assert!(
        out.contains("invalid peer certificate")
            && out.contains("not valid for name \"localhost\""),
        "the host name is checked: {out}"
    );
}
