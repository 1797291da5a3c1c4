//! `/metrics` after a known workload: names, units and values.
//!
//! The exposition is parsed (OpenMetrics text, as prometheus-client writes
//! it) and every series is looked up by metric name and exact label set, so
//! `..._total 1` cannot be satisfied by `..._total 10`, nor `{op="publish"}`
//! by a series with more labels. The parser is a small strict one below:
//! `prometheus-parse` (the maintained Apache-2.0 crate) reads the Prometheus
//! 0.0.4 format with regexes, silently skips lines it cannot parse and splits
//! label values on `,`/`=`; `openmetrics-parser` is LGPL-3.0.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use sluice_tests::{unique_task, SseClient, TestEdge};

const T: Duration = Duration::from_secs(10);

type Labels = BTreeMap<String, String>;

/// A parsed exposition: samples by (name, exact label set), and each
/// family's `# TYPE` and `# UNIT`. Any line that does not parse, a sample
/// outside the family announced before it, a duplicate series, or a missing
/// `# EOF` fails the test.
#[derive(Debug, Default)]
struct Exposition {
    samples: BTreeMap<(String, Labels), f64>,
    types: BTreeMap<String, String>,
    units: BTreeMap<String, String>,
}

/// Suffixes a sample name may add to its family's name (OpenMetrics).
const SUFFIXES: [&str; 8] = [
    "", "_total", "_created", "_count", "_sum", "_bucket", "_gcount", "_gsum",
];

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        let mut family: Option<String> = None;
        let mut lines = text.lines();
        let mut eof = false;
        for line in lines.by_ref() {
            if line == "# EOF" {
                eof = true;
                break;
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let (kind, rest) = meta
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad metadata line {line:?}"));
                let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(is_name(name), "bad metric name in {line:?}");
                match kind {
                    "HELP" => {}
                    "TYPE" => {
                        assert!(
                            e.types.insert(name.into(), arg.into()).is_none(),
                            "second TYPE for {name}"
                        );
                        family = Some(name.into());
                    }
                    "UNIT" => {
                        assert!(
                            e.units.insert(name.into(), arg.into()).is_none(),
                            "second UNIT for {name}"
                        );
                    }
                    _ => panic!("unknown metadata line {line:?}"),
                }
                continue;
            }
            let (name, labels, value) =
                parse_sample(line).unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let fam = family
                .as_deref()
                .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
            assert!(
                SUFFIXES.iter().any(|s| name == format!("{fam}{s}")),
                "sample {name} outside its family {fam}"
            );
            assert!(
                e.samples.insert((name, labels), value).is_none(),
                "duplicate series {line:?}"
            );
        }
        assert!(eof, "no # EOF line");
        assert_eq!(lines.next(), None, "lines after # EOF");
        e
    }

    /// The value of the series `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = (name.to_owned(), label_set(labels));
        match self.samples.get(&key) {
            Some(v) => *v,
            None => panic!(
                "no series {name} with labels {:?}; series of that name: {:?}",
                key.1,
                self.series(name).collect::<Vec<_>>()
            ),
        }
    }

    /// Every series named `name`: its label set and value.
    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
    }
}

fn label_set(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{label="value",...} value`, with `\\`, `\"` and `\n` escapes in
/// label values; no timestamp (prometheus-client writes none).
fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(name_end);
    if !is_name(name) {
        return None;
    }
    let mut labels = Labels::new();
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                r = after;
                break;
            }
            let (key, after) = r.split_once("=\"")?;
            if !is_name(key) || key.contains(':') {
                return None;
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        _ => return None,
                    },
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(key.to_owned(), value).is_some() {
                return None;
            }
            r = &after[end + 1..];
            if let Some(after) = r.strip_prefix(',') {
                r = after;
            } else if !r.starts_with('}') {
                return None;
            }
        }
        rest = r;
    }
    let value = rest.strip_prefix(' ')?;
    if value.is_empty() || value.contains(' ') {
        return None;
    }
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v if v
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            v.parse().ok()?
        }
        _ => return None,
    };
    Some((name.to_owned(), labels, value))
}

