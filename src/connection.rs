//! One device connection's life: handshake, then a single hand-written poll loop that
//! reads frames, writes what the link queued, and ends on the first close reason, or
//! parks the connection once it has been idle for `park_after` (see `park`).
//!
//! A connection's task state is this module's `Live` struct: the socket, an empty
//! decoder, the link and an empty write slot. Reads go through a stack buffer inside
//! `poll`, so no read buffer is kept between frames; there is no heartbeat timer (see
//! `heartbeat`) and no channel (see `link`); the only timer is the one that runs while
//! a plain connection waits to park.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::{Instrument, field};

use crate::admission::Permit;
use crate::close::{CloseReason, Level};
use crate::frame::Decoder;
use crate::handler::{Handler, costly};
use crate::handshake::{self, Established, Failed, farewell, frame_error};
use crate::link::Link;
use crate::node::{ConnectionGuard, Node};
use crate::park::Parked;
use crate::proto::device::ClientFrame;
use crate::session::DeviceKey;
use crate::stream::{Either, Stream};
use crate::tls_stream::Acceptor;

/// Bytes read per poll of the socket; lives on the stack only while polled.
const READ_CHUNK: usize = 4096;
/// What a parked connection may read before it is made a task again: a device that
/// sends this much at once is not idle.
const QUICK_READ_MAX: usize = 4 * READ_CHUNK;
/// Reads and writes per wake-up before yielding to other connections.
const BUDGET: usize = 32;
/// How long the farewell frame and the close may take.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);
/// The same for a peer that has already shown it does not read.
const FAREWELL_TIMEOUT_STUCK: Duration = Duration::from_millis(100);

/// Serves one accepted socket until it closes. `permit` is the handshake admission slot,
/// released as soon as the handshake is over.
///
/// Not an `async fn`: the socket, the acceptor and the permit go straight into the boxed
/// handshake future, so the task's own state, which every idle connection keeps, holds
/// only the guard, that box and then `Live` (see the tests for its size).
pub fn serve(
    node: Arc<Node>,
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<Acceptor>,
    permit: Permit,
) -> impl Future<Output = ()> + Send + 'static {
    let transport = if tls.is_some() { "tls" } else { "tcp" };
    // At debug: a span held by every idle connection costs the log subscriber about
    // 650 bytes per connection (measured), a quarter of what a connection costs. The
    // info-level lifecycle events carry the identity fields themselves instead.
    let span = tracing::debug_span!(
        "connection",
        %peer,
        transport,
        app = field::Empty,
        device = field::Empty,
        session = field::Empty
    );
    let alive = node.track();
    let opening: Opening =
        Box::pin(open(node, socket, peer, tls, permit, alive).instrument(span.clone()));
    run(opening).instrument(span)
}

type Opening = Pin<Box<dyn Future<Output = Option<Live>> + Send>>;

/// Serves a connection until it closes or parks: `opening` yields it established (the
/// handshake) or resumed (from the park).
async fn run(opening: Opening) {
    let Some(mut conn) = opening.await else { return };
    loop {
        match (&mut conn).await {
            Exit::Close(reason) => return Box::pin(close(conn, reason)).await,
            Exit::Park => match park(conn) {
                Some(refused) => {
                    conn = *refused;
                    conn.parks = false;
                }
                None => return,
            },
        }
    }
}

/// Moves an idle connection to the node's park, and its task ends (`None`). When the
/// park cannot take it, it is handed back to carry on as a task.
fn park(conn: Live) -> Option<Box<Live>> {
    let Some(park) = conn.alive.node().park.get().cloned() else {
        return Some(Box::new(conn));
    };
    let Live { stream, link, key, alive, .. } = conn;
    let Either::Tcp(socket) = stream else { unreachable!("only plain connections park") };
    let socket = match socket.into_std() {
        Ok(socket) => mio::net::TcpStream::from_std(socket),
        Err(error) => {
            tracing::warn!(%error, "cannot take an idle socket off the runtime");
            end(alive.node(), &key, &link, CloseReason::PeerClosed);
            return None;
        }
    };
    let (socket, link, key, alive) = park.park(socket, link, key, alive).err()?;
    match TcpStream::from_std(socket.into()) {
        Ok(socket) => Some(Box::new(Live::new(Either::Tcp(socket), link, key, alive))),
        Err(_) => {
            end(alive.node(), &key, &link, CloseReason::PeerClosed);
            None
        }
    }
}

