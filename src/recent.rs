//! Handshake failures and kicks by reason over the last few minutes, for the status page.
//!
//! A ring of per-minute buckets, fed from the same two places that increment
//! `longlink_handshake_failures_total` and `longlink_kicks_total` (`connection`), so the
//! page and the counters can never disagree. Reasons are the fixed labels of
//! `close::CloseReason`, so a bucket holds a few dozen entries at most. Wall-clock
//! minutes (Unix time) name the buckets, so they line up with what an operator's clock
//! says; a minute with nothing in it has no bucket.

use std::collections::VecDeque;

use parking_lot::Mutex;

/// Minutes kept.
pub const MINUTES: usize = 15;

const MINUTE_MS: i64 = 60_000;

/// What happened in one wall-clock minute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minute {
    /// Start of the minute, Unix milliseconds.
    pub start_ms: i64,
    pub handshake_failures: Vec<(&'static str, u64)>,
    pub kicks: Vec<(&'static str, u64)>,
}

#[derive(Debug, Default)]
pub struct Recent {
    /// Oldest first; at most [`MINUTES`], none older than the window.
    minutes: Mutex<VecDeque<Minute>>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    HandshakeFailure,
    Kick,
}

impl Recent {
    pub fn handshake_failed(&self, reason: &'static str) {
        self.note(Kind::HandshakeFailure, reason, crate::clock::unix_ms());
    }

    pub fn kicked(&self, reason: &'static str) {
        self.note(Kind::Kick, reason, crate::clock::unix_ms());
    }

    /// The minutes of the window that ends at `now_ms`, oldest first.
    pub fn minutes(&self, now_ms: i64) -> Vec<Minute> {
        let oldest = window_start(now_ms);
        self.minutes.lock().iter().filter(|m| m.start_ms >= oldest).cloned().collect()
    }

    fn note(&self, kind: Kind, reason: &'static str, now_ms: i64) {
        let start_ms = now_ms - now_ms.rem_euclid(MINUTE_MS);
        let mut minutes = self.minutes.lock();
        if minutes.back().is_none_or(|m| m.start_ms < start_ms) {
            minutes.push_back(Minute { start_ms, ..Minute::default() });
        }
        let oldest = window_start(now_ms);
        while minutes.front().is_some_and(|m| m.start_ms < oldest) || minutes.len() > MINUTES {
            minutes.pop_front();
        }
        // A clock that stepped back files into the newest minute rather than reorder.
        let minute = minutes.back_mut().expect("pushed above");
        let counts = match kind {
            Kind::HandshakeFailure => &mut minute.handshake_failures,
            Kind::Kick => &mut minute.kicks,
        };
        match counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((reason, 1)),
        }
    }
}

fn window_start(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(MINUTE_MS) - (MINUTES as i64 - 1) * MINUTE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_040_000; // a minute boundary

    #[test]
    fn counts_land_in_their_minute_by_reason() {
        let recent = Recent::default();
        recent.note(Kind::HandshakeFailure, "token_expired", T0 + 1_000);
        recent.note(Kind::HandshakeFailure, "token_expired", T0 + 59_000);
        recent.note(Kind::Kick, "operator", T0 + 59_999);
        recent.note(Kind::HandshakeFailure, "busy", T0 + 60_000);
        let minutes = recent.minutes(T0 + 60_000);
        assert_eq!(minutes.len(), 2);
        assert_eq!(minutes[0].start_ms, T0);
        assert_eq!(minutes[0].handshake_failures, vec![("token_expired", 2)]);
        assert_eq!(minutes[0].kicks, vec![("operator", 1)]);
        assert_eq!(minutes[1].handshake_failures, vec![("busy", 1)]);
    }

    #[test]
    fn minutes_older_than_the_window_are_forgotten() {
        let recent = Recent::default();
        for m in 0..40 {
            recent.note(Kind::Kick, "replaced", T0 + m * MINUTE_MS);
        }
        let now = T0 + 39 * MINUTE_MS;
        let minutes = recent.minutes(now);
        assert_eq!(minutes.len(), MINUTES);
        assert_eq!(minutes[0].start_ms, T0 + 25 * MINUTE_MS);
        assert_eq!(recent.minutes.lock().len(), MINUTES, "the ring stays bounded");
        assert!(recent.minutes(now + 20 * MINUTE_MS).is_empty(), "a quiet window is empty");
    }
}
