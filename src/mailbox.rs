//! One device's messages that are not acked yet, in sequence order, and which of them
//! the current connection has been handed.
//!
//! Invariants: `pending` is sorted by `seq` and holds only messages with
//! `acked < seq <= last_seq`; `sent_upto` is the highest seq handed to the current link.
//! A new connection rewinds `sent_upto` so that every unacked message is sent again,
//! flagged as a redelivery when an earlier link had it.
//!
//! Note: the mailbox lives in memory; a restart loses it. The durable store will keep
//! the same shape on disk, behind the same operations.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::message::Message;

#[derive(Debug, Default)]
pub struct Mailbox {
    last_seq: u64,
    acked: u64,
    sent_upto: u64,
    pending: VecDeque<Pending>,
    /// Messages dropped at the cap that the device has not confirmed hearing about.
    missed: u64,
    /// `sent_upto` when the current link was handed the `Missed` marker. An ack beyond
    /// it proves the device read the marker (it precedes those messages on the wire).
    told: Option<u64>,
}

#[derive(Debug)]
struct Pending {
    seq: u64,
    message: Arc<Message>,
    /// Handed to some link already; a later send is a redelivery.
    handed: bool,
}

/// A message to write now.
#[derive(Debug)]
pub struct Outgoing {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivery: bool,
}

impl Mailbox {
    /// Adds `message` as the next seq; drops the oldest messages past `cap`. Returns the
    /// seq given and how many were dropped.
    pub fn add(&mut self, message: Arc<Message>, cap: usize) -> (u64, usize) {
        self.last_seq += 1;
        self.pending.push_back(Pending {
            seq: self.last_seq,
            message,
            handed: false,
        });
        let mut dropped = 0;
        while self.pending.len() > cap {
            self.pending.pop_front();
            dropped += 1;
        }
        if dropped > 0 {
            self.missed += dropped as u64;
            self.told = None;
        }
        (self.last_seq, dropped)
    }

    /// Releases every message with seq <= `upto`. An ack beyond the last seq given is
    /// clamped to it. Returns how many were released.
    pub fn ack(&mut self, upto: u64) -> usize {
        let upto = upto.min(self.last_seq);
        if upto <= self.acked {
            return 0;
        }
        self.acked = upto;
        if self.told.is_some_and(|at| upto > at) {
            self.missed = 0;
            self.told = None;
        }
        let n = self.pending.partition_point(|p| p.seq <= upto);
        self.pending.drain(..n);
        n
    }

    /// Releases the messages with these ids, wherever they are in the queue.
    pub fn ack_ids(&mut self, ids: &[String]) -> usize {
        let before = self.pending.len();
        self.pending
            .retain(|p| !ids.iter().any(|id| *id == p.message.id));
        before - self.pending.len()
    }

    /// A device that comes back claiming more than this node gave out (after a restart
    /// of a node without a store) continues from its own count.
    pub fn resume_after(&mut self, acked_seq: u64) {
        if acked_seq > self.last_seq {
            self.last_seq = acked_seq;
            self.sent_upto = acked_seq;
        }
        self.ack(acked_seq);
    }

    /// A new link takes over: everything unacked is to be sent again.
    pub fn rewind(&mut self) {
        self.sent_upto = self.acked;
        self.told = None;
    }

    /// True when some message has not been handed to the current link yet.
    pub fn has_unsent(&self) -> bool {
        self.pending.back().is_some_and(|p| p.seq > self.sent_upto)
    }

    /// Messages handed to the current link and not acked.
    pub fn in_flight(&self) -> usize {
        self.pending.partition_point(|p| p.seq <= self.sent_upto)
    }

    /// The next message to hand to the current link when fewer than `window` are in
    /// flight. Expired messages are skipped and released; the count is in `expired`.
    pub fn next(&mut self, window: usize, now_ms: i64, expired: &mut usize) -> Option<Outgoing> {
        loop {
            let at = self.in_flight();
            if at >= window {
                return None;
            }
            let p = self.pending.get_mut(at)?;
            if p.message.expires_at_ms.is_some_and(|t| t <= now_ms) {
                self.pending.remove(at);
                *expired += 1;
                continue;
            }
            let out = Outgoing {
                seq: p.seq,
                message: p.message.clone(),
                redelivery: p.handed,
            };
            p.handed = true;
            self.sent_upto = p.seq;
            return Some(out);
        }
    }

