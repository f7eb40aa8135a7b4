//! Fan-out of one message to 1,000,000 connected in-memory devices on one thread: the cost
//! of the delivery path itself (registry entry and its live session, mailbox, per-device frame,
//! link queue), with no sockets and no connection tasks.
//!
//! One measured iteration is `hub.push(key, &message)` for every one of the 1,000,000
//! keys with one shared `Arc<Message>`, with the limits of the default configuration.
//! `ephemeral` is a TTL-0 message (no store write: the delivery path alone); `durable`
//! is a message with a TTL, for which every push also encodes a store record and
//! enqueues it for the store's writer thread (the enqueue is timed, the commit is not).
//! `broadcast` is one `hub.broadcast` of a message with a TTL: one store record for the
//! app, one shared frame, and a walk over the registry's shards.
//!
//! Between iterations, outside the timing, every device acks and reconnects on a fresh
//! link and the store's writer is waited for, so each iteration starts from idle devices
//! with empty queues, as a broadcast to an idle fleet does. (`Link::next`, which a
//! connection task uses to drain its queue, is not public; reconnecting drops the old
//! link and its queued frames instead.)
//!
//! Target: the whole fan-out in under 1 s.

mod common;
use common::{limits, push};

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use longlink::config::Config;
use longlink::heartbeat::Heartbeats;
use longlink::hub::{Hub, Outcome, Profile};
use longlink::link::Link;
use longlink::message::Message;
use longlink::proto::device::Platform;
use longlink::session::{DeviceKey, Session, Transport};
use longlink::store::Store;

const DEVICES: usize = 1_000_000;

/// A hub with `DEVICES` connected devices of one app, and their keys.
struct Fleet {
    hub: Hub,
    keys: Vec<DeviceKey>,
    next_session: u64,
    /// Runs `Store::sync`, the barrier that waits for the writer thread.
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Fleet {
    fn connect() -> Fleet {
        let dir = tempfile::tempdir().expect("temporary directory");
        let policy = Config::default().store.policy();
        let store = Store::open(dir.path(), policy).expect("store opens");
        let app: Arc<str> = Arc::from("demo");
        let keys = (0..DEVICES)
            .map(|i| DeviceKey { app: app.clone(), device: Arc::from(format!("device-{i:07}")) })
            .collect();
        let mut fleet = Fleet {
            hub: Hub::new(limits(), Arc::new(Heartbeats::default()), Arc::new(store)),
            keys,
            next_session: 0,
            runtime: tokio::runtime::Builder::new_current_thread().build().expect("runtime"),
            _dir: dir,
        };
        fleet.reconnect_all();
        fleet
    }

    /// Acks everything and gives every device a fresh, empty link.
    fn reconnect_all(&mut self) {
        for key in &self.keys {
            self.hub.ack(key, u64::MAX, &[], u64::MAX);
            self.next_session += 1;
            let id = self.next_session;
            let profile = Profile {
                platform: Platform::Android as i32,
                app_version: "1.0.0".into(),
                ..Default::default()
            };
            let session = Session {
                link: Arc::new(Link::new(id, 270_000, 0)),
                transport: Transport::Tcp,
                since_ms: 0,
                heartbeat_secs: 180,
            };
            self.hub.connect(key, profile, session);
        }
        self.settle();
    }

    /// Waits until the store's writer has committed everything enqueued so far.
    fn settle(&self) {
        self.runtime.block_on(self.hub.store().sync()).expect("store writes");
    }

    /// Pushes `message` to every device (or broadcasts it); returns how many had it queued.
    fn fan_out(&self, message: &Arc<Message>, broadcast: bool) -> usize {
        if broadcast {
            let app = self.keys[0].app.clone();
            return self.hub.broadcast(&app, message.clone(), false).sent as usize;
        }
        let mut sent = 0;
        for key in &self.keys {
            if let Outcome::Sent { .. } = self.hub.push(key, message) {
                sent += 1;
            }
        }
        sent
    }

    /// Checks a sample of links: each holds exactly the one frame of the last fan-out.
    fn check_queued(&self) {
        for key in self.keys.iter().step_by(DEVICES / 100) {
            let link = self.hub.link(key).expect("connected");
            assert_eq!(link.queued().0, 1, "{key:?}");
        }
    }
}

fn fanout(c: &mut Criterion) {
    let built = Instant::now();
    let mut fleet = Fleet::connect();
    println!("fleet of {DEVICES} connected in {:?}", built.elapsed());
    let ephemeral = Arc::new(Message::ephemeral(push()));
    let durable = Arc::new(Message::new(push()));

    let mut group = c.benchmark_group("fanout");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(DEVICES as u64));
    let kinds = [("ephemeral", &ephemeral, false), ("durable", &durable, false)];
    for (name, message, broadcast) in kinds.into_iter().chain([("broadcast", &durable, true)]) {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| timed_fan_outs(&mut fleet, message, broadcast, iters))
        });
    }
    group.finish();
    splits(c, &fleet, &ephemeral);
}

fn timed_fan_outs(
    fleet: &mut Fleet,
    message: &Arc<Message>,
    broadcast: bool,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        fleet.reconnect_all();
        let start = Instant::now();
        let sent = fleet.fan_out(message, broadcast);
        total += start.elapsed();
        assert_eq!(sent, DEVICES);
        fleet.check_queued();
        if !message.ephemeral && !broadcast {
            let commit = Instant::now();
            fleet.settle();
            println!("  store writer finished the fan-out's records {:?} later", commit.elapsed());
        }
    }
    total
}

/// Parts of the delivery path over the same 1,000,000 keys, each timed alone, to show
/// where the fan-out's time goes: the registry lookup, the per-device frame copies, and
/// (for comparison) walking the registry's shards, as a broadcast does,
/// instead of hashing every key.
fn splits(c: &mut Criterion, fleet: &Fleet, message: &Arc<Message>) {
    let mut group = c.benchmark_group("fanout_split");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(DEVICES as u64));
    group.bench_function("registry_lookup", |b| {
        b.iter(|| {
            let found = fleet.keys.iter();
            found.filter(|k| fleet.hub.with_device(k, |d| d.platform).is_some()).count()
        })
    });
    group.bench_function("walk_registry_shards", |b| b.iter(|| fleet.hub.links().len()));
    group.bench_function("frame_copies", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut frames = Vec::with_capacity(DEVICES);
                let start = Instant::now();
                frames.extend((1..=DEVICES as u64).map(|seq| message.frame(seq, false)));
                total += start.elapsed();
                drop(frames);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
