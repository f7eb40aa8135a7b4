//! Why a connection ends, and the one mapping from that reason to the frame the app is
//! sent, the metric label and the log level, so that the three can never disagree.

use crate::proto::device::{
    Error as ErrorFrame, ErrorCode, Kick, KickReason, ServerFrame, server_frame,
};
use crate::token::TokenError;

/// Every way a connection can end. Peer-caused reasons are logged at debug, our own
/// decisions at info, faults at warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The app closed the socket (EOF) or it failed under us (reset, broken pipe).
    PeerClosed,
    /// The stream failed with an error other than a plain close (TLS alert, for example).
    Io,
    Malformed,
    FrameTooLarge,
    HelloRequired,
    HandshakeTimeout,
    UnsupportedVersion,
    UnknownApp,
    InvalidHello,
    Token(TokenError),
    UnexpectedFrame,
    /// More inbound frames per second than the configured allowance.
    RateLimited,
    /// The session's device token expired.
    TokenExpired,
    /// At the handshake admission limit; carries the retry delay in milliseconds.
    Busy {
        retry_after_ms: u32,
    },
    /// Refused because the server is draining; carries the retry delay in milliseconds.
    Refused {
        retry_after_ms: u32,
    },
    HeartbeatTimeout,
    Replaced,
    SlowConsumer,
    Operator {
        reconnect_after_ms: Option<u32>,
    },
    Draining {
        reconnect_after_ms: u32,
    },
}

/// One of each reason that ends in a `Kick`: the label set of `longlink_kicks_total`.
pub const KICKS: [CloseReason; 6] = [
    CloseReason::HeartbeatTimeout,
    CloseReason::Replaced,
    CloseReason::SlowConsumer,
    CloseReason::TokenExpired,
    CloseReason::Operator { reconnect_after_ms: None },
    CloseReason::Draining { reconnect_after_ms: 0 },
];

/// How loud a close is in the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
}

impl CloseReason {
    /// The metric label and log field for this reason; a small fixed set.
    pub fn label(self) -> &'static str {
        use CloseReason::*;
        match self {
            PeerClosed => "peer_closed",
            Io => "io_error",
            Malformed => "malformed_frame",
            FrameTooLarge => "frame_too_large",
            HelloRequired => "hello_required",
            HandshakeTimeout => "handshake_timeout",
            UnsupportedVersion => "unsupported_version",
            UnknownApp => "unknown_app",
            InvalidHello => "invalid_hello",
            Token(e) => e.label(),
            UnexpectedFrame => "unexpected_frame",
            RateLimited => "rate_limited",
            TokenExpired => "session_token_expired",
            Busy { .. } => "busy",
            Refused { .. } => "draining_refused",
            HeartbeatTimeout => "heartbeat_timeout",
            Replaced => "replaced",
            SlowConsumer => "slow_consumer",
            Operator { .. } => "operator",
            Draining { .. } => "draining",
        }
    }

    /// True when the app is told with a `Kick` (a working session the server ends), which
    /// is what `longlink_kicks_total` counts.
    pub fn is_kick(self) -> bool {
        use CloseReason::*;
        matches!(
            self,
            HeartbeatTimeout
                | Replaced
                | SlowConsumer
                | TokenExpired
                | Operator { .. }
                | Draining { .. }
        )
    }

    pub fn level(self) -> Level {
        use CloseReason::*;
        match self {
            Replaced | SlowConsumer | Operator { .. } | Draining { .. } | Busy { .. } => {
                Level::Info
            }
            _ => Level::Debug,
        }
    }

    /// The last frame to send the app before closing, if any. `spread_ms` is the
    /// randomized reconnect delay for reasons whose cause may repeat on reconnect (a slow
    /// consumer), so that a device does not loop.
    pub fn frame(self, spread_ms: u32) -> Option<ServerFrame> {
        use CloseReason::*;
        let frame = match self {
            PeerClosed | Io => return None,
            HeartbeatTimeout => kick(KickReason::HeartbeatTimeout, Some(0)),
            Replaced => kick(KickReason::Replaced, None),
            SlowConsumer => kick(KickReason::SlowConsumer, Some(spread_ms)),
            TokenExpired => kick(KickReason::TokenExpired, Some(0)),
            Operator { reconnect_after_ms } => kick(KickReason::Operator, reconnect_after_ms),
            Draining { reconnect_after_ms } => kick(KickReason::Draining, Some(reconnect_after_ms)),
            other => server_frame::Frame::Error(error(other)),
        };
        Some(ServerFrame { frame: Some(frame) })
    }
}

fn kick(reason: KickReason, reconnect_after_ms: Option<u32>) -> server_frame::Frame {
    server_frame::Frame::Kick(Kick {
        reason: reason as i32,
        reconnect: reconnect_after_ms.is_some(),
        reconnect_after_ms: reconnect_after_ms.unwrap_or(0),
        message: String::new(),
    })
}

