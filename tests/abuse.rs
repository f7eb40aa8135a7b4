//! Misbehaving apps and routers, from an adversarial review: each case is a kind of
//! fault that once got through, kept as a test.

mod support;

use std::time::{Duration, Instant};

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::{
    Ack, Bind, ClientFrame, DeviceReport, ErrorCode, KickReason, Notification, Ping, Report,
    ServerFrame, client_frame, server_frame,
};
use longlink::proto::router::Result as Wire;
use support::*;

/// Reads until the server closes; returns the code of its last `Error` frame.
async fn refusal(device: &mut Device) -> ErrorCode {
    match within(5, device.until_closed()).await.last() {
        Some(ServerFrame { frame: Some(server_frame::Frame::Error(e)) }) => e.code(),
        other => panic!("expected an error frame last, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_costly_frames_is_cut_off_but_heartbeats_and_acks_are_not() {
    let server = start().await;
    let (mut device, _) = server.device("noisy").await;
    for _ in 0..2_000 {
        device.ping().await.unwrap();
        device.ack(0).await.unwrap();
    }
    let mut pongs = 0;
    while pongs < 2_000 {
        if let Some(server_frame::Frame::Pong(_)) = within(5, device.recv()).await.unwrap().frame {
            pongs += 1;
        }
    }
    let mut report = DeviceReport { os_version: "x".repeat(64), ..Default::default() };
    for i in 0..200 {
        report.notifications_enabled = i % 2 == 0;
        let frame = client_frame::Frame::Report(Report { report: Some(report.clone()) });
        if device.send(frame).await.is_err() {
            break;
        }
    }
    assert_eq!(refusal(&mut device).await, ErrorCode::RateLimited);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_variable_field_of_a_push_counts_against_its_limits() {
    let server = start().await;
    let (_device, _) = server.device("pz").await;
    let mut router = server.router().await;
    let mut big_click = notification(&["pz"], "t");
    big_click.message.as_mut().unwrap().notification = Some(Notification {
        title: "t".into(),
        body: "b".into(),
        click_action: "x".repeat(300_000),
    });
    let status = router.push(big_click).await.unwrap_err();
    assert!(status.message().starts_with("payload_too_large:"), "{}", status.message());
    let mut big_key = notification(&["pz"], "t");
    big_key.message.as_mut().unwrap().collapse_key = "k".repeat(129);
    let status = router.push(big_key).await.unwrap_err();
    assert!(status.message().starts_with("bad_message:"), "{}", status.message());
    // And no configuration can make the largest push bigger than the outbound queue.
    let env = [("LONGLINK_DEVICE__OUTBOUND_MAX_BYTES".to_string(), "4096".to_string())];
    let error = longlink::config::Config::load(None, env).unwrap_err().to_string();
    assert!(error.contains("device.outbound_max_bytes"), "{error}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_finishing_their_handshake_during_a_drain_are_kicked_too() {
    let server = start_with(|c| c.drain.grace_secs = 20).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let endpoint = server.tcp();
        let token = server.token(&format!("late{i}"));
        tasks.push(tokio::spawn(async move {
            let Ok(mut device) = Device::connect(&endpoint).await else { return true };
            match device.hello(hello(APP, &format!("late{i}"), &token, 0)).await {
                Ok(_) => matches!(device.recv().await, Err(ClientError::Kicked(k)) if k.reason() == KickReason::Draining),
                Err(_) => true,
            }
        }));
        if i == 150 {
            server.running().drain();
        }
    }
    for task in tasks {
        assert!(within(10, task).await.unwrap(), "a session was neither refused nor kicked");
    }
    let started = Instant::now();
    let mut server = server;
    within(10, server.running.take().unwrap().stopped()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "waited out the grace period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_from_the_device_cannot_wrap_sequence_numbers() {
    let server = start().await;
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    let mut h = hello(APP, "wrap", &server.token("wrap"), 0);
    h.acked_seq = u64::MAX;
    match device.hello(h).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code(), ErrorCode::InvalidHello),
        other => panic!("expected INVALID_HELLO, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_together_with_hello_are_handled_at_once() {
    let server = start().await;
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    let h = ClientFrame {
        frame: Some(client_frame::Frame::Hello(hello(APP, "eager", &server.token("eager"), 0))),
    };
    let p = ClientFrame { frame: Some(client_frame::Frame::Ping(Ping { client_time_ms: 42 })) };
    let mut both = longlink::frame::encode(&h).to_vec();
    both.extend_from_slice(&longlink::frame::encode(&p));
    device.send_raw(&both).await.unwrap();
    let welcome = within(2, device.recv()).await.unwrap();
    assert!(matches!(welcome.frame, Some(server_frame::Frame::Welcome(_))));
    match within(2, device.recv()).await.unwrap().frame {
        Some(server_frame::Frame::Pong(pong)) => assert_eq!(pong.client_time_ms, 42),
        other => panic!("expected the pong at once, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_token_expires_is_kicked_with_token_expired() {
    let server = start_with(|c| {
        c.heartbeat.min_secs = 1;
        c.heartbeat.default_secs = 1;
    })
    .await;
    let now = longlink::clock::unix_secs();
    let mut claims = server.claims("exp", None);
    claims.exp = now - longlink::token::SKEW_SECS + 1; // valid for about one more second
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    device.hello(hello(APP, "exp", &server.sign(&claims), 1)).await.unwrap();
    let kick = within(8, async {
        loop {
            device.ping().await.unwrap();
            match tokio::time::timeout(Duration::from_millis(300), device.recv()).await {
                Ok(Err(ClientError::Kicked(k))) => return k,
                Ok(Err(other)) => panic!("{other:?}"),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(kick.reason(), KickReason::TokenExpired);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_id_lists_and_user_ids_are_refused() {
    let server = start().await;
    let (mut device, _) = server.device("ids").await;
    let ids = (0..257).map(|i| i.to_string()).collect();
    device
        .send(client_frame::Frame::Ack(Ack { seq: 0, message_ids: ids, broadcast_cursor: 0 }))
        .await
        .unwrap();
    assert_eq!(refusal(&mut device).await, ErrorCode::MalformedFrame);

    let long_user = "u".repeat(129);
    let mut d = Device::connect(&server.tcp()).await.unwrap();
    let token = server.user_token("long", &long_user);
    match d.hello(hello(APP, "long", &token, 0)).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code(), ErrorCode::TokenMalformed),
        other => panic!("expected TOKEN_MALFORMED, got {other:?}"),
    }
    let (mut device, _) = server.device("binder").await;
    let token = server.user_token("binder", &long_user);
    device.send(client_frame::Frame::Bind(Bind { token })).await.unwrap();
    assert_eq!(refusal(&mut device).await, ErrorCode::TokenMalformed);
    let response = server.notify(&["binder"], "x").await;
    assert_eq!(response.results[0].result(), Wire::Stored, "still known, now offline");
    server.stop().await;
}
