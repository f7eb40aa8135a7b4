//! The session table: every authenticated, live device connection of this node, keyed
//! by (app, device), with a count of live sessions per app.
//!
//! Takeover is decided here and only here. Inserting a session for a key that already has
//! one returns the old session (whose link the caller closes with `Replaced`); removing
//! a session succeeds only for the session id that is in the table, so a dying old
//! connection can never remove or disturb the session that replaced it.

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
    pub id: u64,
    pub link: Arc<Link>,
    pub transport: Transport,
    /// When the session was established, Unix milliseconds.
    pub since_ms: i64,
    pub heartbeat_secs: u32,
}

#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: DashMap<DeviceKey, Session>,
    /// Live sessions per app id and transport, with their gauge (looked up once, not per
    /// change).
    online: DashMap<(Arc<str>, Transport), (AtomicI64, metrics::Gauge)>,
}

impl SessionTable {
    /// Makes `session` the live session of `key`; returns the one it replaced.
    pub fn insert(&self, key: DeviceKey, session: Session) -> Option<Session> {
        let (app, transport) = (key.app.clone(), session.transport);
        let old = self.sessions.insert(key, session);
        match &old {
            None => self.count(&app, transport, 1),
            Some(old) if old.transport != transport => {
                self.count(&app, old.transport, -1);
                self.count(&app, transport, 1);
            }
            Some(_) => {}
        }
        old
    }

    /// Removes the session of `key` if, and only if, it is session `id`.
    pub fn remove(&self, key: &DeviceKey, id: u64) -> bool {
        let removed = self.sessions.remove_if(key, |_, s| s.id == id);
        if let Some((_, session)) = &removed {
            self.count(&key.app, session.transport, -1);
        }
        removed.is_some()
    }

    pub fn get(&self, key: &DeviceKey) -> Option<Session> {
        self.sessions.get(key).map(|s| s.clone())
    }

    pub fn link(&self, key: &DeviceKey) -> Option<Arc<Link>> {
        self.sessions.get(key).map(|s| s.link.clone())
    }

    /// Live sessions of `app`, over every transport.
    pub fn online(&self, app: &str) -> i64 {
        [Transport::Tcp, Transport::Tls]
            .into_iter()
            .filter_map(|t| self.online.get(&(Arc::from(app), t)))
            .map(|n| n.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Live sessions per app and transport, for every pair that has had one.
    pub fn counts(&self) -> Vec<(Arc<str>, Transport, i64)> {
        let mut counts: Vec<_> = self
            .online
            .iter()
            .map(|e| (e.key().0.clone(), e.key().1, e.value().0.load(Ordering::Relaxed)))
            .collect();
        counts.sort_by(|a, b| (&a.0, a.1.label()).cmp(&(&b.0, b.1.label())));
        counts
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every live link, for drain. A snapshot: sessions may come and go meanwhile.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.sessions.iter().map(|s| s.link.clone()).collect()
    }

    fn count(&self, app: &Arc<str>, transport: Transport, delta: i64) {
        let update = |(n, gauge): &(AtomicI64, metrics::Gauge)| {
            let total = n.fetch_add(delta, Ordering::Relaxed) + delta;
            gauge.set(total as f64);
        };
        let key = (app.clone(), transport);
        match self.online.get(&key) {
            Some(entry) => update(&entry),
            None => {
                let gauge = metrics::gauge!(
                    "longlink_sessions",
                    "app" => app.to_string(),
                    "transport" => transport.label()
                );
                update(&self.online.entry(key).or_insert((AtomicI64::new(0), gauge)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64) -> Session {
        Session {
            id,
            link: Arc::new(Link::new(id, 1000, 0)),
            transport: Transport::Tcp,
            since_ms: 0,
            heartbeat_secs: 30,
        }
    }

    #[test]
    fn stale_removal_never_touches_the_replacing_session() {
        let table = SessionTable::default();
        let key = DeviceKey::new("a", "d");
        assert!(table.insert(key.clone(), session(1)).is_none());
        let old = table.insert(key.clone(), session(2)).expect("replaced");
        assert_eq!(old.id, 1);
        assert!(!table.remove(&key, 1));
        assert_eq!(table.get(&key).map(|s| s.id), Some(2));
        assert_eq!(table.online("a"), 1);
        assert!(table.remove(&key, 2));
        assert_eq!(table.online("a"), 0);
    }

    /// A device that reconnects over TLS after TCP moves from one count to the other.
    #[test]
    fn a_takeover_on_another_transport_moves_the_count() {
        let table = SessionTable::default();
        let key = DeviceKey::new("a", "d");
        table.insert(key.clone(), session(1));
        let tls = Session { transport: Transport::Tls, ..session(2) };
        table.insert(key.clone(), tls);
        let counts: Vec<_> = table.counts().into_iter().map(|(_, t, n)| (t, n)).collect();
        assert_eq!(counts, vec![(Transport::Tcp, 0), (Transport::Tls, 1)]);
        assert!(table.remove(&key, 2));
        assert_eq!(table.online("a"), 0);
    }

    /// Many threads replace and remove sessions of one key in every interleaving they
    /// manage; the count per app must always equal what the table holds.
    #[test]
    fn racing_takeovers_keep_the_table_and_counts_consistent() {
        let table = Arc::new(SessionTable::default());
        let key = DeviceKey::new("a", "d");
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (table, key) = (table.clone(), key.clone());
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        let id = t * 1_000_000 + i + 1;
                        if let Some(old) = table.insert(key.clone(), session(id)) {
                            assert_ne!(old.id, id);
                            assert!(!table.remove(&key, old.id), "old id removed twice");
                        }
                        if i % 3 == 0 {
                            table.remove(&key, id);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(table.online("a"), table.len() as i64);
    }
}
