use std::sync::Arc;

use prost::Message as _;

use super::*;
use crate::link::Link;
use crate::proto::device::{Push, ServerFrame, server_frame};
use crate::session::Transport;

/// A hub over a store in a fresh temporary directory (removed when the guard drops).
fn hub() -> Hub {
    hub_in(tempfile::tempdir().unwrap())
}

fn hub_in(dir: tempfile::TempDir) -> Hub {
    let limits = HubLimits {
        outbound: OutboundLimits { max_frames: 100_000, max_bytes: usize::MAX },
        // Wide open: these tests are about ordering, the window has its own tests.
        send_window: 100_000,
        pending_max: 100_000,
        broadcast_max: 1_000,
    };
    hub_with(dir, limits)
}

fn hub_with(dir: tempfile::TempDir, limits: HubLimits) -> Hub {
    let store = crate::store::Store::open(dir.path(), crate::store::Fsync::Never).unwrap();
    // The directory must outlive the store's writer thread: keep it for the test's life.
    std::mem::forget(dir);
    Hub::new(limits, Arc::new(Heartbeats::default()), Arc::new(store))
}

fn session(id: u64) -> Session {
    Session {
        link: Arc::new(Link::new(id, 60_000, 0)),
        transport: Transport::Tcp,
        since_ms: 0,
        heartbeat_secs: 30,
    }
}

fn message(i: u64) -> Arc<Message> {
    Arc::new(Message::new(Push { message_id: format!("m{i}"), ..Default::default() }))
}

/// The seqs a link was handed, in the order it would write them.
fn seqs(link: &Link) -> Vec<(u64, bool)> {
    let mut out = Vec::new();
    while let Ok(Some(frame)) = link.next() {
        if let Some(server_frame::Frame::Push(p)) = ServerFrame::decode(&frame[4..]).unwrap().frame
        {
            out.push((p.seq, p.redelivery));
        }
    }
    out
}

/// Pushes race takeovers from other threads. Whatever the interleaving, every link sees
/// increasing seqs, and the last link (after a final replay) holds every unacked seq.
#[test]
fn pushes_racing_takeovers_stay_in_order_on_every_link() {
    for round in 0..20 {
        let hub = Arc::new(hub());
        let key = DeviceKey::new("a", "d");
        hub.connect(&key, Profile::default(), session(1));
        let links = Arc::new(parking_lot::Mutex::new(vec![hub.link(&key).unwrap()]));
        let pusher = {
            let (hub, key) = (hub.clone(), key.clone());
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    assert!(matches!(
                        hub.push(&key, &message(i)),
                        Outcome::Sent { .. } | Outcome::NotDelivered { .. }
                    ));
                }
            })
        };
        let taker = {
            let (hub, key, links) = (hub.clone(), key.clone(), links.clone());
            std::thread::spawn(move || {
                for id in 2..50 {
                    let s = session(id);
                    links.lock().push(s.link.clone());
                    hub.connect(&key, Profile::default(), s);
                    if id % 2 == 0 {
                        hub.disconnect(&key, id - 1, 0);
                    }
                }
            })
        };
        pusher.join().unwrap();
        taker.join().unwrap();
        let last = session(1_000);
        let last_link = last.link.clone();
        hub.connect(&key, Profile::default(), last);
        for link in links.lock().iter() {
            let got = seqs(link);
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "round {round}: out of order");
        }
        let replayed = seqs(&last_link);
        let expected: Vec<u64> = (1..=replayed.len() as u64).collect();
        let got: Vec<u64> = replayed.iter().map(|(s, _)| *s).collect();
        assert_eq!(got.len(), hub.pending(&key), "round {round}");
        assert_eq!(got, expected[..got.len()].to_vec(), "round {round}: gaps in the replay");
    }
}

#[test]
fn a_stale_disconnect_leaves_the_new_session_and_its_user_binding() {
    let hub = hub();
    let key = DeviceKey::new("a", "d");
    let profile = Profile { user: Some("u".into()), ..Default::default() };
    hub.connect(&key, profile.clone(), session(1));
    hub.connect(&key, profile, session(2));
    hub.disconnect(&key, 1, 5);
    assert_eq!(hub.session(&key).map(|s| s.id()), Some(2));
    let app: Arc<str> = "a".into();
    assert_eq!(hub.user_devices(&app, "u", Platform::Unspecified), vec![key.clone()]);
    hub.bind(&key, None);
    assert!(hub.user_devices(&app, "u", Platform::Unspecified).is_empty());
}

