//! Takeover: a device that connects again replaces its older connection, and nothing the
//! old connection does while dying may remove or disturb the new session.

mod support;

use std::time::Duration;

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::KickReason;
use longlink::session::DeviceKey;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_connection_is_kicked_as_replaced() {
    let server = start().await;
    let (mut old, _) = server.device("t").await;
    let (_new, welcome) = server.device("t").await;
    match within(5, old.recv()).await {
        Err(ClientError::Kicked(k)) => {
            assert_eq!(k.reason(), KickReason::Replaced);
            assert!(!k.reconnect, "a replaced client must not come back");
        }
        other => panic!("expected Kick(replaced), got {other:?}"),
    }
    let live = server.node().hub.session(&DeviceKey::new(APP, "t")).unwrap();
    assert_eq!(format!("{:x}", live.id()), welcome.session_id);
    server.stop().await;
}

/// The race, many times: the old connection pings, closes or vanishes while the new one
/// handshakes, in whatever order the scheduler picks. Afterwards the new session must be
/// the live one, be counted once, and receive the next push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_takeovers_never_disturb_the_new_session() {
    // 300 connections of one device as fast as they go: past any sane allowance for
    // Hellos, which is not what this test is about.
    let server = start_with(|c| c.device.max_frames_per_sec = 1_000_000).await;
    let key = DeviceKey::new(APP, "racer");
    let mut seen = std::collections::HashSet::new();
    for round in 0..150u64 {
        let (mut old, _) = server.device("racer").await;
        let endpoint = server.tcp();
        let token = server.token("racer");
        let newer = tokio::spawn(async move {
            let mut device = Device::connect(&endpoint).await.unwrap();
            let welcome = device.hello(hello(APP, "racer", &token, 0)).await.unwrap();
            (device, welcome)
        });
        match round % 3 {
            0 => drop(old),
            1 => {
                let _ = old.ping().await;
                tokio::time::sleep(Duration::from_micros(round * 37 % 500)).await;
                drop(old);
            }
            _ => {
                let _ = old.ack(1).await;
                let _ = within(5, old.until_closed()).await;
            }
        }
        let (mut device, welcome) = within(5, newer).await.unwrap();
        // Let the old connection's cleanup run, whatever it does.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let live = server.node().hub.session(&key).expect("new session survives");
        assert_eq!(format!("{:x}", live.id()), welcome.session_id, "round {round}");
        assert_eq!(server.node().hub.sessions.online(APP), 1, "round {round}");
        let response = server.notify(&["racer"], "after").await;
        // An ack from the previous round's dying connection may land after this one
        // replayed that message: it comes again, flagged, and the app drops it by id.
        let push = loop {
            let push = next_push(&mut device).await;
            if push.message_id == response.message_id {
                break push;
            }
            assert!(push.redelivery, "round {round}: an older message not flagged");
            assert!(seen.contains(&push.message_id), "round {round}: unknown message");
        };
        assert!(!push.redelivery, "round {round}");
        seen.insert(push.message_id);
        device.ack(push.seq).await.unwrap();
    }
    server.stop().await;
}
