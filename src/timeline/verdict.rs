//! The one-line verdicts: what is wrong with a device, or with a message, in the words an
//! operator would use ("not connected since 14:02 (heartbeat timeout); 3 messages
//! stored, oldest expires in 2h"). `None` when nothing is. Times are UTC.

use crate::proto::device::{DeviceReport, Platform, VendorChannel};
use crate::proto::router::TimelineEntry;

/// What a device verdict is decided from.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub now_ms: i64,
    /// In the registry: it completed a handshake once.
    pub known: bool,
    pub online: bool,
    pub last_seen_ms: i64,
    pub platform: i32,
    pub user: Option<&'a str>,
    pub report: Option<&'a DeviceReport>,
    pub pending: usize,
    pub oldest_expires_at_ms: i64,
    /// The user the device should be bound to: the one the operator named, or the last
    /// one it was bound to.
    pub wanted_user: Option<&'a str>,
    /// Platforms of the other devices bound to `wanted_user`.
    pub others: Vec<i32>,
    pub timeline: &'a [TimelineEntry],
}

pub fn device(f: &Facts) -> Option<String> {
    let mut clauses = Vec::new();
    if !f.online {
        clauses.extend(connection(f));
        if f.pending > 0 {
            clauses.push(stored(f));
        }
    }
    if f.report.is_some_and(|r| !r.notifications_enabled) {
        clauses.push("notifications disabled on the device".to_string());
    }
    clauses.extend(binding(f));
    clauses.extend(f.report.and_then(vendor));
    (!clauses.is_empty()).then(|| clauses.join("; "))
}

/// Why the device is not connected, from the newest connection step it has.
fn connection(f: &Facts) -> Option<String> {
    let last = f
        .timeline
        .iter()
        .rev()
        .find(|e| matches!(e.event.as_str(), "connected" | "closed" | "token_rejected"));
    match last {
        Some(e) if e.event == "token_rejected" => {
            let words = e.reason.strip_prefix("token_").unwrap_or(&e.reason).replace('_', " ");
            Some(format!("token rejected: {words}"))
        }
        Some(e) if e.event == "closed" => Some(format!(
            "not connected since {} ({})",
            since(e.at_ms, f.now_ms),
            e.reason.replace('_', " ")
        )),
        _ if f.last_seen_ms > 0 => {
            Some(format!("not connected since {}", since(f.last_seen_ms, f.now_ms)))
        }
        _ if f.known => Some("not connected".to_string()),
        _ => None,
    }
}

fn stored(f: &Facts) -> String {
    let n = f.pending;
    let mut text = format!("{n} message{} stored", if n == 1 { "" } else { "s" });
    if f.oldest_expires_at_ms > 0 {
        let left = f.oldest_expires_at_ms - f.now_ms;
        if left > 0 {
            text.push_str(&format!(", oldest expires in {}", span(left)));
        } else {
            text.push_str(", oldest expired");
        }
    }
    text
}

/// The classic case of a login path that never bound this device: its user is bound
/// from another device, and this one is bound to nobody (or to someone else).
fn binding(f: &Facts) -> Option<String> {
    let wanted = f.wanted_user?;
    match f.user {
        Some(user) if user == wanted => None,
        Some(user) => Some(format!("bound to user {user}, not {wanted}")),
        None if f.others.is_empty() => None,
        None => {
            let from = match f.others.as_slice() {
                [one] => with_article(*one),
                many => format!("{} other devices", many.len()),
            };
            let this = platform(f.platform)
                .map(|p| format!("this {p} device"))
                .unwrap_or_else(|| "this device".to_string());
            Some(format!("bound to user {wanted} from {from}; {this} is not bound"))
        }
    }
}

fn vendor(r: &DeviceReport) -> Option<String> {
    let channel = VendorChannel::try_from(r.vendor_channel).unwrap_or(VendorChannel::Unspecified);
    if matches!(channel, VendorChannel::Unspecified | VendorChannel::None)
        || r.vendor_token_registered
    {
        return None;
    }
    let name = channel.as_str_name().trim_start_matches("VENDOR_CHANNEL_").to_lowercase();
    let code = if r.vendor_error_code.is_empty() {
        String::new()
    } else {
        format!(", error {}", r.vendor_error_code)
    };
    Some(format!("vendor token not registered ({name}{code})"))
}

