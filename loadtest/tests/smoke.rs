//! Smoke test: every scenario with a tiny N against a longlink server started in this
//! process (and, when `mosquitto` is installed, the MQTT shapes against a broker this
//! test starts), asserting that the counts in the `--json` result add up.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use longlink::config::Config;
use longlink::server::Running;
use serde_json::Value;

const N: u64 = 20;
/// Bound on one run of the binary; its own --max-secs is lower.
const RUN_LIMIT: Duration = Duration::from_secs(120);

async fn server(dir: &Path) -> Running {
    let mut config = Config { data_dir: dir.join("data"), ..Config::default() };
    config.device.tcp_addr = "127.0.0.1:0".into();
    config.device.tls_addr = "127.0.0.1:0".into();
    config.router.addr = "127.0.0.1:0".into();
    config.admin.addr = String::new();
    config.drain.grace_secs = 2;
    longlink::server::start(config).await.expect("server starts")
}

/// Runs the binary with `args` and returns its `--json` result.
async fn run(dir: &Path, args: &[&str]) -> Value {
    let json = dir.join(format!("result-{}.json", rand::random::<u32>()));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_longlink-loadtest"));
    command
        .args(args)
        .args(["--max-secs", "60", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .expect("the run ends in time")
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    let text = std::fs::read_to_string(&json).expect("the result file is written");
    serde_json::from_str(&text).expect("the result is JSON")
}

fn longlink_args(running: &Running, dir: &Path, scenario: &str, tls: bool) -> Vec<String> {
    let mut args: Vec<String> = vec![
        scenario.into(),
        "--n".into(),
        N.to_string(),
        "--rate".into(),
        "200".into(),
        "--per-worker".into(),
        // Two workers even at this size, so that merging is exercised.
        (N / 2).to_string(),
        "--api".into(),
        running.router_addr.to_string(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
    ];
    let addr = if tls { running.tls_addr } else { running.tcp_addr };
    args.extend(["--addr".into(), addr.expect("listener").to_string()]);
    if tls {
        args.push("--tls".into());
    }
    args
}

fn str_args(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn assert_connected(result: &Value, n: u64) {
    let c = &result["connections"];
    assert_eq!(c["connected"], n, "{c}");
    assert_eq!(c["failed"], 0, "{c}");
    assert!(result["latency"]["handshake"]["count"].as_u64().unwrap() >= n);
}

fn assert_delivered(result: &Value, expected: u64) {
    let m = &result["messages"];
    assert_eq!(m["sent"], expected, "{m}");
    assert_eq!(m["received"], m["sent"], "{m}");
    assert_eq!(result["latency"]["delivery"]["count"], expected, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection_and_measures_memory() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path()).await;
    let mut args = longlink_args(&running, dir.path(), "idle", false);
    args.extend(["--hold-secs".into(), "1".into()]);
    args.extend(["--server-pid".into(), std::process::id().to_string()]);
    let plot = dir.path().join("idle.svg");
    args.extend(["--plot".into(), plot.display().to_string()]);
    let result = run(dir.path(), &str_args(&args)).await;
    assert_connected(&result, N);
    assert_eq!(result["memory"]["connections"], N);
    assert!(result["memory"]["after"]["server_rss"].as_u64().unwrap() > 0);
    let svg = std::fs::read_to_string(plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    running.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_over_tls_counts_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path()).await;
    let mut args = longlink_args(&running, dir.path(), "idle", true);
    args.extend(["--hold-secs".into(), "1".into()]);
    let result = run(dir.path(), &str_args(&args)).await;
    assert_connected(&result, N);
    let t = &result["tls_handshakes"];
    assert_eq!(t["handshakes"], N, "{t}");
    assert_eq!(t["full"].as_u64().unwrap() + t["resumed"].as_u64().unwrap(), N);
    running.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_unary_and_stream_deliver_everything_sent() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path()).await;
    for stream in [false, true] {
        let mut args = longlink_args(&running, dir.path(), "push", false);
        args.extend(["--push-rate".into(), "100".into(), "--secs".into(), "1".into()]);
        if stream {
            args.push("--stream".into());
        }
        let result = run(dir.path(), &str_args(&args)).await;
        assert_connected(&result, N);
        assert_delivered(&result, 100);
    }
    running.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_device_as_one_broadcast_and_as_batches() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path()).await;
    for batched in [false, true] {
        let mut args = longlink_args(&running, dir.path(), "broadcast", false);
        args.extend(["--settle-secs".to_string(), "0".to_string()]);
        if batched {
            args.push("--batched".into());
        }
        let result = run(dir.path(), &str_args(&args)).await;
        assert_connected(&result, N);
        assert_delivered(&result, N);
    }
    running.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_brings_every_device_back() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path()).await;
    let args = longlink_args(&running, dir.path(), "storm", false);
    let result = run(dir.path(), &str_args(&args)).await;
    assert_connected(&result, N);
    let s = &result["storm"];
    assert_eq!(s["connected_before"], N, "{s}");
    assert_eq!(s["reconnected"], N, "{s}");
    assert!(s["secs_to_100"].as_f64().unwrap() >= s["secs_to_99"].as_f64().unwrap());
    running.drain();
}

/// A Mosquitto broker on a free loopback port, stopped on drop.
struct Broker {
    child: tokio::process::Child,
    addr: String,
}

async fn mosquitto(dir: &Path) -> Option<Broker> {
    let found = std::process::Command::new("which")
        .arg("mosquitto")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skipping the MQTT runs: mosquitto is not installed");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("mosquitto.conf");
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\n"
    );
    std::fs::write(&conf, text).unwrap();
    let child = tokio::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto starts");
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Some(Broker { child, addr });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("mosquitto did not start listening on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_shapes_run_against_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = mosquitto(dir.path()).await else {
        return;
    };
    let base = |scenario: &str| -> Vec<String> {
        [scenario, "--protocol", "mqtt", "--addr", &broker.addr, "--per-worker", "10"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--n".into(), N.to_string(), "--rate".into(), "200".into()])
            .collect()
    };
    let mut idle = base("idle");
    idle.extend(["--hold-secs".into(), "1".into()]);
    assert_connected(&run(dir.path(), &str_args(&idle)).await, N);

    let mut push = base("push");
    push.extend(["--push-rate".into(), "100".into(), "--secs".into(), "1".into()]);
    let result = run(dir.path(), &str_args(&push)).await;
    assert_connected(&result, N);
    assert_delivered(&result, 100);

    let result = run(dir.path(), &str_args(&base("broadcast"))).await;
    assert_connected(&result, N);
    assert_delivered(&result, N);
    let _ = broker.child.kill().await;
}
