//! From accepted socket to established session: TLS (when the listener has it), the
//! `Hello` frame, its token, and the `Welcome` answer, all under one deadline.
//!
//! The handshake runs in its own boxed future so that its buffers are freed once it is
//! over; an established connection keeps none of them.

use std::sync::Arc;

use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::close::CloseReason;
use crate::frame::{Decoder, FrameError};
use crate::hub::Profile;
use crate::link::Link;
use crate::node::Node;
use crate::proto::device::{
    ClientFrame, DeviceReport, Hello, ServerFrame, Welcome, client_frame, server_frame,
};
use crate::session::{DeviceKey, Session, Transport};
use crate::stream::{Either, Stream};
use crate::tls_stream::Acceptor;

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A connection that passed its handshake; the session is not in the table yet.
#[derive(Debug)]
pub struct Established {
    pub stream: Stream,
    /// Holds any bytes the app sent after `Hello`.
    pub decoder: Decoder,
    pub key: DeviceKey,
    pub profile: Profile,
    pub session: Session,
    /// The encoded `Welcome`, written once the session is in the table, so that a router
    /// call made as soon as the app sees it finds the device online.
    pub welcome: bytes::Bytes,
}

/// A failed handshake: why, and the stream when there is one to tell the app on.
#[derive(Debug)]
pub struct Failed {
    pub reason: CloseReason,
    pub stream: Option<Stream>,
}

/// Runs the TLS handshake (if `tls` is set) and the protocol handshake, both before
/// `deadline`. A timeout after TLS keeps the stream, so the app is told why.
///
/// Note: a deadline that passes while TLS itself is unfinished is counted as
/// `handshake_timeout` but sends no frame: there is no TLS session yet to carry one.
pub async fn run(
    node: &Arc<Node>,
    socket: TcpStream,
    tls: Option<Acceptor>,
    deadline: tokio::time::Instant,
) -> Result<Established, Failed> {
    let timed_out = |stream| Failed { reason: CloseReason::HandshakeTimeout, stream };
    let (mut stream, transport) = match tls {
        None => (Either::Tcp(socket), Transport::Tcp),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(socket)).await {
            Ok(Ok(s)) => (Either::Tls(Box::new(s)), Transport::Tls),
            Ok(Err(_)) => return Err(Failed { reason: CloseReason::Io, stream: None }),
            Err(_) => return Err(timed_out(None)),
        },
    };
    match tokio::time::timeout_at(deadline, greet(node, &mut stream, transport)).await {
        Ok(Ok((decoder, key, profile, session, welcome))) => {
            Ok(Established { stream, decoder, key, profile, session, welcome })
        }
        Ok(Err(reason)) => Err(Failed { reason, stream: Some(stream) }),
        Err(_) => Err(timed_out(Some(stream))),
    }
}

async fn greet(
    node: &Arc<Node>,
    stream: &mut Stream,
    transport: Transport,
) -> Result<(Decoder, DeviceKey, Profile, Session, bytes::Bytes), CloseReason> {
    let mut decoder = Decoder::new(node.settings.max_hello_frame_bytes);
    let hello = read_hello(stream, &mut decoder).await?;
    let (key, user, token_exp) = authenticate(node, &hello)?;
    if node.is_draining() {
        return Err(CloseReason::Refused { retry_after_ms: node.settings.reconnect_delay_ms() });
    }
    let settings = &node.settings;
    // A Hello is costly work too: a device reconnecting in a loop spends its allowance.
    let now_ms = node.hub.heartbeats.now_ms();
    let carried = node.hub.budget(&key);
    let Some(budget) = crate::budget::take(carried, now_ms, settings.max_frames_per_sec) else {
        return Err(CloseReason::RateLimited);
    };
    let heartbeat_secs = settings.heartbeat_secs(hello.heartbeat_secs);
    let silence_limit_ms = settings.silence_limit_ms(heartbeat_secs);
    let id = node.next_session_id();
    let welcome = Welcome {
        session_id: format!("{id:x}"),
        heartbeat_secs,
        server_time_ms: crate::clock::unix_ms(),
        silence_limit_ms: silence_limit_ms as u32,
        max_frame_bytes: settings.max_frame_bytes as u32,
        user_id: user.clone().unwrap_or_default(),
    };
    let frame = ServerFrame { frame: Some(server_frame::Frame::Welcome(welcome)) };
    let welcome = crate::frame::encode(&frame);
    decoder.set_limit(settings.max_frame_bytes);
    let link = Arc::new(Link::new(id, silence_limit_ms, now_ms));
    link.set_token_expiry(token_exp);
    link.carry_budget(budget);
    let session = Session { link, transport, since_ms: crate::clock::unix_ms(), heartbeat_secs };
    let profile = Profile {
        platform: hello.platform,
        app_version: hello.app_version,
        user,
        report: hello.report,
        acked_seq: hello.acked_seq,
        broadcast_cursor: hello.broadcast_cursor,
    };
    Ok((decoder, key, profile, session, welcome))
}

