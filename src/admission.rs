//! Handshake admission: how many handshakes may be in progress at once, in all and from
//! one peer address, so that one peer opening sockets and sending nothing cannot hold
//! every slot until the handshake deadline. A socket past either bound is answered
//! `BUSY` with a retry delay.
//!
//! The bound is per IPv4 address and per IPv6 /64 (what one subscriber gets), not per
//! larger network: devices behind one carrier NAT share an address, and the default
//! leaves one an eighth of all slots, so that taking them all needs eight.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    /// TLS handshakes done only to say `BUSY`, at once: a sixteenth of the slots (at
    /// least 8). Each costs a full handshake, and under a flood of them the admitted
    /// handshakes starved and every BUSY handshake timed out; past it, refused TLS
    /// sockets are closed without a word (the device backs off as from any failure).
    farewells: Arc<Semaphore>,
    per_peer: usize,
    /// Handshakes in progress per peer ([`peer_of`]); a peer leaves the map with its last.
    peers: DashMap<IpAddr, usize>,
}

/// One admitted handshake; its slots are given back when it is dropped.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    peer: IpAddr,
}

/// Why a handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is taken.
    Full,
    /// This address holds its share of the slots.
    Peer,
}

impl Admission {
    pub fn new(max: usize, per_peer: usize) -> Arc<Admission> {
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(max)),
            farewells: Arc::new(Semaphore::new((max / 16).max(8))),
            per_peer,
            peers: DashMap::new(),
        })
    }

    /// A slot for a handshake from `peer`, or why there is none.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refused> {
        let peer = peer_of(peer);
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Refused::Full)?;
        let mut count = self.peers.entry(peer).or_insert(0);
        if *count >= self.per_peer {
            return Err(Refused::Peer);
        }
        *count += 1;
        drop(count);
        Ok(Permit { _slot: slot, admission: self.clone(), peer })
    }

    /// Leave to complete a TLS handshake only to refuse the connection, if there is room.
    pub fn farewell(&self) -> Option<OwnedSemaphorePermit> {
        self.farewells.clone().try_acquire_owned().ok()
    }

    /// Handshakes in progress from `peer`.
    pub fn from_peer(&self, peer: IpAddr) -> usize {
        self.peers.get(&peer_of(peer)).map_or(0, |n| *n)
    }

    /// Handshake slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// The peer an address counts as: itself for IPv4 (IPv4-mapped IPv6 included), its /64
/// for IPv6, since one subscriber is given a whole /64 to pick addresses from.
fn peer_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.peers.remove_if_mut(&self.peer, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_share_and_the_others_the_rest() {
        let admission = Admission::new(4, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::Peer);
        let _b1 = admission.admit(b).unwrap();
        let _b2 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refused::Full);
        drop(first);
        assert_eq!(admission.from_peer(a), 1);
        let _again = admission.admit(a).unwrap();
        assert_eq!(admission.available(), 0);
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_peer() {
        let admission = Admission::new(8, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _a = admission.admit(a).unwrap();
        let _b = admission.admit(b).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::Peer, "same /64");
        assert!(admission.admit(other).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _m = admission.admit(mapped).unwrap();
        assert_eq!(admission.from_peer("10.0.0.1".parse().unwrap()), 1);
    }

    #[test]
    fn an_address_leaves_the_map_with_its_last_handshake() {
        let admission = Admission::new(8, 8);
        let a: IpAddr = "::1".parse().unwrap();
        let permits: Vec<_> = (0..3).map(|_| admission.admit(a).unwrap()).collect();
        assert_eq!(admission.from_peer(a), 3);
        drop(permits);
        assert_eq!(admission.from_peer(a), 0);
        assert!(admission.peers.is_empty());
        assert_eq!(admission.available(), 8);
    }
}