/// Carries on with a connection the park hands back: a new task for it, which starts
/// where the parked connection stopped, writing first what is left of the frame the park
/// was writing, and decoding on from what it read of a frame, if any.
pub fn resume(
    parked: Parked,
    writing: Option<Bytes>,
    decoder: Option<Decoder>,
) -> impl Future<Output = ()> + Send + 'static {
    let node = parked.guard.node();
    let decoder = decoder.unwrap_or_else(|| Decoder::new(node.settings.max_frame_bytes));
    carry_on(parked, writing, decoder)
}

/// How the park's read of a parked connection ended.
pub(crate) enum Quick {
    /// Only whole frames, all handled and answered: it can park again.
    Done,
    /// It needs a task, which first writes what is left of this frame, if any.
    Task(Option<Bytes>),
}

/// Reads a parked socket until it has nothing more, handles every whole frame and
/// writes what they queued after each read, as a task would: a device that sends a
/// burst of pings gets its Pongs as they come, not all at once past its queue's bound.
/// Run by the park thread, which has `parked` out of its slab meanwhile.
pub(crate) fn read_parked(node: &Node, parked: &mut Parked, decoder: &mut Decoder) -> Quick {
    // What handling the frames logs says whose they are, as on a task (`carry_on`).
    let _span = connection_span(parked).entered();
    let mut chunk = [0u8; READ_CHUNK];
    let mut read = 0;
    loop {
        match std::io::Read::read(&mut &parked.socket, &mut chunk) {
            // The task reads the end again, and closes.
            Ok(0) => return Quick::Task(None),
            Ok(n) => {
                let now = node.hub.heartbeats.now_ms();
                parked.link.touch(now);
                let mut bytes = &chunk[..n];
                loop {
                    let (key, link) = (&parked.key, &parked.link);
                    let fed = match feed(node, key, link, decoder, bytes, now) {
                        Ok(fed) => fed,
                        Err(reason) => {
                            link.close(reason);
                            return Quick::Task(None);
                        }
                    };
                    if let Err(rest) = crate::park::write_out(parked) {
                        return Quick::Task(rest);
                    }
                    if fed == Fed::All {
                        break;
                    }
                    bytes = &[];
                }
                read += n;
                if read >= QUICK_READ_MAX {
                    return Quick::Task(None);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return if decoder.buffered() == 0 { Quick::Done } else { Quick::Task(None) };
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Quick::Task(None),
        }
    }
}

/// The span of a connection that was parked (see `serve` for why at debug).
fn connection_span(parked: &Parked) -> tracing::Span {
    tracing::debug_span!(
        "connection",
        transport = "tcp",
        app = &*parked.key.app,
        device = &*parked.key.device,
        session = %format_args!("{:x}", parked.link.session_id)
    )
}

fn carry_on(
    parked: Parked,
    writing: Option<Bytes>,
    decoder: Decoder,
) -> impl Future<Output = ()> + Send + 'static {
    let span = connection_span(&parked);
    let opening: Opening = Box::pin(reopen(parked, writing, decoder));
    run(opening).instrument(span)
}

async fn reopen(parked: Parked, writing: Option<Bytes>, decoder: Decoder) -> Option<Live> {
    let Parked { socket, link, key, guard, .. } = parked;
    match TcpStream::from_std(socket.into()) {
        Ok(socket) => {
            let mut conn = Live::new(Either::Tcp(socket), link, key, guard);
            conn.writing = writing;
            // What the park read may hold frames it paused before (see `Fed`).
            conn.paused = decoder.buffered() > 0;
            conn.decoder = decoder;
            Some(conn)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot hand a parked socket back to the runtime");
            end(guard.node(), &key, &link, CloseReason::PeerClosed);
            None
        }
    }
}

/// Handshake, registration and `Welcome`; `None` when the connection did not make it.
async fn open(
    node: Arc<Node>,
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<Acceptor>,
    permit: Permit,
    alive: ConnectionGuard,
) -> Option<Live> {
    let deadline = tokio::time::Instant::now() + node.settings.handshake_timeout;
    let outcome = handshake::run(&node, socket, tls, deadline).await;
    drop(permit);
    match outcome {
        Ok(established) => welcome(&node, established, peer, alive).await,
        Err(failed) => {
            refuse(&node, failed).await;
            None
        }
    }
}

/// Answers a connection refused at the handshake limit and closes it.
pub async fn busy(node: Arc<Node>, socket: TcpStream, tls: Option<Acceptor>) {
    let reason = CloseReason::Busy { retry_after_ms: node.settings.busy_delay_ms() };
    let stream = match tls {
        None => Some(Either::Tcp(socket)),
        // See `Admission::farewell`: past its bound the socket is just closed.
        Some(acceptor) => match node.admission.farewell() {
            Some(_leave) => tokio::time::timeout(FAREWELL_TIMEOUT, acceptor.accept(socket))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|s| Either::Tls(Box::new(s))),
            None => None,
        },
    };
    refuse(&node, Failed { reason, stream }).await;
}