async fn read_hello(stream: &mut Stream, decoder: &mut Decoder) -> Result<Hello, CloseReason> {
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(|_| CloseReason::PeerClosed)?;
        if n == 0 {
            return Err(CloseReason::PeerClosed);
        }
        let mut first = None;
        decoder
            .feed::<ClientFrame, _>(&buf[..n], |frame| {
                first = Some(frame);
                false
            })
            .map_err(frame_error)?;
        match first.map(|f| f.frame) {
            None => continue,
            Some(Some(client_frame::Frame::Hello(hello))) => return Ok(hello),
            Some(_) => return Err(CloseReason::HelloRequired),
        }
    }
}

pub fn frame_error(error: FrameError) -> CloseReason {
    match error {
        FrameError::TooLarge { .. } => CloseReason::FrameTooLarge,
        FrameError::Malformed(_) | FrameError::Empty => CloseReason::Malformed,
    }
}

/// Checks `hello` and its token; returns the device key and the user from the token.
fn authenticate(
    node: &Node,
    hello: &Hello,
) -> Result<(DeviceKey, Option<String>, i64), CloseReason> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(CloseReason::UnsupportedVersion);
    }
    let apps = node.apps();
    let Some((app, key)) = apps.get(&hello.app_id) else {
        return Err(CloseReason::UnknownApp);
    };
    if !valid_hello(hello) {
        return Err(CloseReason::InvalidHello);
    }
    let device = DeviceKey { app, device: hello.device_id.as_str().into() };
    let refused = |reason: CloseReason| {
        let known = node.hub.with_device(&device, |_| ()).is_some();
        let timeline = node.hub.receipts.timeline();
        crate::timeline::steps::token_rejected(timeline, &device, reason, 0, known);
        reason
    };
    let claims = key
        .verify(&hello.token, &hello.app_id, &hello.device_id, crate::clock::unix_secs())
        .map_err(|e| refused(CloseReason::Token(e)))?;
    let user = user_of(&claims).map_err(refused)?;
    Ok((device, user, claims.exp))
}

/// The user a verified token binds to: none when `uid` is absent or empty; refused when it
/// is over 128 bytes or holds a NUL.
pub fn user_of(claims: &crate::token::Claims) -> Result<Option<String>, CloseReason> {
    match claims.uid.as_deref() {
        None | Some("") => Ok(None),
        Some(u) if u.len() <= 128 && !u.contains('\0') => Ok(Some(u.to_string())),
        Some(_) => Err(CloseReason::Token(crate::token::TokenError::Malformed)),
    }
}

/// Largest `acked_seq` and `broadcast_cursor` a Hello may carry, so counters never wrap.
pub const MAX_COUNTER: u64 = 1 << 48;

/// Field limits from the protocol documentation.
fn valid_hello(hello: &Hello) -> bool {
    let report_ok = hello.report.as_ref().is_none_or(valid_report);
    (1..=128).contains(&hello.device_id.len())
        && !hello.device_id.contains('\0')
        && hello.app_version.len() <= 32
        && hello.acked_seq <= MAX_COUNTER
        && hello.broadcast_cursor <= MAX_COUNTER
        && !hello.token.is_empty()
        && report_ok
}

pub fn valid_report(report: &DeviceReport) -> bool {
    report.vendor_error_code.len() <= 64
        && report.os_version.len() <= 64
        && report.sdk_version.len() <= 32
}

/// Encodes the frame that tells the app why it is being closed, if any.
pub fn farewell(reason: CloseReason, spread_ms: u32) -> Option<bytes::Bytes> {
    reason.frame(spread_ms).map(|frame| {
        debug_assert!(frame.encoded_len() < 1024);
        crate::frame::encode(&frame)
    })
}
