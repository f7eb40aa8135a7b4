//! Broadcasts: one record per app with an app-wide seq; online devices get it at once,
//! offline ones catch up from their cursor; devices first seen later get it only when it
//! was sent for new devices; one stalled reader never holds up the others (case C4);
//! kept across kill -9.

mod support;

use std::time::Duration;

use longlink::client::{Device, hello};
use longlink::proto::device::{Push, server_frame};
use longlink::proto::router::{BroadcastResult, PushRequest, PushResponse};
use longlink::session::DeviceKey;
use support::child::serve_in;
use support::*;

async fn send(server: &TestServer, request: PushRequest) -> (String, BroadcastResult) {
    let mut router = server.router().await;
    let response: PushResponse = within(10, router.push(request)).await.unwrap().into_inner();
    assert!(response.results.is_empty(), "a broadcast answers with counts");
    (response.message_id, response.broadcast.expect("broadcast counts"))
}

/// Connects `id` reporting broadcast `cursor`.
async fn connect(server: &TestServer, id: &str, cursor: u64) -> Device {
    let mut device = within(5, Device::connect(&server.tcp())).await.unwrap();
    let mut h = hello(APP, id, &server.token(id), 0);
    h.broadcast_cursor = cursor;
    within(5, device.hello(h)).await.unwrap();
    device
}

async fn offline(server: &TestServer, id: &str) {
    drop(connect(server, id, 0).await);
    let key = DeviceKey::new(APP, id);
    eventually(5, || server.node().hub.session(&key).is_none()).await;
}

/// Asserts that nothing but the answer to a ping is waiting on `device`.
async fn nothing_more(device: &mut Device) {
    device.ping().await.unwrap();
    let frame = within(5, device.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))), "got {frame:?}");
}

