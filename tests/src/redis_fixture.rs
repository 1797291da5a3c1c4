//! A Redis container per test (about 0.2 s to start with the offline image).
//!
//! The image comes from `SLUICE_TEST_REDIS_IMAGE` (default `sluice-redis:7`,
//! built offline by `deploy/images/redis.sh`; with a registry, `redis:7`
//! works too).

use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub const DEFAULT_IMAGE: &str = "sluice-redis:7";

pub struct RedisFixture {
    pub container: ContainerAsync<GenericImage>,
    pub port: u16,
}

fn image_name() -> (String, String) {
    let full =
        std::env::var("SLUICE_TEST_REDIS_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_owned());
    match full.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_owned(), t.to_owned()),
        _ => (full, "latest".to_owned()),
    }
}

/// Removes the container a failed start left created (Docker names it in
/// the error: `... on endpoint <name> (<id>) ...`). Best effort.
fn remove_unstarted(error: &str) {
    let Some(name) = error
        .split("on endpoint ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    else {
        return;
    };
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

impl RedisFixture {
    /// Starts a fresh Redis. Extra server arguments (e.g. `--appendonly yes`)
    /// replace the image's default command.
    pub async fn start_with(args: &[&str]) -> RedisFixture {
        let (name, tag) = image_name();
        let mut image = GenericImage::new(name.clone(), tag.clone())
            .with_exposed_port(6379.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"));
        let mut cmd: Vec<String> = Vec::new();
        if !args.is_empty() {
            if name != "sluice-redis" {
                cmd.push("redis-server".into());
            }
            cmd.extend(["--bind", "0.0.0.0", "--protected-mode", "no"].map(String::from));
            cmd.extend(args.iter().map(|s| s.to_string()));
        }
        let _ = &mut image;
        let mut attempt = 1;
        let container = loop {
            // The host port is chosen here, by the kernel, as a port free for
            // listening on every address: Docker's own choice walks its range
            // in order and runs into ports that this machine's client sockets
            // hold (tests open thousands of loopback connections).
            let host_port = std::net::TcpListener::bind("0.0.0.0:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let req = image
                .clone()
                .with_mapped_port(host_port, 6379.tcp())
                .with_cmd(cmd.clone());
            match req.start().await {
                Ok(c) => break c,
                Err(e) => {
                    let text = e.to_string();
                    if text.contains("pull") {
                        panic!(
                            "Redis test image {name}:{tag} is missing and cannot be pulled: \
                             build it with deploy/images/redis.sh (tests/run.sh does) or set \
                             SLUICE_TEST_REDIS_IMAGE=redis:7 where a registry is reachable. ({text})"
                        );
                    }
                    // Another socket took the port before Docker bound it: a
                    // lost race, not a failure. Retry on another port.
                    let lost_race = text.contains("address already in use")
                        || text.contains("port is already allocated");
                    remove_unstarted(&text);
                    if attempt < 10 && lost_race {
                        eprintln!("Redis container lost a port race (attempt {attempt}): {text}");
                        attempt += 1;
                        continue;
                    }
                    panic!("cannot start Redis container: {text}");
                }
            }
        };
        let port = container
            .get_host_port_ipv4(ContainerPort::Tcp(6379))
            .await
            .expect("Redis port is published");
        RedisFixture { container, port }
    }

    pub async fn start() -> RedisFixture {
        Self::start_with(&[]).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection for test assertions.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to Redis")
    }
}
