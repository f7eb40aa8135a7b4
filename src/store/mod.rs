//! The durable store: messages kept per device, the device registry, the broadcast log
//! and idempotency keys, in an embedded LSM store (fjall) under `<data_dir>/store`.
//!
//! All writes go through one writer thread, in the order they were enqueued, and are
//! group-committed: the thread takes every operation waiting, writes them as one atomic
//! batch, and, under the `always` policy, fsyncs before it answers anyone waiting. Callers
//! enqueue while holding the device's registry entry (so a device's writes keep their
//! order) and wait, outside any lock, on a [`Store::sync`] barrier: one fsync covers every
//! push that arrived meanwhile. Reads happen once, at start ([`Store::load`]).

mod load;
pub mod record;

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::oneshot;

pub use load::{Loaded, LoadedDevice};

/// Operations per batch at most, so one commit stays short.
const MAX_BATCH: usize = 8_192;
/// Under `always`, how long a write no push waits for may stay without an fsync.
const ALWAYS_LAG: Duration = Duration::from_secs(1);

/// When the writer makes data durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// fsync before answering any waiting push: nothing answered is lost, power loss included.
    Always,
    /// fsync at most every interval: a process crash loses nothing (the data is in the
    /// OS), a power loss up to the interval.
    Interval(Duration),
    /// Leave it to the OS: a process crash loses nothing, a power loss what the OS had not
    /// written back (typically up to 30 s).
    Never,
}

/// What the store may hold in memory, apart from the hub's own copy of kept messages.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Block cache for reads, in bytes.
    pub cache_bytes: u64,
    /// The three keyspaces' memtables together, in bytes; past its share a memtable is
    /// flushed to disk.
    pub write_buffer_bytes: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory { cache_bytes: 16 << 20, write_buffer_bytes: 32 << 20 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Engine(#[from] fjall::Error),
    #[error("store writer has stopped")]
    Stopped,
    #[error(
        "store {0} is in use by another process (another `longlink serve` with the same data \
         directory?)"
    )]
    Locked(String),
}

enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
    /// Answered once everything enqueued before it is durable (per the policy).
    Barrier(oneshot::Sender<Result<(), String>>),
}

#[derive(Debug, Clone, Copy)]
pub enum Space {
    Messages,
    Devices,
    Requests,
    Broadcasts,
    /// The node's own records: its epoch.
    Meta,
}

#[derive(Clone)]
struct Spaces {
    messages: Keyspace,
    devices: Keyspace,
    requests: Keyspace,
    broadcasts: Keyspace,
    meta: Keyspace,
}

impl Spaces {
    fn get(&self, space: Space) -> &Keyspace {
        match space {
            Space::Messages => &self.messages,
            Space::Devices => &self.devices,
            Space::Requests => &self.requests,
            Space::Broadcasts => &self.broadcasts,
            Space::Meta => &self.meta,
        }
    }
}

