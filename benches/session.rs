//! Session operations on the hub's registry, which holds each device's live session:
//! insert (`Hub::connect` of a new device), lookup (`Hub::link`), takeover (`connect`
//! over a live session) and removal (`Hub::disconnect`), alone and while a second thread
//! hammers the same keys.
//!
//! The Prometheus recorder is installed first, as `longlink serve` does, because every
//! new session and every removal updates the per-app `longlink_sessions` gauge;
//! `LONGLINK_BENCH_NO_METRICS=1` leaves it out to show what the gauge costs. The hub's
//! store (in a temporary directory, fsync `never`) gets the registry records a new device
//! and a disconnect write: enqueuing them is part of what is timed, as in the server.
//!
//! The contended group runs the same operations on a set of 1,024 keys that a second
//! std thread keeps connecting, taking over and disconnecting for the whole measurement.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use longlink::heartbeat::Heartbeats;
use longlink::hub::{Hub, HubLimits, Profile};
use longlink::link::Link;
use longlink::session::{DeviceKey, Session, Transport};
use longlink::store::{Fsync, Store};

/// Sessions in the table for lookups and takeovers: a busy node's worth of one shard set.
const FILLED: usize = 100_000;
/// Inserts or removals per measured batch.
const BATCH: usize = 10_000;
/// Keys both threads share in the contended group.
const SHARED_KEYS: usize = 1_024;

fn session(id: u64) -> Session {
    Session {
        link: Arc::new(Link::new(id, 270_000, 0)),
        transport: Transport::Tcp,
        since_ms: 0,
        heartbeat_secs: 180,
    }
}

fn keys(n: usize) -> Vec<DeviceKey> {
    let app: Arc<str> = Arc::from("demo");
    (0..n)
        .map(|i| DeviceKey { app: app.clone(), device: Arc::from(format!("device-{i:07}")) })
        .collect()
}

/// The registry, keyed like the server's, with each session's device already known or not.
struct Table {
    hub: Hub,
    _dir: tempfile::TempDir,
}

impl Default for Table {
    fn default() -> Table {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path(), Fsync::Never).expect("store opens");
        let limits = HubLimits::from_config(&longlink::config::Config::default());
        let hub = Hub::new(limits, Arc::new(Heartbeats::default()), Arc::new(store));
        Table { hub, _dir: dir }
    }
}

impl Table {
    /// Connects `session` for `key`; true when it replaced a live session.
    fn insert(&self, key: &DeviceKey, session: Session) -> bool {
        let replaced = self.hub.session(key).is_some();
        self.hub.connect(key, Profile::default(), session);
        replaced
    }

    /// Ends session `id` of `key`; true when it was the live one.
    fn remove(&self, key: &DeviceKey, id: u64) -> bool {
        let live = self.hub.session(key).is_some_and(|s| s.id() == id);
        self.hub.disconnect(key, id, 0);
        live
    }

    fn link(&self, key: &DeviceKey) -> Option<Arc<Link>> {
        self.hub.link(key)
    }
}

fn filled(keys: &[DeviceKey]) -> Table {
    let table = Table::default();
    for (i, key) in keys.iter().enumerate() {
        table.insert(key, session(i as u64));
    }
    table
}

fn install_metrics() {
    if std::env::var_os("LONGLINK_BENCH_NO_METRICS").is_none() {
        longlink::telemetry::prometheus();
    }
}

fn uncontended(c: &mut Criterion) {
    install_metrics();
    let keys = keys(FILLED);
    let table = filled(&keys);
    // Prebuilt replacements: a takeover's cost in the table, not the cost of a new link.
    let spares: Vec<Session> = (0..FILLED).map(|i| session((FILLED + i) as u64)).collect();
    let mut group = c.benchmark_group("session");

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("insert_new", |b| {
        b.iter_batched(
            || (Table::default(), spares[..BATCH].to_vec()),
            |(table, sessions)| {
                for (key, s) in keys.iter().zip(sessions) {
                    table.insert(key, s);
                }
                table
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("remove", |b| {
        b.iter_batched(
            || filled(&keys[..BATCH]),
            |table| {
                for (i, key) in keys[..BATCH].iter().enumerate() {
                    assert!(table.remove(key, i as u64));
                }
                table
            },
            BatchSize::LargeInput,
        )
    });

    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) % FILLED;
            table.link(black_box(&keys[i]))
        })
    });
    let mut i = 0;
    group.bench_function("takeover", |b| {
        b.iter(|| {
            i = (i + 1) % FILLED;
            // From the second round on a spare replaces itself: still a takeover.
            assert!(table.insert(&keys[i], spares[i].clone()), "the key was live");
        })
    });
    group.finish();
}

/// A second thread that inserts, takes over and removes sessions of `keys` until stopped.
struct Rival {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Rival {
    fn start(table: Arc<Table>, keys: Arc<Vec<DeviceKey>>) -> Rival {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), ops.clone());
        let thread = std::thread::spawn(move || {
            let spare: Vec<Session> =
                (0..keys.len()).map(|i| session(1 << 40 | i as u64)).collect();
            let mut round = 0u64;
            while !flag.load(Ordering::Relaxed) {
                for (key, s) in keys.iter().zip(&spare) {
                    table.insert(key, s.clone());
                    if round % 3 == 0 {
                        table.remove(key, s.id());
                    }
                }
                round += 1;
                count.fetch_add(2 * keys.len() as u64, Ordering::Relaxed);
            }
        });
        Rival { stop, ops, thread: Some(thread) }
    }
}

impl Drop for Rival {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("rival thread");
        }
        println!(
            "rival thread: {} table operations during the group",
            self.ops.load(Ordering::Relaxed)
        );
    }
}

fn contended(c: &mut Criterion) {
    install_metrics();
    let keys = Arc::new(keys(SHARED_KEYS));
    let table = Arc::new(filled(&keys));
    let rival = Rival::start(table.clone(), keys.clone());
    shared_ops(c, "session_contended", &table, &keys);
    drop(rival);
}

/// The same operations on the same 1,024 keys with no second thread: the baseline for
/// the contended group.
fn alone(c: &mut Criterion) {
    install_metrics();
    let keys = keys(SHARED_KEYS);
    shared_ops(c, "session_alone", &filled(&keys), &keys);
}

fn shared_ops(c: &mut Criterion, name: &str, table: &Table, keys: &[DeviceKey]) {
    let mine: Vec<Session> = (0..keys.len()).map(|i| session(1 << 41 | i as u64)).collect();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            table.link(black_box(&keys[i]))
        })
    });
    let mut i = 0;
    group.bench_function("insert_or_takeover", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            table.insert(&keys[i], mine[i].clone())
        })
    });
    let mut i = 0;
    group.bench_function("insert_then_remove", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            table.insert(&keys[i], mine[i].clone());
            table.remove(&keys[i], mine[i].id())
        })
    });
    group.finish();
}

criterion_group!(benches, uncontended, alone, contended);
criterion_main!(benches);
