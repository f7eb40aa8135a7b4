//! `Push`: checks a request whole, hands the message to each target device, and answers
//! once everything it stored is durable. A request id seen before returns the first
//! answer and delivers nothing. A dry run goes through the same checks and answers what
//! would happen, changing nothing.

use std::sync::Arc;

use tonic::Status;

use crate::hub::Outcome;
use crate::message::{self, Message};
use crate::node::Node;
use crate::proto::device::{self as device, PushKind};
use crate::proto::router::{BroadcastResult, DeviceResult, PushRequest, PushResponse};
use crate::proto::router::{Result as Wire, push_request};
use crate::requests::Answer;
use crate::session::DeviceKey;

/// Most devices one request may name.
pub const MAX_DEVICES: usize = 1000;

pub async fn push(node: &Node, request: PushRequest) -> Result<PushResponse, Status> {
    let app = super::known_app(node, &request.app_id)?;
    if request.request_id.len() > 128 || request.request_id.contains('\0') {
        return Err(Status::invalid_argument("bad_request_id: 1 to 128 bytes, without NUL"));
    }
    // A dry run takes no idempotency slot. With a request id already answered it gets
    // that answer, as a retry would; otherwise it is answered as a first attempt would be.
    if request.dry_run
        && let Some(first) = node.requests.answered(&app, &request.request_id)
    {
        metrics::counter!("longlink_dry_runs_total").increment(1);
        return Ok(first);
    }
    if request.request_id.is_empty() || request.dry_run {
        let (response, wrote) = written(node, || checked(node, &app, request));
        return if wrote { durable(node, response?).await } else { response };
    }
    let id = request.request_id.clone();
    let mut slot = node.requests.slot(&app, &id).await;
    if let Some(first) = slot.as_ref() {
        metrics::counter!("longlink_pushes_total", "result" => "idempotent_replay").increment(1);
        return Ok(first.response.clone());
    }
    let response = checked(node, &app, request)?;
    let retention = node.settings.max_ttl_secs as i64 * 1000;
    let answer = Answer { expires_at_ms: crate::clock::unix_ms() + retention, response };
    node.requests.remember(&mut slot, node.hub.store(), &app, &id, answer.clone());
    durable(node, answer.response).await
}

/// Delivers a request without a request id; when it wrote to the store (the second
/// value), the answer is not final until [`durable`].
pub fn prepare(node: &Node, request: PushRequest) -> (Result<PushResponse, Status>, bool) {
    written(node, || {
        let app = super::known_app(node, &request.app_id)?;
        checked(node, &app, request)
    })
}

/// Runs `push` and says whether the store was written meanwhile: a message kept (any
/// TTL but 0), one it replaced or pushed out (a collapse key, a badge, a full mailbox
/// or broadcast log), a registry record. Only such an answer waits for the store; a
/// TTL-0 push that wrote nothing is answered at once. Writes by other pushes at the same
/// time count too, which only makes this push wait as it always used to.
fn written<T>(node: &Node, push: impl FnOnce() -> T) -> (T, bool) {
    let store = node.hub.store();
    let before = store.enqueued();
    let result = push();
    (result, store.enqueued() != before)
}

/// [`deliver`], keeping a refusal in the timeline (unless it was a dry run).
fn checked(node: &Node, app: &Arc<str>, request: PushRequest) -> Result<PushResponse, Status> {
    let (id, dry) = (request.request_id.clone(), request.dry_run);
    deliver(node, app, request).inspect_err(|s| {
        if !dry {
            refused(node, app, &id, s);
        }
    })
}

/// Keeps a refused push in the timeline under its request id.
fn refused(node: &Node, app: &Arc<str>, request_id: &str, status: &Status) {
    let timeline = node.hub.receipts.timeline();
    crate::timeline::steps::refused(timeline, Some(app), request_id, status.message());
}