pub struct Store {
    db: Database,
    spaces: Spaces,
    tx: mpsc::Sender<Op>,
    /// Message records in the store: those read at load, plus puts, minus deletes. Exact
    /// because the hub writes each (device, seq) once and deletes it at most once.
    messages: AtomicI64,
    /// fsyncs that succeeded.
    fsyncs: Arc<AtomicU64>,
    /// Writes enqueued since the store was opened, and how many of them (the first ones,
    /// in queue order) the writer has answered for: durable as the policy defines it, or
    /// failed with their waiters told. While the two are equal, a [`Store::sync`] has
    /// nothing to wait for. Their difference, less what the writer has taken but not
    /// answered for yet, is the queue (unbounded; the per-connection frame budget bounds
    /// what each device can add to it).
    enqueued: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
    /// Syncs that had to wait for the writer.
    waits: AtomicU64,
    writer: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default memory budget.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<Store, StoreError> {
        Store::open_with(dir, fsync, Memory::default())
    }

    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open_with(dir: &Path, fsync: Fsync, memory: Memory) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(fjall::Error::from)?;
        let db =
            Database::builder(dir).cache_size(memory.cache_bytes).open().map_err(|e| match e {
                fjall::Error::Locked => StoreError::Locked(dir.display().to_string()),
                other => StoreError::Engine(other),
            })?;
        // Each keyspace has its own memtable; split the budget between the three busy
        // ones (broadcasts are few).
        let per = (memory.write_buffer_bytes / 3).max(1 << 20);
        let options = || KeyspaceCreateOptions::default().max_memtable_size(per);
        let spaces = Spaces {
            messages: db.keyspace("messages", options)?,
            devices: db.keyspace("devices", options)?,
            requests: db.keyspace("requests", options)?,
            broadcasts: db.keyspace("broadcasts", || {
                KeyspaceCreateOptions::default().max_memtable_size(1 << 20)
            })?,
            meta: db
                .keyspace("meta", || KeyspaceCreateOptions::default().max_memtable_size(1 << 20))?,
        };
        let (tx, rx) = mpsc::channel();
        let enqueued = Arc::new(AtomicU64::new(0));
        let fsyncs = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            db: db.clone(),
            spaces: spaces.clone(),
            enqueued: enqueued.clone(),
            fsyncs: fsyncs.clone(),
            durable: durable.clone(),
            fsync,
            rx,
        };
        let writer = std::thread::Builder::new()
            .name("longlink-store".into())
            .spawn(move || writer.run())
            .map_err(fjall::Error::from)?;
        let messages = AtomicI64::new(0);
        let waits = AtomicU64::new(0);
        Ok(Store { db, spaces, tx, messages, fsyncs, enqueued, durable, waits, writer })
    }

    pub fn put(&self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        if let Space::Messages = space {
            self.messages.fetch_add(1, Ordering::Relaxed);
        }
        self.enqueue(Op::Put(space, key, value));
    }

    /// Replaces a record that is already kept (or queued): counted as no new message.
    pub fn rewrite(&self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.enqueue(Op::Put(space, key, value));
    }

    pub fn delete(&self, space: Space, key: Vec<u8>) {
        if let Space::Messages = space {
            self.messages.fetch_sub(1, Ordering::Relaxed);
        }
        self.enqueue(Op::Delete(space, key));
    }

    /// Counts a write, then queues it: a write is counted before it can be committed.
    fn enqueue(&self, op: Op) {
        self.enqueued.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(op);
    }

    /// Resolves once every write enqueued before the call is committed (and, under
    /// `Fsync::Always`, on disk). With nothing pending it resolves at once, without a
    /// round trip through the writer: every write enqueued before the call was counted
    /// before the call, and sits in the queue ahead of any write counted after it, so
    /// once as many writes are durable as were counted, those are among them.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let counted = self.enqueued.load(Ordering::SeqCst);
        if self.durable.load(Ordering::SeqCst) >= counted {
            return Ok(());
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("longlink_store_waits_total").increment(1);
        let (done, wait) = oneshot::channel();
        self.tx.send(Op::Barrier(done)).map_err(|_| StoreError::Stopped)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Engine(fjall::Error::from(std::io::Error::other(e)))),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// Message records kept for devices (written, not yet acked, expired or dropped),
    /// counting writes still queued for the writer.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed).max(0) as u64
    }

    /// Writes enqueued since the store was opened: a caller that reads it before and after
    /// some work knows whether anything was written meanwhile.
    pub fn enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::SeqCst)
    }

    /// Syncs since the store was opened that had writes to wait for.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// fsyncs the writer made (and that succeeded) since the store was opened.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Bytes the store takes on disk (tables and journal).
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// Forces everything written so far onto disk (drain, shutdown).
    pub fn persist(&self) -> Result<(), StoreError> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// Stops the writer after it wrote everything enqueued, and closes the store.
    pub fn close(self) {
        let Store { db, spaces, tx, writer, .. } = self;
        drop(tx);
        let _ = writer.join();
        drop(spaces);
        drop(db);
    }
}

