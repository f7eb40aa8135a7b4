//! The one list of reason codes a timeline entry can carry, and what each event means.
//!
//! Three families, all stable snake_case: delivery reasons (below), connection close
//! reasons (`CloseReason::label`) and token rejections (`TokenError::label`). The README
//! section "Reason codes" documents every one; a test checks that nothing here is
//! missing from it. The one exception is `display_failed`, whose reason is the app's
//! own code, passed on verbatim.

use std::sync::OnceLock;

use crate::close::CloseReason;
use crate::token::TokenError;

/// Delivery reasons: why a message did not reach a device, or was refused.
pub const DELIVERY: &[(&str, &str)] = &[
    ("offline", "the device was offline and the TTL was 0: now or never"),
    ("unknown_device", "this server has never seen the device: use a vendor channel"),
    ("ttl", "the TTL ran out before the device acked it"),
    ("pending_cap", "dropped as the oldest past the device's cap of unacked messages"),
    ("collapsed", "replaced by a newer message with the same collapse or badge key"),
    ("slow_consumer", "a TTL-0 message that did not fit the connection's outbound queue"),
    ("replaced", "a TTL-0 message on a connection taken over before the device acked it"),
    ("payload_too_large", "title, body, click action and data over the payload limit"),
    ("bad_message", "the message is incomplete or its fields are over their limits"),
    ("bad_ttl", "the TTL is over the maximum"),
    ("bad_target", "no target, an empty user id, or more than 1,000 devices"),
    ("invalid_device_id", "a device id that is empty, over 128 bytes or holds a NUL"),
    ("duplicate_device_id", "the same device id twice in one push"),
    ("app_not_allowed", "the router key may not act for this app"),
];

/// Every close reason, so that the list below cannot miss one: adding a variant to
/// `CloseReason` fails to compile here until it is listed.
pub fn close_reasons() -> Vec<CloseReason> {
    use CloseReason::*;
    let all = vec![
        PeerClosed,
        Io,
        Malformed,
        FrameTooLarge,
        HelloRequired,
        HandshakeTimeout,
        UnsupportedVersion,
        UnknownApp,
        InvalidHello,
        Token(TokenError::Malformed),
        UnexpectedFrame,
        RateLimited,
        TokenExpired,
        Busy { retry_after_ms: 0 },
        Refused { retry_after_ms: 0 },
        HeartbeatTimeout,
        Replaced,
        SlowConsumer,
        Operator { reconnect_after_ms: None },
        Draining { reconnect_after_ms: 0 },
    ];
    for reason in &all {
        match reason {
            PeerClosed
            | Io
            | Malformed
            | FrameTooLarge
            | HelloRequired
            | HandshakeTimeout
            | UnsupportedVersion
            | UnknownApp
            | InvalidHello
            | Token(_)
            | UnexpectedFrame
            | RateLimited
            | TokenExpired
            | Busy { .. }
            | Refused { .. }
            | HeartbeatTimeout
            | Replaced
            | SlowConsumer
            | Operator { .. }
            | Draining { .. } => {}
        }
    }
    all
}

pub const TOKEN: [TokenError; 7] = [
    TokenError::Malformed,
    TokenError::Algorithm,
    TokenError::Signature,
    TokenError::Expired,
    TokenError::NotYetValid,
    TokenError::WrongApp,
    TokenError::WrongDevice,
];

/// Every reason code the gateway can put in a timeline, sorted.
pub fn all() -> &'static [&'static str] {
    static ALL: OnceLock<Vec<&'static str>> = OnceLock::new();
    ALL.get_or_init(collect)
}

fn collect() -> Vec<&'static str> {
    let mut codes: Vec<&'static str> = DELIVERY.iter().map(|(code, _)| *code).collect();
    codes.extend(close_reasons().into_iter().map(CloseReason::label));
    codes.extend(TOKEN.iter().map(|t| t.label()));
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// What a delivery reason means, for verdicts.
pub fn meaning(code: &str) -> Option<&'static str> {
    DELIVERY.iter().find(|(c, _)| *c == code).map(|(_, m)| *m)
}

/// Events whose reason is a failure, counted in `longlink_delivery_failures_total`.
pub fn is_failure(event: &str) -> bool {
    matches!(event, "not_delivered" | "unknown_device" | "expired" | "dropped" | "rejected")
}

/// Events a device's timeline folds when they repeat within a minute (counted, not
/// written again): delivery failures, and token rejections, which anyone who can reach
/// the device port can cause for any device id before it authenticates.
pub fn folds(event: &str) -> bool {
    is_failure(event) || event == "token_rejected"
}

/// The metric label for a failure reason: the code itself when it is one of ours, so
/// that label values stay a small fixed set.
pub fn metric_label(code: &str) -> &'static str {
    all().binary_search(&code).map(|i| all()[i]).unwrap_or("other")
}

/// Delivery steps that happen to every message on every device; a device's own
/// timeline leaves them to the message's.
pub fn is_routine(event: &str) -> bool {
    matches!(
        event,
        "accepted" | "sent" | "redelivered" | "acked" | "displayed" | "opened" | "dismissed"
    )
}