/// Waits until every store write enqueued so far is durable, then answers.
pub async fn durable(node: &Node, response: PushResponse) -> Result<PushResponse, Status> {
    node.hub.store().sync().await.map_err(|e| {
        tracing::error!(error = %e, "push not answered: store write failed");
        Status::unavailable(format!("store_unavailable: {e}"))
    })?;
    Ok(response)
}

/// Checks the request and hands the message to every target; does not wait for the store.
fn deliver(node: &Node, app: &Arc<str>, request: PushRequest) -> Result<PushResponse, Status> {
    let message = Arc::new(build(node, &request)?);
    let dry = request.dry_run;
    if dry {
        metrics::counter!("longlink_dry_runs_total").increment(1);
    }
    let target = match dry {
        true => String::new(),
        false => crate::timeline::steps::target(node.hub.receipts.timeline(), &request.target),
    };
    let results = match request.target {
        Some(push_request::Target::Devices(devices)) => {
            if devices.device_ids.is_empty() || devices.device_ids.len() > MAX_DEVICES {
                return Err(Status::invalid_argument(format!(
                    "bad_target: name 1 to {MAX_DEVICES} devices, not {}",
                    devices.device_ids.len()
                )));
            }
            to_devices(node, app, devices.device_ids, &message, dry)
        }
        Some(push_request::Target::User(user)) => {
            if user.user_id.is_empty() {
                return Err(Status::invalid_argument("bad_target: user_id is empty"));
            }
            let keys = node.hub.user_devices(app, &user.user_id, user.platform());
            keys.into_iter().map(|key| to_one(node, key, &message, dry)).collect()
        }
        Some(push_request::Target::Broadcast(broadcast)) => {
            let fanout = if dry {
                node.hub.preview_broadcast(app, &message)
            } else {
                metrics::counter!("longlink_pushes_total", "result" => "broadcast").increment(1);
                let new_devices = broadcast.new_devices;
                let fanout = blocking(|| node.hub.broadcast(app, message.clone(), new_devices));
                // A broadcast's timeline is this one entry: per-device steps would be one
                // per device of the app (subscribers of Receipts still get them).
                let target = format!(
                    "{target}, seq {}: sent to {}, {} to catch up, {} not delivered",
                    fanout.seq, fanout.sent, fanout.stored, fanout.not_delivered
                );
                let timeline = node.hub.receipts.timeline();
                let id = &request.request_id;
                crate::timeline::steps::accepted(timeline, app, id, &message, target, &[]);
                fanout
            };
            let broadcast = BroadcastResult {
                broadcast_seq: fanout.seq,
                sent: fanout.sent,
                stored: fanout.stored,
                not_delivered: fanout.not_delivered,
            };
            let id = if dry { String::new() } else { message.id.clone() };
            return Ok(PushResponse {
                message_id: id,
                results: vec![],
                broadcast: Some(broadcast),
            });
        }
        None => return Err(Status::invalid_argument("bad_target: no target")),
    };
    if !dry {
        let timeline = node.hub.receipts.timeline();
        let id = &request.request_id;
        crate::timeline::steps::accepted(timeline, app, id, &message, target, &results);
    }
    let message_id = if dry { String::new() } else { message.id.clone() };
    Ok(PushResponse { message_id, results, broadcast: None })
}

/// Runs a long synchronous step (a fan-out to every device of an app, whose writes take
/// a whole core for a while) without holding up the other tasks of the runtime thread
/// that called it: on a multi-thread runtime they move to another thread meanwhile.
fn blocking<T>(step: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(step),
        _ => step(),
    }
}

fn to_devices(
    node: &Node,
    app: &Arc<str>,
    ids: Vec<String>,
    message: &Arc<Message>,
    dry: bool,
) -> Vec<DeviceResult> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.into_iter()
        .map(|id| {
            if id.is_empty() || id.len() > 128 || id.contains('\0') {
                return rejected(id, "invalid_device_id", dry);
            }
            if !seen.insert(id.clone()) {
                return rejected(id, "duplicate_device_id", dry);
            }
            to_one(node, DeviceKey { app: app.clone(), device: id.into() }, message, dry)
        })
        .collect()
}

