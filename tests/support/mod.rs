//! Shared harness for the black-box tests: a real server on loopback ports chosen by the
//! kernel, with its own data directory, plus device and router clients.

#![allow(dead_code)]

pub mod child;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use longlink::client::{Device, Endpoint, hello};
use longlink::config::Config;
use longlink::proto::device::{Notification, PushKind, ServerFrame, Welcome, server_frame};
use longlink::proto::router::router_client::RouterClient;
use longlink::proto::router::{Devices, Message, PushRequest, PushResponse, push_request};
use longlink::server::Running;
use longlink::token::{AppKey, Claims};
use rustls::pki_types::ServerName;
use tonic::transport::Channel;

pub const APP: &str = "demo";

/// Awaits `fut`, failing the test if it takes longer than `secs`.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s"))
}

/// A configuration on free loopback ports with `dir` as data directory.
pub fn config(dir: &std::path::Path) -> Config {
    let mut c = Config { data_dir: dir.to_path_buf(), ..Default::default() };
    c.device.tcp_addr = "127.0.0.1:0".into();
    c.device.tls_addr = "127.0.0.1:0".into();
    c.router.addr = "127.0.0.1:0".into();
    c.admin.addr = "127.0.0.1:0".into();
    c.drain.grace_secs = 5;
    // Parks every plain connection as soon as it is idle, so that every test also runs
    // each of its steps through parking and resuming: none may depend on a task staying.
    c.device.park_after_ms = 1;
    c
}

pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    key: AppKey,
}

/// Starts a server with `tweak` applied to the default test configuration.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    longlink::telemetry::prometheus();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    tweak(&mut c);
    let running = longlink::server::start(c).await.expect("server starts");
    // With apps configured there is no demo key; such tests sign their own tokens.
    let demo_key = longlink::apps::key_path(dir.path(), APP);
    let secret = longlink::apps::read_secret(&demo_key).unwrap_or_default();
    TestServer { running: Some(running), dir, key: AppKey::hs256(secret.into_bytes()) }
}

pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

impl TestServer {
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn claims(&self, device: &str, user: Option<&str>) -> Claims {
        let now = longlink::clock::unix_secs();
        Claims {
            sub: device.into(),
            app: APP.into(),
            uid: user.map(Into::into),
            exp: now + 3600,
            iat: now,
            nbf: None,
        }
    }

    pub fn token(&self, device: &str) -> String {
        self.key.sign(&self.claims(device, None))
    }

    pub fn user_token(&self, device: &str, user: &str) -> String {
        self.key.sign(&self.claims(device, Some(user)))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        self.key.sign(claims)
    }

    pub fn tcp(&self) -> Endpoint {
        Endpoint { addr: self.running().tcp_addr.unwrap(), tls: None, bind: None }
    }

    pub fn tls(&self) -> Endpoint {
        let ca = longlink::tls::generated_paths(self.dir.path()).0;
        let config = longlink::tls::client_config(Some(&ca), false).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        Endpoint { addr: self.running().tls_addr.unwrap(), tls: Some((config, name)), bind: None }
    }

    /// A device connected over plain TCP and past its handshake.
    pub async fn device(&self, id: &str) -> (Device, Welcome) {
        self.device_at(&self.tcp(), id, 0).await
    }

    pub async fn device_at(
        &self,
        endpoint: &Endpoint,
        id: &str,
        heartbeat: u32,
    ) -> (Device, Welcome) {
        let mut device = within(5, Device::connect(endpoint)).await.expect("connects");
        let welcome = within(5, device.hello(hello(APP, id, &self.token(id), heartbeat)))
            .await
            .expect("welcomed");
        (device, welcome)
    }

    pub async fn router(&self) -> RouterClient<Channel> {
        let url = format!("http://{}", self.running().router_addr);
        RouterClient::connect(url).await.expect("router API connects")
    }

    /// Pushes a notification titled `title` to `devices`.
    pub async fn notify(&self, devices: &[&str], title: &str) -> PushResponse {
        let mut router = self.router().await;
        within(5, router.push(notification(devices, title))).await.expect("push").into_inner()
    }

    pub fn node(&self) -> &Arc<longlink::node::Node> {
        &self.running().node
    }

    /// Drains and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.drain();
            within(15, running.stopped()).await;
        }
    }
}

pub fn notification(devices: &[&str], title: &str) -> PushRequest {
    PushRequest {
        app_id: APP.into(),
        request_id: String::new(),
        target: Some(push_request::Target::Devices(Devices {
            device_ids: devices.iter().map(|d| d.to_string()).collect(),
        })),
        message: Some(Message {
            kind: PushKind::Notification as i32,
            notification: Some(Notification {
                title: title.into(),
                body: "body".into(),
                click_action: String::new(),
            }),
            ..Default::default()
        }),
        dry_run: false,
    }
}

/// A broadcast to the whole app, for new devices too when `new_devices`, with a TTL
/// (`None`: the default).
pub fn broadcast(title: &str, new_devices: bool, ttl_secs: Option<u32>) -> PushRequest {
    let mut request = notification(&["unused"], title);
    request.target =
        Some(push_request::Target::Broadcast(longlink::proto::router::Broadcast { new_devices }));
    request.message.as_mut().unwrap().ttl_secs = ttl_secs;
    request
}

/// The next `Push` frame on `device` (skipping pongs and other frames).
pub async fn next_push(device: &mut Device) -> longlink::proto::device::Push {
    loop {
        match within(5, device.recv()).await.expect("frame") {
            ServerFrame { frame: Some(server_frame::Frame::Push(p)) } => return p,
            _ => continue,
        }
    }
}

/// Polls `check` until it holds, for at most `secs`.
pub async fn eventually(secs: u64, mut check: impl FnMut() -> bool) {
    within(secs, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The value of one metric series in the server's /metrics output (0 when absent).
pub async fn metric(server: &TestServer, series: &str) -> f64 {
    let addr = server.running().admin_addr.unwrap();
    let body = http_get(addr, "/metrics").await.1;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A bare HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    within(5, s.read_to_string(&mut text)).await.unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// This process's resident memory, in KiB (the in-process server's included).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Two apps, `shop` and `news`, with their own keys: a server and one device `same` of
/// each, connected (the same device id in both apps).
pub async fn two_apps() -> (TestServer, Vec<Device>, [(&'static str, &'static str); 2]) {
    let keys = [("shop", "shop-secret-0123456789"), ("news", "news-secret-0123456789")];
    let server = start_with(|c| {
        c.apps = keys
            .iter()
            .map(|(id, key)| longlink::config::AppConfig {
                id: (*id).into(),
                key: Some((*key).into()),
                key_file: None,
            })
            .collect();
    })
    .await;
    let now = longlink::clock::unix_secs();
    let mut devices = Vec::new();
    for (app, secret) in keys {
        let claims = Claims {
            sub: "same".into(),
            app: app.into(),
            uid: None,
            exp: now + 600,
            iat: now,
            nbf: None,
        };
        let token = AppKey::hs256(secret.as_bytes().to_vec()).sign(&claims);
        let mut d = Device::connect(&server.tcp()).await.unwrap();
        d.hello(hello(app, "same", &token, 0)).await.unwrap();
        devices.push(d);
    }
    (server, devices, keys)
}
