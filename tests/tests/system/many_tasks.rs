//! Many tasks on one connection, in a real headless Chromium, through the
//! compose stack's HAProxy while edges die (deploy/compose.yaml; the stack
//! helpers are compose.rs's). One stack and one browser serve both parts:
//!
//! 1. **One EventSource, 50 tasks** (`/v1/events?task=..`, HTTP/1.1): the
//!    page listens for the event types (`progress`, `done`, `sluice.reset`;
//!    `onmessage` never fires on named events) and records every task's
//!    seqs. The edge serving the stream is killed (`docker kill`) twice
//!    while the producer publishes; the browser reconnects by itself (same
//!    URL, its own `Last-Event-ID`: the cursor of every task's position)
//!    through HAProxy to another edge. Every task gets every seq exactly
//!    once, in order, no reset; after the last final event the browser's
//!    reconnect gets 204 and the EventSource ends CLOSED.
//! 2. **One WebSocket, 50 tasks** (`/v1/ws`): the page subscribes to every
//!    task, unsubscribes from some and subscribes them again from their
//!    last `pos` while events flow, and whenever the socket closes
//!    reconnects and subscribes every unfinished task from its last `pos`.
//!    The serving edge is killed (abrupt close), then the next one is
//!    stopped with SIGTERM (it drains: close 1012). Every task gets every
//!    seq exactly once, in order, ending with its final event.
//! 3. **HTTP/2 at the load balancer** (the TLS bind, ALPN `h2`): the page,
//!    loaded over HTTP/2, opens twelve EventSources at once, one task each,
//!    and fetches a snapshot beside them. Over HTTP/1.1 Chromium would hold
//!    every stream past the sixth (and the fetch) until one closed; over
//!    HTTP/2 all of them share one connection and all are live at once.
//!
//! The pages are served by the edges themselves through HAProxy (`/healthz`,
//! the scripts injected), so the EventSource and the WebSocket are
//! same-origin with the load balancer (the edge has no CORS). The producer
//! publishes to the stack's Redis in rounds (one event per task each),
//! gated by the test, so every step waits on what the browser received,
//! never on time. Which edge serves the page's stream is HAProxy's session
//! count (`scur`) in its `streams` backend: the page holds the only stream.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::Client;
use serde_json::{json, Value};
use sluice_broker::{PublishOptions, Publisher};
use sluice_tests::{unique_task, DeliveryLog};
use tokio::sync::watch;

use crate::browser::{js, Driver, T};
use crate::compose::{
    compose_cmd, remove_stale_stacks, require_images, text, wait_all_up, Stack, EDGES,
};

/// Tasks followed by the one connection.
const TASKS: usize = 50;
/// Events per task before its final event (seq `ROUNDS + 1`).
const ROUNDS: u64 = 20;
/// Between two rounds of the producer (pacing only: the test gates it).
const PACE: Duration = Duration::from_millis(50);
/// HAProxy's health checks (compose's haproxy.cfg) take an edge back in
/// within a few seconds; a browser's reconnect waits up to 5 s (`retry:`).
const UP: Duration = Duration::from_secs(60);

/// Publishes round after round (one `progress` event per task, seq `n` in
/// round `n`), each round only once `allow` reached it, `pace` apart; then,
/// once `allow` passed `rounds`, a final `done` event per task. Returns the
/// final seq.
async fn produce(
    publisher: Publisher,
    tasks: Vec<String>,
    rounds: u64,
    mut allow: watch::Receiver<u64>,
) -> u64 {
    for n in 1..=rounds {
        allow.wait_for(|a| *a >= n).await.expect("producer gate");
        for t in &tasks {
            let seq = publisher
                .publish(t, "progress", &json!({ "i": n }))
                .await
                .expect("publish to the stack's Redis");
            assert_eq!(seq, n, "{t}: seq of round {n}");
        }
        tokio::time::sleep(PACE).await;
    }
    allow
        .wait_for(|a| *a > rounds)
        .await
        .expect("producer gate");
    for t in &tasks {
        let opts = PublishOptions {
            is_final: true,
            idempotency_key: None,
        };
        let p = publisher
            .publish_with(t, "done", &json!({ "events": rounds }), opts)
            .await
            .expect("final publish");
        assert_eq!(p.seq, rounds + 1);
    }
    rounds + 1
}

