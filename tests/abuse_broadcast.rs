//! Adversarial tests of broadcasts: seq persistence across restarts with TTL-0
//! broadcasts, concurrent TTL-0 broadcasts, ordering between fan-out and catch-up under
//! reconnects, huge/ahead cursors, the per-app cap, dry runs.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use longlink::client::{Device, Endpoint, hello};
use longlink::proto::device::server_frame;
use longlink::proto::router::BroadcastResult;
use longlink::session::DeviceKey;
use support::child::serve_in;
use support::*;

async fn connect_at(endpoint: &Endpoint, id: &str, token: &str, cursor: u64) -> Device {
    let mut device = within(5, Device::connect(endpoint)).await.unwrap();
    let mut h = hello(APP, id, token, 0);
    h.broadcast_cursor = cursor;
    within(5, device.hello(h)).await.unwrap();
    device
}

/// The next push within `ms`, or None.
async fn push_within(device: &mut Device, ms: u64) -> Option<longlink::proto::device::Push> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, device.recv()).await {
            Ok(Ok(f)) => {
                if let Some(server_frame::Frame::Push(p)) = f.frame {
                    return Some(p);
                }
            }
            _ => return None,
        }
    }
}

/// F1: a TTL-0 broadcast advances the app's seq in memory but never on disk, so after a
/// restart (graceful, not even kill -9) the seq goes back and new broadcasts reuse seqs
/// that devices already acked: they never get them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl0_broadcasts_make_the_seq_go_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[]);
    let token = served.token("a");
    let mut a = connect_at(&served.endpoint(), "a", &token, 0).await;
    let mut router = served.router().await;
    let mut seqs = Vec::new();
    for (title, ttl) in [("P1", None), ("E2", Some(0)), ("E3", Some(0))] {
        let r = router.push(broadcast(title, false, ttl)).await.unwrap().into_inner();
        seqs.push(r.broadcast.unwrap().broadcast_seq);
    }
    assert_eq!(seqs, vec![1, 2, 3]);
    for want in 1..=3 {
        assert_eq!(next_push(&mut a).await.broadcast_seq, want);
    }
    a.ack_broadcast(3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(router);
    assert!(served.signal("TERM", 15).is_some(), "drains");

    let served = serve_in(dir.path(), "", &[]);
    let mut router = served.router().await;
    let r = router.push(broadcast("P4", false, None)).await.unwrap().into_inner();
    let seq4 = r.broadcast.unwrap().broadcast_seq;
    // The device comes back with the cursor it processed (3): it must get P4.
    let mut a = connect_at(&served.endpoint(), "a", &token, 3).await;
    let got = push_within(&mut a, 3000).await;
    let title = got.as_ref().map(|p| p.notification.as_ref().unwrap().title.clone());
    assert!(
        seq4 > 3 && title.as_deref() == Some("P4"),
        "after restart the new broadcast got seq {seq4} (expected past 3) and the device \
         that had acked 3 received {title:?}"
    );
}

/// F2: concurrent TTL-0 broadcasts. A device online the whole time should get every one
/// whose answer counted it `sent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ttl0_broadcasts_reach_every_online_device() {
    let server = start().await;
    const DEVICES: usize = 300;
    const CASTS: usize = 60;
    let mut readers = Vec::new();
    for i in 0..DEVICES {
        let id = format!("d{i}");
        let token = server.token(&id);
        let mut device = connect_at(&server.tcp(), &id, &token, 0).await;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(p) = push_within(&mut device, 4000).await {
                got.push(p.broadcast_seq);
                let _ = device.ack_broadcast(p.broadcast_seq).await;
            }
            got
        }));
    }
    let router = server.router().await;
    let mut sends = Vec::new();
    for i in 0..CASTS {
        let mut router = router.clone();
        sends.push(tokio::spawn(async move {
            let r = router.push(broadcast(&format!("E{i}"), false, Some(0))).await;
            r.unwrap().into_inner().broadcast.unwrap()
        }));
    }
    let mut answered: Vec<BroadcastResult> = Vec::new();
    for s in sends {
        answered.push(s.await.unwrap());
    }
    let sent: u64 = answered.iter().map(|b| b.sent).sum();
    let mut received = 0usize;
    let mut missing: HashMap<u64, usize> = HashMap::new();
    for r in readers {
        let got = r.await.unwrap();
        received += got.len();
        for b in &answered {
            if !got.contains(&b.broadcast_seq) {
                *missing.entry(b.broadcast_seq).or_default() += 1;
            }
        }
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "out of order on one connection");
    }
    let mut missing: Vec<_> = missing.into_iter().collect();
    missing.sort();
    assert_eq!(
        (sent as usize, received),
        (DEVICES * CASTS, DEVICES * CASTS),
        "answers counted {sent} sent, devices received {received}; (seq, devices missing it): \
         {missing:?}"
    );
}

