//! The hub: the device registry, with every device's mailbox and live session, and the
//! operations that must see them together (connect, push, ack, disconnect, broadcast),
//! each of which also records its change in the store.
//!
//! Lock order, everywhere: a device's registry entry, then a link's outbox (or the
//! broadcast log). Holding the device entry while choosing the link and enqueueing is what
//! keeps a device's messages in sequence order across takeovers: a push either lands on
//! the old link before the takeover (and is then redelivered on the new one) or on the
//! new link after the replay. Store writes are enqueued under the same entry, so they
//! reach the disk in the same order; waiting for them is the caller's business.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use dashmap::DashMap;

use crate::broadcast::Broadcasts;
use crate::budget::Budgets;
use crate::close::CloseReason;
use crate::heartbeat::Heartbeats;
use crate::link::{Link, OutboundLimits, Sent};
use crate::mailbox::{Mailbox, Outgoing, Removed};
use crate::message::Message;
use crate::proto::device::{DeviceReport, Missed, Platform, ServerFrame, server_frame};
use crate::proto::router::Event;
use crate::proto::store::{StoredDevice, StoredMessage};
use crate::receipts::Receipts;
use crate::session::{DeviceKey, Session, SessionCounts};
use crate::store::record::{self, device_key, message_key};
use crate::store::{Loaded, Space, Store};

/// (app, user) -> the ids of devices bound to that user.
type UserIndex = DashMap<(Arc<str>, Arc<str>), HashSet<Arc<str>>>;

/// Shards per map: enough that two cores rarely meet on one lock.
const SHARDS: usize = 64;

/// Distinct app versions interned at most; past it, versions get their own copy (so a
/// stream of made-up versions cannot grow the interner without bound).
const MAX_VERSIONS: usize = 4096;

/// Seqs reserved on disk at a time: the registry record is rewritten once per block.
const SEQ_BLOCK: u64 = 1024;

/// How far a restart moves a device's seqs (and an app's broadcast seqs) past what was
/// on disk, for each epoch since it was written. A frame goes to the device before the
/// store commits the reservation that covers its seq, so a crash can lose reservations
/// whose seqs a device already has: a million seqs is over a thousand lost blocks, far
/// more than one device can be handed between two commits. Seqs stay below the 2^48 a
/// Hello may report for 2^27 restarts.
pub const SEQ_JUMP: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub outbound: OutboundLimits,
    /// Messages in flight per link while a backlog is replayed.
    pub send_window: usize,
    /// Unacked messages kept per device.
    pub pending_max: usize,
    /// Broadcasts kept per app.
    pub broadcast_max: usize,
}

impl HubLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &crate::config::Config) -> HubLimits {
        let d = &config.device;
        HubLimits {
            outbound: OutboundLimits {
                max_frames: d.outbound_max_frames,
                max_bytes: d.outbound_max_bytes,
            },
            send_window: d.send_window,
            pending_max: d.pending_max,
            broadcast_max: config.delivery.broadcast_max,
        }
    }
}

/// What a device says about itself when it connects.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub platform: i32,
    pub app_version: String,
    pub user: Option<String>,
    pub report: Option<DeviceReport>,
    pub acked_seq: u64,
    /// The highest broadcast seq the app has processed.
    pub broadcast_cursor: u64,
}

/// Everything this node knows about one device, online or not.
#[derive(Debug, Default)]
pub struct Device {
    pub platform: i32,
    /// Interned: a fleet runs a handful of versions.
    pub app_version: Arc<str>,
    pub user: Option<Arc<str>>,
    pub report: Option<Box<DeviceReport>>,
    /// When the device was last heard from while no session was live, Unix ms.
    pub last_seen_ms: i64,
    /// Allocated when the device first gets a message: most connected devices are idle,
    /// and an inline mailbox would cost each of them 80 bytes.
    mailbox: Option<Box<Mailbox>>,
    /// The live session: a push finds it with the one lookup that also locks the device,
    /// and takeover is decided under that lock.
    live: Option<Session>,
    /// Where the device stands in its app's broadcasts.
    cursor: Cursor,
}

