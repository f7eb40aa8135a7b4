//! One device's messages that are not acked yet, in sequence order, and which of them
//! the current connection has been handed.
//!
//! Invariants: `pending` is sorted by `seq` and holds only messages with
//! `acked < seq <= last_seq`; `sent_upto` is the highest seq handed to the current link.
//! A new connection rewinds `sent_upto` so that every unacked message is sent again,
//! flagged as a redelivery when an earlier link had it. Every operation that removes
//! messages says which seqs, so that the store can delete the same ones.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::message::Message;

#[derive(Debug, Default)]
pub struct Mailbox {
    /// Seqs up to here may have been given out: kept on disk (in the device's record)
    /// ahead of use, so a node that crashed never gives one out twice. Here rather than
    /// in the device, since only a device that has had messages has a floor.
    floor: u64,
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

impl Pending {
    fn removed(&self) -> Removed {
        Removed { seq: self.seq, message: self.message.clone() }
    }
}

/// A message to write now.
#[derive(Debug)]
pub struct Outgoing {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivery: bool,
}

/// A message taken out of the mailbox before it was acked, or by an ack.
#[derive(Debug, Clone)]
pub struct Removed {
    pub seq: u64,
    pub message: Arc<Message>,
}

/// What [`Mailbox::add`] did.
#[derive(Debug, Default)]
pub struct Added {
    pub seq: u64,
    /// Dropped because the mailbox was over its cap (oldest first).
    pub dropped: Vec<Removed>,
    /// Replaced by the new message's collapse key.
    pub collapsed: Vec<Removed>,
}

impl Mailbox {
    /// Adds `message` as the next seq: replaces a pending message with the same collapse
    /// key, then drops the oldest messages past `cap`.
    pub fn add(&mut self, message: Arc<Message>, cap: usize) -> Added {
        let mut added = Added::default();
        if let Some(key) = &message.collapse {
            self.pending.retain(|p| {
                let same = p.message.collapse.as_ref() == Some(key);
                if same {
                    added.collapsed.push(p.removed());
                }
                !same
            });
        }
        self.last_seq += 1;
        added.seq = self.last_seq;
        self.pending.push_back(Pending { seq: self.last_seq, message, handed: false });
        while self.pending.len() > cap {
            let dropped = self.pending.pop_front().expect("over the cap means not empty");
            added.dropped.push(dropped.removed());
        }
        if !added.dropped.is_empty() {
            self.missed += added.dropped.len() as u64;
            self.told = None;
        }
        added
    }

    /// Puts back a message read from the store (in seq order, at start).
    pub fn restore(&mut self, seq: u64, message: Arc<Message>, handed: bool) {
        self.last_seq = self.last_seq.max(seq);
        self.pending.push_back(Pending { seq, message, handed });
    }

    /// Raises the next seq above `floor` (a node restarting continues above the seqs it
    /// may have given out before).
    pub fn raise_floor(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
        self.last_seq = self.last_seq.max(floor);
    }

    /// The seq floor kept on disk: seqs up to it may have been given out.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Reserves seqs up to `floor` (the caller writes it to disk before using them).
    pub fn reserve(&mut self, floor: u64) {
        self.floor = floor;
    }

    /// Releases every message with seq <= `upto`. An ack beyond the last seq given is
    /// clamped to it. Returns what it released.
    pub fn ack(&mut self, upto: u64) -> Vec<Removed> {
        let upto = upto.min(self.last_seq);
        if upto <= self.acked {
            return Vec::new();
        }
        self.acked = upto;
        if self.told.is_some_and(|at| upto > at) {
            self.missed = 0;
            self.told = None;
        }
        let n = self.pending.partition_point(|p| p.seq <= upto);
        self.pending.drain(..n).map(|p| p.removed()).collect()
    }

    /// Releases the messages with these ids, wherever they are in the queue.
    pub fn ack_ids(&mut self, ids: &[String]) -> Vec<Removed> {
        if ids.is_empty() {
            return Vec::new();
        }
        let mut released = Vec::new();
        self.pending.retain(|p| {
            let acked = ids.iter().any(|id| *id == p.message.id);
            if acked {
                released.push(p.removed());
            }
            !acked
        });
        released
    }