/// Ordering: persistent broadcasts fired concurrently while devices reconnect with the
/// cursor they acked. On every connection broadcast seqs must be strictly increasing,
/// and in the end every device has every broadcast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_broadcasts_and_reconnects_keep_order_and_lose_nothing() {
    let server = Arc::new(start().await);
    const DEVICES: usize = 40;
    const CASTS: u64 = 150;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..DEVICES {
        let server = server.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("r{i}");
            let token = server.token(&id);
            let mut cursor = 0u64;
            let mut all = std::collections::BTreeSet::new();
            let mut violations = Vec::new();
            let mut round = 0u64;
            loop {
                let done = stop.load(std::sync::atomic::Ordering::SeqCst);
                let mut d = connect_at(&server.tcp(), &id, &token, cursor).await;
                let mut last = 0u64;
                // Read a few, then drop the connection (reconnect storm), unless done.
                let budget = if done { usize::MAX } else { 3 + (i + round as usize) % 7 };
                let mut n = 0;
                while n < budget {
                    let Some(p) = push_within(&mut d, if done { 1500 } else { 300 }).await else {
                        break;
                    };
                    if p.broadcast_seq <= last {
                        violations.push((last, p.broadcast_seq));
                    }
                    last = p.broadcast_seq;
                    all.insert(p.broadcast_seq);
                    // Ack only sometimes: unacked ones must come again.
                    if p.broadcast_seq % 2 == 0 {
                        let _ = d.ack_broadcast(p.broadcast_seq).await;
                        cursor = cursor.max(p.broadcast_seq);
                    }
                    n += 1;
                }
                if done {
                    break;
                }
                round += 1;
                drop(d);
            }
            (id, all, violations)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let router = server.router().await;
    let mut sends = Vec::new();
    for i in 0..CASTS {
        let mut router = router.clone();
        sends.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            router.push(broadcast(&format!("B{i}"), true, None)).await.unwrap()
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut problems = Vec::new();
    for t in tasks {
        let (id, all, violations) = within(60, t).await.unwrap();
        let missing: Vec<u64> = (1..=CASTS).filter(|s| !all.contains(s)).collect();
        if !violations.is_empty() || !missing.is_empty() {
            problems.push((id, violations, missing));
        }
    }
    assert!(problems.is_empty(), "(device, order violations, missing seqs): {problems:?}");
}

/// A device reporting a cursor ahead of the server, up to the 2^48 limit, and past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_ahead_huge_and_zero() {
    let server = start().await;
    let mut honest = connect_at(&server.tcp(), "honest", &server.token("honest"), 0).await;
    let mut router = server.router().await;
    router.push(broadcast("first", false, None)).await.unwrap();
    assert_eq!(next_push(&mut honest).await.broadcast_seq, 1);
    // Past the limit: refused.
    let mut d = within(5, Device::connect(&server.tcp())).await.unwrap();
    let mut h = hello(APP, "liar", &server.token("liar"), 0);
    h.broadcast_cursor = (1 << 48) + 1;
    assert!(within(5, d.hello(h)).await.is_err(), "cursor over 2^48 refused");
    // At the limit: accepted, and it moves the app's seq, but only half way, so that the
    // seqs given out after it can always be reported back.
    let liar = connect_at(&server.tcp(), "liar", &server.token("liar"), 1 << 48).await;
    let r = router.push(broadcast("second", false, None)).await.unwrap().into_inner();
    let seq = r.broadcast.unwrap().broadcast_seq;
    assert_eq!(seq, (1 << 47) + 1);
    let p = next_push(&mut honest).await;
    assert_eq!(p.broadcast_seq, seq, "the honest device gets the seq the answer gave");
    honest.ack_broadcast(seq).await.unwrap();
    drop(honest);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "honest")).is_none()).await;
    // The honest device comes back with the cursor it was handed: welcome, and it gets
    // what follows (F1: it was refused on every reconnect, and so was the whole fleet).
    let mut honest = connect_at(&server.tcp(), "honest", &server.token("honest"), seq).await;
    let again = router.push(broadcast("after", false, None)).await.unwrap().into_inner();
    let after = again.broadcast.unwrap().broadcast_seq;
    assert_eq!(next_push(&mut honest).await.broadcast_seq, after);
    assert_eq!(after, seq + 1);
    // An Ack far ahead is clamped.
    honest.ack_broadcast(u64::MAX).await.unwrap();
    let r = router.push(broadcast("third", false, None)).await.unwrap().into_inner();
    let third = r.broadcast.unwrap();
    let p = next_push(&mut honest).await;
    assert_eq!(p.broadcast_seq, third.broadcast_seq, "an ack of u64::MAX does not skip later ones");
    drop(liar);
}

