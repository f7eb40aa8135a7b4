//! The steps the rest of the node records, each turned into a [`Note`]: delivery events
//! from the receipts feed, what a push was and what became of it per device, refused
//! pushes, and a device's connections, closes, token rejections, bindings and reports.
//!
//! Everything here is called on hot paths or under a device's registry entry: it builds
//! a note and hands it over, never more.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Note, Timeline};
use crate::close::CloseReason;
use crate::message::Message;
use crate::proto::device::{DeviceReport, VendorChannel};
use crate::proto::router::{DeviceResult, Event, Result as Wire, push_request};
use crate::session::{DeviceKey, Session};

/// Device ids an accepted push's detail names before it says how many more.
const NAMED: usize = 3;

/// A delivery event from the receipts feed.
pub fn delivery(
    timeline: &Timeline,
    event: Event,
    key: &DeviceKey,
    message_id: &str,
    seq: u64,
    reason: &str,
    session: u64,
) {
    let (name, reason) = match event {
        Event::Sent if reason == "redelivery" => ("redelivered", ""),
        Event::Sent => ("sent", reason),
        Event::Stored => ("stored", reason),
        Event::Acked => ("acked", reason),
        Event::Expired => ("expired", reason),
        Event::Dropped => ("dropped", reason),
        Event::Displayed => ("displayed", reason),
        Event::Opened => ("opened", reason),
        Event::Dismissed => ("dismissed", reason),
        Event::DisplayFailed => ("display_failed", reason),
        Event::Lost | Event::Unspecified => return,
    };
    let mut note = Note::new(name, key).reason(reason).session(session);
    note.message_id = message_id.to_string();
    note.seq = seq;
    timeline.record(note);
}

/// What a push's target was, in words, for its `accepted` entry (nothing when the
/// timeline is off: this runs on every push).
pub fn target(timeline: &Timeline, target: &Option<push_request::Target>) -> String {
    if !timeline.enabled() {
        return String::new();
    }
    match target {
        Some(push_request::Target::Devices(d)) => {
            let named: Vec<&str> = d.device_ids.iter().take(NAMED).map(String::as_str).collect();
            let more = d.device_ids.len().saturating_sub(NAMED);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            format!("devices {}{more}", named.join(", "))
        }
        Some(push_request::Target::User(u)) => format!("user {}", u.user_id),
        Some(push_request::Target::Broadcast(_)) => "every device of the app (broadcast)".into(),
        None => "no target".into(),
    }
}

/// A push that was given a message id, then what it became for each device the hub did
/// not report on itself (not delivered, unknown, rejected).
pub fn accepted(
    timeline: &Timeline,
    app: &Arc<str>,
    request_id: &str,
    message: &Message,
    target: String,
    results: &[DeviceResult],
) {
    let ttl = match message.expires_at_ms {
        _ if !timeline.enabled() => String::new(),
        None if message.ephemeral => "ttl 0".to_string(),
        None => "no expiry".to_string(),
        Some(at) => format!("expires at {}", super::verdict::clock(at)),
    };
    if timeline.enabled() {
        let mut note = app_note("accepted", app);
        // Recorded after the sends it caused; filed at the time the message got its id.
        note.at_ms = created_at(&message.id).unwrap_or(note.at_ms);
        note.first = true;
        note.message_id = message.id.clone();
        note.request_id = request_id.to_string();
        let kind = format!("{:?}", message.kind).to_lowercase();
        note.detail = format!("to {target}; {kind}, {ttl}");
        timeline.record(note);
    }
    let mut groups: Vec<Group> = Vec::new();
    for result in results {
        let event = match result.result() {
            Wire::NotDelivered => "not_delivered",
            Wire::UnknownDevice => "unknown_device",
            Wire::Rejected => "rejected",
            _ => continue,
        };
        match groups.iter_mut().find(|g| g.event == event && g.reason == result.reason) {
            Some(group) => group.devices.push(&result.device_id),
            None => groups.push(Group {
                event,
                reason: &result.reason,
                devices: vec![&result.device_id],
            }),
        }
        // The id of a rejected device may be what was wrong with it: no timeline of its own.
        if event != "rejected" {
            let mut note = app_note(event, app).reason(result.reason.clone());
            note.message_id = message.id.clone();
            note.device = Some(result.device_id.as_str().into());
            note.device_only = true;
            timeline.record(note);
        }
    }
    for group in groups {
        timeline.record(group.note(app, &message.id));
    }
}

/// Devices a push failed for in the same way: one entry in the message's timeline, so
/// that a push to 1,000 offline devices writes one entry there, not 1,000.
struct Group<'a> {
    event: &'static str,
    reason: &'a str,
    devices: Vec<&'a str>,
}

impl Group<'_> {
    fn note(&self, app: &Arc<str>, message_id: &str) -> Note {
        let mut note = app_note(self.event, app).reason(self.reason);
        note.message_id = message_id.to_string();
        note.message_only = true;
        let own_entries = self.event != "rejected";
        note.failures = Some(if own_entries { 0 } else { self.devices.len() as u32 });
        match self.devices.as_slice() {
            [one] if self.event != "rejected" => note.device = Some((*one).into()),
            many => {
                let named: Vec<String> =
                    many.iter().take(NAMED * 4).map(|d| format!("{:?}", truncate(d, 64))).collect();
                let more = many.len().saturating_sub(NAMED * 4);
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                note.detail = format!("{} devices: {}{more}", many.len(), named.join(", "));
            }
        }
        note
    }
}

