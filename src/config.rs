//! Configuration: one TOML file, every field documented with its unit, defaults in one
//! place (the `Default` impls below), overridable by `LONGLINK_*` environment variables.
//!
//! An override names the section and the field joined by a double underscore:
//! `LONGLINK_HEARTBEAT__MIN_SECS=20`, `LONGLINK_DEVICE__TCP_ADDR=0.0.0.0:7100`; top-level
//! fields have none: `LONGLINK_DATA_DIR=/var/lib/longlink`. Values are read as TOML values
//! when they parse as one (numbers, booleans, arrays) and as strings otherwise.
//! Validation reports every problem at once; loading never panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where longlink keeps generated keys and certificates (and, later, its store).
    /// Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    pub device: DeviceConfig,
    pub heartbeat: HeartbeatConfig,
    pub tls: TlsConfig,
    pub router: RouterConfig,
    pub admin: AdminConfig,
    pub drain: DrainConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub timeline: TimelineConfig,
    /// Apps whose devices may connect. When empty, one app `demo` is created with a key
    /// generated into `<data_dir>/apps/demo.key`.
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// Plain TCP listener for apps; empty string disables it.
    pub tcp_addr: String,
    /// TLS listener for apps; empty string disables it.
    pub tls_addr: String,
    /// Deadline from accept to a valid `Hello`, TLS handshake included, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Largest inbound frame after authentication, in bytes (length prefix excluded).
    pub max_frame_bytes: usize,
    /// Largest inbound frame before authentication, in bytes.
    pub max_hello_frame_bytes: usize,
    /// Largest message payload (title, body, click action and data together) a push may
    /// carry, in bytes.
    pub max_payload_bytes: usize,
    /// Connections this node is sized for. Only used to warn at start when the
    /// open-file limit cannot hold them.
    pub max_connections: u64,
    /// Handshakes in progress at once; connections beyond it get `Error(BUSY)` with a
    /// retry delay instead of waiting.
    pub max_handshakes: usize,
    /// Of those, how many one peer (an IPv4 address, an IPv6 /64) may hold; past it its
    /// new connections get `Error(BUSY)` too, so one peer cannot take every slot.
    pub max_handshakes_per_peer: usize,
    /// Costly inbound frames (Report, Bind, Unbind, Receipt, Ack with message ids) per second one
    /// device may send (a burst of that many, refilled at that rate; kept across its
    /// reconnects, and each Hello takes one); past it the connection is closed with
    /// `RATE_LIMITED`. Pings and cumulative acks are not counted.
    pub max_frames_per_sec: u32,
    /// Retry delay handed to connections refused at the handshake limit, in milliseconds
    /// (randomized between this and twice this).
    pub busy_retry_ms: u32,
    /// An established plain connection with nothing to read or write for this long, in
    /// milliseconds, is parked: its task ends and its socket waits on the node's park
    /// epoll until the device sends, a frame is queued for it or it is closed. Saves
    /// about 540 bytes per idle connection; 0 never parks.
    pub park_after_ms: u64,
    /// Outbound queue bound per connection, in frames. Over it: slow-consumer close.
    pub outbound_max_frames: usize,
    /// Outbound queue bound per connection, in bytes. Over it: slow-consumer close.
    pub outbound_max_bytes: usize,
    /// Kernel send buffer per device socket, in bytes; 0 leaves the kernel's autotuning
    /// on. Bounding it bounds what a stalled reader can park in kernel memory (several
    /// MiB per socket otherwise) and makes the outbound cap trip promptly.
    pub send_buffer_bytes: usize,
    /// Messages written but not yet acked that a connection may have while replaying
    /// a backlog; live pushes beyond it wait in the device's queue.
    pub send_window: usize,
    /// Unacked messages kept per device; past it the oldest are dropped and the device
    /// is told how many it missed.
    pub pending_max: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Smallest heartbeat interval granted, in seconds.
    pub min_secs: u32,
    /// Largest heartbeat interval granted, in seconds.
    pub max_secs: u32,
    /// Interval granted to apps that ask for none (0), in seconds.
    pub default_secs: u32,
    /// A connection silent for interval x this factor is closed.
    pub timeout_factor: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. Unset: a self-signed ECDSA certificate for `localhost`,
    /// 127.0.0.1 and ::1 is generated into `<data_dir>/tls/` on first start.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Refuse TLS 1.2; offer TLS 1.3 only.
    pub tls13_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// gRPC listener for the push router. Off loopback it requires `keys`.
    pub addr: String,
    /// Router keys; when any is set, every call must carry one as a bearer token.
    pub keys: Vec<RouterKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterKey {
    /// The key itself (at least 16 bytes).
    #[serde(default, serialize_with = "redact")]
    pub key: Option<String>,
    /// Or a file holding it (trailing whitespace ignored).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Apps this key may act for; empty means all.
    #[serde(default)]
    pub apps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// HTTP listener for `/healthz`, `/readyz`, `/metrics`, the status page and the
    /// timeline lookups; empty string disables it.
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// Longest a drain may take before the process exits anyway, in seconds.
    pub grace_secs: u64,
    /// Reconnect delays handed out in `Kick(draining)` are spread uniformly over
    /// [reconnect_min_ms, reconnect_max_ms].
    pub reconnect_min_ms: u32,
    pub reconnect_max_ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `longlink=debug`; `RUST_LOG` wins when set.
    pub filter: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// When stored messages reach the disk: `always` (fsync before a push is answered;
    /// nothing answered is lost, power loss included), `interval` (fsync every
    /// `fsync_interval_ms`; a crash of the process loses nothing, a power loss up to that
    /// interval) or `never` (the OS writes back; a power loss loses what it had not).
    pub fsync: String,
    /// Period of the `interval` policy, in milliseconds.
    pub fsync_interval_ms: u64,
    /// The store's read cache, in MiB.
    pub cache_mib: u64,
    /// The store's write buffers (memtables) together, in MiB; past it they are flushed.
    pub write_buffer_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// TTL of pushes that set none, in seconds.
    pub default_ttl_secs: u32,
    /// Largest TTL a push may ask for, in seconds; idempotency keys are kept this long.
    pub max_ttl_secs: u32,
    /// How often expired messages are purged from memory and disk, in seconds.
    pub purge_interval_secs: u64,
    /// Broadcasts kept per app (each while its TTL lasts); past it the oldest are
    /// dropped, and devices that have not caught up never get them.
    pub broadcast_max: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineConfig {
    /// Keep a timeline per message and per device (`longlink inspect`, `longlink trace`).
    /// Off: nothing is recorded; failures are still counted in the metrics.
    pub enabled: bool,
    /// How long entries are kept, in seconds.
    pub retention_secs: u64,
    /// Entries kept per device (the newest).
    pub device_entries: usize,
    /// Entries kept per message, all its devices together (the newest).
    pub message_entries: usize,
    /// Entries waiting to be written at most; past it new entries are dropped and counted
    /// (`longlink_timeline_dropped_total`) rather than slowing delivery.
    pub queue_max: usize,
    /// How often entries past the retention window are deleted, in seconds.
    pub prune_interval_secs: u64,
    /// Entries' bytes (keys and values) kept at most, in MiB; past it the oldest are
    /// deleted first, whatever their age.
    pub max_mib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// App id as apps send it in `Hello.app_id`.
    pub id: String,
    /// HS256 secret used to verify device tokens.
    #[serde(default, serialize_with = "redact")]
    pub key: Option<String>,
    /// Or a file holding it (trailing whitespace ignored).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("longlink-data"),
            device: DeviceConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            tls: TlsConfig::default(),
            router: RouterConfig::default(),
            admin: AdminConfig::default(),
            drain: DrainConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            delivery: DeliveryConfig::default(),
            timeline: TimelineConfig::default(),
            apps: Vec::new(),
        }
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            tcp_addr: "127.0.0.1:7100".into(),
            tls_addr: "127.0.0.1:7443".into(),
            handshake_timeout_ms: 10_000,
            max_frame_bytes: 64 * 1024,
            max_hello_frame_bytes: 4 * 1024,
            max_payload_bytes: 4 * 1024,
            max_connections: 10_000,
            max_handshakes: 2_048,
            max_handshakes_per_peer: 256,
            busy_retry_ms: 2_000,
            park_after_ms: 2_000,
            max_frames_per_sec: 50,
            outbound_max_frames: 512,
            outbound_max_bytes: 256 * 1024,
            send_buffer_bytes: 64 * 1024,
            send_window: 100,
            pending_max: 100,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig { min_secs: 30, max_secs: 600, default_secs: 180, timeout_factor: 1.5 }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { addr: "127.0.0.1:7101".into(), keys: Vec::new() }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { addr: "127.0.0.1:7102".into() }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig { grace_secs: 30, reconnect_min_ms: 1_000, reconnect_max_ms: 60_000 }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: "always".into(),
            fsync_interval_ms: 100,
            cache_mib: 16,
            write_buffer_mib: 32,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            default_ttl_secs: 86_400,
            max_ttl_secs: 30 * 86_400,
            purge_interval_secs: 10,
            broadcast_max: 1_000,
        }
    }
}

