//! `Push`: checks a request whole, then delivers it to each target device.

use std::sync::Arc;

use tonic::Status;

use crate::hub::Outcome;
use crate::message::{self, Message};
use crate::node::Node;
use crate::proto::device::{self as device, PushKind};
use crate::proto::router::{DeviceResult, PushRequest, PushResponse, Result as Wire, push_request};
use crate::session::DeviceKey;

/// Most devices one request may name.
pub const MAX_DEVICES: usize = 1000;

pub fn push(node: &Node, request: PushRequest) -> Result<PushResponse, Status> {
    let app = super::known_app(node, &request.app_id)?;
    let message = Arc::new(build(node, &request)?);
    let results = match request.target {
        Some(push_request::Target::Devices(devices)) => {
            if devices.device_ids.is_empty() || devices.device_ids.len() > MAX_DEVICES {
                return Err(Status::invalid_argument(format!(
                    "bad_target: name 1 to {MAX_DEVICES} devices, not {}",
                    devices.device_ids.len()
                )));
            }
            to_devices(node, &app, devices.device_ids, &message)
        }
        Some(push_request::Target::User(user)) => {
            if user.user_id.is_empty() {
                return Err(Status::invalid_argument("bad_target: user_id is empty"));
            }
            let keys = node.hub.user_devices(&app, &user.user_id, user.platform());
            keys.into_iter()
                .map(|key| deliver(node, key, &message))
                .collect()
        }
        None => return Err(Status::invalid_argument("bad_target: no target")),
    };
    Ok(PushResponse {
        message_id: message.id.clone(),
        results,
    })
}

fn to_devices(
    node: &Node,
    app: &Arc<str>,
    ids: Vec<String>,
    message: &Arc<Message>,
) -> Vec<DeviceResult> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.into_iter()
        .map(|id| {
            if id.is_empty() || id.len() > 128 {
                return rejected(id, "invalid_device_id");
            }
            if !seen.insert(id.clone()) {
                return rejected(id, "duplicate_device_id");
            }
            deliver(
                node,
                DeviceKey {
                    app: app.clone(),
                    device: id.into(),
                },
                message,
            )
        })
        .collect()
}

fn deliver(node: &Node, key: DeviceKey, message: &Arc<Message>) -> DeviceResult {
    let outcome = node.hub.push(&key, message);
    metrics::counter!("longlink_pushes_total", "result" => outcome.label()).increment(1);
    let device_id = key.device.to_string();
    match outcome {
        Outcome::Sent { seq } => DeviceResult {
            device_id,
            result: Wire::Sent as i32,
            seq,
            reason: String::new(),
        },
        Outcome::NotDelivered { reason } => DeviceResult {
            device_id,
            result: Wire::NotDelivered as i32,
            seq: 0,
            reason: reason.into(),
        },
        Outcome::UnknownDevice => DeviceResult {
            device_id,
            result: Wire::UnknownDevice as i32,
            seq: 0,
            reason: "unknown_device".into(),
        },
    }
}

fn rejected(device_id: String, reason: &str) -> DeviceResult {
    metrics::counter!("longlink_pushes_total", "result" => "rejected").increment(1);
    DeviceResult {
        device_id,
        result: Wire::Rejected as i32,
        seq: 0,
        reason: reason.into(),
    }
}

/// Checks the message of `request` and turns it into the shared, encoded form.
fn build(node: &Node, request: &PushRequest) -> Result<Message, Status> {
    let content = request
        .message
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("bad_message: no message"))?;
    let kind = content.kind();
    match kind {
        PushKind::Unspecified => {
            return Err(Status::invalid_argument("bad_message: kind is unset"));
        }
        PushKind::Notification if content.notification.is_none() => {
            return Err(Status::invalid_argument(
                "bad_message: a notification needs notification fields",
            ));
        }
        PushKind::Badge if content.badge.as_ref().is_none_or(|b| b.change.is_none()) => {
            return Err(Status::invalid_argument(
                "bad_message: a badge needs badge.set or badge.add",
            ));
        }
        _ => {}
    }
    let text = content
        .notification
        .as_ref()
        .map(|n| n.title.len() + n.body.len())
        .unwrap_or(0);
    let size = text + content.data.len();
    let limit = node.settings.max_payload_bytes;
    if size > limit {
        metrics::counter!("longlink_pushes_total", "result" => "payload_too_large").increment(1);
        return Err(Status::invalid_argument(format!(
            "payload_too_large: {size} bytes of title, body and data; the limit is {limit}"
        )));
    }
    if request.request_id.len() > 128 {
        return Err(Status::invalid_argument(
            "bad_request_id: longer than 128 bytes",
        ));
    }
    let now = crate::clock::unix_ms();
    let expires_at_ms = match content.ttl_secs {
        Some(ttl) if ttl > 0 => now + ttl as i64 * 1000,
        _ => 0,
    };
    Ok(Message::new(device::Push {
        message_id: message::new_id(now),
        kind: kind as i32,
        notification: content.notification.clone(),
        badge: content.badge.clone(),
        data: content.data.clone(),
        collapse_key: content.collapse_key.clone(),
        created_at_ms: now,
        expires_at_ms,
        priority: content.priority,
        ..Default::default()
    }))
}
