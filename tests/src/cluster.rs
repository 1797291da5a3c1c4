//! A real Redis Cluster for tests: three primaries with one replica each,
//! `redis-server` processes of the host (installed by tests/setup.sh) on
//! loopback ports, joined with `redis-cli --cluster create`. Dropping the
//! fixture kills every process and removes its files.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ClusterNode {
    pub port: u16,
    child: Option<Child>,
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
}

fn port_free(p: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// Six ports whose cluster-bus ports (+10000) are free too. Each call in a
/// process starts from its own offset, so clusters started by tests running
/// in parallel never pick the same ports before either has bound them.
fn pick_ports() -> Vec<u16> {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed =
        ((std::process::id() as u16).wrapping_mul(7) % 2_000) * 10 + call.wrapping_mul(100) % 1_000;
    let mut out = Vec::new();
    let mut p = 20_000 + seed % 20_000;
    while out.len() < 6 && p < 55_000 {
        if port_free(p) && port_free(p + 10_000) {
            out.push(p);
        }
        p += 1;
    }
    assert_eq!(out.len(), 6, "six free port pairs for the cluster");
    out
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RedisCluster {
    /// Starts a cluster. Ports are only checked free before `redis-server`
    /// binds them, so another process may take one in between: a node that
    /// does not come up as our own process is a lost race, and the whole
    /// start is retried on other ports (up to 5 times).
    pub fn start() -> RedisCluster {
        let mut last_error = String::new();
        for attempt in 1..=5 {
            match RedisCluster::try_start() {
                Ok(c) => return c,
                Err(e) => {
                    eprintln!(
                        "cluster start attempt {attempt} failed: {e}; retrying on other ports"
                    );
                    last_error = e;
                }
            }
        }
        panic!("could not start a Redis Cluster: {last_error}");
    }

    fn try_start() -> Result<RedisCluster, String> {
        let dir = std::env::temp_dir().join(format!("sluice-cluster-{}", crate::unique_task("c")));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cluster dir: {e}"))?;
        let ports = pick_ports();
        let mut nodes = Vec::new();
        for &port in &ports {
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                // Replicas sync at once (the default waits 5 s for more
                // replicas): a replica that never synced cannot take over.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (tests/setup.sh installs it)");
            nodes.push(ClusterNode {
                port,
                child: Some(child),
            });
        }
        // From here, dropping `cluster` kills what was started.
        let mut cluster = RedisCluster { nodes, dir };
        for node in &mut cluster.nodes {
            let pid = node.child.as_ref().map(Child::id).unwrap_or(0);
            let port = node.port;
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                // Our process answers on its port (not another one that
                // took the port first).
                let want = format!("process_id:{pid}");
                let ours = cli(port, &["INFO", "server"])
                    .is_some_and(|s| s.lines().any(|l| l.trim() == want));
                if ours {
                    break;
                }
                let exited = node
                    .child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some());
                if exited || Instant::now() > end {
                    return Err(format!("node on port {port} did not come up (port taken?)"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        if !out.status.success() {
            return Err(format!(
                "cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        for &port in &ports {
            wait("cluster ok", Duration::from_secs(30), || {
                cli(port, &["CLUSTER", "INFO"]).is_some_and(|s| s.contains("cluster_state:ok"))
            });
        }
        // Replicas attached to their primaries.
        wait("replicas attached", Duration::from_secs(30), || {
            cluster.replica_count() == 3
        });
        Ok(cluster)
    }

    /// `redis+cluster://` URL with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Bytes all live nodes have sent to their clients so far
    /// (`total_net_output_bytes`, replication traffic excluded).
    pub fn output_bytes(&self) -> u64 {
        self.live_ports()
            .iter()
            .filter_map(|p| cli(*p, &["INFO", "stats"]))
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Replicas whose link to their primary is up (synced): only those
    /// can take over in a failover.
    fn replica_count(&self) -> usize {
        self.live_ports()
            .iter()
            .filter(|p| {
                cli(**p, &["INFO", "replication"]).is_some_and(|r| {
                    r.contains("role:slave") && r.contains("master_link_status:up")
                })
            })
            .count()
    }

    /// The primary serving the hash slot of `{s<shard>}`.
    pub fn primary_of_shard(&self, shard: u32) -> u16 {
        let key = format!("sluice:{{s{shard}}}:feed");
        let live = self.live_ports();
        let slot: u16 = cli(live[0], &["CLUSTER", "KEYSLOT", &key])
            .and_then(|s| s.trim().parse().ok())
            .expect("keyslot");
        for p in live {
            let nodes = cli(p, &["CLUSTER", "NODES"]).unwrap_or_default();
            let me = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .unwrap_or_default();
            if me.contains("master") && owns_slot(me, slot) {
                return p;
            }
        }
        panic!("no primary serves shard {shard}");
    }

    /// Kills a node with SIGKILL (a crashed primary).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// The replica of a primary (by its `master_port`).
    pub fn replica_of(&self, primary: u16) -> u16 {
        let want = format!("master_port:{primary}");
        self.live_ports()
            .into_iter()
            .find(|p| cli(*p, &["INFO", "replication"]).is_some_and(|r| r.contains(&want)))
            .expect("the primary has a replica")
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) a node: a replica stopped for a
    /// moment misses the writes its primary acknowledges meanwhile.
    pub fn signal(&self, port: u16, stop: bool) {
        let Some(pid) = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.child.as_ref())
            .map(|c| c.id())
        else {
            return;
        };
        let sig = if stop { "-STOP" } else { "-CONT" };
        let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
    }

    /// Closes a primary's links to its replicas (`CLIENT KILL TYPE
    /// replica`): with the replica stopped, what the primary acknowledges
    /// next never reaches it.
    pub fn cut_replication(&self, primary: u16) {
        let _ = cli(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
    }

    /// Waits until `port` (a replica) says it is a primary: its failover
    /// is done.
    pub fn wait_promoted(&self, port: u16, deadline: Duration) {
        wait("replica promoted", deadline, || {
            cli(port, &["ROLE"]).is_some_and(|s| s.lines().next() == Some("master"))
        });
    }

    /// Waits until every slot is served again (a replica took over).
    pub fn wait_healed(&self, deadline: Duration) {
        let ports = self.live_ports();
        wait("cluster healed", deadline, || {
            ports.iter().all(|p| {
                cli(*p, &["CLUSTER", "INFO"]).is_some_and(|s| s.contains("cluster_state:ok"))
            })
        });
    }
}

fn owns_slot(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|r| match r.split_once('-') {
        Some((a, b)) => matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot)),
        None => r.parse::<u16>() == Ok(slot),
    })
}

fn wait(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
