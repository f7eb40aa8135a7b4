//! Starting and draining a node: binds every listener, spawns the accept loops, the
//! heartbeat wheel, the router API and the admin listener, and on drain stops accepting,
//! kicks every session with a spread reconnect delay and waits, within the grace
//! period, for the connections to finish.
//!
//! `start` takes addresses from the configuration; port 0 picks a free port, and the
//! bound addresses are in [`Running`], which is how tests run real servers side by side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::apps::Apps;
use crate::close::CloseReason;
use crate::config::Config;
use crate::heartbeat::Heartbeats;
use crate::hub::{Hub, HubLimits};
use crate::node::{Node, Settings};
use crate::router::{Inspection, InspectionServer, RouterServer, Service, auth::Keys};
use crate::store::Store;
use crate::timeline::Timeline;
use crate::tls_stream::Acceptor;

/// Pending connections the kernel may queue per device listener.
const BACKLOG: u32 = 4096;

/// A started node.
#[derive(Debug)]
pub struct Running {
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub router_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    drain: watch::Sender<bool>,
    done: JoinHandle<()>,
}

impl Running {
    /// Starts the drain; returns at once. Idempotent.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// Waits until the drain has finished (or its grace period ran out).
    pub async fn stopped(self) {
        let _ = self.done.await;
    }
}

/// Binds and starts everything `config` describes.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let router_addr: SocketAddr = config.router.addr.parse().context("router.addr")?;
    let keys = router_keys(&config)?;
    if !router_addr.ip().is_loopback() && keys.is_empty() {
        anyhow::bail!(
            "refusing to start: router.addr {router_addr} is not loopback and no router key \
             is configured (set [[router.keys]])"
        );
    }
    let apps = Apps::load(&config)?;
    let dir = config.data_dir.join("store");
    let store = Arc::new(Store::open_with(&dir, config.store.policy(), config.store.memory())?);
    let node = Arc::new(build_node(&config, apps, store));
    let timeline = Timeline::open(&config.timeline, &config.data_dir.join("timeline"))
        .context("opening the timeline")?;
    node.hub.receipts.attach(timeline);
    restore(&node)?;
    // The epoch is on disk before any seq of it is given out (see `StoredEpoch`).
    node.hub.store().sync().await.context("writing the node's epoch")?;
    let (drain, drain_rx) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    // The admin listener outlives the drain, so that /readyz can say 503 meanwhile.
    let (drained, drained_rx) = watch::channel(false);

    let tcp_addr = spawn_device(&node, &config.device.tcp_addr, None, &stop_rx).await?;
    let tls_addr = match config.device.tls_addr.as_str() {
        "" => None,
        addr => {
            let tls = crate::tls::server_config(&config.tls, &config.data_dir)?;
            spawn_device(&node, addr, Some(Acceptor::new(tls)), &stop_rx).await?
        }
    };
    let router =
        TcpListener::bind(router_addr).await.with_context(|| format!("binding {router_addr}"))?;
    let router_addr = router.local_addr()?;
    let admin_addr = match config.admin.addr.as_str() {
        "" => None,
        addr => {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(addr = %bound, "admin HTTP listening (status page, metrics, health)");
            tokio::spawn(crate::admin::run(node.clone(), listener, drained_rx));
            Some(bound)
        }
    };
    let heartbeats = tokio::spawn(node.hub.heartbeats.clone().run());
    let upkeep = tokio::spawn(crate::telemetry::upkeep());
    let every = Duration::from_secs(config.delivery.purge_interval_secs);
    let purger = tokio::spawn(purge(node.clone(), every));
    let api = tokio::spawn(serve_router(node.clone(), keys, router, stop_rx.clone()));
    let grace = Duration::from_secs(config.drain.grace_secs);
    let done = tokio::spawn(drain_when_asked(
        node.clone(),
        drain_rx,
        stop,
        drained,
        grace,
        vec![heartbeats, purger, upkeep],
        api,
    ));
    crate::limits::raise_open_files(config.device.max_connections);
    Ok(Running { tcp_addr, tls_addr, router_addr, admin_addr, node, drain, done })
}

fn build_node(config: &Config, apps: Apps, store: Arc<Store>) -> Node {
    let limits = HubLimits::from_config(config);
    let hub = Hub::new(limits, Arc::new(Heartbeats::default()), store);
    let d = &config.device;
    let admission = Admission::new(d.max_handshakes, d.max_handshakes_per_peer);
    Node::new(hub, apps, Settings::from_config(config), admission)
}

