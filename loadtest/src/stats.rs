//! What a worker counts while it runs, and the report it sends the parent at the end.
//!
//! Counters are atomics shared by every device task of the worker; histograms sit behind
//! a mutex each, which is cheap next to a socket write. [`Report`] is the same shape in
//! the worker and the parent, so merging workers is adding reports.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::histogram::Hist;

/// Live counters of one worker.
#[derive(Debug, Default)]
pub struct Stats {
    pub attempts: AtomicU64,
    /// Devices that reached Welcome (CONNACK) at least once.
    pub connected: AtomicU64,
    /// Connections open right now.
    pub open: AtomicU64,
    /// Devices that gave up: their last attempt failed.
    pub failed: AtomicU64,
    /// Devices whose first attempt has finished, either way: the ramp is done at `count`.
    pub settled: AtomicU64,
    /// Attempts answered BUSY or DRAINING (each retried after the delay asked for).
    pub refused: AtomicU64,
    /// Working connections that ended without being asked to.
    pub lost: AtomicU64,
    /// Welcomes after a drop or a loss.
    pub reconnects: AtomicU64,
    /// Messages received, redeliveries excluded.
    pub received: AtomicU64,
    pub redelivered: AtomicU64,
    /// Handshakes in progress (connect to Welcome), and the most seen at once.
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    /// TLS handshakes that completed, and those that offered a resumption ticket.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub failures: Mutex<BTreeMap<String, u64>>,
    pub connect_us: Mutex<Hist>,
    pub handshake_us: Mutex<Hist>,
    pub delivery_us: Mutex<Hist>,
    /// Unix microseconds of every reconnect (a Welcome after a drop or a loss).
    pub reconnected_at_us: Mutex<Vec<u64>>,
    /// Unix microseconds of the first loss of a working connection.
    pub first_lost_at_us: Mutex<Option<u64>>,
}

impl Stats {
    pub fn fail(&self, reason: &str) {
        *self.failures.lock().unwrap().entry(reason.to_string()).or_default() += 1;
    }

    pub fn handshake_started(&self) {
        let now = self.in_flight.fetch_add(1, Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Relaxed);
    }

    pub fn handshake_ended(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub fn record(hist: &Mutex<Hist>, elapsed: Duration) {
        hist.lock().unwrap().record(elapsed.as_micros() as u64);
    }

    pub fn lost_at(&self, unix_us: u64) {
        let mut first = self.first_lost_at_us.lock().unwrap();
        *first = Some(first.map_or(unix_us, |t| t.min(unix_us)));
    }

    pub fn progress(&self) -> Progress {
        Progress {
            attempts: self.attempts.load(Relaxed),
            connected: self.connected.load(Relaxed),
            open: self.open.load(Relaxed),
            failed: self.failed.load(Relaxed),
            settled: self.settled.load(Relaxed),
            received: self.received.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            lost: self.lost.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
        }
    }

    pub fn report(&self) -> Report {
        Report {
            progress: self.progress(),
            refused: self.refused.load(Relaxed),
            redelivered: self.redelivered.load(Relaxed),
            peak_in_flight: self.peak_in_flight.load(Relaxed),
            tls_handshakes: self.tls_handshakes.load(Relaxed),
            tls_resumed: self.tls_resumed.load(Relaxed),
            failures: self.failures.lock().unwrap().clone(),
            connect_us: self.connect_us.lock().unwrap().clone(),
            handshake_us: self.handshake_us.lock().unwrap().clone(),
            delivery_us: self.delivery_us.lock().unwrap().clone(),
            reconnected_at_us: self.reconnected_at_us.lock().unwrap().clone(),
            first_lost_at_us: *self.first_lost_at_us.lock().unwrap(),
        }
    }
}

/// The counters a worker sends every few hundred milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub attempts: u64,
    pub connected: u64,
    pub open: u64,
    pub failed: u64,
    pub settled: u64,
    pub received: u64,
    pub in_flight: u64,
    pub lost: u64,
    pub reconnects: u64,
}

impl Progress {
    pub fn add(&mut self, other: &Progress) {
        self.attempts += other.attempts;
        self.connected += other.connected;
        self.open += other.open;
        self.failed += other.failed;
        self.settled += other.settled;
        self.received += other.received;
        self.in_flight += other.in_flight;
        self.lost += other.lost;
        self.reconnects += other.reconnects;
    }
}

/// Everything a worker measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub progress: Progress,
    pub refused: u64,
    pub redelivered: u64,
    /// Summed over workers this is an upper bound: their peaks need not coincide.
    pub peak_in_flight: u64,
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    pub failures: BTreeMap<String, u64>,
    pub connect_us: Hist,
    pub handshake_us: Hist,
    pub delivery_us: Hist,
    pub reconnected_at_us: Vec<u64>,
    pub first_lost_at_us: Option<u64>,
}

impl Report {
    pub fn merge(&mut self, other: Report) {
        self.progress.add(&other.progress);
        self.refused += other.refused;
        self.redelivered += other.redelivered;
        self.peak_in_flight += other.peak_in_flight;
        self.tls_handshakes += other.tls_handshakes;
        self.tls_resumed += other.tls_resumed;
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
        self.connect_us.merge(&other.connect_us);
        self.handshake_us.merge(&other.handshake_us);
        self.delivery_us.merge(&other.delivery_us);
        self.reconnected_at_us.extend(other.reconnected_at_us);
        self.first_lost_at_us = match (self.first_lost_at_us, other.first_lost_at_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// One line of a worker's stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Progress(Progress),
    Report(Box<Report>),
}

/// Wall-clock microseconds: send times travel between processes, so they cannot be
/// `Instant`s. Every process of a run shares this machine's clock.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
