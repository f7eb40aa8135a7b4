//! Case C3: clients that stop reading are cut off at their outbound cap; the server does
//! not buffer for them without limit and pushes never wait on them. Its own test binary,
//! so the counters it reads are its own.

mod support;

use std::time::{Duration, Instant};

use longlink::proto::device::Missed;
use longlink::proto::device::{PushKind, server_frame};
use longlink::proto::router::{Devices, Message, PushRequest, Result as Wire, push_request};
use longlink::session::DeviceKey;
use support::*;
use tokio_stream::StreamExt;

const STALLED: usize = 50;
const ROUNDS: usize = 10_000;
const CAP: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_closed_as_slow_consumers_and_memory_stays_bounded() {
    // The delivery timeline is off here: this test bounds what the server buffers for
    // stalled sockets, and the 500,000 TTL-0 failures it provokes in a few seconds would
    // add the timeline's own memory to what it measures (bounded apart: at most
    // `timeline.queue_max` notes waiting and 9 MiB of write buffers; with 2 MiB buffers
    // the growth here was 28 MB instead of 20 MB).
    let server = start_with(|c| {
        c.device.outbound_max_bytes = CAP;
        c.timeline.enabled = false;
    })
    .await;
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        stalled.push(server.device(&format!("s{i}")).await.0);
    }
    let (mut healthy, _) = server.device("healthy").await;
    let ids: Vec<String> = (0..STALLED).map(|i| format!("s{i}")).collect();
    let rss_before = rss_kib();

    // One request per round names all 50 stalled devices: 10,000 x 1 KiB to each, TTL 0
    // so that what is measured is buffering for the stalled sockets, not the store.
    let request = PushRequest {
        app_id: APP.into(),
        request_id: String::new(),
        dry_run: false,
        target: Some(push_request::Target::Devices(Devices { device_ids: ids.clone() })),
        message: Some(Message {
            kind: PushKind::Silent as i32,
            data: vec![7u8; 1024],
            ttl_secs: Some(0),
            ..Default::default()
        }),
    };
    let mut router = server.router().await;
    let started = Instant::now();
    let requests = tokio_stream::iter(std::iter::repeat_n(request, ROUNDS));
    let mut responses = router.push_stream(requests).await.unwrap().into_inner();
    let mut sent = 0;
    let mut peak_rss = 0;
    let mut n = 0;
    while let Some(response) = within(120, responses.next()).await {
        let response = response.unwrap();
        sent += response.results.iter().filter(|r| r.result() == Wire::Sent).count();
        n += 1;
        if n % 500 == 0 {
            peak_rss = peak_rss.max(rss_kib());
        }
    }
    let pushing_took = started.elapsed();
    assert_eq!(n, ROUNDS);

    // A healthy device is served promptly while the stalled ones are cut.
    let t = Instant::now();
    let response = server.notify(&["healthy"], "still here").await;
    let push = next_push(&mut healthy).await;
    assert_eq!(push.message_id, response.message_id);
    assert!(t.elapsed() < Duration::from_secs(1), "healthy push took {:?}", t.elapsed());

    eventually(10, || server.node().hub.sessions.len() == 1).await;
    let closes = metric(&server, "longlink_closes_total{reason=\"slow_consumer\"}").await;
    assert_eq!(closes, STALLED as f64);
    assert_eq!(metric(&server, "longlink_slow_consumer_closes_total").await, STALLED as f64);

    let grown = peak_rss.saturating_sub(rss_before) as usize * 1024;
    assert!(grown < 2 * STALLED * CAP, "grew {grown} bytes; bound {}", 2 * STALLED * CAP);
    println!("sent {sent} before the cut; pushing took {pushing_took:?}; grew {grown} bytes");

    // Messages with a TTL are kept for the cut devices, up to the per-device cap.
    let mut kept = request_with_ttl(&ids);
    for _ in 0..150 {
        let response = within(5, router.push(kept.clone())).await.unwrap().into_inner();
        assert!(response.results.iter().all(|r| r.result() == Wire::Stored));
        kept.message.as_mut().unwrap().data = vec![8u8; 16];
    }
    for id in &ids {
        assert_eq!(server.node().hub.pending(&DeviceKey::new(APP, id)), 100);
    }

    // Coming back, a stalled device learns what it missed, then gets what was kept.
    drop(stalled);
    let (mut back, _) = server.device("s0").await;
    let first = within(5, back.recv()).await.unwrap();
    match first.frame {
        // 50 stored messages dropped at the cap, plus TTL-0 ones dropped while it stalled.
        Some(server_frame::Frame::Missed(Missed { count })) => assert!(count >= 50, "{count}"),
        other => panic!("expected a Missed marker first, got {other:?}"),
    }
    let replayed = next_push(&mut back).await;
    assert!(!replayed.redelivery, "stored while offline: never handed to a link");
    server.stop().await;
}

fn request_with_ttl(ids: &[String]) -> PushRequest {
    PushRequest {
        app_id: APP.into(),
        request_id: String::new(),
        dry_run: false,
        target: Some(push_request::Target::Devices(Devices { device_ids: ids.to_vec() })),
        message: Some(Message {
            kind: PushKind::Silent as i32,
            data: vec![8u8; 16],
            ttl_secs: Some(600),
            ..Default::default()
        }),
    }
}
