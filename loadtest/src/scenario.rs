//! The scenarios as the parent runs them. Every run has the same shape: plan, spawn the
//! workers, ramp, the scenario's own phase, stop the workers, merge, report. Every wait
//! is bounded by the run's `--max-secs` deadline; the workers die with the parent.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::cli::{Command, Common, StormMode};
use crate::fleet::Fleet;
use crate::memory;
use crate::outcome::{Outcome, StormStart};
use crate::plan::{DROP, Protocol};
use crate::publisher::Publisher;
use crate::router::{self, Drive, Tally};
use crate::stats::{Progress, unix_us};

/// How long deliveries may trail the last push before the run counts them missing.
const SETTLE: Duration = Duration::from_secs(10);

/// Runs `command`; returns whether every count added up.
pub async fn run(command: Command) -> anyhow::Result<bool> {
    let common = match &command {
        Command::Idle(a) => &a.common,
        Command::Push(a) => &a.common,
        Command::Broadcast(a) => &a.common,
        Command::Storm(a) => &a.common,
        Command::Worker => unreachable!("main runs workers"),
    };
    crate::setup::check(common)?;
    let broadcast = matches!(command, Command::Broadcast(_));
    let reconnect = matches!(command, Command::Storm(_));
    let plans = crate::setup::plans(common, broadcast, reconnect)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(common.max_secs);
    let before = memory::snapshot(common.server_pid);
    let mut fleet = Fleet::spawn(plans.clone()).await?;
    let mut outcome = Outcome { workers: plans.len(), ..Outcome::default() };
    outcome.ramp_secs = ramp(&mut fleet, common, deadline).await;
    match &command {
        Command::Idle(a) => {
            idle(&mut fleet, common, a.hold_secs, before, deadline, &mut outcome).await
        }
        Command::Push(a) => {
            let drive = Drive {
                app: common.app.clone(),
                n: common.n,
                rate: a.push_rate,
                secs: a.secs,
                deadline,
            };
            push(&mut fleet, common, drive, a.stream, &mut outcome).await?
        }
        Command::Broadcast(a) => {
            tokio::time::sleep(Duration::from_secs(a.settle_secs)).await;
            fan_out(&mut fleet, common, a.batched, deadline, &mut outcome).await?
        }
        Command::Storm(a) => storm(&mut fleet, a.mode, deadline, &mut outcome).await,
        Command::Worker => {}
    }
    outcome.deadline_hit = Instant::now() >= deadline;
    outcome.ramp = fleet.ramp.clone();
    let (report, missing) = fleet.finish().await;
    outcome.missing_workers = missing;
    outcome.elapsed_secs = started.elapsed().as_secs_f64();
    let result = crate::outcome::assemble(&command, report, outcome);
    crate::outcome::output(common, &result)?;
    Ok(result.counts_add_up())
}

fn bar(len: u64, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    )
    .expect("template is valid");
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar
}

/// Waits until every device's first attempt has ended; returns how long that took.
async fn ramp(fleet: &mut Fleet, common: &Common, deadline: Instant) -> f64 {
    let n = common.n;
    let bar = bar(n, "ramp");
    let start = Instant::now();
    fleet
        .wait_until(
            deadline,
            &bar,
            |p| p.settled >= n,
            |p| {
                (
                    p.settled,
                    format!("{} open, {} failed, {} handshaking", p.open, p.failed, p.in_flight),
                )
            },
        )
        .await;
    bar.finish_and_clear();
    start.elapsed().as_secs_f64()
}

async fn idle(
    fleet: &mut Fleet,
    common: &Common,
    hold_secs: u64,
    before: memory::Snapshot,
    deadline: Instant,
    outcome: &mut Outcome,
) {
    let bar = bar(hold_secs, "hold");
    let start = Instant::now();
    let until = (start + Duration::from_secs(hold_secs)).min(deadline);
    fleet
        .wait_until(
            until,
            &bar,
            |_| false,
            |p| (start.elapsed().as_secs(), format!("{} open, {} lost", p.open, p.lost)),
        )
        .await;
    bar.finish_and_clear();
    let after = memory::snapshot(common.server_pid);
    outcome.memory = Some(memory::change(before, after, fleet.totals().open));
}

