//! The allowance of costly work a device may make the node do: frames that write to the
//! store or scan a mailbox (Report, Bind, Unbind, Receipt, Ack with ids) and the Hello
//! of each new connection. A token bucket holding `per_sec` tokens, refilled at
//! `per_sec` a second, kept as the time it is full again (a fixed window let twice the
//! allowance through across its edge). Past it: `RATE_LIMITED` and a close.
//!
//! The bucket belongs to the device, not to one connection: the live link holds it, a
//! link that takes the session over inherits it, and [`Budgets`] keeps it for a while
//! after the device's last link ended, so reconnecting in a loop refills nothing.

use dashmap::DashMap;

use crate::session::DeviceKey;

const SECOND_US: u64 = 1_000_000;
/// Devices whose bucket is kept after their link ended, at most; past it the map starts
/// over (forgetting is the safe side: a device gets a full bucket), so that keeping one
/// never costs a scan.
const MAX_KEPT: usize = 65_536;

/// The bucket's time-full-again after one more token taken at `now_ms`, or `None` when
/// it is empty.
pub fn take(full_at_us: u64, now_ms: u64, per_sec: u32) -> Option<u64> {
    let now = now_ms.saturating_mul(1000);
    let after = full_at_us.max(now) + SECOND_US / u64::from(per_sec.max(1));
    (after - now <= SECOND_US).then_some(after)
}

fn is_full(full_at_us: u64, now_ms: u64) -> bool {
    full_at_us <= now_ms.saturating_mul(1000)
}

/// Buckets of devices with no live link that are not full again yet.
#[derive(Debug, Default)]
pub struct Budgets {
    spent: DashMap<DeviceKey, u64>,
}

impl Budgets {
    /// The bucket kept for `key` (0, full, when none is).
    pub fn get(&self, key: &DeviceKey) -> u64 {
        self.spent.get(key).map_or(0, |b| *b)
    }

    /// Takes the bucket kept for `key` out (0 when none is).
    pub fn take(&self, key: &DeviceKey) -> u64 {
        self.spent.remove(key).map_or(0, |(_, b)| b)
    }

    /// Keeps `key`'s bucket after its link ended, unless it is full again.
    pub fn keep(&self, key: &DeviceKey, full_at_us: u64, now_ms: u64) {
        if is_full(full_at_us, now_ms) {
            return;
        }
        if self.spent.len() >= MAX_KEPT {
            self.spent.clear();
        }
        self.spent.insert(key.clone(), full_at_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_a_burst_then_refills_at_the_rate() {
        let mut at = 0;
        for _ in 0..50 {
            at = take(at, 10_000, 50).expect("the burst");
        }
        assert_eq!(take(at, 10_000, 50), None, "the 51st at once");
        // 20 ms later one token is back, and only one.
        let at = take(at, 10_020, 50).expect("refilled");
        assert_eq!(take(at, 10_020, 50), None);
        // A second later it is full again.
        assert!(is_full(at, 11_020));
    }

    #[test]
    fn kept_buckets_are_only_those_not_full_again() {
        let budgets = Budgets::default();
        let key = DeviceKey::new("app", "d");
        budgets.keep(&key, 5_000_000, 6_000);
        assert_eq!(budgets.get(&key), 0, "full again at 5 s, kept at 6 s");
        budgets.keep(&key, 7_000_000, 6_000);
        assert_eq!(budgets.get(&key), 7_000_000);
        assert_eq!(budgets.take(&key), 7_000_000);
        assert_eq!(budgets.take(&key), 0);
    }
}
