//! JSON renderings of protocol messages for the command line: one object per line, and
//! [`say`], which prints them.

use serde_json::{Value, json};

use crate::proto::device::{
    DeviceReport, Kick, KickReason, Platform, Push, PushKind, VendorChannel, badge,
};
use crate::proto::router::{DevicePresence, Event, PushResponse, ReceiptEvent, Result as Wire};

/// Prints one line on stdout. A reader that went away (`longlink trace ... | head`) ends
/// the command quietly, as a closed pipe ends any Unix tool, rather than with a panic.
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        tracing::warn!(error = %e, "stdout write failed");
    }
}

/// A protobuf enum value's name as the command line spells it: `KICK_REASON_OPERATOR`
/// is `operator`.
fn name(full: &str, prefix: &str) -> String {
    full.trim_start_matches(prefix).to_ascii_lowercase()
}

/// A platform as `--platform` spells it (`android`, `ios`, `harmony`, `web`), or
/// `unspecified`; every JSON output uses this spelling.
pub fn platform_name(platform: i32) -> String {
    let platform = Platform::try_from(platform).unwrap_or(Platform::Unspecified);
    name(platform.as_str_name(), "PLATFORM_")
}

pub fn push(p: &Push) -> Value {
    let mut v = json!({
        "event": "push",
        "message_id": p.message_id,
        "seq": p.seq,
        "kind": kind(p.kind()),
        "redelivery": p.redelivery,
        "created_at_ms": p.created_at_ms,
        "expires_at_ms": p.expires_at_ms,
    });
    if p.broadcast_seq > 0 {
        v["broadcast_seq"] = json!(p.broadcast_seq);
    }
    if let Some(n) = &p.notification {
        v["title"] = json!(n.title);
        v["body"] = json!(n.body);
        if !n.click_action.is_empty() {
            v["click_action"] = json!(n.click_action);
        }
    }
    if let Some(b) = &p.badge {
        v["badge"] = match b.change {
            Some(badge::Change::Set(n)) => json!({ "key": b.key, "set": n }),
            Some(badge::Change::Add(n)) => json!({ "key": b.key, "add": n }),
            None => json!({ "key": b.key }),
        };
    }
    if !p.data.is_empty() {
        v["data"] = json!(String::from_utf8_lossy(&p.data));
    }
    if !p.collapse_key.is_empty() {
        v["collapse_key"] = json!(p.collapse_key);
    }
    v
}

pub fn kind(k: PushKind) -> &'static str {
    match k {
        PushKind::Notification => "notification",
        PushKind::Badge => "badge",
        PushKind::Silent => "silent",
        PushKind::Unspecified => "unspecified",
    }
}

pub fn kick(k: &Kick) -> Value {
    let reason = KickReason::try_from(k.reason).unwrap_or(KickReason::Unspecified);
    json!({
        "event": "kick",
        "reason": name(reason.as_str_name(), "KICK_REASON_"),
        "reconnect": k.reconnect,
        "reconnect_after_ms": k.reconnect_after_ms,
    })
}

pub fn push_response(r: &PushResponse) -> Value {
    let results: Vec<Value> = r
        .results
        .iter()
        .map(|d| {
            let result = match d.result() {
                Wire::Sent => "sent",
                Wire::Stored => "stored",
                Wire::NotDelivered => "not_delivered",
                Wire::UnknownDevice => "unknown_device",
                Wire::Rejected => "rejected",
                Wire::Unspecified => "unspecified",
            };
            let mut v = json!({ "device_id": d.device_id, "result": result });
            if d.seq > 0 {
                v["seq"] = json!(d.seq);
            }
            if !d.reason.is_empty() {
                v["reason"] = json!(d.reason);
            }
            v
        })
        .collect();
    let mut v = json!({ "message_id": r.message_id, "results": results });
    if let Some(b) = &r.broadcast {
        v["broadcast"] = json!({
            "broadcast_seq": b.broadcast_seq,
            "sent": b.sent,
            "stored": b.stored,
            "not_delivered": b.not_delivered,
        });
    }
    v
}

pub fn presence(p: &DevicePresence) -> Value {
    if !p.known {
        return json!({ "device_id": p.device_id, "known": false, "online": false });
    }
    let mut v = json!({
        "device_id": p.device_id,
        "known": true,
        "online": p.online,
        "last_seen_ms": p.last_seen_ms,
        "platform": platform_name(p.platform),
        "app_version": p.app_version,
        "user_id": p.user_id,
    });
    if p.online {
        v["online_since_ms"] = json!(p.online_since_ms);
        v["session_id"] = json!(p.session_id);
        v["transport"] = json!(p.transport);
        v["heartbeat_secs"] = json!(p.heartbeat_secs);
    }
    if let Some(r) = &p.report {
        v["report"] = report(r);
    }
    v
}

fn report(r: &DeviceReport) -> Value {
    let channel = VendorChannel::try_from(r.vendor_channel).unwrap_or(VendorChannel::Unspecified);
    json!({
        "vendor_channel": channel.as_str_name(),
        "vendor_token_registered": r.vendor_token_registered,
        "vendor_error_code": r.vendor_error_code,
        "notifications_enabled": r.notifications_enabled,
        "os_version": r.os_version,
        "sdk_version": r.sdk_version,
    })
}

pub fn receipt(e: &ReceiptEvent) -> Value {
    let event = Event::try_from(e.event).unwrap_or(Event::Unspecified);
    let name = name(event.as_str_name(), "EVENT_");
    let mut v = json!({ "event": name, "app_id": e.app_id, "at_ms": e.at_ms });
    if event == Event::Lost {
        v["lost"] = json!(e.lost);
        return v;
    }
    v["device_id"] = json!(e.device_id);
    v["message_id"] = json!(e.message_id);
    if e.seq > 0 {
        v["seq"] = json!(e.seq);
    }
    if e.broadcast_seq > 0 {
        v["broadcast_seq"] = json!(e.broadcast_seq);
    }
    if !e.reason.is_empty() {
        v["reason"] = json!(e.reason);
    }
    v
}
