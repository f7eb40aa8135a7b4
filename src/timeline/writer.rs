//! The timeline's writer thread: files each note under the timelines it belongs to,
//! keeps every timeline within its cap and deletes entries past the retention window.
//!
//! Keys: `kind app \0 id \0 at_ms counter` (big-endian, so a timeline is one prefix in
//! time order). Retention works through a second keyspace, `index`, holding one key
//! `bucket_end prefix` per timeline and time bucket it has entries in: pruning walks the
//! buckets that ended before the cutoff, oldest first, and deletes only what is in them,
//! so it never scans the timelines that are still young.
//!
//! The bytes of all entries (keys and values) are counted in a third keyspace, `meta`,
//! in the same batches that write and delete them; past `max_bytes` the oldest buckets
//! are deleted, whatever their age, until an eighth under it. What is on disk follows
//! that count as compaction catches up with the deletions.
//!
//! Caps are kept with slack: a timeline is trimmed back to its cap once it is an eighth
//! over it, so trimming costs one scan per eighth of a cap rather than one per entry.
//! Reads return at most the cap. The counts live in a bounded map; a device counted
//! again (after a restart, or once the map was cleared) is counted from the store, a
//! message is assumed new (its ids are), so a message timeline still being written
//! across a restart may hold up to twice its cap until it is trimmed.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, OwnedWriteBatch};

use super::{Bounds, Kind, Note, Op, prefix, reason};
use crate::store::record;

/// Notes per batch at most, so a barrier is answered promptly.
const MAX_BATCH: usize = 4_096;
/// How long the writer lets notes gather once one arrived. Recording wakes the writer
/// only when it is parked, so this turns a wake-up (a futex call on the push path and a
/// context switch) and a commit per note into one per batch: measured, most of the
/// timeline's cost at 5,000 pushes/s was those wake-ups.
const GATHER: Duration = Duration::from_millis(5);
/// Timelines whose counts are kept; past it the map starts over. Seven eighths of a
/// power of two, the most a hash table of that many slots holds before it doubles.
const MAX_TRACKED: usize = 14_336;
/// Entries one prune tick deletes at most; the rest waits for the next tick.
const MAX_PRUNE: usize = 100_000;
/// A device's delivery failure like the last one written for it (same event and reason)
/// within this window is counted, not written: a device that is offline while pushes
/// stream in would otherwise fill its timeline with them and push out its connection
/// history, which is what its verdict needs.
const REPEAT_MS: i64 = 60_000;

/// The key in `meta` holding the entries' byte count.
const BYTES: &[u8] = b"bytes";

/// The writer's keyspaces.
pub struct Spaces {
    pub entries: Keyspace,
    pub index: Keyspace,
    pub meta: Keyspace,
}

/// What the writer knows of one timeline: 24 bytes, kept under a keyed hash of the
/// timeline's prefix rather than the prefix itself, since every device that connects
/// while its timeline is tracked costs one (measured: the map and its keys were about
/// a seventh of the server's heap with 19,000 idle connections).
#[derive(Default)]
struct Tracked {
    n: u32,
    /// Failures like the last one written not written since.
    repeats: u32,
    /// The bucket this timeline was last indexed in.
    bucket_end: i64,
    /// The last delivery failure written; most timelines have none.
    last_failure: Option<Box<Failure>>,
}

struct Failure {
    event: &'static str,
    reason: String,
    at_ms: i64,
}

pub struct Writer {
    db: Database,
    entries: Keyspace,
    index: Keyspace,
    meta: Keyspace,
    /// The entries' bytes, keys and values.
    bytes: u64,
    /// `bytes` for readers, as of the last commit.
    shown: Arc<AtomicU64>,
    bounds: Bounds,
    bucket_ms: i64,
    rx: Receiver<Op>,
    tracked: HashMap<u64, Tracked>,
    /// Keys `tracked` by timeline; seeded at random, so ids cannot be chosen to collide.
    hasher: RandomState,
    counter: u32,
}

impl Writer {
    pub fn new(
        db: Database,
        spaces: Spaces,
        bounds: Bounds,
        rx: Receiver<Op>,
        shown: Arc<AtomicU64>,
    ) -> Writer {
        let Spaces { entries, index, meta } = spaces;
        // Eight buckets per retention window, a minute at most: pruning runs at most an
        // eighth late, and the size cap deletes the oldest minute first (whole timelines
        // in key order within a bucket: with hour-long buckets, a busy hour lost every
        // device's history before any message's).
        let bucket_ms = (bounds.retention_ms / 8).clamp(1_000, 60_000);
        let bytes = match meta.get(BYTES) {
            Ok(Some(v)) if v.len() == 8 => u64::from_be_bytes((*v).try_into().expect("8")),
            // Written before the count was kept: counted once.
            _ => entries
                .iter()
                .filter_map(|item| item.into_inner().ok())
                .map(|(k, v)| size(&k, &v))
                .sum(),
        };
        shown.store(bytes, Ordering::Relaxed);
        metrics::gauge!("longlink_timeline_bytes").set(bytes as f64);
        Writer {
            db,
            entries,
            index,
            meta,
            bytes,
            shown,
            bounds,
            bucket_ms,
            rx,
            tracked: HashMap::with_capacity(MAX_TRACKED),
            hasher: RandomState::new(),
            counter: 0,
        }
    }