/// The app's highest broadcast seq on disk is the highest given out, with broadcasts
/// racing each other: read and enqueued apart, two TTL-0 broadcasts could leave the
/// lower seq on disk (kept nowhere else), and after a restart that seq was given out
/// again and skipped by devices that had processed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_broadcasts_leave_the_highest_seq_on_disk() {
    use longlink::message::Message;
    use longlink::proto::device::Push;
    let server = start().await;
    let app: Arc<str> = APP.into();
    let started = std::time::Instant::now();
    let mut stale = Vec::new();
    let mut rounds = 0;
    while rounds < 6_000 && started.elapsed() < Duration::from_secs(15) && stale.is_empty() {
        rounds += 1;
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let (node, app, barrier) = (server.node().clone(), app.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let push = Push { message_id: format!("{t}"), ..Default::default() };
                    let message = Arc::new(Message::ephemeral(push));
                    barrier.wait();
                    node.hub.broadcast(&app, message, false).seq
                })
            })
            .collect();
        let highest = threads.into_iter().map(|t| t.join().unwrap()).max().unwrap();
        let store = server.node().hub.store();
        store.sync().await.unwrap();
        let loaded = store.load(longlink::clock::unix_ms()).unwrap();
        let kept = loaded.broadcast_seqs.iter().map(|(_, s, _)| *s).max().unwrap_or(0);
        if kept != highest {
            stale.push((rounds, highest, kept));
        }
    }
    println!("{rounds} rounds");
    assert!(stale.is_empty(), "(round, highest given out, on disk): {stale:?}");
}

/// A TTL-0 broadcast's `sent` counts the devices it was written to: one that connects
/// while the fan-out walks the registry skips it in its catch-up (it is for the devices
/// online when it was sent) and must not be counted as sent when the walk reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl0_broadcast_counts_as_sent_only_the_devices_that_got_it() {
    use longlink::hub::Profile;
    use longlink::link::Link;
    use longlink::session::{Session, Transport};
    let server = start().await;
    // Offline devices that make the walk long enough for a connect to land inside it.
    // Known devices (the first 40 connect again, one per trial, during a broadcast).
    for i in 0..20_000u64 {
        let key = DeviceKey::new(APP, &format!("away{i}"));
        let link = Arc::new(Link::new(i + 1, 60_000, 0));
        let session = Session { link, transport: Transport::Tcp, since_ms: 0, heartbeat_secs: 60 };
        server.node().hub.connect(&key, Profile::default(), session);
        server.node().hub.disconnect(&key, i + 1, 0);
    }
    let mut router = server.router().await;
    let mut wrong = Vec::new();
    for trial in 0..40u64 {
        let id = format!("away{trial}");
        let (endpoint, token) = (server.tcp(), server.token(&id));
        let late = tokio::spawn(async move {
            // Spread over the time the request takes to reach the walk and the walk.
            tokio::time::sleep(Duration::from_micros(trial * 500)).await;
            let mut d = connect_at(&endpoint, &id, &token, 0).await;
            push_within(&mut d, 300).await.is_some()
        });
        let r = router.push(broadcast(&format!("E{trial}"), false, Some(0))).await.unwrap();
        let sent = r.into_inner().broadcast.unwrap().sent;
        let got = late.await.unwrap() as u64;
        if sent != got {
            wrong.push((trial, sent, got));
        }
        let key = DeviceKey::new(APP, &format!("away{trial}"));
        eventually(5, || server.node().hub.session(&key).is_none()).await;
    }
    assert!(wrong.is_empty(), "(trial, counted as sent, devices that got it): {wrong:?}");
}