async fn refuse(node: &Node, failed: Failed) {
    let reason = failed.reason;
    metrics::counter!("longlink_handshake_failures_total", "reason" => reason.label()).increment(1);
    node.recent.handshake_failed(reason.label());
    log_close(reason);
    if let Some(stream) = failed.stream {
        say_goodbye(stream, None, reason, 0).await;
    }
}

/// Puts the session in the table, then tells the app: a router call made as soon as the
/// app sees `Welcome` finds it online.
async fn welcome(
    node: &Arc<Node>,
    established: Established,
    peer: SocketAddr,
    alive: ConnectionGuard,
) -> Option<Live> {
    let Established { mut stream, decoder, key, profile, session, welcome } = established;
    let span = tracing::Span::current();
    span.record("app", &*key.app);
    span.record("device", &*key.device);
    span.record("session", format!("{:x}", session.id()));
    metrics::counter!("longlink_handshakes_total", "transport" => session.transport.label())
        .increment(1);
    tracing::info!(
        app = %key.app,
        device = %key.device,
        session = %format_args!("{:x}", session.id()),
        transport = session.transport.label(),
        heartbeat_secs = session.heartbeat_secs,
        "session established"
    );

    let link = session.link.clone();
    record_connect(node, &key, &session, &profile, peer);
    node.hub.connect(&key, profile, session);
    // A drain that started meanwhile may have missed this session in its sweep.
    if node.is_draining() {
        link.close(CloseReason::Draining {
            reconnect_after_ms: node.settings.reconnect_delay_ms(),
        });
    }
    let greeted = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        stream.write_all(&welcome).await?;
        stream.flush().await
    })
    .await;
    if !matches!(greeted, Ok(Ok(()))) {
        let timeline = node.hub.receipts.timeline();
        crate::timeline::steps::closed(timeline, &key, link.session_id, CloseReason::PeerClosed);
        node.hub.abandon(&key, link.session_id, CloseReason::PeerClosed.label());
        node.hub.disconnect(&key, link.session_id, crate::clock::unix_ms());
        metrics::counter!("longlink_closes_total", "reason" => "peer_closed").increment(1);
        log_close(CloseReason::PeerClosed);
        return None;
    }
    node.hub.heartbeats.watch(&link);
    let mut conn = Live::new(stream, link, key, alive);
    conn.decoder = decoder;
    // Frames the app pipelined behind its Hello are already buffered: handle them now.
    match conn.feed(&[], node.hub.heartbeats.now_ms()) {
        Ok(fed) => conn.paused = fed == Fed::Paused,
        Err(reason) => {
            conn.link.close(reason);
        }
    }
    Some(conn)
}

/// Records a session in the device's timeline, with the binding and report it changed.
fn record_connect(
    node: &Node,
    key: &DeviceKey,
    session: &crate::session::Session,
    profile: &crate::hub::Profile,
    peer: SocketAddr,
) {
    let timeline = node.hub.receipts.timeline();
    if !timeline.enabled() {
        return;
    }
    let before = node.hub.with_device(key, |d| {
        (d.user.as_deref().map(str::to_string), d.report.as_deref().cloned())
    });
    let (user, report) = (profile.user.as_deref(), profile.report.as_ref());
    crate::timeline::steps::connected(timeline, key, session, peer, user, report, before);
}

/// Ends a session: out of the table, counted, logged, told why, closed.
async fn close(conn: Live, reason: CloseReason) {
    let node = conn.alive.node();
    end(node, &conn.key, &conn.link, reason);
    let spread = node.settings.reconnect_delay_ms();
    say_goodbye(conn.stream, conn.writing, reason, spread).await;
}