impl Default for TimelineConfig {
    fn default() -> Self {
        TimelineConfig {
            enabled: true,
            retention_secs: 3 * 86_400,
            device_entries: 200,
            message_entries: 4_096,
            queue_max: 4_096,
            prune_interval_secs: 60,
            max_mib: 1_024,
        }
    }
}

impl StoreConfig {
    pub fn memory(&self) -> crate::store::Memory {
        crate::store::Memory {
            cache_bytes: self.cache_mib.max(1) << 20,
            write_buffer_bytes: self.write_buffer_mib.max(1) << 20,
        }
    }

    /// The policy this section names (validated to be one of the three).
    pub fn policy(&self) -> crate::store::Fsync {
        match self.fsync.as_str() {
            "interval" => crate::store::Fsync::Interval(std::time::Duration::from_millis(
                self.fsync_interval_ms.max(1),
            )),
            "never" => crate::store::Fsync::Never,
            _ => crate::store::Fsync::Always,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), filter: "info,fjall=warn,lsm_tree=warn".into() }
    }
}

/// Everything wrong with a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Reads `file` (if any), applies `LONGLINK_*` variables from `env`, and validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => read_table(path)?,
            None => toml::Table::new(),
        };
        let mut errors = apply_env(&mut table, env);
        let config: Config = match toml::Value::Table(table).try_into() {
            Ok(c) => c,
            Err(e) => {
                errors.push(e.to_string().trim().replace('\n', " "));
                return Err(ConfigError(errors));
            }
        };
        errors.extend(config.problems());
        if errors.is_empty() { Ok(config) } else { Err(ConfigError(errors)) }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut addr = |name: &str, value: &str, optional: bool| {
            if !(optional && value.is_empty()) && value.parse::<SocketAddr>().is_err() {
                errors.push(format!("{name}: `{value}` is not an address such as 127.0.0.1:7100"));
            }
        };
        addr("device.tcp_addr", &self.device.tcp_addr, true);
        addr("device.tls_addr", &self.device.tls_addr, true);
        addr("router.addr", &self.router.addr, false);
        addr("admin.addr", &self.admin.addr, true);
        let exposed = self.router.addr.parse::<SocketAddr>().is_ok_and(|a| !a.ip().is_loopback());
        if exposed && self.router.keys.is_empty() {
            errors.push(format!(
                "router.addr: `{}` is not loopback, which needs a router key ([[router.keys]])",
                self.router.addr
            ));
        }
        if self.device.tcp_addr.is_empty() && self.device.tls_addr.is_empty() {
            errors.push("device: at least one of tcp_addr and tls_addr must be set".into());
        }
        let h = &self.heartbeat;
        if h.min_secs == 0 {
            errors.push("heartbeat.min_secs: must be at least 1".into());
        }
        if h.min_secs > h.max_secs {
            errors.push("heartbeat.min_secs: must not exceed heartbeat.max_secs".into());
        }
        if !(h.min_secs..=h.max_secs).contains(&h.default_secs) {
            errors.push("heartbeat.default_secs: must lie within [min_secs, max_secs]".into());
        }
        if !(h.timeout_factor >= 1.0 && h.timeout_factor <= 10.0) {
            errors.push("heartbeat.timeout_factor: must lie within [1.0, 10.0]".into());
        }
        let d = &self.device;
        // The largest push frame must fit the outbound queue, or it could never be sent.
        if d.max_payload_bytes + 1024 > d.outbound_max_bytes {
            errors.push("device.outbound_max_bytes: must exceed max_payload_bytes by 1 KiB".into());
        }
        if d.max_frames_per_sec == 0 {
            errors.push("device.max_frames_per_sec: must be at least 1".into());
        }
        if d.max_hello_frame_bytes > d.max_frame_bytes {
            errors.push("device.max_hello_frame_bytes: must not exceed max_frame_bytes".into());
        }
        for (name, value) in [
            ("device.max_frame_bytes", d.max_frame_bytes),
            ("device.max_hello_frame_bytes", d.max_hello_frame_bytes),
            ("device.max_handshakes", d.max_handshakes),
            ("device.max_handshakes_per_peer", d.max_handshakes_per_peer),
            ("device.outbound_max_frames", d.outbound_max_frames),
            ("device.outbound_max_bytes", d.outbound_max_bytes),
            ("device.send_window", d.send_window),
            ("device.pending_max", d.pending_max),
        ] {
            if value == 0 {
                errors.push(format!("{name}: must be at least 1"));
            }
        }
        if self.drain.reconnect_min_ms > self.drain.reconnect_max_ms {
            errors.push("drain.reconnect_min_ms: must not exceed reconnect_max_ms".into());
        }
        if !matches!(self.store.fsync.as_str(), "always" | "interval" | "never") {
            errors.push(format!(
                "store.fsync: `{}` is not always, interval or never",
                self.store.fsync
            ));
        }
        let ttl = &self.delivery;
        if ttl.default_ttl_secs > ttl.max_ttl_secs {
            errors.push("delivery.default_ttl_secs: must not exceed max_ttl_secs".into());
        }
        if ttl.purge_interval_secs == 0 {
            errors.push("delivery.purge_interval_secs: must be at least 1".into());
        }
        let t = &self.timeline;
        if t.retention_secs == 0 || t.device_entries == 0 || t.message_entries == 0 {
            errors.push(
                "timeline: retention_secs, device_entries and message_entries must be at least 1"
                    .into(),
            );
        }
        if t.queue_max == 0 || t.prune_interval_secs == 0 || t.max_mib == 0 {
            errors.push(
                "timeline: queue_max, prune_interval_secs and max_mib must be at least 1".into(),
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            errors.push(format!("log.format: `{}` is neither text nor json", self.log.format));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            errors.push("tls: cert_file and key_file must be set together".into());
        }
        for (i, app) in self.apps.iter().enumerate() {
            if app.id.is_empty() || app.id.len() > 64 || app.id.contains('\0') {
                errors.push(format!("apps[{i}].id: must be 1 to 64 bytes, without NUL"));
            }
            if app.key.is_some() == app.key_file.is_some() {
                errors.push(format!("apps[{i}] ({}): set exactly one of key and key_file", app.id));
            }
        }
        for (i, key) in self.router.keys.iter().enumerate() {
            if key.key.is_some() == key.key_file.is_some() {
                errors.push(format!("router.keys[{i}]: set exactly one of key and key_file"));
            }
            if key.key.as_ref().is_some_and(|k| k.len() < 16) {
                errors.push(format!("router.keys[{i}].key: must be at least 16 bytes"));
            }
        }
        errors
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError(vec![format!("{}: {}", path.display(), e.to_string().trim())]))
}

