//! `/metrics` over a real socket: what a connection, a push, an ack, a refused handshake,
//! a kick and a stored message do to the series an operator graphs, and an exposition
//! that `promtool check metrics` accepts.
//!
//! One server test in this binary: the recorder is process-wide, so a second server
//! running alongside would move the same gauges.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::{ErrorCode, KickReason};
use longlink::proto::router::{KickRequest, Result as Wire};
use longlink::session::DeviceKey;
use support::*;

/// One scrape, parsed: series (name plus sorted labels) to value, and the raw text.
struct Scrape {
    series: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    async fn of(server: &TestServer) -> Scrape {
        let (status, text) = http_get(server.running().admin_addr.unwrap(), "/metrics").await;
        assert_eq!(status, 200, "{text}");
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("series and value");
                (canonical(series), value.parse().expect("a number"))
            })
            .collect();
        Scrape { series, text }
    }

    /// The value of `name` with exactly `labels` (0 when absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let key = canonical(&format!("{name}{{{}}}", labels.join(",")));
        self.series.get(&key).copied().unwrap_or(0.0)
    }
}

/// `name{b="2",a="1"}` as `name{a="1",b="2"}`, and `name{}` as `name`: label order is the
/// exporter's business.
fn canonical(series: &str) -> String {
    let Some((name, rest)) = series.split_once('{') else { return series.to_string() };
    let mut labels: Vec<&str> =
        rest.trim_end_matches('}').split(',').filter(|l| !l.is_empty()).collect();
    labels.sort();
    if labels.is_empty() { name.to_string() } else { format!("{name}{{{}}}", labels.join(",")) }
}

