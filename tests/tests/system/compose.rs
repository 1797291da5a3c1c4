//! System test of the compose stack (deploy/compose.yaml): Redis, three edge
//! containers, HAProxy and the demo producer, driven with the machine's
//! `docker-compose` (Debian's v1; `SLUICE_COMPOSE="docker compose"` for the
//! plugin). Clients (SSE and WebSocket) connect only through the load
//! balancer's published loopback port; a producer publishes straight to the
//! stack's Redis.
//!
//! 1. One edge container is killed (`docker kill`) mid-stream: its clients
//!    reconnect through the LB with `Last-Event-ID` / `?after=N` and every
//!    client receives every seq exactly once.
//! 2. Rolling restart with drain: each edge in turn is stopped with SIGTERM
//!    (`docker-compose stop -t 30`, it drains and exits 0) and started again,
//!    waiting until HAProxy sees it UP; same result, and every client was
//!    moved at least once.
//! 3. A full fleet keeps serving: every edge is filled to its stream limit
//!    (`SLUICE_MAX_CONNECTIONS` is small here) with streams held through the
//!    LB. HAProxy takes them all out of `streams` (checked on `/capacity`)
//!    but keeps them in `edges` (`/readyz`): publishes (201), snapshots and
//!    history (200) still go through, the held streams still get events,
//!    and a new stream is refused by an edge (503 JSON, or an EventSource's
//!    200 `retry:`) instead of hanging.
//!    Once the streams are released, a new stream is served again.
//!
//! Also: the operator surface (dashboard, `/metrics`) answers only on the
//! stack's admin port, never through the public one.
//!
//! The images come from deploy/images/build-all.sh (tests/setup.sh runs it).
//! The stack gets a unique project name and is always removed (`down -v`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_broker::{PublishOptions, Publisher};
use sluice_tests::{unique_task, DeliveryLog, SseClient, WsClient, WsItem};
use tokio::sync::watch;

/// Longest silence on a stream (heartbeats come every 2 s here).
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client may take to see its task through.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);
/// The drain window of the edges in this test.
const DRAIN_SECS: &str = "4";
/// Each edge's stream limit here: above what phases 1 and 2 put on one
/// edge (8 clients in all), small enough to fill every edge in phase 3.
const MAX_STREAMS_PER_EDGE: usize = 12;
pub(crate) const PUBLISH_KEY: &str = "compose-test-publish-key";

const IMAGES: [(&str, &str); 4] = [
    ("SLUICE_REDIS_IMAGE", "sluice-redis:7"),
    ("SLUICE_EDGE_IMAGE", "sluice-edge:dev"),
    ("SLUICE_CLI_IMAGE", "sluice:dev"),
    ("SLUICE_LB_IMAGE", "sluice-haproxy:dev"),
];
pub(crate) const EDGES: [&str; 3] = ["edge1", "edge2", "edge3"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn compose_cmd() -> Vec<String> {
    std::env::var("SLUICE_COMPOSE")
        .unwrap_or_else(|_| "docker-compose".to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

pub(crate) fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A compose project; `down -v` when dropped (also on panic).
pub(crate) struct Stack {
    project: String,
    cmd: Vec<String>,
}

impl Stack {
    /// A stack of its own for this test process: the project name carries
    /// the process id, so [`remove_stale_stacks`] can tell a stack whose
    /// test is gone. Nothing runs until `up`.
    pub(crate) fn unique(cmd: Vec<String>) -> Stack {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Stack {
            project: format!("sluiceit{}t{nanos:x}", std::process::id()),
            cmd,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.cmd[0]);
        c.args(&self.cmd[1..])
            .arg("-f")
            .arg(repo().join("deploy/compose.yaml"))
            .args(["-p", &self.project])
            .args(args)
            .env("SLUICE_HTTP_PORT", "0")
            .env("SLUICE_HTTPS_PORT", "0")
            .env("SLUICE_ADMIN_PORT", "0")
            .env("SLUICE_STATS_PORT", "0")
            .env("SLUICE_REDIS_PORT", "0")
            .env("SLUICE_DRAIN_SECS", DRAIN_SECS)
            .env("SLUICE_HEARTBEAT_SECS", "2")
            .env("SLUICE_DEMO_INTERVAL", "200ms")
            .env("SLUICE_INSECURE", "true")
            .env("SLUICE_MAX_CONNECTIONS", MAX_STREAMS_PER_EDGE.to_string())
            .env("SLUICE_PUBLISH_KEY", PUBLISH_KEY)
            .env_remove("SLUICE_AUTH_SECRET");
        c
    }

    /// Runs a compose command off the async threads; panics on failure.
    pub(crate) async fn run(&self, args: &[&str]) -> String {
        let mut c = self.command(args);
        let what = args.join(" ");
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .expect("compose thread")
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.cmd));
        assert!(
            out.status.success(),
            "docker-compose {what} failed: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `host:port` a service's port is published on (127.0.0.1 only).
    pub(crate) async fn port(&self, service: &str, port: u16) -> String {
        let out = self.run(&["port", service, &port.to_string()]).await;
        let addr = out.trim().to_owned();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "{service}:{port} must be published on loopback only, got {addr:?}"
        );
        addr
    }

    pub(crate) async fn container(&self, service: &str) -> String {
        let id = self.run(&["ps", "-q", service]).await.trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self
                .command(&["logs", "--no-color", "--tail", "40"])
                .output()
            {
                eprintln!("--- docker-compose logs ---\n{}", text(&out));
            }
        }
        match self
            .command(&["down", "-v", "--remove-orphans", "-t", "5"])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("docker-compose down failed: {}", text(&out)),
            Err(e) => eprintln!("docker-compose down failed: {e}"),
        }
    }
}