/// Applies `LONGLINK_SECTION__FIELD` variables to `table`; returns what could not be applied.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, raw) in env {
        let Some(path) = name.strip_prefix("LONGLINK_") else {
            continue;
        };
        let path = path.to_ascii_lowercase();
        let keys: Vec<&str> = path.split("__").collect();
        if let Err(key) = set_path(table, &keys, parse_env_value(&raw)) {
            errors.push(format!("{name}: `{key}` is not a section"));
        }
    }
    errors
}

fn set_path(table: &mut toml::Table, keys: &[&str], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Ok(()),
        [field] => {
            table.insert(field.to_string(), value);
            Ok(())
        }
        [section, rest @ ..] => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry.as_table_mut() {
                Some(inner) => set_path(inner, rest, value),
                None => Err(section.to_string()),
            }
        }
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::load(None, []).unwrap();
        assert_eq!(c.device.tcp_addr, "127.0.0.1:7100");
        assert_eq!(c.device.tls_addr, "127.0.0.1:7443");
        assert_eq!(c.router.addr, "127.0.0.1:7101");
        assert_eq!(c.admin.addr, "127.0.0.1:7102");
        assert_eq!(c.heartbeat.default_secs, 180);
        assert_eq!(c.device.max_hello_frame_bytes, 4096);
    }

    #[test]
    fn env_overrides_file_and_errors_are_reported_together() {
        let dir = std::env::temp_dir().join(format!("longlink-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[heartbeat]\nmin_secs = 40\n").unwrap();
        let env = [("LONGLINK_HEARTBEAT__MIN_SECS".to_string(), "20".to_string())];
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.heartbeat.min_secs, 20);

        let env = [
            ("LONGLINK_HEARTBEAT__MIN_SECS".to_string(), "0".to_string()),
            ("LONGLINK_ROUTER__ADDR".to_string(), "nowhere".to_string()),
            ("LONGLINK_LOG__FORMAT".to_string(), "xml".to_string()),
        ];
        let err = Config::load(Some(&file), env).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        let env = [("LONGLINK_ROUTER__ADDR".to_string(), "0.0.0.0:7101".to_string())];
        let err = Config::load(Some(&file), env).unwrap_err();
        assert!(err.to_string().contains("needs a router key"), "{err}");
    }

    /// The documented example must stay loadable and equal to the defaults.
    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("longlink.example.toml");
        let example = Config::load(Some(&path), []).unwrap();
        assert_eq!(example.to_toml(), Config::default().to_toml());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let env = [("LONGLINK_HEARTBEAT__MINSECS".to_string(), "5".to_string())];
        let err = Config::load(None, env).unwrap_err();
        assert!(err.to_string().contains("minsecs"), "{err}");
    }

    #[test]
    fn printed_config_redacts_secrets_and_parses_back() {
        let mut c = Config::default();
        c.apps.push(AppConfig { id: "a".into(), key: Some("s3cret".into()), key_file: None });
        let text = c.to_toml();
        assert!(!text.contains("s3cret"));
        assert!(text.parse::<toml::Table>().is_ok());
    }
}
