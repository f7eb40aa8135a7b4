//! Logging and metrics set-up: one tracing subscriber (text or JSON) and one process-wide
//! Prometheus recorder that the admin listener renders at `/metrics`.
//!
//! Every metric is described here (its HELP line, and for histograms the buckets), and
//! the unlabelled ones and those with a small known label set are registered at zero, so
//! that a scrape lists them before anything happened. Label values always come from fixed
//! sets (close reasons, push results, transports, configured app ids), never from device
//! or user ids. The README's operations section lists them.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;
use crate::mailbox::Removed;
use crate::node::Node;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Push accepted to acked, seconds: from a device online (milliseconds) to one that
/// comes back days later (the default TTL is a day).
const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// One broadcast handed to every online device of an app, seconds (about 0.3 s for
/// 19,000 devices here).
const FANOUT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder once per process and returns its handle. `None` when
/// another recorder was installed first (the metrics then go there).
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS.get_or_init(install).clone()
}

fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full("longlink_delivery_seconds".into()), DELIVERY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("longlink_broadcast_fanout_seconds".into()),
                FANOUT_BUCKETS,
            )
        })
        .ok()?
        .install_recorder()
        .ok()?;
    describe();
    register();
    Some(handle)
}

/// The `/metrics` text: the gauges read at scrape time are set first.
pub fn render(node: &Node) -> Option<String> {
    let handle = prometheus()?;
    let store = node.hub.store();
    metrics::gauge!("longlink_store_messages").set(store.messages() as f64);
    metrics::gauge!("longlink_store_bytes").set(store.disk_bytes() as f64);
    metrics::gauge!("longlink_connections").set(node.connections() as f64);
    metrics::gauge!("longlink_parked_connections").set(node.park.parked() as f64);
    metrics::counter!("longlink_parks_total").absolute(node.park.parks());
    Some(handle.render())
}

/// Records the delivery latency of messages just acked.
pub fn delivered(acked: &[Removed]) {
    if acked.is_empty() {
        return;
    }
    let now = crate::clock::unix_ms();
    let latency = metrics::histogram!("longlink_delivery_seconds");
    for r in acked.iter().filter(|r| r.message.accepted_at_ms > 0) {
        latency.record((now - r.message.accepted_at_ms).max(0) as f64 / 1000.0);
    }
}

