//! From what the parent saw and the workers' merged report to the [`RunResult`], and
//! from there to the table, the JSON file and the plot.

use std::collections::BTreeMap;

use crate::cli::{Command, Common, StormMode};
use crate::histogram::Hist;
use crate::memory;
use crate::report::{Connections, Messages, RunResult, Storm, TlsFigures};
use crate::router::Tally;
use crate::stats::Report;

/// What the parent itself measured during a run.
#[derive(Debug, Default)]
pub struct Outcome {
    pub workers: usize,
    pub missing_workers: usize,
    pub elapsed_secs: f64,
    pub ramp_secs: f64,
    pub deadline_hit: bool,
    pub ramp: Vec<(f64, u64)>,
    pub memory: Option<memory::Change>,
    /// The router's tally, seconds spent sending, and (broadcast) until all responses.
    pub tally: Option<(Tally, f64, Option<f64>)>,
    pub storm: Option<StormStart>,
}

#[derive(Debug)]
pub struct StormStart {
    pub mode: StormMode,
    /// When the drop was sent; `None` for a restart (the first loss counts then).
    pub t0_us: Option<u64>,
    pub connected_before: u64,
}

pub fn assemble(command: &Command, report: Report, outcome: Outcome) -> RunResult {
    let common = common(command);
    let mut histograms = BTreeMap::new();
    histograms.insert("connect", report.connect_us.clone());
    histograms.insert("handshake", report.handshake_us.clone());
    let messages = outcome.tally.map(|(tally, secs, responses)| {
        histograms.insert("delivery", report.delivery_us.clone());
        Messages {
            sent: tally.sent,
            received: report.progress.received,
            redelivered: report.redelivered,
            achieved_rate_per_sec: if secs > 0.0 { tally.sent as f64 / secs } else { 0.0 },
            tally,
            send_secs: secs,
            responses_secs: responses,
        }
    });
    let storm = outcome.storm.map(|s| {
        let (storm, back) = storm(&s, &report);
        histograms.insert("return", back);
        storm
    });
    RunResult {
        scenario: name(command),
        protocol: common.protocol,
        tls: common.tls,
        n: common.n,
        workers: outcome.workers,
        missing_workers: outcome.missing_workers,
        elapsed_secs: outcome.elapsed_secs,
        deadline_hit: outcome.deadline_hit,
        connections: connections(&report, outcome.ramp_secs),
        latency: histograms.iter().map(|(k, h)| (*k, h.summary())).collect(),
        messages,
        memory: outcome.memory,
        tls_handshakes: common.tls.then(|| tls(&report, outcome.ramp_secs)),
        storm,
        ramp: outcome.ramp,
        histograms,
    }
}

fn common(command: &Command) -> &Common {
    match command {
        Command::Idle(a) => &a.common,
        Command::Push(a) => &a.common,
        Command::Broadcast(a) => &a.common,
        Command::Storm(a) => &a.common,
        Command::Worker => unreachable!("workers make no result"),
    }
}

fn name(command: &Command) -> &'static str {
    match command {
        Command::Idle(_) => "idle",
        Command::Push(a) if a.stream => "push (stream)",
        Command::Push(_) => "push",
        Command::Broadcast(_) => "broadcast",
        Command::Storm(_) => "storm",
        Command::Worker => "worker",
    }
}

fn connections(report: &Report, ramp_secs: f64) -> Connections {
    let p = &report.progress;
    Connections {
        attempted: p.attempts,
        connected: p.connected,
        failed: p.failed,
        refused: report.refused,
        lost: p.lost,
        failures: report.failures.clone(),
        ramp_secs,
        connect_rate_per_sec: p.connected as f64 / ramp_secs.max(1e-9),
        peak_handshakes: report.peak_in_flight,
    }
}

fn tls(report: &Report, ramp_secs: f64) -> TlsFigures {
    let full = report.tls_handshakes.saturating_sub(report.tls_resumed);
    let resumed = report.tls_handshakes - full;
    let per_sec = |n: u64| n as f64 / ramp_secs.max(1e-9);
    TlsFigures {
        handshakes: report.tls_handshakes,
        resumed,
        full,
        full_per_sec: per_sec(full),
        resumed_per_sec: per_sec(resumed),
    }
}

/// Times until 99% and 100% of the devices were back, and the distribution of the
/// return times (microseconds after the drop).
fn storm(start: &StormStart, report: &Report) -> (Storm, Hist) {
    let t0 = start.t0_us.or(report.first_lost_at_us).unwrap_or(0);
    let mut back: Vec<u64> =
        report.reconnected_at_us.iter().map(|t| t.saturating_sub(t0)).collect();
    back.sort_unstable();
    let mut hist = Hist::default();
    back.iter().for_each(|&us| hist.record(us));
    let before = start.connected_before;
    let at = |count: u64| -> Option<f64> {
        let i = count.checked_sub(1)? as usize;
        back.get(i).map(|&us| us as f64 / 1e6)
    };
    let storm = Storm {
        mode: match start.mode {
            StormMode::Drop => "drop",
            StormMode::Restart => "restart",
        },
        connected_before: before,
        reconnected: back.len() as u64,
        secs_to_99: at((before as f64 * 0.99).ceil() as u64),
        secs_to_100: at(before),
    };
    (storm, hist)
}

/// Prints the table; writes the JSON and the plot when asked.
pub fn output(common: &Common, result: &RunResult) -> anyhow::Result<()> {
    println!("{}", result.table());
    if let Some(path) = &common.json {
        result.write_json(path)?;
    }
    if let Some(path) = &common.plot {
        let names: &[&str] = match result.scenario {
            "idle" => &["connect", "handshake"],
            "storm" => &["return", "handshake"],
            _ => &["delivery"],
        };
        let curves: Vec<(&str, &Hist)> =
            names.iter().filter_map(|&n| result.histograms.get(n).map(|h| (n, h))).collect();
        let title = format!("longlink-loadtest {} ({} devices)", result.scenario, result.n);
        std::fs::write(path, crate::plot::svg(&title, &curves, &result.ramp))?;
    }
    Ok(())
}

impl RunResult {
    /// Every device connected, every message sent arrived, every dropped device came
    /// back, within the deadline.
    pub fn counts_add_up(&self) -> bool {
        let messages = self.messages.as_ref().is_none_or(|m| m.sent == m.received);
        let storm = self.storm.as_ref().is_none_or(|s| s.reconnected >= s.connected_before);
        self.connections.connected == self.n
            && self.missing_workers == 0
            && !self.deadline_hit
            && messages
            && storm
    }
}
