//! One device connection, whichever protocol it speaks: opening it (connect, then the
//! protocol handshake, timed separately), heartbeats, and turning what arrives into
//! deliveries, acknowledged as the protocol wants.
//!
//! `recv` is cancel-safe and does no writing, so the device loop can `select!` on it;
//! `handle` writes (acks) and must run outside the `select!`.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::{ErrorCode, ServerFrame, server_frame};
use longlink::token::Claims;

use crate::mqtt::{self, MqttError, Packet};
use crate::plan::{Protocol, device_id, device_topic};
use crate::worker::Ctx;

/// Token lifetime: longer than any bounded run.
const TOKEN_SECS: i64 = 24 * 3600;

pub enum Conn {
    Longlink(Box<Device>),
    Mqtt(Box<mqtt::Client>),
}

pub enum Frame {
    Longlink(Box<ServerFrame>),
    Mqtt(Packet),
}

/// A message that reached the device.
pub struct Delivery {
    pub data: Vec<u8>,
    pub redelivery: bool,
}

/// Why an attempt or a connection ended, as a stable label, and whether the server
/// asked for a retry after some delay.
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    pub retry_after: Option<Duration>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Failure {
        Failure { reason: reason.into(), retry_after: None }
    }
}

pub struct Opened {
    pub conn: Conn,
    /// TCP connect, TLS included.
    pub connect: Duration,
    /// Hello to Welcome (CONNECT to SUBACK for MQTT).
    pub handshake: Duration,
    pub heartbeat: Duration,
}

/// Connects device `index` and authenticates it, within the plan's timeout.
pub async fn open(ctx: &Ctx, index: u64) -> Result<Opened, Failure> {
    let limit = Duration::from_millis(ctx.plan.timeout_ms);
    match tokio::time::timeout(limit, open_unbounded(ctx, index)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::new("timeout")),
    }
}

async fn open_unbounded(ctx: &Ctx, index: u64) -> Result<Opened, Failure> {
    match ctx.plan.protocol {
        Protocol::Longlink => open_longlink(ctx, index).await,
        Protocol::Mqtt => open_mqtt(ctx, index).await,
    }
}

async fn open_longlink(ctx: &Ctx, index: u64) -> Result<Opened, Failure> {
    let endpoint = &ctx.endpoints[index as usize % ctx.endpoints.len()];
    let started = Instant::now();
    let mut device = Device::connect(endpoint).await.map_err(io_failure)?;
    let connect = started.elapsed();
    if endpoint.tls.is_some() {
        ctx.stats.tls_handshakes.fetch_add(1, Relaxed);
    }
    let id = device_id(index);
    let token = ctx.key.sign(&claims(&ctx.plan.app, &id));
    let request = hello(&ctx.plan.app, &id, &token, ctx.plan.heartbeat_secs);
    let welcome = device.hello(request).await.map_err(client_failure)?;
    Ok(Opened {
        conn: Conn::Longlink(Box::new(device)),
        connect,
        handshake: started.elapsed() - connect,
        heartbeat: Duration::from_secs(welcome.heartbeat_secs.max(1) as u64),
    })
}

fn claims(app: &str, device: &str) -> Claims {
    let now = longlink::clock::unix_secs();
    Claims {
        sub: device.into(),
        app: app.into(),
        uid: None,
        exp: now + TOKEN_SECS,
        iat: now,
        nbf: None,
    }
}

async fn open_mqtt(ctx: &Ctx, index: u64) -> Result<Opened, Failure> {
    let source = ctx.plan.sources[index as usize % ctx.plan.sources.len()];
    let started = Instant::now();
    let mut client =
        mqtt::Client::connect(ctx.plan.addr, Some(source)).await.map_err(io_failure)?;
    let connect = started.elapsed();
    let id = device_id(index);
    let keepalive = ctx.plan.heartbeat_secs.min(u16::MAX as u32) as u16;
    client.handshake(&id, keepalive).await.map_err(mqtt_failure)?;
    let own = device_topic(&id);
    let mut topics = vec![own.as_str()];
    topics.extend(ctx.plan.broadcast_topic.as_deref());
    client.subscribe(&topics, ctx.plan.qos).await.map_err(mqtt_failure)?;
    Ok(Opened {
        conn: Conn::Mqtt(Box::new(client)),
        connect,
        handshake: started.elapsed() - connect,
        heartbeat: Duration::from_secs(keepalive.max(1) as u64),
    })
}