/// The parser itself: exact names, exact label sets, exact values, and
/// refusal of what it does not understand.
#[test]
fn exposition_lookups_are_exact() {
    let text = "# HELP x_events Events.\n# TYPE x_events counter\nx_events_total 10\n\
                # TYPE x_conn gauge\nx_conn{transport=\"sse\"} 1\nx_conn{transport=\"sse\",extra=\"a\\\"b,c=d\"} 7\n\
                # TYPE x_lat histogram\n# UNIT x_lat seconds\nx_lat_sum 0.5\nx_lat_count 4\nx_lat_bucket{le=\"+Inf\"} 4\n# EOF\n";
    let e = Exposition::parse(text);
    assert_eq!(e.value("x_events_total", &[]), 10.0);
    assert_ne!(e.value("x_events_total", &[]), 1.0);
    assert_eq!(e.value("x_conn", &[("transport", "sse")]), 1.0);
    assert_eq!(
        e.value("x_conn", &[("extra", "a\"b,c=d"), ("transport", "sse")]),
        7.0
    );
    assert_eq!(e.value("x_lat_bucket", &[("le", "+Inf")]), 4.0);
    assert_eq!(e.types.get("x_lat").map(String::as_str), Some("histogram"));
    assert_eq!(e.units.get("x_lat").map(String::as_str), Some("seconds"));
    assert_eq!(e.series("x_conn").count(), 2);
    // A prefix of a name, or of a label set, is not the series.
    for (name, labels) in [
        ("x_events", &[][..]),
        ("x_conn", &[][..]),
        ("x_conn", &[("extra", "a\"b,c=d")][..]),
        ("x_lat", &[][..]),
    ] {
        let missing = std::panic::catch_unwind(|| e.value(name, labels));
        assert!(missing.is_err(), "{name} {labels:?} should be missing");
    }
    for bad in [
        "x_a 1\n# EOF\n",                          // no TYPE
        "# TYPE x_a gauge\nx_a 1\n",               // no EOF
        "# TYPE x_a gauge\nx_b 1\n# EOF\n",        // other family
        "# TYPE x_a gauge\nx_a 1 2\n# EOF\n",      // trailing field
        "# TYPE x_a gauge\nx_a{l=\"v} 1\n# EOF\n", // unterminated label
        "# TYPE x_a gauge\nx_a 1\nx_a 2\n# EOF\n", // duplicate series
        "# TYPE x_a gauge\nx_a one\n# EOF\n",      // not a number
        "# TYPE x_a gauge\n# EOF\nx_a 1\n",        // after EOF
    ] {
        let r = std::panic::catch_unwind(|| Exposition::parse(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

/// The `reason` label values of `connections_refused_total`, as the README
/// lists them.
const REFUSAL_REASONS: &[&str] = &[
    "connection_limit",
    "connect_rate",
    "draining",
    "unauthorized",
    "forbidden",
    "bad_request",
    "unavailable",
];

#[tokio::test]
async fn metrics_after_a_known_workload() {
    sluice_tests::init_logs();
    let (_redis, edge) = TestEdge::redis()
        .args(&["--publish-key", "pk", "--max-connections", "1"])
        .start()
        .await;
    let client = reqwest::Client::new();
    let task = unique_task("metrics");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    client
        .post(&url)
        .bearer_auth("pk")
        .json(&json!({"type": "p", "data": 0}))
        .send()
        .await
        .expect("post");
    let mut c = SseClient::connect(&url, None).await;
    assert_eq!(c.next_event(T).await.expect("snapshot").seq(), Some(1));
    for i in 1..=4 {
        let r = client
            .post(&url)
            .bearer_auth("pk")
            .json(&json!({"type": "p", "data": i}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }
    for s in 2..=5 {
        assert_eq!(c.next_event(T).await.expect("live").seq(), Some(s));
    }
    // Over the limit of 1: refused (an SSE refusal: 200, then the end).
    let refused = SseClient::connect(&url, None).await;
    assert_eq!(refused.refused(), Some("too_many_connections"));

    let text = client
        .get(edge.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    let m = Exposition::parse(&text);
    // Label values are lower snake case, and exactly the ones the README
    // lists (a query written `transport="sse"` must match).
    let documented: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("transport", &["sse", "ws"][..]),
        ("reason", REFUSAL_REASONS),
        ("op", &["publish", "snapshot", "history", "ping"][..]),
    ]);
    let mut seen: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for (name, labels) in m.samples.keys() {
        if !name.starts_with("sluice_edge_") {
            continue;
        }
        for (k, v) in labels {
            if documented.contains_key(k.as_str()) {
                seen.entry(k.clone()).or_default().insert(v.clone());
            }
        }
    }
    for (label, values) in &documented {
        let want: std::collections::BTreeSet<String> =
            values.iter().map(|v| v.to_string()).collect();
        assert_eq!(seen.get(*label), Some(&want), "values of label {label}");
    }
    assert_eq!(m.value("sluice_edge_events_published_total", &[]), 5.0);
    assert_eq!(
        m.value(
            "sluice_edge_events_delivered_total",
            &[("transport", "sse")]
        ),
        5.0
    );
    assert_eq!(
        m.value("sluice_edge_connections", &[("transport", "sse")]),
        1.0
    );
    assert_eq!(m.value("sluice_edge_subscriptions", &[]), 1.0);
    assert_eq!(m.value("sluice_edge_tasks_subscribed", &[]), 1.0);
    assert_eq!(
        m.value(
            "sluice_edge_connections_refused_total",
            &[("reason", "connection_limit")]
        ),
        1.0
    );
    assert!(m.value("sluice_edge_feed_events_total", &[]) >= 4.0);
    assert_eq!(
        m.value("sluice_edge_delivery_latency_seconds_count", &[]),
        4.0,
        "live events timed"
    );
    assert!(
        m.value(
            "sluice_edge_redis_command_duration_seconds_count",
            &[("op", "publish")]
        ) >= 5.0
    );
    assert!(
        m.value(
            "sluice_edge_redis_command_duration_seconds_count",
            &[("op", "snapshot")]
        ) >= 1.0
    );
    assert_eq!(
        m.units
            .get("sluice_edge_delivery_latency_seconds")
            .map(String::as_str),
        Some("seconds"),
        "{text}"
    );
    assert_eq!(
        m.types.get("sluice_edge_redis_errors").map(String::as_str),
        Some("counter"),
        "{text}"
    );
    // Feed lag per shard, reported by the reader's periodic check: series
    // labelled with exactly a shard number of the deployment.
    let client2 = client.clone();
    let metrics_url = edge.url("/metrics");
    sluice_tests::wait_until("feed lag reported", Duration::from_secs(15), || {
        let client = client2.clone();
        let url = metrics_url.clone();
        async move {
            match client.get(url).send().await {
                Ok(r) => match r.text().await {
                    Ok(t) => Exposition::parse(&t)
                        .series("sluice_edge_feed_lag")
                        .next()
                        .is_some(),
                    Err(_) => false,
                },
                Err(_) => false,
            }
        }
    })
    .await;
    let text2 = client
        .get(edge.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    let m2 = Exposition::parse(&text2);
    let lags: Vec<_> = m2.series("sluice_edge_feed_lag").collect();
    assert!(!lags.is_empty(), "{text2}");
    for (labels, lag) in &lags {
        let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["shard"], "{lags:?}");
        let shard: u32 = labels["shard"].parse().expect("shard number");
        assert!(shard < sluice_shared::DEFAULT_SHARDS, "{lags:?}");
        assert!(*lag >= 0.0, "{lags:?}");
    }
    assert!(!text.contains(&task), "no task id in metric labels");
}

/// `deploy/grafana/sluice-edges.json` stays true to the edge: it loads as
/// a dashboard, and every metric its queries name is a series the edge
/// exports (a family plus an OpenMetrics suffix), with the labels the
/// queries group or filter by, and `transport`/`reason`/`op` matchers use
/// the values the README lists.
#[tokio::test]
async fn grafana_dashboard_queries_name_exported_metrics() {
    sluice_tests::init_logs();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/sluice-edges.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("every target has an expr")
                .to_owned()
        })
        .collect();
    assert!(exprs.len() >= panels.len(), "every panel has a query");

    // A Redis edge with some traffic, so the per-shard lag is reported.
    let (_redis, edge) = TestEdge::redis()
        .args(&["--publish-key", "pk"])
        .start()
        .await;
    let client = reqwest::Client::new();
    let task = unique_task("grafana");
    let url = edge.url(&format!("/v1/tasks/{task}/events"));
    let mut c = SseClient::connect(&url, None).await;
    client
        .post(&url)
        .bearer_auth("pk")
        .json(&json!({"type": "p", "data": 1}))
        .send()
        .await
        .expect("post");
    assert!(c.next_event(T).await.is_some());
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    sluice_tests::wait_until("the feed lag exported", T, || {
        let (client, metrics, text) = (client.clone(), edge.url("/metrics"), text.clone());
        async move {
            let Ok(r) = client.get(&metrics).send().await else {
                return false;
            };
            let body = r.text().await.unwrap_or_default();
            let ok = body.contains("sluice_edge_feed_lag{");
            *text.lock().unwrap_or_else(|p| p.into_inner()) = body;
            ok
        }
    })
    .await;
    let text = text.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let e = Exposition::parse(&text);

    let allowed_values: [(&str, &[&str]); 3] = [
        ("transport", &["sse", "ws"]),
        ("reason", REFUSAL_REASONS),
        ("op", &["publish", "snapshot", "history", "ping"]),
    ];
    for expr in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sluice_edge_"))
            .collect();
        assert!(!names.is_empty(), "a query of no Sluice metric: {expr}");
        for name in names {
            let family = SUFFIXES
                .iter()
                .find_map(|s| {
                    let f = name.strip_suffix(s)?;
                    e.types.contains_key(f).then_some(f)
                })
                .unwrap_or_else(|| panic!("{name} (in {expr}) is not exported"));
            // Labels the query groups by must exist on the series (`le` on
            // buckets included). A labelled family has series only once a
            // label set was used (no refusal, no Redis error yet): those
            // are checked by name only.
            if let Some(by) = expr.split("by (").nth(1).and_then(|r| r.split(')').next()) {
                for label in by.split(',').map(str::trim) {
                    assert!(
                        e.series(name).next().is_none()
                            || e.series(name).any(|(l, _)| l.contains_key(label)),
                        "{name} (family {family}) has no label {label:?} to group by: {expr}"
                    );
                }
            }
        }
        for (label, values) in allowed_values {
            let needle = format!("{label}=\"");
            for rest in expr.split(&needle).skip(1) {
                let value = rest.split('"').next().unwrap_or_default();
                assert!(values.contains(&value), "{label}=\"{value}\" in {expr}");
            }
        }
    }
}