    /// The count of dropped messages to tell the current link about, once per link
    /// (and again after further drops) until the device confirms it by acking.
    pub fn take_missed(&mut self) -> u64 {
        if self.missed == 0 || self.told.is_some() {
            return 0;
        }
        self.told = Some(self.sent_upto);
        self.missed
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::device::Push;

    fn msg(id: &str) -> Arc<Message> {
        Arc::new(Message::new(Push {
            message_id: id.into(),
            ..Default::default()
        }))
    }

    fn drain(mb: &mut Mailbox, window: usize) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let mut expired = 0;
        while let Some(o) = mb.next(window, 0, &mut expired) {
            out.push((o.seq, o.redelivery));
        }
        out
    }

    #[test]
    fn window_paces_a_backlog_but_never_truncates_it() {
        let mut mb = Mailbox::default();
        for i in 0..1000 {
            mb.add(msg(&format!("m{i}")), 1000);
        }
        let mut delivered = 0;
        loop {
            let batch = drain(&mut mb, 100);
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 100);
            delivered += batch.len();
            mb.ack(batch.last().unwrap().0);
        }
        assert_eq!(delivered, 1000);
        assert!(mb.is_empty());
    }

    #[test]
    fn cap_drops_the_oldest_and_counts_them_once() {
        let mut mb = Mailbox::default();
        for i in 0..1005 {
            mb.add(msg(&format!("m{i}")), 1000);
        }
        assert_eq!(mb.len(), 1000);
        assert_eq!(mb.take_missed(), 5);
        assert_eq!(mb.take_missed(), 0, "told once per link");
        assert_eq!(drain(&mut mb, 1)[0].0, 6, "oldest kept is seq 6");
    }

    #[test]
    fn the_missed_marker_is_repeated_on_a_new_link_until_an_ack_confirms_it() {
        let mut mb = Mailbox::default();
        for i in 0..3 {
            mb.add(msg(&format!("m{i}")), 2);
        }
        assert_eq!(mb.take_missed(), 1);
        mb.rewind();
        assert_eq!(
            mb.take_missed(),
            1,
            "the first link died before the device read it"
        );
        let sent = drain(&mut mb, 10);
        mb.ack(sent[0].0);
        mb.rewind();
        assert_eq!(
            mb.take_missed(),
            0,
            "confirmed by an ack of a later message"
        );
    }

    #[test]
    fn rewind_resends_unacked_as_redeliveries_and_never_acked_ones() {
        let mut mb = Mailbox::default();
        for i in 1..=5 {
            mb.add(msg(&format!("m{i}")), 100);
        }
        assert_eq!(drain(&mut mb, 3).len(), 3);
        mb.ack(1);
        mb.rewind();
        assert_eq!(
            drain(&mut mb, 100),
            vec![(2, true), (3, true), (4, false), (5, false)]
        );
    }

    #[test]
    fn acks_beyond_the_last_seq_are_clamped_and_repeats_are_harmless() {
        let mut mb = Mailbox::default();
        mb.add(msg("a"), 10);
        assert_eq!(mb.ack(99), 1);
        assert_eq!(mb.ack(1), 0);
        let (seq, _) = mb.add(msg("b"), 10);
        assert_eq!(seq, 2, "a clamped ack must not swallow future seqs");
        assert_eq!(mb.len(), 1);
    }

    #[test]
    fn expired_messages_are_skipped_and_counted() {
        let mut mb = Mailbox::default();
        let mut push = Push {
            message_id: "old".into(),
            expires_at_ms: 10,
            ..Default::default()
        };
        mb.add(Arc::new(Message::new(push.clone())), 10);
        push.message_id = "new".into();
        push.expires_at_ms = 0;
        mb.add(Arc::new(Message::new(push)), 10);
        let mut expired = 0;
        let out = mb.next(10, 20, &mut expired).unwrap();
        assert_eq!((out.seq, out.message.id.as_str(), expired), (2, "new", 1));
    }

    #[test]
    fn a_device_ahead_of_this_node_keeps_counting_up() {
        let mut mb = Mailbox::default();
        mb.resume_after(57);
        assert_eq!(mb.add(msg("a"), 10).0, 58);
        assert_eq!(drain(&mut mb, 10), vec![(58, false)]);
    }
}
