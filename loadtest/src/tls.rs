//! TLS for the device connections: the library's client configuration, with a session
//! store that counts how many handshakes offered a resumption ticket.
//!
//! Note: a ticket offered is counted as a resumed handshake; the server could still
//! refuse it and fall back to a full one (after a restart with a fresh ticket key, for
//! example), which this count cannot see.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;

use crate::plan::TlsPlan;
use crate::stats::Stats;

/// Tickets kept: the server sends two per handshake and each is used once, so a few
/// hundred keep a fast ramp resuming.
const TICKETS: usize = 512;

pub fn client_config(
    plan: &TlsPlan,
    stats: Arc<Stats>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let base = longlink::tls::client_config(plan.ca.as_deref(), plan.insecure)?;
    let mut config = (*base).clone();
    config.resumption = if plan.resume {
        Resumption::store(Arc::new(Counting {
            inner: ClientSessionMemoryCache::new(TICKETS),
            stats,
        }))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Counting {
    inner: ClientSessionMemoryCache,
    stats: Arc<Stats>,
}

impl ClientSessionStore for Counting {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(name)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(name, value)
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let session = self.inner.tls12_session(name);
        if session.is_some() {
            self.stats.tls_resumed.fetch_add(1, Relaxed);
        }
        session
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.inner.insert_tls13_ticket(name, value)
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let ticket = self.inner.take_tls13_ticket(name);
        if ticket.is_some() {
            self.stats.tls_resumed.fetch_add(1, Relaxed);
        }
        ticket
    }
}
