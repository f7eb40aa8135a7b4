//! `longlink client`: a device from the command line. Prints one JSON object per line
//! for each message (and for connection events), acknowledges every message, and
//! reconnects with full-jitter backoff, honouring the delay a `Kick` asks for. It stops
//! for good when replaced by a newer connection, so two clients with one device id do
//! not take each other over in a loop.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::json;

use crate::client::{ClientError, Device, Endpoint, backoff_ms};
use crate::frame::FrameError;
use crate::proto::device::{ErrorCode, Hello, KickReason, ServerFrame, server_frame};

const BACKOFF_BASE_MS: u64 = 500;
const BACKOFF_CAP_MS: u64 = 60_000;
/// Message ids remembered to drop redelivered duplicates.
const SEEN_IDS: usize = 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server address, HOST:PORT (default: the server's `device.tcp_addr`).
    #[arg(long, default_value = "127.0.0.1:7100", env = "LONGLINK_DEVICE__TCP_ADDR")]
    addr: String,
    /// Connect over TLS.
    #[arg(long)]
    tls: bool,
    /// CA certificate (PEM) to verify the server with; for the generated certificate,
    /// `longlink-data/tls/cert.pem`.
    #[arg(long, requires = "tls")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (trying things out only).
    #[arg(long, requires = "tls", conflicts_with = "ca")]
    insecure: bool,
    /// Name to verify in the server certificate (default: the host of --addr).
    #[arg(long, requires = "tls")]
    server_name: Option<String>,
    #[arg(long)]
    app: String,
    #[arg(long)]
    device: String,
    #[arg(long, env = "LONGLINK_TOKEN", hide_env_values = true)]
    token: String,
    /// Heartbeat interval to ask for, in seconds (0: the server's default).
    #[arg(long, default_value_t = 0)]
    heartbeat: u32,
    /// Exit after this many messages.
    #[arg(long)]
    count: Option<u64>,
}

/// Why one connection ended, as far as reconnecting goes.
enum Next {
    Done,
    Stop(ExitCode),
    RetryAfter(Duration),
    Backoff,
}

/// What survives from one connection to the next.
struct Progress {
    acked: u64,
    /// The highest broadcast processed: reported in Hello, acked as it grows.
    broadcast_cursor: u64,
    received: u64,
    seen: VecDeque<String>,
    seen_set: HashSet<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let endpoint = endpoint(&args).await?;
    let mut progress = Progress {
        acked: 0,
        broadcast_cursor: 0,
        received: 0,
        seen: VecDeque::new(),
        seen_set: HashSet::new(),
    };
    let mut attempt = 0;
    loop {
        let next = session(&args, &endpoint, &mut progress, &mut attempt).await;
        let delay = match next {
            Next::Done => return Ok(ExitCode::SUCCESS),
            Next::Stop(code) => return Ok(code),
            Next::RetryAfter(delay) => delay,
            Next::Backoff => {
                let ms = backoff_ms(attempt, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
                attempt += 1;
                Duration::from_millis(ms)
            }
        };
        super::output::say(
            json!({ "event": "reconnecting", "after_ms": delay.as_millis() as u64 }),
        );
        tokio::time::sleep(delay).await;
    }
}

async fn endpoint(args: &Args) -> anyhow::Result<Endpoint> {
    let addr: SocketAddr = match args.addr.parse() {
        Ok(addr) => addr,
        Err(_) => tokio::net::lookup_host(&args.addr)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", args.addr))?,
    };
    let tls = if args.tls {
        let config = crate::tls::client_config(args.ca.as_deref(), args.insecure)?;
        let host = args.addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&args.addr);
        let name =
            args.server_name.clone().unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        Some((config, ServerName::try_from(name)?))
    } else {
        None
    };
    Ok(Endpoint { addr, tls, bind: None })
}

