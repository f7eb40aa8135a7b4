//! Broadcasts in the hub: adding one to the app's log, the fan-out to live devices, each
//! device's catch-up from its cursor, and broadcast acks.
//!
//! Fan-out and catch-up are one path: a device is handed the app's broadcasts after its
//! cursor, in seq order, under its registry entry. The fan-out of broadcast N writes N
//! straight away to a device that has had everything before it and runs the catch-up
//! for one that has not, so a reconnecting device never sees N before N - 1. Writing
//! queues on the link and never waits for its socket (a parked connection's frame is
//! written to its socket at once, without blocking: see `park`); an overflowing link is
//! closed as a slow consumer and catches up when it comes back. The fan-out's live
//! devices are handed out by one thread per core.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::{Cursor, Device, Hub, SEQ_JUMP};
use crate::broadcast::Entry;
use crate::link::{Link, Sent};
use crate::message::Message;
use crate::proto::router::Event;
use crate::proto::store::{StoredBroadcast, StoredBroadcastSeq};
use crate::session::DeviceKey;
use crate::store::record::{self, broadcast_key, broadcast_seq_key};
use crate::store::{Loaded, Space};

/// Log entries read at a time during a catch-up.
const BATCH: usize = 64;
/// Live devices a fan-out thread takes at a time.
const CHUNK: usize = 256;
/// Live devices per extra fan-out thread: smaller broadcasts are handed out by the
/// calling thread alone.
const HELPER_DEVICES: usize = 4_096;

/// Threads a fan-out may add to the calling one: one per other core, at most 7.
fn fanout_helpers() -> usize {
    static HELPERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *HELPERS
        .get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8) - 1)
}

/// Whether `app`'s broadcast `entry` is for the device under `key`.
fn reaches(entry: &Entry, app: &str, key: &DeviceKey, device: &Device) -> bool {
    *key.app == *app && entry.is_for(device.cursor.floor)
}

/// Why a device's broadcasts are being handed out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Occasion<'a> {
    /// The fan-out of this broadcast.
    Fanout(&'a Entry),
    /// The device acked something: a catch-up may go on.
    Ack,
    /// A new link: the catch-up from the device's cursor.
    Connect,
}

/// What one broadcast did, in devices.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub seq: u64,
    /// Written to a live connection.
    pub sent: u64,
    /// Offline, or behind on earlier broadcasts: gets it on catching up.
    pub stored: u64,
    /// Offline, and the broadcast was for now or never.
    pub not_delivered: u64,
}

impl Fanout {
    /// Counts one device: written to, or left to catch up (or, TTL 0, not reached).
    fn count(&mut self, sent: bool, ephemeral: bool) {
        match (sent, ephemeral) {
            (true, _) => self.sent += 1,
            (false, true) => self.not_delivered += 1,
            (false, false) => self.stored += 1,
        }
    }
}

