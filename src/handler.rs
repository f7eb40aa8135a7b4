//! What an established session does with each frame the app sends. Everything here is
//! synchronous: a frame changes the hub or queues an answer on the connection's own link;
//! nothing touches the socket.

use crate::close::CloseReason;
use crate::handshake::valid_report;
use crate::link::Link;
use crate::node::Node;
use crate::proto::device::{Bound, ClientFrame, Pong, ServerFrame, client_frame, server_frame};
use crate::session::DeviceKey;
use crate::timeline::steps;

/// Message ids one `Ack` may list (the protocol's documented limit).
const MAX_ACK_IDS: usize = 256;

/// Frames that write to the store or the timeline, or scan a mailbox, which the
/// device's allowance counts ([`crate::budget`]).
pub fn costly(frame: &ClientFrame) -> bool {
    use client_frame::Frame;
    match &frame.frame {
        Some(Frame::Report(_) | Frame::Bind(_) | Frame::Unbind(_) | Frame::Receipt(_)) => true,
        Some(Frame::Ack(ack)) => !ack.message_ids.is_empty(),
        _ => false,
    }
}

/// Handles the frames of one established session.
pub struct Handler<'a> {
    pub node: &'a Node,
    pub key: &'a DeviceKey,
    pub link: &'a Link,
}

impl Handler<'_> {
    pub fn on_frame(&self, frame: ClientFrame) -> Result<(), CloseReason> {
        use client_frame::Frame;
        match frame.frame {
            Some(Frame::Ping(ping)) => {
                let pong = Pong {
                    client_time_ms: ping.client_time_ms,
                    server_time_ms: crate::clock::unix_ms(),
                };
                self.answer(server_frame::Frame::Pong(pong));
            }
            Some(Frame::Ack(ack)) if ack.message_ids.len() > MAX_ACK_IDS => {
                return Err(CloseReason::Malformed);
            }
            Some(Frame::Ack(ack)) => {
                let released =
                    self.node.hub.ack(self.key, ack.seq, &ack.message_ids, ack.broadcast_cursor);
                metrics::counter!("longlink_acks_total").increment(released as u64);
            }
            Some(Frame::Receipt(receipt)) => self.receipt(&receipt),
            Some(Frame::Report(report)) => {
                let report = report.report.unwrap_or_default();
                if !valid_report(&report) {
                    return Err(CloseReason::Malformed);
                }
                let before = self.node.hub.with_device(self.key, |d| d.report.as_deref().cloned());
                let timeline = self.node.hub.receipts.timeline();
                let session = self.link.session_id;
                steps::reported(timeline, self.key, session, before.flatten().as_ref(), &report);
                self.node.hub.report(self.key, report);
            }
            Some(Frame::Bind(bind)) => self.bind(&bind.token)?,
            Some(Frame::Unbind(_)) => {
                self.record_binding(None, "Unbind");
                self.node.hub.bind(self.key, None);
                tracing::info!("unbound");
                self.answer(server_frame::Frame::Bound(Bound { user_id: String::new() }));
            }
            Some(Frame::Hello(_)) => return Err(CloseReason::UnexpectedFrame),
            None => return Err(CloseReason::Malformed),
        }
        Ok(())
    }

    /// Passes what the app did with a message on to receipt subscribers.
    fn receipt(&self, receipt: &crate::proto::device::Receipt) {
        use crate::proto::device::ReceiptStatus;
        use crate::proto::router::Event;
        let event = match receipt.status() {
            ReceiptStatus::Displayed => Event::Displayed,
            ReceiptStatus::Opened => Event::Opened,
            ReceiptStatus::Dismissed => Event::Dismissed,
            ReceiptStatus::DisplayFailed => Event::DisplayFailed,
            ReceiptStatus::Unspecified => Event::Unspecified,
        };
        let label = receipt.status().as_str_name();
        metrics::counter!("longlink_receipts_total", "status" => label).increment(1);
        tracing::debug!(message = %receipt.message_id, status = label, "receipt");
        // Always: the timeline keeps what the app did even when nobody subscribes.
        let reason: String = receipt.reason.chars().take(64).collect();
        let id: String = receipt.message_id.chars().take(128).collect();
        let session = self.link.session_id;
        self.node.hub.receipts.emit_on(event, self.key, &id, 0, &reason, session);
    }

    /// Records a change of binding to `user` made on this connection.
    fn record_binding(&self, user: Option<&str>, how: &str) {
        let timeline = self.node.hub.receipts.timeline();
        if !timeline.enabled() {
            return;
        }
        let old = self.node.hub.with_device(self.key, |d| d.user.as_deref().map(str::to_string));
        let session = self.link.session_id;
        steps::bound(timeline, self.key, session, old.flatten().as_deref(), user, how);
    }

    fn bind(&self, token: &str) -> Result<(), CloseReason> {
        let apps = self.node.apps();
        let (_, key) = apps.get(&self.key.app).ok_or(CloseReason::UnknownApp)?;
        let refused = |reason: CloseReason| {
            let timeline = self.node.hub.receipts.timeline();
            steps::token_rejected(timeline, self.key, reason, self.link.session_id, true);
            reason
        };
        let claims = key
            .verify(token, &self.key.app, &self.key.device, crate::clock::unix_secs())
            .map_err(|e| refused(CloseReason::Token(e)))?;
        let user = crate::handshake::user_of(&claims).map_err(refused)?;
        self.link.set_token_expiry(claims.exp);
        self.record_binding(user.as_deref(), "Bind");
        self.node.hub.bind(self.key, user.as_deref());
        tracing::info!(user = user.as_deref().unwrap_or(""), "bound");
        self.answer(server_frame::Frame::Bound(Bound { user_id: user.unwrap_or_default() }));
        Ok(())
    }

    /// Queues an answer; an overflow closes the connection as a slow consumer.
    fn answer(&self, frame: server_frame::Frame) {
        let bytes = crate::frame::encode(&ServerFrame { frame: Some(frame) });
        self.link.send(bytes, self.node.hub.outbound_limits());
    }
}
