//! Memory per idle connected device in the hub, at 1,000,000 devices: what one device
//! costs the node besides its socket and its connection task.
//!
//! Measured as the growth of the process's resident set (`VmRSS` in /proc/self/status),
//! not with a counting allocator: a `#[global_allocator]` needs an `unsafe impl
//! GlobalAlloc`, and the crate forbids unsafe code in every target. Resident memory
//! includes the allocator's per-chunk overhead and the hash tables' empty buckets, which
//! is what the node really pays; it cannot attribute bytes to individual allocations,
//! so the stages are built one after another and each one's growth is reported.
//!
//! Stages, for every device: its key and link (`DeviceKey`'s device id, `Arc<Link>`),
//! then `Hub::connect` (registry entry with its live session and mailbox, per-app
//! count, and the device record written to the store), then `Heartbeats::watch` (one
//! weak pointer in the wheel). The keys and links are first held in a scratch vector,
//! which is dropped at the end; the total is taken after that, so it counts only what
//! the hub holds.
//!
//! Note: the store's writer is waited for before each reading, so no queued write is
//! counted, but the store's own memory (fjall's memtables and caches, which it bounds
//! by size, not per device) is inside the `Hub::connect` figure.

mod common;
use common::limits;

use std::sync::Arc;
use std::time::Instant;

use longlink::config::Config;
use longlink::heartbeat::Heartbeats;
use longlink::hub::{Device, Hub, Profile};
use longlink::link::Link;
use longlink::mailbox::Mailbox;
use longlink::message::Message;
use longlink::proto::device::{Platform, Push};
use longlink::session::{DeviceKey, Session, Transport};
use longlink::store::Store;

const DEVICES: usize = 1_000_000;
/// Silence limit of the default heartbeat (180 s x 1.5).
const SILENCE_MS: u64 = 270_000;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 =
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB");
    kib * 1024
}

/// Prints one stage's growth and returns the new reading.
fn stage(name: &str, before: u64, started: Instant) -> u64 {
    let now = rss();
    let grown = now as i64 - before as i64;
    println!(
        "{name:<44} {:>8.1} MiB {:>7.1} B/device  ({:.2?})",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / DEVICES as f64,
        started.elapsed(),
    );
    now
}

fn session(link: Arc<Link>) -> Session {
    Session { link, transport: Transport::Tcp, since_ms: 1_800_000_000_000, heartbeat_secs: 180 }
}

fn profile() -> Profile {
    Profile {
        platform: Platform::Android as i32,
        app_version: "1.0.0".into(),
        ..Default::default()
    }
}

fn print_sizes() {
    println!("inline sizes (bytes, before allocator overhead and empty hash buckets):");
    println!(
        "  DeviceKey {}  Device {} (of which Mailbox {})  Session {}  Link {} (+16 Arc counts)",
        size_of::<DeviceKey>(),
        size_of::<Device>(),
        size_of::<Mailbox>(),
        size_of::<Session>(),
        size_of::<Link>(),
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` and test discovery: nothing to list.
        return;
    }
    print_sizes();
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path(), Config::default().store.policy()).expect("store");
    let hub = Hub::new(limits(), Arc::new(Heartbeats::default()), Arc::new(store));
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let settle = || runtime.block_on(hub.store().sync()).expect("store writes");
    let app: Arc<str> = Arc::from("demo");
    let started = Instant::now();
    let base = rss();
    println!("{DEVICES} idle devices, resident memory growth (VmRSS):");

    let mut scratch: Vec<(DeviceKey, Arc<Link>)> = Vec::with_capacity(DEVICES);
    let scratch_bytes = (DEVICES * size_of::<(DeviceKey, Arc<Link>)>()) as u64;
    let at = rss();
    for i in 0..DEVICES {
        let key = DeviceKey { app: app.clone(), device: Arc::from(format!("device-{i:07}")) };
        scratch.push((key, Arc::new(Link::new(i as u64, SILENCE_MS, 0))));
    }
    let at = stage("device id + link", at, started);
    for (key, link) in scratch.iter() {
        hub.connect(key, profile(), session(link.clone()));
    }
    settle();
    let at = stage("Hub::connect (registry, session, store)", at, started);
    for (_, link) in &scratch {
        hub.heartbeats.watch(link);
    }
    let at = stage("Heartbeats::watch", at, started);
    drop(scratch);
    stage("scratch vector dropped", at, started);

    let total = rss() - base;
    assert_eq!(hub.sessions.len(), DEVICES);
    assert_eq!(hub.heartbeats.watched(), DEVICES);
    println!(
        "total held by the hub: {:.1} MiB, {:.0} B per idle device \
         (scratch vector of {:.1} MiB excluded)",
        total as f64 / (1 << 20) as f64,
        total as f64 / DEVICES as f64,
        scratch_bytes as f64 / (1 << 20) as f64,
    );
    one_unacked_message(&hub, &app);
    settle();
}

/// Not idle: what one pushed, not yet written or acked message adds per device (its own
/// frame copy in the link queue, the queue itself, the mailbox entry). TTL 0, so the
/// figure holds no store write.
fn one_unacked_message(hub: &Hub, app: &Arc<str>) {
    let message = Arc::new(Message::ephemeral(Push {
        message_id: "018c2a9e5f3b4d7e9a1c2b3d4e5f6a7b".into(),
        data: vec![7; 160],
        ..Default::default()
    }));
    let started = Instant::now();
    let at = rss();
    for i in 0..DEVICES {
        let key = DeviceKey { app: app.clone(), device: Arc::from(format!("device-{i:07}")) };
        hub.push(&key, &message);
    }
    let frame = message.frame(1, false).len();
    stage(&format!("one queued push of {frame} B frame (not idle)"), at, started);
}
