//! The delivery timeline: for every message and every device, a bounded history of what
//! happened (accepted, stored, sent, acked, expired, dropped, rejected, connected,
//! closed, token rejected, bound, reported, ...), each step with its time and, for
//! failures, a reason code from one documented list (`reason`).
//!
//! Recording never waits: a step becomes a [`Note`] on a bounded queue, and the
//! timeline's own writer thread (`writer`) turns notes into keys of its own fjall
//! database under `<data_dir>/timeline`, trims each timeline to its cap and deletes
//! entries past the retention window. It is a database apart from the message store so
//! that its writes are never part of the fsync a push waits for; a full queue drops the
//! note and counts it instead of slowing delivery. Reads ([`Timeline::read`]) are prefix
//! scans, newest first, after a barrier so that they see every note recorded before.
//!
//! Every failure that is recorded is also counted in
//! `longlink_delivery_failures_total{reason}`, whether the timeline is enabled or not.

pub mod reason;
pub mod render;
pub mod steps;
pub mod verdict;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::oneshot;

use crate::config::TimelineConfig;
use crate::proto::router::TimelineEntry;
use crate::session::DeviceKey;
use crate::store::record;

/// Which timeline an entry is filed under: the first byte of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message = b'm' as isize,
    Device = b'd' as isize,
    /// A push's request id: refusals before a message id existed, and the message id an
    /// accepted push got.
    Request = b'r' as isize,
}

/// One step, as recorded on the hot path; the writer encodes it.
#[derive(Debug, Default)]
pub struct Note {
    pub at_ms: i64,
    pub event: &'static str,
    pub reason: String,
    pub app: Option<Arc<str>>,
    pub device: Option<Arc<str>>,
    pub message_id: String,
    pub request_id: String,
    pub seq: u64,
    pub session: u64,
    pub user_id: String,
    pub detail: String,
    /// Filed under its device's timeline only (its message's has it in a group entry).
    pub device_only: bool,
    /// Filed under its message's timeline only (its device's has its own entry).
    pub message_only: bool,
    /// Sorts first among the entries of its millisecond (accepted, which is recorded
    /// after the sends it caused but happened before them).
    pub first: bool,
    /// How many failures it stands for in `longlink_delivery_failures_total`, when not
    /// one: a group entry repeats its devices' own entries (none), or stands for devices
    /// that have none of their own (rejected ones).
    pub failures: Option<u32>,
}

