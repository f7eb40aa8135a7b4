//! The device protocol over TLS, against what the server's own TLS stream could get
//! wrong: records split at awkward byte boundaries, large frames across several records
//! and reads, pipelined frames, resumption, close_notify, and the paths that answer or
//! close over TLS (BUSY, the handshake deadline, drain, slow consumers).

mod support;

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use longlink::client::{ClientError, Device, hello};
use longlink::frame::Decoder;
use longlink::proto::device::{
    ClientFrame, ErrorCode, KickReason, Ping, PushKind, ServerFrame, client_frame, server_frame,
};
use longlink::session::DeviceKey;
use prost::Message as _;
use rustls::pki_types::ServerName;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A socket whose writes go out in chunks of the sizes given (in turn), with a pause
/// after each, so that the server sees TLS records split at those boundaries.
struct Chunked {
    socket: TcpStream,
    sizes: Vec<usize>,
    next: usize,
    pause: Duration,
    sleeping: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(sleeping) = this.sleeping.as_mut() {
            ready!(sleeping.as_mut().poll(cx));
            this.sleeping = None;
        }
        let size = this.sizes[this.next % this.sizes.len()];
        let n = ready!(Pin::new(&mut this.socket).poll_write(cx, &buf[..buf.len().min(size)]))?;
        this.next += 1;
        this.sleeping = Some(Box::pin(tokio::time::sleep(this.pause)));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

type ClientTls = tokio_rustls::client::TlsStream<Chunked>;

/// A device speaking the protocol by hand over a tokio-rustls client.
struct Raw {
    tls: ClientTls,
    decoder: Decoder,
}

impl Raw {
    async fn connect(
        server: &TestServer,
        config: Arc<rustls::ClientConfig>,
        sizes: &[usize],
        pause: Duration,
    ) -> Raw {
        let socket = TcpStream::connect(server.running().tls_addr.unwrap()).await.unwrap();
        socket.set_nodelay(true).unwrap();
        let chunked = Chunked { socket, sizes: sizes.to_vec(), next: 0, pause, sleeping: None };
        let name = ServerName::try_from("localhost").unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = within(30, connector.connect(name, chunked)).await.expect("TLS handshake");
        Raw { tls, decoder: Decoder::new(1 << 17) }
    }

    /// Sets the chunk sizes and pause used from now on.
    fn chunks(&mut self, sizes: &[usize], pause: Duration) {
        let chunked = self.tls.get_mut().0;
        (chunked.sizes, chunked.next, chunked.pause) = (sizes.to_vec(), 0, pause);
    }

    async fn send(&mut self, bytes: &[u8]) {
        within(60, async {
            self.tls.write_all(bytes).await?;
            self.tls.flush().await
        })
        .await
        .expect("sent");
    }

    async fn hello(&mut self, server: &TestServer, id: &str) {
        let frame = client_frame::Frame::Hello(hello(APP, id, &server.token(id), 0));
        self.send(&longlink::frame::encode(&ClientFrame { frame: Some(frame) })).await;
        let welcome = self.recv(1).await;
        assert!(matches!(welcome[0].frame, Some(server_frame::Frame::Welcome(_))), "{welcome:?}");
    }

    /// The next `n` frames.
    async fn recv(&mut self, n: usize) -> Vec<ServerFrame> {
        let mut frames = Vec::new();
        let mut chunk = [0u8; 8192];
        within(30, async {
            while frames.len() < n {
                let read = self.tls.read(&mut chunk).await.expect("read");
                assert!(read > 0, "closed after {} frames", frames.len());
                self.decoder
                    .feed::<ServerFrame, _>(&chunk[..read], |f| {
                        frames.push(f);
                        true
                    })
                    .unwrap();
            }
        })
        .await;
        frames
    }

    fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.tls.get_ref().1.handshake_kind()
    }
}

