//! The receipts stream: the whole life of a message, filters, and a subscriber too slow
//! to keep up, which loses events and is told so without slowing delivery.

mod support;

use longlink::proto::device::{Receipt, ReceiptStatus, client_frame};
use longlink::proto::router::{Event, ReceiptEvent, ReceiptsRequest};
use support::*;
use tonic::Streaming;

async fn subscribe(server: &TestServer, device: &str) -> Streaming<ReceiptEvent> {
    let mut router = server.router().await;
    let request = ReceiptsRequest { app_id: APP.into(), device_id: device.into() };
    router.receipts(request).await.unwrap().into_inner()
}

async fn next(stream: &mut Streaming<ReceiptEvent>) -> ReceiptEvent {
    within(5, stream.message()).await.unwrap().expect("an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_the_whole_life_of_a_message() {
    let server = start().await;
    drop(server.device("d").await);
    drop(server.device("someone-else").await);
    eventually(5, || server.node().hub.sessions.is_empty()).await;
    let mut events = subscribe(&server, "d").await;
    let mut others = subscribe(&server, "someone-else").await;
    eventually(5, || server.node().hub.receipts.wanted()).await;

    let id = server.notify(&["d"], "hello").await.message_id;
    let (mut device, _) = server.device("d").await;
    let push = next_push(&mut device).await;
    device.ack(push.seq).await.unwrap();
    for status in [ReceiptStatus::Displayed, ReceiptStatus::Opened] {
        let receipt =
            Receipt { message_id: id.clone(), status: status as i32, ..Default::default() };
        device.send(client_frame::Frame::Receipt(receipt)).await.unwrap();
    }
    let mut life = Vec::new();
    for _ in 0..5 {
        let e = next(&mut events).await;
        assert_eq!((e.message_id.as_str(), e.device_id.as_str()), (id.as_str(), "d"));
        life.push(e.event());
    }
    assert_eq!(life, [Event::Stored, Event::Sent, Event::Acked, Event::Displayed, Event::Opened]);

    // The other subscriber saw nothing of d: its first event is its own device's.
    let theirs = server.notify(&["someone-else"], "x").await.message_id;
    let first = next(&mut others).await;
    assert_eq!((first.device_id.as_str(), first.message_id), ("someone-else", theirs));
    server.stop().await;
}

const ROUNDS: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_loses_events_and_is_told_how_many() {
    let server = start().await;
    let ids: Vec<String> = (0..1000).map(|i| format!("d{i}")).collect();
    for id in &ids {
        drop(server.device(id).await);
    }
    eventually(10, || server.node().hub.sessions.is_empty()).await;
    let mut slow = subscribe(&server, "").await;
    eventually(5, || server.node().hub.receipts.wanted()).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        server.notify(&refs, &format!("r{round}")).await;
    }
    let pushing = started.elapsed();
    // Each round is 1,000 stored events (and, past the per-device cap, 1,000 dropped
    // ones): far more than the feed, the stream buffer and HTTP/2 windows hold.
    let total = 1000 * ROUNDS + 1000 * (ROUNDS - 100);
    let mut seen = 0;
    let mut lost = 0;
    while seen + lost < total {
        let e = next(&mut slow).await;
        if e.event() == Event::Lost {
            lost += e.lost;
        } else {
            seen += 1;
        }
    }
    assert!(lost > 0, "nothing was lost");
    assert_eq!(seen + lost, total, "every event either seen or counted as lost");
    println!("seen {seen}, lost {lost}; pushing took {pushing:?}");
    server.stop().await;
}
