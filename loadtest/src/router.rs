//! The router side of the push and broadcast scenarios: a gRPC client of the router API
//! that sends pushes at a fixed rate (unary `Push` or `PushStream`) or one message to
//! every device (one broadcast push, or device pushes in batches), and tallies what the
//! server said about each delivery.
//!
//! Every message is silent, with a TTL of 0 (now or never, so nothing waits offline),
//! and its data is the send time in Unix microseconds, big-endian, which the device
//! turns into a latency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longlink::proto::device::PushKind;
use longlink::proto::router::router_client::RouterClient;
use longlink::proto::router::{
    Broadcast, Devices, Message, PushRequest, PushResponse, Result as Wire, push_request,
};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::plan::device_id;
use crate::stats::unix_us;

/// Unary requests in flight at once; enough to keep one HTTP/2 connection busy.
const IN_FLIGHT: usize = 256;
/// Most devices one Push may name (the API's limit).
pub const BATCH: usize = 1000;
/// How long responses may trail the last request.
const RESPONSE_GRACE: Duration = Duration::from_secs(10);

pub type Client = RouterClient<InterceptedService<Channel, Auth>>;

/// Adds the router key, when there is one, to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

pub async fn connect(api: SocketAddr, key: Option<&str>) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(format!("http://{api}"))?.connect().await?;
    let auth = match key {
        Some(key) => Some(MetadataValue::try_from(format!("Bearer {key}"))?),
        None => None,
    };
    Ok(RouterClient::with_interceptor(channel, Auth(auth)))
}

/// What the server answered, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub requests: u64,
    /// Deliveries written to a live connection: each should reach its device.
    pub sent: u64,
    /// Deliveries not sent, by result and reason.
    pub not_sent: BTreeMap<String, u64>,
    /// Requests that failed whole, by gRPC status code.
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    fn response(&mut self, response: &PushResponse) {
        for r in &response.results {
            if r.result == Wire::Sent as i32 {
                self.sent += 1;
            } else {
                let name = Wire::try_from(r.result).map_or("UNKNOWN", |w| w.as_str_name());
                *self.not_sent.entry(format!("{name}:{}", r.reason)).or_default() += 1;
            }
        }
    }

    fn error(&mut self, status: &tonic::Status) {
        *self.errors.entry(format!("{:?}", status.code())).or_default() += 1;
    }
}

/// A paced run of pushes to random devices.
#[derive(Debug, Clone)]
pub struct Drive {
    pub app: String,
    /// Devices `0..n` may be picked.
    pub n: u64,
    pub rate: f64,
    pub secs: f64,
    pub deadline: Instant,
}

impl Drive {
    pub fn total(&self) -> u64 {
        (self.rate * self.secs).round() as u64
    }

    /// How many sends are due `elapsed` into the run.
    pub fn due(&self, elapsed: Duration) -> u64 {
        ((elapsed.as_secs_f64() * self.rate) as u64 + 1).min(self.total())
    }
}

fn message(sent_at_us: u64) -> Message {
    Message {
        kind: PushKind::Silent as i32,
        data: sent_at_us.to_be_bytes().to_vec(),
        ttl_secs: Some(0),
        ..Default::default()
    }
}

fn request(app: &str, ids: Vec<String>, sent_at_us: u64) -> PushRequest {
    PushRequest {
        app_id: app.to_string(),
        request_id: String::new(),
        target: Some(push_request::Target::Devices(Devices { device_ids: ids })),
        message: Some(message(sent_at_us)),
        dry_run: false,
    }
}

fn random_request(drive: &Drive) -> PushRequest {
    let id = device_id(rand::random_range(0..drive.n.max(1)));
    request(&drive.app, vec![id], unix_us())
}

