//! Operations: drain, router keys, handshake admission and the admin endpoints.

mod support;

use std::time::{Duration, Instant};

use longlink::client::{ClientError, Device, Endpoint, hello};
use longlink::config::RouterKey;
use longlink::proto::device::{ErrorCode, KickReason};
use longlink::proto::router::PresenceRequest;
use longlink::proto::router::router_client::RouterClient;
use support::*;
use tonic::metadata::MetadataValue;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_kicks_every_session_with_spread_delays_refuses_newcomers_and_exits() {
    let server = start_with(|c| {
        c.drain.reconnect_min_ms = 1_000;
        c.drain.reconnect_max_ms = 30_000;
    })
    .await;
    let mut devices = Vec::new();
    for i in 0..40 {
        devices.push(server.device(&format!("d{i}")).await.0);
    }
    let tcp = server.tcp();
    let admin = server.running().admin_addr.unwrap();
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let started = Instant::now();
    let running = server.running.as_ref().unwrap();
    running.drain();
    let mut delays = Vec::new();
    for device in &mut devices {
        match within(5, device.recv()).await {
            Err(ClientError::Kicked(k)) => {
                assert_eq!(k.reason(), KickReason::Draining);
                assert!(k.reconnect);
                delays.push(k.reconnect_after_ms);
            }
            other => panic!("expected Kick(draining), got {other:?}"),
        }
    }
    let (min, max) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
    assert!(min >= 1_000 && max <= 30_000, "{min}..{max}");
    assert!(max - min >= 14_500, "delays not spread: {min}..{max}");
    // New connections are refused from the start of the drain.
    let refused = match Device::connect(&tcp).await {
        Err(_) => true,
        Ok(mut d) => {
            let token = server.token("late");
            within(5, d.hello(hello(APP, "late", &token, 0))).await.is_err()
        }
    };
    assert!(refused, "a newcomer got in during the drain");
    let server_running = server.running.as_ref().unwrap();
    assert_eq!(server_running.node.hub.sessions.len(), 0);
    let mut server = server;
    within(10, server.running.take().unwrap().stopped()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "drain took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_router_api_refuses_to_start_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.router.addr = "0.0.0.0:0".into();
    let error = longlink::server::start(c).await.unwrap_err().to_string();
    assert!(error.contains("refusing to start"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_keys_are_required_and_limited_to_their_apps() {
    let key = |k: &str, apps: &[&str]| RouterKey {
        key: Some(k.into()),
        key_file: None,
        apps: apps.iter().map(|a| a.to_string()).collect(),
    };
    let server = start_with(|c| {
        c.router.keys = vec![key("all-apps-key-0123", &[]), key("other-app-key-0123", &["other"])];
    })
    .await;
    let url = format!("http://{}", server.running().router_addr);
    let ask = || PresenceRequest { app_id: APP.into(), device_ids: vec!["x".into()] };
    let call = |bearer: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut client = RouterClient::connect(url).await.unwrap();
            let mut request = tonic::Request::new(ask());
            if let Some(b) = bearer {
                request.metadata_mut().insert("authorization", MetadataValue::from_static(b));
            }
            client.presence(request).await
        }
    };
    let none = call(None).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
    assert!(none.message().starts_with("router_key_required"));
    let wrong = call(Some("Bearer all-apps-key-0124")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().starts_with("router_key_invalid"));
    let other = call(Some("Bearer other-app-key-0123")).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied);
    assert!(call(Some("Bearer all-apps-key-0123")).await.is_ok());
    server.stop().await;
}

/// One peer address holding its share of the handshake slots gets BUSY for more, while
/// another address is still admitted; its share comes back as its handshakes end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_handshake_slot() {
    let server = start_with(|c| c.device.max_handshakes_per_peer = 3).await;
    let from = |ip: &str| Endpoint { bind: Some(ip.parse().unwrap()), ..server.tcp() };
    let busy = "longlink_handshake_failures_total{reason=\"busy\"}";
    let busy_before = metric(&server, busy).await;
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(Device::connect(&from("127.0.0.1")).await.unwrap());
    }
    eventually(5, || server.node().admission.from_peer("127.0.0.1".parse().unwrap()) == 3).await;
    let mut late = Device::connect(&from("127.0.0.1")).await.unwrap();
    match within(5, late.recv()).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code(), ErrorCode::Busy),
        other => panic!("expected BUSY, got {other:?}"),
    }
    let mut other = Device::connect(&from("127.0.0.2")).await.unwrap();
    within(5, other.hello(hello(APP, "elsewhere", &server.token("elsewhere"), 0))).await.unwrap();
    let counted = metric(&server, busy).await - busy_before;
    assert!(counted >= 1.0, "the refusal is counted: {counted}");
    drop(holders.pop());
    eventually(5, || server.node().admission.from_peer("127.0.0.1".parse().unwrap()) == 2).await;
    let mut again = Device::connect(&from("127.0.0.1")).await.unwrap();
    within(5, again.hello(hello(APP, "again", &server.token("again"), 0))).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_the_admission_limit_get_busy_with_a_retry_delay() {
    let server = start_with(|c| {
        c.device.max_handshakes = 4;
        c.device.busy_retry_ms = 1_500;
    })
    .await;
    // Four connections hold every handshake slot by saying nothing.
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(Device::connect(&server.tcp()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut late = Device::connect(&server.tcp()).await.unwrap();
    match within(5, late.recv()).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code(), ErrorCode::Busy);
            assert!((1_500..=3_000).contains(&e.retry_after_ms), "{}", e.retry_after_ms);
        }
        other => panic!("expected BUSY, got {other:?}"),
    }
    drop(holders);
    // Slots come back as soon as the holders are gone.
    within(5, async {
        loop {
            let mut d = Device::connect(&server.tcp()).await.unwrap();
            if d.hello(hello(APP, "ok", &server.token("ok"), 0)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_health_readiness_and_metrics() {
    let server = start().await;
    let admin = server.running().admin_addr.unwrap();
    let (_device, _) = server.device("m").await;
    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(http_get(admin, "/nope").await.0, 404);
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("longlink_handshakes_total{transport=\"tcp\"}"), "{body}");
    // Other tests in this process run servers too, so only the series is checked here.
    assert!(body.contains("longlink_sessions{app=\"demo\",transport=\"tcp\"}"), "{body}");
    server.stop().await;
}

/// What every idle connection keeps is the connection task's state: keep it small. The
/// memory per connection itself is measured by the load test (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_task_keeps_little_state() {
    let server = start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (socket, peer) = listener.accept().await.unwrap();
    let permit = server.node().admission.admit(peer.ip()).unwrap();
    let task = longlink::connection::serve(server.node().clone(), socket, peer, None, permit);
    let size = std::mem::size_of_val(&task);
    println!("connection task state: {size} bytes");
    assert!(size <= 320, "the connection task grew to {size} bytes");
    drop(task);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_drain_readiness_is_503_and_receipt_streams_end() {
    let server = start_with(|c| c.device.handshake_timeout_ms = 2_000).await;
    let admin = server.running().admin_addr.unwrap();
    let mut router = server.router().await;
    let ask =
        longlink::proto::router::ReceiptsRequest { app_id: APP.into(), device_id: String::new() };
    let mut receipts = router.receipts(ask).await.unwrap().into_inner();
    // A connection still in its handshake keeps the drain going until its deadline.
    let _handshaking = tokio::net::TcpStream::connect(server.tcp().addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.running().drain();
    eventually(2, || server.node().is_draining()).await;
    assert_eq!(http_get(admin, "/readyz").await, (503, "draining\n".into()));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    let ended = within(2, receipts.message()).await;
    assert!(matches!(ended, Ok(None)), "the stream ends cleanly: {ended:?}");
    let mut server = server;
    within(10, server.running.take().unwrap().stopped()).await;
    assert!(started.elapsed() < Duration::from_secs(4), "drain took {:?}", started.elapsed());
}
