//! Durability against a real process: graceful restart and kill -9 (case C5), kill -9
//! with 10,000 stored messages, and a corrupt record on disk.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::{KickReason, Missed, server_frame};
use longlink::proto::router::{PresenceRequest, Result as Wire};
use support::child::{Served, serve_in};
use support::{next_push, notification, within};

async fn connect(served: &Served, id: &str, acked_seq: u64) -> Device {
    let mut device = within(5, Device::connect(&served.endpoint())).await.unwrap();
    let mut h = hello("demo", id, &served.token(id), 0);
    h.acked_seq = acked_seq;
    within(5, device.hello(h)).await.unwrap();
    device
}

/// Waits until the server sees none of `ids` online.
async fn offline(served: &Served, ids: &[String]) {
    let mut router = served.router().await;
    within(10, async {
        loop {
            let ask = PresenceRequest { app_id: "demo".into(), device_ids: ids.to_vec() };
            let presence = router.presence(ask).await.unwrap().into_inner();
            if presence.devices.iter().all(|p| !p.online) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Case C5: m1..m3 written, only m1 acked, m4 and m5 stored; then `signal` and restart.
async fn sent_but_unacked_messages_survive(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[("LONGLINK_DRAIN__GRACE_SECS", "5")]);
    let mut device = connect(&served, "d", 0).await;
    let mut router = served.router().await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        if i == 4 {
            device.ack(1).await.unwrap();
            drop(device);
            offline(&served, &["d".into()]).await;
            device = connect(&served, "watcher", 0).await;
        }
        let response = router.push(notification(&["d"], &format!("m{i}"))).await.unwrap();
        let response = response.into_inner();
        let want = if i <= 3 { Wire::Sent } else { Wire::Stored };
        assert_eq!(response.results[0].result(), want, "m{i}");
        ids.push(response.message_id);
        if i <= 3 {
            assert_eq!(next_push(&mut device).await.message_id, ids[i - 1]);
        }
    }
    let mut watcher = device;
    let took = served.signal(signal, 10).expect("the process exits");
    if signal == "TERM" {
        assert!(took < Duration::from_secs(5), "drain took {took:?}, grace is 5 s");
        match within(5, watcher.recv()).await {
            Err(ClientError::Kicked(k)) => {
                assert_eq!(k.reason(), KickReason::Draining);
                assert!(k.reconnect && k.reconnect_after_ms >= 1_000);
            }
            other => panic!("expected Kick(draining), got {other:?}"),
        }
    }
    drop(served);

    let served = serve_in(dir.path(), "", &[]);
    let mut device = connect(&served, "d", 1).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let push = next_push(&mut device).await;
        got.push((push.message_id, push.redelivery));
    }
    let want: Vec<(String, bool)> =
        ids[1..].iter().zip([true, true, false, false]).map(|(id, r)| (id.clone(), r)).collect();
    assert_eq!(got, want, "exactly m2 and m3 (redelivered), then m4 and m5");
    device.ping().await.unwrap();
    let frame = within(5, device.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(server_frame::Frame::Pong(_))), "m1 is never resent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_but_unacked_messages_survive_a_graceful_restart() {
    sent_but_unacked_messages_survive("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_but_unacked_messages_survive_kill_9() {
    sent_but_unacked_messages_survive("KILL").await;
}

const DEVICES: usize = 1_000;
const PER_DEVICE: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_ten_thousand_stored_messages_loses_and_reorders_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[]);
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("dev{i}")).collect();
    for id in &ids {
        drop(connect(&served, id, 0).await);
    }
    offline(&served, &ids).await;
    let mut router = served.router().await;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut sent = Vec::new();
    for round in 0..PER_DEVICE {
        let response = router.push(notification(&refs, &format!("r{round}"))).await.unwrap();
        let response = response.into_inner();
        assert!(response.results.iter().all(|r| r.result() == Wire::Stored));
        sent.push(response.message_id);
    }
    served.signal("KILL", 5).expect("killed");
    drop(served);

    let restarted = Instant::now();
    let served = serve_in(dir.path(), "", &[]);
    let serving_after = restarted.elapsed();
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let endpoint = served.endpoint();
        let token = served.token(&id);
        tasks.push(tokio::spawn(async move {
            let mut device = Device::connect(&endpoint).await.unwrap();
            device.hello(hello("demo", &id, &token, 0)).await.unwrap();
            let mut got = Vec::new();
            while got.len() < PER_DEVICE {
                match tokio::time::timeout(Duration::from_secs(10), device.recv()).await {
                    Ok(Ok(f)) => {
                        if let Some(server_frame::Frame::Push(p)) = f.frame {
                            device.ack(p.seq).await.unwrap();
                            got.push(p.message_id);
                        }
                    }
                    _ => break,
                }
            }
            got
        }));
    }
    let (mut delivered, mut lost, mut duplicated, mut reordered) = (0, 0, 0, 0);
    let order: HashMap<&String, usize> = sent.iter().enumerate().map(|(i, id)| (id, i)).collect();
    for task in tasks {
        let got = within(60, task).await.unwrap();
        let mut seen = std::collections::HashSet::new();
        let positions: Vec<usize> = got.iter().filter_map(|id| order.get(id).copied()).collect();
        delivered += got.len();
        duplicated += got.iter().filter(|id| !seen.insert(*id)).count();
        lost += PER_DEVICE - seen.len();
        reordered += positions.windows(2).filter(|w| w[0] > w[1]).count();
    }
    println!(
        "kill -9 with {} stored: delivered {delivered}, lost {lost}, duplicated {duplicated}, \
         reordered {reordered}; serving again {serving_after:?} after restart",
        DEVICES * PER_DEVICE
    );
    assert_eq!((lost, reordered, duplicated), (0, 0, 0));
    assert_eq!(delivered, DEVICES * PER_DEVICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_is_detected_skipped_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[]);
    for id in ["c1", "c2"] {
        drop(connect(&served, id, 0).await);
    }
    offline(&served, &["c1".into(), "c2".into()]).await;
    let mut router = served.router().await;
    let mut sent = Vec::new();
    for i in 1..=3 {
        let response = router.push(notification(&["c1", "c2"], &format!("m{i}"))).await.unwrap();
        sent.push(response.into_inner().message_id);
    }
    served.signal("TERM", 10).expect("exits");
    drop(served);

    // Damage c1's second message the way a flipped bit would: the bytes change, the
    // checksum in the record does not.
    let path = dir.path().join("longlink-data/store");
    let store = longlink::store::Store::open(&path, longlink::store::Fsync::Always).unwrap();
    let key = longlink::store::record::message_key("demo", "c1", 2);
    let mut bytes = longlink::store::record::encode(&longlink::proto::store::StoredMessage {
        body: vec![1, 2, 3],
        expires_at_ms: 0,
        handed: false,
    });
    *bytes.last_mut().unwrap() ^= 0xff;
    store.put(longlink::store::Space::Messages, key, bytes);
    store.sync().await.unwrap();
    store.close();

    let served = serve_in(dir.path(), "", &[]);
    let mut c1 = connect(&served, "c1", 0).await;
    let got: Vec<String> = [next_push(&mut c1).await, next_push(&mut c1).await]
        .into_iter()
        .map(|p| p.message_id)
        .collect();
    assert_eq!(got, vec![sent[0].clone(), sent[2].clone()], "the damaged one is not served");
    let mut c2 = connect(&served, "c2", 0).await;
    for id in &sent {
        assert_eq!(&next_push(&mut c2).await.message_id, id);
    }
    assert!(served.log().contains("corrupt record skipped"), "{}", served.log());
}