/// A push refused as a whole (before the router got a message id): kept under its
/// request id when it had one, counted either way. `app` is `None` for apps this server
/// does not know, which are never written.
pub fn refused(timeline: &Timeline, app: Option<&Arc<str>>, request_id: &str, status: &str) {
    let code = status.split(':').next().unwrap_or_default().trim();
    let code = super::reason::metric_label(code);
    let mut note = Note { at_ms: crate::clock::unix_ms(), event: "rejected", ..Note::default() };
    note.reason = code.to_string();
    note.detail = truncate(status, 200).to_string();
    if let Some(app) = app.filter(|_| valid_id(request_id)) {
        note.app = Some(app.clone());
        note.request_id = request_id.to_string();
    }
    timeline.record(note);
}

/// A session established: its connection, and any change of binding or report it
/// brought. `before` is the registry's (user, report) before the connect.
pub fn connected(
    timeline: &Timeline,
    key: &DeviceKey,
    session: &Session,
    peer: SocketAddr,
    user: Option<&str>,
    report: Option<&DeviceReport>,
    before: Option<(Option<String>, Option<DeviceReport>)>,
) {
    let detail = format!(
        "{} from {peer}, heartbeat {} s",
        session.transport.label(),
        session.heartbeat_secs
    );
    timeline.record(Note::new("connected", key).session(session.id()).detail(detail));
    let (old_user, old_report) = before.unwrap_or_default();
    bound(timeline, key, session.id(), old_user.as_deref(), user, "token in Hello");
    if let Some(report) = report {
        reported(timeline, key, session.id(), old_report.as_ref(), report);
    }
}

pub fn closed(timeline: &Timeline, key: &DeviceKey, session: u64, reason: CloseReason) {
    timeline.record(Note::new("closed", key).session(session).reason(reason.label()));
}

/// A handshake or `Bind` refused at its token, for a device id that passed the Hello
/// checks (it is not authenticated: the entry says what was presented, not who).
/// Before a valid token the device id is anyone's to claim: for ids this node has never
/// seen authenticate (`known` false), at most [`UNKNOWN_PER_MINUTE`] rejections a minute
/// are kept, so that made-up ids cannot fill the timeline; the rest are only counted.
pub fn token_rejected(
    timeline: &Timeline,
    key: &DeviceKey,
    reason: CloseReason,
    session: u64,
    known: bool,
) {
    if !known && !unknown_allowed() {
        metrics::counter!("longlink_timeline_dropped_total").increment(1);
        return;
    }
    timeline.record(Note::new("token_rejected", key).session(session).reason(reason.label()));
}

/// Token rejections of never-seen device ids kept per minute, all ids together.
pub const UNKNOWN_PER_MINUTE: u32 = 600;

fn unknown_allowed() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    // The current minute in the high half, the count in it in the low half.
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    let minute = (crate::clock::unix_ms() / 60_000) as u64;
    let mut seen = WINDOW.load(Ordering::Relaxed);
    loop {
        let (at, n) = (seen >> 32, seen as u32);
        let next = if at == minute & 0xffff_ffff { n.saturating_add(1) } else { 1 };
        if next > UNKNOWN_PER_MINUTE {
            return false;
        }
        let value = (minute & 0xffff_ffff) << 32 | next as u64;
        match WINDOW.compare_exchange_weak(seen, value, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(now) => seen = now,
        }
    }
}

/// A change of the user a device is bound to; nothing when there is none.
pub fn bound(
    timeline: &Timeline,
    key: &DeviceKey,
    session: u64,
    old: Option<&str>,
    new: Option<&str>,
    how: &str,
) {
    let note = match (old, new) {
        (a, b) if a == b => return,
        (_, Some(user)) => Note::new("bound", key).user(user),
        (Some(user), None) => Note::new("unbound", key).user(user),
        (None, None) => return,
    };
    timeline.record(note.session(session).detail(how));
}

/// A device report that differs from the one before.
pub fn reported(
    timeline: &Timeline,
    key: &DeviceKey,
    session: u64,
    old: Option<&DeviceReport>,
    new: &DeviceReport,
) {
    if old == Some(new) {
        return;
    }
    timeline.record(Note::new("reported", key).session(session).detail(describe(new)));
}

/// A report in words: vendor channel, its token status, notification permission.
pub fn describe(r: &DeviceReport) -> String {
    let channel = VendorChannel::try_from(r.vendor_channel).unwrap_or(VendorChannel::Unspecified);
    let channel = channel.as_str_name().trim_start_matches("VENDOR_CHANNEL_").to_lowercase();
    let token = match (r.vendor_token_registered, r.vendor_error_code.as_str()) {
        (true, _) => "vendor token registered".to_string(),
        (false, "") => "no vendor token".to_string(),
        (false, code) => format!("vendor token failed ({code})"),
    };
    let notifications = if r.notifications_enabled { "on" } else { "off" };
    let mut text = format!("vendor {channel}, {token}, notifications {notifications}");
    for extra in [&r.os_version, &r.sdk_version] {
        if !extra.is_empty() {
            text.push_str(", ");
            text.push_str(extra);
        }
    }
    text
}

/// The acceptance time a message id starts with (see `message::new_id`).
fn created_at(id: &str) -> Option<i64> {
    i64::from_str_radix(id.get(..12)?, 16).ok()
}

fn app_note(event: &'static str, app: &Arc<str>) -> Note {
    Note { at_ms: crate::clock::unix_ms(), event, app: Some(app.clone()), ..Note::default() }
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && !id.contains('\0')
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
