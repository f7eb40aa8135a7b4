//! The server's side of a TLS connection: rustls driven through its unbuffered API, with
//! buffers this stream owns and frees as soon as they are empty.
//!
//! rustls's buffered connection keeps a read buffer of at least 4 KiB for as long as it
//! lives, which for an idle device is most of what TLS costs. Here ciphertext is read into
//! a stack buffer inside `poll_read`; only what rustls cannot use yet (a partial record at
//! the end of a read) is kept, in `incoming`. Ciphertext is held in `outgoing` only until
//! the socket takes it, and plaintext only when it does not fit the caller's buffer. Each
//! of the three is freed (capacity 0) once empty, so an idle stream holds no buffer of its
//! own, only rustls's connection state (keys, sequence numbers).
//!
//! Invariant: between calls, `incoming` never holds a complete record rustls has not
//! processed; rustls is always run until it asks for more bytes. The stream never blocks
//! inside rustls and never hands rustls a buffer it would keep.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

mod held;
#[cfg(test)]
mod tests;

use held::Held;

/// Ciphertext read per poll of the socket: a full-size record (16 KiB of payload plus
/// rustls's largest overhead) fits in one read. Lives on the stack only while polled.
const READ_CHUNK: usize = 16 * 1024 + 2048;
/// Plaintext encrypted per `poll_write`: at most one full-size record, so a stalled peer
/// leaves at most that much ciphertext held.
const WRITE_CHUNK: usize = 16 * 1024;
/// Room per record for header, content type, nonce and tag (at most 29 bytes with the
/// suites offered), plus one queued key update.
const RECORD_OVERHEAD: usize = 64;

/// Starts server-side TLS on accepted sockets; cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct Acceptor(Arc<ServerConfig>);

impl Acceptor {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Acceptor(config)
    }

    /// Runs the TLS handshake on `tcp` to completion, including the session tickets sent
    /// after it. Plaintext the client sent behind its Finished is kept for the first read.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(self.0.clone()).map_err(tls_error)?;
        let mut stream = TlsStream { tcp, incoming: Held::default(), tls: Tls::new(conn) };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }
}

/// An established server-side TLS stream over a TCP socket.
pub struct TlsStream {
    tcp: TcpStream,
    /// Ciphertext rustls has not consumed: a partial record, or the handshake message it
    /// is still assembling.
    incoming: Held,
    tls: Tls,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("buffers", &self.buffers()).finish_non_exhaustive()
    }
}

/// The capacities of the buffers a stream holds, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buffers {
    pub incoming: usize,
    pub outgoing: usize,
    pub plaintext: usize,
}

impl TlsStream {
    /// What the stream's own buffers hold now (capacities, not lengths).
    pub fn buffers(&self) -> Buffers {
        Buffers {
            incoming: self.incoming.capacity(),
            outgoing: self.tls.outgoing.capacity(),
            plaintext: self.tls.plaintext.capacity(),
        }
    }

