//! The stream against tokio-rustls's client over loopback: what it holds between reads,
//! and the states a server meets after the handshake (key updates, close_notify).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream as ClientTls;

use super::{Acceptor, Buffers, TlsStream};
use crate::config::TlsConfig;

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut).await.expect("timed out")
}

/// A server stream and the client's end of it, over a fresh loopback socket pair.
struct Pair {
    server: TlsStream,
    client: ClientTls<TcpStream>,
    _dir: tempfile::TempDir,
}

async fn pair(
    tls: TlsConfig,
    client_versions: &[&'static rustls::SupportedProtocolVersion],
) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let server_config = crate::tls::server_config(&tls, dir.path()).unwrap();
    let ca = crate::tls::generated_paths(dir.path()).0;
    let client_config = client_config(&ca, client_versions);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = Acceptor::new(server_config);
    let accepting = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        acceptor.accept(socket).await
    });
    let socket = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let client = within(connector.connect(name, socket)).await.unwrap();
    let server = within(accepting).await.unwrap().unwrap();
    Pair { server, client, _dir: dir }
}

fn client_config(
    ca: &std::path::Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// Reads exactly `len` bytes from the server stream through a 4 KiB buffer, as the
/// connection task does.
async fn server_reads(server: &mut TlsStream, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while got.len() < len {
        let n = within(server.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "early end of stream after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends `len` bytes each way and checks they arrive intact.
async fn exchange(pair: &mut Pair, len: usize) {
    let sent = pattern(len);
    pair.client.write_all(&sent).await.unwrap();
    pair.client.flush().await.unwrap();
    assert_eq!(server_reads(&mut pair.server, len).await, sent);
    within(pair.server.write_all(&sent)).await.unwrap();
    within(pair.server.flush()).await.unwrap();
    let mut back = vec![0u8; len];
    within(pair.client.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, sent);
}

#[tokio::test]
async fn an_idle_stream_holds_no_buffer_after_a_complete_exchange() {
    for versions in [TLS13, TLS12] {
        let mut pair = pair(TlsConfig::default(), versions).await;
        assert_eq!(pair.server.buffers(), Buffers::default(), "after the handshake");
        for len in [1, 300, 4096, 60 * 1024] {
            exchange(&mut pair, len).await;
            assert_eq!(pair.server.buffers(), Buffers::default(), "after {len} bytes each way");
        }
    }
}

#[tokio::test]
async fn plaintext_beyond_the_callers_buffer_is_kept_until_read_then_freed() {
    let mut pair = pair(TlsConfig::default(), TLS13).await;
    let sent = pattern(16 * 1024);
    pair.client.write_all(&sent).await.unwrap();
    pair.client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut small = [0u8; 100];
    let n = within(pair.server.read(&mut small)).await.unwrap();
    got.extend_from_slice(&small[..n]);
    if got.len() < sent.len() {
        assert!(pair.server.buffers().plaintext > 0, "the rest of the record is kept");
    }
    got.extend(server_reads(&mut pair.server, sent.len() - got.len()).await);
    assert_eq!(got, sent);
    assert_eq!(pair.server.buffers(), Buffers::default());
}

#[tokio::test]
async fn a_client_key_update_is_answered_and_traffic_continues() {
    let mut pair = pair(TlsConfig::default(), TLS13).await;
    exchange(&mut pair, 100).await;
    pair.client.get_mut().1.refresh_traffic_keys().unwrap();
    exchange(&mut pair, 5000).await;
    pair.client.get_mut().1.refresh_traffic_keys().unwrap();
    exchange(&mut pair, 10).await;
    assert_eq!(pair.server.buffers(), Buffers::default());
}

#[tokio::test]
async fn close_notify_each_way_is_a_clean_end_of_stream() {
    let mut pair = pair(TlsConfig::default(), TLS13).await;
    exchange(&mut pair, 10).await;
    pair.client.shutdown().await.unwrap();
    let mut chunk = [0u8; 64];
    assert_eq!(within(pair.server.read(&mut chunk)).await.unwrap(), 0, "peer close_notify");
    assert_eq!(within(pair.server.read(&mut chunk)).await.unwrap(), 0, "and it stays closed");
    within(pair.server.shutdown()).await.unwrap();
    // tokio-rustls reports a close without close_notify as an error, so Ok(0) here means
    // the server's close_notify arrived.
    assert_eq!(within(pair.client.read(&mut chunk)).await.unwrap(), 0);
}

#[tokio::test]
async fn a_tcp_close_without_close_notify_is_an_error() {
    let mut pair = pair(TlsConfig::default(), TLS13).await;
    // Read everything first (the tickets too), so that the close is a FIN, not a reset.
    exchange(&mut pair, 10).await;
    let Pair { mut server, client, _dir } = pair;
    let (socket, _) = client.into_inner();
    drop(socket);
    let mut chunk = [0u8; 64];
    let error = within(server.read(&mut chunk)).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn tls13_only_refuses_a_tls12_client() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsConfig { tls13_only: true, ..Default::default() };
    let server_config = crate::tls::server_config(&tls, dir.path()).unwrap();
    let ca = crate::tls::generated_paths(dir.path()).0;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        Acceptor::new(server_config).accept(socket).await.map(|_| ())
    });
    let socket = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&ca, TLS12));
    let name = ServerName::try_from("localhost").unwrap();
    assert!(within(connector.connect(name, socket)).await.is_err(), "the client is refused");
    let error = within(accepting).await.unwrap().unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn the_negotiated_version_is_what_the_client_offered() {
    let pair12 = pair(TlsConfig::default(), TLS12).await;
    assert_eq!(pair12.server.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let pair13 = pair(TlsConfig::default(), TLS13).await;
    assert_eq!(pair13.server.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}
