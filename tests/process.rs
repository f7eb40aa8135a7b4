//! The binary as operators and newcomers use it: the README walkthrough, two clients
//! with one device id, and case C10 (out of file descriptors) under a real rlimit.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::child::{BIN, Served, serve_in};

/// A server in a directory of its own, removed with the returned guard.
fn serve(prefix: &str) -> (Served, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (serve_in(dir.path(), prefix, &[]), dir)
}

fn run(served: &Served, args: &[&str]) -> String {
    served.run(args)
}

fn client(served: &Served, device: &str, extra: &[&str]) -> Child {
    let token = run(served, &["token", "--app", "demo", "--device", device]);
    Command::new(BIN)
        .args(["client", "--app", "demo", "--device", device, "--token", token.trim()])
        .args(extra)
        .current_dir(served.dir.as_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The JSON lines a child prints, collected by a thread.
struct Events(std::sync::mpsc::Receiver<serde_json::Value>);

impl Events {
    fn of(child: &mut Child) -> Events {
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str::<serde_json::Value>(&line).unwrap();
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Events(rx)
    }

    /// Collects events until `n` arrived or `secs` passed.
    fn take(&self, n: usize, secs: u64) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut events = Vec::new();
        while events.len() < n {
            match self.0.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        events
    }
}

fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn the_readme_walkthrough_delivers_every_kind_over_tcp_and_tls() {
    let (served, _dir) = serve("");
    let ca = served.dir.as_path().join("longlink-data/tls/cert.pem");
    let tls_args = [
        "--addr",
        &served.tls,
        "--tls",
        "--ca",
        ca.to_str().unwrap(),
        "--server-name",
        "localhost",
        "--count",
        "3",
    ];
    for (device, extra) in
        [("phone-1", vec!["--addr", &served.tcp, "--count", "3"]), ("phone-2", tls_args.to_vec())]
    {
        let mut c = client(&served, device, &extra);
        let out = Events::of(&mut c);
        let welcome = out.take(1, 10);
        assert_eq!(welcome[0]["event"], "welcome", "{welcome:?}");
        let api = ["--api", served.api.as_str(), "--app", "demo", "--device", device];
        let pushed: Vec<serde_json::Value> = [
            vec!["--title", "Hello", "--body", "World"],
            vec!["--badge", "5", "--badge-key", "inbox"],
            vec!["--kind", "silent", "--data", "sync"],
        ]
        .iter()
        .map(|args| {
            let mut all = vec!["push"];
            all.extend(api);
            all.extend(args);
            serde_json::from_str(&run(&served, &all)).unwrap()
        })
        .collect();
        for p in &pushed {
            assert_eq!(p["results"][0]["result"], "sent", "{p}");
        }
        let events = out.take(3, 10);
        let kinds: Vec<_> = events.iter().map(|e| e["kind"].as_str().unwrap_or("")).collect();
        assert_eq!(kinds, ["notification", "badge", "silent"], "{events:?}");
        assert_eq!(events[0]["title"], "Hello");
        assert_eq!(events[1]["badge"]["set"], 5);
        assert_eq!(events[2]["data"], "sync");
        for (e, p) in events.iter().zip(&pushed) {
            assert_eq!(e["message_id"], p["message_id"]);
        }
        let status = wait_exit(&mut c, 10).expect("client exits after --count");
        assert!(status.success());
    }
    // Every message was acked: nothing is pending on either device.
    let presence = run(
        &served,
        &["presence", "--api", &served.api, "--app", "demo", "--device", "phone-1,phone-2"],
    );
    assert_eq!(presence.lines().count(), 2, "{presence}");
}

#[test]
fn two_clients_with_one_device_id_do_not_take_each_other_over_in_a_loop() {
    let (served, _dir) = serve("");
    let mut first = client(&served, "shared", &["--addr", &served.tcp]);
    let first_out = Events::of(&mut first);
    assert_eq!(first_out.take(1, 10)[0]["event"], "welcome");
    let mut second = client(&served, "shared", &["--addr", &served.tcp]);
    let second_out = Events::of(&mut second);
    let kicked = first_out.take(1, 10);
    assert_eq!(kicked[0]["event"], "kick");
    assert_eq!(kicked[0]["reason"], "replaced");
    assert!(wait_exit(&mut first, 5).expect("replaced client exits").success());
    std::thread::sleep(Duration::from_secs(2));
    assert!(second.try_wait().unwrap().is_none(), "the newer client stays connected");
    let events = second_out.take(2, 2);
    assert_eq!(events.len(), 1, "no second welcome: nothing reconnected: {events:?}");
    assert_eq!(events[0]["event"], "welcome");

    // An operator kick (without --reconnect) ends the remaining one for good.
    let kicked =
        run(&served, &["kick", "--api", &served.api, "--app", "demo", "--device", "shared"]);
    assert_eq!(kicked.trim(), r#"{"kicked":true}"#);
    let events = second_out.take(1, 5);
    assert_eq!(events[0]["reason"], "operator", "{events:?}");
    assert!(wait_exit(&mut second, 5).expect("kicked client exits").success());
    let _ = second.kill();
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Case C10. Run on a current-thread tokio runtime of its own, with real sockets.
#[test]
fn accepting_survives_descriptor_exhaustion_without_spinning() {
    let (served, _dir) = serve("ulimit -n 64;");
    let pid = served.child.id();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let addr = served.tcp.parse().unwrap();
        let endpoint = longlink::client::Endpoint { addr, tls: None, bind: None };
        let token =
            |d: &str| run(&served, &["token", "--app", "demo", "--device", d]).trim().to_string();
        let mut sessions = Vec::new();
        let mut pending = Vec::new();
        for i in 0..80 {
            let id = format!("fd{i}");
            let mut device = longlink::client::Device::connect(&endpoint).await.unwrap();
            device
                .send(longlink::proto::device::client_frame::Frame::Hello(longlink::client::hello(
                    "demo",
                    &id,
                    &token(&id),
                    300,
                )))
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_millis(500), device.recv()).await {
                Ok(Ok(_welcome)) => sessions.push(device),
                _ => pending.push(device),
            }
            if pending.len() >= 10 {
                break;
            }
        }
        assert!(pending.len() >= 10, "the limit was never reached ({} sessions)", sessions.len());
        assert!(sessions.len() >= 20, "only {} sessions fit", sessions.len());

        // Exhausted: the accept loop must not spin, and sessions keep their heartbeats.
        let ticks = cpu_ticks(pid);
        for _ in 0..4 {
            for s in sessions.iter_mut().take(5) {
                s.ping().await.unwrap();
                let pong = tokio::time::timeout(Duration::from_secs(2), s.recv()).await;
                assert!(matches!(pong, Ok(Ok(_))), "session lost its heartbeat while exhausted");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let used = cpu_ticks(pid) - ticks; // clock ticks of 10 ms over about 2 s
        assert!(used < 20, "server burned {used} ticks in 2 s while exhausted");

        // Free twenty descriptors: the pending connections get in within about a second.
        sessions.truncate(sessions.len() - 20);
        let started = Instant::now();
        for mut device in pending.drain(..) {
            let welcome = tokio::time::timeout(Duration::from_secs(3), device.recv()).await;
            assert!(matches!(welcome, Ok(Ok(_))), "pending connection not served: {welcome:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    });
    let log = std::fs::read_to_string(served.dir.as_path().join("serve.log")).unwrap();
    let complaints = log.matches("out of file descriptors").count();
    assert!((1..=3).contains(&complaints), "{complaints} exhaustion log lines in about 3 s");
}

/// `longlink client` acks broadcasts: a later client for the same device gets only what
/// is newer.
#[test]
fn the_client_acks_broadcasts() {
    let (served, _dir) = serve("");
    let api = ["--api", served.api.as_str(), "--app", "demo", "--broadcast"];
    let broadcast = |title: &str| {
        let mut args = vec!["push"];
        args.extend(api);
        args.extend(["--title", title]);
        serde_json::from_str::<serde_json::Value>(&run(&served, &args)).unwrap()
    };
    for (title, seq) in [("first", 1), ("second", 2)] {
        let mut c = client(&served, "phone-b", &["--addr", &served.tcp, "--count", "1"]);
        let out = Events::of(&mut c);
        assert_eq!(out.take(1, 10)[0]["event"], "welcome");
        let answer = broadcast(title);
        assert_eq!(answer["broadcast"]["sent"], 1, "{answer}");
        let got = out.take(1, 10);
        assert_eq!(
            (got[0]["broadcast_seq"].as_u64(), got[0]["title"].as_str()),
            (Some(seq), Some(title))
        );
        assert!(wait_exit(&mut c, 10).expect("client exits after --count").success());
    }
}

/// A command whose reader went away (`longlink ... | head -1`) ends quietly, with status
/// 0, as a closed pipe ends any Unix tool.
#[test]
fn a_closed_stdout_pipe_ends_a_command_quietly() {
    let (served, _dir) = serve("");
    let script = format!("set -o pipefail; {BIN} token --app demo --device x | true");
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(served.dir.as_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A plain client pointed at the TLS port is told to use TLS, and stops.
#[test]
fn a_plain_client_on_the_tls_port_is_told_to_use_tls() {
    let (served, _dir) = serve("");
    let mut c = client(&served, "phone-t", &["--addr", &served.tls]);
    let out = Events::of(&mut c);
    let events = out.take(1, 10);
    let message = events[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("add --tls"), "{events:?}");
    let status = wait_exit(&mut c, 10).expect("the client stops");
    assert_eq!(status.code(), Some(2));
}