/// Loads what the store kept into the hub before any listener opens.
fn restore(node: &Node) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut loaded = node.hub.store().load(crate::clock::unix_ms())?;
    node.hub.store().enter_epoch(&loaded);
    let messages = node.hub.restore(&mut loaded);
    let requests = node.requests.restore(std::mem::take(&mut loaded.requests));
    if loaded.expired > 0 {
        metrics::counter!("longlink_dropped_total", "reason" => "expired")
            .increment(loaded.expired as u64);
    }
    let level_corrupt = loaded.corrupt;
    tracing::info!(
        messages,
        requests,
        epoch = loaded.epoch,
        expired = loaded.expired,
        corrupt = level_corrupt,
        took_ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    if level_corrupt > 0 {
        tracing::warn!(corrupt = level_corrupt, "the store had corrupt records; they were skipped");
    }
    Ok(())
}

/// Purges expired messages and idempotency keys every `every`.
async fn purge(node: Arc<Node>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::clock::unix_ms();
        let expired = node.hub.purge_expired(now);
        let requests = node.requests.purge(node.hub.store(), now);
        if expired + requests > 0 {
            tracing::debug!(expired, requests, "purged");
        }
    }
}

fn router_keys(config: &Config) -> anyhow::Result<Keys> {
    let mut keys = Vec::new();
    for key in &config.router.keys {
        let secret = match (&key.key, &key.key_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(file)) => crate::apps::read_secret(file)?,
            (None, None) => unreachable!("validated: one of key and key_file is set"),
        };
        keys.push((secret, key.apps.clone()));
    }
    Ok(Keys::new(keys))
}

async fn spawn_device(
    node: &Arc<Node>,
    addr: &str,
    tls: Option<Acceptor>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Option<SocketAddr>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("binding {addr}"))?;
    let listener = socket.listen(BACKLOG)?;
    let bound = listener.local_addr()?;
    let transport = if tls.is_some() { "tls" } else { "tcp" };
    tracing::info!(addr = %bound, transport, "device listener ready");
    tokio::spawn(crate::listener::run(node.clone(), listener, tls, stop.clone()));
    Ok(Some(bound))
}

async fn serve_router(
    node: Arc<Node>,
    keys: Keys,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    if let Some(addr) = addr {
        tracing::info!(%addr, "router API ready");
    }
    let inspection_keys = keys.clone();
    let inspection = InspectionServer::with_interceptor(Inspection::new(node.clone()), move |r| {
        inspection_keys.check(r)
    });
    let service = RouterServer::with_interceptor(Service::new(node), move |r| keys.check(r));
    // Without TCP_NODELAY, small gRPC answers wait on Nagle and delayed acks: tens of
    // milliseconds at the tail of push latency.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |socket| {
            if let Ok(socket) = &socket {
                let _ = socket.set_nodelay(true);
            }
            socket
        },
    );
    let result = tonic::transport::Server::builder()
        .add_service(service)
        .add_service(inspection)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "router API stopped");
    }
}

async fn drain_when_asked(
    node: Arc<Node>,
    mut asked: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    drained: watch::Sender<bool>,
    grace: Duration,
    background: Vec<JoinHandle<()>>,
    api: JoinHandle<()>,
) {
    let _ = asked.wait_for(|asked| *asked).await;
    let sessions = node.hub.sessions.len();
    tracing::info!(sessions, grace_secs = grace.as_secs(), "draining");
    node.start_draining();
    stop.send_replace(true);
    // Receipt streams would hold the router API's graceful stop open: end them now.
    node.hub.receipts.close();
    for link in node.hub.links() {
        let delay = node.settings.reconnect_delay_ms();
        link.close(CloseReason::Draining { reconnect_after_ms: delay });
    }
    if tokio::time::timeout(grace, node.all_closed()).await.is_err() {
        tracing::warn!(
            left = node.connections(),
            "grace period over; exiting with connections open"
        );
    }
    for task in background {
        task.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    // Everything the connections and the router enqueued is on disk before we exit.
    let flushed = node.hub.store().sync().await.and_then(|()| node.hub.store().persist());
    if let Err(error) = flushed {
        tracing::error!(%error, "final store flush failed");
    }
    node.hub.receipts.timeline().settled().await;
    node.hub.receipts.timeline().persist();
    tracing::info!("drained");
    drained.send_replace(true);
}
