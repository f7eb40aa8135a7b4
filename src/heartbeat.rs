//! Heartbeat deadlines for every connection of the node, in one coarse timer wheel.
//!
//! A connection does not own a timer. It stores the time it was last heard from in its
//! [`Link`] (one relaxed atomic store per read), and the wheel holds one weak pointer per
//! connection in the bucket of its deadline. One task ticks every [`TICK_MS`]; for each
//! link in a due bucket it either closes it (silent past its limit) or moves it to the
//! bucket of its new deadline. A link is therefore looked at about once per silence
//! limit, however often it pings, and a million idle connections cost a million weak
//! pointers and four wake-ups a second for the whole node.
//!
//! A link is closed at most one tick after its deadline. The same visit closes a session
//! whose device token has expired, so an expired token outlives its `exp` by at most one
//! silence limit.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::close::CloseReason;
use crate::link::Link;

/// Granularity of the wheel, in milliseconds.
pub const TICK_MS: u64 = 250;

#[derive(Debug)]
pub struct Heartbeats {
    epoch: Instant,
    /// Bucket number (deadline / TICK_MS, rounded up) -> links due then.
    wheel: Mutex<BTreeMap<u64, Vec<Weak<Link>>>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats { epoch: Instant::now(), wheel: Mutex::new(BTreeMap::new()) }
    }
}

impl Heartbeats {
    /// Milliseconds since the wheel was created, on tokio's clock (pausable in tests).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Starts watching `link` from its last-seen time.
    pub fn watch(&self, link: &Arc<Link>) {
        let due = link.last_seen_ms() + link.silence_limit_ms();
        self.wheel.lock().entry(bucket(due)).or_default().push(Arc::downgrade(link));
    }

    /// Examines every bucket due by `now_ms`: closes the links silent past their limit,
    /// re-files the others. Returns how many links it closed.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let due = self.take_due(now_ms);
        let mut closed = 0;
        let mut refile = Vec::new();
        for weak in due {
            let Some(link) = weak.upgrade() else { continue };
            if link.is_closing() {
                continue;
            }
            let deadline = link.last_seen_ms() + link.silence_limit_ms();
            if deadline <= now_ms {
                if link.close(CloseReason::HeartbeatTimeout) {
                    closed += 1;
                }
            } else if link.token_expired(crate::clock::unix_secs()) {
                link.close(CloseReason::TokenExpired);
            } else {
                refile.push((bucket(deadline), weak));
            }
        }
        if !refile.is_empty() {
            let mut wheel = self.wheel.lock();
            for (at, weak) in refile {
                wheel.entry(at).or_default().push(weak);
            }
        }
        closed
    }

    fn take_due(&self, now_ms: u64) -> Vec<Weak<Link>> {
        let mut wheel = self.wheel.lock();
        let later = wheel.split_off(&(now_ms / TICK_MS + 1));
        let due = std::mem::replace(&mut *wheel, later);
        due.into_values().flatten().collect()
    }

    /// Links currently filed in the wheel (including ones whose connection has ended and
    /// that the next sweep of their bucket will discard).
    pub fn watched(&self) -> usize {
        self.wheel.lock().values().map(Vec::len).sum()
    }

    /// Ticks until the returned future is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let closed = self.sweep(self.now_ms());
            if closed > 0 {
                metrics::counter!("longlink_heartbeat_timeouts_total").increment(closed as u64);
            }
        }
    }
}

fn bucket(deadline_ms: u64) -> u64 {
    deadline_ms.div_ceil(TICK_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(limit: u64, seen: u64) -> Arc<Link> {
        Arc::new(Link::new(1, limit, seen))
    }

    #[test]
    fn silent_link_closes_within_one_tick_of_its_deadline() {
        let wheel = Heartbeats::default();
        let l = link(1500, 0);
        wheel.watch(&l);
        let mut now = 0;
        while !l.is_closing() {
            now += TICK_MS;
            wheel.sweep(now);
        }
        assert!((1500..1500 + TICK_MS).contains(&now), "closed at {now}");
    }

    #[test]
    fn a_link_that_keeps_talking_stays_open_and_is_refiled_once_per_limit() {
        let wheel = Heartbeats::default();
        let l = link(1500, 0);
        wheel.watch(&l);
        for now in (TICK_MS..20_000).step_by(TICK_MS as usize) {
            if now % 1000 == 0 {
                l.touch(now);
            }
            wheel.sweep(now);
            assert!(!l.is_closing(), "closed at {now} though it talked every second");
        }
        assert_eq!(wheel.watched(), 1);
    }

    #[test]
    fn ended_connections_are_dropped_from_the_wheel() {
        let wheel = Heartbeats::default();
        let l = link(1000, 0);
        wheel.watch(&l);
        drop(l);
        wheel.sweep(1000);
        assert_eq!(wheel.watched(), 0);
    }

    #[test]
    fn links_cost_one_entry_each_and_share_buckets() {
        let wheel = Heartbeats::default();
        let links: Vec<_> = (0..1000).map(|i| link(270_000, i)).collect();
        for l in &links {
            wheel.watch(l);
        }
        // One entry per link, spread over the buckets of their deadlines.
        assert_eq!(wheel.watched(), 1000);
        assert!(wheel.wheel.lock().len() <= 1000 / TICK_MS as usize + 2);
    }
}
