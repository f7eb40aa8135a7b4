//! Logging and metrics set-up: one tracing subscriber (text or JSON) and one process-wide
//! Prometheus recorder that the admin listener renders at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle. `None` when
/// another recorder was installed first (the metrics then go there).
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).clone()
}

/// Installs the log subscriber; `RUST_LOG` overrides the configured filter.
pub fn init_logs(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = if config.format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A subscriber already installed (tests, embedding) is fine.
    drop(result);
}