/// Threads replace and end sessions of one key in every interleaving they manage: an old
/// session's end never removes its replacement, and the counts always match what is live.
#[test]
fn racing_takeovers_keep_sessions_and_counts_consistent() {
    let hub = Arc::new(hub());
    let key = DeviceKey::new("a", "d");
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (hub, key) = (hub.clone(), key.clone());
            std::thread::spawn(move || {
                for i in 0..2_000u64 {
                    let id = t * 1_000_000 + i + 1;
                    hub.connect(&key, Profile::default(), session(id));
                    if i % 3 == 0 {
                        hub.disconnect(&key, id, 0);
                    } else {
                        // A stale id: another thread's, or one that already ended.
                        hub.disconnect(&key, id.saturating_sub(1), 0);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let live = hub.session(&key).is_some() as i64;
    assert_eq!((hub.sessions.online("a"), hub.sessions.len() as i64), (live, live));
    if let Some(s) = hub.session(&key) {
        hub.disconnect(&key, s.id(), 0);
    }
    assert_eq!((hub.sessions.online("a"), hub.sessions.len()), (0, 0));
}

/// A device as the store kept it: its seq floor, written in `floor_epoch`.
fn kept_device(seq_floor: u64, floor_epoch: u32) -> crate::store::LoadedDevice {
    let record = crate::proto::store::StoredDevice { seq_floor, floor_epoch, ..Default::default() };
    crate::store::LoadedDevice { record, messages: Vec::new() }
}

/// The seq a push to an offline device gets (it never expires, so it is kept).
fn next_seq(hub: &Hub, device: &str) -> u64 {
    let message = Arc::new(Message::new(Push::default()));
    match hub.push(&DeviceKey::new("a", device), &message) {
        Outcome::Stored { seq } => seq,
        other => panic!("{device}: {other:?}"),
    }
}

/// Every restart moves seqs past what the node may have given out before it, on disk or
/// not (the crash window: a frame goes out before the store commits its reservation):
/// `SEQ_JUMP` for each epoch since the record was written, at least one; devices and
/// apps with nothing kept start past this epoch's base. A new store starts at 1.
#[test]
fn a_restart_moves_every_seq_past_what_a_crash_could_have_given_out() {
    let fresh = hub();
    fresh.restore(&mut crate::store::Loaded::default());
    fresh.connect(&DeviceKey::new("a", "new"), Profile::default(), session(1));
    fresh.disconnect(&DeviceKey::new("a", "new"), 1, 0);
    assert_eq!(next_seq(&fresh, "new"), 1, "a new store gives out seqs from 1");

    let hub = hub();
    let mut loaded = crate::store::Loaded { epoch: 5, ..Default::default() };
    let kept = [("last", 2_000, 4), ("older", 2_000, 1), ("none", 0, 4), ("ahead", 7, 9)];
    for (id, floor, epoch) in kept {
        loaded.devices.insert(("a".into(), id.into()), kept_device(floor, epoch));
    }
    loaded.broadcast_seqs.push(("a".into(), 300, 3));
    hub.restore(&mut loaded);
    assert_eq!(next_seq(&hub, "last"), 2_000 + SEQ_JUMP + 1, "one epoch since");
    assert_eq!(next_seq(&hub, "older"), 2_000 + 4 * SEQ_JUMP + 1, "four epochs since");
    assert_eq!(next_seq(&hub, "none"), 5 * SEQ_JUMP + 1, "no floor: this epoch's base");
    // A record from a later epoch than the node's (its epoch was lost): one jump still.
    assert_eq!(next_seq(&hub, "ahead"), 7 + SEQ_JUMP + 1);
    assert_eq!(hub.broadcasts.last_seq("a"), 300 + 2 * SEQ_JUMP, "the app's broadcasts");
    assert_eq!(hub.broadcasts.last_seq("other"), 5 * SEQ_JUMP, "an app with none kept");
    // What is written from now on says which epoch it belongs to.
    let key = DeviceKey::new("a", "last");
    let device = hub.devices.get(&key).unwrap();
    let record = device.record(hub.epoch());
    assert_eq!((record.seq_floor, record.floor_epoch), (2_000 + SEQ_JUMP + 1 + SEQ_BLOCK, 5));
}

/// A replay goes on with each ack, and offers its frames only while the link's queue is
/// under half its bound. When the queue is half full of something else (Pongs to a burst
/// of pings, broadcasts) as an ack arrives, and none of the replay is in flight, no later
/// ack can come to move it on: that frame goes out as a live one would.
#[test]
fn a_replay_with_nothing_in_flight_gets_a_frame_out_past_a_half_full_queue() {
    let limits = HubLimits {
        outbound: OutboundLimits { max_frames: 8, max_bytes: usize::MAX },
        send_window: 2,
        pending_max: 100,
        broadcast_max: 10,
    };
    let hub = hub_with(tempfile::tempdir().unwrap(), limits);
    let key = DeviceKey::new("a", "d");
    hub.connect(&key, Profile::default(), session(1));
    hub.disconnect(&key, 1, 0);
    for i in 1..=5 {
        assert_eq!(hub.push(&key, &message(i)), Outcome::Stored { seq: i });
    }
    let link = session(2).link;
    hub.connect(&key, Profile::default(), Session { link: link.clone(), ..session(2) });
    assert_eq!(seqs(&link), [(1, false), (2, false)], "the send window");
    let pong = bytes::Bytes::from_static(b"pong");
    for _ in 0..4 {
        assert_eq!(link.send(pong.clone(), limits.outbound), Sent::Queued);
    }
    hub.ack(&key, 2, &[], 0);
    assert_eq!(link.queued().0, 5, "one frame past the half-full queue");
    for _ in 0..4 {
        assert_eq!(link.next(), Ok(Some(pong.clone())));
    }
    assert_eq!(seqs(&link), [(3, false)]);
    // In flight again: the next ack moves it on, and the window takes over.
    hub.ack(&key, 3, &[], 0);
    assert_eq!(seqs(&link), [(4, false), (5, false)]);

    // The same for a broadcast catch-up, from a connect onto a half-full queue.
    let app: Arc<str> = "a".into();
    hub.ack(&key, 5, &[], 0);
    hub.disconnect(&key, 2, 0);
    for i in 0..3 {
        hub.broadcast(&app, message(100 + i), true);
    }
    let link = session(3).link;
    for _ in 0..4 {
        assert_eq!(link.send(pong.clone(), limits.outbound), Sent::Queued);
    }
    hub.connect(&key, Profile::default(), Session { link: link.clone(), ..session(3) });
    assert_eq!(link.queued().0, 5, "one broadcast past the half-full queue");
}

/// A broadcast reaches every live device of its app once and counts the offline ones as
/// stored, whether the walk hands it over in one pass (a small registry) or collects
/// the live devices and hands it over from every core (past `HELPER_DEVICES`).
#[test]
fn a_broadcast_reaches_every_live_device_once_in_either_walk() {
    for (live, offline) in [(90, 10), (9_000, 1_000)] {
        let hub = hub();
        let mut links = Vec::new();
        for i in 0..live + offline {
            let key = DeviceKey::new("a", &format!("d{i}"));
            hub.connect(&key, Profile::default(), session(i));
            if i < live {
                links.push(hub.link(&key).unwrap());
            } else {
                hub.disconnect(&key, i, 0);
            }
        }
        // Another app's devices are not walked into.
        let other = DeviceKey::new("b", "d0");
        hub.connect(&other, Profile::default(), session(u64::MAX));
        let fanout = hub.broadcast(&Arc::from("a"), message(1), false);
        assert_eq!((fanout.sent, fanout.stored, fanout.not_delivered), (live, offline, 0));
        for link in &links {
            let mut frames = 0;
            while let Ok(Some(_)) = link.next() {
                frames += 1;
            }
            assert_eq!(frames, 1, "{live} live: one frame each");
        }
        assert!(matches!(hub.link(&other).unwrap().next(), Ok(None)), "app b got nothing");
    }
}
