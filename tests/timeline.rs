//! The delivery timeline: every failure path of the delivery chain leaves its reason code
//! in the timeline and in the metrics; the inspect verdicts; retention and caps; the
//! admin JSON is the CLI's JSON; every reason code is documented.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use longlink::client::{Device, hello};
use longlink::config::RouterKey;
use longlink::config::TimelineConfig;
use longlink::proto::device::{DeviceReport, Hello, Platform, PushKind};
use longlink::proto::router::inspection_client::InspectionClient;
use longlink::proto::router::router_client::RouterClient;
use longlink::proto::router::{
    Devices, InspectDeviceRequest, InspectDeviceResponse, PushRequest, PushResponse, TimelineEntry,
    TraceMessageRequest, TraceMessageResponse, push_request,
};
use longlink::session::DeviceKey;
use longlink::timeline::{Kind, Note, Timeline, reason, render};
use support::*;
use tonic::transport::Channel;

const KEY: &str = "Bearer all-apps-key-0123";

fn keyed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", KEY.parse().unwrap());
    request
}

async fn inspection(server: &TestServer) -> InspectionClient<Channel> {
    let url = format!("http://{}", server.running().router_addr);
    InspectionClient::connect(url).await.unwrap()
}

async fn inspect(server: &TestServer, device: &str, user: &str) -> InspectDeviceResponse {
    let request =
        InspectDeviceRequest { app_id: APP.into(), device_id: device.into(), user_id: user.into() };
    let mut client = inspection(server).await;
    within(5, client.inspect_device(keyed(request))).await.unwrap().into_inner()
}

async fn trace(server: &TestServer, id: &str) -> TraceMessageResponse {
    let request = TraceMessageRequest { app_id: APP.into(), message_id: id.into() };
    let mut client = inspection(server).await;
    within(5, client.trace_message(keyed(request))).await.unwrap().into_inner()
}

async fn push(router: &mut RouterClient<Channel>, request: PushRequest) -> PushResponse {
    within(5, router.push(keyed(request))).await.unwrap().into_inner()
}

fn to(devices: &[&str], ttl: Option<u32>) -> PushRequest {
    let mut r = notification(devices, "t");
    r.message.as_mut().unwrap().ttl_secs = ttl;
    r
}

async fn gone(server: &TestServer, id: &str) {
    let key = DeviceKey::new(APP, id);
    eventually(5, || server.node().hub.session(&key).is_none()).await;
}

/// The reason of the first entry with `event` in `timeline`.
fn reason_of<'a>(timeline: &'a [TimelineEntry], event: &str) -> Option<&'a str> {
    timeline.iter().find(|e| e.event == event).map(|e| e.reason.as_str())
}

async fn failures(server: &TestServer, reason: &str) -> f64 {
    metric(server, &format!("longlink_delivery_failures_total{{reason=\"{reason}\"}}")).await
}