    /// The negotiated protocol version, once the handshake is done.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.conn.protocol_version()
    }

    /// Whether this handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        matches!(self.tls.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            if !self.tls.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.tls.peer_closed {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = ready!(self.poll_read_tcp(cx, &mut chunk))?;
            if let Err(error) = self.absorb(&mut chunk[..n], None) {
                let _ = self.poll_send(cx);
                return Poll::Ready(Err(error));
            }
        }
    }

    /// Reads ciphertext into `chunk`; end of stream without close_notify is an error.
    fn poll_read_tcp(&mut self, cx: &mut Context<'_>, chunk: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(chunk);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        match buf.filled().len() {
            0 => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            n => Poll::Ready(Ok(n)),
        }
    }

    /// Runs rustls over `fresh` ciphertext (after what `incoming` held) and keeps only
    /// what it could not consume yet.
    fn absorb(&mut self, fresh: &mut [u8], out: Option<&mut ReadBuf<'_>>) -> io::Result<()> {
        if self.incoming.is_empty() {
            let consumed = self.tls.process(fresh, out, Want::Read)?.consumed;
            self.incoming.extend(&fresh[consumed..]);
        } else {
            self.incoming.extend(fresh);
            let consumed = self.tls.process(self.incoming.bytes_mut(), out, Want::Read)?.consumed;
            self.incoming.consume(consumed);
        }
        Ok(())
    }

    /// Runs rustls over what `incoming` holds, to reach the state where `want` is done.
    fn process_held(&mut self, want: Want<'_>) -> io::Result<Processed> {
        let processed = self.tls.process(self.incoming.bytes_mut(), None, want)?;
        self.incoming.consume(processed.consumed);
        Ok(processed)
    }

    /// Writes held ciphertext until there is none or the socket pushes back.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tls.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, self.tls.outgoing.bytes()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tls.outgoing.consume(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.tls.plaintext.is_empty() {
                let n = this.tls.plaintext.len().min(buf.remaining());
                buf.put_slice(&this.tls.plaintext.bytes()[..n]);
                this.tls.plaintext.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.tls.peer_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // What rustls queued while reading (tickets, a key update, an alert) goes out
            // as soon as the socket takes it; a full socket is retried on the next poll.
            if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                return Poll::Ready(Err(error));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = ready!(this.poll_read_tcp(cx, &mut chunk))?;
            let before = buf.filled().len();
            if let Err(error) = this.absorb(&mut chunk[..n], Some(buf)) {
                let _ = this.poll_send(cx);
                return Poll::Ready(Err(error));
            }
            if buf.filled().len() > before {
                let _ = this.poll_send(cx)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Held ciphertext goes first: it bounds what a stalled peer makes us hold.
        ready!(this.poll_send(cx))?;
        let plain = &buf[..buf.len().min(WRITE_CHUNK)];
        let taken = match this.process_held(Want::Encrypt(plain))?.outcome {
            Outcome::Done => plain.len(),
            Outcome::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Outcome::Blocked => return Poll::Ready(Err(not_established())),
        };
        // The bytes are taken either way: a socket that pushes back gets them on flush.
        let _ = this.poll_send(cx)?;
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Sends close_notify (once), then shuts the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tls.close_sent {
            this.tls.close_sent = true;
            this.process_held(Want::CloseNotify)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// rustls's state and what it produced that the socket or the caller has not taken.
struct Tls {
    conn: UnbufferedServerConnection,
    /// Ciphertext for the socket, in order: handshake flights, tickets, alerts, records.
    outgoing: Held,
    /// Decrypted bytes that did not fit the caller's buffer.
    plaintext: Held,
    /// The peer sent close_notify: reads return end of stream.
    peer_closed: bool,
    close_sent: bool,
}

/// What the caller wants done once rustls has consumed what it can.
#[derive(Clone, Copy)]
enum Want<'a> {
    Read,
    Encrypt(&'a [u8]),
    CloseNotify,
}

struct Processed {
    /// Bytes of the input rustls is done with.
    consumed: usize,
    outcome: Outcome,
}

enum Outcome {
    /// Traffic may flow, and what was wanted is done.
    Done,
    /// The handshake waits for the peer.
    Blocked,
    /// Both sides sent close_notify.
    Closed,
}

impl Tls {
    fn new(conn: UnbufferedServerConnection) -> Self {
        Tls {
            conn,
            outgoing: Held::default(),
            plaintext: Held::default(),
            peer_closed: false,
            close_sent: false,
        }
    }

    /// Runs rustls over `input` until it needs more bytes, handling every state on the
    /// way: plaintext goes to `out` (the rest to `plaintext`), records to `outgoing`.
    fn process(
        &mut self,
        input: &mut [u8],
        mut out: Option<&mut ReadBuf<'_>>,
        want: Want<'_>,
    ) -> io::Result<Processed> {
        let mut consumed = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut input[consumed..]);
            let state = match state {
                Ok(state) => state,
                Err(error) => return Err(self.fail(error)),
            };
            let outcome = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        deliver(record.payload, &mut out, &mut self.plaintext);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut encode, &mut self.outgoing)?;
                    None
                }
                // The bytes are in `outgoing`, which is always sent before anything newer.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Outcome::Closed),
                ConnectionState::BlockedHandshake => Some(Outcome::Blocked),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match want {
                        Want::Read => {}
                        Want::Encrypt(plain) => {
                            encrypt_into(&mut traffic, plain, &mut self.outgoing)?
                        }
                        Want::CloseNotify => close_into(&mut traffic, &mut self.outgoing)?,
                    }
                    Some(Outcome::Done)
                }
                // 0-RTT is off (`max_early_data_size` = 0), so this is a peer bug.
                ConnectionState::ReadEarlyData(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected early data",
                    ));
                }
                other => {
                    let message = format!("unexpected TLS state {other:?}");
                    return Err(io::Error::other(message));
                }
            };
            consumed += discard;
            if let Some(outcome) = outcome {
                return Ok(Processed { consumed, outcome });
            }
        }
    }

    /// Queues the alert rustls prepared for `error`, if any, and maps the error.
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) =
            self.conn.process_tls_records(&mut []).state
        {
            let _ = encode_into(&mut encode, &mut self.outgoing);
        }
        tls_error(error)
    }
}

/// Copies decrypted `payload` to the caller's buffer, keeping what does not fit (or
/// everything, when there is no caller or earlier plaintext is still waiting).
fn deliver(payload: &[u8], out: &mut Option<&mut ReadBuf<'_>>, plaintext: &mut Held) {
    let n = match out {
        Some(buf) if plaintext.is_empty() => {
            let n = payload.len().min(buf.remaining());
            buf.put_slice(&payload[..n]);
            n
        }
        _ => 0,
    };
    plaintext.extend(&payload[n..]);
}

fn encode_into(encode: &mut EncodeTlsData<'_, impl Sized>, outgoing: &mut Held) -> io::Result<()> {
    let required = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(error @ EncodeError::AlreadyEncoded) => return Err(io::Error::other(error)),
    };
    outgoing.append_with(required, |tail| encode.encode(tail).map_err(io::Error::other))
}

fn encrypt_into(
    traffic: &mut WriteTraffic<'_, impl Sized>,
    plain: &[u8],
    outgoing: &mut Held,
) -> io::Result<()> {
    let records = plain.len().div_ceil(WRITE_CHUNK).max(1);
    let estimate = plain.len() + (records + 1) * RECORD_OVERHEAD;
    retrying(estimate, outgoing, |tail| traffic.encrypt(plain, tail))
}

fn close_into(traffic: &mut WriteTraffic<'_, impl Sized>, outgoing: &mut Held) -> io::Result<()> {
    retrying(RECORD_OVERHEAD, outgoing, |tail| traffic.queue_close_notify(tail))
}

/// Encrypts into `estimate` bytes appended to `outgoing`, once more at the size rustls
/// asks for if that was too small.
fn retrying(
    estimate: usize,
    outgoing: &mut Held,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let mut required = None;
    let first = outgoing.append_with(estimate, |tail| match encrypt(tail) {
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required = Some(required_size);
            Ok(0)
        }
        other => other.map_err(io::Error::other),
    });
    match required {
        None => first,
        Some(size) => outgoing.append_with(size, |tail| encrypt(tail).map_err(io::Error::other)),
    }
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

fn not_established() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake not complete")
}