/// A device's position in its app's broadcast log.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    /// The app's last broadcast seq when the device was first seen: older broadcasts
    /// reach it only when they were sent for new devices too.
    floor: u64,
    /// Acked up to here.
    acked: u64,
    /// The current link has been taken through the log up to here (handed, or skipped
    /// as not for this device).
    scanned: u64,
    /// The highest broadcast written to the current link: what is in flight is between
    /// `acked` and here.
    written: u64,
    /// The highest broadcast written to an earlier link: resending up to here is a
    /// redelivery.
    handed: u64,
}

impl Device {
    /// The live session's link, unless it is closing (what a closing link has not
    /// written is redelivered later, so it counts as gone).
    fn open_link(&self) -> Option<Arc<Link>> {
        self.live.as_ref().map(|s| s.link.clone()).filter(|l| !l.is_closing())
    }

    /// Whether [`Device::open_link`] would give a link, without taking a reference.
    fn is_open(&self) -> bool {
        self.live.as_ref().is_some_and(|s| !s.link.is_closing())
    }

    /// The device's kept messages, if it ever had any.
    pub fn kept(&self) -> Option<&Mailbox> {
        self.mailbox.as_deref()
    }

    /// The device's mailbox, made on first use with its seqs above `base` (see
    /// [`Hub::seq_base`]).
    fn mailbox(&mut self, base: u64) -> &mut Mailbox {
        self.mailbox.get_or_insert_with(|| {
            let mut mailbox = Box::<Mailbox>::default();
            mailbox.raise_floor(base);
            mailbox
        })
    }

    fn record(&self, epoch: u32) -> StoredDevice {
        StoredDevice {
            platform: self.platform,
            app_version: self.app_version.to_string(),
            user_id: self.user.as_deref().unwrap_or_default().to_string(),
            report: self.report.as_deref().cloned(),
            last_seen_ms: self.last_seen_ms,
            seq_floor: self.mailbox.as_ref().map_or(0, |m| m.floor()),
            floor_epoch: epoch,
            broadcast_floor: self.cursor.floor,
            broadcast_acked: self.cursor.acked,
            missed: self.mailbox.as_ref().map_or(0, |m| m.missed()),
            broadcast_handed: self.cursor.handed.max(self.cursor.written),
        }
    }
}

/// The outcome of a push for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent { seq: u64 },
    Stored { seq: u64 },
    NotDelivered { reason: &'static str },
    UnknownDevice,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Stored { .. } => "stored",
            Outcome::NotDelivered { .. } => "not_delivered",
            Outcome::UnknownDevice => "unknown_device",
        }
    }
}

#[derive(Debug)]
pub struct Hub {
    pub sessions: SessionCounts,
    pub heartbeats: Arc<Heartbeats>,
    pub receipts: Receipts,
    pub broadcasts: Broadcasts,
    /// Allowances of devices whose last link ended with some spent.
    pub budgets: Budgets,
    /// Orders the writes of apps' highest broadcast seqs (see `persist_broadcast_seq`).
    seq_writes: parking_lot::Mutex<()>,
    /// Boxed: a slot holds the key and a pointer (40 bytes) rather than the whole device,
    /// so the table's empty slots (from an eighth up to over half of them, depending on
    /// where the count falls between doublings) cost little.
    devices: DashMap<DeviceKey, Box<Device>>,
    /// This start's epoch, set once by `restore` (0 until then, and for a new store).
    epoch: AtomicU32,
    users: UserIndex,
    versions: DashMap<Arc<str>, ()>,
    limits: HubLimits,
    store: Arc<Store>,
}