/// Drives every failure path of the delivery chain, then checks that each delivery
/// reason code was reached, each in a timeline and in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_path_leaves_its_reason_in_the_timeline_and_the_metrics() {
    let key = |k: &str, apps: &[&str]| RouterKey {
        key: Some(k.into()),
        key_file: None,
        apps: apps.iter().map(|a| a.to_string()).collect(),
    };
    let server = start_with(|c| {
        c.router.keys = vec![key("all-apps-key-0123", &[]), key("other-app-key-0123", &["other"])];
        c.device.pending_max = 2;
        c.device.outbound_max_frames = 4;
        c.device.send_buffer_bytes = 4096;
        c.delivery.purge_interval_secs = 1;
    })
    .await;
    let url = format!("http://{}", server.running().router_addr);
    let mut router = RouterClient::connect(url).await.unwrap();
    let mut seen = BTreeSet::new();
    let mut note = |timeline: &[TimelineEntry]| {
        seen.extend(timeline.iter().map(|e| e.reason.clone()).filter(|r| !r.is_empty()));
    };
    drop(server.device("off").await);
    gone(&server, "off").await;

    // Offline with TTL 0; a device never seen.
    let r = push(&mut router, to(&["off", "never-seen"], Some(0))).await;
    let t = trace(&server, &r.message_id).await;
    assert!(t.verdict.contains("off: not delivered: offline"), "{}", t.verdict);
    assert!(t.verdict.contains("never-seen: unknown device"), "{}", t.verdict);
    note(&t.timeline);
    assert!(failures(&server, "offline").await >= 1.0);
    assert!(failures(&server, "unknown_device").await >= 1.0);

    // Expired: a 1 s TTL, purged while the device is away.
    let r = push(&mut router, to(&["off"], Some(1))).await;
    let expired = r.message_id.clone();
    eventually(5, || server.node().hub.pending(&DeviceKey::new(APP, "off")) == 0).await;
    let t = trace(&server, &expired).await;
    assert_eq!(reason_of(&t.timeline, "expired"), Some("ttl"));
    note(&t.timeline);
    assert!(failures(&server, "ttl").await >= 1.0);

    // Over the cap of 2 (the oldest is dropped) and a collapse key replacing a message.
    let first = push(&mut router, to(&["off"], None)).await.message_id;
    let mut collapsing = to(&["off"], None);
    collapsing.message.as_mut().unwrap().collapse_key = "score".into();
    let replaced = push(&mut router, collapsing.clone()).await.message_id;
    push(&mut router, collapsing).await;
    push(&mut router, to(&["off"], None)).await;
    let t = trace(&server, &first).await;
    assert_eq!(reason_of(&t.timeline, "dropped"), Some("pending_cap"));
    note(&t.timeline);
    let t = trace(&server, &replaced).await;
    assert_eq!(reason_of(&t.timeline, "dropped"), Some("collapsed"));
    note(&t.timeline);
    assert!(failures(&server, "pending_cap").await >= 1.0);
    assert!(metric(&server, "longlink_dropped_total{reason=\"pending_cap\"}").await >= 1.0);

    // Takeover: a TTL-0 message on the old connection is lost with it, a kept one is
    // redelivered on the new connection.
    let (_old, old_welcome) = server.device("t").await;
    let ephemeral = push(&mut router, to(&["t"], Some(0))).await.message_id;
    let kept = push(&mut router, to(&["t"], None)).await.message_id;
    let (mut new, new_welcome) = server.device("t").await;
    assert_eq!(next_push(&mut new).await.message_id, kept);
    let t = trace(&server, &ephemeral).await;
    let sent = t.timeline.iter().find(|e| e.event == "sent").unwrap();
    assert_eq!(sent.session_id, old_welcome.session_id, "sent names its connection");
    assert_eq!(reason_of(&t.timeline, "dropped"), Some("replaced"));
    note(&t.timeline);
    let t = trace(&server, &kept).await;
    let again = t.timeline.iter().find(|e| e.event == "redelivered").unwrap();
    assert_eq!(again.session_id, new_welcome.session_id);
    let d = inspect(&server, "t", "").await;
    assert_eq!(reason_of(&d.timeline, "closed"), Some("replaced"));
    assert!(failures(&server, "replaced").await >= 1.0);
    assert!(metric(&server, "longlink_closes_total{reason=\"replaced\"}").await >= 1.0);

    // A slow consumer: a device that reads nothing while TTL-0 messages pile up.
    let (_stalled, _) = server.device("stalled").await;
    let mut big = to(&["stalled"], Some(0));
    big.message.as_mut().unwrap().kind = PushKind::Silent as i32;
    big.message.as_mut().unwrap().notification = None;
    big.message.as_mut().unwrap().data = vec![7; 4000];
    let mut ids = Vec::new();
    for _ in 0..400 {
        ids.push(push(&mut router, big.clone()).await.message_id);
        if server.node().hub.session(&DeviceKey::new(APP, "stalled")).is_none() {
            break;
        }
    }
    gone(&server, "stalled").await;
    let d = inspect(&server, "stalled", "").await;
    assert_eq!(reason_of(&d.timeline, "closed"), Some("slow_consumer"));
    assert!(d.timeline.iter().any(|e| e.event == "dropped" && e.reason == "slow_consumer"));
    note(&d.timeline);
    assert!(failures(&server, "slow_consumer").await >= 1.0);
    assert!(metric(&server, "longlink_closes_total{reason=\"slow_consumer\"}").await >= 1.0);

    // A rejected token: the device never gets in, and its timeline says why.
    let mut claims = server.claims("late", None);
    claims.exp = longlink::clock::unix_secs() - 3_600;
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    assert!(device.hello(hello(APP, "late", &server.sign(&claims), 0)).await.is_err());
    let d = inspect(&server, "late", "").await;
    assert_eq!(reason_of(&d.timeline, "token_rejected"), Some("token_expired"));
    assert_eq!(d.verdict, "token rejected: expired");
    let series = "longlink_handshake_failures_total{reason=\"token_expired\"}";
    assert!(metric(&server, series).await >= 1.0);

    // Refused pushes, traced by their request ids; bad device ids, by the message id.
    let mut large = to(&["off"], None);
    large.request_id = "too-large-1".into();
    large.message.as_mut().unwrap().data = vec![0; 5_000];
    let mut bad_ttl = to(&["off"], Some(40 * 86_400));
    bad_ttl.request_id = "bad-ttl-1".into();
    let mut bad_message = to(&["off"], None);
    bad_message.request_id = "bad-message-1".into();
    bad_message.message.as_mut().unwrap().kind = 0;
    let mut bad_target = to(&[], None);
    bad_target.request_id = "bad-target-1".into();
    for (request, code) in [
        (large, "payload_too_large"),
        (bad_ttl, "bad_ttl"),
        (bad_message, "bad_message"),
        (bad_target, "bad_target"),
    ] {
        let id = request.request_id.clone();
        let status = router.push(keyed(request)).await.unwrap_err();
        assert!(status.message().starts_with(code), "{}", status.message());
        let t = trace(&server, &id).await;
        assert_eq!((t.request_id.as_str(), t.message_id.as_str()), (id.as_str(), ""));
        assert_eq!(reason_of(&t.timeline, "rejected"), Some(code), "{id}");
        note(&t.timeline);
        assert!(failures(&server, code).await >= 1.0, "{code}");
    }
    let r = push(&mut router, to(&["", "off", "off"], None)).await;
    let t = trace(&server, &r.message_id).await;
    note(&t.timeline);

    // The wrong app: a key limited to another app.
    let mut wrong = to(&["off"], None);
    wrong.request_id = "wrong-app-1".into();
    let mut request = tonic::Request::new(wrong);
    request.metadata_mut().insert("authorization", "Bearer other-app-key-0123".parse().unwrap());
    let status = router.push(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let t = trace(&server, "wrong-app-1").await;
    assert_eq!(reason_of(&t.timeline, "rejected"), Some("app_not_allowed"));
    note(&t.timeline);
    assert!(failures(&server, "app_not_allowed").await >= 1.0);

    // Every delivery reason the gateway has was reached above.
    let delivery: BTreeSet<String> = reason::DELIVERY.iter().map(|(c, _)| c.to_string()).collect();
    let missing: Vec<_> = delivery.difference(&seen).collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
    assert!(seen.iter().all(|r| reason::all().contains(&r.as_str())), "{seen:?}");
    server.stop().await;
}