/// Folds histogram samples into buckets periodically, so that memory stays bounded when
/// nobody scrapes. Runs until dropped.
pub async fn upkeep() {
    let Some(handle) = prometheus() else { return };
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    use Unit::{Bytes, Count, Seconds};
    let counters = [
        ("longlink_handshakes_total", "Handshakes that established a session, by transport."),
        (
            "longlink_handshake_failures_total",
            "Connections refused before or during the handshake, by reason.",
        ),
        ("longlink_closes_total", "Connections closed, by reason."),
        ("longlink_heartbeat_timeouts_total", "Sessions closed for heartbeat silence."),
        ("longlink_kicks_total", "Sessions the server ended with a Kick frame, by reason."),
        ("longlink_pushes_total", "Per-device results of router pushes, by result."),
        ("longlink_broadcasts_total", "Broadcasts handed to the online devices of an app."),
        ("longlink_dry_runs_total", "Dry-run pushes answered (nothing delivered or changed)."),
        ("longlink_acks_total", "Messages released by Ack frames."),
        ("longlink_receipts_total", "Receipts sent by apps, by status."),
        ("longlink_receipts_lost_total", "Receipt events lost by slow router subscribers."),
        ("longlink_dropped_total", "Messages removed before an ack, by reason."),
        ("longlink_slow_consumer_closes_total", "Sessions closed over their outbound bound."),
        ("longlink_accept_errors_total", "Device listener accept errors, by kind."),
        ("longlink_parks_total", "Times an idle connection was parked without a task."),
        ("longlink_store_commits_total", "Store batches committed."),
        ("longlink_store_writes_total", "Store puts and deletes committed."),
        ("longlink_store_errors_total", "Store batches that failed to commit."),
        ("longlink_store_fsyncs_total", "Store fsyncs that succeeded."),
        ("longlink_store_waits_total", "Pushes that waited for store writes to be durable."),
        ("longlink_store_corrupt_records_total", "Corrupt store records skipped at load."),
        (
            "longlink_delivery_failures_total",
            "Delivery failures recorded in the timeline, by reason code.",
        ),
        ("longlink_timeline_entries_total", "Timeline entries written."),
        ("longlink_timeline_dropped_total", "Timeline notes dropped on a full queue."),
        ("longlink_timeline_trimmed_total", "Timeline entries trimmed to their cap."),
        ("longlink_timeline_pruned_total", "Timeline entries past the retention window."),
        ("longlink_timeline_shed_total", "Timeline entries deleted, oldest first, over max_mib."),
    ];
    for (name, help) in counters {
        describe_counter!(name, Count, help);
    }
    let gauges = [
        ("longlink_sessions", Count, "Live sessions, by app and transport."),
        ("longlink_connections", Count, "Connections alive, parked and handshaking ones included."),
        (
            "longlink_parked_connections",
            Count,
            "Idle plain connections parked without a task (see device.park_after_ms).",
        ),
        ("longlink_store_queue", Count, "Store writes waiting for the writer thread."),
        ("longlink_store_messages", Count, "Messages kept in the store for devices."),
        ("longlink_store_bytes", Bytes, "Disk space the store takes (tables and journal)."),
        ("longlink_timeline_bytes", Bytes, "Bytes of the timeline's entries, keys and values."),
    ];
    for (name, unit, help) in gauges {
        describe_gauge!(name, unit, help);
    }
    describe_histogram!(
        "longlink_delivery_seconds",
        Seconds,
        "Delivery latency: router push accepted to device ack."
    );
    describe_histogram!(
        "longlink_broadcast_fanout_seconds",
        Seconds,
        "Time to hand one broadcast to every online device of an app."
    );
}

/// Creates the series whose label sets are known up front, at zero.
fn register() {
    for name in [
        "longlink_heartbeat_timeouts_total",
        "longlink_acks_total",
        "longlink_dry_runs_total",
        "longlink_broadcasts_total",
        "longlink_slow_consumer_closes_total",
        "longlink_receipts_lost_total",
        "longlink_store_commits_total",
        "longlink_store_writes_total",
        "longlink_store_errors_total",
        "longlink_store_fsyncs_total",
        "longlink_store_waits_total",
        "longlink_store_corrupt_records_total",
        "longlink_timeline_entries_total",
        "longlink_timeline_dropped_total",
        "longlink_timeline_trimmed_total",
        "longlink_timeline_pruned_total",
        "longlink_timeline_shed_total",
        "longlink_parks_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in crate::close::KICKS {
        metrics::counter!("longlink_kicks_total", "reason" => reason.label()).absolute(0);
    }
    for reason in ["expired", "pending_cap", "collapsed"] {
        metrics::counter!("longlink_dropped_total", "reason" => reason).absolute(0);
    }
    let results = ["sent", "stored", "not_delivered", "unknown_device", "rejected"];
    let others = ["payload_too_large", "idempotent_replay", "broadcast"];
    for result in results.into_iter().chain(others) {
        metrics::counter!("longlink_pushes_total", "result" => result).absolute(0);
    }
    for transport in ["tcp", "tls"] {
        metrics::counter!("longlink_handshakes_total", "transport" => transport).absolute(0);
    }
    for kind in ["no_descriptors", "other"] {
        metrics::counter!("longlink_accept_errors_total", "kind" => kind).absolute(0);
    }
    // A histogram exists once it has a handle; the broadcast records into this one.
    drop(metrics::histogram!("longlink_delivery_seconds"));
    drop(metrics::histogram!("longlink_broadcast_fanout_seconds"));
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
