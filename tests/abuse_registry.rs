//! Adversarial tests of the registry holding live sessions: takeover races, reconnect
//! storms across transports, kicks in the middle, and the counts and gauges after.

mod support;

use std::sync::Arc;
use std::time::Duration;

use longlink::client::{Device, hello};
use longlink::session::DeviceKey;
use support::*;

/// 300 connections for the same 10 device ids at once, half TLS, with kicks and pushes
/// interleaved; then everything closes. Counts must return to zero, each device must end
/// offline, and no push may be lost for a device that ends connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_storm_across_transports_leaves_counts_right() {
    let server = Arc::new(start().await);
    let welcomed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for round in 0..20 {
        let mut tasks = Vec::new();
        for i in 0..300usize {
            let welcomed = welcomed.clone();
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("s{}", i % 10);
                let endpoint = if i % 2 == 0 { server.tcp() } else { server.tls() };
                let Ok(mut d) = within(10, Device::connect(&endpoint)).await else { return };
                if within(10, d.hello(hello(APP, &id, &server.token(&id), 0))).await.is_ok() {
                    welcomed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis((i % 7) as u64 * 15)).await;
                drop(d);
            }));
        }
        let kicker = {
            let server = server.clone();
            tokio::spawn(async move {
                let mut router = server.router().await;
                for i in 0..200 {
                    let _ = router
                        .kick(longlink::proto::router::KickRequest {
                            app_id: APP.into(),
                            device_id: format!("s{}", i % 10),
                            reconnect: true,
                            ..Default::default()
                        })
                        .await;
                    let _ = server.notify(&[&format!("s{}", i % 10)], "x").await;
                }
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        kicker.await.unwrap();
        eventually(10, || server.node().hub.sessions.is_empty()).await;
        let counts = server.node().hub.sessions.counts();
        assert!(counts.iter().all(|(_, _, n)| *n == 0), "round {round}: {counts:?}");
    }
    for i in 0..10 {
        let key = DeviceKey::new(APP, &format!("s{i}"));
        assert!(server.node().hub.session(&key).is_none(), "s{i} still has a session");
    }
    // The gauges are process-wide (other tests in this binary share them); the node's
    // own counts, which /api/status serves, must be back to zero.
    let (_, status) = http_get(server.running().admin_addr.unwrap(), "/api/status").await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    for row in v["sessions"].as_array().unwrap() {
        assert_eq!(row["count"], 0, "status page row {row}");
    }
}

/// A takeover while a replay is under way: the old connection's acks arrive after the
/// takeover. Nothing may be lost or acked that the new one did not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_during_replay_keeps_every_message() {
    let server = start().await;
    let (d, _) = server.device("t").await;
    drop(d);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "t")).is_none()).await;
    for i in 0..90 {
        server.notify(&["t"], &format!("m{i}")).await;
    }
    let (mut old, _) = server.device("t").await;
    let first = next_push(&mut old).await;
    let (mut new, _) = server.device("t").await;
    // The old connection acks a few after being replaced.
    let _ = old.ack(first.seq + 5).await;
    let mut seqs = Vec::new();
    loop {
        let p = match tokio::time::timeout(Duration::from_millis(800), new.recv()).await {
            Ok(Ok(f)) => match f.frame {
                Some(longlink::proto::device::server_frame::Frame::Push(p)) => p,
                _ => continue,
            },
            _ => break,
        };
        seqs.push(p.seq);
        new.ack(p.seq).await.unwrap();
    }
    let max = *seqs.iter().max().unwrap();
    assert_eq!(max, 90, "last seq seen on the new connection: {seqs:?}");
    assert_eq!(server.node().hub.pending(&DeviceKey::new(APP, "t")), 0);
}
