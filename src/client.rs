//! A device client: the protocol as an app SDK speaks it, for the `client` command, the
//! tests and the load generator.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::frame::{Decoder, FrameError};
use crate::handshake::PROTOCOL_VERSION;
use crate::proto::device::{
    Ack, ClientFrame, Error as ErrorFrame, Hello, Kick, Ping, ServerFrame, Welcome, client_frame,
    server_frame,
};
use crate::stream::{ClientStream, Either};

/// Largest frame the client accepts from a server.
const MAX_FRAME: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("refused: {} ({})", code_name(.0.code), .0.message)]
    Refused(ErrorFrame),
    #[error("kicked: {}", kick_name(.0.reason))]
    Kicked(Kick),
    #[error("bad frame from server: {0}")]
    Frame(#[from] FrameError),
    #[error("unexpected frame from server: {0}")]
    Unexpected(String),
}

fn code_name(code: i32) -> &'static str {
    crate::proto::device::ErrorCode::try_from(code).map(|c| c.as_str_name()).unwrap_or("UNKNOWN")
}

fn kick_name(reason: i32) -> &'static str {
    crate::proto::device::KickReason::try_from(reason).map(|r| r.as_str_name()).unwrap_or("UNKNOWN")
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// TLS client configuration and the name to verify, when connecting over TLS.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Local address to connect from (the load generator spreads over several).
    pub bind: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One device connection.
#[derive(Debug)]
pub struct Device {
    stream: ClientStream,
    decoder: Decoder,
    frames: VecDeque<ServerFrame>,
}

impl Device {
    /// Opens the socket (and TLS); sends nothing yet.
    pub async fn connect(endpoint: &Endpoint) -> io::Result<Device> {
        let socket = match endpoint.bind {
            None => TcpStream::connect(endpoint.addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(endpoint.addr).await?
            }
        };
        socket.set_nodelay(true)?;
        let stream = match &endpoint.tls {
            None => Either::Tcp(socket),
            Some((config, name)) => {
                let tls = TlsConnector::from(config.clone()).connect(name.clone(), socket).await?;
                Either::Tls(Box::new(tls))
            }
        };
        Ok(Device { stream, decoder: Decoder::new(MAX_FRAME), frames: VecDeque::new() })
    }

    /// Sends `hello` and waits for `Welcome`.
    pub async fn hello(&mut self, hello: Hello) -> Result<Welcome, ClientError> {
        self.send(client_frame::Frame::Hello(hello)).await?;
        match self.recv().await? {
            ServerFrame { frame: Some(server_frame::Frame::Welcome(w)) } => Ok(w),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn send(&mut self, frame: client_frame::Frame) -> io::Result<()> {
        let bytes = crate::frame::encode(&ClientFrame { frame: Some(frame) });
        self.send_raw(&bytes).await
    }

    /// Writes bytes as they are: for tests of what the server does with bad input.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub async fn ack(&mut self, seq: u64) -> io::Result<()> {
        self.send(client_frame::Frame::Ack(Ack { seq, ..Default::default() })).await
    }

    /// Acks broadcasts up to `cursor` (cumulative).
    pub async fn ack_broadcast(&mut self, cursor: u64) -> io::Result<()> {
        let ack = Ack { broadcast_cursor: cursor, ..Default::default() };
        self.send(client_frame::Frame::Ack(ack)).await
    }

    pub async fn ping(&mut self) -> io::Result<()> {
        let client_time_ms = crate::clock::unix_ms();
        self.send(client_frame::Frame::Ping(Ping { client_time_ms })).await
    }

    /// The next frame. `Error` and `Kick` frames come back as errors, since the server
    /// closes right after them.
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        let frame = self.recv_any().await?;
        match frame.frame {
            Some(server_frame::Frame::Error(e)) => Err(ClientError::Refused(e)),
            Some(server_frame::Frame::Kick(k)) => Err(ClientError::Kicked(k)),
            _ => Ok(frame),
        }
    }

    /// The next frame, whatever it is.
    pub async fn recv_any(&mut self) -> Result<ServerFrame, ClientError> {
        // Left uninitialized: zeroing 16 KiB on every call cost more than the read itself
        // (a load generator calls this once per message on thousands of connections).
        let mut chunk = [const { MaybeUninit::<u8>::uninit() }; 16 * 1024];
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Ok(frame);
            }
            let mut buf = ReadBuf::uninit(&mut chunk);
            let stream = &mut self.stream;
            std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf)).await?;
            if buf.filled().is_empty() {
                return Err(ClientError::Closed);
            }
            let frames = &mut self.frames;
            self.decoder.feed::<ServerFrame, _>(buf.filled(), |f| {
                frames.push_back(f);
                true
            })?;
        }
    }

    /// Waits until the server closes the connection, returning the frames seen until
    /// then. For tests.
    pub async fn until_closed(&mut self) -> Vec<ServerFrame> {
        let mut seen = Vec::new();
        while let Ok(frame) = self.recv_any().await {
            seen.push(frame);
        }
        seen
    }
}

/// A `Hello` for protocol version 1 with the fields a minimal client needs.
pub fn hello(app: &str, device: &str, token: &str, heartbeat_secs: u32) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        app_id: app.into(),
        device_id: device.into(),
        platform: crate::proto::device::Platform::Android as i32,
        app_version: "1.0.0".into(),
        token: token.into(),
        heartbeat_secs,
        ..Default::default()
    }
}

/// Reconnect delay for attempt `n` (0-based): uniform over [0, min(cap, base x 2^n)],
/// the "full jitter" schedule, so that clients that failed together retry apart.
pub fn backoff_ms(attempt: u32, base_ms: u64, cap_ms: u64) -> u64 {
    let ceiling = base_ms.saturating_mul(1u64 << attempt.min(30)).min(cap_ms);
    rand::random_range(0..=ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Case C2: at every attempt the delays are spread; at the cap, over at least half of it.
    #[test]
    fn backoff_spreads_at_every_attempt_including_the_cap() {
        let (base, cap) = (500, 30_000);
        for attempt in 0..12 {
            let samples: Vec<u64> = (0..1000).map(|_| backoff_ms(attempt, base, cap)).collect();
            let (min, max) = (*samples.iter().min().unwrap(), *samples.iter().max().unwrap());
            let ceiling = (base << attempt).min(cap);
            assert!(max <= ceiling);
            assert!(max - min >= ceiling / 2, "attempt {attempt}: spread {min}..{max}");
        }
    }
}