fn user_hello(server: &TestServer, id: &str, user: Option<&str>, platform: Platform) -> Hello {
    let token = server.sign(&server.claims(id, user));
    let mut h = hello(APP, id, &token, 0);
    h.platform = platform as i32;
    h
}

async fn connect_with(server: &TestServer, hello: Hello) -> Device {
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    within(5, device.hello(hello)).await.unwrap();
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_says_what_is_wrong_in_one_line() {
    let server = start_with(|c| {
        c.heartbeat.min_secs = 1;
    })
    .await;
    let mut router = server.router().await;

    // Silent past its heartbeat, with messages kept for two hours.
    let (_quiet, _) = server.device_at(&server.tcp(), "quiet", 1).await;
    gone(&server, "quiet").await;
    for _ in 0..3 {
        within(5, router.push(to(&["quiet"], Some(7_300)))).await.unwrap();
    }
    let d = inspect(&server, "quiet", "").await;
    assert!(d.verdict.starts_with("not connected since "), "{}", d.verdict);
    assert!(
        d.verdict.ends_with("(heartbeat timeout); 3 messages stored, oldest expires in 2h"),
        "{}",
        d.verdict
    );
    assert_eq!(d.pending, 3);

    // Notifications off on the device.
    let mut h = user_hello(&server, "muted", None, Platform::Android);
    let report = DeviceReport { notifications_enabled: false, ..Default::default() };
    h.report = Some(report);
    let _muted = connect_with(&server, h).await;
    let d = inspect(&server, "muted", "").await;
    assert_eq!(d.verdict, "notifications disabled on the device");
    assert!(d.timeline.iter().any(|e| e.event == "reported" && e.detail.contains("off")));

    // The classic: the user logged in on iOS; the Android login path never bound.
    let _ios = connect_with(&server, user_hello(&server, "ios-1", Some("u1"), Platform::Ios)).await;
    let _android =
        connect_with(&server, user_hello(&server, "android-1", None, Platform::Android)).await;
    let wanted = "bound to user u1 from an iOS device; this Android device is not bound";
    assert_eq!(inspect(&server, "android-1", "u1").await.verdict, wanted);
    assert_eq!(inspect(&server, "ios-1", "u1").await.verdict, "");

    // The same, found from the device's own binding history (bound, then a login path
    // that connected without the user).
    let was =
        connect_with(&server, user_hello(&server, "android-2", Some("u2"), Platform::Android));
    drop(was.await);
    gone(&server, "android-2").await;
    let _ios = connect_with(&server, user_hello(&server, "ios-2", Some("u2"), Platform::Ios)).await;
    let _now =
        connect_with(&server, user_hello(&server, "android-2", None, Platform::Android)).await;
    let d = inspect(&server, "android-2", "").await;
    assert!(d.timeline.iter().any(|e| e.event == "unbound" && e.user_id == "u2"));
    assert_eq!(d.verdict, wanted.replace("u1", "u2"));

    // A healthy device has no verdict; an unknown one is NOT_FOUND.
    let (_fine, _) = server.device("fine").await;
    assert_eq!(inspect(&server, "fine", "").await.verdict, "");
    let mut client = inspection(&server).await;
    let request = InspectDeviceRequest {
        app_id: APP.into(),
        device_id: "nobody".into(),
        user_id: String::new(),
    };
    let status = client.inspect_device(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    server.stop().await;
}

/// The admin listener answers exactly what `inspect --json` and `trace --json` print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_json_is_the_command_line_json() {
    let server = start().await;
    let device = "phone 1/ü";
    drop(server.device(device).await);
    gone(&server, device).await;
    let mut router = server.router().await;
    let r = within(5, router.push(to(&[device], Some(0)))).await.unwrap().into_inner();
    let admin = server.running().admin_addr.unwrap();

    let cli = render::device_json(&inspect(&server, device, "").await);
    let (status, body) = http_get(admin, "/api/device?app=demo&device=phone+1%2F%C3%BC").await;
    assert_eq!(status, 200, "{body}");
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api, cli);
    assert!(api["verdict"].as_str().unwrap().starts_with("not connected since"));
    let events: Vec<&str> =
        api["timeline"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["connected", "closed", "not_delivered"]);

    let cli = render::message_json(&trace(&server, &r.message_id).await);
    let path = format!("/api/message?app=demo&message={}", r.message_id);
    let api: serde_json::Value = serde_json::from_str(&http_get(admin, &path).await.1).unwrap();
    assert_eq!(api, cli);
    assert_eq!(api["timeline"][0]["event"], "accepted");
    assert_eq!(api["timeline"][1]["reason"], "offline");

    for path in ["/api/device?app=demo&device=nobody", "/api/message?app=demo&message=nothing"] {
        let (status, body) = http_get(admin, path).await;
        assert_eq!(status, 404, "{path}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().starts_with("unknown_"), "{body}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timelines_are_capped_and_old_entries_are_pruned() {
    let server = start_with(|c| {
        c.timeline.device_entries = 8;
        c.timeline.message_entries = 8;
        c.timeline.retention_secs = 2;
        c.timeline.prune_interval_secs = 1;
    })
    .await;
    let timeline = server.node().hub.receipts.timeline().clone();
    for _ in 0..40 {
        drop(server.device("busy").await);
        gone(&server, "busy").await;
    }
    let d = inspect(&server, "busy", "").await;
    assert_eq!(d.timeline.len(), 8, "the newest eight");
    assert_eq!(d.timeline.last().unwrap().event, "closed");
    let on_disk = timeline.stored(Kind::Device, APP, "busy");
    assert!((8..=9).contains(&on_disk), "{on_disk} entries on disk for a cap of 8");

    // A message sent to many devices keeps its newest entries only.
    let ids: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let mut online = Vec::new();
    for id in &ids {
        online.push(server.device(id).await.0);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let request = PushRequest {
        target: Some(push_request::Target::Devices(Devices {
            device_ids: refs.iter().map(|s| s.to_string()).collect(),
        })),
        ..to(&[], Some(0))
    };
    let mut router = server.router().await;
    let r = within(5, router.push(request)).await.unwrap().into_inner();
    let t = trace(&server, &r.message_id).await;
    assert_eq!(t.timeline.len(), 8);
    assert!(t.timeline.iter().all(|e| e.event == "sent"), "the newest: sends, not accepted");
    assert!(timeline.stored(Kind::Message, APP, &r.message_id) <= 9);
    drop(online);

    // Past the two-second window everything is gone from disk.
    within(15, async {
        while timeline.stored(Kind::Device, APP, "busy") > 0
            || timeline.stored(Kind::Message, APP, &r.message_id) > 0
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let mut client = inspection(&server).await;
    let request = TraceMessageRequest { app_id: APP.into(), message_id: r.message_id.clone() };
    let status = client.trace_message(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(inspect(&server, "busy", "").await.timeline.is_empty());
    server.stop().await;
}

/// All timelines together stay within `max_mib`: the oldest go first, whatever their
/// age, the newest are kept, and the count survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timelines_together_stay_within_max_mib() {
    let dir = tempfile::tempdir().unwrap();
    let config = TimelineConfig { max_mib: 1, ..TimelineConfig::default() };
    let timeline = Timeline::open(&config, dir.path()).unwrap();
    const DETAIL: usize = 2_000;
    let devices: Vec<DeviceKey> = (0..400).map(|i| DeviceKey::new(APP, &format!("d{i}"))).collect();
    for chunk in devices.chunks(50) {
        for key in chunk {
            for _ in 0..5 {
                timeline.record(Note::new("connected", key).detail("x".repeat(DETAIL)));
            }
        }
        timeline.settled().await;
    }
    // 400 devices × 5 entries × 2 KB: about 4 MB written into 1 MiB.
    let bytes = timeline.bytes();
    assert!(bytes <= 1 << 20, "{bytes} bytes kept");
    let kept = |key: &DeviceKey| timeline.stored(Kind::Device, APP, &key.device);
    let total: usize = devices.iter().map(kept).sum();
    assert!(total * DETAIL <= 1 << 20, "{total} entries kept");
    assert!(total * (DETAIL + 100) >= (1 << 20) * 3 / 4, "only {total} entries kept");
    assert_eq!(kept(&devices[0]), 0, "the oldest go first");
    assert_eq!(kept(devices.last().unwrap()), 5, "the newest are kept");
    assert_eq!(timeline.read(Kind::Device, APP, "d399").len(), 5);

    drop(timeline);
    let reopened = within(10, async {
        loop {
            match Timeline::open(&config, dir.path()) {
                Ok(t) => break t,
                // The writer thread still holds the database.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    reopened.settled().await;
    assert_eq!(reopened.bytes(), bytes, "the count survives a restart");
}

/// With the timeline off nothing is kept, and failures are still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_timeline_keeps_nothing_and_still_counts() {
    let server = start_with(|c| c.timeline.enabled = false).await;
    drop(server.device("off").await);
    gone(&server, "off").await;
    let before = failures(&server, "offline").await;
    let mut router = server.router().await;
    let r = within(5, router.push(to(&["off"], Some(0)))).await.unwrap().into_inner();
    assert!(failures(&server, "offline").await > before);
    let mut client = inspection(&server).await;
    let request = TraceMessageRequest { app_id: APP.into(), message_id: r.message_id };
    assert_eq!(client.trace_message(request).await.unwrap_err().code(), tonic::Code::NotFound);
    let d = inspect(&server, "off", "").await;
    assert!(d.timeline.is_empty());
    assert!(d.verdict.starts_with("not connected since"), "{}", d.verdict);
    server.stop().await;
}

/// Every reason code the gateway can emit is in the README's list.
#[test]
fn every_reason_code_is_documented_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
    let readme = readme.unwrap();
    let section = readme.split("## Reason codes").nth(1).expect("a Reason codes section");
    let section = section.split("\n## ").next().unwrap();
    let missing: Vec<_> =
        reason::all().iter().filter(|code| !section.contains(&format!("`{code}`"))).collect();
    assert!(missing.is_empty(), "undocumented reason codes: {missing:?}");
}

/// The README's newcomer path, one `trace` after a TTL-0 push to an offline device, and
/// the same answer after a restart (the timeline is in the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_finds_the_reason_by_request_id_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = support::child::serve_in(dir.path(), "", &[]);
    let mut device = Device::connect(&served.endpoint()).await.unwrap();
    within(5, device.hello(hello(APP, "phone-1", &served.token("phone-1"), 0))).await.unwrap();
    drop(device);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let push = ["push", "--app", "demo", "--device", "phone-1", "--ttl", "0"];
    let pushed = cli(&served, &[&push[..], &["--title", "Hi", "--request-id", "hi-1"]].concat());
    assert!(pushed.contains("not_delivered"), "{pushed}");
    let want = "verdict: phone-1: not delivered: offline";
    let before = cli(&served, &["trace", "--app", "demo", "--message", "hi-1"]);
    assert!(before.contains(want), "{before}");
    assert!(served.signal("TERM", 15).is_some(), "drained");
    drop(served);
    let served = support::child::serve_in(dir.path(), "", &[]);
    let after = cli(&served, &["trace", "--app", "demo", "--message", "hi-1"]);
    assert_eq!(after, before, "the same timeline after a restart");
    let json = cli(&served, &["inspect", "--app", "demo", "--device", "phone-1", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["timeline"].as_array().unwrap().last().unwrap()["reason"], "offline");
}

/// Runs a `longlink` subcommand against `served`'s router API.
fn cli(served: &support::child::Served, args: &[&str]) -> String {
    let mut all = vec![args[0], "--api", &served.api];
    all.extend_from_slice(&args[1..]);
    served.run(&all)
}

/// Pushes streaming to an offline device leave one entry in its timeline, not one each,
/// so its connection history stays; every message's own timeline still has its entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_do_not_push_a_device_history_out() {
    let server = start_with(|c| c.timeline.device_entries = 10).await;
    drop(server.device("away").await);
    gone(&server, "away").await;
    let mut router = server.router().await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = within(5, router.push(to(&["away"], Some(0)))).await.unwrap().into_inner();
        ids.push(r.message_id);
    }
    let d = inspect(&server, "away", "").await;
    let events: Vec<&str> = d.timeline.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["connected", "closed", "not_delivered"]);
    assert!(d.verdict.starts_with("not connected since"), "{}", d.verdict);
    for id in [&ids[0], &ids[49]] {
        assert_eq!(reason_of(&trace(&server, id).await.timeline, "not_delivered"), Some("offline"));
    }
    server.stop().await;
}

/// One failed push leaves one entry in the device's timeline: the next, different
/// failure is not told it stands for repeats that never happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_failure_is_filed_once_in_the_device_timeline() {
    let server = start_with(|c| c.delivery.purge_interval_secs = 1).await;
    drop(server.device("once").await);
    gone(&server, "once").await;
    let mut router = server.router().await;
    within(5, router.push(to(&["once"], Some(0)))).await.unwrap();
    within(5, router.push(to(&["once"], Some(1)))).await.unwrap();
    let timeline = within(10, async {
        loop {
            let d = inspect(&server, "once", "").await;
            if d.timeline.iter().any(|e| e.event == "expired") {
                return d.timeline;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    let failures: Vec<(&str, &str)> = timeline
        .iter()
        .filter(|e| e.event == "not_delivered" || e.event == "expired")
        .map(|e| (e.event.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures.iter().all(|(_, detail)| !detail.contains("more like")), "{failures:?}");
    server.stop().await;
}

/// A broadcast's trace is its accepted entry, with what the fan-out did in numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_traced_with_its_counts() {
    let server = start().await;
    let (_online, _) = server.device("here").await;
    drop(server.device("away").await);
    gone(&server, "away").await;
    let mut request = to(&["unused"], Some(0));
    request.target = Some(longlink::proto::router::push_request::Target::Broadcast(
        longlink::proto::router::Broadcast { new_devices: false },
    ));
    let mut router = server.router().await;
    let id = within(5, router.push(request)).await.unwrap().into_inner().message_id;
    let t = trace(&server, &id).await;
    let accepted: Vec<&str> =
        t.timeline.iter().filter(|e| e.event == "accepted").map(|e| e.detail.as_str()).collect();
    assert_eq!(accepted.len(), 1, "{:?}", t.timeline);
    assert!(
        accepted[0].contains("seq 1: sent to 1, 0 to catch up, 1 not delivered"),
        "{accepted:?}"
    );
    server.stop().await;
}

/// The lookups name what is missing from a request instead of guessing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_without_its_parameters_is_a_bad_request_that_names_them() {
    let server = start().await;
    let addr = server.running().admin_addr.unwrap();
    for (path, missing) in [
        ("/api/message", "app"),
        ("/api/message?app=demo", "message"),
        ("/api/device?app=demo", "device"),
        ("/api/device?device=x", "app"),
    ] {
        let (code, body) = http_get(addr, path).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains(&format!("missing_parameter: {missing}")), "{path}: {body}");
    }
    server.stop().await;
}