impl Conn {
    /// The next frame or packet. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Frame, Failure> {
        match self {
            Conn::Longlink(d) => {
                d.recv().await.map(|f| Frame::Longlink(Box::new(f))).map_err(client_failure)
            }
            Conn::Mqtt(c) => c.recv().await.map(Frame::Mqtt).map_err(mqtt_failure),
        }
    }

    pub async fn heartbeat(&mut self) -> io::Result<()> {
        match self {
            Conn::Longlink(d) => d.ping().await,
            Conn::Mqtt(c) => c.ping().await,
        }
    }

    /// Acknowledges what needs it; returns the message, if `frame` carried one.
    pub async fn handle(&mut self, frame: Frame) -> io::Result<Option<Delivery>> {
        match (self, frame) {
            (Conn::Longlink(d), Frame::Longlink(f)) => {
                let Some(server_frame::Frame::Push(push)) = f.frame else {
                    return Ok(None);
                };
                // As an app does: a device's own messages by seq, broadcasts by cursor
                // (the MQTT devices answer each QoS 1 PUBLISH the same way).
                if push.seq > 0 {
                    d.ack(push.seq).await?;
                } else if push.broadcast_seq > 0 {
                    d.ack_broadcast(push.broadcast_seq).await?;
                }
                Ok(Some(Delivery { data: push.data.to_vec(), redelivery: push.redelivery }))
            }
            (Conn::Mqtt(c), Frame::Mqtt(Packet::Publish { id, payload, .. })) => {
                if let Some(id) = id {
                    c.puback(id).await?;
                }
                Ok(Some(Delivery { data: payload, redelivery: false }))
            }
            _ => Ok(None),
        }
    }

    /// Says goodbye where the protocol has a word for it; best effort.
    pub async fn close(self) {
        if let Conn::Mqtt(mut c) = self {
            let _ = c.disconnect().await;
        }
    }
}

pub fn io_failure(error: io::Error) -> Failure {
    let reason = match (error.raw_os_error(), error.kind()) {
        (Some(24), _) => "too_many_open_files".to_string(),
        (Some(99), _) => "no_free_local_port".to_string(),
        (_, io::ErrorKind::ConnectionRefused) => "connection_refused".to_string(),
        (_, io::ErrorKind::ConnectionReset) => "connection_reset".to_string(),
        (_, io::ErrorKind::UnexpectedEof) => "closed".to_string(),
        (_, kind) => format!("io_{kind:?}").to_lowercase(),
    };
    Failure::new(reason)
}

fn client_failure(error: ClientError) -> Failure {
    match error {
        ClientError::Io(e) => io_failure(e),
        ClientError::Closed => Failure::new("closed"),
        ClientError::Refused(e) => {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            let retry = matches!(code, ErrorCode::Busy | ErrorCode::Draining);
            Failure {
                reason: code.as_str_name().trim_start_matches("ERROR_CODE_").to_lowercase(),
                retry_after: retry.then(|| Duration::from_millis(e.retry_after_ms as u64)),
            }
        }
        ClientError::Kicked(k) => Failure {
            reason: format!("kicked_{}", kick_name(k.reason)),
            retry_after: k.reconnect.then(|| Duration::from_millis(k.reconnect_after_ms as u64)),
        },
        ClientError::Frame(_) => Failure::new("bad_frame"),
        ClientError::Unexpected(_) => Failure::new("unexpected_frame"),
    }
}

fn kick_name(reason: i32) -> String {
    longlink::proto::device::KickReason::try_from(reason)
        .map(|r| r.as_str_name().trim_start_matches("KICK_REASON_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn mqtt_failure(error: MqttError) -> Failure {
    match error {
        MqttError::Io(e) => io_failure(e),
        MqttError::Closed => Failure::new("closed"),
        MqttError::Refused(rc) => Failure::new(format!("connack_{rc}")),
        MqttError::Protocol(_) => Failure::new("mqtt_protocol"),
    }
}
