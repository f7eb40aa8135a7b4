//! Pushes end to end over TCP and TLS, acks, user targets, presence and kick.

mod support;

use longlink::client::ClientError;
use longlink::proto::device::{
    Ack, Badge, DeviceReport, KickReason, Platform, PushKind, Report, VendorChannel, badge,
    client_frame,
};
use longlink::proto::router::{
    KickRequest, Message, PresenceRequest, PushRequest, Result as Wire, User, push_request,
};
use longlink::session::DeviceKey;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_badge_and_silent_arrive_over_tcp_and_tls_and_acks_release_them() {
    let server = start().await;
    for (endpoint, id) in [(server.tcp(), "tcp-1"), (server.tls(), "tls-1")] {
        let (mut device, welcome) = server.device_at(&endpoint, id, 0).await;
        assert_eq!(welcome.heartbeat_secs, 180);
        let mut router = server.router().await;
        let kinds = [
            support::notification(&[id], "hello"),
            PushRequest {
                message: Some(Message {
                    kind: PushKind::Badge as i32,
                    badge: Some(Badge { key: "inbox".into(), change: Some(badge::Change::Set(7)) }),
                    ..Default::default()
                }),
                ..support::notification(&[id], "")
            },
            PushRequest {
                message: Some(Message {
                    kind: PushKind::Silent as i32,
                    data: b"sync:42".to_vec(),
                    ..Default::default()
                }),
                ..support::notification(&[id], "")
            },
        ];
        for (i, request) in kinds.into_iter().enumerate() {
            let response = router.push(request).await.unwrap().into_inner();
            assert_eq!(response.results[0].result(), Wire::Sent);
            assert_eq!(response.results[0].seq, i as u64 + 1);
            let push = next_push(&mut device).await;
            assert_eq!(push.message_id, response.message_id);
            assert_eq!(push.seq, i as u64 + 1);
            assert!(!push.redelivery);
            match push.kind() {
                PushKind::Notification => assert_eq!(push.notification.unwrap().title, "hello"),
                PushKind::Badge => {
                    assert_eq!(push.badge.unwrap().change, Some(badge::Change::Set(7)))
                }
                PushKind::Silent => assert_eq!(&push.data[..], b"sync:42"),
                other => panic!("unexpected kind {other:?}"),
            }
        }
        let key = DeviceKey::new(APP, id);
        assert_eq!(server.node().hub.pending(&key), 3, "unacked until the app acks");
        device.ack(2).await.unwrap();
        eventually(5, || server.node().hub.pending(&key) == 1).await;
        device.ack(3).await.unwrap();
        eventually(5, || server.node().hub.pending(&key) == 0).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_distinguish_offline_unknown_and_rejected_devices() {
    let server = start().await;
    let (device, _) = server.device("was-here").await;
    drop(device);
    let key = DeviceKey::new(APP, "was-here");
    eventually(5, || server.node().hub.session(&key).is_none()).await;
    let long = "x".repeat(129);
    let response = server.notify(&["was-here", "never-seen", &long, "was-here"], "t").await;
    let got: Vec<(Wire, &str)> =
        response.results.iter().map(|r| (r.result(), r.reason.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (Wire::Stored, ""),
            (Wire::UnknownDevice, "unknown_device"),
            (Wire::Rejected, "invalid_device_id"),
            (Wire::Rejected, "duplicate_device_id"),
        ]
    );
    assert_eq!(response.results[0].seq, 1);
    let mut now_or_never = support::notification(&["was-here"], "t");
    now_or_never.message.as_mut().unwrap().ttl_secs = Some(0);
    let mut router = server.router().await;
    let response = router.push(now_or_never).await.unwrap().into_inner();
    assert_eq!(response.results[0].result(), Wire::NotDelivered);
    assert_eq!(response.results[0].reason, "offline");
    assert_eq!(server.node().hub.pending(&key), 1, "TTL 0 is never stored");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_errors_carry_stable_codes() {
    let server = start().await;
    let mut router = server.router().await;
    let big = support::notification(&["d"], &"x".repeat(4097));
    let status = router.push(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("payload_too_large:"), "{}", status.message());

    let at_limit = support::notification(&["d"], &"x".repeat(4096 - 4));
    assert!(router.push(at_limit).await.is_ok(), "title + body of exactly 4 KiB passes");

    let many: Vec<String> = (0..1001).map(|i| format!("d{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let status = router.push(support::notification(&refs, "t")).await.unwrap_err();
    assert!(status.message().starts_with("bad_target:"), "{}", status.message());

    let mut other_app = support::notification(&["d"], "t");
    other_app.app_id = "nope".into();
    let status = router.push(other_app).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().starts_with("unknown_app:"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_push_reaches_every_device_bound_to_the_user_and_rebinding_moves_it() {
    let server = start().await;
    let mut phone = connect_as(&server, "phone", "alice").await;
    let mut tablet = connect_as(&server, "tablet", "alice").await;
    let (mut other, _) = server.device("bob-phone").await;
    let mut router = server.router().await;
    let to_alice = |platform: Platform| PushRequest {
        target: Some(push_request::Target::User(User {
            user_id: "alice".into(),
            platform: platform as i32,
        })),
        ..support::notification(&[], "for alice")
    };
    let response = router.push(to_alice(Platform::Unspecified)).await.unwrap().into_inner();
    let mut ids: Vec<_> = response.results.iter().map(|r| r.device_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["phone", "tablet"]);
    assert_eq!(next_push(&mut phone).await.notification.unwrap().title, "for alice");
    assert_eq!(next_push(&mut tablet).await.notification.unwrap().title, "for alice");

    let response = router.push(to_alice(Platform::Ios)).await.unwrap().into_inner();
    assert!(response.results.is_empty(), "both devices are Android");

    // Unbind the tablet; bind bob's phone to alice with a fresh token.
    tablet.send(client_frame::Frame::Unbind(Default::default())).await.unwrap();
    let token = server.user_token("bob-phone", "alice");
    other.send(client_frame::Frame::Bind(longlink::proto::device::Bind { token })).await.unwrap();
    within(5, tablet.recv()).await.unwrap();
    within(5, other.recv()).await.unwrap();
    let response = router.push(to_alice(Platform::Unspecified)).await.unwrap().into_inner();
    let mut ids: Vec<_> = response.results.iter().map(|r| r.device_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["bob-phone", "phone"]);
    server.stop().await;
}

async fn connect_as(server: &TestServer, id: &str, user: &str) -> longlink::client::Device {
    let mut device = longlink::client::Device::connect(&server.tcp()).await.unwrap();
    let hello = longlink::client::hello(APP, id, &server.user_token(id, user), 0);
    let welcome = within(5, device.hello(hello)).await.unwrap();
    assert_eq!(welcome.user_id, user);
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reports_session_and_device_report_then_offline() {
    let server = start().await;
    let mut device = longlink::client::Device::connect(&server.tls()).await.unwrap();
    let mut hello = longlink::client::hello(APP, "p1", &server.user_token("p1", "u7"), 45);
    hello.app_version = "3.2.1".into();
    hello.platform = Platform::Harmony as i32;
    hello.report = Some(DeviceReport {
        vendor_channel: VendorChannel::Huawei as i32,
        vendor_token_registered: false,
        vendor_error_code: "907122036".into(),
        notifications_enabled: true,
        os_version: "HarmonyOS 4".into(),
        sdk_version: "1.0".into(),
    });
    let welcome = device.hello(hello).await.unwrap();
    let mut router = server.router().await;
    let ask =
        || PresenceRequest { app_id: APP.into(), device_ids: vec!["p1".into(), "ghost".into()] };
    let presence = router.presence(ask()).await.unwrap().into_inner().devices;
    let p = &presence[0];
    assert!(p.known && p.online);
    assert_eq!(p.session_id, welcome.session_id);
    assert_eq!((p.transport.as_str(), p.heartbeat_secs), ("tls", 45));
    assert_eq!(
        (p.platform, p.app_version.as_str(), p.user_id.as_str()),
        (Platform::Harmony as i32, "3.2.1", "u7")
    );
    let report = p.report.clone().unwrap();
    assert_eq!(report.vendor_channel, VendorChannel::Huawei as i32);
    assert_eq!(report.vendor_error_code, "907122036");
    let now = longlink::clock::unix_ms();
    assert!((now - p.online_since_ms) < 5_000 && (now - p.last_seen_ms) < 5_000);
    assert!(!presence[1].known && !presence[1].online);

    // A new report replaces the old one; then the device goes away.
    let mut changed = report.clone();
    changed.notifications_enabled = false;
    device.send(client_frame::Frame::Report(Report { report: Some(changed) })).await.unwrap();
    device.send(client_frame::Frame::Ack(Ack::default())).await.unwrap();
    let key = DeviceKey::new(APP, "p1");
    eventually(5, || {
        server.node().hub.with_device(&key, |d| d.report.as_ref().unwrap().notifications_enabled)
            == Some(false)
    })
    .await;
    drop(device);
    eventually(5, || server.node().hub.session(&key).is_none()).await;
    let p = router.presence(ask()).await.unwrap().into_inner().devices.remove(0);
    assert!(p.known && !p.online);
    assert!(p.last_seen_ms > 0 && p.session_id.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_closes_with_operator_reason_and_the_requested_reconnect_hint() {
    let server = start().await;
    let (mut device, _) = server.device("k1").await;
    let mut router = server.router().await;
    let kick = |reconnect| KickRequest {
        app_id: APP.into(),
        device_id: "k1".into(),
        reconnect,
        message: "maintenance".into(),
    };
    assert!(router.kick(kick(false)).await.unwrap().into_inner().kicked);
    match within(5, device.recv()).await {
        Err(ClientError::Kicked(k)) => {
            assert_eq!(k.reason(), KickReason::Operator);
            assert!(!k.reconnect);
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    assert!(matches!(within(5, device.recv_any()).await, Err(ClientError::Closed)));
    let key = DeviceKey::new(APP, "k1");
    eventually(5, || server.node().hub.session(&key).is_none()).await;
    assert!(!router.kick(kick(true)).await.unwrap().into_inner().kicked, "nobody left to kick");

    let (mut device, _) = server.device("k1").await;
    assert!(router.kick(kick(true)).await.unwrap().into_inner().kicked);
    match within(5, device.recv()).await {
        Err(ClientError::Kicked(k)) => {
            assert!(k.reconnect);
            assert!((1_000..=60_000).contains(&k.reconnect_after_ms), "{}", k.reconnect_after_ms);
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_redelivered_flagged_on_the_next_connection() {
    let server = start().await;
    let (mut device, _) = server.device("r1").await;
    let first = server.notify(&["r1"], "one").await.message_id;
    let second = server.notify(&["r1"], "two").await.message_id;
    assert_eq!(next_push(&mut device).await.message_id, first);
    assert_eq!(next_push(&mut device).await.message_id, second);
    device.ack(1).await.unwrap();
    let key = DeviceKey::new(APP, "r1");
    eventually(5, || server.node().hub.pending(&key) == 1).await;
    drop(device);
    eventually(5, || server.node().hub.session(&key).is_none()).await;

    let (mut device, _) = server.device("r1").await;
    let again = next_push(&mut device).await;
    assert_eq!(
        (again.message_id.as_str(), again.seq, again.redelivery),
        (second.as_str(), 2, true)
    );
    let third = server.notify(&["r1"], "three").await;
    assert_eq!(third.results[0].seq, 3);
    let fresh = next_push(&mut device).await;
    assert_eq!((fresh.seq, fresh.redelivery), (3, false));
    server.stop().await;
}

/// An answer waits for the store only when the push wrote to it: a message kept (any TTL
/// but 0, unary or streamed), a kept message it replaced, an idempotency record. A TTL-0
/// push or a dry run that wrote nothing is answered without a round trip through the
/// store's writer, even with another device's write pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pushes_that_write_wait_for_the_store() {
    let server = start().await;
    let (mut device, _) = server.device("waits-1").await;
    let store = server.node().hub.store();
    let mut router = server.router().await;
    let push = |ttl: Option<u32>, request_id: &str, dry_run: bool, collapse: &str| {
        let mut request = support::notification(&["waits-1"], "w");
        let message = request.message.as_mut().unwrap();
        message.ttl_secs = ttl;
        message.collapse_key = collapse.into();
        request.request_id = request_id.into();
        request.dry_run = dry_run;
        request
    };
    // Another device's write, not yet durable, before every push: a push that waits for
    // the store has to wait for it.
    let pending = || store.put(longlink::store::Space::Meta, b"pending".to_vec(), b"x".to_vec());
    let cases = [
        // The first push to a device also reserves its seq floor.
        ("TTL 60", push(Some(60), "", false, ""), 1),
        ("TTL 0", push(Some(0), "", false, ""), 0),
        ("dry run", push(Some(60), "", true, ""), 0),
        ("default TTL", push(None, "", false, ""), 1),
        ("TTL 0 with a request id", push(Some(0), "req-1", false, ""), 1),
    ];
    for (what, request, waits) in cases {
        pending();
        let before = store.waits();
        let answer = router.push(request.clone()).await.unwrap().into_inner();
        assert_eq!(store.waits() - before, waits, "{what}: waits on the store");
        if !request.dry_run {
            assert_eq!(answer.results[0].result(), Wire::Sent, "{what}");
            let got = next_push(&mut device).await;
            device.ack(got.seq).await.unwrap();
            // The ack's deletes are enqueued before the next push is handled.
            eventually(5, || store.messages() == 0).await;
        }
    }
    // A TTL-0 push that replaces a kept message (same collapse key) deletes its record.
    router.push(push(Some(60), "", false, "k")).await.unwrap();
    let kept = next_push(&mut device).await;
    assert_eq!(store.messages(), 1);
    pending();
    let before = store.waits();
    router.push(push(Some(0), "", false, "k")).await.unwrap();
    assert_eq!(store.messages(), 0, "the kept message was replaced");
    assert_eq!(store.waits() - before, 1, "TTL 0 replacing a kept message waits");
    let replacing = next_push(&mut device).await;
    assert!(replacing.seq > kept.seq);
    device.ack(replacing.seq).await.unwrap();
    // The streamed form follows the same rule.
    pending();
    let before = store.waits();
    use tokio_stream::StreamExt;
    let requests = [push(Some(0), "", false, ""), push(Some(60), "", false, "")];
    let stream = router.push_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let answers: Vec<_> = within(5, stream.collect::<Vec<_>>()).await;
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| a.as_ref().unwrap().results[0].result() == Wire::Sent));
    assert_eq!(store.waits() - before, 1, "streamed: only the TTL-60 push waits");
}
