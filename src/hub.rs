//! The hub: the device registry, every device's mailbox and the session table, and the
//! operations that must see them together (connect, push, ack, disconnect).
//!
//! Lock order, everywhere: a device's registry entry, then the session table, then a
//! link's outbox. Holding the device entry while choosing the link and enqueueing is what
//! keeps a device's messages in sequence order across takeovers: a push either lands on
//! the old link before the takeover (and is then redelivered on the new one) or on the
//! new link after the replay.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;

use crate::close::CloseReason;
use crate::heartbeat::Heartbeats;
use crate::link::{Link, OutboundLimits, Sent};
use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::proto::device::{DeviceReport, Missed, Platform, ServerFrame, server_frame};
use crate::session::{DeviceKey, Session, SessionTable};

/// (app, user) -> the ids of devices bound to that user.
type UserIndex = DashMap<(Arc<str>, Arc<str>), HashSet<Arc<str>>>;

/// Shards per map: enough that two cores rarely meet on one lock.
const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub outbound: OutboundLimits,
    /// Messages in flight per link while a backlog is replayed.
    pub send_window: usize,
    /// Unacked messages kept per device.
    pub pending_max: usize,
}

/// What a device says about itself when it connects.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub platform: i32,
    pub app_version: String,
    pub user: Option<String>,
    pub report: Option<DeviceReport>,
    pub acked_seq: u64,
}

/// Everything this node knows about one device, online or not.
#[derive(Debug, Default)]
pub struct Device {
    pub platform: i32,
    pub app_version: Box<str>,
    pub user: Option<Arc<str>>,
    pub report: Option<Box<DeviceReport>>,
    /// When the device was last heard from while no session was live, Unix ms.
    pub last_seen_ms: i64,
    mailbox: Mailbox,
}

/// The outcome of a push for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent { seq: u64 },
    NotDelivered { reason: &'static str },
    UnknownDevice,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::NotDelivered { .. } => "not_delivered",
            Outcome::UnknownDevice => "unknown_device",
        }
    }
}

#[derive(Debug)]
pub struct Hub {
    pub sessions: SessionTable,
    pub heartbeats: Arc<Heartbeats>,
    devices: DashMap<DeviceKey, Device>,
    users: UserIndex,
    limits: HubLimits,
}

impl Hub {
    pub fn new(limits: HubLimits, heartbeats: Arc<Heartbeats>) -> Self {
        Hub {
            sessions: SessionTable::default(),
            heartbeats,
            devices: DashMap::with_shard_amount(SHARDS),
            users: DashMap::with_shard_amount(SHARDS),
            limits,
        }
    }

    /// Makes `session` the device's live session: records its profile, closes the session
    /// it replaces with `Replaced`, and hands the new link every unacked message.
    pub fn connect(&self, key: &DeviceKey, profile: Profile, session: Session) {
        let link = session.link.clone();
        let mut device = self.devices.entry(key.clone()).or_default();
        device.platform = profile.platform;
        device.app_version = profile.app_version.into();
        if let Some(report) = profile.report {
            device.report = Some(Box::new(report));
        }
        self.rebind(key, &mut device, profile.user.map(Arc::from));
        device.mailbox.resume_after(profile.acked_seq);
        device.mailbox.rewind();
        if let Some(old) = self.sessions.insert(key.clone(), session) {
            old.link.close(CloseReason::Replaced);
        }
        self.pump(&mut device, &link);
    }

    /// Ends session `session_id` of the device, unless a newer session replaced it.
    pub fn disconnect(&self, key: &DeviceKey, session_id: u64, now_unix_ms: i64) {
        if let Some(mut device) = self.devices.get_mut(key)
            && self.sessions.remove(key, session_id)
        {
            device.last_seen_ms = now_unix_ms;
        }
    }

    /// Delivers `message` to one device: straight to its link when nothing older is
    /// waiting, otherwise behind the backlog it is replaying.
    pub fn push(&self, key: &DeviceKey, message: &Arc<Message>) -> Outcome {
        let Some(mut device) = self.devices.get_mut(key) else {
            return Outcome::UnknownDevice;
        };
        // A closing link counts as gone: what it has not written is redelivered later.
        let Some(link) = self.sessions.link(key).filter(|l| !l.is_closing()) else {
            return Outcome::NotDelivered { reason: "offline" };
        };
        let backlog = device.mailbox.has_unsent();
        let (seq, dropped) = device.mailbox.add(message.clone(), self.limits.pending_max);
        count_dropped(dropped);
        if backlog {
            self.pump(&mut device, &link);
        } else {
            self.send_now(&mut device, &link);
        }
        Outcome::Sent { seq }
    }

