//! The result of a run: what `--json` writes whole and the summary table printed at the
//! end. Latencies are microseconds in the JSON and milliseconds in the table.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use crate::histogram::{Hist, Summary};
use crate::memory;
use crate::plan::Protocol;
use crate::router::Tally;

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub scenario: &'static str,
    pub protocol: Protocol,
    pub tls: bool,
    pub n: u64,
    pub workers: usize,
    /// Workers that sent no report (killed after the grace period).
    pub missing_workers: usize,
    pub elapsed_secs: f64,
    /// True when the --max-secs deadline cut the run short.
    pub deadline_hit: bool,
    pub connections: Connections,
    pub latency: BTreeMap<&'static str, Summary>,
    pub messages: Option<Messages>,
    pub memory: Option<memory::Change>,
    pub tls_handshakes: Option<TlsFigures>,
    pub storm: Option<Storm>,
    /// (seconds since the workers started, connections open).
    pub ramp: Vec<(f64, u64)>,
    /// The histograms behind `latency`, HdrHistogram V2, base64.
    pub histograms: BTreeMap<&'static str, Hist>,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub attempted: u64,
    /// Devices that were welcomed at least once.
    pub connected: u64,
    /// Devices that gave up.
    pub failed: u64,
    /// Attempts answered BUSY or DRAINING.
    pub refused: u64,
    /// Working connections that ended unasked.
    pub lost: u64,
    /// Failed attempts and lost connections, by reason.
    pub failures: BTreeMap<String, u64>,
    pub ramp_secs: f64,
    pub connect_rate_per_sec: f64,
    /// Sum of the workers' peaks of handshakes in progress: an upper bound.
    pub peak_handshakes: u64,
}

#[derive(Debug, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub received: u64,
    pub redelivered: u64,
    pub tally: Tally,
    pub send_secs: f64,
    pub achieved_rate_per_sec: f64,
    /// Broadcast: until the router had every response.
    pub responses_secs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct TlsFigures {
    pub handshakes: u64,
    /// Handshakes that offered a resumption ticket.
    pub resumed: u64,
    pub full: u64,
    pub full_per_sec: f64,
    pub resumed_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Storm {
    pub mode: &'static str,
    pub connected_before: u64,
    pub reconnected: u64,
    /// From the drop (or the first loss) until 99% and 100% of the devices were back.
    pub secs_to_99: Option<f64>,
    pub secs_to_100: Option<f64>,
}

impl RunResult {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }

    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        let transport = if self.tls { "tls" } else { "plain" };
        row("scenario", format!("{} ({:?}, {transport})", self.scenario, self.protocol));
        row("devices", format!("{} over {} workers", self.n, self.workers));
        row("elapsed", format!("{:.1} s", self.elapsed_secs));
        self.connection_rows(&mut row);
        for (name, s) in &self.latency {
            row(&format!("{name} latency"), latency(s));
        }
        if let Some(m) = &self.messages {
            message_rows(m, &mut row);
        }
        if let Some(t) = &self.tls_handshakes {
            row(
                "tls handshakes",
                format!(
                    "{} full ({:.0}/s), {} resumed ({:.0}/s)",
                    t.full, t.full_per_sec, t.resumed, t.resumed_per_sec
                ),
            );
        }
        if let Some(m) = &self.memory {
            memory_rows(m, &mut row);
        }
        if let Some(s) = &self.storm {
            storm_rows(s, &mut row);
        }
        if self.deadline_hit {
            row("note", "the --max-secs deadline cut the run short".into());
        }
        if self.missing_workers > 0 {
            row("note", format!("{} workers sent no report", self.missing_workers));
        }
        render(&rows)
    }

    fn connection_rows(&self, row: &mut impl FnMut(&str, String)) {
        let c = &self.connections;
        row(
            "connections",
            format!(
                "{} connected, {} failed, {} attempts, {} refused (busy/draining), {} lost",
                c.connected, c.failed, c.attempted, c.refused, c.lost
            ),
        );
        row("ramp", format!("{:.1} s, {:.0} connections/s", c.ramp_secs, c.connect_rate_per_sec));
        row("peak handshakes", format!("<= {}", c.peak_handshakes));
        if !c.failures.is_empty() {
            let list: Vec<String> = c.failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
            row("failures", list.join(", "));
            if c.failures.contains_key("token_signature") {
                let hint = "the devices' app key is not the server's: is --data-dir the \
                            server's own data directory (or --key its app key)?";
                row("hint", hint.into());
            }
        }
    }
}

fn message_rows(m: &Messages, row: &mut impl FnMut(&str, String)) {
    let verdict = if m.sent == m.received { "all arrived" } else { "MISSING" };
    row(
        "messages",
        format!(
            "{} sent, {} received ({verdict}), {} redelivered",
            m.sent, m.received, m.redelivered
        ),
    );
    // A broadcast is one burst: its figure is the response time below, not a rate.
    if m.responses_secs.is_none() {
        row("rate", format!("{:.0}/s achieved over {:.1} s", m.achieved_rate_per_sec, m.send_secs));
    }
    if !m.tally.not_sent.is_empty() || !m.tally.errors.is_empty() {
        row("not sent", format!("{:?} {:?}", m.tally.not_sent, m.tally.errors));
    }
    if let Some(secs) = m.responses_secs {
        row("responses", format!("all in {:.1} ms", secs * 1e3));
    }
}

fn memory_rows(m: &memory::Change, row: &mut impl FnMut(&str, String)) {
    if m.connections == 0 {
        row("memory", "n/a: no connection was open to divide by".into());
        return;
    }
    if let Some(per) = m.server_rss_per_connection {
        let mib = |b: Option<u64>| b.unwrap_or(0) as f64 / (1 << 20) as f64;
        row(
            "server memory",
            format!(
                "{per:.0} B/connection user space (RSS {:.1} -> {:.1} MiB)",
                mib(m.before.server_rss),
                mib(m.after.server_rss)
            ),
        );
    }
    if let Some(per) = m.tcp_buffers_per_connection {
        row("kernel buffers", format!("{per:.0} B/connection (both ends, TCP mem)"));
    }
    if let Some(per) = m.socket_slabs_per_connection {
        row("kernel sockets", format!("{per:.0} B/connection (both ends, slab)"));
    }
}

fn storm_rows(s: &Storm, row: &mut impl FnMut(&str, String)) {
    let secs = |v: Option<f64>| v.map_or("never".into(), |s| format!("{:.2} s", s));
    row(
        "storm",
        format!(
            "{}: {} of {} back; 99% in {}, 100% in {}",
            s.mode,
            s.reconnected,
            s.connected_before,
            secs(s.secs_to_99),
            secs(s.secs_to_100)
        ),
    );
}

fn latency(s: &Summary) -> String {
    let ms = |us: u64| us as f64 / 1e3;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (n={})",
        ms(s.p50_us),
        ms(s.p99_us),
        ms(s.p999_us),
        ms(s.max_us),
        s.count
    )
}

fn render(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    out
}
