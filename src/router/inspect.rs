//! `InspectDevice` and `TraceMessage`: a device's or a message's timeline, read from the
//! store after the timeline writer has caught up, with its one-line verdict. The admin
//! listener's `/api/device` and `/api/message` answer with the same functions.

use std::sync::Arc;

use tonic::Status;

use crate::node::Node;
use crate::proto::router::{
    InspectDeviceRequest, InspectDeviceResponse, TimelineEntry, TraceMessageRequest,
    TraceMessageResponse,
};
use crate::session::DeviceKey;
use crate::timeline::{Kind, verdict};

pub async fn inspect(
    node: &Node,
    request: InspectDeviceRequest,
) -> Result<InspectDeviceResponse, Status> {
    let app = super::known_app(node, &request.app_id)?;
    check_id("device_id", &request.device_id)?;
    let timeline = node.hub.receipts.timeline();
    timeline.settled().await;
    let entries = timeline.read(Kind::Device, &app, &request.device_id);
    let key = DeviceKey { app: app.clone(), device: request.device_id.as_str().into() };
    let now = crate::clock::unix_ms();
    let presence = super::presence::one(node, key.clone(), request.device_id.clone(), now);
    if !presence.known && entries.is_empty() {
        return Err(Status::not_found(format!(
            "unknown_device: `{}` was never seen and nothing is kept about it",
            request.device_id
        )));
    }
    let (pending, oldest) = node
        .hub
        .with_device(&key, |d| d.kept().map(|m| (m.len(), m.oldest_expiry().unwrap_or(0))))
        .flatten()
        .unwrap_or((0, 0));
    let user = (!presence.user_id.is_empty()).then_some(presence.user_id.as_str());
    let wanted = wanted_user(&request.user_id, &entries);
    let others = wanted.map(|u| others(node, &app, u, &key)).unwrap_or_default();
    let facts = verdict::Facts {
        now_ms: now,
        known: presence.known,
        online: presence.online,
        last_seen_ms: presence.last_seen_ms,
        platform: presence.platform,
        user,
        report: presence.report.as_ref(),
        pending,
        oldest_expires_at_ms: oldest,
        wanted_user: wanted,
        others,
        timeline: &entries,
    };
    let verdict = verdict::device(&facts).unwrap_or_default();
    Ok(InspectDeviceResponse {
        app_id: app.to_string(),
        device_id: request.device_id,
        pending: pending as u32,
        oldest_expires_at_ms: oldest,
        verdict,
        presence: Some(presence),
        timeline: entries,
    })
}

/// The user the operator named, else the last one the device's timeline shows it bound
/// to (or unbound from).
fn wanted_user<'a>(named: &'a str, entries: &'a [TimelineEntry]) -> Option<&'a str> {
    if !named.is_empty() {
        return Some(named);
    }
    entries
        .iter()
        .rev()
        .find(|e| matches!(e.event.as_str(), "bound" | "unbound") && !e.user_id.is_empty())
        .map(|e| e.user_id.as_str())
}

/// Platforms of the devices bound to `user` other than `this`.
fn others(node: &Node, app: &Arc<str>, user: &str, this: &DeviceKey) -> Vec<i32> {
    let all = crate::proto::device::Platform::Unspecified;
    node.hub
        .user_devices(app, user, all)
        .into_iter()
        .filter(|key| key != this)
        .filter_map(|key| node.hub.with_device(&key, |d| d.platform))
        .collect()
}

pub async fn trace(
    node: &Node,
    request: TraceMessageRequest,
) -> Result<TraceMessageResponse, Status> {
    let app = super::known_app(node, &request.app_id)?;
    let id = request.message_id;
    check_id("message_id", &id)?;
    let timeline = node.hub.receipts.timeline();
    timeline.settled().await;
    let mut entries = timeline.read(Kind::Message, &app, &id);
    let by_request = timeline.read(Kind::Request, &app, &id);
    let mut message_id = if entries.is_empty() { String::new() } else { id.clone() };
    let mut request_id = String::new();
    if !by_request.is_empty() {
        request_id = id.clone();
        let accepted = by_request.iter().find(|e| e.event == "accepted");
        if let Some(accepted) = accepted.filter(|_| entries.is_empty()) {
            message_id = accepted.message_id.clone();
            entries = timeline.read(Kind::Message, &app, &message_id);
        }
        entries.extend(by_request.into_iter().filter(|e| e.message_id.is_empty()));
        entries.sort_by_key(|e| e.at_ms);
    } else if let Some(accepted) = entries.iter().find(|e| e.event == "accepted") {
        request_id = accepted.request_id.clone();
    }
    if entries.is_empty() {
        return Err(Status::not_found(format!(
            "unknown_message: nothing is kept under the message or request id `{id}`"
        )));
    }
    let verdict = verdict::message(&entries).unwrap_or_default();
    Ok(TraceMessageResponse {
        app_id: app.to_string(),
        message_id,
        request_id,
        timeline: entries,
        verdict,
    })
}

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if (1..=128).contains(&id.len()) && !id.contains('\0') {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "bad_request: {field} is 1 to 128 bytes, without NUL"
        )))
    }
}
