//! The durable store under the delivery path: stored pushes per second with group commit
//! under the default fsync policy, the time from restart to serving with 1,000,000 kept
//! messages, and the rate at which reconnecting devices are handed what was kept.
//!
//! Run: `cargo bench --bench store` (release). A plain `main` rather than criterion: each
//! figure is one long, bounded run whose cost is dominated by the disk, not by noise
//! that repetition would average out.

mod common;

use std::sync::Arc;
use std::time::Instant;

use longlink::config::Config;
use longlink::heartbeat::Heartbeats;
use longlink::hub::{Hub, Outcome, Profile};
use longlink::link::Link;
use longlink::message::Message;
use longlink::session::{DeviceKey, Session, Transport};
use longlink::store::{Store, StoreError};
use tokio::runtime::Runtime;

use common::{limits, push};

/// Offline devices, each given `PER_DEVICE` messages: 1,000,000 kept in all.
const DEVICES: usize = 10_000;
const PER_DEVICE: usize = 100;
/// Devices named by one push, as the router names up to 1,000.
const BATCH: usize = 1_000;
/// Pushes in flight at once, as concurrent router calls would be.
const IN_FLIGHT: usize = 8;

/// A hub over the store in `dir`; waits (bounded) for a previous writer to let go of it.
fn open_hub(dir: &std::path::Path) -> Hub {
    let config = Config::default();
    for _ in 0..100 {
        match Store::open_with(dir, config.store.policy(), config.store.memory()) {
            Ok(store) => {
                return Hub::new(limits(), Arc::new(Heartbeats::default()), Arc::new(store));
            }
            Err(StoreError::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(100)),
            Err(e) => panic!("store: {e}"),
        }
    }
    panic!("the store stayed locked for 10 s");
}

/// Makes `devices` known to the hub, then offline, as if each had connected once.
fn register(hub: &Hub, devices: &[DeviceKey]) {
    for (id, key) in devices.iter().enumerate() {
        let link = Arc::new(Link::new(id as u64, 60_000, 0));
        let session = Session { link, transport: Transport::Tcp, since_ms: 0, heartbeat_secs: 180 };
        hub.connect(key, Profile::default(), session);
        hub.disconnect(key, id as u64, 0);
    }
}

/// Stores PER_DEVICE messages for every device, `IN_FLIGHT` pushes waiting on the store at
/// a time; returns the stored pushes per second.
fn store_all(rt: &Runtime, hub: &Arc<Hub>, devices: &[DeviceKey]) -> f64 {
    let started = Instant::now();
    let mut stored = 0usize;
    rt.block_on(async {
        let mut waiting = Vec::new();
        for round in 0..PER_DEVICE {
            for chunk in devices.chunks(BATCH) {
                let message = Arc::new(Message::new(push()));
                for key in chunk {
                    assert!(
                        matches!(hub.push(key, &message), Outcome::Stored { .. }),
                        "round {round}"
                    );
                }
                stored += chunk.len();
                let hub = hub.clone();
                waiting.push(tokio::spawn(async move { hub.store().sync().await }));
                if waiting.len() >= IN_FLIGHT {
                    waiting.remove(0).await.unwrap().expect("durable");
                }
            }
        }
        for w in waiting {
            w.await.unwrap().expect("durable");
        }
    });
    stored as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let devices: Vec<DeviceKey> =
        (0..DEVICES).map(|i| DeviceKey::new("demo", &format!("d{i}"))).collect();

    let hub = Arc::new(open_hub(dir.path()));
    register(&hub, &devices);
    let rate = store_all(&rt, &hub, &devices);
    println!(
        "stored pushes: {} in batches of {BATCH}, fsync policy always, {IN_FLIGHT} in flight: {rate:.0}/s",
        DEVICES * PER_DEVICE
    );
    rt.block_on(hub.store().sync()).expect("flushed");
    drop(hub);

    let started = Instant::now();
    let hub = open_hub(dir.path());
    let mut loaded = hub.store().load(longlink::clock::unix_ms()).expect("load");
    let restored = hub.restore(&mut loaded);
    let took = started.elapsed();
    println!(
        "restart to serving: {restored} kept messages for {DEVICES} devices restored in {:.2} s \
         (corrupt {}, expired {})",
        took.as_secs_f64(),
        loaded.corrupt,
        loaded.expired
    );
    assert_eq!(restored, DEVICES * PER_DEVICE);

    // Replay: every device reconnects and is handed its kept messages (the window, 100,
    // is all of them here), encoded per device and queued on its link.
    let started = Instant::now();
    let mut handed = 0;
    for (id, key) in devices.iter().enumerate() {
        let link = Arc::new(Link::new(id as u64, 60_000, 0));
        let session = Session {
            link: link.clone(),
            transport: Transport::Tcp,
            since_ms: 0,
            heartbeat_secs: 180,
        };
        hub.connect(key, Profile::default(), session);
        handed += link.queued().0;
    }
    let took = started.elapsed();
    println!(
        "replay: {handed} kept messages handed to {DEVICES} reconnecting devices in {:.2} s: {:.0}/s",
        took.as_secs_f64(),
        handed as f64 / took.as_secs_f64()
    );
    assert_eq!(handed, DEVICES * PER_DEVICE);
}
