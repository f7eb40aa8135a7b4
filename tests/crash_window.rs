//! The crash window of seqs: a frame reaches the device before the store commits the
//! record that reserves its seq (a device's seq floor, an app's broadcast seq). Killed
//! in between, a node that came back at the seq on disk gave that seq to a new message,
//! and the device, which processed the old one and says so, had the new one counted as
//! acked: never delivered. A restarted node must move past what it may have given out
//! (`hub::SEQ_JUMP` per epoch).
//!
//! The window is a store commit wide (an fsync under `always`), so the store is kept busy
//! meanwhile and the server is killed as soon as the device has the frame. Without the
//! jump, these lost the message in 3 or 4 runs of 4.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use longlink::client::{Device, hello};
use longlink::proto::device::{Push, server_frame};
use longlink::proto::router::{PushRequest, Result as Wire};
use support::child::{Served, serve_in};
use support::{broadcast, notification, within};

const ATTEMPTS: usize = 3;
const ENV: [(&str, &str); 1] = [("LONGLINK_STORE__FSYNC", "always")];

/// Connects `id`, saying in Hello what it has processed: `acked_seq` of its own
/// messages, `cursor` of the app's broadcasts.
async fn connect(served: &Served, id: &str, acked_seq: u64, cursor: u64) -> Device {
    let mut device = within(5, Device::connect(&served.endpoint())).await.unwrap();
    let mut h = hello(support::APP, id, &served.token(id), 0);
    h.acked_seq = acked_seq;
    h.broadcast_cursor = cursor;
    within(5, device.hello(h)).await.unwrap();
    device
}

/// Keeps the store writer busy: pushes of 2 KiB to 50 offline devices, from 8 router
/// clients, until the returned flag is set. Returns once one of them was answered, so
/// what was written before (the device under test) is on disk.
async fn busy_store(served: &Served) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>) {
    let ids: Vec<String> = (0..50).map(|i| format!("bg{i}")).collect();
    for id in &ids {
        drop(connect(served, id, 0, 0).await);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    within(10, served.router().await.push(notification(&refs, "durable"))).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut pushers = Vec::new();
    for t in 0..8 {
        let (mut router, stop, ids) = (served.router().await, stop.clone(), ids.clone());
        pushers.push(tokio::spawn(async move {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            for i in 0.. {
                let title = format!("bg-{t}-{i}-{}", "x".repeat(2000));
                if stop.load(Ordering::Relaxed)
                    || router.push(notification(&refs, &title)).await.is_err()
                {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    (stop, pushers)
}

/// The first push that reaches `device`.
async fn next_frame(device: &mut Device) -> Push {
    loop {
        if let Some(server_frame::Frame::Push(p)) = within(5, device.recv()).await.unwrap().frame {
            return p;
        }
    }
}

/// Titles of the pushes the device gets until it has had none for a while.
async fn titles(device: &mut Device) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Ok(frame)) = tokio::time::timeout(Duration::from_millis(800), device.recv()).await
    {
        if let Some(server_frame::Frame::Push(p)) = frame.frame {
            got.push(p.notification.map(|n| n.title).unwrap_or_default());
        }
    }
    got
}

/// Connects device `d` (known on disk from then on), keeps the store busy, pushes `first`,
/// kills the server with -9 as soon as `d` has it, and starts the server again in `dir`.
/// Returns the restarted server and the push `d` had.
async fn killed_after(dir: &std::path::Path, first: PushRequest) -> (Served, Push) {
    let mut served = serve_in(dir, "", &ENV);
    let mut device = connect(&served, "d", 0, 0).await;
    let (stop, pushers) = busy_store(&served).await;
    let mut router = served.router().await;
    tokio::spawn(async move { router.push(first).await });
    let had = next_frame(&mut device).await;
    let _ = served.child.kill();
    let _ = served.child.wait();
    stop.store(true, Ordering::Relaxed);
    for pusher in pushers {
        let _ = pusher.await;
    }
    (serve_in(dir, "", &ENV), had)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_stored_after_a_crash_is_delivered_to_a_device_that_acked_before_it() {
    for attempt in 0..ATTEMPTS {
        let dir = tempfile::tempdir().unwrap();
        let (served, first) = killed_after(dir.path(), notification(&["d"], "first")).await;
        let mut router = served.router().await;
        let answer = router.push(notification(&["d"], "second")).await.unwrap().into_inner();
        let second = &answer.results[0];
        assert_eq!(second.result(), Wire::Stored, "attempt {attempt}");
        assert!(second.seq > first.seq, "attempt {attempt}: seq {} again", second.seq);
        // The device processed "first" before the crash and says so.
        let mut device = connect(&served, "d", first.seq, 0).await;
        assert_eq!(titles(&mut device).await, ["second"], "attempt {attempt}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broadcast_after_a_crash_reaches_a_device_that_had_the_one_before() {
    for attempt in 0..ATTEMPTS {
        let dir = tempfile::tempdir().unwrap();
        let (served, first) = killed_after(dir.path(), broadcast("B1", false, None)).await;
        let mut router = served.router().await;
        let answer = router.push(broadcast("B2", false, None)).await.unwrap().into_inner();
        let seq = answer.broadcast.unwrap().broadcast_seq;
        assert!(seq > first.broadcast_seq, "attempt {attempt}: broadcast seq {seq} again");
        let mut device = connect(&served, "d", 0, first.broadcast_seq).await;
        assert_eq!(titles(&mut device).await, ["B2"], "attempt {attempt}");
    }
}
