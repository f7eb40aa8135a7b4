//! Heartbeat clamping and timeouts, and case C1: a peer that goes silent while the
//! server still believes it is online.

mod support;

use std::time::{Duration, Instant};

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::{Hello, KickReason, server_frame};
use longlink::proto::router::{PresenceRequest, Result as Wire};
use longlink::session::DeviceKey;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_intervals_are_clamped_to_the_configured_range() {
    let server = start().await;
    for (asked, granted) in [(0, 180), (5, 30), (45, 45), (100_000, 600)] {
        let (_device, welcome) = server.device_at(&server.tcp(), "hb", asked).await;
        assert_eq!(welcome.heartbeat_secs, granted, "asked {asked}");
        assert_eq!(welcome.silence_limit_ms, granted * 1500);
    }
    server.stop().await;
}

fn fast_heartbeats(c: &mut longlink::config::Config) {
    c.heartbeat.min_secs = 1;
    c.heartbeat.default_secs = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_within_a_second_of_its_deadline() {
    let server = start_with(fast_heartbeats).await;
    let started = Instant::now();
    let (mut silent, welcome) = server.device_at(&server.tcp(), "quiet", 1).await;
    assert_eq!(welcome.silence_limit_ms, 1500);
    let (mut talker, _) = server.device_at(&server.tcp(), "chatty", 1).await;
    let chat = tokio::spawn(async move {
        for _ in 0..8 {
            talker.ping().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        talker
    });
    let kick = within(5, silent.recv()).await;
    let took = started.elapsed();
    match kick {
        Err(ClientError::Kicked(k)) => assert_eq!(k.reason(), KickReason::HeartbeatTimeout),
        other => panic!("expected Kick(heartbeat timeout), got {other:?}"),
    }
    assert!(took >= Duration::from_millis(1500), "closed early: {took:?}");
    assert!(took < Duration::from_millis(2500), "closed late: {took:?}");

    let mut talker = within(10, chat).await.unwrap();
    let key = DeviceKey::new(APP, "chatty");
    assert!(server.node().hub.session(&key).is_some(), "a talking device stays");
    // Drain the pongs: the talker's connection is healthy.
    let frame = within(5, talker.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))));
    let timeouts = metric(&server, "longlink_heartbeat_timeouts_total").await;
    assert!(timeouts >= 1.0);
    server.stop().await;
}

/// Case C1, with the peer silent rather than blackholed (the server cannot tell the two
/// apart: writes into either succeed until buffers fill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_to_a_dead_peer_are_redelivered_after_it_reconnects() {
    let server = start_with(|c| {
        c.heartbeat.min_secs = 2;
        c.heartbeat.default_secs = 2;
    })
    .await;
    let started = Instant::now();
    let (dead, _) = server.device_at(&server.tcp(), "d", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    for title in ["m1", "m2", "m3"] {
        let response = server.notify(&["d"], title).await;
        assert_eq!(response.results[0].result(), Wire::Sent);
        ids.push(response.message_id);
    }
    let mut router = server.router().await;
    let ask = || PresenceRequest { app_id: APP.into(), device_ids: vec!["d".into()] };
    within(10, async {
        while router.presence(ask()).await.unwrap().into_inner().devices[0].online {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let offline_after = started.elapsed();
    assert!(offline_after < Duration::from_millis(4_500), "offline only after {offline_after:?}");
    let key = DeviceKey::new(APP, "d");
    assert_eq!(server.node().hub.pending(&key), 3, "nothing written to the dead socket counts");
    drop(dead);

    let mut device = Device::connect(&server.tcp()).await.unwrap();
    let back: Hello = hello(APP, "d", &server.token("d"), 2);
    device.hello(back).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let push = next_push(&mut device).await;
        assert!(push.redelivery);
        got.push(push.message_id);
    }
    assert_eq!(got, ids, "exactly m1, m2, m3 in order");
    device.ack(3).await.unwrap();
    device.ping().await.unwrap();
    let frame = within(5, device.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))), "no fourth message");
    eventually(5, || server.node().hub.pending(&key) == 0).await;
    server.stop().await;
}