/// Everything a session's end does but tell the app.
fn end(node: &Node, key: &DeviceKey, link: &Link, reason: CloseReason) {
    let timeline = node.hub.receipts.timeline();
    crate::timeline::steps::closed(timeline, key, link.session_id, reason);
    node.hub.abandon(key, link.session_id, reason.label());
    node.hub.disconnect(key, link.session_id, crate::clock::unix_ms());
    metrics::counter!("longlink_closes_total", "reason" => reason.label()).increment(1);
    if reason.is_kick() {
        metrics::counter!("longlink_kicks_total", "reason" => reason.label()).increment(1);
        node.recent.kicked(reason.label());
    }
    log_session_close(key, link, reason);
}

/// Logs the end of a session with who it was, at the level its reason calls for.
fn log_session_close(key: &DeviceKey, link: &Link, reason: CloseReason) {
    let (app, device) = (&*key.app, &*key.device);
    let session = format_args!("{:x}", link.session_id);
    match reason.level() {
        Level::Debug => {
            tracing::debug!(app, device, %session, reason = reason.label(), "session closed")
        }
        Level::Info => {
            tracing::info!(app, device, %session, reason = reason.label(), "session closed")
        }
    }
}

fn log_close(reason: CloseReason) {
    match reason.level() {
        Level::Debug => tracing::debug!(reason = reason.label(), "connection closed"),
        Level::Info => tracing::info!(reason = reason.label(), "connection closed"),
    }
}

/// Sends the frame that tells the app why, then closes, within a bounded time. A frame
/// the socket had taken part of (`writing`) is finished first: the farewell written in
/// its place would be read as the rest of it. If that does not fit in the time, the app
/// gets no farewell, only the end of the stream.
async fn say_goodbye(
    mut stream: Stream,
    writing: Option<Bytes>,
    reason: CloseReason,
    spread_ms: u32,
) {
    let limit = match reason {
        CloseReason::SlowConsumer | CloseReason::HeartbeatTimeout => FAREWELL_TIMEOUT_STUCK,
        _ => FAREWELL_TIMEOUT,
    };
    let _ = tokio::time::timeout(limit, async {
        if let Some(rest) = writing {
            stream.write_all(&rest).await?;
        }
        if let Some(frame) = farewell(reason, spread_ms) {
            stream.write_all(&frame).await?;
        }
        stream.shutdown().await
    })
    .await;
}