    /// A device that comes back claiming more than this node gave out (a node that lost
    /// its store) continues from its own count.
    pub fn resume_after(&mut self, acked_seq: u64) -> Vec<Removed> {
        if acked_seq > self.last_seq {
            self.last_seq = acked_seq;
            self.sent_upto = acked_seq;
        }
        self.ack(acked_seq)
    }

    /// A new link takes over: everything unacked is to be sent again, except TTL-0
    /// messages, which were for the old link only; returns those.
    pub fn rewind(&mut self) -> Vec<Removed> {
        self.sent_upto = self.acked;
        self.told = None;
        self.drop_ephemeral()
    }

    /// Takes out every TTL-0 message: the link they were meant for is gone.
    pub fn drop_ephemeral(&mut self) -> Vec<Removed> {
        let mut dropped = Vec::new();
        self.pending.retain(|p| {
            if p.message.ephemeral {
                dropped.push(p.removed());
            }
            !p.message.ephemeral
        });
        dropped
    }

    /// When the oldest kept message expires, Unix ms.
    pub fn oldest_expiry(&self) -> Option<i64> {
        self.pending.front().and_then(|p| p.message.expires_at_ms)
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
    /// flight. Expired messages are skipped and released into `expired`.
    pub fn next(
        &mut self,
        window: usize,
        now_ms: i64,
        expired: &mut Vec<Removed>,
    ) -> Option<Outgoing> {
        loop {
            let at = self.in_flight();
            if at >= window {
                return None;
            }
            let p = self.pending.get_mut(at)?;
            if p.message.expires_at_ms.is_some_and(|t| t <= now_ms) {
                expired.push(p.removed());
                self.pending.remove(at);
                continue;
            }
            let out = Outgoing { seq: p.seq, message: p.message.clone(), redelivery: p.handed };
            p.handed = true;
            self.sent_upto = p.seq;
            return Some(out);
        }
    }

    /// Takes back `out`, which [`Mailbox::next`] gave but the link could not take: it is
    /// the next to hand again, with the redelivery flag it had.
    pub fn unsend(&mut self, out: &Outgoing) {
        let at = self.pending.partition_point(|p| p.seq < out.seq);
        if let Some(p) = self.pending.get_mut(at).filter(|p| p.seq == out.seq) {
            p.handed = out.redelivery;
        }
        self.sent_upto = at.checked_sub(1).map_or(self.acked, |i| self.pending[i].seq);
    }

    /// Releases every expired message; returns them.
    pub fn purge(&mut self, now_ms: i64) -> Vec<Removed> {
        let mut expired = Vec::new();
        self.pending.retain(|p| {
            let gone = p.message.expires_at_ms.is_some_and(|t| t <= now_ms);
            if gone {
                expired.push(p.removed());
            }
            !gone
        });
        expired
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

    /// How many pending messages `message` would replace by its collapse key.
    pub fn collapsible(&self, message: &Message) -> usize {
        let Some(key) = &message.collapse else { return 0 };
        self.pending.iter().filter(|p| p.message.collapse.as_ref() == Some(key)).count()
    }

    /// Dropped messages the device has not confirmed hearing about.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Puts back the missed count read from the store.
    pub fn restore_missed(&mut self, missed: u64) {
        self.missed = missed;
        self.told = None;
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
        Arc::new(Message::new(Push { message_id: id.into(), ..Default::default() }))
    }

    fn seqs(removed: &[Removed]) -> Vec<u64> {
        removed.iter().map(|r| r.seq).collect()
    }

    fn drain(mb: &mut Mailbox, window: usize) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let mut expired = Vec::new();
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
        assert_eq!(mb.take_missed(), 1, "the first link died before the device read it");
        let sent = drain(&mut mb, 10);
        mb.ack(sent[0].0);
        mb.rewind();
        assert_eq!(mb.take_missed(), 0, "confirmed by an ack of a later message");
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
        assert_eq!(drain(&mut mb, 100), vec![(2, true), (3, true), (4, false), (5, false)]);
    }

    #[test]
    fn acks_beyond_the_last_seq_are_clamped_and_repeats_are_harmless() {
        let mut mb = Mailbox::default();
        mb.add(msg("a"), 10);
        assert_eq!(seqs(&mb.ack(99)), vec![1]);
        assert!(mb.ack(1).is_empty());
        let seq = mb.add(msg("b"), 10).seq;
        assert_eq!(seq, 2, "a clamped ack must not swallow future seqs");
        assert_eq!(mb.len(), 1);
    }

    #[test]
    fn expired_messages_are_skipped_and_counted() {
        let mut mb = Mailbox::default();
        let mut push = Push { message_id: "old".into(), expires_at_ms: 10, ..Default::default() };
        mb.add(Arc::new(Message::new(push.clone())), 10);
        push.message_id = "new".into();
        push.expires_at_ms = 0;
        mb.add(Arc::new(Message::new(push)), 10);
        let mut expired = Vec::new();
        let out = mb.next(10, 20, &mut expired).unwrap();
        assert_eq!((out.seq, out.message.id.as_str(), seqs(&expired)), (2, "new", vec![1]));
    }

    #[test]
    fn collapse_keys_and_badge_keys_replace_the_pending_message() {
        let mut mb = Mailbox::default();
        let with = |id: &str, key: &str| {
            Arc::new(Message::new(Push {
                message_id: id.into(),
                collapse_key: key.into(),
                ..Default::default()
            }))
        };
        let badge = |id: &str, key: &str| {
            Arc::new(Message::new(Push {
                message_id: id.into(),
                kind: crate::proto::device::PushKind::Badge as i32,
                badge: Some(crate::proto::device::Badge { key: key.into(), change: None }),
                ..Default::default()
            }))
        };
        mb.add(with("a", "score"), 10);
        mb.add(badge("b", "inbox"), 10);
        mb.add(with("c", ""), 10);
        assert_eq!(seqs(&mb.add(with("d", "score"), 10).collapsed), vec![1]);
        assert_eq!(seqs(&mb.add(badge("e", "inbox"), 10).collapsed), vec![2]);
        assert!(mb.add(badge("f", "orders"), 10).collapsed.is_empty());
        let ids: Vec<_> = std::iter::from_fn(|| mb.next(10, 0, &mut Vec::new()))
            .map(|o| o.message.id.clone())
            .collect();
        assert_eq!(ids, ["c", "d", "e", "f"]);
    }

    #[test]
    fn ttl_zero_messages_are_never_replayed_on_a_new_link() {
        let mut mb = Mailbox::default();
        let push = Push { message_id: "now".into(), ..Default::default() };
        mb.add(Arc::new(Message::ephemeral(push)), 10);
        mb.add(msg("kept"), 10);
        assert_eq!(drain(&mut mb, 10).len(), 2);
        mb.rewind();
        assert_eq!(drain(&mut mb, 10), vec![(2, true)]);
    }

    #[test]
    fn a_restored_mailbox_continues_above_its_floor() {
        let mut mb = Mailbox::default();
        mb.restore(7, msg("a"), true);
        mb.restore(9, msg("b"), false);
        mb.raise_floor(1024);
        assert_eq!(mb.add(msg("c"), 10).seq, 1025);
        assert_eq!(drain(&mut mb, 10), vec![(7, true), (9, false), (1025, false)]);
        assert_eq!(seqs(&mb.ack(8)), vec![7], "acks below the floor still release kept ones");
    }

    #[test]
    fn a_device_ahead_of_this_node_keeps_counting_up() {
        let mut mb = Mailbox::default();
        mb.resume_after(57);
        assert_eq!(mb.add(msg("a"), 10).seq, 58);
        assert_eq!(drain(&mut mb, 10), vec![(58, false)]);
    }
}