/// Removes stacks of earlier runs whose test process is gone (a run killed
/// before its guard could clean up).
pub(crate) fn remove_stale_stacks(cmd: &[String]) {
    let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ])
        .output()
    else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for project in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = project.strip_prefix("sluiceit") else {
            continue;
        };
        let pid = rest.split('t').next().unwrap_or("");
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if seen.insert(project.to_owned()) {
            eprintln!("removing stale compose project {project}");
            drop(Stack {
                project: project.to_owned(),
                cmd: cmd.to_vec(),
            });
        }
    }
}

pub(crate) fn require_images() {
    for (var, default) in IMAGES {
        let image = std::env::var(var).unwrap_or_else(|_| default.to_owned());
        let ok = Command::new("docker")
            .args(["image", "inspect", "-f", "{{.Id}}", &image])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "image {image} is missing: build the images with deploy/images/build-all.sh \
             (tests/setup.sh does), or set {var}"
        );
    }
}

/// HAProxy's view of the edges (`/stats;csv`): server name -> status in
/// the `edges` backend (requests), `streams/<name>` -> status in the
/// `streams` backend (new streams, checked on `/capacity`).
async fn lb_status(http: &reqwest::Client, stats: &str) -> HashMap<String, String> {
    let Ok(resp) = http.get(format!("http://{stats}/stats;csv")).send().await else {
        return HashMap::new();
    };
    let body = resp.text().await.unwrap_or_default();
    let mut lines = body.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(px), Some(sv), Some(st)) = (col("pxname"), col("svname"), col("status")) else {
        return HashMap::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f.len() > sv)
        .filter_map(|f| match f[px] {
            "edges" => Some((f[sv].to_owned(), f[st].to_owned())),
            "streams" => Some((format!("streams/{}", f[sv]), f[st].to_owned())),
            _ => None,
        })
        .collect()
}