async fn push(
    fleet: &mut Fleet,
    common: &Common,
    drive: Drive,
    stream: bool,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let deadline = drive.deadline;
    let bar = bar(drive.total(), "push");
    let driver = tokio::spawn(drive_pushes(common.clone(), drive, stream));
    fleet.wait_until(deadline, &bar, |_| driver.is_finished(), received).await;
    let (tally, took) = driver.await??;
    settle(fleet, &bar, tally.sent, deadline).await;
    bar.finish_and_clear();
    outcome.tally = Some((tally, took.as_secs_f64(), None));
    Ok(())
}

async fn drive_pushes(
    common: Common,
    drive: Drive,
    stream: bool,
) -> anyhow::Result<(Tally, Duration)> {
    match common.protocol {
        Protocol::Longlink => {
            let client = router::connect(common.api, common.router_key.as_deref()).await?;
            if stream {
                router::stream(&client, &drive).await
            } else {
                Ok(router::unary(&client, &drive).await)
            }
        }
        Protocol::Mqtt => {
            let addr = crate::setup::device_addr(&common);
            Publisher::connect(addr, common.qos).await?.drive(&drive).await
        }
    }
}

/// One message to every device.
async fn fan_out(
    fleet: &mut Fleet,
    common: &Common,
    batched: bool,
    deadline: Instant,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let open = fleet.totals().open;
    let start = Instant::now();
    let tally = match common.protocol {
        Protocol::Longlink => {
            let client = router::connect(common.api, common.router_key.as_deref()).await?;
            if batched {
                router::batched(&client, &common.app, common.n).await.0
            } else {
                router::broadcast(&client, &common.app).await?
            }
        }
        Protocol::Mqtt => {
            let addr = crate::setup::device_addr(&common.clone());
            let (mut tally, _) = Publisher::connect(addr, common.qos).await?.broadcast().await?;
            // The broker fans the one PUBLISH out to every subscriber.
            tally.sent = open;
            tally
        }
    };
    let responses = start.elapsed().as_secs_f64();
    let bar = bar(tally.sent, "deliver");
    settle(fleet, &bar, tally.sent, deadline).await;
    bar.finish_and_clear();
    outcome.tally = Some((tally, responses, Some(responses)));
    Ok(())
}

/// Waits until `sent` deliveries have arrived, within [`SETTLE`].
async fn settle(fleet: &mut Fleet, bar: &ProgressBar, sent: u64, deadline: Instant) {
    bar.set_length(sent);
    let until = (Instant::now() + SETTLE).min(deadline);
    fleet.wait_until(until, bar, |p| p.received >= sent, received).await;
}

fn received(p: &Progress) -> (u64, String) {
    (p.received, format!("received, {} open", p.open))
}

async fn storm(fleet: &mut Fleet, mode: StormMode, deadline: Instant, outcome: &mut Outcome) {
    let before = fleet.totals();
    let bar = bar(before.open, "storm");
    let t0 = match mode {
        StormMode::Drop => {
            let t0 = unix_us();
            fleet.tell(DROP).await;
            Some(t0)
        }
        StormMode::Restart => {
            bar.println("restart the server now; waiting for the connections to drop");
            fleet
                .wait_until(
                    deadline,
                    &bar,
                    |p| p.lost > before.lost,
                    |p| (0, format!("{} open", p.open)),
                )
                .await;
            None
        }
    };
    fleet
        .wait_until(
            deadline,
            &bar,
            |p| p.reconnects >= before.reconnects + before.open,
            |p| {
                let back = p.reconnects - before.reconnects;
                (back, format!("back, {} open, {} handshaking", p.open, p.in_flight))
            },
        )
        .await;
    bar.finish_and_clear();
    outcome.storm = Some(StormStart { mode, t0_us: t0, connected_before: before.open });
}
