//! A real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by tests/setup.sh) driven over WebDriver with fantoccini:
//! [`Driver`] starts chromedriver and opens browsers; [`js`] and [`wait_js`]
//! evaluate and poll expressions in the page.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Generous: a cold Chromium on a loaded 2-core machine.
pub const T: Duration = Duration::from_secs(60);

/// chromedriver on a free loopback port, in a process group of its own:
/// on drop the whole group is killed, the browsers it started with it (a
/// test that panics before closing its session must not leave a Chromium
/// running).
pub struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    pub async fn start() -> Driver {
        for (path, pkg) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: run tests/setup.sh (installs Debian's {pkg})"
            );
        }
        let port = sluice_tests::free_port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        let http = reqwest::Client::new();
        sluice_tests::wait_until("chromedriver ready", T, || {
            let http = http.clone();
            let status = status.clone();
            async move {
                match http.get(&status).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == json!(true)),
                    Err(_) => false,
                }
            }
        })
        .await;
        Driver { child, url }
    }

    pub async fn browser(&self) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1440,1200",
                    "--no-first-run", "--disable-extensions",
                    // The compose stack's TLS bind has a self-signed
                    // certificate (loopback only).
                    "--ignore-certificate-errors",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!("capabilities are an object"),
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("WebDriver session with headless Chromium")
    }

    /// The browser console so far (chromedriver's log endpoint).
    pub async fn console(&self, client: &Client) -> Vec<Value> {
        let id = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        let v: Value = reqwest::Client::new()
            .post(format!("{}/session/{id}/se/log", self.url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .expect("browser log")
            .json()
            .await
            .expect("browser log JSON");
        v["value"].as_array().cloned().expect("log entries")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (`process_group(0)`).
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}

/// Evaluates `expr` in the page.
pub async fn js(client: &Client, expr: &str) -> Value {
    client
        .execute(&format!("return ({expr});"), vec![])
        .await
        .expect("execute script")
}

/// Polls `expr` until `ok` holds for its value.
pub async fn wait_js(
    client: &Client,
    what: &str,
    expr: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let end = tokio::time::Instant::now() + T;
    loop {
        let v = js(client, expr).await;
        if ok(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}; last value {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