/// An established connection, polled as one future.
struct Live {
    stream: Stream,
    decoder: Decoder,
    link: Arc<Link>,
    key: DeviceKey,
    /// Counts this connection in the node until it is gone.
    alive: ConnectionGuard,
    /// The frame being written, advanced past what the socket took.
    writing: Option<Bytes>,
    /// Bytes were written since the last flush (TLS buffers them).
    flush: bool,
    /// False once the park refused this connection: it stays a task.
    parks: bool,
    /// Whole frames wait in the decoder: what the ones before answered fills half the
    /// outbound queue, and is written before they are handled (see [`Fed`]).
    paused: bool,
    /// Runs while the connection is idle; when it fires, the connection parks.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why the poll loop stopped.
enum Exit {
    Close(CloseReason),
    /// Idle for `park_after`, at a frame boundary, nothing to write: park it.
    Park,
}

impl Future for &mut Live {
    type Output = Exit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Exit> {
        let this: &mut Live = &mut self;
        this.link.register(cx.waker());
        // Checked first: a stalled reader always has a frame stuck mid-write, and its
        // close must not wait for that write.
        if let Some(reason) = this.link.closing() {
            return Poll::Ready(Exit::Close(reason));
        }
        for _ in 0..BUDGET {
            let wrote = match this.poll_write(cx) {
                Ok(progress) => progress,
                Err(reason) => return Poll::Ready(Exit::Close(reason)),
            };
            let read = match this.paused {
                true => this.go_on(),
                false => this.poll_read(cx),
            };
            let read = match read {
                Ok(progress) => progress,
                Err(reason) => return Poll::Ready(Exit::Close(reason)),
            };
            if !wrote && !read {
                return this.idle(cx);
            }
            // Busy: the idle time starts again.
            this.linger = None;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Live {
    fn new(stream: Stream, link: Arc<Link>, key: DeviceKey, alive: ConnectionGuard) -> Self {
        let decoder = Decoder::new(alive.node().settings.max_frame_bytes);
        Live {
            stream,
            decoder,
            link,
            key,
            alive,
            writing: None,
            flush: false,
            parks: true,
            paused: false,
            linger: None,
        }
    }

    /// Nothing to read or write right now: park once that has lasted `park_after`.
    fn idle(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        let Some(after) = self.alive.node().settings.park_after else { return Poll::Pending };
        let at_rest = self.parks
            && matches!(self.stream, Either::Tcp(_))
            && self.writing.is_none()
            && !self.flush
            && self.decoder.buffered() == 0;
        if !at_rest {
            self.linger = None;
            return Poll::Pending;
        }
        let linger = self.linger.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if linger.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.linger = None;
        Poll::Ready(Exit::Park)
    }

    /// Writes queued frames until the socket pushes back. Returns whether it wrote.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        let mut progress = false;
        loop {
            if self.writing.is_none() {
                self.writing = self.link.next()?;
            }
            let Some(frame) = self.writing.as_mut() else {
                break;
            };
            match Pin::new(&mut self.stream).poll_write(cx, frame) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(CloseReason::PeerClosed),
                Poll::Ready(Ok(n)) => {
                    frame.advance(n);
                    if frame.is_empty() {
                        self.writing = None;
                    }
                    self.flush = true;
                    progress = true;
                }
                Poll::Pending => return Ok(progress),
            }
        }
        if self.flush {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush = false,
                Poll::Ready(Err(_)) => return Err(CloseReason::PeerClosed),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// Reads what the socket has and handles every complete frame. Returns whether it read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, CloseReason> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Pending => return Ok(false),
            Poll::Ready(Err(_)) => return Err(CloseReason::PeerClosed),
            Poll::Ready(Ok(())) => {}
        }
        if buf.filled().is_empty() {
            return Err(CloseReason::PeerClosed);
        }
        let now = self.alive.node().hub.heartbeats.now_ms();
        self.link.touch(now);
        let n = buf.filled().len();
        self.paused = self.feed(&chunk[..n], now)? == Fed::Paused;
        Ok(true)
    }

    /// Handles the frames a pause left in the decoder, once the queue is below half its
    /// bound again. Returns whether it did.
    fn go_on(&mut self) -> Result<bool, CloseReason> {
        if self.link.half_full(self.alive.node().hub.outbound_limits()) {
            return Ok(false);
        }
        let now = self.alive.node().hub.heartbeats.now_ms();
        self.paused = self.feed(&[], now)? == Fed::Paused;
        Ok(true)
    }

    /// Decodes and handles the complete frames in `bytes` (and in what was buffered).
    fn feed(&mut self, bytes: &[u8], now_ms: u64) -> Result<Fed, CloseReason> {
        feed(self.alive.node(), &self.key, &self.link, &mut self.decoder, bytes, now_ms)
    }
}

/// How far [`feed`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Every complete frame was handled.
    All,
    /// It stopped with complete frames left in the decoder: what those before them
    /// answered (Pongs, say) fills half the outbound queue, and is to be written before
    /// they are handled. One read can hold hundreds of small frames; answered all at
    /// once, they would put a device that reads perfectly well over its queue's bound.
    Paused,
}

/// Decodes and handles the complete frames in `bytes` (and in what `decoder` held),
/// pausing when the link's queue is half full (see [`Fed`]).
fn feed(
    node: &Node,
    key: &DeviceKey,
    link: &Link,
    decoder: &mut Decoder,
    bytes: &[u8],
    now_ms: u64,
) -> Result<Fed, CloseReason> {
    let mut failure = None;
    let mut fed = Fed::All;
    let handler = Handler { node, key, link };
    let per_sec = node.settings.max_frames_per_sec;
    let limits = node.hub.outbound_limits();
    decoder
        .feed::<ClientFrame, _>(bytes, |frame| {
            // Charged before the frame is handled: one read can carry hundreds of
            // small frames, and none past the allowance may reach the store.
            if costly(&frame) && !link.spend(now_ms, per_sec) {
                failure = Some(CloseReason::RateLimited);
                return false;
            }
            if let Err(reason) = handler.on_frame(frame) {
                failure = Some(reason);
                return false;
            }
            if link.half_full(limits) {
                fed = Fed::Paused;
                return false;
            }
            true
        })
        .map_err(frame_error)?;
    match failure {
        Some(reason) => Err(reason),
        None => Ok(fed),
    }
}
