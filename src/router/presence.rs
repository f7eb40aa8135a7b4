//! `Presence`: whether devices are online, and what they last said about themselves.

use tonic::Status;

use crate::node::Node;
use crate::proto::router::{DevicePresence, PresenceRequest, PresenceResponse};
use crate::session::DeviceKey;

pub fn presence(node: &Node, request: PresenceRequest) -> Result<PresenceResponse, Status> {
    let app = super::known_app(node, &request.app_id)?;
    if request.device_ids.len() > super::push::MAX_DEVICES {
        return Err(Status::invalid_argument("bad_target: at most 1000 devices per request"));
    }
    let now = crate::clock::unix_ms();
    let devices = request
        .device_ids
        .into_iter()
        .map(|id| {
            let key = DeviceKey { app: app.clone(), device: id.as_str().into() };
            one(node, key, id, now)
        })
        .collect();
    Ok(PresenceResponse { devices })
}

pub(super) fn one(node: &Node, key: DeviceKey, device_id: String, now: i64) -> DevicePresence {
    let hub = &node.hub;
    let Some(mut presence) = hub.with_device(&key, |d| DevicePresence {
        device_id: device_id.clone(),
        known: true,
        last_seen_ms: d.last_seen_ms,
        platform: d.platform,
        app_version: d.app_version.to_string(),
        user_id: d.user.as_deref().unwrap_or_default().to_string(),
        report: d.report.as_deref().cloned(),
        ..Default::default()
    }) else {
        return DevicePresence { device_id, ..Default::default() };
    };
    if let Some(session) = hub.session(&key) {
        presence.online = !session.link.is_closing();
        presence.online_since_ms = session.since_ms;
        presence.last_seen_ms = hub.last_seen_unix_ms(&session.link, now);
        presence.session_id = format!("{:x}", session.id());
        presence.transport = session.transport.label().into();
        presence.heartbeat_secs = session.heartbeat_secs;
    }
    presence
}
