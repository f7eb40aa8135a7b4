//! Adversarial tests of the delivery timeline: unauthenticated token-rejection floods
//! against a victim's device timeline or with made-up ids, and forged receipts against
//! another device's message timeline.

mod support;

use std::time::Duration;

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::{
    Bind, ClientFrame, DeviceReport, ErrorCode, Receipt, ReceiptStatus, Report, client_frame,
};
use longlink::timeline::Kind;
use support::*;

async fn api(server: &TestServer, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(server.running().admin_addr.unwrap(), path).await;
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Entries of a timeline (as `/api/...` prints it) written for `device`.
fn entries_of(v: &serde_json::Value, device: &str) -> usize {
    let timeline = v["timeline"].as_array().unwrap_or_else(|| panic!("no timeline: {v}"));
    timeline.iter().filter(|e| e["device_id"] == device).count()
}

/// `frames` encoded back to back, to be sent in one write.
fn one_write(frames: impl IntoIterator<Item = client_frame::Frame>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for frame in frames {
        bytes.extend_from_slice(&longlink::frame::encode(&ClientFrame { frame: Some(frame) }));
    }
    bytes
}

fn events(v: &serde_json::Value) -> Vec<String> {
    v["timeline"]
        .as_array()
        .map(|a| a.iter().map(|e| e["event"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

/// F3: anyone who can reach the device port (no valid token needed) can write
/// `token_rejected` entries into any device's timeline, as many as they like, pushing out
/// its real connection history (cap 200), and changing its verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_hellos_erase_a_devices_history() {
    let server = start().await;
    let (victim, _) = server.device("victim").await;
    drop(victim);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, before) = api(&server, "/api/device?app=demo&device=victim").await;
    let before_events = events(&before);
    assert!(before_events.contains(&"connected".to_string()), "{before}");

    for _ in 0..260 {
        let mut d = within(5, Device::connect(&server.tcp())).await.unwrap();
        // Not a token of ours: no secret needed.
        let _ = d.hello(hello(APP, "victim", "not.a.token", 0)).await;
    }
    let (_, after) = api(&server, "/api/device?app=demo&device=victim").await;
    let after_events = events(&after);
    let kept_connected = after_events.iter().filter(|e| *e == "connected").count();
    let rejected = after_events.iter().filter(|e| *e == "token_rejected").count();
    let stored = server.node().hub.receipts.timeline().stored(Kind::Device, APP, "victim");
    assert!(
        kept_connected > 0,
        "before: {before_events:?} verdict {}; after 260 unauthenticated Hellos: {} entries, \
         {rejected} token_rejected, {kept_connected} connected, {stored} on disk; verdict now {}",
        before["verdict"],
        after_events.len(),
        after["verdict"]
    );
}

/// One authenticated device sending receipts for another device's message is held to
/// the costly-frame budget: it is closed with RATE_LIMITED long before it can push the
/// message's own steps out of its timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_receipts_are_rate_limited_and_leave_the_message_timeline_intact() {
    let server = start().await;
    let (mut v, _) = server.device("v").await;
    let response = server.notify(&["v"], "hello").await;
    let m = response.message_id.clone();
    let push = next_push(&mut v).await;
    v.ack(push.seq).await.unwrap();
    let (mut evil, _) = server.device("evil").await;
    for _ in 0..6000 {
        let r = Receipt {
            message_id: m.clone(),
            status: ReceiptStatus::Displayed as i32,
            reason: "x".into(),
            at_ms: 0,
        };
        if evil.send(client_frame::Frame::Receipt(r)).await.is_err() {
            break;
        }
    }
    let closed = within(5, evil.until_closed()).await;
    let rate_limited = closed.iter().any(|f| format!("{f:?}").contains("RateLimited"));
    assert!(rate_limited, "{closed:?}");
    server.node().hub.receipts.timeline().settled().await;
    let (_, after) = api(&server, &format!("/api/message?app=demo&message={m}")).await;
    let after_events = events(&after);
    let by_evil = entries_of(&after, "evil");
    assert!(after_events.contains(&"accepted".to_string()), "{after}");
    assert!(after_events.contains(&"acked".to_string()), "{after}");
    assert!(by_evil <= 100, "{by_evil} entries from evil");
}

/// Costly frames arriving in one write, many per read of the socket: each is charged
/// before it is handled, so no more than the allowance reaches the store or the timeline,
/// for every kind the budget counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_costly_frames_in_one_write_stops_at_the_allowance() {
    const PER_SEC: u32 = 10;
    let server = start_with(|c| c.device.max_frames_per_sec = PER_SEC).await;
    let (mut v, _) = server.device("v").await;
    let m = server.notify(&["v"], "hello").await.message_id;
    next_push(&mut v).await;
    let report = |i: usize| {
        let report = DeviceReport { os_version: format!("{i}"), ..Default::default() };
        client_frame::Frame::Report(Report { report: Some(report) })
    };
    let receipt = |_| {
        let status = ReceiptStatus::Displayed as i32;
        client_frame::Frame::Receipt(Receipt {
            message_id: m.clone(),
            status,
            ..Default::default()
        })
    };
    let bind = |i: usize| {
        let token = server.user_token("burst-bind", &format!("user-{i}"));
        client_frame::Frame::Bind(Bind { token })
    };
    let kinds: [(&str, &dyn Fn(usize) -> client_frame::Frame); 3] =
        [("report", &report), ("receipt", &receipt), ("bind", &bind)];
    for (kind, frame) in kinds {
        let id = format!("burst-{kind}");
        let (mut d, _) = server.device(&id).await;
        let _ = d.send_raw(&one_write((0..200).map(frame))).await;
        let closed = within(5, d.until_closed()).await;
        assert!(
            closed.iter().any(|f| format!("{f:?}").contains("RateLimited")),
            "{kind}: {closed:?}"
        );
        server.node().hub.receipts.timeline().settled().await;
        let (_, device) = api(&server, &format!("/api/device?app=demo&device={id}")).await;
        let (_, message) = api(&server, &format!("/api/message?app=demo&message={m}")).await;
        let reported = events(&device).iter().filter(|e| *e == "reported").count();
        let bound = events(&device).iter().filter(|e| *e == "bound").count();
        let displayed = entries_of(&message, &id);
        let handled = reported + displayed + bound;
        // Two windows at most, should the burst's reads straddle a second.
        assert!(
            (1..=2 * PER_SEC as usize).contains(&handled),
            "{kind}: {handled} of 200 handled (reported {reported}, displayed {displayed}, \
             bound {bound})"
        );
    }
}

/// The allowance holds across any second, not per fixed window: a burst just after
/// another one, across what used to be a window's edge, is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_a_second_boundary_stops_at_the_allowance() {
    let server = start().await;
    let (mut v, _) = server.device("v").await;
    let m = server.notify(&["v"], "hello").await.message_id;
    next_push(&mut v).await;
    let (mut d, _) = server.device("edge").await;
    let receipts = |n: usize| {
        let status = ReceiptStatus::Displayed as i32;
        let r = Receipt { message_id: m.clone(), status, ..Default::default() };
        one_write((0..n).map(|_| client_frame::Frame::Receipt(r.clone())))
    };
    d.send_raw(&receipts(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(940)).await;
    d.send_raw(&receipts(49)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = d.send_raw(&receipts(50)).await;
    let closed = within(5, d.until_closed()).await;
    assert!(closed.iter().any(|f| format!("{f:?}").contains("RateLimited")), "{closed:?}");
    server.node().hub.receipts.timeline().settled().await;
    let (_, message) = api(&server, &format!("/api/message?app=demo&message={m}")).await;
    let handled = entries_of(&message, "edge");
    assert!(handled <= 75, "{handled} of 100 handled within about 1.1 s, allowance 50/s");
}

/// The allowance belongs to the device, not to one connection (F4: a device reconnecting
/// in a loop had a fresh allowance on every connection): reconnecting after each burst,
/// or opening the next connection before closing the last one (a takeover), is held to
/// the same allowance, and the Hellos themselves count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_or_taking_over_does_not_refill_the_allowance() {
    const PER_SEC: u32 = 10;
    let server = start_with(|c| c.device.max_frames_per_sec = PER_SEC).await;
    for overlap in [false, true] {
        let id = format!("looper-{overlap}");
        let token = server.token(&id);
        let started = std::time::Instant::now();
        let (mut limited, mut previous) = (0, None);
        for round in 0..40 {
            let mut d = within(5, Device::connect(&server.tcp())).await.unwrap();
            match within(5, d.hello(hello(APP, &id, &token, 0))).await {
                Ok(_) => {}
                Err(ClientError::Refused(e)) => {
                    assert_eq!(e.code(), ErrorCode::RateLimited, "{e:?}");
                    limited += 1;
                    continue;
                }
                Err(other) => panic!("{other:?}"),
            }
            let reports = (0..5).map(|i| {
                let report =
                    DeviceReport { os_version: format!("{round}.{i}"), ..Default::default() };
                client_frame::Frame::Report(Report { report: Some(report) })
            });
            let _ = d.send_raw(&one_write(reports)).await;
            let _ = d.ping().await;
            let _ = tokio::time::timeout(Duration::from_millis(50), d.recv()).await;
            // Overlapping: the next connection takes this one over; otherwise it ends first.
            if overlap {
                previous = Some(d);
            } else {
                drop(d);
                let key = longlink::session::DeviceKey::new(APP, &id);
                eventually(5, || server.node().hub.session(&key).is_none()).await;
            }
        }
        drop(previous);
        server.node().hub.receipts.timeline().settled().await;
        let (_, device) = api(&server, &format!("/api/device?app=demo&device={id}")).await;
        let reported = events(&device).iter().filter(|e| *e == "reported").count();
        let connected = events(&device).iter().filter(|e| *e == "connected").count();
        let secs = started.elapsed().as_secs_f64();
        // Each connection: one Hello and five Reports; the allowance: 10, plus 10 a second.
        let allowed = (PER_SEC as f64 * (1.0 + secs)).ceil() as usize;
        assert!(limited > 0, "overlap {overlap}: never refused in 40 rounds ({secs:.1} s)");
        assert!(
            reported + connected <= allowed + 2,
            "overlap {overlap}: {connected} connections and {reported} reports in {secs:.1} s, \
             allowance {allowed}"
        );
    }
}

/// Unauthenticated Hellos with made-up device ids: the rejections of ids this node has
/// never seen authenticate are kept at a bounded rate (the rest only counted), so anyone
/// who can reach the device port cannot fill the timeline with made-up devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_hellos_with_made_up_ids_are_kept_only_at_a_bounded_rate() {
    let server = std::sync::Arc::new(start().await);
    let ghost = |w: usize, i: usize| format!("ghost-{w}-{i}-{}", "z".repeat(90));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..375 {
                let Ok(mut d) = Device::connect(&server.tcp()).await else { continue };
                let _ = d.hello(hello(APP, &ghost(w, i), "a.b.c", 0)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let timeline = server.node().hub.receipts.timeline();
    timeline.settled().await;
    let kept = (0..8)
        .flat_map(|w| (0..375).map(move |i| (w, i)))
        .filter(|&(w, i)| timeline.stored(Kind::Device, APP, &ghost(w, i)) > 0)
        .count();
    // The budget is per minute and process-wide; the run may straddle a minute.
    let limit = 2 * longlink::timeline::steps::UNKNOWN_PER_MINUTE as usize;
    assert!(kept <= limit, "{kept} of 3,000 made-up devices got a timeline (at most {limit})");
    assert!(kept > 0, "some rejections are still kept, for diagnosis");
}

/// A message timeline's cap holds on disk even when the timeline writer has since
/// forgotten it (it tracks at most 16,384 timelines and counts again from the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_timeline_stays_within_its_cap_across_many_other_timelines() {
    let server = start_with(|c| c.timeline.message_entries = 64).await;
    let (mut t, _) = server.device("t").await;
    let target = server.notify(&["t"], "target").await.message_id;
    let timeline = server.node().hub.receipts.timeline().clone();
    let router = server.router().await;
    for round in 0..2 {
        // 45 entries for the target (under the 50 a second budget), then pause.
        for _ in 0..45 {
            let status = ReceiptStatus::Displayed as i32;
            let r = Receipt { message_id: target.clone(), status, reason: String::new(), at_ms: 0 };
            t.send(client_frame::Frame::Receipt(r)).await.unwrap();
        }
        timeline.settled().await;
        // More than the writer tracks: 17,000 other message timelines.
        let mut tasks = Vec::new();
        for w in 0..8 {
            let mut router = router.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..17_000 / 8 + 1 {
                    let mut r = notification(&["nobody"], &format!("{round}-{w}-{i}"));
                    r.message.as_mut().unwrap().ttl_secs = Some(0);
                    router.push(r).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        timeline.settled().await;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    let stored = timeline.stored(Kind::Message, APP, &target);
    assert!(stored <= 64 + 8, "cap 64 (+1/8 before a trim): {stored} entries on disk");
    server.stop().await;
}
