//! What every connection and every router call needs from the running node: the hub,
//! the apps, the settings derived from the configuration, and the drain state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::admission::Admission;
use crate::apps::Apps;
use crate::config::{Config, HeartbeatConfig};
use crate::hub::Hub;
use crate::recent::Recent;
use crate::requests::Requests;

/// Device-side settings, resolved once from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub handshake_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_hello_frame_bytes: usize,
    pub max_payload_bytes: usize,
    pub busy_retry_ms: u32,
    pub send_buffer_bytes: usize,
    pub max_frames_per_sec: u32,
    pub heartbeat: HeartbeatConfig,
    pub reconnect_min_ms: u32,
    pub reconnect_max_ms: u32,
    pub default_ttl_secs: u32,
    pub max_ttl_secs: u32,
    /// Idle time after which a plain connection is parked (`None`: never).
    pub park_after: Option<Duration>,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Settings {
            handshake_timeout: Duration::from_millis(config.device.handshake_timeout_ms),
            max_frame_bytes: config.device.max_frame_bytes,
            max_hello_frame_bytes: config.device.max_hello_frame_bytes,
            max_payload_bytes: config.device.max_payload_bytes,
            busy_retry_ms: config.device.busy_retry_ms,
            send_buffer_bytes: config.device.send_buffer_bytes,
            max_frames_per_sec: config.device.max_frames_per_sec,
            heartbeat: config.heartbeat.clone(),
            reconnect_min_ms: config.drain.reconnect_min_ms,
            reconnect_max_ms: config.drain.reconnect_max_ms,
            default_ttl_secs: config.delivery.default_ttl_secs,
            max_ttl_secs: config.delivery.max_ttl_secs,
            park_after: match config.device.park_after_ms {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
        }
    }

    /// The heartbeat interval granted for a request of `asked` seconds (0: default).
    pub fn heartbeat_secs(&self, asked: u32) -> u32 {
        let h = &self.heartbeat;
        if asked == 0 { h.default_secs } else { asked.clamp(h.min_secs, h.max_secs) }
    }

    /// Silence allowed for a heartbeat interval, in milliseconds.
    pub fn silence_limit_ms(&self, heartbeat_secs: u32) -> u64 {
        (heartbeat_secs as f64 * 1000.0 * self.heartbeat.timeout_factor) as u64
    }

    /// A reconnect delay spread uniformly over the configured range.
    pub fn reconnect_delay_ms(&self) -> u32 {
        spread(self.reconnect_min_ms, self.reconnect_max_ms)
    }

    /// A retry delay for connections refused at the handshake limit.
    pub fn busy_delay_ms(&self) -> u32 {
        spread(self.busy_retry_ms, self.busy_retry_ms.saturating_mul(2))
    }
}

pub fn spread(min: u32, max: u32) -> u32 {
    if max <= min { min } else { rand::random_range(min..=max) }
}

#[derive(Debug)]
pub struct Node {
    pub hub: Hub,
    pub requests: Requests,
    pub apps: RwLock<Arc<Apps>>,
    pub settings: Settings,
    /// Handshakes in progress; a connection that finds none free is told BUSY.
    /// Handshakes in progress, in all and per peer address.
    pub admission: Arc<Admission>,
    /// Handshake failures and kicks of the last minutes, for the status page.
    pub recent: Recent,
    /// Idle plain connections waiting without a task.
    pub park: crate::park::Lazy,
    draining: AtomicBool,
    next_session: AtomicU64,
    /// Connection tasks alive (handshaking or established).
    connections: AtomicUsize,
    connections_done: Notify,
}

impl Node {
    pub fn new(hub: Hub, apps: Apps, settings: Settings, admission: Arc<Admission>) -> Self {
        Node {
            hub,
            requests: Requests::default(),
            apps: RwLock::new(Arc::new(apps)),
            settings,
            admission,
            recent: Recent::default(),
            park: crate::park::Lazy::default(),
            draining: AtomicBool::new(false),
            // Session ids start from a random point so that ids from two runs differ.
            next_session: AtomicU64::new(rand::random::<u32>() as u64 * 1_000_000),
            connections: AtomicUsize::new(0),
            connections_done: Notify::new(),
        }
    }

    pub fn apps(&self) -> Arc<Apps> {
        self.apps.read().clone()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sequentially consistent with `is_draining`: a session registered concurrently is
    /// either seen by the drain's sweep or sees the drain itself (see `connection`).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Counts a connection task for as long as the guard lives.
    pub fn track(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Resolves once no connection task is left.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.connections_done.notified();
            if self.connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
pub struct ConnectionGuard(Arc<Node>);

impl ConnectionGuard {
    pub fn node(&self) -> &Arc<Node> {
        &self.0
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.connections_done.notify_waiters();
        }
    }
}