/// Calls `send` as often as `drive` says, on time; returns how long sending took.
async fn pace<F: Future<Output = ()>>(
    drive: &Drive,
    mut send: impl FnMut(PushRequest) -> F,
) -> Duration {
    let start = Instant::now();
    let mut sent = 0;
    while sent < drive.total() && Instant::now() < drive.deadline {
        let due = drive.due(start.elapsed());
        while sent < due {
            send(random_request(drive)).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// Pushes with unary calls, up to [`IN_FLIGHT`] at once.
pub async fn unary(client: &Client, drive: &Drive) -> (Tally, Duration) {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let elapsed = pace(drive, |req| {
        let (permits, mut client, tally) = (permits.clone(), client.clone(), tally.clone());
        async move {
            let permit = permits.acquire_owned().await.expect("never closed");
            tokio::spawn(async move {
                let result = client.push(req).await;
                let mut t = tally.lock().unwrap();
                t.requests += 1;
                match result {
                    Ok(r) => t.response(r.get_ref()),
                    Err(status) => t.error(&status),
                }
                drop(permit);
            });
        }
    })
    .await;
    let all = permits.acquire_many(IN_FLIGHT as u32);
    let _ = tokio::time::timeout(RESPONSE_GRACE, all).await;
    let tally = tally.lock().unwrap().clone();
    (tally, elapsed)
}

/// Pushes over one `PushStream`.
pub async fn stream(client: &Client, drive: &Drive) -> anyhow::Result<(Tally, Duration)> {
    let (tx, rx) = mpsc::channel::<PushRequest>(4 * IN_FLIGHT);
    let mut client = client.clone();
    let reader = tokio::spawn(async move {
        let mut tally = Tally::default();
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut responses = match client.push_stream(requests).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tally.error(&status);
                return tally;
            }
        };
        loop {
            match responses.message().await {
                Ok(Some(r)) => {
                    tally.requests += 1;
                    tally.response(&r);
                }
                Ok(None) => break,
                Err(status) => {
                    tally.error(&status);
                    break;
                }
            }
        }
        tally
    });
    let elapsed = pace(drive, |req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(req).await;
        }
    })
    .await;
    drop(tx);
    let tally = tokio::time::timeout(RESPONSE_GRACE, reader).await??;
    Ok((tally, elapsed))
}

/// Sends one broadcast push to every device of the app; the tally counts the devices
/// the server wrote it to as sent.
pub async fn broadcast(client: &Client, app: &str) -> anyhow::Result<Tally> {
    let req = PushRequest {
        target: Some(push_request::Target::Broadcast(Broadcast { new_devices: false })),
        ..request(app, Vec::new(), unix_us())
    };
    let response = client.clone().push(req).await?.into_inner();
    let counts = response.broadcast.ok_or_else(|| anyhow::anyhow!("no broadcast counts"))?;
    let mut tally = Tally { requests: 1, sent: counts.sent, ..Tally::default() };
    for (name, n) in [("STORED", counts.stored), ("NOT_DELIVERED", counts.not_delivered)] {
        if n > 0 {
            tally.not_sent.insert(format!("{name}:broadcast"), n);
        }
    }
    Ok(tally)
}

/// Sends one message to devices `0..n` in batches of [`BATCH`], all at once; returns the
/// tally, the send time stamped in every message, and how long until the last response.
pub async fn batched(client: &Client, app: &str, n: u64) -> (Tally, u64, Duration) {
    let ids: Vec<String> = (0..n).map(device_id).collect();
    let sent_at = unix_us();
    let start = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for batch in ids.chunks(BATCH) {
        let mut client = client.clone();
        let req = request(app, batch.to_vec(), sent_at);
        calls.spawn(async move { client.push(req).await });
    }
    let mut tally = Tally::default();
    while let Some(done) = calls.join_next().await {
        tally.requests += 1;
        match done {
            Ok(Ok(r)) => tally.response(r.get_ref()),
            Ok(Err(status)) => tally.error(&status),
            Err(_) => *tally.errors.entry("panicked".into()).or_default() += 1,
        }
    }
    (tally, sent_at, start.elapsed())
}