struct Writer {
    db: Database,
    spaces: Spaces,
    enqueued: Arc<AtomicU64>,
    fsyncs: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
    fsync: Fsync,
    rx: mpsc::Receiver<Op>,
}

impl Writer {
    fn run(self) {
        let mut disk = Disk { synced_at: Instant::now(), behind: false, taken: 0 };
        loop {
            let first = match self.next_op(&disk) {
                Ok(Some(op)) => op,
                Ok(None) => {
                    self.sync_now(&mut disk);
                    continue;
                }
                Err(()) => break,
            };
            let mut ops = vec![first];
            while ops.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.commit(ops, &mut disk);
            // Checked after every batch too: a writer that never runs out of work never
            // times out waiting for the next one.
            if self.sync_due(&disk).is_some_and(|due| due <= Instant::now()) {
                self.sync_now(&mut disk);
            }
        }
        let _ = self.db.persist(PersistMode::SyncAll);
    }

    /// When writes committed without an fsync must reach the disk: every interval under
    /// `interval`; within [`ALWAYS_LAG`] under `always` (a push that waits has its own
    /// fsync; this covers the writes no push waits for: registrations, acks, TTL-0
    /// bookkeeping); never under `never`.
    fn sync_due(&self, disk: &Disk) -> Option<Instant> {
        match self.fsync {
            _ if !disk.behind => None,
            Fsync::Interval(every) => Some(disk.synced_at + every),
            Fsync::Always => Some(disk.synced_at + ALWAYS_LAG),
            Fsync::Never => None,
        }
    }

    /// The next operation; `None` when an fsync is due first; `Err` when every sender is
    /// gone.
    fn next_op(&self, disk: &Disk) -> Result<Option<Op>, ()> {
        let Some(due) = self.sync_due(disk) else {
            return self.rx.recv().map(Some).map_err(|_| ());
        };
        match self.rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(op) => Ok(Some(op)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    fn commit(&self, ops: Vec<Op>, disk: &mut Disk) {
        let mut batch = self.db.batch();
        let mut waiters = Vec::new();
        let mut writes = 0;
        for op in ops {
            match op {
                Op::Put(space, key, value) => {
                    batch.insert(self.spaces.get(space), key, value);
                    writes += 1;
                }
                Op::Delete(space, key) => {
                    batch.remove(self.spaces.get(space), key);
                    writes += 1;
                }
                Op::Barrier(done) => waiters.push(done),
            }
        }
        disk.taken += writes as u64;
        let left = self.enqueued.load(Ordering::Relaxed).saturating_sub(disk.taken);
        metrics::gauge!("longlink_store_queue").set(left as f64);
        let mut result =
            if writes > 0 { batch.commit().map_err(|e| e.to_string()) } else { Ok(()) };
        disk.behind |= writes > 0;
        if self.fsync != Fsync::Always {
            // Durable as this policy defines it once committed. A failed commit's writes
            // are counted too: its waiters got the error, and a later sync answers for
            // what came after it, as a later barrier always did.
            self.durable.store(disk.taken, Ordering::SeqCst);
        }
        // A barrier with nothing written since the last fsync is answered without one.
        if result.is_ok() && self.fsync == Fsync::Always && !waiters.is_empty() && disk.behind {
            result = self.db.persist(PersistMode::SyncAll).map_err(|e| e.to_string());
            self.synced(disk, result.is_ok());
        }
        if let Err(error) = &result {
            metrics::counter!("longlink_store_errors_total").increment(1);
            tracing::error!(%error, writes, "store commit failed");
        }
        metrics::counter!("longlink_store_commits_total").increment(1);
        metrics::counter!("longlink_store_writes_total").increment(writes as u64);
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }

    fn sync_now(&self, disk: &mut Disk) {
        let result = self.db.persist(PersistMode::SyncAll);
        if let Err(error) = &result {
            tracing::error!(%error, "store fsync failed");
        }
        self.synced(disk, result.is_ok());
    }

    fn synced(&self, disk: &mut Disk, ok: bool) {
        disk.synced_at = Instant::now();
        if ok {
            disk.behind = false;
            self.durable.store(disk.taken, Ordering::SeqCst);
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("longlink_store_fsyncs_total").increment(1);
        }
    }
}

/// What the writer knows of the disk.
struct Disk {
    /// The last fsync (or its attempt).
    synced_at: Instant,
    /// Writes were committed since the last fsync that succeeded.
    behind: bool,
    /// Writes taken from the queue so far.
    taken: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_barrier_fsyncs_only_what_was_written_since_the_last_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Fsync::Always).unwrap();
        store.sync().await.unwrap();
        assert_eq!((store.fsyncs(), store.waits()), (0, 0), "nothing written: nothing to wait for");
        store.put(Space::Devices, b"a".to_vec(), b"1".to_vec());
        store.sync().await.unwrap();
        assert_eq!(store.fsyncs(), 1);
        assert_eq!(store.waits(), 1);
        store.sync().await.unwrap();
        store.sync().await.unwrap();
        assert_eq!((store.fsyncs(), store.waits()), (1, 1), "syncs after it find it durable");
        store.delete(Space::Devices, b"a".to_vec());
        store.sync().await.unwrap();
        assert_eq!((store.fsyncs(), store.waits()), (2, 2), "a delete is a write too");
        store.close();
    }