/// An ack ahead of what the device was written (a liar, or an ack racing a fan-out
/// that has not reached the device yet) acks only what it was written: the broadcasts
/// the send window held back still arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_ahead_of_what_was_written_skips_nothing() {
    const WINDOW: usize = 4;
    let server = start_with(|c| c.device.send_window = WINDOW).await;
    let mut d = connect_at(&server.tcp(), "d", &server.token("d"), 0).await;
    let mut router = server.router().await;
    for i in 1..=10 {
        router.push(broadcast(&format!("B{i}"), false, None)).await.unwrap();
    }
    let mut got = Vec::new();
    while let Some(p) = push_within(&mut d, 500).await {
        got.push(p.broadcast_seq);
    }
    assert_eq!(got, vec![1, 2, 3, 4], "the window holds the rest back until acks");
    d.ack_broadcast(10).await.unwrap();
    while let Some(p) = push_within(&mut d, 1000).await {
        got.push(p.broadcast_seq);
        d.ack_broadcast(p.broadcast_seq).await.unwrap();
    }
    assert_eq!(got, (1..=10).collect::<Vec<u64>>());
}

/// The per-app cap: only the newest `broadcast_max` are kept for a device that was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_keeps_the_newest_and_counts_are_right() {
    let server = start_with(|c| c.delivery.broadcast_max = 5).await;
    drop(connect_at(&server.tcp(), "away", &server.token("away"), 0).await);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "away")).is_none()).await;
    let mut router = server.router().await;
    for i in 1..=12 {
        router.push(broadcast(&format!("B{i}"), false, None)).await.unwrap();
    }
    assert_eq!(server.node().hub.broadcasts.len(), 5);
    let mut d = connect_at(&server.tcp(), "away", &server.token("away"), 0).await;
    let mut got = Vec::new();
    while let Some(p) = push_within(&mut d, 1000).await {
        got.push(p.broadcast_seq);
    }
    assert_eq!(got, vec![8, 9, 10, 11, 12]);
}

/// Dry-run broadcasts change nothing: the seq, the log, the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_broadcasts_change_nothing() {
    let server = start().await;
    let mut on = connect_at(&server.tcp(), "on", &server.token("on"), 0).await;
    let mut router = server.router().await;
    for i in 0..20 {
        let mut r = broadcast(&format!("dry{i}"), true, if i % 2 == 0 { Some(0) } else { None });
        r.dry_run = true;
        r.request_id = format!("dry-{i}");
        let answer = router.push(r).await.unwrap().into_inner();
        assert_eq!(answer.broadcast.unwrap().broadcast_seq, 1);
    }
    assert_eq!(server.node().hub.broadcasts.last_seq(APP), 0);
    assert!(push_within(&mut on, 500).await.is_none(), "a dry run delivered something");
    // The same request id for real afterwards is not a replay.
    let mut r = broadcast("real", false, None);
    r.request_id = "dry-3".into();
    let answer = router.push(r).await.unwrap().into_inner();
    assert_eq!(answer.broadcast.unwrap().sent, 1);
    assert_eq!(next_push(&mut on).await.notification.unwrap().title, "real");
}

