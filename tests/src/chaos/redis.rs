//! A Redis container for fault scenarios: published on a fixed loopback port
//! (chosen free at start), so `docker restart` brings it back at the same
//! address the edges and producers keep dialing.

use std::time::Duration;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub struct ChaosRedis {
    pub container: ContainerAsync<GenericImage>,
    pub port: u16,
}

fn image_name() -> (String, String) {
    let full = std::env::var("SLUICE_TEST_REDIS_IMAGE")
        .unwrap_or_else(|_| crate::redis_fixture::DEFAULT_IMAGE.to_owned());
    match full.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_owned(), t.to_owned()),
        _ => (full, "latest".to_owned()),
    }
}

/// A port in 20000..32000 that is free on all addresses right now.
fn fixed_port() -> u16 {
    for _ in 0..200 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let port = 20_000 + (nanos % 12_000) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000")
}

/// `docker <args>`; panics with the command's output when it fails.
pub async fn docker(args: &[&str]) {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl ChaosRedis {
    /// Starts Redis with `args` (e.g. `["--appendonly", "yes"]`); the data
    /// directory is `/tmp` inside the container, so an AOF survives
    /// `docker restart`.
    pub async fn start(args: &[&str]) -> ChaosRedis {
        let (name, tag) = image_name();
        let mut cmd: Vec<String> = Vec::new();
        if name != "sluice-redis" {
            cmd.push("redis-server".into());
        }
        cmd.extend(
            [
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--dir",
                "/tmp",
            ]
            .map(String::from),
        );
        cmd.extend(args.iter().map(|s| s.to_string()));
        // A fixed host port keeps the address across `docker restart`. It is
        // taken below the kernel's ephemeral range (32768+), where client
        // sockets of concurrent tests cannot grab it; a port taken anyway is
        // retried with another.
        let mut attempt = 0;
        let (container, port) = loop {
            attempt += 1;
            let port = fixed_port();
            let started = GenericImage::new(name.clone(), tag.clone())
                .with_exposed_port(6379.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
                .with_mapped_port(port, 6379.tcp())
                .with_cmd(cmd.clone())
                .start()
                .await;
            match started {
                Ok(c) => break (c, port),
                Err(e) if attempt < 5 && e.to_string().contains("already in use") => continue,
                Err(e) => panic!(
                    "cannot start Redis {name}:{tag} (build it with deploy/images/redis.sh): {e}"
                ),
            }
        };
        ChaosRedis { container, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn id(&self) -> &str {
        self.container.id()
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis")
    }

    /// `docker restart`: SIGTERM (Redis shuts down cleanly, fsyncing its AOF
    /// if it has one), then the same container starts again on the same
    /// port. Returns once Redis answers PING with its data loaded.
    pub async fn restart(&self) {
        docker(&["restart", "-t", "5", self.id()]).await;
        self.wait_ready(Duration::from_secs(30)).await;
    }

    pub async fn pause(&self) {
        docker(&["pause", self.id()]).await;
    }

    pub async fn unpause(&self) {
        docker(&["unpause", self.id()]).await;
    }

    /// Polls PING (LOADING answers count as not ready) until the deadline.
    pub async fn wait_ready(&self, deadline: Duration) {
        let url = self.url();
        crate::wait_until("Redis answers PING", deadline, || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(Ok(mut c)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.get_multiplexed_async_connection(),
                )
                .await
                else {
                    return false;
                };
                matches!(
                    redis::cmd("PING").query_async::<String>(&mut c).await,
                    Ok(ref s) if s == "PONG"
                )
            }
        })
        .await;
    }
}
