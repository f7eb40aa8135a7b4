//! What the server does with bad handshakes and bad frames: a stable error code, a close,
//! and no session left behind.

mod support;

use std::time::{Duration, Instant};

use longlink::client::{ClientError, Device, hello};
use longlink::proto::device::{
    ClientFrame, ErrorCode, Hello, Ping, ServerFrame, client_frame, server_frame,
};
use longlink::session::DeviceKey;
use longlink::token::Claims;
use prost::Message as _;
use support::*;

/// Sends `hello` on a fresh connection and returns the error code the server answers.
async fn refused_with(server: &TestServer, hello: Hello) -> ErrorCode {
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    match within(5, device.hello(hello)).await {
        Err(ClientError::Refused(e)) => {
            assert!(matches!(within(5, device.recv_any()).await, Err(ClientError::Closed)));
            e.code()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_token_is_refused_with_its_code_and_no_session() {
    let server = start().await;
    let now = longlink::clock::unix_secs();
    let claims = server.claims("d1", None);
    let with = |f: &dyn Fn(&mut Claims)| {
        let mut c = claims.clone();
        f(&mut c);
        server.sign(&c)
    };
    let good = server.token("d1");
    let body = good.split('.').nth(1).unwrap().to_string();
    let cases = [
        ("not-a-jwt".to_string(), ErrorCode::TokenMalformed),
        (format!("eyJhbGciOiJub25lIn0.{body}."), ErrorCode::TokenAlgorithm),
        (format!("{}AA", &good[..good.len() - 2]), ErrorCode::TokenSignature),
        (with(&|c| c.exp = now - 120), ErrorCode::TokenExpired),
        (with(&|c| c.iat = now + 120), ErrorCode::TokenNotYetValid),
        (with(&|c| c.app = "other".into()), ErrorCode::TokenWrongApp),
        (with(&|c| c.sub = "d2".into()), ErrorCode::TokenWrongDevice),
    ];
    for (token, code) in cases {
        assert_eq!(refused_with(&server, hello(APP, "d1", &token, 0)).await, code);
    }
    let key = DeviceKey::new(APP, "d1");
    assert!(server.node().hub.session(&key).is_none());
    assert!(server.node().hub.with_device(&key, |_| ()).is_none(), "no device recorded");
    let failures =
        metric(&server, "longlink_handshake_failures_total{reason=\"token_expired\"}").await;
    assert!(failures >= 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hello_fields_are_refused_with_their_codes() {
    let server = start().await;
    let token = server.token("d1");
    let mut old = hello(APP, "d1", &token, 0);
    old.protocol_version = 9;
    assert_eq!(refused_with(&server, old).await, ErrorCode::UnsupportedVersion);
    assert_eq!(
        refused_with(&server, hello("ghost-app", "d1", &token, 0)).await,
        ErrorCode::UnknownApp
    );
    assert_eq!(refused_with(&server, hello(APP, "", &token, 0)).await, ErrorCode::InvalidHello);
    let nul = server.token("a\0b");
    assert_eq!(refused_with(&server, hello(APP, "a\0b", &nul, 0)).await, ErrorCode::InvalidHello);
    let long = "x".repeat(129);
    let token = server.token(&long);
    assert_eq!(refused_with(&server, hello(APP, &long, &token, 0)).await, ErrorCode::InvalidHello);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_frame_other_than_hello_is_refused() {
    let server = start().await;
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    device.ping().await.unwrap();
    assert_eq!(refusal(&mut device).await, ErrorCode::HelloRequired);

    let (mut device, _) = server.device("twice").await;
    let again = hello(APP, "twice", &server.token("twice"), 0);
    device.send(client_frame::Frame::Hello(again)).await.unwrap();
    assert_eq!(refusal(&mut device).await, ErrorCode::UnexpectedFrame);
    server.stop().await;
}

/// Reads until the server's `Error`, asserts it then closes, and returns its code.
async fn refusal(device: &mut Device) -> ErrorCode {
    let frames = within(5, device.until_closed()).await;
    match frames.last() {
        Some(ServerFrame { frame: Some(server_frame::Frame::Error(e)) }) => e.code(),
        other => panic!("expected an error frame last, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_deadline_holds_against_silence_and_trickling() {
    let server = start_with(|c| c.device.handshake_timeout_ms = 1_000).await;
    let started = Instant::now();
    let mut silent = Device::connect(&server.tcp()).await.unwrap();
    assert_eq!(refusal(&mut silent).await, ErrorCode::HandshakeTimeout);
    let silent_took = started.elapsed();

    // A valid Hello sent one byte every 200 ms would take far longer than the deadline.
    let bytes = longlink::frame::encode(&ClientFrame {
        frame: Some(client_frame::Frame::Hello(hello(APP, "slow", &server.token("slow"), 0))),
    });
    let started = Instant::now();
    let socket = tokio::net::TcpStream::connect(server.tcp().addr).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    let trickler = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for b in bytes.iter() {
            if writer.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = within(5, reader.read_to_end(&mut answer)).await;
    let trickle_took = started.elapsed();
    trickler.abort();
    let mut decoder = longlink::frame::Decoder::new(1 << 16);
    let mut frames = Vec::new();
    decoder
        .feed::<ServerFrame, _>(&answer, |f| {
            frames.push(f);
            true
        })
        .unwrap();
    match frames.last() {
        Some(ServerFrame { frame: Some(server_frame::Frame::Error(e)) }) => {
            assert_eq!(e.code(), ErrorCode::HandshakeTimeout)
        }
        other => panic!("expected HANDSHAKE_TIMEOUT, got {other:?}"),
    }
    for took in [silent_took, trickle_took] {
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2_500),
            "{took:?}"
        );
    }
    let timeouts =
        metric(&server, "longlink_handshake_failures_total{reason=\"handshake_timeout\"}").await;
    assert_eq!(timeouts, 2.0);
    server.stop().await;
}

/// A length-prefixed `Ping` frame whose protobuf body is exactly `len` bytes, padded with
/// an unknown bytes field (field 15 of ClientFrame, which decoders skip).
fn ping_of_len(len: usize) -> Vec<u8> {
    let base = ClientFrame { frame: Some(client_frame::Frame::Ping(Ping { client_time_ms: 1 })) };
    let mut body = base.encode_to_vec();
    let room = len - body.len() - 1; // one byte for the tag 0x7a
    let pad = (1..=5)
        .map(|k| room - k)
        .find(|pad| prost::encoding::encoded_len_varint(*pad as u64) == room - pad)
        .expect("a padding length fits");
    body.push(0x7a);
    prost::encoding::encode_varint(pad as u64, &mut body);
    body.extend(std::iter::repeat_n(0u8, pad));
    assert_eq!(body.len(), len);
    let mut frame = (len as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_at_the_limit_pass_and_one_byte_more_is_refused_before_and_after_auth() {
    let server = start().await;
    // Before authentication the limit is 4 KiB: a frame one byte over is refused at once.
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    device.send_raw(&ping_of_len(4097)[..4]).await.unwrap();
    assert_eq!(refusal(&mut device).await, ErrorCode::FrameTooLarge);
    // Exactly 4 KiB is read (and refused only because it is not a Hello).
    let mut device = Device::connect(&server.tcp()).await.unwrap();
    device.send_raw(&ping_of_len(4096)).await.unwrap();
    assert_eq!(refusal(&mut device).await, ErrorCode::HelloRequired);

    // After authentication the limit is 64 KiB.
    let (mut device, welcome) = server.device("big").await;
    assert_eq!(welcome.max_frame_bytes, 65536);
    device.send_raw(&ping_of_len(65536)).await.unwrap();
    let pong = within(5, device.recv()).await.unwrap();
    assert!(matches!(pong.frame, Some(server_frame::Frame::Pong(_))));
    device.send_raw(&ping_of_len(65537)[..4]).await.unwrap();
    assert_eq!(refusal(&mut device).await, ErrorCode::FrameTooLarge);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bytes_are_refused_with_malformed_frame() {
    let server = start().await;
    for junk in [&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..], &[0, 0, 0, 0]] {
        let mut device = Device::connect(&server.tcp()).await.unwrap();
        device.send_raw(junk).await.unwrap();
        assert_eq!(refusal(&mut device).await, ErrorCode::MalformedFrame);
        let (mut device, _) = server.device("m").await;
        device.send_raw(junk).await.unwrap();
        assert_eq!(refusal(&mut device).await, ErrorCode::MalformedFrame);
    }
    server.stop().await;
}

/// Case C9: huge declared lengths cost nothing and hurt nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_lengths_close_at_once_without_allocating() {
    let server = start().await;
    let (mut bystander, _) = server.device("bystander").await;
    let rss_before = rss_kib();
    let mut refused = 0;
    for chunk in 0..10 {
        let mut conns = Vec::new();
        for _ in 0..100 {
            let mut d = Device::connect(&server.tcp()).await.unwrap();
            // 0xFFFFFFFF, and 60 KiB (over the 4 KiB pre-auth limit), alternately.
            let prefix = if chunk % 2 == 0 { u32::MAX } else { 60 * 1024 };
            d.send_raw(&prefix.to_be_bytes()).await.unwrap();
            conns.push(d);
        }
        for mut d in conns {
            if refusal(&mut d).await == ErrorCode::FrameTooLarge {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1000);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
    bystander.ping().await.unwrap();
    let pong = within(5, bystander.recv()).await.unwrap();
    assert!(matches!(pong.frame, Some(server_frame::Frame::Pong(_))), "others unaffected");
    server.stop().await;
}
