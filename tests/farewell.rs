//! A connection that closes while the socket has taken only part of a frame: the app
//! must read whole frames and then the farewell (`Kick`), never the farewell spliced
//! into the torn frame (which it would read as that frame's rest: a corrupt stream).
//!
//! The device here reads through a 4 KiB receive buffer against a server with a 4 KiB
//! send buffer, so pushes of 2 to 4 KiB leave one half written; it starts reading
//! after the close was asked for, well within the farewell's time bound.

mod support;

use std::time::Duration;

use longlink::frame::{Decoder, encode};
use longlink::proto::device::{ClientFrame, KickReason, ServerFrame, client_frame, server_frame};
use longlink::proto::router::KickRequest;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PUSHES: usize = 40;

#[derive(Debug, Clone, Copy)]
enum Close {
    Operator,
    Replaced,
    Draining,
}

/// Connects with a small receive buffer, says Hello and reads the Welcome.
async fn slow_device(server: &TestServer, id: &str) -> (TcpStream, Decoder) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = within(5, socket.connect(server.running().tcp_addr.unwrap())).await.unwrap();
    let hello = longlink::client::hello(APP, id, &server.token(id), 0);
    let hello = ClientFrame { frame: Some(client_frame::Frame::Hello(hello)) };
    stream.write_all(&encode(&hello)).await.unwrap();
    let mut decoder = Decoder::new(1 << 20);
    let mut welcomed = false;
    let mut buf = vec![0u8; 4096];
    while !welcomed {
        let n = within(5, stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before Welcome");
        decoder
            .feed::<ServerFrame, _>(&buf[..n], |f| {
                welcomed |= matches!(f.frame, Some(server_frame::Frame::Welcome(_)));
                true
            })
            .unwrap();
    }
    (stream, decoder)
}

/// Pushes until a frame is half written, closes the connection for `close`, and returns
/// what the device then reads to the end: every frame, or the decoding error.
async fn close_mid_frame(park_after_ms: u64, close: Close) -> Vec<ServerFrame> {
    let server = start_with(|c| {
        c.device.park_after_ms = park_after_ms;
        c.device.send_buffer_bytes = 4096;
    })
    .await;
    let (mut stream, mut decoder) = slow_device(&server, "slow").await;
    if park_after_ms == 1 {
        eventually(5, || server.node().park.parked() == 1).await;
    }
    let mut router = server.router().await;
    for i in 0..PUSHES {
        let title = format!("{i:04}{}", "x".repeat(2_000 + 47 * i));
        within(5, router.push(notification(&["slow"], &title))).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Kept until the end: the replacement must outlive the old connection's close.
    let _replacement = match close {
        Close::Operator => {
            let ask =
                KickRequest { app_id: APP.into(), device_id: "slow".into(), ..Default::default() };
            assert!(within(5, router.kick(ask)).await.unwrap().into_inner().kicked);
            None
        }
        Close::Replaced => Some(server.device("slow").await.0),
        Close::Draining => {
            server.running().drain();
            None
        }
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match within(5, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let mut frames = Vec::new();
    let fed = decoder.feed::<ServerFrame, _>(&raw, |f| {
        frames.push(f);
        true
    });
    let tail = &raw[raw.len().saturating_sub(8)..];
    assert!(fed.is_ok(), "{close:?}: the stream does not decode ({fed:?}), ends {tail:02x?}");
    assert_eq!(decoder.buffered(), 0, "{close:?}: a torn frame at the end, ends {tail:02x?}");
    server.stop().await;
    frames
}

/// Whole pushes in order, each byte for byte, then the Kick for `expected`, last.
fn check(frames: &[ServerFrame], expected: KickReason, how: &str) {
    let (last, pushes) = frames.split_last().unwrap_or_else(|| panic!("{how}: nothing read"));
    for (i, frame) in pushes.iter().enumerate() {
        let Some(server_frame::Frame::Push(push)) = &frame.frame else {
            panic!("{how}: frame {i} is {frame:?}, not a push");
        };
        assert_eq!(push.seq, i as u64 + 1, "{how}");
        let title = &push.notification.as_ref().unwrap().title;
        assert_eq!(title.len(), 2_004 + 47 * i, "{how}: push {i}");
        assert_eq!(&title[..4], format!("{i:04}"), "{how}");
    }
    assert!(pushes.len() < PUSHES, "{how}: no frame was ever half written");
    match &last.frame {
        Some(server_frame::Frame::Kick(kick)) => assert_eq!(kick.reason(), expected, "{how}"),
        other => panic!("{how}: the last frame is {other:?}, not the Kick"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_farewell_follows_whole_frames_parked_or_not() {
    let closes = [
        (Close::Operator, KickReason::Operator),
        (Close::Replaced, KickReason::Replaced),
        (Close::Draining, KickReason::Draining),
    ];
    for (close, reason) in closes {
        // 1 ms: the push finds the connection parked; 60 s: it is a task throughout.
        for park_after_ms in [1, 60_000] {
            let frames = close_mid_frame(park_after_ms, close).await;
            check(&frames, reason, &format!("{close:?}, park after {park_after_ms} ms"));
        }
    }
}
