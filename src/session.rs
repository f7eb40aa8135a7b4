//! Sessions: what identifies a device (its key), an authenticated live connection (its
//! session), and how many are live per app.
//!
//! A device's live session is kept in its registry entry in the hub, so that a push
//! finds the device and its link with one lookup, and takeover is decided under the
//! same lock: connecting replaces the session (the caller closes the old link with
//! `Replaced`), and ending a session succeeds only for the session id that is live, so a
//! dying old connection can never remove or disturb the session that replaced it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;

use crate::link::Link;

/// Identifies a device: app id and device id. Both are shared, so cloning a key is two
/// reference-count increments.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceKey {
    pub app: Arc<str>,
    pub device: Arc<str>,
}

impl DeviceKey {
    pub fn new(app: &str, device: &str) -> Self {
        DeviceKey { app: app.into(), device: device.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// An authenticated device's live connection.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: u64,
    pub link: Arc<Link>,
    pub transport: Transport,
    /// When the session was established, Unix milliseconds.
    pub since_ms: i64,
    pub heartbeat_secs: u32,
}

/// How many sessions are live, in all and per app. The sessions themselves live in the
/// hub's registry, each in its device's entry.
#[derive(Debug, Default)]
pub struct SessionCounts {
    total: AtomicI64,
    /// Live sessions per app id, with the app's gauge (looked up once, not per change).
    online: DashMap<Arc<str>, (AtomicI64, metrics::Gauge)>,
}

impl SessionCounts {
    /// Live sessions of `app`.
    pub fn online(&self, app: &str) -> i64 {
        self.online.get(app).map(|n| n.0.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn opened(&self, app: &Arc<str>) {
        self.count(app, 1);
    }

    pub(crate) fn closed(&self, app: &Arc<str>) {
        self.count(app, -1);
    }

    fn count(&self, app: &Arc<str>, delta: i64) {
        self.total.fetch_add(delta, Ordering::Relaxed);
        let update = |(n, gauge): &(AtomicI64, metrics::Gauge)| {
            let total = n.fetch_add(delta, Ordering::Relaxed) + delta;
            gauge.set(total as f64);
        };
        match self.online.get(app.as_ref()) {
            Some(entry) => update(&entry),
            None => {
                let gauge = metrics::gauge!("longlink_sessions", "app" => app.to_string());
                update(&self.online.entry(app.clone()).or_insert((AtomicI64::new(0), gauge)))
            }
        }
    }
}