fn client_config(
    server: &TestServer,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let base = server.tls().tls.unwrap().0;
    let ca = longlink::tls::generated_paths(server.dir.path()).0;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = base.resumption.clone();
    Arc::new(config)
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A length-prefixed `Ping` frame whose body is `len` bytes, padded with an unknown
/// bytes field (field 15, which decoders skip).
fn ping_of_len(len: usize) -> Vec<u8> {
    let base = ClientFrame { frame: Some(client_frame::Frame::Ping(Ping { client_time_ms: 1 })) };
    let mut body = base.encode_to_vec();
    let room = len - body.len() - 1;
    let pad = (1..=5)
        .map(|k| room - k)
        .find(|pad| prost::encoding::encoded_len_varint(*pad as u64) == room - pad)
        .unwrap();
    body.push(0x7a);
    prost::encoding::encode_varint(pad as u64, &mut body);
    body.extend(std::iter::repeat_n(0u8, pad));
    let mut frame = (len as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

fn is_pong(frame: &ServerFrame) -> bool {
    matches!(frame.frame, Some(server_frame::Frame::Pong(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_and_hello_written_one_byte_at_a_time_are_understood() {
    let server = start().await;
    for versions in [TLS13, TLS12] {
        let config = client_config(&server, versions);
        let mut raw = Raw::connect(&server, config, &[1], Duration::from_millis(1)).await;
        raw.hello(&server, "bytewise").await;
        raw.send(&ping_of_len(100)).await;
        assert!(is_pong(&raw.recv(1).await[0]));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_kib_frame_split_across_records_and_odd_reads_is_answered() {
    let server = start().await;
    for versions in [TLS13, TLS12] {
        let config = client_config(&server, versions);
        let mut raw = Raw::connect(&server, config, &[usize::MAX], Duration::ZERO).await;
        raw.hello(&server, "big").await;
        // Boundaries inside record headers, inside records, and across records.
        raw.chunks(&[1, 4097, 3, 333, 16389, 7, 1448, 9000, 2], Duration::from_millis(1));
        raw.send(&ping_of_len(60 * 1024)).await;
        assert!(is_pong(&raw.recv(1).await[0]));
        // And once more in one piece, many records in one write.
        raw.chunks(&[usize::MAX], Duration::ZERO);
        raw.send(&ping_of_len(60 * 1024)).await;
        raw.send(&ping_of_len(65536)).await;
        assert!(raw.recv(2).await.iter().all(is_pong));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_frames_pipelined_behind_the_hello_are_all_answered() {
    let server = start().await;
    let config = client_config(&server, TLS13);
    let mut raw = Raw::connect(&server, config, &[usize::MAX], Duration::ZERO).await;
    let frame = client_frame::Frame::Hello(hello(APP, "pipelined", &server.token("pipelined"), 0));
    let mut bytes = longlink::frame::encode(&ClientFrame { frame: Some(frame) }).to_vec();
    let ping = ClientFrame { frame: Some(client_frame::Frame::Ping(Ping { client_time_ms: 7 })) };
    // 500 a burst: under the outbound queue's 512 frames, which unread pongs would fill.
    let burst: Vec<u8> = (0..500).flat_map(|_| longlink::frame::encode(&ping)).collect();
    bytes.extend_from_slice(&burst);
    raw.send(&bytes).await;
    let frames = raw.recv(501).await;
    assert!(matches!(frames[0].frame, Some(server_frame::Frame::Welcome(_))));
    assert_eq!(frames[1..].iter().filter(|f| is_pong(f)).count(), 500);
    for _ in 0..3 {
        raw.send(&burst).await;
        assert_eq!(raw.recv(500).await.iter().filter(|f| is_pong(f)).count(), 500);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_resumes_with_a_ticket_over_tls13_and_tls12() {
    let server = start().await;
    for versions in [TLS13, TLS12] {
        let config = client_config(&server, versions);
        let mut first = Raw::connect(&server, config.clone(), &[usize::MAX], Duration::ZERO).await;
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        // The tickets come before Welcome: reading it means the client has them.
        first.hello(&server, "resumer").await;
        let mut second = Raw::connect(&server, config, &[usize::MAX], Duration::ZERO).await;
        assert_eq!(second.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "{versions:?}");
        second.hello(&server, "resumer").await;
        second.send(&ping_of_len(50)).await;
        assert!(is_pong(&second.recv(1).await[0]));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_from_the_device_ends_its_session_with_close_notify_back() {
    let server = start().await;
    let config = client_config(&server, TLS13);
    let mut raw = Raw::connect(&server, config, &[usize::MAX], Duration::ZERO).await;
    raw.hello(&server, "closer").await;
    within(5, raw.tls.shutdown()).await.unwrap();
    // tokio-rustls reads a close without close_notify as an error: Ok(0) means the
    // server answered with its own.
    let mut rest = Vec::new();
    within(5, raw.tls.read_to_end(&mut rest)).await.expect("a clean TLS close");
    assert!(rest.is_empty(), "no frame after the device closed: {rest:?}");
    let key = DeviceKey::new(APP, "closer");
    within(5, async {
        while server.node().hub.session(&key).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(metric(&server, "longlink_closes_total{reason=\"peer_closed\"}").await >= 1.0);
    server.stop().await;
}

/// Reads until the server closes and returns the `Error` code it sent last.
async fn refusal(device: &mut Device) -> ErrorCode {
    let frames = within(10, device.until_closed()).await;
    match frames.last() {
        Some(ServerFrame { frame: Some(server_frame::Frame::Error(e)) }) => e.code(),
        other => panic!("expected an error frame last, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_answered_over_tls() {
    let server = start_with(|c| c.device.max_handshakes = 1).await;
    // A socket that never starts TLS holds the only handshake slot.
    let _holder = TcpStream::connect(server.running().tls_addr.unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut late = within(5, Device::connect(&server.tls())).await.unwrap();
    assert_eq!(refusal(&mut late).await, ErrorCode::Busy);
    server.stop().await;
}

/// Saying BUSY over TLS costs a full handshake, so only so many are done at once (8 for
/// up to 128 slots): past them a refused TLS socket is closed at once, and what the
/// admitted handshakes need is not spent on refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answers_over_tls_are_bounded() {
    let server = start_with(|c| c.device.max_handshakes = 1).await;
    let addr = server.running().tls_addr.unwrap();
    let _holder = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Eight refused sockets that never start TLS hold every farewell for a second.
    let mut waiting = Vec::new();
    for _ in 0..8 {
        waiting.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ninth = TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = within(5, ninth.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "no TLS, no frame");
    assert!(started.elapsed() < Duration::from_millis(500), "closed after {:?}", started.elapsed());
    // The eight are closed when their second is up, and BUSY over TLS works again.
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut late = within(5, Device::connect(&server.tls())).await.unwrap();
    assert_eq!(refusal(&mut late).await, ErrorCode::Busy);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_deadline_covers_tls_and_the_hello_after_it() {
    let server = start_with(|c| c.device.handshake_timeout_ms = 1_000).await;
    // TLS done, no Hello: told why, over TLS.
    let mut silent = within(5, Device::connect(&server.tls())).await.unwrap();
    assert_eq!(refusal(&mut silent).await, ErrorCode::HandshakeTimeout);
    // TLS never finished (half a ClientHello): closed at the deadline, with no frame,
    // since there is no TLS session to carry one.
    let mut stuck = TcpStream::connect(server.running().tls_addr.unwrap()).await.unwrap();
    stuck.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = within(5, stuck.read_to_end(&mut rest)).await;
    assert!(started.elapsed() < Duration::from_millis(2_500), "{:?}", started.elapsed());
    let timeouts =
        metric(&server, "longlink_handshake_failures_total{reason=\"handshake_timeout\"}").await;
    assert_eq!(timeouts, 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_kicks_tls_sessions_over_tls() {
    let server = start().await;
    let mut devices = Vec::new();
    for i in 0..5 {
        devices.push(server.device_at(&server.tls(), &format!("t{i}"), 0).await.0);
    }
    server.running().drain();
    for device in &mut devices {
        match within(5, device.recv()).await {
            Err(ClientError::Kicked(k)) => assert_eq!(k.reason(), KickReason::Draining),
            other => panic!("expected Kick(draining), got {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_device_that_stops_reading_is_closed_as_a_slow_consumer() {
    let server = start_with(|c| {
        c.device.outbound_max_bytes = 64 * 1024;
        c.device.send_buffer_bytes = 16 * 1024;
    })
    .await;
    let (stalled, _) = server.device_at(&server.tls(), "stalled", 0).await;
    let (mut healthy, _) = server.device_at(&server.tls(), "healthy", 0).await;
    let key = DeviceKey::new(APP, "stalled");
    let mut router = server.router().await;
    within(30, async {
        while server.node().hub.session(&key).is_some() {
            let mut request = support::notification(&["stalled"], "x");
            if let Some(message) = request.message.as_mut() {
                message.kind = PushKind::Silent as i32;
                message.notification = None;
                message.data = vec![1u8; 1024];
                message.ttl_secs = Some(0);
            }
            router.push(request).await.unwrap();
        }
    })
    .await;
    assert!(metric(&server, "longlink_closes_total{reason=\"slow_consumer\"}").await >= 1.0);
    healthy.ping().await.unwrap();
    assert!(is_pong(&within(5, healthy.recv()).await.unwrap()), "others unaffected");
    drop(stalled);
    server.stop().await;
}
