//! From the command line to worker plans: checks that every address is loopback, finds
//! the app key and the TLS trust, and splits the devices, the ramp rate and the source
//! addresses over as few workers as the per-process file limit allows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::Context;

use crate::cli::Common;
use crate::plan::{BROADCAST_TOPIC, Plan, Protocol, TlsPlan};

/// Workers outlive the parent's deadline by this much at most, in seconds.
const WORKER_SLACK_SECS: u64 = 30;

/// Where devices connect, once defaults are applied.
pub fn device_addr(common: &Common) -> SocketAddr {
    let port = match (common.protocol, common.tls) {
        (Protocol::Mqtt, _) => 1883,
        (Protocol::Longlink, true) => 7443,
        (Protocol::Longlink, false) => 7100,
    };
    common.addr.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

/// Refuses anything but loopback traffic.
pub fn check(common: &Common) -> anyhow::Result<()> {
    for (name, addr) in [("--addr", device_addr(common)), ("--api", common.api)] {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "{name} {addr} is not a loopback address: this tool only loads loopback"
        );
    }
    anyhow::ensure!(common.n > 0, "--n must be at least 1");
    anyhow::ensure!(common.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(common.per_worker > 0, "--per-worker must be at least 1");
    anyhow::ensure!(
        !(common.tls && common.protocol == Protocol::Mqtt),
        "--tls is not supported with --protocol mqtt yet"
    );
    Ok(())
}

/// The plans of every worker; `broadcast` makes MQTT devices subscribe to the shared
/// topic, `reconnect` makes devices come back after a loss.
pub fn plans(common: &Common, broadcast: bool, reconnect: bool) -> anyhow::Result<Vec<Plan>> {
    let workers = common.n.div_ceil(common.per_worker);
    let key = app_key(common)?;
    let tls = tls_plan(common);
    let sources: Vec<IpAddr> =
        (0..common.sources).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))).collect();
    let mut plans = Vec::new();
    let mut first = 0;
    for w in 0..workers {
        // Spread the remainder so that worker sizes differ by at most one.
        let count = common.n / workers + u64::from(w < common.n % workers);
        plans.push(Plan {
            worker: w as usize,
            protocol: common.protocol,
            addr: device_addr(common),
            tls: tls.clone(),
            app: common.app.clone(),
            key: key.clone(),
            first,
            count,
            sources: sources.clone(),
            rate: common.rate * count as f64 / common.n as f64,
            heartbeat_secs: common.heartbeat,
            timeout_ms: common.timeout_ms,
            retries: common.retries,
            reconnect,
            deadline_secs: common.max_secs + WORKER_SLACK_SECS,
            qos: common.qos,
            broadcast_topic: broadcast.then(|| BROADCAST_TOPIC.to_string()),
        });
        first += count;
    }
    Ok(plans)
}

fn app_key(common: &Common) -> anyhow::Result<String> {
    if common.protocol == Protocol::Mqtt {
        return Ok(String::new());
    }
    if let Some(key) = &common.key {
        return Ok(key.clone());
    }
    let path = longlink::apps::key_path(&common.data_dir, &common.app);
    longlink::apps::read_secret(&path)
        .with_context(|| format!("no --key given; the app key of `{}` is needed", common.app))
}

fn tls_plan(common: &Common) -> Option<TlsPlan> {
    if !common.tls {
        return None;
    }
    let generated = longlink::tls::generated_paths(&common.data_dir).0;
    let ca = match &common.ca {
        Some(ca) => Some(ca.clone()),
        None if !common.insecure && generated.exists() => Some(generated),
        None => None,
    };
    Some(TlsPlan {
        ca,
        insecure: common.insecure,
        server_name: common
            .server_name
            .clone()
            .unwrap_or_else(|| device_addr(common).ip().to_string()),
        resume: !common.no_resume,
    })
}