/// Messages dropped at the cap are owed a `Missed` marker, also across kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_missed_count_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[("LONGLINK_DEVICE__PENDING_MAX", "2")]);
    drop(connect(&served, "m", 0).await);
    offline(&served, &["m".into()]).await;
    let mut router = served.router().await;
    let mut sent = Vec::new();
    for i in 1..=5 {
        let response = router.push(notification(&["m"], &format!("m{i}"))).await.unwrap();
        sent.push(response.into_inner().message_id);
    }
    served.signal("KILL", 5).expect("killed");
    drop(served);

    let served = serve_in(dir.path(), "", &[("LONGLINK_DEVICE__PENDING_MAX", "2")]);
    let mut device = connect(&served, "m", 0).await;
    let first = within(5, device.recv()).await.unwrap();
    assert_eq!(first.frame, Some(server_frame::Frame::Missed(Missed { count: 3 })));
    let kept = [next_push(&mut device).await.message_id, next_push(&mut device).await.message_id];
    assert_eq!(kept.to_vec(), sent[3..].to_vec(), "the two newest are kept");
}

/// What was handed before a restart is flagged as a redelivery after it: a message
/// stored while the device was away and then replayed to it, and broadcasts, none acked.
/// After kill -9 the message is flagged too (its record is rewritten as it is handed);
/// the broadcasts' flags are kept with the device's record, which every disconnect
/// writes, so a graceful restart keeps them and kill -9 may not.
async fn what_was_handed_is_flagged_after_a_restart(signal: &str) {
    use longlink::proto::router::{Broadcast, push_request};
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[("LONGLINK_DRAIN__GRACE_SECS", "5")]);
    drop(connect(&served, "d", 0).await);
    offline(&served, &["d".into()]).await;
    let mut router = served.router().await;
    let stored = router.push(notification(&["d"], "kept")).await.unwrap().into_inner();
    let mut device = connect(&served, "d", 0).await;
    let replayed = next_push(&mut device).await;
    assert_eq!((replayed.message_id.clone(), replayed.redelivery), (stored.message_id, false));
    for title in ["B1", "B2"] {
        let mut request = notification(&["unused"], title);
        request.target = Some(push_request::Target::Broadcast(Broadcast { new_devices: false }));
        router.push(request).await.unwrap();
        assert!(!next_push(&mut device).await.redelivery);
    }
    served.signal(signal, 10).expect("the process exits");
    drop(served);

    let served = serve_in(dir.path(), "", &[]);
    let mut device = connect(&served, "d", 0).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = next_push(&mut device).await;
        got.push((p.seq, p.broadcast_seq, p.redelivery));
    }
    got.sort();
    if signal == "KILL" {
        // Whether the broadcasts are flagged after kill -9 is not promised: not compared.
        for g in got.iter_mut().filter(|g| g.1 > 0) {
            g.2 = true;
        }
    }
    let want = vec![(0, 1, true), (0, 2, true), (replayed.seq, 0, true)];
    assert_eq!(got, want, "(seq, broadcast seq, redelivery) after {signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_handed_is_flagged_after_a_graceful_restart() {
    what_was_handed_is_flagged_after_a_restart("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_message_is_flagged_after_kill_9() {
    what_was_handed_is_flagged_after_a_restart("KILL").await;
}
