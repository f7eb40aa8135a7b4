//! The parent's side of the workers: spawning them (this same binary, `worker`
//! subcommand), feeding them their plans and control words, summing their progress and
//! merging their reports.
//!
//! Workers are killed when the fleet is dropped, so no run leaves processes behind.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::plan::{Plan, STOP};
use crate::stats::{Line, Progress, Report};

/// How long workers get to send their reports after a stop.
const REPORT_GRACE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);

pub struct Fleet {
    workers: Vec<Worker>,
    progress: Arc<Mutex<Vec<Progress>>>,
    /// (seconds since spawn, connections open) samples, for the ramp plot.
    pub ramp: Vec<(f64, u64)>,
    started: Instant,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    report: oneshot::Receiver<Report>,
}

impl Fleet {
    pub async fn spawn(plans: Vec<Plan>) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("finding my own executable")?;
        let progress = Arc::new(Mutex::new(vec![Progress::default(); plans.len()]));
        let mut workers = Vec::with_capacity(plans.len());
        for (i, plan) in plans.iter().enumerate() {
            workers.push(spawn_one(&exe, plan, i, progress.clone()).await?);
        }
        Ok(Fleet { workers, progress, ramp: Vec::new(), started: Instant::now() })
    }

    /// The workers' latest progress, summed.
    pub fn totals(&self) -> Progress {
        let mut sum = Progress::default();
        for p in self.progress.lock().unwrap().iter() {
            sum.add(p);
        }
        sum
    }

    /// Sends one control word to every worker.
    pub async fn tell(&mut self, word: &str) {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(format!("{word}\n").as_bytes()).await;
            let _ = w.stdin.flush().await;
        }
    }

    /// Polls progress until `done` holds or `deadline` passes; returns whether it held.
    /// `show` turns the totals into the progress bar's position and message.
    pub async fn wait_until(
        &mut self,
        deadline: Instant,
        bar: &indicatif::ProgressBar,
        mut done: impl FnMut(&Progress) -> bool,
        show: impl Fn(&Progress) -> (u64, String),
    ) -> bool {
        loop {
            let totals = self.totals();
            self.sample(&totals);
            let (position, message) = show(&totals);
            bar.set_position(position);
            bar.set_message(message);
            if done(&totals) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn sample(&mut self, totals: &Progress) {
        let at = self.started.elapsed().as_secs_f64();
        if self.ramp.last().is_none_or(|&(t, _)| at - t >= 0.2) {
            self.ramp.push((at, totals.open));
        }
    }

    /// Stops every worker and merges their reports; a worker that does not report in
    /// time is killed and counted as missing.
    pub async fn finish(mut self) -> (Report, usize) {
        self.tell(STOP).await;
        let mut merged = Report::default();
        let mut missing = 0;
        let until = Instant::now() + REPORT_GRACE;
        for w in &mut self.workers {
            match tokio::time::timeout_at(until, &mut w.report).await {
                Ok(Ok(report)) => merged.merge(report),
                _ => missing += 1,
            }
            let _ = tokio::time::timeout_at(until, w.child.wait()).await;
        }
        (merged, missing)
    }
}

async fn spawn_one(
    exe: &std::path::Path,
    plan: &Plan,
    index: usize,
    progress: Arc<Mutex<Vec<Progress>>>,
) -> anyhow::Result<Worker> {
    let mut child = Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("spawning a worker")?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = serde_json::to_string(plan)? + "\n";
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await?;
    let (tx, report) = oneshot::channel();
    tokio::spawn(read_lines(stdout, index, progress, tx));
    Ok(Worker { child, stdin, report })
}

async fn read_lines(
    stdout: tokio::process::ChildStdout,
    index: usize,
    progress: Arc<Mutex<Vec<Progress>>>,
    report: oneshot::Sender<Report>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Progress(p)) => progress.lock().unwrap()[index] = p,
            Ok(Line::Report(r)) => {
                progress.lock().unwrap()[index] = r.progress;
                let _ = report.send(*r);
                return;
            }
            Err(error) => eprintln!("worker {index}: unreadable line ({error}): {line}"),
        }
    }
}
