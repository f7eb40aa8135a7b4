//! Timelines as JSON and as text. The JSON here is the one shape everything serves:
//! `longlink inspect --json` and `longlink trace --json` print it, and the admin
//! listener's `/api/device` and `/api/message` answer it, so a status page and the
//! command line never disagree.
//!
//! Both objects have `verdict` (a string, or null when nothing is wrong) and `timeline`
//! (oldest first; every entry has `at_ms`, `event`, `reason`, `message_id`, `device_id`,
//! `seq`, `session_id`, `request_id`, `user_id` and `detail`, strings empty when unset).

use serde_json::{Value, json};

use super::verdict::{clock, platform};
use crate::proto::router::{InspectDeviceResponse, TimelineEntry, TraceMessageResponse};

pub fn entry(e: &TimelineEntry) -> Value {
    json!({
        "at_ms": e.at_ms,
        "event": e.event,
        "reason": e.reason,
        "message_id": e.message_id,
        "device_id": e.device_id,
        "seq": e.seq,
        "session_id": e.session_id,
        "request_id": e.request_id,
        "user_id": e.user_id,
        "detail": e.detail,
    })
}

fn verdict(v: &str) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}

pub fn device_json(r: &InspectDeviceResponse) -> Value {
    let p = r.presence.clone().unwrap_or_default();
    json!({
        "app_id": r.app_id,
        "device_id": r.device_id,
        "known": p.known,
        "online": p.online,
        "platform": crate::cli::output::platform_name(p.platform),
        "app_version": p.app_version,
        "user_id": p.user_id,
        "last_seen_ms": p.last_seen_ms,
        "session_id": p.session_id,
        "transport": p.transport,
        "report": p.report.as_ref().map(super::steps::describe),
        "pending": r.pending,
        "oldest_expires_at_ms": r.oldest_expires_at_ms,
        "verdict": verdict(&r.verdict),
        "timeline": r.timeline.iter().map(entry).collect::<Vec<_>>(),
    })
}

pub fn message_json(r: &TraceMessageResponse) -> Value {
    json!({
        "app_id": r.app_id,
        "message_id": r.message_id,
        "request_id": r.request_id,
        "verdict": verdict(&r.verdict),
        "timeline": r.timeline.iter().map(entry).collect::<Vec<_>>(),
    })
}

pub fn device_text(r: &InspectDeviceResponse) -> String {
    let p = r.presence.clone().unwrap_or_default();
    let user =
        if p.user_id.is_empty() { "no user".to_string() } else { format!("user {}", p.user_id) };
    let mut head = format!("device {}/{}", r.app_id, r.device_id);
    if p.known {
        let platform = platform(p.platform).unwrap_or("unknown platform");
        head.push_str(&format!(" ({platform} {}, {user}): ", p.app_version));
        if p.online {
            head.push_str(&format!("online over {} (session {})", p.transport, p.session_id));
        } else {
            head.push_str(&format!("offline, last seen {}", clock(p.last_seen_ms)));
        }
        head.push_str(&format!("; {} pending", r.pending));
    } else {
        head.push_str(": never connected");
    }
    if let Some(report) = &p.report {
        head.push_str(&format!("\n  report: {}", super::steps::describe(report)));
    }
    finish(head, &r.timeline, false, &r.verdict)
}

pub fn message_text(r: &TraceMessageResponse) -> String {
    let mut head = format!("message {}/{}", r.app_id, or_dash(&r.message_id));
    if !r.request_id.is_empty() {
        head.push_str(&format!(" (request {})", r.request_id));
    }
    finish(head, &r.timeline, true, &r.verdict)
}

fn finish(mut text: String, timeline: &[TimelineEntry], devices: bool, verdict: &str) -> String {
    for e in timeline {
        text.push('\n');
        text.push_str(&line(e, devices));
    }
    if timeline.is_empty() {
        text.push_str("\n  (no timeline kept)");
    }
    text.push_str("\nverdict: ");
    text.push_str(if verdict.is_empty() { "nothing wrong found" } else { verdict });
    text
}

/// One step: its time, its event, then whatever it has of reason, device, message,
/// connection, user and detail.
fn line(e: &TimelineEntry, devices: bool) -> String {
    let mut parts = Vec::new();
    if !e.reason.is_empty() {
        parts.push(e.reason.clone());
    }
    if devices && !e.device_id.is_empty() {
        parts.push(format!("device {}", e.device_id));
    }
    if !devices && !e.message_id.is_empty() {
        parts.push(format!("message {}", e.message_id));
    }
    if e.seq > 0 {
        parts.push(format!("seq {}", e.seq));
    }
    if !e.session_id.is_empty() {
        parts.push(format!("session {}", e.session_id));
    }
    if !e.user_id.is_empty() {
        parts.push(format!("user {}", e.user_id));
    }
    if !e.detail.is_empty() {
        parts.push(e.detail.clone());
    }
    format!("  {}  {:<14} {}", clock(e.at_ms), e.event, parts.join("  "))
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}
