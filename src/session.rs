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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Its id is the link's (`Link::session_id`).
    pub link: Arc<Link>,
    pub transport: Transport,
    /// When the session was established, Unix milliseconds.
    pub since_ms: i64,
    pub heartbeat_secs: u32,
}

impl Session {
    pub fn id(&self) -> u64 {
        self.link.session_id
    }
}

/// How many sessions are live, per app and transport (and so in all). The sessions themselves
/// live in the hub's registry, each in its device's entry.
#[derive(Debug, Default)]
pub struct SessionCounts {
    /// Per app: live sessions over TCP and over TLS, each with its gauge (looked up
    /// once per app, not per change).
    online: DashMap<Arc<str>, [(AtomicI64, metrics::Gauge); 2]>,
}

impl SessionCounts {
    /// Live sessions of `app`, over every transport.
    pub fn online(&self, app: &str) -> i64 {
        self.online.get(app).map_or(0, |n| live(&n))
    }

    /// Live sessions per app and transport, for every app that has had one.
    pub fn counts(&self) -> Vec<(Arc<str>, Transport, i64)> {
        let mut counts = Vec::new();
        for entry in self.online.iter() {
            for transport in [Transport::Tcp, Transport::Tls] {
                let n = entry.value()[transport as usize].0.load(Ordering::Relaxed);
                counts.push((entry.key().clone(), transport, n));
            }
        }
        counts.sort_by(|a, b| (&a.0, a.1.label()).cmp(&(&b.0, b.1.label())));
        counts
    }

    pub fn len(&self) -> usize {
        self.online.iter().map(|n| live(&n)).sum::<i64>().max(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn opened(&self, app: &Arc<str>, transport: Transport) {
        self.count(app, transport, 1);
    }

    pub(crate) fn closed(&self, app: &Arc<str>, transport: Transport) {
        self.count(app, transport, -1);
    }

    /// A takeover on another transport: one session ends, one begins.
    pub(crate) fn moved(&self, app: &Arc<str>, from: Transport, to: Transport) {
        if from != to {
            self.count(app, from, -1);
            self.count(app, to, 1);
        }
    }

    fn count(&self, app: &Arc<str>, transport: Transport, delta: i64) {
        // The gauge moves by the same delta rather than being set to a total read a
        // moment earlier: two racing updates could otherwise leave the older total.
        let update = |counts: &[(AtomicI64, metrics::Gauge); 2]| {
            let (n, gauge) = &counts[transport as usize];
            n.fetch_add(delta, Ordering::Relaxed);
            gauge.increment(delta as f64);
        };
        match self.online.get(app.as_ref()) {
            Some(entry) => update(&entry),
            None => {
                let gauge = |t: Transport| {
                    let labels = [("app", app.to_string()), ("transport", t.label().to_string())];
                    (AtomicI64::new(0), metrics::gauge!("longlink_sessions", &labels))
                };
                let fresh = [gauge(Transport::Tcp), gauge(Transport::Tls)];
                update(&self.online.entry(app.clone()).or_insert(fresh))
            }
        }
    }
}

/// Live sessions of one app, both transports.
fn live(counts: &[(AtomicI64, metrics::Gauge); 2]) -> i64 {
    counts.iter().map(|(n, _)| n.load(Ordering::Relaxed)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_sessions_across_transports() {
        let counts = SessionCounts::default();
        let app: Arc<str> = "a".into();
        counts.opened(&app, Transport::Tcp);
        counts.moved(&app, Transport::Tcp, Transport::Tls);
        let per: Vec<_> = counts.counts().into_iter().map(|(_, t, n)| (t, n)).collect();
        assert_eq!(per, vec![(Transport::Tcp, 0), (Transport::Tls, 1)]);
        assert_eq!((counts.online("a"), counts.len()), (1, 1));
        counts.closed(&app, Transport::Tls);
        assert_eq!((counts.online("a"), counts.len(), counts.online("b")), (0, 0, 0));
    }
}
