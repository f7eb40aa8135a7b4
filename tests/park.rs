//! Parking: idle plain connections wait without a task, and whatever reaches one (a
//! frame from the device, a push, a close) carries on exactly as it would have.
//!
//! Every other test runs with `park_after_ms = 1` too (see `support::config`), so each
//! of their steps also goes through parking; these tests check the parking itself.

mod support;

use std::time::Duration;

use longlink::client::{ClientError, Device};
use longlink::proto::device::{KickReason, Ping, ServerFrame, client_frame, server_frame};
use longlink::proto::router::KickRequest;
use longlink::session::DeviceKey;
use support::*;

fn parks_after(ms: u64) -> impl FnOnce(&mut longlink::config::Config) {
    move |c| c.device.park_after_ms = ms
}

async fn pong(device: &mut Device) {
    match within(5, device.recv()).await {
        Ok(ServerFrame { frame: Some(server_frame::Frame::Pong(_)) }) => {}
        other => panic!("expected Pong, got {other:?}"),
    }
}

async fn kicked(device: &mut Device) -> KickReason {
    loop {
        match within(5, device.recv()).await {
            Err(ClientError::Kicked(k)) => return k.reason(),
            Ok(_) => continue,
            other => panic!("expected a Kick, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_plain_connections_park_and_carry_on_where_they_stopped() {
    let server = start_with(parks_after(50)).await;
    let ids: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let mut devices = Vec::new();
    for id in &ids {
        devices.push(server.device(id).await.0);
    }
    // TLS connections keep their task: their state does not fit a slab entry.
    let (mut tls, _) = server.device_at(&server.tls(), "over-tls", 0).await;
    eventually(5, || server.node().park.parked() == 20).await;
    assert_eq!(server.node().connections(), 21, "parked connections are still counted");
    let admin = server.running().admin_addr.unwrap();
    let body = http_get(admin, "/metrics").await.1;
    assert!(body.contains("longlink_parked_connections 20"), "{body}");

    // A frame from the device: read, handled and answered while the connection stays
    // parked (it is filed again before its answer is written).
    for device in &mut devices {
        device.ping().await.unwrap();
        pong(device).await;
    }
    assert_eq!(server.node().park.parked(), 20, "answered without becoming tasks");
    // A push to a parked device: delivered, and its ack is taken.
    eventually(5, || server.node().park.parked() == 20).await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    server.notify(&refs, "wake").await;
    let mut seqs = Vec::new();
    for device in &mut devices {
        let push = next_push(device).await;
        assert_eq!(push.notification.unwrap().title, "wake");
        seqs.push(push.seq);
    }
    // Written by the push itself: no device was handed back to a task for it.
    assert_eq!(server.node().park.parked(), 20);
    for ((device, id), seq) in devices.iter_mut().zip(&ids).zip(seqs) {
        device.ack(seq).await.unwrap();
        let key = DeviceKey::new(APP, id);
        eventually(5, || server.node().hub.pending(&key) == 0).await;
    }
    // A frame split across two writes, the first half sent to a parked connection: the
    // half is read into the decoder, which keeps the connection a task until the rest.
    eventually(5, || server.node().park.parked() == 20).await;
    let ping = longlink::frame::encode(&longlink::proto::device::ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { client_time_ms: 1 })),
    });
    devices[0].send_raw(&ping[..3]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.node().park.parked() < 20, "a connection with half a frame stays a task");
    devices[0].send_raw(&ping[3..]).await.unwrap();
    pong(&mut devices[0]).await;
    eventually(5, || server.node().park.parked() == 20).await;
    // Pings, pushes and acks were all taken up in the park: only the half frame made a
    // task (of one device), which parked again after it.
    assert_eq!(server.node().park.parks(), 21, "parked once each, and once more");

    tls.ping().await.unwrap();
    pong(&mut tls).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_closes_for_every_reason_with_its_frame() {
    let server = start_with(|c| {
        c.device.park_after_ms = 20;
        c.heartbeat.min_secs = 1;
    })
    .await;
    let (mut kick, _) = server.device("kick").await;
    let (mut silent, _) = server.device_at(&server.tcp(), "silent", 1).await;
    let (gone, _) = server.device("gone").await;
    let (mut drained, _) = server.device("drained").await;
    eventually(5, || server.node().park.parked() == 4).await;

    let mut router = server.router().await;
    let ask = KickRequest {
        app_id: APP.into(),
        device_id: "kick".into(),
        reconnect: true,
        message: String::new(),
    };
    assert!(router.kick(ask).await.unwrap().into_inner().kicked);
    assert_eq!(kicked(&mut kick).await, KickReason::Operator);

    // The heartbeat wheel reaches a parked link like any other.
    assert_eq!(kicked(&mut silent).await, KickReason::HeartbeatTimeout);

    // The device going away is seen through the park's epoll.
    drop(gone);
    let key = DeviceKey::new(APP, "gone");
    eventually(5, || server.node().hub.session(&key).is_none()).await;

    eventually(5, || server.node().park.parked() == 1).await;
    let running = server.running.as_ref().unwrap();
    running.drain();
    assert_eq!(kicked(&mut drained).await, KickReason::Draining);
    eventually(5, || server.node().connections() == 0).await;
    assert_eq!(server.node().park.parked(), 0);
}

/// A parked device that does not read: the park writes what the socket takes, hands
/// the rest of the frame to a task, and the device gets every byte, in order, once it
/// reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_socket_that_pushes_back_gets_every_frame_whole_and_in_order() {
    let server = start_with(|c| {
        c.device.park_after_ms = 20;
        c.device.send_buffer_bytes = 4096;
    })
    .await;
    let (mut device, _) = server.device("full").await;
    eventually(5, || server.node().park.parked() == 1).await;
    let mut router = server.router().await;
    const PUSHES: usize = 40;
    for i in 0..PUSHES {
        // About 3 KiB each: the socket's buffers fill after a few.
        let title = format!("{i:04}{}", "x".repeat(3_000));
        router.push(notification(&["full"], &title)).await.unwrap();
    }
    assert_eq!(server.node().park.parked(), 0, "pushed back: handed to a task");
    for i in 0..PUSHES {
        let push = next_push(&mut device).await;
        assert_eq!(push.seq, i as u64 + 1);
        assert_eq!(&push.notification.unwrap().title[..4], format!("{i:04}"));
    }
    eventually(5, || server.node().park.parked() == 1).await;
    server.stop().await;
}

