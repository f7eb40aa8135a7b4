//! The shared half of one live connection: its bounded outbound queue, the close request
//! and the time it was last heard from.
//!
//! Pushes, kicks, takeovers and the heartbeat wheel reach a connection only through its
//! `Link`: they enqueue a frame or request a close, then wake the connection's task. None
//! of them ever touches the socket or waits on it, so one slow device cannot hold up a
//! push. The connection task is the only reader of the queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::Waker;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::close::CloseReason;

/// Bounds of one connection's outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

/// What became of a frame handed to [`Link::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The queue was over its bound: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection was already closing; the frame was dropped.
    Closing,
    /// [`Link::offer`] only: the queue has no room for a replay right now; nothing changed.
    Full,
}

#[derive(Debug)]
pub struct Link {
    /// Identifies the session this link belongs to; takeover checks compare it.
    pub session_id: u64,
    /// Silence after which the heartbeat wheel closes this link, in milliseconds.
    silence_limit_ms: u32,
    /// When the device token of this session expires (its `exp`), Unix seconds (u32: the
    /// year 2106; `u32::MAX`: never); a `Bind` with a fresh token moves it.
    token_expires_secs: AtomicU32,
    /// Last time any frame arrived, in [`crate::heartbeat::Heartbeats::now_ms`] units.
    last_seen_ms: AtomicU64,
    /// The device's costly-frame allowance ([`crate::budget`]): when it is full again,
    /// microseconds on the same clock. Written by the connection task, and copied into a
    /// link that takes the session over.
    budget: AtomicU64,
    outbox: Mutex<Outbox>,
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct Outbox {
    /// Boxed, and only while frames wait: nearly every link is idle, and an empty queue
    /// inline would cost each of them 24 bytes more (the box is the one extra allocation
    /// per burst that the lint warns of).
    #[allow(clippy::box_collection)]
    frames: Option<Box<VecDeque<Bytes>>>,
    bytes: usize,
    /// Set once; the first reason wins and later requests are ignored.
    close: Option<CloseReason>,
}

impl Link {
    pub fn new(session_id: u64, silence_limit_ms: u64, now_ms: u64) -> Self {
        Link {
            session_id,
            silence_limit_ms: silence_limit_ms.try_into().unwrap_or(u32::MAX),
            token_expires_secs: AtomicU32::new(u32::MAX),
            last_seen_ms: AtomicU64::new(now_ms),
            budget: AtomicU64::new(0),
            outbox: Mutex::new(Outbox::default()),
            waker: AtomicWaker::new(),
        }
    }

    /// Queues `frame` for the connection to write, unless that would put the queue over
    /// `limits`, in which case the connection is closed as a slow consumer.
    pub fn send(&self, frame: Bytes, limits: OutboundLimits) -> Sent {
        let mut outbox = self.outbox.lock();
        if outbox.close.is_some() {
            return Sent::Closing;
        }
        if outbox.len() >= limits.max_frames || outbox.bytes + frame.len() > limits.max_bytes {
            outbox.close = Some(CloseReason::SlowConsumer);
            drop(outbox);
            self.waker.wake();
            return Sent::Overflow;
        }
        outbox.push(frame);
        drop(outbox);
        self.waker.wake();
        Sent::Queued
    }

    /// Queues `frame` as part of a replay (a backlog or a broadcast catch-up): only while
    /// the queue holds less than half its bound, so that live pushes keep the other half,
    /// and never by closing the connection. An empty queue always takes one frame, so a
    /// replay always moves. `Full` means try again once the device acks what it has.
    pub fn offer(&self, frame: Bytes, limits: OutboundLimits) -> Sent {
        let mut outbox = self.outbox.lock();
        if outbox.close.is_some() {
            return Sent::Closing;
        }
        let room = outbox.len() < limits.max_frames / 2
            && outbox.bytes + frame.len() <= limits.max_bytes / 2;
        if !room && outbox.len() > 0 {
            return Sent::Full;
        }
        outbox.push(frame);
        drop(outbox);
        self.waker.wake();
        Sent::Queued
    }

    /// Asks the connection to close for `reason`. Returns false when a close had already
    /// been requested (the first reason stands).
    pub fn close(&self, reason: CloseReason) -> bool {
        let mut outbox = self.outbox.lock();
        if outbox.close.is_some() {
            return false;
        }
        outbox.close = Some(reason);
        drop(outbox);
        self.waker.wake();
        true
    }

    pub fn is_closing(&self) -> bool {
        self.closing().is_some()
    }

    /// The close reason, once a close was requested.
    pub fn closing(&self) -> Option<CloseReason> {
        self.outbox.lock().close
    }