impl Note {
    pub fn new(event: &'static str, key: &DeviceKey) -> Note {
        Note {
            at_ms: crate::clock::unix_ms(),
            event,
            app: Some(key.app.clone()),
            device: Some(key.device.clone()),
            ..Note::default()
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Note {
        self.reason = reason.into();
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Note {
        self.detail = detail.into();
        self
    }

    pub fn session(mut self, session: u64) -> Note {
        self.session = session;
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Note {
        self.user_id = user.into();
        self
    }

    pub fn entry(&self) -> TimelineEntry {
        TimelineEntry {
            at_ms: self.at_ms,
            event: self.event.to_string(),
            reason: self.reason.clone(),
            message_id: self.message_id.clone(),
            device_id: self.device.as_deref().unwrap_or_default().to_string(),
            seq: self.seq,
            session_id: if self.session == 0 { String::new() } else { hex(self.session) },
            request_id: self.request_id.clone(),
            user_id: self.user_id.clone(),
            detail: self.detail.clone(),
        }
    }
}

pub fn hex(session: u64) -> String {
    format!("{session:x}")
}

/// The bounds a writer keeps its timelines within.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub retention_ms: i64,
    pub device_entries: usize,
    pub message_entries: usize,
    pub prune_every: Duration,
    pub max_bytes: u64,
}

impl Bounds {
    pub fn from_config(c: &TimelineConfig) -> Bounds {
        Bounds {
            retention_ms: (c.retention_secs as i64).saturating_mul(1000),
            device_entries: c.device_entries,
            message_entries: c.message_entries,
            prune_every: Duration::from_secs(c.prune_interval_secs),
            max_bytes: c.max_mib.saturating_mul(1 << 20),
        }
    }

    pub fn cap(&self, kind: Kind) -> usize {
        match kind {
            Kind::Device => self.device_entries,
            Kind::Message | Kind::Request => self.message_entries,
        }
    }
}

enum Op {
    Note(Note),
    /// Answered once every note queued before it is committed.
    Barrier(oneshot::Sender<()>),
}

struct Inner {
    db: Database,
    entries: Keyspace,
    /// The entries' bytes as of the writer's last commit.
    bytes: Arc<AtomicU64>,
    tx: SyncSender<Op>,
    bounds: Bounds,
}

/// A handle on the timeline; cheap to clone. Disabled, it records nothing and reads
/// nothing.
#[derive(Clone, Default)]
pub struct Timeline(Option<Arc<Inner>>);

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline").field("enabled", &self.0.is_some()).finish()
    }
}

impl Timeline {
    /// Opens the timeline's database in `dir` and starts its writer, or returns a
    /// disabled timeline when the configuration says so.
    pub fn open(config: &TimelineConfig, dir: &Path) -> Result<Timeline, fjall::Error> {
        if !config.enabled {
            return Ok(Timeline(None));
        }
        // The database is opened on the writer's own thread, lowered first, so that its
        // flush and compaction workers inherit the lower priority: on a busy node the
        // timeline yields the CPU to delivery (halved the push p99 at 10,000/s on two
        // shared cores) and, if it falls behind, its queue sheds (counted) instead.
        let (config, dir) = (config.clone(), dir.to_path_buf());
        let (ready, opened) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name("longlink-timeline".into()).spawn(move || {
            crate::priority::background();
            match Self::start(&config, &dir) {
                Ok((inner, writer)) => {
                    let _ = ready.send(Ok(inner));
                    writer.run();
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            }
        })?;
        let inner = opened.recv().map_err(|_| std::io::Error::other("timeline writer stopped"))?;
        Ok(Timeline(Some(Arc::new(inner?))))
    }

    /// Opens the database and builds the writer that will own it.
    fn start(config: &TimelineConfig, dir: &Path) -> Result<(Inner, writer::Writer), fjall::Error> {
        std::fs::create_dir_all(dir)?;
        let db = Database::builder(dir).cache_size(2 << 20).open()?;
        // 8 MiB before a flush: smaller write buffers made the flushes and compactions of
        // this append-mostly data cost four times the CPU (measured at 5,000 pushes/s).
        let entries =
            db.keyspace("entries", || KeyspaceCreateOptions::default().max_memtable_size(8 << 20))?;
        // The index gets a key per timeline and time bucket, so every device that
        // connects adds one; a small write buffer keeps them on disk rather than in
        // memory (1 MiB cost 70 bytes per idle connection at 19,000).
        let index =
            db.keyspace("index", || KeyspaceCreateOptions::default().max_memtable_size(256 << 10))?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let bounds = Bounds::from_config(config);
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue_max);
        let spaces = writer::Spaces { entries: entries.clone(), index, meta };
        let bytes = Arc::new(AtomicU64::new(0));
        let writer = writer::Writer::new(db.clone(), spaces, bounds, rx, bytes.clone());
        Ok((Inner { db, entries, bytes, tx, bounds }, writer))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Records `note` without waiting; counts it when it is a failure.
    pub fn record(&self, note: Note) {
        let failures = note.failures.unwrap_or(1);
        if reason::is_failure(note.event) && !note.reason.is_empty() && failures > 0 {
            let label = reason::metric_label(&note.reason);
            metrics::counter!("longlink_delivery_failures_total", "reason" => label)
                .increment(failures.into());
        }
        let Some(inner) = &self.0 else { return };
        match inner.tx.try_send(Op::Note(note)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("longlink_timeline_dropped_total").increment(1);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Resolves once every note recorded before the call is readable (bounded: a full
    /// queue or a stopped writer resolves at once).
    pub async fn settled(&self) {
        let Some(inner) = &self.0 else { return };
        let (done, wait) = oneshot::channel();
        if inner.tx.try_send(Op::Barrier(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        }
    }

    /// The newest entries of one timeline, at most its cap, oldest first.
    pub fn read(&self, kind: Kind, app: &str, id: &str) -> Vec<TimelineEntry> {
        let Some(inner) = &self.0 else { return Vec::new() };
        let cap = inner.bounds.cap(kind);
        let mut entries: Vec<TimelineEntry> = inner
            .entries
            .prefix(prefix(kind, app, id))
            .rev()
            .filter_map(|item| item.value().ok())
            .filter_map(|value| record::decode(&value).ok())
            .take(cap)
            .collect();
        entries.reverse();
        entries
    }

    /// Entries kept on disk for one timeline, trimming slack included (tests, and the
    /// proof that caps hold on disk, not only in answers).
    pub fn stored(&self, kind: Kind, app: &str, id: &str) -> usize {
        let Some(inner) = &self.0 else { return 0 };
        inner.entries.prefix(prefix(kind, app, id)).count()
    }

    /// The bytes of every entry kept (keys and values), which `max_mib` bounds, as of the
    /// writer's last commit.
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, |inner| inner.bytes.load(Ordering::Relaxed))
    }

    /// Makes everything written so far durable (drain).
    pub fn persist(&self) {
        if let Some(inner) = &self.0
            && let Err(error) = inner.db.persist(PersistMode::SyncAll)
        {
            tracing::warn!(%error, "timeline persist failed");
        }
    }
}

/// `kind app \0 id \0`: every entry of one timeline starts with it.
pub fn prefix(kind: Kind, app: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(app.len() + id.len() + 3);
    key.push(kind as u8);
    key.extend_from_slice(app.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key
}