/// The lost wake-up this design could have: a push queued while its connection parks or
/// leaves the park, which would then wait for whatever wakes the connection next. Each
/// push here waits for the one before it to arrive, spaced so that many land as the
/// connection parks (1 ms after its last activity) or is handed to a task (by half a
/// frame, which the park cannot finish reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_the_park_are_all_delivered_at_once_in_order() {
    let server = start_with(parks_after(1)).await;
    let (mut device, _) = server.device("racer").await;
    let mut router = server.router().await;
    const PUSHES: u64 = 1_000;
    for seq in 1..=PUSHES {
        let title = format!("m{seq}");
        router.push(notification(&["racer"], &title)).await.unwrap();
        let push = tokio::time::timeout(Duration::from_secs(2), next_push(&mut device))
            .await
            .unwrap_or_else(|_| panic!("push {seq} was queued but never written"));
        assert_eq!(push.seq, seq, "pushes arrive once each, in order");
        assert_eq!(push.notification.unwrap().title, title);
        // An ack is read by the park; an ack in two halves makes the connection a task
        // until the second half, and it parks again after it. A push to a parked
        // connection is written by the push itself.
        let ack = longlink::frame::encode(&longlink::proto::device::ClientFrame {
            frame: Some(client_frame::Frame::Ack(longlink::proto::device::Ack {
                seq,
                ..Default::default()
            })),
        });
        if seq % 2 == 0 {
            device.send_raw(&ack[..2]).await.unwrap();
            tokio::time::sleep(Duration::from_micros(rand::random_range(0..1_500))).await;
            device.send_raw(&ack[2..]).await.unwrap();
        } else {
            device.send_raw(&ack).await.unwrap();
        }
        let pause = rand::random_range(500..2_500);
        tokio::time::sleep(Duration::from_micros(pause)).await;
    }
    let key = DeviceKey::new(APP, "racer");
    eventually(5, || server.node().hub.pending(&key) == 0).await;
    let parks = server.node().park.parks();
    assert!(parks >= PUSHES / 4, "the connection parked only {parks} times");
    println!("parks: {parks}");
    server.stop().await;
}