    /// Records that the peer was heard from at `now_ms`.
    pub fn touch(&self, now_ms: u64) {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    pub fn set_token_expiry(&self, exp_secs: i64) {
        let exp = exp_secs.clamp(0, u32::MAX.into()) as u32;
        self.token_expires_secs.store(exp, Ordering::Relaxed);
    }

    /// True when the session's token expired before `now_secs` (skew allowed).
    pub fn token_expired(&self, now_secs: i64) -> bool {
        let exp = self.token_expires_secs.load(Ordering::Relaxed);
        i64::from(exp).saturating_add(crate::token::SKEW_SECS) < now_secs
    }

    /// Silence after which the heartbeat wheel closes this link, in milliseconds.
    pub fn silence_limit_ms(&self) -> u64 {
        self.silence_limit_ms.into()
    }

    /// Takes one token of the device's allowance at `now_ms`; false when it is spent.
    pub fn spend(&self, now_ms: u64, per_sec: u32) -> bool {
        let at = self.budget.load(Ordering::Relaxed);
        match crate::budget::take(at, now_ms, per_sec) {
            Some(after) => {
                self.budget.store(after, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The device's allowance as this link holds it ([`crate::budget`]).
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    /// Carries a spent allowance over from an earlier link of the device.
    pub fn carry_budget(&self, full_at_us: u64) {
        self.budget.fetch_max(full_at_us, Ordering::Relaxed);
    }

    /// Registers the connection task to be woken by the next `send` or `close`.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Takes the next queued frame, or the close reason once one was requested.
    pub(crate) fn next(&self) -> Result<Option<Bytes>, CloseReason> {
        let mut outbox = self.outbox.lock();
        if let Some(reason) = outbox.close {
            return Err(reason);
        }
        Ok(outbox.pop())
    }

    /// True when a frame is queued or a close was requested: what a parked connection is
    /// woken for.
    pub fn has_work(&self) -> bool {
        let outbox = self.outbox.lock();
        outbox.close.is_some() || outbox.len() > 0
    }

    /// True when the queue holds half its bound of frames or bytes, or more.
    pub fn half_full(&self, limits: OutboundLimits) -> bool {
        let (frames, bytes) = self.queued();
        frames >= limits.max_frames / 2 || bytes >= limits.max_bytes / 2
    }

    /// Frames and bytes waiting to be written.
    pub fn queued(&self) -> (usize, usize) {
        let outbox = self.outbox.lock();
        (outbox.len(), outbox.bytes)
    }
}

impl Outbox {
    fn len(&self) -> usize {
        self.frames.as_ref().map_or(0, |f| f.len())
    }

    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.get_or_insert_default().push_back(frame);
    }

    fn pop(&mut self) -> Option<Bytes> {
        let frames = self.frames.as_mut()?;
        let frame = frames.pop_front();
        if let Some(f) = &frame {
            self.bytes -= f.len();
        }
        // Empty again: give the queue's memory back rather than keep it per connection.
        if frames.is_empty() {
            self.frames = None;
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OutboundLimits = OutboundLimits { max_frames: 3, max_bytes: 10 };

    #[test]
    fn overflow_by_frames_or_bytes_closes_as_slow_consumer() {
        let link = Link::new(1, 1000, 0);
        for _ in 0..3 {
            assert_eq!(link.send(Bytes::from_static(b"ab"), LIMITS), Sent::Queued);
        }
        assert_eq!(link.send(Bytes::from_static(b"ab"), LIMITS), Sent::Overflow);
        assert_eq!(link.send(Bytes::from_static(b"ab"), LIMITS), Sent::Closing);
        assert_eq!(link.next(), Err(CloseReason::SlowConsumer));

        let link = Link::new(2, 1000, 0);
        assert_eq!(link.send(Bytes::from_static(b"123456"), LIMITS), Sent::Queued);
        assert_eq!(link.send(Bytes::from_static(b"12345"), LIMITS), Sent::Overflow);
    }

    #[test]
    fn first_close_reason_wins() {
        let link = Link::new(1, 1000, 0);
        assert!(link.close(CloseReason::Replaced));
        assert!(!link.close(CloseReason::HeartbeatTimeout));
        assert_eq!(link.next(), Err(CloseReason::Replaced));
    }

    #[test]
    fn frames_come_out_in_order_and_free_their_budget() {
        let link = Link::new(1, 1000, 0);
        for f in [&b"a"[..], b"bb", b"ccc"] {
            assert_eq!(link.send(Bytes::copy_from_slice(f), LIMITS), Sent::Queued);
        }
        assert_eq!(link.queued(), (3, 6));
        assert_eq!(link.next(), Ok(Some(Bytes::from_static(b"a"))));
        assert_eq!(link.queued(), (2, 5));
        assert_eq!(link.next(), Ok(Some(Bytes::from_static(b"bb"))));
        assert_eq!(link.next(), Ok(Some(Bytes::from_static(b"ccc"))));
        assert_eq!(link.next(), Ok(None));
        assert_eq!(link.send(Bytes::from_static(b"0123456789"), LIMITS), Sent::Queued);
    }
}