/// Scrapes until `check` holds, for at most five seconds; returns the scrape that did.
async fn scrape_until(server: &TestServer, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..250 {
        let scrape = Scrape::of(server).await;
        if check(&scrape) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("after 5 s, still not: {what}\n{}", Scrape::of(server).await.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_connections_pushes_acks_refusals_kicks_and_kept_messages() {
    let server = start().await;
    let before = Scrape::of(&server).await;
    let grew = |s: &Scrape, name: &str, labels: &[(&str, &str)]| {
        s.get(name, labels) - before.get(name, labels)
    };
    let tcp = [("app", APP), ("transport", "tcp")];

    let (mut device, _) = server.device("m1").await;
    let s =
        scrape_until(&server, "one tcp session", |s| s.get("longlink_sessions", &tcp) == 1.0).await;
    assert_eq!(grew(&s, "longlink_handshakes_total", &[("transport", "tcp")]), 1.0);

    // A push to the online device, its ack, and the latency between them.
    let pushed = server.notify(&["m1"], "hello").await;
    assert_eq!(pushed.results[0].result, Wire::Sent as i32);
    let push = next_push(&mut device).await;
    within(5, device.ack(push.seq)).await.unwrap();
    let s = scrape_until(&server, "one ack", |s| grew(s, "longlink_acks_total", &[]) == 1.0).await;
    assert_eq!(grew(&s, "longlink_pushes_total", &[("result", "sent")]), 1.0);
    assert_eq!(grew(&s, "longlink_delivery_seconds_count", &[]), 1.0);
    let under_5s = grew(&s, "longlink_delivery_seconds_bucket", &[("le", "5")]);
    assert_eq!(under_5s, 1.0, "acked within a few ms, so in the 5 s bucket");

    // A refused handshake, by reason.
    let mut stranger = Device::connect(&server.tcp()).await.unwrap();
    match within(5, stranger.hello(hello(APP, "m3", "not-a-jwt", 0))).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code(), ErrorCode::TokenMalformed),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let failed = [("reason", "token_malformed")];
    let s = scrape_until(&server, "one refusal", |s| {
        grew(s, "longlink_handshake_failures_total", &failed) == 1.0
    })
    .await;
    assert_eq!(grew(&s, "longlink_handshakes_total", &[("transport", "tcp")]), 1.0);

    // An operator kick, counted once, and the session gone from the gauge.
    let mut router = server.router().await;
    let kick = KickRequest {
        app_id: APP.into(),
        device_id: "m1".into(),
        reconnect: false,
        ..Default::default()
    };
    assert!(within(5, router.kick(kick)).await.unwrap().into_inner().kicked);
    match within(5, device.recv()).await {
        Err(ClientError::Kicked(k)) => assert_eq!(k.reason(), KickReason::Operator),
        other => panic!("expected Kick(operator), got {other:?}"),
    }
    let operator = [("reason", "operator")];
    let s = scrape_until(&server, "the kick counted", |s| {
        grew(s, "longlink_kicks_total", &operator) == 1.0 && s.get("longlink_sessions", &tcp) == 0.0
    })
    .await;
    assert_eq!(grew(&s, "longlink_closes_total", &operator), 1.0);
    assert_eq!(grew(&s, "longlink_kicks_total", &[("reason", "replaced")]), 0.0);

    // A message kept for an offline device shows as store depth.
    let (gone, _) = server.device("m2").await;
    drop(gone);
    let key = DeviceKey::new(APP, "m2");
    eventually(5, || server.node().hub.session(&key).is_none()).await;
    let stored = server.notify(&["m2"], "later").await;
    assert_eq!(stored.results[0].result, Wire::Stored as i32);
    let s = Scrape::of(&server).await;
    assert_eq!(grew(&s, "longlink_pushes_total", &[("result", "stored")]), 1.0);
    assert_eq!(s.get("longlink_store_messages", &[]), 1.0, "only m2's message is kept");
    assert!(s.get("longlink_store_bytes", &[]) > 0.0);
    // Every write committed: the queue the writer reports drains to nothing.
    let store = server.node().hub.store();
    assert!(store.enqueued() > 0, "the connects and the stored push were written");
    scrape_until(&server, "the store's queue is empty", |s| {
        s.get("longlink_store_queue", &[]) == 0.0
    })
    .await;

    assert_exposition_is_well_formed(&s.text);
    assert!(!s.text.contains("\"m1\"") && !s.text.contains("\"m2\""), "a device id in a label");
    promtool_check(&s.text);
    server.stop().await;
}

/// Every metric has HELP and TYPE lines, and the histograms the README names exist.
fn assert_exposition_is_well_formed(text: &str) {
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in &typed {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP line");
    }
    for histogram in ["longlink_delivery_seconds", "longlink_broadcast_fanout_seconds"] {
        assert!(text.contains(&format!("# TYPE {histogram} histogram")), "{histogram}\n{text}");
    }
    let gauges = [
        "longlink_sessions",
        "longlink_store_messages",
        "longlink_store_bytes",
        "longlink_timeline_bytes",
    ];
    for gauge in gauges {
        assert!(typed.contains(&gauge), "{gauge} missing");
    }
}

/// Lints the exposition with Prometheus's own checker when it is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            println!(
                "SKIP promtool check: promtool not runnable ({e}); install Debian's `prometheus`"
            );
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");
    println!("promtool check metrics: clean");
}

/// A metric recorded anywhere in `src/` without a description would be served without a
/// HELP line (and fail `promtool check metrics` once it appears): `telemetry` must name
/// every one.
#[test]
fn every_metric_the_source_records_is_described_in_telemetry() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let described = std::fs::read_to_string(root.join("telemetry.rs")).unwrap();
    let mut files = vec![root];
    let mut missing = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for name in recorded(&text) {
            if !described.contains(&format!("\"{name}\"")) {
                missing.push(format!("{name} ({})", path.display()));
            }
        }
    }
    assert!(missing.is_empty(), "describe these in src/telemetry.rs: {missing:?}");
}

/// Names given literally to `counter!`, `gauge!` and `histogram!` in `text`.
fn recorded(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for mac in ["counter!(", "gauge!(", "histogram!("] {
        for (at, _) in text.match_indices(mac) {
            let rest = text[at + mac.len()..].trim_start();
            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                && name.starts_with("longlink_")
            {
                names.push(name.to_string());
            }
        }
    }
    names
}
