//! The broadcast log: per app, the broadcasts still within their TTL, in app-wide
//! sequence order. Live devices get a new broadcast by fan-out; a device that reconnects
//! catches up from the cursor it reports, reading the same log.
//!
//! The log only orders and keeps; which device has been handed what is the hub's
//! business (a device's broadcast cursor lives with the rest of its registry entry).
//! Lock order: a device's registry entry, then this log, never the other way round.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::message::Message;

/// One broadcast in the log.
#[derive(Debug)]
pub struct Entry {
    pub seq: u64,
    pub message: Arc<Message>,
    /// Also for devices first seen after it was sent.
    pub new_devices: bool,
    /// The seq of the entry before it when it was added (0 for none): a device handed
    /// that one can be handed this one without reading the log.
    pub prev: u64,
    /// The frame every device gets, encoded once.
    pub frame: Bytes,
}

impl Entry {
    fn new(seq: u64, prev: u64, message: Arc<Message>, new_devices: bool) -> Entry {
        let frame = message.broadcast_frame(seq, false);
        Entry { seq, message, new_devices, prev, frame }
    }

    /// Whether a device first seen when the app's last broadcast was `floor` gets it.
    pub fn is_for(&self, floor: u64) -> bool {
        self.seq > floor || self.new_devices
    }
}

#[derive(Debug, Default)]
struct Log {
    last_seq: u64,
    entries: VecDeque<Arc<Entry>>,
}

impl Log {
    fn push(&mut self, seq: u64, message: Arc<Message>, new_devices: bool) -> Arc<Entry> {
        let prev = self.entries.back().map_or(0, |e| e.seq);
        let entry = Arc::new(Entry::new(seq, prev, message, new_devices));
        self.entries.push_back(entry.clone());
        entry
    }
}

/// Highest seq a raise can set: half of what a Hello may report
/// ([`crate::handshake::MAX_COUNTER`]), so that the seqs given out after any raise, a
/// device's made-up cursor included (it holds back only that device), stay far below the
/// limit and every device can always report the cursor it was handed.
pub const MAX_RAISE: u64 = crate::handshake::MAX_COUNTER / 2;

/// Every app's broadcast log.
#[derive(Debug, Default)]
pub struct Broadcasts {
    apps: RwLock<HashMap<Arc<str>, Log>>,
    /// Where the seqs of an app that has no log yet start (this epoch's seq base).
    base: AtomicU64,
}

impl Broadcasts {
    /// Apps without a log yet start their seqs past `base` (see `Hub::seq_base`).
    pub fn start_at(&self, base: u64) {
        self.base.store(base, Ordering::Relaxed);
    }

    fn new_log(&self) -> Log {
        Log { last_seq: self.base.load(Ordering::Relaxed), entries: VecDeque::new() }
    }

    /// Moves every app's last seq `by` further, at start (see `Hub::jump_broadcasts`);
    /// unlike [`Broadcasts::raise`], not capped: it is the node's own step, not a
    /// device's report.
    pub fn jump(&self, by: impl Fn(&str) -> u64) {
        for (app, log) in self.apps.write().iter_mut() {
            log.last_seq = log.last_seq.saturating_add(by(app));
        }
    }

    /// Adds `message` as the app's next broadcast. Past `cap` entries the oldest leave
    /// the log; they are returned so that the store deletes them too.
    pub fn append(
        &self,
        app: &Arc<str>,
        message: Arc<Message>,
        new_devices: bool,
        cap: usize,
    ) -> (Arc<Entry>, Vec<Arc<Entry>>) {
        let mut apps = self.apps.write();
        let log = apps.entry(app.clone()).or_insert_with(|| self.new_log());
        log.last_seq += 1;
        let entry = log.push(log.last_seq, message, new_devices);
        let excess = log.entries.len().saturating_sub(cap.max(1));
        let dropped = log.entries.drain(..excess).collect();
        (entry, dropped)
    }

    /// Puts back a broadcast read from the store (in seq order, at start).
    pub fn restore(&self, app: &str, seq: u64, message: Arc<Message>, new_devices: bool) {
        let mut apps = self.apps.write();
        let log = apps.entry(Arc::from(app)).or_insert_with(|| self.new_log());
        log.last_seq = log.last_seq.max(seq);
        log.push(seq, message, new_devices);
    }

    /// Raises the app's last seq to at least `seq` (the seq kept on disk, or a device
    /// that has seen more than this node remembers), but not past [`MAX_RAISE`]; true
    /// when it moved.
    pub fn raise(&self, app: &str, seq: u64) -> bool {
        let seq = seq.min(MAX_RAISE);
        if seq <= self.last_seq(app) {
            return false;
        }
        let mut apps = self.apps.write();
        let log = apps.entry(Arc::from(app)).or_insert_with(|| self.new_log());
        let moved = seq > log.last_seq;
        log.last_seq = log.last_seq.max(seq);
        moved
    }

    /// The highest broadcast seq the app has given out; for an app that has none, where
    /// its seqs start.
    pub fn last_seq(&self, app: &str) -> u64 {
        let base = || self.base.load(Ordering::Relaxed);
        self.apps.read().get(app).map_or_else(base, |log| log.last_seq)
    }

