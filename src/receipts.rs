//! The receipts feed: events about deliveries (sent, stored, acked, expired, dropped, and
//! what the app reported), fanned out to router subscribers.
//!
//! Publishing never waits: the feed is a bounded broadcast ring, and a subscriber that
//! falls behind loses the oldest events and is told how many, rather than holding up
//! delivery. With no subscriber, publishing costs one atomic load.
//!
//! Every event is also a step in the delivery timeline (`timeline`), which keeps it
//! after the fact; the feed only shows what happens while one listens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Notify, broadcast};

use crate::proto::router::{Event, ReceiptEvent};
use crate::session::DeviceKey;
use crate::timeline::Timeline;

/// Events a subscriber may fall behind by before it loses some.
pub const CAPACITY: usize = 16 * 1024;

#[derive(Debug)]
pub struct Receipts {
    tx: broadcast::Sender<Arc<ReceiptEvent>>,
    /// Set by a drain: subscribers end their streams.
    closed: AtomicBool,
    closing: Notify,
    /// Attached once at start; unset (in unit tests, benches) records nothing.
    timeline: OnceLock<Timeline>,
}

impl Default for Receipts {
    fn default() -> Self {
        Receipts {
            tx: broadcast::channel(CAPACITY).0,
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            timeline: OnceLock::new(),
        }
    }
}

impl Receipts {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ReceiptEvent>> {
        self.tx.subscribe()
    }

    /// Ends every subscriber's stream (drain).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
    }

    /// Resolves once [`Receipts::close`] was called.
    pub async fn closed(&self) {
        loop {
            let notified = self.closing.notified();
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// True when someone listens; callers skip building events otherwise.
    pub fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Makes `timeline` the durable record of every event from now on (once).
    pub fn attach(&self, timeline: Timeline) {
        let _ = self.timeline.set(timeline);
    }

    pub fn timeline(&self) -> &Timeline {
        static OFF: OnceLock<Timeline> = OnceLock::new();
        self.timeline.get().unwrap_or_else(|| OFF.get_or_init(Timeline::default))
    }

    pub fn emit(&self, event: Event, key: &DeviceKey, message_id: &str, seq: u64, reason: &str) {
        self.emit_on(event, key, message_id, seq, reason, 0);
    }

    /// [`Receipts::emit`] for an event on one connection (`session`, 0 when none).
    pub fn emit_on(
        &self,
        event: Event,
        key: &DeviceKey,
        message_id: &str,
        seq: u64,
        reason: &str,
        session: u64,
    ) {
        if let Some(timeline) = self.timeline.get() {
            crate::timeline::steps::delivery(
                timeline, event, key, message_id, seq, reason, session,
            );
        }
        self.publish(event, key, message_id, (seq, 0), reason);
    }

    /// An event about the app's broadcast `broadcast_seq` for one device. Subscribers
    /// get it; the timeline does not (a broadcast's steps would be one per device of
    /// the app), it records the broadcast once, when it is accepted.
    pub fn emit_broadcast(
        &self,
        event: Event,
        key: &DeviceKey,
        message_id: &str,
        broadcast_seq: u64,
        reason: &str,
    ) {
        self.publish(event, key, message_id, (0, broadcast_seq), reason);
    }

    fn publish(
        &self,
        event: Event,
        key: &DeviceKey,
        message_id: &str,
        (seq, broadcast_seq): (u64, u64),
        reason: &str,
    ) {
        if !self.wanted() {
            return;
        }
        let _ = self.tx.send(Arc::new(ReceiptEvent {
            event: event as i32,
            app_id: key.app.to_string(),
            device_id: key.device.to_string(),
            message_id: message_id.to_string(),
            seq,
            reason: reason.to_string(),
            at_ms: crate::clock::unix_ms(),
            lost: 0,
            broadcast_seq,
        }));
    }
}

/// Whether `event` matches a subscription to `app` and, if set, `device`.
pub fn matches(event: &ReceiptEvent, app: &str, device: &str) -> bool {
    event.app_id == app && (device.is_empty() || event.device_id == device)
}
