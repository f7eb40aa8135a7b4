//! A device whose backlog is made of large messages (and large broadcasts) gets all of
//! it: a replay fills at most half of the connection's outbound queue and goes on as the
//! device acks, instead of overflowing the queue and being closed as a slow consumer on
//! every reconnect.

mod support;

use std::time::Duration;

use longlink::client::{Device, hello};
use longlink::proto::device::server_frame;
use longlink::proto::router::{Broadcast, push_request};
use longlink::session::DeviceKey;
use support::*;

async fn drain(device: &mut Device) -> (Vec<u64>, Vec<String>) {
    let mut seqs = Vec::new();
    let mut other = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), device.recv()).await {
            Ok(Ok(f)) => match f.frame {
                Some(server_frame::Frame::Push(p)) => {
                    seqs.push(if p.seq > 0 { p.seq } else { p.broadcast_seq });
                    if p.seq > 0 {
                        let _ = device.ack(p.seq).await;
                    } else {
                        let _ = device.ack_broadcast(p.broadcast_seq).await;
                    }
                }
                Some(f) => other.push(format!("{f:?}").chars().take(80).collect()),
                None => {}
            },
            Ok(Err(e)) => {
                other.push(format!("closed: {e}"));
                break;
            }
            Err(_) => break,
        }
    }
    (seqs, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_messages_is_replayed_whole() {
    let server = start().await;
    let (d, _) = server.device("big").await;
    drop(d);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "big")).is_none()).await;
    for i in 0..80 {
        // 4,000 bytes of title: under the 4 KiB payload limit.
        let r = server.notify(&["big"], &format!("{i:04}{}", "t".repeat(3996))).await;
        assert_eq!(r.results[0].result, 2, "stored");
    }
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (mut d, _) = server.device("big").await;
        let (seqs, other) = drain(&mut d).await;
        attempts.push((seqs.len(), other));
    }
    let pending = server.node().hub.pending(&DeviceKey::new(APP, "big"));
    assert_eq!(
        pending, 0,
        "80 stored 4 KB messages; after 3 reconnects {pending} still pending; per attempt \
         (pushes received, other frames): {attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_of_large_broadcasts_completes() {
    let server = start().await;
    let (d, _) = server.device("bigb").await;
    drop(d);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "bigb")).is_none()).await;
    let mut router = server.router().await;
    for i in 0..80 {
        let mut r = notification(&["unused"], &format!("{i:04}{}", "t".repeat(3996)));
        r.target = Some(push_request::Target::Broadcast(Broadcast { new_devices: false }));
        router.push(r).await.unwrap();
    }
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let mut d = within(5, Device::connect(&server.tcp())).await.unwrap();
        within(5, d.hello(hello(APP, "bigb", &server.token("bigb"), 0))).await.unwrap();
        let (seqs, other) = drain(&mut d).await;
        attempts.push((seqs.len(), other));
    }
    let got: usize = attempts.iter().map(|a| a.0).sum();
    assert!(
        got >= 80,
        "80 kept 4 KB broadcasts; per reconnect (received, other frames): {attempts:?}"
    );
}

/// A replayed message is rewritten in the store as handed; that rewrite is not a new
/// kept message: once the device acks what was replayed, the store keeps none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_count_is_zero_once_a_replay_is_acked() {
    let server = start().await;
    drop(server.device("r").await);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "r")).is_none()).await;
    for i in 0..3 {
        server.notify(&["r"], &format!("kept {i}")).await;
    }
    let store = server.node().hub.store();
    store.sync().await.unwrap();
    assert_eq!(store.messages(), 3);
    let (mut d, _) = server.device("r").await;
    let (seqs, _) = drain(&mut d).await;
    assert_eq!(seqs, vec![1, 2, 3]);
    store.sync().await.unwrap();
    assert_eq!(store.messages(), 0, "kept messages counted after the acked replay");
    server.stop().await;
}