fn to_one(node: &Node, key: DeviceKey, message: &Arc<Message>, dry: bool) -> DeviceResult {
    let (outcome, note) = if dry {
        node.hub.preview(&key, message)
    } else {
        let outcome = node.hub.push(&key, message);
        metrics::counter!("longlink_pushes_total", "result" => outcome.label()).increment(1);
        (outcome, "")
    };
    let (result, seq, reason) = match outcome {
        Outcome::Sent { seq } => (Wire::Sent, seq, note),
        Outcome::Stored { seq } => (Wire::Stored, seq, note),
        Outcome::NotDelivered { reason } => (Wire::NotDelivered, 0, reason),
        Outcome::UnknownDevice => (Wire::UnknownDevice, 0, "unknown_device"),
    };
    DeviceResult {
        device_id: key.device.to_string(),
        result: result as i32,
        seq,
        reason: reason.into(),
    }
}

fn rejected(device_id: String, reason: &str, dry: bool) -> DeviceResult {
    if !dry {
        metrics::counter!("longlink_pushes_total", "result" => "rejected").increment(1);
    }
    DeviceResult { device_id, result: Wire::Rejected as i32, seq: 0, reason: reason.into() }
}

/// Checks the message of `request` and turns it into the shared, encoded form.
fn build(node: &Node, request: &PushRequest) -> Result<Message, Status> {
    let content = request
        .message
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("bad_message: no message"))?;
    let kind = content.kind();
    check_kind(kind, content)?;
    let text = content
        .notification
        .as_ref()
        .map(|n| n.title.len() + n.body.len() + n.click_action.len())
        .unwrap_or(0);
    let size = text + content.data.len();
    if content.collapse_key.len() > 128 || content.badge.as_ref().is_some_and(|b| b.key.len() > 64)
    {
        return Err(Status::invalid_argument(
            "bad_message: collapse_key is at most 128 bytes, badge.key at most 64",
        ));
    }
    let limit = node.settings.max_payload_bytes;
    if size > limit {
        if !request.dry_run {
            metrics::counter!("longlink_pushes_total", "result" => "payload_too_large")
                .increment(1);
        }
        return Err(Status::invalid_argument(format!(
            "payload_too_large: {size} bytes of title, body, click action and data; the limit is {limit}"
        )));
    }
    let ttl = content.ttl_secs.unwrap_or(node.settings.default_ttl_secs);
    if ttl > node.settings.max_ttl_secs {
        return Err(Status::invalid_argument(format!(
            "bad_ttl: {ttl} s is over the maximum of {} s",
            node.settings.max_ttl_secs
        )));
    }
    let now = crate::clock::unix_ms();
    let push = device::Push {
        message_id: message::new_id(now),
        kind: kind as i32,
        notification: content.notification.clone(),
        badge: content.badge.clone(),
        data: content.data.clone(),
        collapse_key: content.collapse_key.clone(),
        created_at_ms: now,
        expires_at_ms: if ttl == 0 { 0 } else { now + ttl as i64 * 1000 },
        priority: content.priority,
        ..Default::default()
    };
    Ok(if ttl == 0 { Message::ephemeral(push) } else { Message::new(push) })
}

fn check_kind(kind: PushKind, content: &crate::proto::router::Message) -> Result<(), Status> {
    let problem = match kind {
        PushKind::Unspecified => "kind is unset or unknown",
        PushKind::Notification
            if content
                .notification
                .as_ref()
                .is_none_or(|n| n.title.is_empty() && n.body.is_empty()) =>
        {
            "a notification needs a title or a body"
        }
        PushKind::Badge if content.badge.as_ref().is_none_or(|b| b.change.is_none()) => {
            "a badge needs badge.set or badge.add"
        }
        _ => return Ok(()),
    };
    Err(Status::invalid_argument(format!("bad_message: {problem}")))
}
