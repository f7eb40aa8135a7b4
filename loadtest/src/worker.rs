//! The hidden `worker` subcommand: one process running its share of the devices.
//!
//! It reads its [`Plan`] from the first line of stdin, ramps its devices at the planned
//! rate, writes [`Line::Progress`] to stdout every [`PROGRESS_EVERY`], obeys `drop` and
//! `stop` lines, and at the end (stop, end of stdin, or its own deadline) writes one
//! [`Line::Report`] and exits. Nothing else may go to stdout: it is the parent's channel.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use longlink::client::Endpoint;
use longlink::token::AppKey;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::plan::{DROP, Plan, STOP};
use crate::stats::{Line, Stats};

const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long the devices get to close after a stop before the report goes out anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the parent asked for so far; devices watch it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Control {
    /// How many drops were asked for: a device drops when this passes what it has seen.
    pub drops: u32,
    pub stop: bool,
}

/// Shared by every device task of the worker.
pub struct Ctx {
    pub plan: Plan,
    /// One per source address.
    pub endpoints: Vec<Endpoint>,
    pub key: AppKey,
    pub stats: Arc<Stats>,
    pub control: watch::Sender<Control>,
}

impl Ctx {
    fn new(plan: Plan) -> anyhow::Result<Ctx> {
        let stats = Arc::new(Stats::default());
        let tls = match &plan.tls {
            None => None,
            Some(t) => {
                let config = crate::tls::client_config(t, stats.clone())?;
                Some((config, ServerName::try_from(t.server_name.clone())?))
            }
        };
        let endpoints = plan
            .sources
            .iter()
            .map(|&ip| Endpoint { addr: plan.addr, tls: tls.clone(), bind: Some(ip) })
            .collect();
        Ok(Ctx {
            key: AppKey::hs256(plan.key.clone().into_bytes()),
            endpoints,
            stats,
            control: watch::channel(Control::default()).0,
            plan,
        })
    }
}

pub async fn run() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context("no plan on stdin")?;
    let plan: Plan = serde_json::from_str(&first).context("bad plan")?;
    anyhow::ensure!(!plan.sources.is_empty(), "plan names no source address");
    longlink::limits::raise_open_files(plan.count);
    let ctx = Arc::new(Ctx::new(plan)?);
    let devices = tokio::spawn(ramp(ctx.clone()));
    let progress = tokio::spawn(progress(ctx.clone()));
    let deadline = tokio::time::sleep(Duration::from_secs(ctx.plan.deadline_secs));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            line = lines.next_line() => match line.ok().flatten().as_deref() {
                Some(DROP) => ctx.control.send_modify(|c| c.drops += 1),
                Some(STOP) | None => break,
                Some(_) => {}
            },
            _ = &mut deadline => break,
        }
    }
    ctx.control.send_modify(|c| c.stop = true);
    let _ = tokio::time::timeout(CLOSE_GRACE, devices).await;
    progress.abort();
    emit(&Line::Report(Box::new(ctx.stats.report())));
    Ok(())
}

/// Starts the devices at the planned rate, then waits for all of them to end.
async fn ramp(ctx: Arc<Ctx>) {
    let mut set = JoinSet::new();
    let mut control = ctx.control.subscribe();
    let gap = Duration::from_secs_f64(1.0 / ctx.plan.rate.max(0.001));
    let start = Instant::now();
    for i in 0..ctx.plan.count {
        tokio::select! {
            _ = sleep_until(start + gap.mul_f64(i as f64)) => {}
            _ = control.wait_for(|c| c.stop) => break,
        }
        set.spawn(crate::device::run(ctx.clone(), ctx.plan.first + i));
    }
    while set.join_next().await.is_some() {}
}

async fn progress(ctx: Arc<Ctx>) {
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    loop {
        every.tick().await;
        emit(&Line::Progress(ctx.stats.progress()));
    }
}

fn emit(line: &Line) {
    let text = serde_json::to_string(line).expect("lines serialize");
    let mut out = std::io::stdout().lock();
    // A parent that went away cannot be told anything; the deadline ends us.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