    /// Up to `n` entries of the app after `cursor`, in seq order.
    pub fn after(&self, app: &str, cursor: u64, n: usize) -> Vec<Arc<Entry>> {
        let apps = self.apps.read();
        let Some(log) = apps.get(app) else { return Vec::new() };
        let from = log.entries.partition_point(|e| e.seq <= cursor);
        log.entries.range(from..).take(n).cloned().collect()
    }

    /// Entries of the app in `(from, to]`.
    pub fn between(&self, app: &str, from: u64, to: u64) -> Vec<Arc<Entry>> {
        let apps = self.apps.read();
        let Some(log) = apps.get(app) else { return Vec::new() };
        let start = log.entries.partition_point(|e| e.seq <= from);
        log.entries.range(start..).take_while(|e| e.seq <= to).cloned().collect()
    }

    /// How many entries of the app in `(from, to]` are for a device first seen at
    /// `floor`: the broadcasts a link written up to `to` has in flight when acked to `from`.
    pub fn count(&self, app: &str, from: u64, to: u64, floor: u64) -> usize {
        let apps = self.apps.read();
        let Some(log) = apps.get(app) else { return 0 };
        let start = log.entries.partition_point(|e| e.seq <= from);
        log.entries.range(start..).take_while(|e| e.seq <= to).filter(|e| e.is_for(floor)).count()
    }

    /// Takes one entry out of the log (a TTL-0 broadcast once its fan-out is done).
    pub fn remove(&self, app: &str, seq: u64) {
        if let Some(log) = self.apps.write().get_mut(app) {
            log.entries.retain(|e| e.seq != seq);
        }
    }

    /// Takes every expired entry out of the log; returns them with their app.
    pub fn purge(&self, now_ms: i64) -> Vec<(Arc<str>, Arc<Entry>)> {
        let mut expired = Vec::new();
        for (app, log) in self.apps.write().iter_mut() {
            log.entries.retain(|e| {
                let gone = e.message.expires_at_ms.is_some_and(|t| t <= now_ms);
                if gone {
                    expired.push((app.clone(), e.clone()));
                }
                !gone
            });
        }
        expired
    }

    /// Broadcasts kept, all apps together.
    pub fn len(&self) -> usize {
        self.apps.read().values().map(|log| log.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::device::Push;

    fn msg(id: &str, expires_at_ms: i64) -> Arc<Message> {
        Arc::new(Message::new(Push { message_id: id.into(), expires_at_ms, ..Default::default() }))
    }

    fn seqs(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn seqs_are_per_app_and_reads_start_after_the_cursor() {
        let b = Broadcasts::default();
        let (a, c): (Arc<str>, Arc<str>) = ("a".into(), "c".into());
        for i in 0..5 {
            b.append(&a, msg(&format!("a{i}"), 0), false, 100);
        }
        assert_eq!(b.append(&c, msg("c0", 0), false, 100).0.seq, 1, "apps do not share seqs");
        assert_eq!(seqs(&b.after("a", 2, 10)), vec![3, 4, 5]);
        assert_eq!(seqs(&b.after("a", 2, 2)), vec![3, 4]);
        assert_eq!(seqs(&b.between("a", 1, 3)), vec![2, 3]);
        assert_eq!(b.after("a", 2, 10)[0].prev, 2, "each entry knows the one before");
        assert!(b.after("nobody", 0, 10).is_empty());
    }

    #[test]
    fn the_cap_drops_the_oldest_and_the_seq_never_goes_back() {
        let b = Broadcasts::default();
        let a: Arc<str> = "a".into();
        for i in 0..3 {
            b.append(&a, msg(&format!("m{i}"), 0), false, 2);
        }
        assert_eq!(seqs(&b.after("a", 0, 10)), vec![2, 3]);
        b.remove("a", 3);
        b.remove("a", 2);
        assert_eq!(b.append(&a, msg("m3", 0), false, 2).0.seq, 4, "an empty log keeps its seq");
        assert!(b.raise("a", 10));
        assert!(!b.raise("a", 7));
        assert_eq!(b.last_seq("a"), 10);
        // A made-up cursor from a device, live or kept in its record over a restart.
        assert!(b.raise("a", crate::handshake::MAX_COUNTER));
        assert_eq!(b.last_seq("a"), MAX_RAISE);
    }

    #[test]
    fn expired_entries_are_purged_and_new_device_flags_are_honoured() {
        let b = Broadcasts::default();
        let a: Arc<str> = "a".into();
        b.append(&a, msg("old", 10), false, 10);
        let (kept, _) = b.append(&a, msg("new", 0), true, 10);
        let purged = b.purge(20);
        assert_eq!(purged.len(), 1);
        assert_eq!(purged[0].1.message.id, "old");
        assert_eq!(seqs(&b.after("a", 0, 10)), vec![2]);
        assert!(kept.is_for(5), "sent for new devices too");
        assert!(!purged[0].1.is_for(1), "older than the device, and not for new devices");
    }
}