fn seq_and_title(push: &Push) -> (u64, u64, &str) {
    (push.broadcast_seq, push.seq, push.notification.as_ref().unwrap().title.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_devices_get_a_broadcast_at_once_and_offline_ones_catch_up_by_cursor() {
    let server = start().await;
    offline(&server, "c").await;
    offline(&server, "d").await;
    let mut a = connect(&server, "a", 0).await;
    let mut b = connect(&server, "b", 0).await;

    let (id1, counts) = send(&server, broadcast("B1", false, None)).await;
    assert_eq!(
        (counts.broadcast_seq, counts.sent, counts.stored, counts.not_delivered),
        (1, 2, 2, 0),
        "a and b online, c and d to catch up"
    );
    let (id2, _) = send(&server, broadcast("B2", false, None)).await;
    for device in [&mut a, &mut b] {
        let first = next_push(device).await;
        assert_eq!((seq_and_title(&first), first.message_id.as_str()), ((1, 0, "B1"), &*id1));
        let second = next_push(device).await;
        assert_eq!((seq_and_title(&second), second.message_id.as_str()), ((2, 0, "B2"), &*id2));
        assert!(!first.redelivery && !second.redelivery);
    }

    let mut c = connect(&server, "c", 0).await;
    assert_eq!(seq_and_title(&next_push(&mut c).await), (1, 0, "B1"));
    assert_eq!(seq_and_title(&next_push(&mut c).await), (2, 0, "B2"));
    nothing_more(&mut c).await;
    let mut d = connect(&server, "d", 1).await;
    assert_eq!(seq_and_title(&next_push(&mut d).await), (2, 0, "B2"), "d had B1 already");
    nothing_more(&mut d).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_first_seen_later_gets_only_broadcasts_sent_for_new_devices() {
    let server = start().await;
    send(&server, broadcast("for known devices", false, None)).await;
    send(&server, broadcast("for everyone", true, None)).await;
    let mut late = connect(&server, "late", 0).await;
    let push = next_push(&mut late).await;
    assert_eq!(seq_and_title(&push), (2, 0, "for everyone"));
    nothing_more(&mut late).await;
    late.ack_broadcast(2).await.unwrap();
    let (_, counts) = send(&server, broadcast("next", false, None)).await;
    assert_eq!((counts.broadcast_seq, counts.sent), (3, 1), "a known device now");
    assert_eq!(seq_and_title(&next_push(&mut late).await), (3, 0, "next"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_broadcasts_come_again_flagged_and_acked_ones_never() {
    let server = start().await;
    let mut a = connect(&server, "a", 0).await;
    send(&server, broadcast("B1", false, None)).await;
    send(&server, broadcast("B2", false, None)).await;
    next_push(&mut a).await;
    next_push(&mut a).await;
    a.ack_broadcast(1).await.unwrap();
    nothing_more(&mut a).await; // the ack was read before the link goes
    drop(a);
    let key = DeviceKey::new(APP, "a");
    eventually(5, || server.node().hub.session(&key).is_none()).await;
    // The app lost its cursor (cursor 0): the server's record of the ack still holds.
    let mut a = connect(&server, "a", 0).await;
    let again = next_push(&mut a).await;
    assert_eq!((seq_and_title(&again), again.redelivery), ((2, 0, "B2"), true));
    nothing_more(&mut a).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_ttl_zero_broadcasts_never_reach_a_device_that_was_away() {
    let server = start().await;
    offline(&server, "away").await;
    let (_, counts) = send(&server, broadcast("now or never", false, Some(0))).await;
    assert_eq!((counts.sent, counts.stored, counts.not_delivered), (0, 0, 1));
    send(&server, broadcast("short", false, Some(1))).await;
    send(&server, broadcast("kept", false, Some(600))).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let mut away = connect(&server, "away", 0).await;
    let push = next_push(&mut away).await;
    assert_eq!(seq_and_title(&push), (3, 0, "kept"));
    assert!(push.expires_at_ms > longlink::clock::unix_ms(), "remaining TTL carried down");
    nothing_more(&mut away).await;
    server.stop().await;
}

/// Case C4: 20 devices, one stops reading; 100 broadcasts of 16 KiB. The other 19 get
/// all 100 in order, the stalled one is cut, and no broadcast call waits on its socket
/// (if one did, the calls would hang while the stalled socket stays unread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_reader_does_not_hold_up_a_broadcast() {
    let server = start_with(|c| {
        c.device.max_payload_bytes = 16 * 1024;
        c.device.send_buffer_bytes = 16 * 1024;
    })
    .await;
    let stalled = connect(&server, "stalled", 0).await;
    let mut readers = Vec::new();
    for i in 0..19 {
        let mut device = connect(&server, &format!("r{i}"), 0).await;
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            while seqs.len() < 100 {
                let push = next_push(&mut device).await;
                device.ack_broadcast(push.broadcast_seq).await.unwrap();
                seqs.push(push.broadcast_seq);
            }
            seqs
        }));
    }
    let body = "x".repeat(16 * 1024 - 8);
    for i in 0..100 {
        let mut request = broadcast(&format!("{i:03}"), false, None);
        request.message.as_mut().unwrap().notification.as_mut().unwrap().body = body.clone();
        send(&server, request).await;
    }
    for reader in readers {
        let seqs = within(30, reader).await.unwrap();
        assert_eq!(seqs, (1..=100).collect::<Vec<u64>>(), "all 100, in order");
    }
    let key = DeviceKey::new(APP, "stalled");
    eventually(10, || server.node().hub.session(&key).is_none()).await;
    assert!(metric(&server, "longlink_slow_consumer_closes_total").await >= 1.0);
    drop(stalled);
    server.stop().await;
}

/// Broadcasts are kept on disk: after kill -9, an offline device still catches up, and
/// the app's broadcast seq continues where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_survive_kill_9_and_the_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[]);
    let connect = |served: &support::child::Served, cursor: u64| {
        let (endpoint, token) = (served.endpoint(), served.token("x"));
        async move {
            let mut device = within(5, Device::connect(&endpoint)).await.unwrap();
            let mut h = hello(APP, "x", &token, 0);
            h.broadcast_cursor = cursor;
            within(5, device.hello(h)).await.unwrap();
            device
        }
    };
    drop(connect(&served, 0).await);
    let mut router = served.router().await;
    let first = router.push(broadcast("before", false, None)).await.unwrap().into_inner();
    assert_eq!(first.broadcast.unwrap().broadcast_seq, 1);
    served.signal("KILL", 5);
    drop(router);

    let served = serve_in(dir.path(), "", &[]);
    let mut x = connect(&served, 0).await;
    let push = next_push(&mut x).await;
    assert_eq!((push.broadcast_seq, push.message_id.as_str()), (1, first.message_id.as_str()));
    let mut router = served.router().await;
    let next = router.push(broadcast("after", false, None)).await.unwrap().into_inner();
    let seq = next.broadcast.unwrap().broadcast_seq;
    assert!(seq > 1, "the seq never goes back: {seq} after 1");
    assert_eq!(next_push(&mut x).await.broadcast_seq, seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_its_own_app_only() {
    let (server, mut devices, _) = two_apps().await;
    let mut request = broadcast("shop only", false, None);
    request.app_id = "shop".into();
    let (id, counts) = send(&server, request).await;
    assert_eq!((counts.broadcast_seq, counts.sent, counts.stored), (1, 1, 0));
    assert_eq!(next_push(&mut devices[0]).await.message_id, id);
    nothing_more(&mut devices[1]).await;
    assert_eq!(server.node().hub.broadcasts.last_seq("news"), 0);
    server.stop().await;
}