/// HAProxy's current sessions (`scur`) per edge in its `streams` backend.
async fn stream_sessions(http: &reqwest::Client, stats: &str) -> HashMap<String, u64> {
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
    let (Some(px), Some(sv), Some(scur)) = (col("pxname"), col("svname"), col("scur")) else {
        return HashMap::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > px.max(sv).max(scur) && f[px] == "streams")
        .filter(|f| EDGES.contains(&f[sv]))
        .map(|f| (f[sv].to_owned(), f[scur].parse().unwrap_or(0)))
        .collect()
}

/// The edge serving the page's one stream: waits until exactly one edge
/// holds a session in `streams`.
async fn serving_edge(http: &reqwest::Client, stats: &str) -> String {
    let end = Instant::now() + UP;
    loop {
        let s = stream_sessions(http, stats).await;
        let busy: Vec<&String> = s.iter().filter(|(_, n)| **n > 0).map(|(e, _)| e).collect();
        if let [one] = busy[..] {
            return one.clone();
        }
        assert!(
            Instant::now() < end,
            "no single edge serves the page's stream: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `docker kill`s a service's container (SIGKILL: its connections die
/// with it; the container stays stopped until started again).
async fn kill(stack: &Stack, service: &str) {
    let id = stack.container(service).await;
    let out =
        tokio::task::spawn_blocking(move || Command::new("docker").args(["kill", &id]).output())
            .await
            .expect("docker thread")
            .expect("docker kill");
    assert!(out.status.success(), "docker kill: {}", text(&out));
}

/// Polls `expr` in the page until `done` holds for its value; `broken`
/// fails at once with its reason (a state the page never leaves).
async fn wait_page(
    client: &Client,
    what: &str,
    expr: &str,
    done: impl Fn(&Value) -> bool,
    broken: impl Fn(&Value) -> Option<String>,
) -> Value {
    let end = Instant::now() + T;
    loop {
        let v = js(client, expr).await;
        if let Some(why) = broken(&v) {
            panic!("{what}: {why}; page state {v}");
        }
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; last value {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Every task got exactly `1..=last` in order, the last one final, and
/// nothing else (`tasks`: the page's `{task: {seqs, final}}`).
fn assert_exact(transport: &str, names: &[String], tasks: &Value, last: u64) {
    let want: Vec<u64> = (1..=last).collect();
    for name in names {
        let t = &tasks[name];
        let seqs: Vec<u64> = serde_json::from_value(t["seqs"].clone())
            .unwrap_or_else(|e| panic!("{transport} {name}: seqs {e}: {t}"));
        let mut log = DeliveryLog::default();
        for s in &seqs {
            log.event(*s);
        }
        let v = log.check(1, last);
        assert!(
            v.is_exact() && seqs == want,
            "{transport} {name}: not exactly 1..={last} in order: {v:?}; got {seqs:?}"
        );
        assert_eq!(t["final"], json!(true), "{transport} {name}: no final: {t}");
        assert_eq!(
            t["finalSeq"],
            json!(last),
            "{transport} {name}: final event at the wrong seq: {t}"
        );
    }
}

/// Opens the page's EventSource on `url` following `names`, recording per
/// task every seq and whether its final event came. `window.__sseSum()`
/// sums it up for polling.
fn sse_page(url: &str, names: &[String]) -> String {
    let names = json!(names);
    format!(
        r#"(function() {{
    const names = {names};
    const st = {{ opens: 0, errors: 0, states: [], resets: [], strays: [], tasks: {{}} }};
    for (const t of names) st.tasks[t] = {{ seqs: [], final: false, finalSeq: null }};
    window.__sse = st;
    const es = new EventSource({url:?});
    st.es = es;
    es.addEventListener('open', () => st.opens++);
    es.addEventListener('error', () => {{ st.errors++; st.states.push(es.readyState); }});
    const on = ev => {{
        let d;
        try {{ d = JSON.parse(ev.data); }} catch (e) {{
            st.strays.push(ev.type + ': ' + String(ev.data).slice(0, 200));
            return;
        }}
        if (ev.type === 'sluice.reset') {{
            st.resets.push({{ task: d.task, seq: d.seq, id: ev.lastEventId.slice(0, 80) }});
            return;
        }}
        const t = st.tasks[d.task];
        if (!t || d.type !== ev.type) {{
            st.strays.push(ev.type + ': ' + String(ev.data).slice(0, 200));
            return;
        }}
        t.seqs.push(d.seq);
        if (d.final) {{ t.final = true; t.finalSeq = d.seq; }}
    }};
    for (const ty of ['progress', 'done', 'sluice.reset']) es.addEventListener(ty, on);
    es.onmessage = ev => st.strays.push('message: ' + String(ev.data).slice(0, 200));
    window.__sseSum = () => {{
        let min = Infinity, finals = 0;
        for (const t of names) {{
            const s = st.tasks[t].seqs;
            min = Math.min(min, s.length ? s[s.length - 1] : 0);
            if (st.tasks[t].final) finals++;
        }}
        return {{ state: es.readyState, opens: st.opens, errors: st.errors,
                  resets: st.resets, strays: st.strays, min: min, finals: finals }};
    }};
    return names.length;
}})()"#
    )
}

/// Opens the page's WebSocket on `/v1/ws` and follows `names` on it:
/// subscribes every unfinished task (from its last `pos`, or after 0) on
/// every open, reconnects whenever the socket closes until every task is
/// final, then closes it. `window.__resub(tasks)` unsubscribes from tasks
/// and, once answered, subscribes them again from their last `pos`.
fn ws_page(names: &[String]) -> String {
    let names = json!(names);
    format!(
        r#"(function() {{
    const names = {names};
    const url = 'ws://' + location.host + '/v1/ws';
    const st = {{ conns: 0, closes: [], subscribed: 0, finishedAnswers: [], resubs: 0,
                  errors: [], resets: [], strays: [], done: false, tasks: {{}} }};
    for (const t of names) st.tasks[t] = {{ seqs: [], pos: null, final: false, finalSeq: null,
                                            resub: false, after: [] }};
    window.__ws = st;
    const allFinal = () => names.every(t => st.tasks[t].final);
    const subscribe = (ws, t) => {{
        const after = st.tasks[t].pos === null ? 0 : st.tasks[t].pos;
        st.tasks[t].after.push(after);
        ws.send(JSON.stringify({{ op: 'subscribe', task: t, after: after }}));
    }};
    function connect() {{
        const ws = new WebSocket(url);
        st.ws = ws;
        ws.onopen = () => {{
            st.conns++;
            for (const t of names) {{
                st.tasks[t].resub = false;
                if (!st.tasks[t].final) subscribe(ws, t);
            }}
        }};
        ws.onmessage = ev => {{
            let m;
            try {{ m = JSON.parse(ev.data); }} catch (e) {{
                st.strays.push(String(ev.data).slice(0, 200));
                return;
            }}
            if (m.op === 'subscribed') {{
                st.subscribed++;
                if (m.state !== 'streaming') st.finishedAnswers.push(m);
                return;
            }}
            if (m.op === 'unsubscribed') {{
                const t = st.tasks[m.task];
                if (t && t.resub) {{ t.resub = false; st.resubs++; subscribe(ws, m.task); }}
                return;
            }}
            if (m.op) {{ st.errors.push(m); return; }}
            const t = st.tasks[m.task];
            if (!t) {{ st.strays.push(String(ev.data).slice(0, 200)); return; }}
            if (m.type === 'sluice.reset') {{ st.resets.push({{ task: m.task, seq: m.seq, pos: m.pos }}); }}
            else if (t.final) {{ st.strays.push('after final: ' + String(ev.data).slice(0, 200)); }}
            else t.seqs.push(m.seq);
            t.pos = m.pos;
            if (m.final) {{ t.final = true; t.finalSeq = m.seq; }}
            if (allFinal() && !st.done) {{ st.done = true; ws.close(1000, 'all tasks final'); }}
        }};
        ws.onclose = ev => {{
            st.closes.push(ev.code);
            if (!st.done) setTimeout(connect, 100 + Math.random() * 400);
        }};
    }}
    window.__resub = tasks => {{
        if (!st.ws || st.ws.readyState !== 1) return 0;
        for (const t of tasks) {{
            st.tasks[t].resub = true;
            st.ws.send(JSON.stringify({{ op: 'unsubscribe', task: t }}));
        }}
        return tasks.length;
    }};
    window.__wsSum = () => {{
        let min = Infinity, finals = 0;
        for (const t of names) {{
            const s = st.tasks[t].seqs;
            min = Math.min(min, s.length ? s[s.length - 1] : 0);
            if (st.tasks[t].final) finals++;
        }}
        return {{ open: st.ws ? st.ws.readyState === 1 : false, conns: st.conns,
                  closes: st.closes, subscribed: st.subscribed, resubs: st.resubs,
                  finishedAnswers: st.finishedAnswers, errors: st.errors, resets: st.resets,
                  strays: st.strays, done: st.done, min: min, finals: finals }};
    }};
    connect();
    return names.length;
}})()"#
    )
}