/// What went wrong for a message: each device whose last step was a failure, and a
/// refusal of the whole push.
pub fn message(timeline: &[TimelineEntry]) -> Option<String> {
    let mut last: Vec<(&str, &TimelineEntry)> = Vec::new();
    for e in timeline.iter().filter(|e| !e.device_id.is_empty()) {
        match last.iter_mut().find(|(d, _)| *d == e.device_id) {
            Some(slot) if counts(e) => slot.1 = e,
            Some(_) => {}
            None => last.push((&e.device_id, e)),
        }
    }
    // Entries without a device: a refused push, or devices a push failed for alike.
    let mut failures: Vec<String> = timeline
        .iter()
        .filter(|e| e.device_id.is_empty() && super::reason::is_failure(&e.event))
        .map(|e| match e.detail.split_once(": ") {
            Some((devices, _)) if !e.message_id.is_empty() => {
                format!("{devices}: {}", failure(e))
            }
            _ => failure(e),
        })
        .collect();
    failures.extend(
        last.iter()
            .filter(|(_, e)| super::reason::is_failure(&e.event))
            .map(|(d, e)| format!("{d}: {}", failure(e))),
    );
    let total = failures.len();
    if total > 3 {
        failures.truncate(3);
        failures.push(format!("and {} more", total - 3));
    }
    (!failures.is_empty()).then(|| failures.join("; "))
}

/// Steps that change what became of a delivery (receipts from the app do not).
fn counts(e: &TimelineEntry) -> bool {
    !matches!(e.event.as_str(), "displayed" | "opened" | "dismissed" | "display_failed")
}

fn failure(e: &TimelineEntry) -> String {
    let event = e.event.replace('_', " ");
    match super::reason::meaning(&e.reason) {
        Some(meaning) => format!("{event}: {} ({meaning})", e.reason),
        None if e.reason.is_empty() => event,
        None => format!("{event}: {}", e.reason),
    }
}

pub fn platform(p: i32) -> Option<&'static str> {
    match Platform::try_from(p).unwrap_or(Platform::Unspecified) {
        Platform::Android => Some("Android"),
        Platform::Ios => Some("iOS"),
        Platform::Harmony => Some("HarmonyOS"),
        Platform::Web => Some("web"),
        Platform::Unspecified => None,
    }
}

fn with_article(p: i32) -> String {
    match platform(p) {
        Some(name @ ("Android" | "iOS")) => format!("an {name} device"),
        Some(name) => format!("a {name} device"),
        None => "another device".to_string(),
    }
}

/// `14:02` today, `2026-12-03 14:02` before that.
fn since(at_ms: i64, now_ms: i64) -> String {
    let (date, time) = civil(at_ms);
    let hm = &time[..5];
    if now_ms - at_ms < 20 * 3_600_000 && civil(now_ms).0 == date {
        hm.to_string()
    } else {
        format!("{date} {hm}")
    }
}

/// A duration in its largest unit: `45s`, `12m`, `2h`, `3d`.
pub fn span(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        ..60 => format!("{}s", s.max(0)),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `2026-12-04 01:02:03.456` (UTC).
pub fn clock(at_ms: i64) -> String {
    let (date, time) = civil(at_ms);
    format!("{date} {time} UTC")
}

/// UTC date and time of day (`HH:MM:SS.mmm`) of a Unix time in milliseconds.
fn civil(at_ms: i64) -> (String, String) {
    let days = at_ms.div_euclid(86_400_000);
    let ms = at_ms.rem_euclid(86_400_000);
    let (y, m, d) = date_of(days);
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    (format!("{y:04}-{m:02}-{d:02}"), time)
}

/// Year, month and day of a count of days since 1970-01-01, in the proleptic Gregorian
/// calendar: count whole 400-year eras (146,097 days each) from 0000-03-01, so that the
/// leap day ends each year, then years within the era, then months of 153 days per five.
fn date_of(days: i64) -> (i64, i64, i64) {
    let since_march_0000 = days + 719_468;
    let era = since_march_0000.div_euclid(146_097);
    let day_of_era = since_march_0000.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_spans_read_right() {
        assert_eq!(clock(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(clock(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(clock(1_796_346_123_456), "2026-12-04 01:02:03.456 UTC");
        assert_eq!(span(7_200_000), "2h");
        assert_eq!(span(90_000), "1m");
        assert_eq!(span(3 * 86_400_000), "3d");
    }

    #[test]
    fn an_offline_device_with_stored_messages_reads_as_one_line() {
        let closed = TimelineEntry {
            at_ms: 1_796_346_120_000,
            event: "closed".into(),
            reason: "heartbeat_timeout".into(),
            ..Default::default()
        };
        let timeline = [closed];
        let facts = Facts {
            now_ms: 1_796_346_120_000 + 60_000,
            known: true,
            pending: 3,
            oldest_expires_at_ms: 1_796_346_180_000 + 7_200_000,
            timeline: &timeline,
            ..Default::default()
        };
        assert_eq!(
            device(&facts).unwrap(),
            "not connected since 01:02 (heartbeat timeout); 3 messages stored, oldest expires \
             in 2h"
        );
    }
}
