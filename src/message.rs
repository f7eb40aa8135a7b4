//! A message accepted from the router, encoded once and shared by every device it goes to.
//!
//! The `Push` frame differs between devices only in `seq` (or, for a broadcast,
//! `broadcast_seq`, which is the same for every device) and `redelivery`. Protobuf
//! merges fields that appear later in the same message, so the shared body is encoded
//! once without them and each device's frame is that body with the two fields appended:
//! one copy of the body per device, no re-encoding of titles and data.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use prost::encoding::{self, WireType};

use crate::frame::PREFIX_LEN;
use crate::proto::device::{Push, PushKind};

/// `ServerFrame.push`.
const SERVER_FRAME_PUSH: u32 = 3;
/// `Push.seq`.
const PUSH_SEQ: u32 = 2;
/// `Push.broadcast_seq`.
const PUSH_BROADCAST_SEQ: u32 = 3;
/// `Push.redelivery`.
const PUSH_REDELIVERY: u32 = 12;

#[derive(Debug)]
pub struct Message {
    pub id: String,
    pub kind: PushKind,
    /// Unix milliseconds after which the message must not be delivered; `None` when it
    /// never expires.
    pub expires_at_ms: Option<i64>,
    /// Pending messages with the same key replace each other: the push's collapse key,
    /// or `badge:<key>` for badges, which collapse per badge key.
    pub collapse: Option<String>,
    /// TTL 0: delivered now, on the link that is live, or never; not stored, not replayed.
    pub ephemeral: bool,
    /// When the router's push was accepted (the push's `created_at_ms`, so it survives a
    /// restart), Unix milliseconds: the start of the delivery latency an ack ends.
    pub accepted_at_ms: i64,
    /// Encoded `Push` without `seq` and `redelivery`.
    body: Bytes,
}

impl Message {
    /// Wraps `push`, whose `seq` and `redelivery` are ignored.
    pub fn new(mut push: Push) -> Self {
        push.seq = 0;
        push.broadcast_seq = 0;
        push.redelivery = false;
        let expires_at_ms = (push.expires_at_ms > 0).then_some(push.expires_at_ms);
        let collapse = match (&push.badge, push.kind()) {
            _ if !push.collapse_key.is_empty() => Some(push.collapse_key.clone()),
            (Some(badge), PushKind::Badge) => Some(format!("badge:{}", badge.key)),
            _ => None,
        };
        Message {
            id: push.message_id.clone(),
            kind: push.kind(),
            expires_at_ms,
            collapse,
            ephemeral: false,
            accepted_at_ms: push.created_at_ms,
            body: push.encode_to_vec().into(),
        }
    }

    /// A TTL-0 message: for the live link only.
    pub fn ephemeral(push: Push) -> Self {
        Message { ephemeral: true, ..Message::new(push) }
    }

    /// Rebuilds a message from the body kept in the store.
    pub fn from_body(body: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(Message::new(Push::decode(body)?))
    }

    /// The shared body, as kept in the store.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The length-prefixed `ServerFrame` carrying this message as device message `seq`.
    pub fn frame(&self, seq: u64, redelivery: bool) -> Bytes {
        self.framed(PUSH_SEQ, seq, redelivery)
    }

    /// The length-prefixed `ServerFrame` carrying this message as the app's broadcast
    /// `broadcast_seq`: the same bytes for every device that is not being redelivered it.
    pub fn broadcast_frame(&self, broadcast_seq: u64, redelivery: bool) -> Bytes {
        self.framed(PUSH_BROADCAST_SEQ, broadcast_seq, redelivery)
    }

    fn framed(&self, field: u32, seq: u64, redelivery: bool) -> Bytes {
        let extra = encoding::uint64::encoded_len(field, &seq)
            + if redelivery { encoding::bool::encoded_len(PUSH_REDELIVERY, &true) } else { 0 };
        let push_len = self.body.len() + extra;
        let frame_len = encoding::key_len(SERVER_FRAME_PUSH)
            + encoding::encoded_len_varint(push_len as u64)
            + push_len;
        let mut buf = BytesMut::with_capacity(PREFIX_LEN + frame_len);
        buf.put_u32(frame_len as u32);
        encoding::encode_key(SERVER_FRAME_PUSH, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(push_len as u64, &mut buf);
        buf.put_slice(&self.body);
        encoding::uint64::encode(field, &seq, &mut buf);
        if redelivery {
            encoding::bool::encode(PUSH_REDELIVERY, &true, &mut buf);
        }
        debug_assert_eq!(buf.len(), PREFIX_LEN + frame_len);
        buf.freeze()
    }
}

/// A new message id: the acceptance time in milliseconds, then 64 random bits, in hex.
pub fn new_id(now_ms: i64) -> String {
    format!("{:012x}{:016x}", now_ms, rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::device::{Notification, ServerFrame, server_frame};

    #[test]
    fn per_device_frame_decodes_as_the_full_push() {
        let push = Push {
            message_id: "m1".into(),
            kind: PushKind::Notification as i32,
            notification: Some(Notification {
                title: "t".into(),
                body: "b".repeat(300),
                click_action: String::new(),
            }),
            data: vec![1, 2, 3],
            created_at_ms: 5,
            ..Default::default()
        };
        let msg = Message::new(push.clone());
        for (seq, redelivery) in [(1, false), (300, true), (u64::MAX, false)] {
            let frame = msg.frame(seq, redelivery);
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - 4);
            let decoded = ServerFrame::decode(&frame[4..]).unwrap();
            let want = Push { seq, redelivery, ..push.clone() };
            assert_eq!(decoded.frame, Some(server_frame::Frame::Push(want)));
            let frame = msg.broadcast_frame(seq, redelivery);
            let decoded = ServerFrame::decode(&frame[4..]).unwrap();
            let want = Push { broadcast_seq: seq, redelivery, ..push.clone() };
            assert_eq!(decoded.frame, Some(server_frame::Frame::Push(want)));
        }
    }
}