/// kill -9 in the middle of a stream of broadcasts: after restart the seq continues above
/// every answered one, and a device reporting its cursor gets every answered broadcast
/// after it, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_broadcast_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = serve_in(dir.path(), "", &[]);
    let token = served.token("k");
    let mut d = connect_at(&served.endpoint(), "k", &token, 0).await;
    let router = served.router().await;
    let answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut router = router.clone();
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..1000 {
                match router.push(broadcast(&format!("w{w}-{i}"), false, None)).await {
                    Ok(r) => answered
                        .lock()
                        .unwrap()
                        .push(r.into_inner().broadcast.unwrap().broadcast_seq),
                    Err(_) => break,
                }
            }
        }));
    }
    // Read and ack some.
    let mut cursor = 0;
    for _ in 0..30 {
        if let Some(p) = push_within(&mut d, 2000).await {
            cursor = p.broadcast_seq;
        }
    }
    d.ack_broadcast(cursor).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.signal("KILL", 5);
    for t in tasks {
        let _ = t.await;
    }
    drop(router);
    let answered = answered.lock().unwrap().clone();
    let max_answered = *answered.iter().max().unwrap();
    let served = serve_in(dir.path(), "", &[]);
    let mut router = served.router().await;
    let next = router.push(broadcast("after", false, None)).await.unwrap().into_inner();
    let next_seq = next.broadcast.unwrap().broadcast_seq;
    assert!(next_seq > max_answered, "seq went back: {next_seq} <= {max_answered}");
    let mut d = connect_at(&served.endpoint(), "k", &token, cursor).await;
    let mut got = Vec::new();
    while let Some(p) = push_within(&mut d, 1500).await {
        got.push(p.broadcast_seq);
        d.ack_broadcast(p.broadcast_seq).await.unwrap();
    }
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(got, sorted, "order after restart");
    let missing: Vec<u64> = answered
        .iter()
        .copied()
        .filter(|s| *s > cursor && *s + 1000 > next_seq && !got.contains(s))
        .collect();
    assert!(
        missing.is_empty() && got.contains(&next_seq),
        "cursor {cursor}, answered {} (max {max_answered}), next {next_seq}, got {} first {:?}, missing {} first {:?}",
        answered.len(),
        got.len(),
        &got[..got.len().min(10)],
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// A device that never reads while large broadcasts stream: the others get every one
/// promptly, and it catches up in order after it is closed and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_during_large_broadcasts() {
    let server = start().await;
    let token = server.token("stall");
    let mut stalled = connect_at(&server.tcp(), "stall", &token, 0).await;
    let mut fast = Vec::new();
    for i in 0..20 {
        let id = format!("f{i}");
        let t = server.token(&id);
        let mut d = connect_at(&server.tcp(), &id, &t, 0).await;
        fast.push(tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(p) = push_within(&mut d, 3000).await {
                n += 1;
                assert_eq!(p.broadcast_seq, n);
                d.ack_broadcast(p.broadcast_seq).await.unwrap();
            }
            n
        }));
    }
    let mut router = server.router().await;
    let started = std::time::Instant::now();
    for i in 0..300 {
        let mut r = broadcast(&format!("{i}{}", "x".repeat(1500)), false, None);
        r.message.as_mut().unwrap().notification.as_mut().unwrap().body = String::new();
        router.push(r).await.unwrap();
    }
    let took = started.elapsed();
    for f in fast {
        assert_eq!(f.await.unwrap(), 300);
    }
    // The stalled one: read everything now; it was closed as slow consumer or holds 100.
    let mut frames = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), stalled.recv()).await {
        frames += 1;
    }
    let mut back = connect_at(&server.tcp(), "stall", &token, 0).await;
    let mut got = Vec::new();
    while let Some(p) = push_within(&mut back, 1500).await {
        got.push(p.broadcast_seq);
        back.ack_broadcast(p.broadcast_seq).await.unwrap();
    }
    assert_eq!(got, (1..=300).collect::<Vec<_>>(), "stalled device after it came back");
    assert!(frames <= 300, "the stalled link had {frames} frames for it ({took:?})");
}

/// The broadcast send window is measured in seqs (`written - acked`), not in frames in
/// flight: after a gap in the log (entries dropped at the cap, expired, TTL-0 ones,
/// ones not for this device) a device that has not acked yet is handed one broadcast
/// and then nothing until it acks, however few are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_log_shrinks_the_window_to_one() {
    let server = start_with(|c| c.delivery.broadcast_max = 5).await;
    let token = server.token("gap");
    drop(connect_at(&server.tcp(), "gap", &token, 0).await);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "gap")).is_none()).await;
    let mut router = server.router().await;
    for i in 1..=200 {
        router.push(broadcast(&format!("B{i}"), false, None)).await.unwrap();
    }
    let mut d = connect_at(&server.tcp(), "gap", &token, 0).await;
    let mut got = Vec::new();
    while let Some(p) = push_within(&mut d, 1500).await {
        got.push(p.broadcast_seq); // acks after it has them all (cumulative ack)
    }
    assert_eq!(got, vec![196, 197, 198, 199, 200], "5 kept, 5 in flight at most, none acked yet");
}