    /// Releases acked messages and lets a replay continue.
    pub fn ack(&self, key: &DeviceKey, upto: u64, ids: &[String]) -> usize {
        let Some(mut device) = self.devices.get_mut(key) else {
            return 0;
        };
        let released = device.mailbox.ack(upto) + device.mailbox.ack_ids(ids);
        if let Some(link) = self.sessions.link(key) {
            self.pump(&mut device, &link);
        }
        released
    }

    /// Binds the device to `user` (or to none), keeping the user index in step.
    pub fn bind(&self, key: &DeviceKey, user: Option<&str>) {
        if let Some(mut device) = self.devices.get_mut(key) {
            self.rebind(key, &mut device, user.map(Arc::from));
        }
    }

    pub fn report(&self, key: &DeviceKey, report: DeviceReport) {
        if let Some(mut device) = self.devices.get_mut(key) {
            device.report = Some(Box::new(report));
        }
    }

    /// Closes the device's live session for `reason`; false when it has none.
    pub fn kick(&self, key: &DeviceKey, reason: CloseReason) -> bool {
        self.sessions
            .link(key)
            .is_some_and(|link| link.close(reason))
    }

    /// Devices of `app` bound to `user`, optionally of one platform only.
    pub fn user_devices(&self, app: &Arc<str>, user: &str, platform: Platform) -> Vec<DeviceKey> {
        let Some(ids) = self
            .users
            .get(&(app.clone(), Arc::from(user)))
            .map(|s| s.clone())
        else {
            return Vec::new();
        };
        ids.into_iter()
            .map(|device| DeviceKey {
                app: app.clone(),
                device,
            })
            .filter(|key| {
                platform == Platform::Unspecified
                    || self
                        .devices
                        .get(key)
                        .is_some_and(|d| d.platform == platform as i32)
            })
            .collect()
    }

    /// Reads the registry entry of a device, if this node has seen it.
    pub fn with_device<T>(&self, key: &DeviceKey, f: impl FnOnce(&Device) -> T) -> Option<T> {
        self.devices.get(key).map(|d| f(&d))
    }

    /// Unacked messages kept for a device.
    pub fn pending(&self, key: &DeviceKey) -> usize {
        self.devices.get(key).map(|d| d.mailbox.len()).unwrap_or(0)
    }

    pub fn outbound_limits(&self) -> OutboundLimits {
        self.limits.outbound
    }

    /// Converts a link's last-seen time to Unix milliseconds.
    pub fn last_seen_unix_ms(&self, link: &Link, now_unix_ms: i64) -> i64 {
        let ago = self.heartbeats.now_ms().saturating_sub(link.last_seen_ms());
        now_unix_ms - ago as i64
    }

    fn rebind(&self, key: &DeviceKey, device: &mut Device, user: Option<Arc<str>>) {
        if device.user == user {
            return;
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
    }

    /// Writes the message just added when nothing older waits: the live path, bounded by
    /// the outbound queue rather than by the send window.
    fn send_now(&self, device: &mut Device, link: &Link) {
        self.tell_missed(device, link);
        let mut expired = 0;
        if let Some(out) = device
            .mailbox
            .next(usize::MAX, crate::clock::unix_ms(), &mut expired)
        {
            self.write(link, out.message.frame(out.seq, out.redelivery));
        }
        count_expired(expired);
    }

    /// Hands the link as much of the backlog as the send window allows, after telling the
    /// device how many messages it missed, if any.
    fn pump(&self, device: &mut Device, link: &Link) {
        self.tell_missed(device, link);
        let now = crate::clock::unix_ms();
        let mut expired = 0;
        while let Some(out) = device
            .mailbox
            .next(self.limits.send_window, now, &mut expired)
        {
            if self.write(link, out.message.frame(out.seq, out.redelivery)) != Sent::Queued {
                break;
            }
        }
        count_expired(expired);
    }

    fn tell_missed(&self, device: &mut Device, link: &Link) {
        let count = device.mailbox.take_missed();
        if count > 0 {
            let missed = server_frame::Frame::Missed(Missed { count });
            self.write(
                link,
                crate::frame::encode(&ServerFrame {
                    frame: Some(missed),
                }),
            );
        }
    }

    fn write(&self, link: &Link, frame: bytes::Bytes) -> Sent {
        let sent = link.send(frame, self.limits.outbound);
        if sent == Sent::Overflow {
            metrics::counter!("longlink_slow_consumer_closes_total").increment(1);
        }
        sent
    }
}

fn count_dropped(n: usize) {
    if n > 0 {
        metrics::counter!("longlink_dropped_total", "reason" => "pending_cap").increment(n as u64);
    }
}

fn count_expired(n: usize) {
    if n > 0 {
        metrics::counter!("longlink_dropped_total", "reason" => "expired").increment(n as u64);
    }
}

#[cfg(test)]
mod tests;
