//! Delivery semantics with the store: idempotent pushes (C6), replay without truncation
//! and the cap (C7), TTLs on every path (C8), user targets reaching offline devices, and
//! tenant isolation.

mod support;

use std::time::Duration;

use longlink::client::{Device, hello};
use longlink::proto::device::{ServerFrame, server_frame};
use longlink::proto::router::{PushRequest, Result as Wire, User, push_request};
use longlink::session::DeviceKey;
use longlink::token::{AppKey, Claims};
use support::*;

async fn gone(server: &TestServer, id: &str) {
    let key = DeviceKey::new(APP, id);
    eventually(5, || server.node().hub.session(&key).is_none()).await;
}

/// Case C6 (a): a retried request id returns the first answer and delivers nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_returns_the_first_result_and_delivers_once() {
    let server = start().await;
    let (mut device, _) = server.device("x").await;
    let (offline, _) = server.device("y").await;
    drop(offline);
    gone(&server, "y").await;
    let mut request = notification(&["x", "y"], "X");
    request.request_id = "order-42-shipped".into();
    let mut router = server.router().await;
    let first = router.push(request.clone()).await.unwrap().into_inner();
    let retry = router.push(request).await.unwrap().into_inner();
    assert_eq!(retry, first, "the retry returns the first answer");
    assert_eq!(next_push(&mut device).await.message_id, first.message_id);
    device.ping().await.unwrap();
    let frame = within(5, device.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))), "delivered once");
    assert_eq!(server.node().hub.pending(&DeviceKey::new(APP, "y")), 1, "stored once");
    server.stop().await;
}

/// Case C6 (b): a lost ack means one resend, same id, flagged; a second ack is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_means_one_flagged_resend_and_a_second_ack_is_harmless() {
    let server = start().await;
    let (mut device, _) = server.device("d").await;
    let y = server.notify(&["d"], "Y").await.message_id;
    let push = next_push(&mut device).await;
    assert_eq!((push.message_id.as_str(), push.redelivery), (y.as_str(), false));
    drop(device); // the ack never left
    gone(&server, "d").await;
    let (mut device, _) = server.device("d").await;
    let again = next_push(&mut device).await;
    assert_eq!(
        (again.message_id.as_str(), again.seq, again.redelivery),
        (y.as_str(), push.seq, true)
    );
    device.ack(again.seq).await.unwrap();
    device.ack(again.seq).await.unwrap();
    let key = DeviceKey::new(APP, "d");
    eventually(5, || server.node().hub.pending(&key) == 0).await;
    let next = server.notify(&["d"], "Z").await;
    assert_eq!(next.results[0].seq, push.seq + 1);
    assert_eq!(next_push(&mut device).await.message_id, next.message_id);
    server.stop().await;
}

/// Case C7: the window paces a 1,000-message replay without truncating it; at 1,005 the
/// oldest 5 are dropped, counted, and the device is told it missed 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_is_replayed_whole_and_overflow_is_marked() {
    let server = start_with(|c| {
        c.device.pending_max = 1_000;
        c.device.send_window = 100;
    })
    .await;
    for (id, count) in [("full", 1_000), ("over", 1_005)] {
        drop(server.device(id).await);
        gone(&server, id).await;
        let mut router = server.router().await;
        let requests = (0..count).map(|i| notification(&[id], &format!("{i}")));
        let mut responses =
            router.push_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(r) = within(30, tokio_stream::StreamExt::next(&mut responses)).await {
            assert_eq!(r.unwrap().results[0].result(), Wire::Stored);
            n += 1;
        }
        assert_eq!(n, count);
        let (mut device, _) = server.device(id).await;
        let mut titles = Vec::new();
        let mut missed = None;
        while titles.len() < 1_000 {
            match within(10, device.recv()).await.unwrap() {
                ServerFrame { frame: Some(server_frame::Frame::Push(p)) } => {
                    titles.push(p.notification.unwrap().title.parse::<usize>().unwrap());
                    device.ack(p.seq).await.unwrap();
                }
                ServerFrame { frame: Some(server_frame::Frame::Missed(m)) } => {
                    missed = Some(m.count)
                }
                _ => {}
            }
        }
        let first = count - 1_000;
        assert_eq!(titles, (first..count).collect::<Vec<_>>(), "{id}: all kept, in order");
        assert_eq!(missed, (count > 1_000).then_some(5), "{id}");
    }
    let dropped = metric(&server, "longlink_dropped_total{reason=\"pending_cap\"}").await;
    assert!(dropped >= 5.0);
    server.stop().await;
}

fn with_ttl(device: &str, title: &str, ttl: Option<u32>) -> PushRequest {
    let mut r = notification(&[device], title);
    r.message.as_mut().unwrap().ttl_secs = ttl;
    r
}