async fn session(
    args: &Args,
    endpoint: &Endpoint,
    progress: &mut Progress,
    attempt: &mut u32,
) -> Next {
    let mut device = match Device::connect(endpoint).await {
        Ok(d) => d,
        Err(error) => return failed(&ClientError::Io(error)),
    };
    let hello = Hello {
        acked_seq: progress.acked,
        broadcast_cursor: progress.broadcast_cursor,
        ..crate::client::hello(&args.app, &args.device, &args.token, args.heartbeat)
    };
    let welcome = match device.hello(hello).await {
        Ok(w) => w,
        Err(error) => return failed(&error),
    };
    *attempt = 0;
    super::output::say(json!({
        "event": "welcome",
        "session_id": welcome.session_id,
        "heartbeat_secs": welcome.heartbeat_secs,
        "user_id": welcome.user_id,
    }));
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(welcome.heartbeat_secs.max(1) as u64));
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(error) = device.ping().await {
                    return failed(&ClientError::Io(error));
                }
            }
            frame = device.recv() => match frame {
                Ok(frame) => {
                    if let Err(error) = on_frame(&mut device, frame, progress).await {
                        return failed(&ClientError::Io(error));
                    }
                    if args.count.is_some_and(|n| progress.received >= n) {
                        return Next::Done;
                    }
                }
                Err(error) => return failed(&error),
            }
        }
    }
}

async fn on_frame(
    device: &mut Device,
    frame: ServerFrame,
    progress: &mut Progress,
) -> std::io::Result<()> {
    match frame.frame {
        Some(server_frame::Frame::Push(push)) => {
            let duplicate = progress.seen_set.contains(&push.message_id);
            if !duplicate {
                super::output::say(super::output::push(&push));
                progress.received += 1;
                remember(progress, push.message_id.clone());
            }
            if push.seq > 0 {
                device.ack(push.seq).await?;
                progress.acked = progress.acked.max(push.seq);
            }
            if push.broadcast_seq > 0 {
                device.ack_broadcast(push.broadcast_seq).await?;
                progress.broadcast_cursor = progress.broadcast_cursor.max(push.broadcast_seq);
            }
        }
        Some(server_frame::Frame::Missed(m)) => {
            super::output::say(json!({ "event": "missed", "count": m.count }));
        }
        Some(server_frame::Frame::Bound(b)) => {
            super::output::say(json!({ "event": "bound", "user_id": b.user_id }));
        }
        _ => {}
    }
    Ok(())
}

fn remember(progress: &mut Progress, id: String) {
    progress.seen.push_back(id.clone());
    progress.seen_set.insert(id);
    if progress.seen.len() > SEEN_IDS
        && let Some(old) = progress.seen.pop_front()
    {
        progress.seen_set.remove(&old);
    }
}

/// Prints why the connection ended and decides what to do next.
fn failed(error: &ClientError) -> Next {
    match error {
        ClientError::Kicked(kick) => {
            super::output::say(super::output::kick(kick));
            if kick.reason == KickReason::Replaced as i32 || !kick.reconnect {
                Next::Stop(ExitCode::SUCCESS)
            } else if kick.reconnect_after_ms == 0 {
                // "Come back, no particular delay": back off all the same, so that a cause
                // that repeats on every connection does not become a reconnect loop.
                Next::Backoff
            } else {
                Next::RetryAfter(Duration::from_millis(kick.reconnect_after_ms as u64))
            }
        }
        ClientError::Refused(e) => {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            super::output::say(
                json!({ "event": "error", "code": code.as_str_name(), "message": e.message }),
            );
            match code {
                ErrorCode::Busy | ErrorCode::Draining => {
                    Next::RetryAfter(Duration::from_millis(e.retry_after_ms as u64))
                }
                // Reconnecting with the same token or the same build cannot help.
                _ => Next::Stop(ExitCode::from(2)),
            }
        }
        // A TLS record (alert 0x15, handshake 0x16) read as a length prefix: the port
        // speaks TLS. Retrying in plain text cannot help.
        ClientError::Frame(FrameError::TooLarge { declared, .. })
            if matches!(declared >> 24, 0x15 | 0x16) =>
        {
            let hint = "the server speaks TLS on this port: add --tls (and --ca)";
            super::output::say(json!({ "event": "error", "message": hint }));
            Next::Stop(ExitCode::from(2))
        }
        other => {
            super::output::say(json!({ "event": "disconnected", "error": other.to_string() }));
            Next::Backoff
        }
    }
}