fn error(reason: CloseReason) -> ErrorFrame {
    use CloseReason::*;
    let (code, retry_after_ms) = match reason {
        Malformed => (ErrorCode::MalformedFrame, 0),
        FrameTooLarge => (ErrorCode::FrameTooLarge, 0),
        HelloRequired => (ErrorCode::HelloRequired, 0),
        HandshakeTimeout => (ErrorCode::HandshakeTimeout, 0),
        UnsupportedVersion => (ErrorCode::UnsupportedVersion, 0),
        UnknownApp => (ErrorCode::UnknownApp, 0),
        InvalidHello => (ErrorCode::InvalidHello, 0),
        Token(e) => (e.code(), 0),
        UnexpectedFrame => (ErrorCode::UnexpectedFrame, 0),
        RateLimited => (ErrorCode::RateLimited, 0),
        Busy { retry_after_ms } => (ErrorCode::Busy, retry_after_ms),
        Refused { retry_after_ms } => (ErrorCode::Draining, retry_after_ms),
        _ => (ErrorCode::Unspecified, 0),
    };
    ErrorFrame { code: code as i32, message: reason.label().to_string(), retry_after_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reason an app can be told about gets a distinct, non-default code or kick.
    #[test]
    fn every_told_reason_has_its_own_wire_code() {
        let reasons = [
            CloseReason::Malformed,
            CloseReason::FrameTooLarge,
            CloseReason::HelloRequired,
            CloseReason::HandshakeTimeout,
            CloseReason::UnsupportedVersion,
            CloseReason::UnknownApp,
            CloseReason::InvalidHello,
            CloseReason::Token(TokenError::Malformed),
            CloseReason::Token(TokenError::Algorithm),
            CloseReason::Token(TokenError::Signature),
            CloseReason::Token(TokenError::Expired),
            CloseReason::Token(TokenError::NotYetValid),
            CloseReason::Token(TokenError::WrongApp),
            CloseReason::Token(TokenError::WrongDevice),
            CloseReason::UnexpectedFrame,
            CloseReason::RateLimited,
            CloseReason::TokenExpired,
            CloseReason::Busy { retry_after_ms: 5 },
            CloseReason::Refused { retry_after_ms: 5 },
            CloseReason::HeartbeatTimeout,
            CloseReason::Replaced,
            CloseReason::SlowConsumer,
            CloseReason::Operator { reconnect_after_ms: None },
            CloseReason::Draining { reconnect_after_ms: 5 },
        ];
        let mut seen = std::collections::HashSet::new();
        for reason in reasons {
            let key = match reason.frame(7).and_then(|f| f.frame) {
                Some(server_frame::Frame::Error(e)) => {
                    assert_ne!(e.code, 0, "{reason:?} has no code");
                    format!("error:{}", e.code)
                }
                Some(server_frame::Frame::Kick(k)) => {
                    assert_ne!(k.reason, 0, "{reason:?} has no kick reason");
                    format!("kick:{}", k.reason)
                }
                other => panic!("{reason:?} maps to {other:?}"),
            };
            assert!(seen.insert(key), "{reason:?} shares its wire code");
            assert!(seen.insert(reason.label().to_string()), "{reason:?} shares its label");
        }
    }

    /// A slow consumer that came straight back would overflow again: its kick carries the
    /// spread delay it is given, never zero.
    #[test]
    fn a_slow_consumer_is_told_to_come_back_after_the_spread_delay() {
        let Some(server_frame::Frame::Kick(k)) =
            CloseReason::SlowConsumer.frame(12_345).unwrap().frame
        else {
            panic!("slow consumer must be a kick");
        };
        assert!(k.reconnect);
        assert_eq!(k.reconnect_after_ms, 12_345);
    }

    #[test]
    fn kicks_lists_exactly_the_reasons_told_with_a_kick() {
        let kicks_frame = |r: CloseReason| {
            matches!(r.frame(0).and_then(|f| f.frame), Some(server_frame::Frame::Kick(_)))
        };
        assert!(KICKS.iter().all(|r| r.is_kick() && kicks_frame(*r)));
        for reason in [CloseReason::PeerClosed, CloseReason::Malformed, CloseReason::RateLimited] {
            assert!(!reason.is_kick() && !kicks_frame(reason), "{reason:?}");
        }
    }

    #[test]
    fn replaced_tells_the_app_not_to_reconnect() {
        let Some(server_frame::Frame::Kick(k)) = CloseReason::Replaced.frame(7).unwrap().frame
        else {
            panic!("replaced must be a kick");
        };
        assert!(!k.reconnect);
    }
}