/// Case C8: TTL 0, no TTL, and a TTL that runs out, offline and online, agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_mean_the_same_on_every_path() {
    let server = start_with(|c| c.delivery.default_ttl_secs = 3_600).await;
    let mut router = server.router().await;
    drop(server.device("off").await);
    gone(&server, "off").await;

    let zero_off = router.push(with_ttl("off", "zero", Some(0))).await.unwrap().into_inner();
    assert_eq!(zero_off.results[0].result(), Wire::NotDelivered);
    let default = router.push(with_ttl("off", "default", None)).await.unwrap().into_inner();
    assert_eq!(default.results[0].result(), Wire::Stored);
    let soon = router.push(with_ttl("off", "soon", Some(3))).await.unwrap().into_inner();
    let short = router.push(with_ttl("off", "short", Some(1))).await.unwrap().into_inner();
    assert_eq!(short.results[0].result(), Wire::Stored);
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Back after 1.5 s: "short" (1 s) expired, "soon" (3 s) has about 1.5 s left.
    let (mut device, _) = server.device("off").await;
    let a = next_push(&mut device).await;
    let now = longlink::clock::unix_ms();
    assert_eq!(a.message_id, default.message_id);
    let left = a.expires_at_ms - now;
    assert!((3_590_000..=3_600_000).contains(&left), "default TTL left {left} ms");
    let b = next_push(&mut device).await;
    assert_eq!(b.message_id, soon.message_id);
    let left = b.expires_at_ms - longlink::clock::unix_ms();
    assert!((500..=1_600).contains(&left), "remaining TTL {left} ms");
    device.ack(b.seq).await.unwrap();
    device.ping().await.unwrap();
    let frame = within(5, device.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))), "expired one never sent");
    assert!(metric(&server, "longlink_dropped_total{reason=\"expired\"}").await >= 1.0);

    // Online, TTL 0 is delivered once; on a new connection it is not replayed.
    let zero_on = router.push(with_ttl("off", "zero-online", Some(0))).await.unwrap().into_inner();
    assert_eq!(zero_on.results[0].result(), Wire::Sent);
    assert_eq!(next_push(&mut device).await.message_id, zero_on.message_id);
    drop(device);
    gone(&server, "off").await;
    let (mut device, _) = server.device("off").await;
    device.ping().await.unwrap();
    let frame = within(5, device.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))), "TTL 0 not replayed");

    let status = router.push(with_ttl("off", "x", Some(31 * 86_400))).await.unwrap_err();
    assert!(status.message().starts_with("bad_ttl:"), "{}", status.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_push_reaches_offline_devices_of_the_user_through_the_store() {
    let server = start().await;
    let connect = |id: &'static str| {
        let token = server.user_token(id, "alice");
        let endpoint = server.tcp();
        async move {
            let mut d = Device::connect(&endpoint).await.unwrap();
            d.hello(hello(APP, id, &token, 0)).await.unwrap();
            d
        }
    };
    let mut phone = connect("phone").await;
    drop(connect("tablet").await);
    gone(&server, "tablet").await;
    let request = PushRequest {
        target: Some(push_request::Target::User(User { user_id: "alice".into(), platform: 0 })),
        ..notification(&[], "for alice")
    };
    let mut router = server.router().await;
    let response = router.push(request).await.unwrap().into_inner();
    let mut results: Vec<_> =
        response.results.iter().map(|r| (r.device_id.as_str(), r.result())).collect();
    results.sort();
    assert_eq!(results, vec![("phone", Wire::Sent), ("tablet", Wire::Stored)]);
    assert_eq!(next_push(&mut phone).await.message_id, response.message_id);
    let mut tablet = connect("tablet").await;
    assert_eq!(next_push(&mut tablet).await.message_id, response.message_id);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_with_the_same_device_ids_never_see_each_other_s_messages() {
    let (server, mut devices, keys) = two_apps().await;
    let now = longlink::clock::unix_secs();
    let mut router = server.router().await;
    let mut request = notification(&["same"], "shop only");
    request.app_id = "shop".into();
    let response = router.push(request).await.unwrap().into_inner();
    assert_eq!(next_push(&mut devices[0]).await.message_id, response.message_id);
    devices[1].ping().await.unwrap();
    let frame = within(5, devices[1].recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))), "news saw nothing");
    let shop = DeviceKey::new("shop", "same");
    let news = DeviceKey::new("news", "same");
    eventually(5, || server.node().hub.pending(&shop) == 1).await;
    assert_eq!(server.node().hub.pending(&news), 0);
    // A token of one app never opens the other.
    let claims = Claims {
        sub: "same".into(),
        app: "shop".into(),
        uid: None,
        exp: now + 600,
        iat: now,
        nbf: None,
    };
    let shop_token = AppKey::hs256(keys[0].1.as_bytes().to_vec()).sign(&claims);
    let mut d = Device::connect(&server.tcp()).await.unwrap();
    assert!(d.hello(hello("news", "same", &shop_token, 0)).await.is_err());
    server.stop().await;
}