impl Hub {
    /// Adds `message` to the app's broadcasts, stores it (unless its TTL is 0), and
    /// hands it to every live device of the app. The store write is enqueued, not awaited.
    pub fn broadcast(&self, app: &Arc<str>, message: Arc<Message>, new_devices: bool) -> Fanout {
        let started = Instant::now();
        let cap = self.limits.broadcast_max;
        let (entry, dropped) = self.broadcasts.append(app, message, new_devices, cap);
        for old in &dropped {
            self.store.delete(Space::Broadcasts, broadcast_key(app, old.seq));
        }
        let ephemeral = entry.message.ephemeral;
        if ephemeral {
            // Not kept, but its seq was given out: a restart must continue above it.
            self.persist_broadcast_seq(app);
        } else {
            self.persist_broadcast(app, &entry);
        }
        let mut fanout = Fanout { seq: entry.seq, ..Fanout::default() };
        // With one core, or too few devices for a helper to start, one pass is faster.
        if fanout_helpers() == 0 || self.devices.len() < HELPER_DEVICES {
            self.hand_in_one_pass(app, &entry, &mut fanout);
        } else {
            self.hand_on_every_core(app, &entry, &mut fanout);
        }
        if ephemeral {
            self.broadcasts.remove(app, entry.seq);
        }
        metrics::histogram!("longlink_broadcast_fanout_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("longlink_broadcasts_total").increment(1);
        fanout
    }

    /// Each live device is handed the broadcast as the walk finds it, under the lock the
    /// walk holds anyway, rather than collected and looked up again.
    fn hand_in_one_pass(&self, app: &Arc<str>, entry: &Entry, fanout: &mut Fanout) {
        let ephemeral = entry.message.ephemeral;
        for mut item in self.devices.iter_mut() {
            let (key, device) = item.pair_mut();
            if !reaches(entry, app, key, device) {
                continue;
            }
            let Some(link) = device.open_link() else {
                fanout.count(false, ephemeral);
                continue;
            };
            self.pump_broadcasts(key, device, &link, Occasion::Fanout(entry));
            // Written, not scanned: see `hand_on_every_core`.
            fanout.count(device.cursor.written >= entry.seq, ephemeral);
        }
    }

    /// First the devices the broadcast is for, counting those offline; then the live ones
    /// are handed it by every core at once: handing it over may write to the socket (a
    /// parked connection's frame is written by whoever queues it).
    fn hand_on_every_core(&self, app: &Arc<str>, entry: &Entry, fanout: &mut Fanout) {
        let ephemeral = entry.message.ephemeral;
        let mut live = Vec::new();
        for item in self.devices.iter() {
            let (key, device) = item.pair();
            if !reaches(entry, app, key, device) {
                continue;
            }
            match device.is_open() {
                true => live.push(key.clone()),
                false => fanout.count(false, ephemeral),
            }
        }
        let next = AtomicUsize::new(0);
        let hand = || {
            let mut part = Fanout::default();
            loop {
                let from = next.fetch_add(CHUNK, Ordering::Relaxed);
                if from >= live.len() {
                    return part;
                }
                for key in &live[from..(from + CHUNK).min(live.len())] {
                    let Some(mut device) = self.devices.get_mut(key) else { continue };
                    if let Some(link) = device.open_link() {
                        self.pump_broadcasts(key, &mut device, &link, Occasion::Fanout(entry));
                    }
                    // Written, not scanned: a device that connected during this walk
                    // skipped a TTL-0 broadcast in its catch-up and has scanned past it
                    // without having it.
                    part.count(device.cursor.written >= entry.seq, ephemeral);
                }
            }
        };
        let helpers = (live.len() / HELPER_DEVICES).min(fanout_helpers());
        let parts: Vec<Fanout> = std::thread::scope(|scope| {
            let running: Vec<_> = (0..helpers).map(|_| scope.spawn(hand)).collect();
            let mine = hand();
            let theirs = running.into_iter().map(|h| h.join().expect("fan-out helper"));
            std::iter::once(mine).chain(theirs).collect()
        });
        for part in parts {
            fanout.sent += part.sent;
            fanout.stored += part.stored;
            fanout.not_delivered += part.not_delivered;
        }
    }

    /// The counts [`Hub::broadcast`] would answer now, changing nothing.
    pub fn preview_broadcast(&self, app: &str, message: &Message) -> Fanout {
        // A new broadcast's seq is above every device's floor: all known devices count.
        let mut fanout = Fanout { seq: self.broadcasts.last_seq(app) + 1, ..Fanout::default() };
        for item in self.devices.iter() {
            if *item.key().app != *app {
                continue;
            }
            fanout.count(item.is_open(), message.ephemeral);
        }
        fanout
    }

    /// A new link takes over: the device resumes after the broadcasts it acked or
    /// reports having processed, and what earlier links were handed counts as handed.
    pub(super) fn resume_broadcasts(&self, key: &DeviceKey, device: &mut Device, reported: u64) {
        // This node may have given out fewer than the device has seen (it lost its
        // store): continue above what the device has, as for per-device seqs.
        if self.broadcasts.raise(&key.app, reported) {
            self.persist_broadcast_seq(&key.app);
        }
        let c = &mut device.cursor;
        c.handed = c.handed.max(c.written);
        c.acked = c.acked.max(reported);
        c.scanned = c.acked;
        c.written = c.acked;
    }

    /// Hands the link the device's broadcasts after its cursor, while fewer than the
    /// send window are in flight. In a fan-out, a device that has had everything before
    /// the broadcast gets it without a read of the log. A TTL-0 broadcast is for the
    /// devices online when it is sent: a device catching up as it connects skips it.
    pub(super) fn pump_broadcasts(
        &self,
        key: &DeviceKey,
        device: &mut Device,
        link: &Link,
        occasion: Occasion<'_>,
    ) {
        let window = self.limits.send_window;
        let c = &mut device.cursor;
        if let Occasion::Fanout(entry) = occasion
            && c.scanned >= entry.prev
            && c.scanned < entry.seq
            && c.written.saturating_sub(c.acked) < window as u64
        {
            self.write_broadcast(key, c, link, entry, false);
            return;
        }
        // Seqs have gaps (dropped at the cap, expired, not for this device), so what is
        // in flight is counted in the log, not read off the seqs.
        let mut in_flight = self.broadcasts.count(&key.app, c.acked, c.written, c.floor);
        let now = crate::clock::unix_ms();
        loop {
            let batch = self.broadcasts.after(&key.app, c.scanned, BATCH);
            if batch.is_empty() {
                return;
            }
            for entry in &batch {
                if in_flight >= window {
                    return;
                }
                let expired = entry.message.expires_at_ms.is_some_and(|t| t <= now);
                let too_late = entry.message.ephemeral && matches!(occasion, Occasion::Connect);
                if expired || too_late || !entry.is_for(c.floor) {
                    c.scanned = entry.seq;
                    continue;
                }
                // As in `Hub::pump`: with none in flight, no ack would move it on.
                if !self.write_broadcast(key, c, link, entry, in_flight > 0) {
                    return;
                }
                in_flight += 1;
            }
        }
    }

    /// Records the device's cumulative broadcast ack, clamped to what it can have had:
    /// what this link was taken through, or an earlier link was written. Not to the
    /// app's last seq: a broadcast is appended before its fan-out reaches the device,
    /// and an ack ahead in between would make the fan-out skip it.
    pub(super) fn ack_broadcasts(&self, key: &DeviceKey, device: &mut Device, upto: u64) {
        let c = &mut device.cursor;
        let upto = upto.min(c.scanned.max(c.handed));
        if upto <= c.acked {
            return;
        }
        if self.receipts.wanted() {
            for entry in self.broadcasts.between(&key.app, c.acked, upto.min(c.written)) {
                if entry.is_for(c.floor) {
                    let id = &entry.message.id;
                    self.receipts.emit_broadcast(Event::Acked, key, id, entry.seq, "");
                }
            }
        }
        c.acked = upto;
        c.scanned = c.scanned.max(upto);
    }

    /// Takes expired broadcasts out of the log and the store.
    pub(super) fn purge_broadcasts(&self, now_ms: i64) {
        for (app, entry) in self.broadcasts.purge(now_ms) {
            tracing::debug!(app = %app, seq = entry.seq, "broadcast expired");
            self.store.delete(Space::Broadcasts, broadcast_key(&app, entry.seq));
        }
    }

    /// Rebuilds every app's broadcast log from what the store kept. Returns the epoch
    /// each app's last seq was written in.
    pub(super) fn restore_broadcasts(&self, loaded: &mut Loaded) -> HashMap<String, u32> {
        let mut kept = 0;
        for (app, seq, stored) in std::mem::take(&mut loaded.broadcasts) {
            match Message::from_body(&stored.body) {
                Ok(message) => {
                    self.broadcasts.restore(&app, seq, Arc::new(message), stored.new_devices);
                    kept += 1;
                }
                Err(error) => {
                    loaded.corrupt += 1;
                    tracing::warn!(app, seq, %error, "corrupt broadcast body skipped");
                }
            }
        }
        let mut epochs = HashMap::new();
        for (app, last_seq, epoch) in std::mem::take(&mut loaded.broadcast_seqs) {
            self.broadcasts.raise(&app, last_seq);
            epochs.insert(app, epoch);
        }
        if kept > 0 {
            tracing::info!(broadcasts = kept, "broadcasts restored");
        }
        epochs
    }

    /// Moves every app's broadcast seq past what it may have given out before this
    /// start, kept on disk or not: a broadcast is written to devices before the store
    /// commits its seq (see `SEQ_JUMP`). Apps whose seq was never kept (`epochs` has
    /// none) may still have handed one out, and move too.
    pub(super) fn jump_broadcasts(&self, epochs: &HashMap<String, u32>) {
        let epoch = self.epoch();
        self.broadcasts.jump(|app| {
            let since = epochs.get(app).map_or(0, |&e| e);
            u64::from(epoch.saturating_sub(since).max(1)) * SEQ_JUMP
        });
    }

    /// Queues one broadcast on the link (as part of a catch-up: see [`Link::offer`]);
    /// false when the link would not take it.
    fn write_broadcast(
        &self,
        key: &DeviceKey,
        c: &mut Cursor,
        link: &Link,
        entry: &Entry,
        catch_up: bool,
    ) -> bool {
        let redelivery = entry.seq <= c.handed;
        let frame = if redelivery {
            entry.message.broadcast_frame(entry.seq, true)
        } else {
            entry.frame.clone()
        };
        let sent = if catch_up {
            link.offer(frame, self.limits.outbound)
        } else {
            self.write(link, frame)
        };
        if sent != Sent::Queued {
            return false;
        }
        c.scanned = entry.seq;
        c.written = entry.seq;
        let reason = if redelivery { "redelivery" } else { "" };
        self.receipts.emit_broadcast(Event::Sent, key, &entry.message.id, entry.seq, reason);
        true
    }

    fn persist_broadcast(&self, app: &str, entry: &Entry) {
        let stored = StoredBroadcast {
            body: entry.message.body().to_vec(),
            expires_at_ms: entry.message.expires_at_ms.unwrap_or(0),
            new_devices: entry.new_devices,
        };
        self.store.put(Space::Broadcasts, broadcast_key(app, entry.seq), record::encode(&stored));
        self.persist_broadcast_seq(app);
    }

    /// Enqueues the app's highest seq for the store. Read and enqueued under one lock:
    /// two broadcasts reading it outside could enqueue their writes in the other order,
    /// leaving the lower seq on disk, and after a restart a seq given out again.
    fn persist_broadcast_seq(&self, app: &str) {
        let _in_order = self.seq_writes.lock();
        let last_seq = self.broadcasts.last_seq(app);
        let value = record::encode(&StoredBroadcastSeq { last_seq, epoch: self.epoch() });
        self.store.put(Space::Broadcasts, broadcast_seq_key(app), value);
    }
}