impl Hub {
    pub fn new(limits: HubLimits, heartbeats: Arc<Heartbeats>, store: Arc<Store>) -> Self {
        Hub {
            sessions: SessionCounts::default(),
            heartbeats,
            receipts: Receipts::default(),
            broadcasts: Broadcasts::default(),
            budgets: Budgets::default(),
            seq_writes: parking_lot::Mutex::new(()),
            devices: DashMap::with_shard_amount(SHARDS),
            epoch: AtomicU32::new(0),
            users: DashMap::with_shard_amount(SHARDS),
            versions: DashMap::new(),
            limits,
            store,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Rebuilds the registry and the mailboxes from what the store kept. Returns how
    /// many messages were restored.
    pub fn restore(&self, loaded: &mut Loaded) -> usize {
        self.epoch.store(loaded.epoch, Ordering::Relaxed);
        let broadcast_epochs = self.restore_broadcasts(loaded);
        let mut restored = 0;
        for ((app, id), kept) in std::mem::take(&mut loaded.devices) {
            let key = DeviceKey::new(&app, &id);
            let r = kept.record;
            let mut device = Device {
                platform: r.platform,
                app_version: self.intern(&r.app_version),
                report: r.report.map(Box::new),
                last_seen_ms: r.last_seen_ms,
                cursor: Cursor {
                    floor: r.broadcast_floor,
                    acked: r.broadcast_acked,
                    handed: r.broadcast_handed.max(r.broadcast_acked),
                    ..Cursor::default()
                },
                ..Device::default()
            };
            for (seq, stored) in kept.messages {
                match Message::from_body(&stored.body) {
                    Ok(message) => {
                        device.mailbox(0).restore(seq, Arc::new(message), stored.handed);
                        restored += 1;
                    }
                    Err(error) => {
                        loaded.corrupt += 1;
                        tracing::warn!(app, device = id, seq, %error, "corrupt message body skipped");
                    }
                }
            }
            if r.seq_floor > 0 || r.missed > 0 || device.mailbox.is_some() {
                // Past every seq the device may have had before, kept on disk or not
                // (see `SEQ_JUMP`). A device without a mailbox gets one at `seq_base`.
                let jumps = u64::from(loaded.epoch.saturating_sub(r.floor_epoch).max(1));
                let mailbox = device.mailbox(0);
                mailbox.raise_floor(r.seq_floor.max(mailbox.last_seq()) + jumps * SEQ_JUMP);
                mailbox.restore_missed(r.missed);
            }
            // A device acked up to here, so the app gave out at least this many.
            // Handed counts too: a device that got a TTL-0 broadcast (kept nowhere) and
            // reports it as processed must not see its seq given out again.
            self.broadcasts.raise(&app, r.broadcast_acked.max(r.broadcast_handed));
            let user = (!r.user_id.is_empty()).then(|| Arc::from(r.user_id.as_str()));
            self.rebind(&key, &mut device, user);
            self.devices.insert(key, Box::new(device));
        }
        self.jump_broadcasts(&broadcast_epochs);
        self.broadcasts.start_at(self.seq_base());
        restored
    }

    /// The epoch this start of the node runs in (see `StoredEpoch`).
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// Where the seqs of a device or app that has none kept start in this epoch: past
    /// any a crash of an earlier epoch could have given out unrecorded.
    pub fn seq_base(&self) -> u64 {
        u64::from(self.epoch()) * SEQ_JUMP
    }

    /// Makes `session` the device's live session: records its profile, closes the session
    /// it replaces with `Replaced`, and hands the new link every unacked message.
    pub fn connect(&self, key: &DeviceKey, profile: Profile, session: Session) {
        let link = session.link.clone();
        let mut new = false;
        let mut device = self.devices.entry(key.clone()).or_insert_with(|| {
            new = true;
            let floor = self.broadcasts.last_seq(&key.app);
            Box::new(Device { cursor: Cursor { floor, ..Cursor::default() }, ..Device::default() })
        });
        // Written only when something changed: a reconnect storm after a restart must not
        // become a storm of identical registry writes.
        let mut changed = new || device.platform != profile.platform;
        device.platform = profile.platform;
        if *device.app_version != *profile.app_version {
            device.app_version = self.intern(&profile.app_version);
            changed = true;
        }
        if let Some(report) = profile.report
            && device.report.as_deref() != Some(&report)
        {
            device.report = Some(Box::new(report));
            changed = true;
        }
        changed |= self.rebind(key, &mut device, profile.user.map(Arc::from));
        if profile.acked_seq > 0 || device.mailbox.is_some() {
            let mailbox = device.mailbox(self.seq_base());
            let released = mailbox.resume_after(profile.acked_seq);
            self.release(key, &released, Event::Acked, "");
            // TTL-0 messages the old link did not get acked are lost with it. A link that
            // closed by itself already gave them up (`abandon`): this one is being replaced.
            let lost = mailbox.rewind();
            self.release(key, &lost, Event::Dropped, "replaced");
            count_dropped("replaced", lost.len());
        }
        if changed {
            self.persist_device(key, &device);
        }
        self.resume_broadcasts(key, &mut device, profile.broadcast_cursor);
        let transport = session.transport;
        match device.live.replace(session) {
            Some(old) => {
                old.link.close(CloseReason::Replaced);
                link.carry_budget(old.link.budget());
                self.sessions.moved(&key.app, old.transport, transport);
            }
            None => {
                link.carry_budget(self.budgets.take(key));
                self.sessions.opened(&key.app, transport);
            }
        }
        self.pump(key, &mut device, &link);
        self.pump_broadcasts(key, &mut device, &link, Occasion::Connect);
    }

    /// The device's costly-work allowance ([`crate::budget`]): its live link's, or the one
    /// kept since its last link ended.
    pub fn budget(&self, key: &DeviceKey) -> u64 {
        let live = self.devices.get(key).and_then(|d| d.live.as_ref().map(|s| s.link.budget()));
        live.unwrap_or_else(|| self.budgets.get(key))
    }

    /// Ends session `session_id` of the device, unless a newer session replaced it.
    pub fn disconnect(&self, key: &DeviceKey, session_id: u64, now_unix_ms: i64) {
        if let Some(mut device) = self.devices.get_mut(key)
            && let Some(ended) = device.live.take_if(|s| s.id() == session_id)
        {
            self.sessions.closed(&key.app, ended.transport);
            self.budgets.keep(key, ended.link.budget(), self.heartbeats.now_ms());
            device.last_seen_ms = now_unix_ms;
            self.persist_device(key, &device);
        }
    }

    /// Delivers `message` to one device: straight to its link when nothing older is
    /// waiting, behind the backlog when there is one, into the store when it is offline
    /// (unless its TTL is 0). The store write is enqueued, not awaited.
    pub fn push(&self, key: &DeviceKey, message: &Arc<Message>) -> Outcome {
        let Some(mut device) = self.devices.get_mut(key) else {
            return Outcome::UnknownDevice;
        };
        let link = device.open_link();
        if link.is_none() && message.ephemeral {
            return Outcome::NotDelivered { reason: "offline" };
        }
        let mailbox = device.mailbox(self.seq_base());
        let backlog = mailbox.has_unsent();
        let added = mailbox.add(message.clone(), self.limits.pending_max);
        let reserved = added.seq > mailbox.floor();
        if reserved {
            mailbox.reserve(added.seq + SEQ_BLOCK);
        }
        self.release(key, &added.dropped, Event::Dropped, "pending_cap");
        self.release(key, &added.collapsed, Event::Dropped, "collapsed");
        count_dropped("pending_cap", added.dropped.len());
        count_dropped("collapsed", added.collapsed.len());
        // The record holds the seq floor and the missed count: a restart must neither
        // reuse a seq nor forget to tell the device what it missed.
        if reserved || !added.dropped.is_empty() {
            self.persist_device(key, &device);
        }
        if !message.ephemeral {
            let handed = link.is_some() && !backlog;
            self.persist_message(key, added.seq, message, handed);
        }
        let Some(link) = link else {
            self.receipts.emit(Event::Stored, key, &message.id, added.seq, "");
            return Outcome::Stored { seq: added.seq };
        };
        if backlog {
            self.pump(key, &mut device, &link);
        } else {
            self.send_now(key, &mut device, &link);
        }
        Outcome::Sent { seq: added.seq }
    }

    /// What [`Hub::push`] would do with `message` for this device now, changing nothing;
    /// with "pending_cap" when keeping it would drop the device's oldest message.
    pub fn preview(&self, key: &DeviceKey, message: &Message) -> (Outcome, &'static str) {
        let Some(device) = self.devices.get(key) else { return (Outcome::UnknownDevice, "") };
        let live = device.open_link().is_some();
        if !live && message.ephemeral {
            return (Outcome::NotDelivered { reason: "offline" }, "");
        }
        let (seq, kept) = match device.mailbox.as_deref() {
            Some(m) => (m.last_seq() + 1, m.len() - m.collapsible(message)),
            None => (self.seq_base() + 1, 0),
        };
        let note = if kept >= self.limits.pending_max { "pending_cap" } else { "" };
        if live { (Outcome::Sent { seq }, note) } else { (Outcome::Stored { seq }, note) }
    }

    /// Drops the TTL-0 messages of session `session_id`, which closed for `reason`: they
    /// were for that connection only. Nothing when a newer session replaced it.
    pub fn abandon(&self, key: &DeviceKey, session_id: u64, reason: &'static str) {
        let Some(mut device) = self.devices.get_mut(key) else { return };
        if device.live.as_ref().is_none_or(|s| s.id() != session_id) {
            return;
        }
        let Some(mailbox) = device.mailbox.as_mut() else { return };
        let lost = mailbox.drop_ephemeral();
        self.release(key, &lost, Event::Dropped, reason);
        count_dropped(reason, lost.len());
    }

    /// Releases acked messages and broadcasts and lets a replay continue. Returns how
    /// many messages (not broadcasts) it released.
    pub fn ack(&self, key: &DeviceKey, upto: u64, ids: &[String], broadcast_cursor: u64) -> usize {
        let Some(mut device) = self.devices.get_mut(key) else { return 0 };
        let live = device.live.as_ref().map(|s| s.link.clone());
        if broadcast_cursor > device.cursor.acked {
            self.ack_broadcasts(key, &mut device, broadcast_cursor);
        }
        // Also after an ack of messages only: a catch-up that stopped on a full queue
        // goes on once the device has read some of it.
        if let Some(link) = &live
            && device.cursor.scanned < self.broadcasts.last_seq(&key.app)
        {
            self.pump_broadcasts(key, &mut device, link, Occasion::Ack);
        }
        let Some(mailbox) = device.mailbox.as_mut() else { return 0 };
        let mut released = mailbox.ack(upto);
        released.extend(mailbox.ack_ids(ids));
        self.release(key, &released, Event::Acked, "");
        if let Some(link) = &live {
            self.pump(key, &mut device, link);
        }
        released.len()
    }

    /// Binds the device to `user` (or to none), keeping the user index in step.
    pub fn bind(&self, key: &DeviceKey, user: Option<&str>) {
        if let Some(mut device) = self.devices.get_mut(key)
            && device.user.as_deref() != user
        {
            self.rebind(key, &mut device, user.map(Arc::from));
            self.persist_device(key, &device);
        }
    }

    /// Records a changed device report; an unchanged one costs no write.
    pub fn report(&self, key: &DeviceKey, report: DeviceReport) {
        if let Some(mut device) = self.devices.get_mut(key)
            && device.report.as_deref() != Some(&report)
        {
            device.report = Some(Box::new(report));
            self.persist_device(key, &device);
        }
    }

    /// Releases every expired message of every device, and expired broadcasts; returns
    /// how many device messages.
    pub fn purge_expired(&self, now_ms: i64) -> usize {
        self.purge_broadcasts(now_ms);
        let mut purged = 0;
        for mut entry in self.devices.iter_mut() {
            let Some(mailbox) = entry.mailbox.as_mut() else { continue };
            let expired = mailbox.purge(now_ms);
            if !expired.is_empty() {
                self.release(entry.key(), &expired, Event::Expired, "ttl");
                purged += expired.len();
            }
        }
        count_dropped("expired", purged);
        purged
    }

    /// Closes the device's live session for `reason`; false when it has none.
    pub fn kick(&self, key: &DeviceKey, reason: CloseReason) -> bool {
        self.link(key).is_some_and(|link| link.close(reason))
    }

    /// The device's live session, if it has one.
    pub fn session(&self, key: &DeviceKey) -> Option<Session> {
        self.devices.get(key).and_then(|d| d.live.clone())
    }

    /// The device's live link, if it has one.
    pub fn link(&self, key: &DeviceKey) -> Option<Arc<Link>> {
        self.devices.get(key).and_then(|d| d.live.as_ref().map(|s| s.link.clone()))
    }

    /// Every live link, for drain. A snapshot: sessions may come and go meanwhile.
    pub fn links(&self) -> Vec<Arc<Link>> {
        let live = self.devices.iter().filter_map(|d| d.live.as_ref().map(|s| s.link.clone()));
        live.collect()
    }

    /// Devices of `app` bound to `user`, optionally of one platform only.
    pub fn user_devices(&self, app: &Arc<str>, user: &str, platform: Platform) -> Vec<DeviceKey> {
        let Some(ids) = self.users.get(&(app.clone(), Arc::from(user))).map(|s| s.clone()) else {
            return Vec::new();
        };
        ids.into_iter()
            .map(|device| DeviceKey { app: app.clone(), device })
            .filter(|key| {
                platform == Platform::Unspecified
                    || self.devices.get(key).is_some_and(|d| d.platform == platform as i32)
            })
            .collect()
    }

    /// Reads the registry entry of a device, if this node has seen it.
    pub fn with_device<T>(&self, key: &DeviceKey, f: impl FnOnce(&Device) -> T) -> Option<T> {
        self.devices.get(key).map(|d| f(&d))
    }

    /// Unacked messages kept for a device.
    pub fn pending(&self, key: &DeviceKey) -> usize {
        self.devices.get(key).and_then(|d| d.mailbox.as_ref().map(|m| m.len())).unwrap_or(0)
    }

    pub fn outbound_limits(&self) -> OutboundLimits {
        self.limits.outbound
    }

    /// Converts a link's last-seen time to Unix milliseconds.
    pub fn last_seen_unix_ms(&self, link: &Link, now_unix_ms: i64) -> i64 {
        let ago = self.heartbeats.now_ms().saturating_sub(link.last_seen_ms());
        now_unix_ms - ago as i64
    }

    fn intern(&self, version: &str) -> Arc<str> {
        if let Some(known) = self.versions.get(version) {
            return known.key().clone();
        }
        let version: Arc<str> = version.into();
        if self.versions.len() < MAX_VERSIONS {
            self.versions.insert(version.clone(), ());
        }
        version
    }

    /// Returns whether the binding changed.
    fn rebind(&self, key: &DeviceKey, device: &mut Device, user: Option<Arc<str>>) -> bool {
        if device.user == user {
            return false;
        }
        if let Some(old) = device.user.take() {
            let index = (key.app.clone(), old);
            self.users.remove_if_mut(&index, |_, ids| {
                ids.remove(&key.device);
                ids.is_empty()
            });
        }
        if let Some(new) = &user {
            self.users
                .entry((key.app.clone(), new.clone()))
                .or_default()
                .insert(key.device.clone());
        }
        device.user = user;
        true
    }

    /// Writes the message just added when nothing older waits: the live path, bounded by
    /// the outbound queue rather than by the send window.
    fn send_now(&self, key: &DeviceKey, device: &mut Device, link: &Link) {
        self.tell_missed(device, link);
        let mut expired = Vec::new();
        let now = crate::clock::unix_ms();
        if let Some(out) = device.mailbox(self.seq_base()).next(usize::MAX, now, &mut expired) {
            self.hand(key, link, &out, false);
        }
        self.expire(key, &expired);
    }

    /// Hands the link as much of the backlog as the send window allows, after telling the
    /// device how many messages it missed, if any.
    fn pump(&self, key: &DeviceKey, device: &mut Device, link: &Link) {
        if device.mailbox.is_none() {
            return;
        }
        self.tell_missed(device, link);
        let now = crate::clock::unix_ms();
        let mut expired = Vec::new();
        let base = self.seq_base();
        while let Some(out) = device.mailbox(base).next(self.limits.send_window, now, &mut expired)
        {
            // With nothing else of the replay in flight no ack is coming to go on with it:
            // this one goes out as a live frame would (the queue may be half full of
            // Pongs or broadcasts), or the replay would stall for good.
            let replay = device.mailbox(base).in_flight() > 1;
            match self.hand(key, link, &out, replay) {
                Sent::Queued if !out.redelivery && !out.message.ephemeral => {
                    // Kept as not handed yet: from now on, resending it is a redelivery,
                    // after a restart too.
                    self.persist_handed(key, out.seq, &out.message);
                    continue;
                }
                Sent::Queued => continue,
                Sent::Full => device.mailbox(base).unsend(&out),
                Sent::Overflow | Sent::Closing => {}
            }
            break;
        }
        self.expire(key, &expired);
    }

    fn tell_missed(&self, device: &mut Device, link: &Link) {
        let Some(mailbox) = device.mailbox.as_mut() else { return };
        let count = mailbox.take_missed();
        if count > 0 {
            let missed = server_frame::Frame::Missed(Missed { count });
            self.write(link, crate::frame::encode(&ServerFrame { frame: Some(missed) }));
        }
    }

    /// Queues one message on the link (as part of a replay: see [`Link::offer`]) and
    /// tells subscribers it was sent.
    fn hand(&self, key: &DeviceKey, link: &Link, out: &Outgoing, replay: bool) -> Sent {
        let frame = out.message.frame(out.seq, out.redelivery);
        let sent =
            if replay { link.offer(frame, self.limits.outbound) } else { self.write(link, frame) };
        if sent == Sent::Queued {
            let reason = if out.redelivery { "redelivery" } else { "" };
            self.receipts.emit_on(
                Event::Sent,
                key,
                &out.message.id,
                out.seq,
                reason,
                link.session_id,
            );
        }
        sent
    }

    fn write(&self, link: &Link, frame: bytes::Bytes) -> Sent {
        let sent = link.send(frame, self.limits.outbound);
        if sent == Sent::Overflow {
            metrics::counter!("longlink_slow_consumer_closes_total").increment(1);
        }
        sent
    }

    fn expire(&self, key: &DeviceKey, expired: &[Removed]) {
        self.release(key, expired, Event::Expired, "ttl");
        count_dropped("expired", expired.len());
    }

    fn persist_device(&self, key: &DeviceKey, device: &Device) {
        let value = record::encode(&device.record(self.epoch()));
        self.store.put(Space::Devices, device_key(&key.app, &key.device), value);
    }

    fn persist_message(&self, key: &DeviceKey, seq: u64, message: &Message, handed: bool) {
        let k = message_key(&key.app, &key.device, seq);
        self.store.put(Space::Messages, k, message_record(message, handed));
    }

    /// Rewrites a kept message as handed: resending it is a redelivery from now on.
    fn persist_handed(&self, key: &DeviceKey, seq: u64, message: &Message) {
        let k = message_key(&key.app, &key.device, seq);
        self.store.rewrite(Space::Messages, k, message_record(message, true));
    }

    /// Deletes messages that left the mailbox from the store and tells subscribers why.
    fn release(&self, key: &DeviceKey, removed: &[Removed], event: Event, reason: &str) {
        if event == Event::Acked {
            crate::telemetry::delivered(removed);
        }
        for r in removed {
            if !r.message.ephemeral {
                self.store.delete(Space::Messages, message_key(&key.app, &key.device, r.seq));
            }
            self.receipts.emit(event, key, &r.message.id, r.seq, reason);
        }
    }
}

fn message_record(message: &Message, handed: bool) -> Vec<u8> {
    let stored = StoredMessage {
        body: message.body().to_vec(),
        expires_at_ms: message.expires_at_ms.unwrap_or(0),
        handed,
    };
    record::encode(&stored)
}

fn count_dropped(reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("longlink_dropped_total", "reason" => reason).increment(n as u64);
    }
}

mod fanout;
pub use fanout::Fanout;
use fanout::Occasion;
#[cfg(test)]
mod tests;