/// Waits until HAProxy reports every edge UP in both backends.
pub(crate) async fn wait_all_up(http: &reqwest::Client, stats: &str, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let s = lb_status(http, stats).await;
        let up = |k: &str| s.get(k).map(String::as_str) == Some("UP");
        if EDGES.iter().all(|e| up(e) && up(&format!("streams/{e}"))) {
            return;
        }
        assert!(Instant::now() < end, "edges not all UP in HAProxy: {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which edge serves each client right now (from HAProxy's `X-Served-By`).
type Board = Arc<Mutex<HashMap<String, String>>>;

#[derive(Debug, Default)]
struct Report {
    name: String,
    log: DeliveryLog,
    /// The edge of each successful connection, in order.
    servers: Vec<String>,
    /// Connection attempts answered with 5xx or an SSE refusal (retried).
    refusals: u32,
}

/// An SSE client that follows `task` through the LB until its final event,
/// reconnecting with `Last-Event-ID` whenever its stream ends early.
async fn sse_client(name: String, lb: String, task: String, board: Board) -> Report {
    let mut r = Report {
        name: name.clone(),
        ..Report::default()
    };
    let url = format!("http://{lb}/v1/tasks/{task}/events?after=0");
    let end = Instant::now() + CLIENT_DEADLINE;
    'connect: loop {
        assert!(Instant::now() < end, "{name}: task not finished in time");
        let mut c = SseClient::connect(&url, r.log.last()).await;
        match c.status {
            // An edge's refusal of an event stream: 200, a `retry:`, the end.
            200 if c.refused().is_some() => {
                r.refusals += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            200 => {}
            204 => break,
            500..=599 => {
                r.refusals += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            s => panic!("{name}: unexpected status {s}: {:?}", c.body),
        }
        let server = c
            .headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        board
            .lock()
            .expect("board")
            .insert(name.clone(), server.clone());
        r.servers.push(server);
        while let Some(f) = c.next_frame(FRAME_TIMEOUT).await {
            if !f.is_event() {
                continue;
            }
            let seq = f.seq().expect("event id");
            if f.event.as_deref() == Some("sluice.reset") {
                r.log.reset(seq);
            } else {
                r.log.event(seq);
            }
            if f.json()["final"] == json!(true) {
                break 'connect;
            }
        }
        board.lock().expect("board").remove(&name);
    }
    board.lock().expect("board").remove(&name);
    r
}

/// The same over WebSocket, resuming with `?after=N`.
async fn ws_client(name: String, lb: String, task: String, board: Board) -> Report {
    let mut r = Report {
        name: name.clone(),
        ..Report::default()
    };
    let end = Instant::now() + CLIENT_DEADLINE;
    'connect: loop {
        assert!(Instant::now() < end, "{name}: task not finished in time");
        let after = r.log.last().unwrap_or(0);
        let url = format!("ws://{lb}/v1/tasks/{task}/ws?after={after}");
        let mut c = match WsClient::connect(&url).await {
            Ok(c) => c,
            Err(204) => break,
            Err(s) if s >= 500 => {
                r.refusals += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(s) => panic!("{name}: upgrade refused with {s}"),
        };
        board
            .lock()
            .expect("board")
            .insert(name.clone(), "ws".into());
        r.servers.push("ws".into());
        // Until the socket closes (drain: 1012; a killed edge: no code).
        while let WsItem::Envelope(env) = c.next(FRAME_TIMEOUT).await {
            let seq = env["seq"].as_u64().expect("envelope seq");
            if env["type"] == json!("sluice.reset") {
                r.log.reset(seq);
            } else {
                r.log.event(seq);
            }
            if env["final"] == json!(true) {
                break 'connect;
            }
        }
        board.lock().expect("board").remove(&name);
    }
    board.lock().expect("board").remove(&name);
    r
}

/// Publishes round-robin over `tasks` every `pace` until `count` events per
/// task were published or `stop` turns true, then a final event per task.
/// Reports the events published per task on `progress`; returns the final
/// seq (the same for every task).
async fn produce(
    publisher: Publisher,
    tasks: Vec<String>,
    count: Option<u64>,
    pace: Duration,
    mut stop: watch::Receiver<bool>,
    progress: watch::Sender<u64>,
) -> u64 {
    let mut n = 0u64;
    loop {
        if count.is_some_and(|c| n >= c) || *stop.borrow_and_update() {
            break;
        }
        n += 1;
        for t in &tasks {
            let seq = publisher
                .publish(t, "progress", &json!({"i": n}))
                .await
                .expect("publish to the stack's Redis");
            assert_eq!(seq, n);
        }
        let _ = progress.send(n);
        tokio::time::sleep(pace).await;
    }
    for t in &tasks {
        let opts = PublishOptions {
            is_final: true,
            idempotency_key: None,
        };
        let p = publisher
            .publish_with(t, "done", &json!({"events": n}), opts)
            .await
            .expect("final publish");
        assert_eq!(p.seq, n + 1);
    }
    n + 1
}

/// Starts 3 SSE clients and 1 WebSocket client per task; waits until all
/// are connected.
async fn start_clients(
    lb: &str,
    tasks: &[String],
    board: &Board,
    phase: &str,
) -> Vec<tokio::task::JoinHandle<Report>> {
    let mut clients = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        for k in 0..3 {
            let name = format!("{phase}-sse-{ti}-{k}");
            clients.push(tokio::spawn(sse_client(
                name,
                lb.to_owned(),
                task.clone(),
                board.clone(),
            )));
        }
        let name = format!("{phase}-ws-{ti}");
        clients.push(tokio::spawn(ws_client(
            name,
            lb.to_owned(),
            task.clone(),
            board.clone(),
        )));
    }
    let want = clients.len();
    let end = Instant::now() + Duration::from_secs(20);
    while board.lock().expect("board").len() < want {
        assert!(Instant::now() < end, "clients did not all connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clients
}

async fn collect(clients: Vec<tokio::task::JoinHandle<Report>>, last: u64) -> Vec<Report> {
    let mut reports = Vec::new();
    for c in clients {
        let r = tokio::time::timeout(CLIENT_DEADLINE, c)
            .await
            .expect("client finishes")
            .expect("client task");
        let v = r.log.check(1, last);
        println!(
            "  {}: {v}; connections {} via {:?}; refusals retried {}",
            r.name,
            r.servers.len(),
            r.servers,
            r.refusals
        );
        assert!(v.is_exact(), "{}: not exactly once: {v:?}", r.name);
        reports.push(r);
    }
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_stack_survives_kill_rolling_restart_and_a_full_fleet() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let t0 = Instant::now();
    let cmd = compose_cmd();
    require_images();
    remove_stale_stacks(&cmd);
    let stack = Stack::unique(cmd);
    stack.run(&["up", "-d", "--no-build"]).await;
    let lb = stack.port("haproxy", 8080).await;
    let admin = stack.port("haproxy", 9090).await;
    let stats = stack.port("haproxy", 8404).await;
    let redis = stack.port("redis", 6379).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    wait_all_up(&http, &stats, Duration::from_secs(60)).await;
    println!("stack up in {:?} (LB {lb})", t0.elapsed());

    // Through the LB: readiness, and the demo producer's tasks.
    let r = http
        .get(format!("http://{lb}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http
            .get(format!("http://{lb}/v1/tasks/demo-1-1"))
            .send()
            .await
            .expect("snapshot");
        if r.status() == 200 {
            let s: serde_json::Value = r.json().await.expect("snapshot JSON");
            assert!(s["seq"].as_u64().unwrap_or(0) >= 1, "{s}");
            break;
        }
        assert!(Instant::now() < end, "the demo producer published nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    operator_surface_only_on_the_admin_port(&http, &lb, &admin).await;

    let publisher = Publisher::connect(&format!("redis://{redis}"))
        .await
        .expect("publisher on the stack's Redis");
    let board: Board = Arc::default();

    // --- 1. kill an edge mid-stream -------------------------------------
    let phase = Instant::now();
    let tasks: Vec<String> = (0..2).map(|i| unique_task(&format!("kill{i}"))).collect();
    let clients = start_clients(&lb, &tasks, &board, "kill").await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (prog_tx, mut prog_rx) = watch::channel(0u64);
    let producer = tokio::spawn(produce(
        publisher.clone(),
        tasks.clone(),
        Some(300),
        Duration::from_millis(10),
        stop_rx,
        prog_tx,
    ));
    prog_rx
        .wait_for(|n| *n >= 100)
        .await
        .expect("producer progress");
    // The victim: the edge serving the most SSE clients.
    let (victim, on_victim) = {
        let b = board.lock().expect("board");
        let mut count: HashMap<&str, Vec<String>> = HashMap::new();
        for (client, server) in b.iter() {
            if server.starts_with("edge") {
                count.entry(server).or_default().push(client.clone());
            }
        }
        let (v, c) = count
            .into_iter()
            .max_by_key(|(_, c)| c.len())
            .expect("SSE clients are connected");
        (v.to_owned(), c)
    };
    let id = stack.container(&victim).await;
    let out = Command::new("docker")
        .args(["kill", &id])
        .output()
        .expect("docker kill");
    assert!(out.status.success(), "docker kill: {}", text(&out));
    println!("killed {victim} (serving {on_victim:?})");
    let last = producer.await.expect("producer");
    let reports = collect(clients, last).await;
    for r in reports.iter().filter(|r| on_victim.contains(&r.name)) {
        assert!(
            r.servers.len() >= 2,
            "{} was on {victim} and must have reconnected",
            r.name
        );
        assert!(
            !r.servers[1..].contains(&victim),
            "{} reconnected to the killed {victim}: {:?}",
            r.name,
            r.servers
        );
    }
    drop(stop_tx);
    println!(
        "kill phase: exact for every client in {:?}",
        phase.elapsed()
    );
    stack.run(&["start", &victim]).await;
    wait_all_up(&http, &stats, Duration::from_secs(30)).await;

    // --- 2. rolling restart with drain ----------------------------------
    let phase = Instant::now();
    let tasks: Vec<String> = (0..2).map(|i| unique_task(&format!("roll{i}"))).collect();
    let clients = start_clients(&lb, &tasks, &board, "roll").await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (prog_tx, mut prog_rx) = watch::channel(0u64);
    let producer = tokio::spawn(produce(
        publisher.clone(),
        tasks.clone(),
        None,
        Duration::from_millis(20),
        stop_rx,
        prog_tx,
    ));
    prog_rx.wait_for(|n| *n >= 20).await.expect("progress");
    for edge in EDGES {
        let id = stack.container(edge).await;
        let t = Instant::now();
        stack.run(&["stop", "-t", "30", edge]).await;
        let stopped = t.elapsed();
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.ExitCode}}", &id])
            .output()
            .expect("docker inspect");
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(code, "0", "{edge} must drain and exit 0 on SIGTERM");
        stack.run(&["start", edge]).await;
        wait_all_up(&http, &stats, Duration::from_secs(30)).await;
        println!(
            "  {edge}: drained and stopped in {stopped:?}, back UP after {:?}",
            t.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).expect("stop producer");
    let last = producer.await.expect("producer");
    let reports = collect(clients, last).await;
    for r in &reports {
        assert!(
            r.servers.len() >= 2,
            "{}: every edge restarted, so it must have been moved: {:?}",
            r.name,
            r.servers
        );
    }
    println!(
        "rolling restart phase: {} events per task, exact for every client, in {:?}",
        last,
        phase.elapsed()
    );

    // --- 3. every edge full ---------------------------------------------
    let phase = Instant::now();
    full_fleet_keeps_serving(&http, &lb, &stats).await;
    println!("full fleet phase in {:?}", phase.elapsed());
    drop(stack);
    println!("compose system test done in {:?}", t0.elapsed());
}

/// The dashboard and `/metrics` answer on the admin port (HAProxy's `admin`
/// frontend to the edges' SLUICE_ADMIN_LISTEN) and are 404 through the
/// public one.
async fn operator_surface_only_on_the_admin_port(http: &reqwest::Client, lb: &str, admin: &str) {
    for path in ["/", "/metrics"] {
        let r = http
            .get(format!("http://{lb}{path}"))
            .send()
            .await
            .expect("public");
        assert_eq!(r.status(), 404, "{path} through the public port");
        let body: serde_json::Value = r.json().await.expect("JSON 404");
        assert_eq!(body["error"], "not_found");
    }
    // The admin backend's first checks may still be pending.
    let end = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        match http.get(format!("http://{admin}/metrics")).send().await {
            Ok(r) if r.status() == 200 => break r.text().await.expect("metrics text"),
            other => {
                assert!(Instant::now() < end, "admin port: {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(metrics.contains("sluice_edge_connections"), "{metrics}");
    let page = http
        .get(format!("http://{admin}/"))
        .send()
        .await
        .expect("dashboard");
    assert_eq!(page.status(), 200);
}

/// Waits until HAProxy's view satisfies `ok`.
async fn wait_lb(
    http: &reqwest::Client,
    stats: &str,
    what: &str,
    deadline: Duration,
    ok: impl Fn(&HashMap<String, String>) -> bool,
) {
    let end = Instant::now() + deadline;
    loop {
        let s = lb_status(http, stats).await;
        if ok(&s) {
            return;
        }
        assert!(Instant::now() < end, "{what}: HAProxy sees {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Phase 3 (see the module documentation).
async fn full_fleet_keeps_serving(http: &reqwest::Client, lb: &str, stats: &str) {
    const T: Duration = Duration::from_secs(10);
    let task = unique_task("full");
    let events = format!("http://{lb}/v1/tasks/{task}/events");
    let publish = |i: u64| {
        http.post(&events)
            .bearer_auth(PUBLISH_KEY)
            .json(&json!({"type": "progress", "data": {"i": i}}))
            .send()
    };
    let r = publish(1).await.expect("publish");
    assert_eq!(r.status(), 201, "{:?}", r.text().await);

    // Fill every edge. HAProxy balances by its own connection count; an
    // edge still counting a stream of the earlier phases answers 503 for a
    // moment, retried here.
    let capacity = EDGES.len() * MAX_STREAMS_PER_EDGE;
    let mut held = Vec::with_capacity(capacity);
    let end = Instant::now() + Duration::from_secs(30);
    while held.len() < capacity {
        assert!(
            Instant::now() < end,
            "held only {} of {capacity} streams",
            held.len()
        );
        let c = tokio::time::timeout(T, SseClient::connect(&events, None))
            .await
            .expect("a stream is answered, not left hanging");
        match c.status {
            200 => held.push(c),
            503 => tokio::time::sleep(Duration::from_millis(200)).await,
            s => panic!("stream {}: status {s}: {:?}", held.len(), c.body),
        }
    }
    let up = |s: &HashMap<String, String>, k: &str| s.get(k).map(String::as_str) == Some("UP");
    wait_lb(
        http,
        stats,
        "every edge out of `streams`, all still in `edges`",
        Duration::from_secs(15),
        |s| {
            EDGES.iter().all(|e| {
                up(s, e) && s.get(&format!("streams/{e}")).map(String::as_str) == Some("DOWN")
            })
        },
    )
    .await;
    println!("  {capacity} streams held: every edge full");

    // Readiness, publishes, snapshots and history still go through.
    let r = http
        .get(format!("http://{lb}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    for i in 2..=3 {
        let r = publish(i).await.expect("publish to a full fleet");
        assert_eq!(r.status(), 201, "publish {i}: {:?}", r.text().await);
    }
    let snap: serde_json::Value = {
        let r = http
            .get(format!("http://{lb}/v1/tasks/{task}"))
            .send()
            .await
            .expect("snapshot");
        assert_eq!(r.status(), 200);
        r.json().await.expect("snapshot JSON")
    };
    assert_eq!(snap["seq"], json!(3), "{snap}");
    let history: Vec<serde_json::Value> = {
        let r = http
            .get(format!("http://{lb}/v1/tasks/{task}/history?after=0"))
            .send()
            .await
            .expect("history");
        assert_eq!(r.status(), 200);
        r.json().await.expect("history JSON")
    };
    let seqs: Vec<u64> = history.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The held streams are served: snapshot (1), then 2 and 3 live.
    for c in &mut held {
        let mut last = 0;
        while last < 3 {
            last = c
                .next_event(T)
                .await
                .and_then(|f| f.seq())
                .expect("an event on a held stream");
        }
    }

    // A new stream is refused, not left hanging: HAProxy has no edge with
    // room for it in `streams`, so it goes to an edge anyway, which refuses
    // it in the shape its client survives.
    let mut codes = Vec::new();
    for _ in 0..3 {
        let r = tokio::time::timeout(T, http.get(&events).send())
            .await
            .expect("refused, not left hanging")
            .expect("response");
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: serde_json::Value = r.json().await.expect("503 with a JSON body");
        assert_eq!(
            body["error"], "too_many_connections",
            "an edge's refusal: {body}"
        );
        codes.push(body["error"].as_str().unwrap_or_default().to_owned());
    }
    // An EventSource (Accept: text/event-stream) gets the edge's 200 +
    // `retry:` refusal, which it survives (HAProxy's own 503 would end it).
    let es = tokio::time::timeout(T, SseClient::connect(&events, None))
        .await
        .expect("refused, not left hanging");
    assert_eq!(es.status, 200, "{:?}", es.body);
    assert_eq!(es.refused(), Some("too_many_connections"));
    println!("  full: publish 201, snapshot and history 200, new streams refused: {codes:?}");
    let ws = format!("ws://{lb}/v1/tasks/{task}/ws");
    let refused = tokio::time::timeout(T, WsClient::connect(&ws))
        .await
        .expect("refused, not left hanging");
    assert_eq!(refused.err(), Some(503));

    // Released: the edges take streams again.
    drop(held);
    wait_all_up(http, stats, Duration::from_secs(30)).await;
    let mut c = tokio::time::timeout(T, SseClient::connect(&events, None))
        .await
        .expect("answered");
    assert_eq!(c.status, 200, "{:?}", c.body);
    assert_eq!(c.next_event(T).await.and_then(|f| f.seq()), Some(3));
}
