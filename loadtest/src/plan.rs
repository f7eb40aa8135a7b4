//! What one worker process is asked to do: its share of the devices, where to connect and
//! how. The parent writes a `Plan` as the first line of the worker's stdin (never on argv,
//! since it carries the app key), then control words on the following lines.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Control word: close every connection at once and reconnect (the storm).
pub const DROP: &str = "drop";
/// Control word: close everything, report and exit.
pub const STOP: &str = "stop";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// The longlink device protocol.
    Longlink,
    /// MQTT 3.1.1, for a side-by-side run against a broker such as Mosquitto.
    Mqtt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsPlan {
    /// CA certificate to verify the server with; `None` with `insecure`.
    pub ca: Option<PathBuf>,
    pub insecure: bool,
    pub server_name: String,
    /// Offer session resumption; off measures full handshakes only.
    pub resume: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Worker number, for messages.
    pub worker: usize,
    pub protocol: Protocol,
    pub addr: SocketAddr,
    pub tls: Option<TlsPlan>,
    pub app: String,
    /// The app's token key (longlink only).
    pub key: String,
    /// Index of this worker's first device; device `i` is named [`device_id`]`(i)`.
    pub first: u64,
    /// Devices this worker runs.
    pub count: u64,
    /// Local addresses to connect from, used round-robin.
    pub sources: Vec<IpAddr>,
    /// New connections per second during the ramp.
    pub rate: f64,
    /// Heartbeat interval to ask for (the MQTT keepalive), in seconds.
    pub heartbeat_secs: u32,
    /// Bound on connect plus handshake, in milliseconds.
    pub timeout_ms: u64,
    /// Retries of one device after BUSY or DRAINING during the ramp.
    pub retries: u32,
    /// Reconnect whenever a connection is lost (the storm scenario).
    pub reconnect: bool,
    /// The worker reports and exits this long after it started, whatever happens.
    pub deadline_secs: u64,
    /// MQTT: QoS of subscriptions.
    pub qos: u8,
    /// MQTT: topic every device also subscribes to, for broadcasts.
    pub broadcast_topic: Option<String>,
}

/// The id of device number `index`, the same in every process of a run.
pub fn device_id(index: u64) -> String {
    format!("lt{index}")
}

/// The MQTT topic device `id` subscribes to.
pub fn device_topic(id: &str) -> String {
    format!("d/{id}")
}

/// The MQTT topic broadcasts go to.
pub const BROADCAST_TOPIC: &str = "lt/all";