    #[test]
    fn a_sync_waits_for_writes_enqueued_before_it_under_every_policy() {
        let policies = [Fsync::Always, Fsync::Interval(Duration::from_secs(3600)), Fsync::Never];
        for fsync in policies {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), fsync).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for i in 0..50u32 {
                store.put(Space::Devices, i.to_be_bytes().to_vec(), b"v".to_vec());
                runtime.block_on(store.sync()).unwrap();
                // The writer answered, so the write is committed: readable now.
                let key = i.to_be_bytes();
                assert!(store.spaces.devices.get(key).unwrap().is_some(), "{fsync:?} write {i}");
            }
            let waits = store.waits();
            runtime.block_on(store.sync()).unwrap();
            assert_eq!(store.waits(), waits, "{fsync:?}: nothing pending, nothing to wait for");
            // Under `always` a commit is not durable until an fsync, which only a sync
            // asks for; otherwise the writer may have committed before the sync came.
            let (waited, fsynced) = if fsync == Fsync::Always { (50, 50) } else { (waits, 0) };
            assert_eq!((waits, store.fsyncs()), (waited, fsynced), "{fsync:?}");
            assert!(waits <= 50);
            store.close();
        }
    }

    #[test]
    fn the_interval_policy_fsyncs_only_after_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Fsync::Interval(Duration::from_millis(10))).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(store.fsyncs(), 0, "ten idle intervals, no fsync");
        store.put(Space::Devices, b"a".to_vec(), b"1".to_vec());
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.fsyncs() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            store.fsyncs(),
            1,
            "one fsync for the write, none for the idle intervals after it"
        );
        store.close();
    }

    #[test]
    fn writes_that_never_stop_are_still_fsynced_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Fsync::Interval(Duration::from_millis(20))).unwrap();
        let start = Instant::now();
        let mut i = 0u32;
        while start.elapsed() < Duration::from_millis(400) {
            store.put(Space::Devices, i.to_be_bytes().to_vec(), b"v".to_vec());
            i += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        let fsyncs = store.fsyncs();
        assert!(fsyncs >= 5, "{fsyncs} fsyncs in 400 ms of writes every 0.2 ms");
        store.close();
    }

    #[test]
    fn under_always_a_write_no_push_waits_for_reaches_the_disk_within_the_lag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Fsync::Always).unwrap();
        store.put(Space::Devices, b"a".to_vec(), b"1".to_vec());
        let deadline = Instant::now() + ALWAYS_LAG * 3;
        while store.fsyncs() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(store.fsyncs(), 1, "fsynced without any sync() asking");
        std::thread::sleep(ALWAYS_LAG + Duration::from_millis(200));
        assert_eq!(store.fsyncs(), 1, "and nothing more while nothing is written");
        store.close();
    }
}