/// What the page must never show: resets, frames it cannot place, error
/// answers, and (SSE) an EventSource closed for good before every task
/// ended.
fn sse_broken(v: &Value) -> Option<String> {
    if v["resets"].as_array().is_some_and(|r| !r.is_empty()) {
        return Some(format!("sluice.reset received: {}", v["resets"]));
    }
    if v["strays"].as_array().is_some_and(|r| !r.is_empty()) {
        return Some(format!("frames the page cannot place: {}", v["strays"]));
    }
    if v["state"] == json!(2) && num(v, "finals") < TASKS as u64 {
        return Some("the EventSource closed for good before every task ended".into());
    }
    None
}

fn ws_broken(v: &Value) -> Option<String> {
    for key in ["resets", "strays", "errors", "finishedAnswers"] {
        if v[key].as_array().is_some_and(|r| !r.is_empty()) {
            return Some(format!("{key}: {}", v[key]));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_on_one_connection_in_chromium_while_edges_die() {
    sluice_tests::init_logs();
    let _one = sluice_tests::chaos::exclusive().await;
    let t0 = Instant::now();
    let cmd = compose_cmd();
    require_images();
    remove_stale_stacks(&cmd);
    let stack = Stack::unique(cmd);
    // The stack and the browser start together.
    let (up, driver) = tokio::join!(stack.run(&["up", "-d", "--no-build"]), Driver::start());
    drop(up);
    let lb = stack.port("haproxy", 8080).await;
    let stats = stack.port("haproxy", 8404).await;
    let redis = stack.port("redis", 6379).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    wait_all_up(&http, &stats, UP).await;
    let publisher = Publisher::connect(&format!("redis://{redis}"))
        .await
        .expect("publisher on the stack's Redis");
    let client = driver.browser().await;
    println!("stack and browser up in {:?} (LB {lb})", t0.elapsed());

    // --- 1. one EventSource, 50 tasks, two edges killed under it ---------
    let phase = Instant::now();
    let names: Vec<String> = (0..TASKS)
        .map(|i| unique_task(&format!("mts{i}")))
        .collect();
    let query: Vec<String> = names.iter().map(|t| format!("task={t}")).collect();
    let url = format!("/v1/events?{}", query.join("&"));
    client
        .goto(&format!("http://{lb}/healthz"))
        .await
        .expect("open a page of the LB's origin");
    assert_eq!(js(&client, &sse_page(&url, &names)).await, json!(TASKS));
    const SUM: &str = "window.__sseSum()";
    // Open before anything is published: every task starts at seq 1.
    wait_page(
        &client,
        "the EventSource open",
        SUM,
        |v| num(v, "opens") >= 1,
        sse_broken,
    )
    .await;
    let (allow, gate) = watch::channel(0u64);
    let producer = tokio::spawn(produce(publisher.clone(), names.clone(), ROUNDS, gate));
    let min_at_least = |n: u64| move |v: &Value| num(v, "min") >= n;

    allow.send_replace(4);
    wait_page(&client, "every task live", SUM, min_at_least(2), sse_broken).await;
    let mut killed = Vec::new();
    for (kill_at, resumed_at) in [(10, 10), (16, 16)] {
        let victim = serving_edge(&http, &stats).await;
        let opens = num(&js(&client, SUM).await, "opens");
        // Rounds go on being published while the edge dies.
        allow.send_replace(kill_at);
        kill(&stack, &victim).await;
        let v = wait_page(
            &client,
            &format!("the stream resumed after killing {victim}"),
            SUM,
            |v| num(v, "opens") > opens && num(v, "min") >= resumed_at,
            sse_broken,
        )
        .await;
        println!(
            "  killed {victim} under the EventSource; resumed through the LB on {}: {v}",
            serving_edge(&http, &stats).await
        );
        killed.push(victim.clone());
        stack.run(&["start", &victim]).await;
        wait_all_up(&http, &stats, UP).await;
        allow.send_replace(resumed_at + 2);
        wait_page(
            &client,
            "live again",
            SUM,
            min_at_least(resumed_at + 2),
            sse_broken,
        )
        .await;
    }
    allow.send_replace(ROUNDS + 1);
    let last = producer.await.expect("producer");
    let v = wait_page(
        &client,
        "every task final and the EventSource CLOSED (204)",
        SUM,
        |v| num(v, "finals") == TASKS as u64 && v["state"] == json!(2),
        sse_broken,
    )
    .await;
    assert!(num(&v, "opens") >= 3, "two resumes: {v}");
    let tasks = js(&client, "window.__sse.tasks").await;
    assert_exact("SSE", &names, &tasks, last);
    println!(
        "SSE: {TASKS} tasks x {last} events exact on one EventSource, {} opens, edges killed {killed:?}, CLOSED at the end, in {:?}",
        num(&v, "opens"),
        phase.elapsed()
    );

    // --- 2. one WebSocket, 50 tasks: (un)subscribe, kill, drain -----------
    let phase = Instant::now();
    let names: Vec<String> = (0..TASKS)
        .map(|i| unique_task(&format!("mtw{i}")))
        .collect();
    client
        .goto(&format!("http://{lb}/healthz"))
        .await
        .expect("open a page of the LB's origin");
    assert_eq!(js(&client, &ws_page(&names)).await, json!(TASKS));
    const WS: &str = "window.__wsSum()";
    wait_page(
        &client,
        "every task subscribed",
        WS,
        |v| num(v, "subscribed") >= TASKS as u64,
        ws_broken,
    )
    .await;
    let (allow, gate) = watch::channel(0u64);
    let producer = tokio::spawn(produce(publisher.clone(), names.clone(), ROUNDS, gate));
    allow.send_replace(3);
    wait_page(&client, "every task live", WS, min_at_least(1), ws_broken).await;

    // Unsubscribe and subscribe again from the last pos while events flow.
    allow.send_replace(8);
    let some: Vec<&String> = names.iter().step_by(10).collect();
    let sent = js(&client, &format!("window.__resub({})", json!(some))).await;
    assert_eq!(sent, json!(some.len()));
    wait_page(
        &client,
        "resubscribed while events flow",
        WS,
        |v| num(v, "resubs") >= some.len() as u64 && num(v, "min") >= 8,
        ws_broken,
    )
    .await;

    // Kill the serving edge: an abrupt close; the page resubscribes.
    let victim = serving_edge(&http, &stats).await;
    allow.send_replace(13);
    kill(&stack, &victim).await;
    let v = wait_page(
        &client,
        &format!("resubscribed after killing {victim}"),
        WS,
        |v| num(v, "conns") >= 2 && v["open"] == json!(true) && num(v, "min") >= 13,
        ws_broken,
    )
    .await;
    let on = serving_edge(&http, &stats).await;
    println!(
        "  killed {victim} under the WebSocket; resumed through the LB on {on}: closes {}",
        v["closes"]
    );

    // Again on the new connection, then drain its edge: close 1012.
    let more: Vec<&String> = names.iter().skip(5).step_by(10).collect();
    allow.send_replace(15);
    let sent = js(&client, &format!("window.__resub({})", json!(more))).await;
    assert_eq!(sent, json!(more.len()));
    wait_page(
        &client,
        "resubscribed on the new connection",
        WS,
        |v| num(v, "resubs") >= (some.len() + more.len()) as u64 && num(v, "min") >= 15,
        ws_broken,
    )
    .await;
    allow.send_replace(18);
    let stop_args = ["stop", "-t", "30", on.as_str()];
    let stop = stack.run(&stop_args);
    let what = format!("resubscribed after {on} drained");
    let drained = wait_page(
        &client,
        &what,
        WS,
        |v| {
            v["closes"]
                .as_array()
                .is_some_and(|c| c.contains(&json!(1012)))
                && num(v, "conns") >= 3
                && v["open"] == json!(true)
                && num(v, "min") >= 18
        },
        ws_broken,
    );
    let (_, v) = tokio::join!(stop, drained);
    println!("  drained {on} under the WebSocket: closes {}", v["closes"]);
    allow.send_replace(ROUNDS + 1);
    let last = producer.await.expect("producer");
    let v = wait_page(
        &client,
        "every task final",
        WS,
        |v| num(v, "finals") == TASKS as u64 && v["done"] == json!(true),
        ws_broken,
    )
    .await;
    let tasks = js(&client, "window.__ws.tasks").await;
    assert_exact("WebSocket", &names, &tasks, last);
    println!(
        "WebSocket: {TASKS} tasks x {last} events exact on one page, {} connections (closes {}), {} resubscriptions, in {:?}",
        num(&v, "conns"),
        v["closes"],
        num(&v, "resubs"),
        phase.elapsed()
    );

    // --- 3. HTTP/2 at the load balancer: more streams than HTTP/1.1 allows
    let phase = Instant::now();
    let tls = stack.port("haproxy", 8443).await;
    client
        .goto(&format!("https://{tls}/healthz"))
        .await
        .expect("open a page of the TLS bind's origin");
    let proto = js(
        &client,
        "performance.getEntriesByType('navigation')[0].nextHopProtocol",
    )
    .await;
    assert_eq!(
        proto,
        json!("h2"),
        "HAProxy's TLS bind speaks HTTP/2 (ALPN)"
    );
    let names: Vec<String> = (0..H2_STREAMS)
        .map(|i| unique_task(&format!("h2s{i}")))
        .collect();
    for t in &names {
        for n in 1..=3u64 {
            let seq = publisher
                .publish(t, "progress", &json!({ "i": n }))
                .await
                .expect("publish to the stack's Redis");
            assert_eq!(seq, n);
        }
    }
    assert_eq!(
        js(&client, &h2_page(&names)).await,
        json!(H2_STREAMS),
        "one EventSource per task"
    );
    // All of them live at once, and a fetch beside them: over HTTP/1.1 the
    // browser would hold every stream past the sixth, and the fetch, until
    // a stream closed.
    let v = wait_page(
        &client,
        "every EventSource of the page live at once, and a fetch answered",
        H2_SUM,
        |v| num(v, "complete") == H2_STREAMS as u64 && v["fetched"] == json!(3),
        h2_broken,
    )
    .await;
    for t in &names {
        let opts = PublishOptions {
            is_final: true,
            idempotency_key: None,
        };
        let p = publisher
            .publish_with(t, "done", &json!({ "events": 3 }), opts)
            .await
            .expect("final publish");
        assert_eq!(p.seq, 4);
    }
    wait_page(
        &client,
        "every stream at its final event",
        H2_SUM,
        |v| num(v, "finals") == H2_STREAMS as u64,
        h2_broken,
    )
    .await;
    println!(
        "HTTP/2: {H2_STREAMS} EventSources and a fetch on one origin at once through HAProxy's h2 bind ({v}), in {:?}",
        phase.elapsed()
    );

    client.close().await.expect("close the browser");
    drop(driver);
    drop(stack);
    println!("many-tasks browser test done in {:?}", t0.elapsed());
}

/// EventSources opened at once by the HTTP/2 part: twice the six
/// connections a browser opens per origin over HTTP/1.1.
const H2_STREAMS: usize = 12;

/// One EventSource per task (`?after=0`), each recording its seqs, and a
/// snapshot fetch of the first task once they are all open.
fn h2_page(names: &[String]) -> String {
    format!(
        "(function() {{
            const names = {names};
            window.__h2 = names.map(name => {{
                const s = {{ name, seqs: [], final: false, errors: 0 }};
                s.es = new EventSource('/v1/tasks/' + name + '/events?after=0');
                const on = ev => {{
                    const env = JSON.parse(ev.data);
                    s.seqs.push(env.seq);
                    if (env.final) {{ s.final = true; s.es.close(); }}
                }};
                s.es.addEventListener('progress', on);
                s.es.addEventListener('done', on);
                s.es.addEventListener('error', () => s.errors++);
                return s;
            }});
            window.__h2fetched = null;
            fetch('/v1/tasks/' + names[0]).then(r => r.json())
                .then(j => {{ window.__h2fetched = j.seq; }})
                .catch(e => {{ window.__h2fetched = String(e); }});
            return window.__h2.length;
        }})()",
        names = json!(names)
    )
}

const H2_SUM: &str = "({ complete: window.__h2.filter(s => s.seqs.length >= 3 \
                      && s.seqs.slice(0, 3).join() === '1,2,3').length, \
                      finals: window.__h2.filter(s => s.final && s.seqs.join() === '1,2,3,4').length, \
                      errors: window.__h2.reduce((a, s) => a + s.errors, 0), \
                      bad: window.__h2.filter(s => s.seqs.join() !== \
                      [1, 2, 3, 4].slice(0, s.seqs.length).join()).map(s => s.name + ':' + s.seqs), \
                      fetched: window.__h2fetched })";

/// A stream that got a seq out of order or twice.
fn h2_broken(v: &Value) -> Option<String> {
    match v["bad"].as_array() {
        Some(bad) if !bad.is_empty() => Some(format!("streams out of order: {v}")),
        _ => None,
    }
}
