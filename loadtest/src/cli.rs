//! The command line: one subcommand per scenario, sharing the connection and output
//! options in [`Common`], plus the hidden `worker` the parent starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::Protocol;

#[derive(Debug, Parser)]
#[command(
    name = "longlink-loadtest",
    version,
    about = "Load generator for longlink (and MQTT brokers): idle, push, broadcast, storm"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N connections at a fixed rate, hold them; handshake latency and memory.
    Idle(IdleArgs),
    /// N devices connected; the router pushes M messages/s to random ones.
    Push(PushArgs),
    /// N devices connected; one message to all of them.
    Broadcast(BroadcastArgs),
    /// N devices connected; drop them all at once (or restart the server) and time the
    /// return.
    Storm(StormArgs),
    /// Runs a share of the devices for a parent process (plan on stdin).
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Devices to connect.
    #[arg(long, default_value_t = 1000)]
    pub n: u64,
    /// New connections per second during the ramp, all workers together.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, value_enum, default_value_t = Protocol::Longlink)]
    pub protocol: Protocol,
    /// Device (or broker) address; default 127.0.0.1:7100, :7443 with --tls, :1883 for
    /// MQTT. Loopback only.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Router API address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7101")]
    pub api: SocketAddr,
    #[arg(long, env = "LONGLINK_ROUTER_KEY", hide_env_values = true)]
    pub router_key: Option<String>,
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// The server's data directory, where the demo app key is (`apps/<app>.key`).
    #[arg(long, default_value = "longlink-data")]
    pub data_dir: PathBuf,
    /// The app's token key itself, instead of reading it from --data-dir.
    #[arg(long, env = "LONGLINK_APP_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Connect over TLS.
    #[arg(long)]
    pub tls: bool,
    /// CA certificate to verify the server with (default: the generated one in
    /// --data-dir, when there).
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long, requires = "tls", conflicts_with = "ca")]
    pub insecure: bool,
    /// Name to verify in the certificate (default: the IP of --addr).
    #[arg(long, requires = "tls")]
    pub server_name: Option<String>,
    /// Never resume TLS sessions: every handshake is a full one.
    #[arg(long, requires = "tls")]
    pub no_resume: bool,
    /// Heartbeat interval to ask for (the keepalive for MQTT), in seconds.
    #[arg(long, default_value_t = 30)]
    pub heartbeat: u32,
    /// Most devices per worker process; each connection is a file descriptor, and this
    /// machine allows 20,000 per process.
    #[arg(long, default_value_t = 9000)]
    pub per_worker: u64,
    /// Local addresses to spread over: 127.0.0.2, 127.0.0.3, ...
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub sources: u8,
    /// Bound on connect plus handshake, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Retries per device after BUSY, DRAINING or a close during the handshake, in the ramp.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Hard deadline for the whole run, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_secs: u64,
    /// The server's pid, to measure its memory per connection.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the full result here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency percentiles and the ramp into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// MQTT: QoS of subscriptions and publishes (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long to hold the connections after the ramp, in seconds.
    #[arg(long, default_value_t = 10)]
    pub hold_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub common: Common,
    /// Pushes per second.
    #[arg(long, default_value_t = 1000.0)]
    pub push_rate: f64,
    /// How long to push, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Use the PushStream RPC instead of unary Push.
    #[arg(long)]
    pub stream: bool,
}

#[derive(Debug, Clone, Args)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Send batched device pushes of up to 1,000 instead of one broadcast push (to
    /// compare the two, or for a server without broadcasts).
    #[arg(long)]
    pub batched: bool,
    /// Seconds to wait after the ramp before broadcasting, so that what the ramp set off
    /// on the server (registry writes, the last handshakes) is not measured with it.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StormMode {
    /// This tool closes every connection at once, then reconnects them.
    Drop,
    /// The operator restarts the server; the devices come back by themselves.
    Restart,
}

#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, value_enum, default_value_t = StormMode::Drop)]
    pub mode: StormMode,
}