    pub fn run(mut self) {
        let mut next_prune = Instant::now() + self.bounds.prune_every;
        loop {
            let wait = next_prune.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                std::thread::sleep(GATHER);
                let mut ops = vec![first];
                while ops.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(op) => ops.push(op),
                        Err(_) => break,
                    }
                }
                self.commit(ops);
            }
            if Instant::now() >= next_prune {
                let cutoff = crate::clock::unix_ms() - self.bounds.retention_ms;
                let pruned = self.drop_buckets(|end, _| (end <= cutoff).then_some(cutoff));
                metrics::counter!("longlink_timeline_pruned_total").increment(pruned);
                next_prune = Instant::now() + self.bounds.prune_every;
            }
        }
        let _ = self.db.persist(fjall::PersistMode::SyncAll);
    }

    fn commit(&mut self, ops: Vec<Op>) {
        let mut batch = self.db.batch();
        let mut waiters = Vec::new();
        let mut over = Vec::new();
        let mut notes = 0u64;
        for op in ops {
            match op {
                Op::Note(note) => {
                    self.file(&mut batch, &note, &mut over);
                    notes += 1;
                }
                Op::Barrier(done) => waiters.push(done),
            }
        }
        self.commit_counted(batch, "commit");
        metrics::counter!("longlink_timeline_entries_total").increment(notes);
        for (kind, key) in over {
            self.trim(kind, &key);
        }
        if self.bytes > self.bounds.max_bytes {
            let target = self.bounds.max_bytes - self.bounds.max_bytes / 8;
            let shed = self.drop_buckets(|end, bytes| (bytes > target).then_some(end));
            metrics::counter!("longlink_timeline_shed_total").increment(shed);
        }
        for done in waiters {
            let _ = done.send(());
        }
    }

    /// Writes `note` under every timeline it belongs to.
    fn file(&mut self, batch: &mut OwnedWriteBatch, note: &Note, over: &mut Vec<(Kind, Vec<u8>)>) {
        let Some(app) = note.app.as_deref() else { return };
        let value = record::encode(&note.entry());
        let counter = if note.first {
            0
        } else {
            self.counter = self.counter.wrapping_add(1).max(1);
            self.counter
        };
        for (kind, id) in timelines(note) {
            let p = prefix(kind, app, id);
            let value = match kind {
                Kind::Device if reason::folds(note.event) => match self.repeat(&p, note) {
                    Some(value) => value,
                    None => continue,
                },
                _ => value.clone(),
            };
            let mut key = Vec::with_capacity(p.len() + 12);
            key.extend_from_slice(&p);
            key.extend_from_slice(&note.at_ms.to_be_bytes());
            key.extend_from_slice(&counter.to_be_bytes());
            self.bytes += size(&key, &value);
            batch.insert(&self.entries, key, value);
            if self.track(batch, kind, &p, note.at_ms) {
                over.push((kind, p));
            }
        }
    }

    /// The value to write for a device's delivery failure, or `None` when it repeats the
    /// last one written within [`REPEAT_MS`]; a failure written after repeats says how
    /// many it stands for.
    fn repeat(&mut self, p: &[u8], note: &Note) -> Option<Vec<u8>> {
        let tracked = self.tracked(p);
        let same = tracked.last_failure.as_ref().is_some_and(|last| {
            last.event == note.event
                && last.reason == note.reason
                && note.at_ms - last.at_ms < REPEAT_MS
        });
        if same {
            tracked.repeats += 1;
            return None;
        }
        let mut entry = note.entry();
        if tracked.repeats > 0 {
            let more = format!("{} more like the previous one before this", tracked.repeats);
            entry.detail =
                if entry.detail.is_empty() { more } else { format!("{}; {more}", entry.detail) };
        }
        tracked.repeats = 0;
        let failure = Failure { event: note.event, reason: note.reason.clone(), at_ms: note.at_ms };
        tracked.last_failure = Some(Box::new(failure));
        Some(record::encode(&entry))
    }

    /// Counts one more entry of timeline `p`; true when it is over its cap and its slack
    /// (also when it was before it was counted: a cap lowered between runs).
    fn track(&mut self, batch: &mut OwnedWriteBatch, kind: Kind, p: &[u8], at_ms: i64) -> bool {
        let bucket_end = (at_ms / self.bucket_ms + 1) * self.bucket_ms;
        let cap = self.bounds.cap(kind);
        let index = self.index.clone();
        let tracked = self.tracked(p);
        tracked.n += 1;
        if tracked.bucket_end != bucket_end {
            tracked.bucket_end = bucket_end;
            let mut key = bucket_end.to_be_bytes().to_vec();
            key.extend_from_slice(p);
            batch.insert(&index, key, Vec::new());
        }
        tracked.n as usize > cap + cap / 8
    }

    /// What is known of timeline `p`, counted from the store when it is not tracked yet.
    fn tracked(&mut self, p: &[u8]) -> &mut Tracked {
        let h = self.hasher.hash_one(p);
        if self.tracked.len() >= MAX_TRACKED && !self.tracked.contains_key(&h) {
            self.tracked.clear();
        }
        // Counted for every kind: a message's timeline may already be on disk when it
        // was tracked before and forgotten (past MAX_TRACKED), and its cap must hold.
        let entries = &self.entries;
        self.tracked.entry(h).or_insert_with(|| {
            let n = entries.prefix(p).count().try_into().unwrap_or(u32::MAX);
            Tracked { n, ..Tracked::default() }
        })
    }

    /// Deletes the oldest entries of timeline `p` beyond its cap.
    /// Reads only the keys it deletes: the count says how many are over.
    fn trim(&mut self, kind: Kind, p: &[u8]) {
        let Some(tracked) = self.tracked.get_mut(&self.hasher.hash_one(p)) else { return };
        let excess = (tracked.n as usize).saturating_sub(self.bounds.cap(kind));
        tracked.n -= excess as u32;
        let mut batch = self.db.batch();
        for (key, value) in self.entries.prefix(p).take(excess).filter_map(|i| i.into_inner().ok())
        {
            self.bytes -= size(&key, &value).min(self.bytes);
            batch.remove(&self.entries, key);
        }
        self.commit_counted(batch, "trim");
        metrics::counter!("longlink_timeline_trimmed_total").increment(excess as u64);
    }

    /// Walks the index's buckets oldest first while `until(bucket_end, bytes)` names a
    /// time, deleting each bucket's timeline's entries older than that time; returns how
    /// many it deleted (at most [`MAX_PRUNE`] a call).
    fn drop_buckets(&mut self, until: impl Fn(i64, u64) -> Option<i64>) -> u64 {
        let mut batch = self.db.batch();
        let mut removed = 0;
        for item in self.index.iter() {
            let Ok(key) = item.key() else { continue };
            let Some(end) = key.get(..8).map(|b| i64::from_be_bytes(b.try_into().expect("8")))
            else {
                batch.remove(&self.index, key.clone());
                continue;
            };
            let Some(before) = until(end, self.bytes).filter(|_| removed < MAX_PRUNE) else {
                break;
            };
            let p = &key[8..];
            let mut gone = 0u32;
            for entry in self.entries.prefix(p) {
                let Ok((k, v)) = entry.into_inner() else { continue };
                if at_ms(&k, p.len()).is_none_or(|at| at >= before) {
                    break;
                }
                self.bytes -= size(&k, &v).min(self.bytes);
                batch.remove(&self.entries, k);
                gone += 1;
            }
            if let Some(tracked) = self.tracked.get_mut(&self.hasher.hash_one(p)) {
                tracked.n = tracked.n.saturating_sub(gone);
                // Its bucket's index key is gone: the next entry indexes it again.
                tracked.bucket_end = 0;
            }
            removed += gone as usize;
            batch.remove(&self.index, key.clone());
        }
        self.commit_counted(batch, "prune");
        removed as u64
    }

    /// Commits `batch` with the byte count as it now stands.
    fn commit_counted(&self, mut batch: OwnedWriteBatch, what: &str) {
        batch.insert(&self.meta, BYTES, self.bytes.to_be_bytes());
        if let Err(error) = batch.commit() {
            tracing::warn!(%error, what, "timeline write failed");
        }
        self.shown.store(self.bytes, Ordering::Relaxed);
        metrics::gauge!("longlink_timeline_bytes").set(self.bytes as f64);
    }
}

fn size(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

fn at_ms(key: &[u8], prefix_len: usize) -> Option<i64> {
    let bytes = key.get(prefix_len..prefix_len + 8)?;
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// The timelines a note is filed under. A device's timeline takes its own events and
/// the failures of its deliveries, not every send and ack, which its messages' timelines
/// hold.
fn timelines(note: &Note) -> impl Iterator<Item = (Kind, &str)> {
    let message = (!note.message_id.is_empty() && !note.device_only)
        .then_some((Kind::Message, &*note.message_id));
    let request = (!note.request_id.is_empty()).then_some((Kind::Request, &*note.request_id));
    let device = note
        .device
        .as_deref()
        .filter(|_| !note.message_only)
        .filter(|_| note.message_id.is_empty() || !reason::is_routine(note.event))
        .map(|d| (Kind::Device, d));
    message.into_iter().chain(request).chain(device)
}