/// The two moments no event may fall between: the connection's task has looked at its
/// link and its socket for the last time, and the park has not registered them yet. A
/// frame queued there and bytes that arrived there are both taken up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_while_a_connection_parks_is_taken_up() {
    use longlink::link::{Link, OutboundLimits};
    use longlink::proto::device::{ClientFrame, Push};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = start().await;
    let park = longlink::park::Park::start().unwrap();
    let limits = OutboundLimits { max_frames: 8, max_bytes: 1 << 16 };
    for queued in [true, false] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client =
            tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (socket, _) = listener.accept().unwrap();
        socket.set_nonblocking(true).unwrap();
        let link = std::sync::Arc::new(Link::new(7, 60_000, 0));
        let expected = if queued {
            let push = ServerFrame { frame: Some(server_frame::Frame::Push(Push::default())) };
            link.send(longlink::frame::encode(&push), limits);
            "Push"
        } else {
            let ping = ClientFrame { frame: Some(client_frame::Frame::Ping(Ping::default())) };
            client.write_all(&longlink::frame::encode(&ping)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            "Pong"
        };
        let socket = mio::net::TcpStream::from_std(socket);
        let key = DeviceKey::new(APP, "between");
        park.park(socket, link.clone(), key, server.node().track()).unwrap();
        let mut got = vec![0u8; 64];
        let n = within(2, client.read(&mut got)).await.unwrap();
        let mut decoder = longlink::frame::Decoder::new(1 << 16);
        let mut frames = Vec::new();
        decoder
            .feed::<ServerFrame, _>(&got[..n], |f| {
                frames.push(f);
                true
            })
            .unwrap();
        let kind = match frames.first().and_then(|f| f.frame.as_ref()) {
            Some(server_frame::Frame::Push(_)) => "Push",
            Some(server_frame::Frame::Pong(_)) => "Pong",
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(kind, expected);
        link.close(longlink::close::CloseReason::Operator { reconnect_after_ms: None });
    }
    server.stop().await;
}

/// More frames in one write, and in one read, than the outbound queue holds answers:
/// every one is answered, parked or not. Handling pauses once the answers fill half the
/// queue, writes them, and goes on, instead of queueing every Pong first and closing the
/// device as a slow consumer past the queue's bound. The smallest Ping is 6 bytes: a
/// 4 KiB read holds 682 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pings_larger_than_the_queue_gets_every_pong_parked_or_not() {
    let ping = longlink::frame::encode(&longlink::proto::device::ClientFrame {
        frame: Some(client_frame::Frame::Ping(Ping { client_time_ms: 0 })),
    });
    assert_eq!(ping.len(), 6);
    for park_after_ms in [1, 60_000] {
        let server = start_with(parks_after(park_after_ms)).await;
        let burst = 3 * longlink::config::Config::default().device.outbound_max_frames;
        let (mut device, _) = server.device("burst").await;
        if park_after_ms == 1 {
            eventually(5, || server.node().park.parked() == 1).await;
        }
        device.send_raw(&ping.repeat(burst)).await.unwrap();
        for n in 0..burst {
            match within(5, device.recv()).await {
                Ok(ServerFrame { frame: Some(server_frame::Frame::Pong(_)) }) => {}
                other => panic!("park after {park_after_ms} ms: after {n} Pongs, {other:?}"),
            }
        }
        server.stop().await;
    }
}

/// What handling a parked connection's frame logs carries the connection's identity, as
/// on a task: the park thread handles it inside the connection's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_handled_in_the_park_log_whose_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("RUST_LOG", "debug"), ("LONGLINK_DEVICE__PARK_AFTER_MS", "1")];
    let served = support::child::serve_in(dir.path(), "", &env);
    let mut device = within(5, Device::connect(&served.endpoint())).await.unwrap();
    let hello = longlink::client::hello(APP, "tagged", &served.token("tagged"), 0);
    within(5, device.hello(hello)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let unbind = client_frame::Frame::Unbind(longlink::proto::device::Unbind {});
    device.send(unbind).await.unwrap();
    within(5, device.recv()).await.unwrap();
    let log = served.log();
    let line = log.lines().find(|l| l.contains("unbound")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(r#"connection{transport="tcp" app="demo" device="tagged""#), "{line}");
}
