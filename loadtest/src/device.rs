//! The life of one simulated device: connect, authenticate, heartbeat, take deliveries,
//! and, when the plan says so, come back after a drop or a loss.
//!
//! Every wait here ends on the worker's stop signal, so a stop always ends the task.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, interval_at};

use crate::conn::{self, Conn, Delivery, Failure, Opened};
use crate::stats::{Stats, unix_us};
use crate::worker::{Control, Ctx};

/// Backoff after a lost connection or a refused connect, when the server named no delay.
const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_CAP_MS: u64 = 5_000;

/// How a working connection ended.
enum End {
    Stop,
    Drop,
    Lost(Failure),
}

enum Event {
    Beat,
    Frame(Result<conn::Frame, Failure>),
    Control,
}

/// What one device remembers across its connections.
#[derive(Default)]
struct Life {
    drops_seen: u32,
    attempt: u32,
    ever_connected: bool,
    coming_back: bool,
    settled: bool,
}

pub async fn run(ctx: Arc<Ctx>, index: u64) {
    let mut control = ctx.control.subscribe();
    let mut life = Life { drops_seen: control.borrow().drops, ..Life::default() };
    while !control.borrow().stop {
        let carry_on = match attempt(&ctx, index).await {
            Ok(opened) => connected(&ctx, opened, &mut control, &mut life).await,
            Err(failure) => refused(&ctx, failure, &mut control, &mut life).await,
        };
        if !carry_on {
            break;
        }
    }
    settle(&ctx.stats, &mut life);
}

async fn attempt(ctx: &Ctx, index: u64) -> Result<Opened, Failure> {
    ctx.stats.attempts.fetch_add(1, Relaxed);
    ctx.stats.handshake_started();
    let opened = conn::open(ctx, index).await;
    ctx.stats.handshake_ended();
    opened
}

/// Serves a working connection; returns whether to connect again.
async fn connected(
    ctx: &Ctx,
    opened: Opened,
    control: &mut watch::Receiver<Control>,
    life: &mut Life,
) -> bool {
    let stats = &ctx.stats;
    Stats::record(&stats.connect_us, opened.connect);
    Stats::record(&stats.handshake_us, opened.handshake);
    if life.coming_back {
        stats.reconnected_at_us.lock().unwrap().push(unix_us());
        stats.reconnects.fetch_add(1, Relaxed);
        life.coming_back = false;
    }
    if !life.ever_connected {
        stats.connected.fetch_add(1, Relaxed);
        life.ever_connected = true;
    }
    settle(stats, life);
    life.attempt = 0;
    stats.open.fetch_add(1, Relaxed);
    let end = serve(ctx, opened.conn, opened.heartbeat, control, life).await;
    stats.open.fetch_sub(1, Relaxed);
    match end {
        End::Stop => false,
        End::Drop => {
            life.coming_back = true;
            true
        }
        End::Lost(failure) => lost(ctx, failure, control, life).await,
    }
}

async fn lost(
    ctx: &Ctx,
    failure: Failure,
    control: &mut watch::Receiver<Control>,
    life: &mut Life,
) -> bool {
    let stats = &ctx.stats;
    stats.lost.fetch_add(1, Relaxed);
    stats.lost_at(unix_us());
    stats.fail(&format!("lost_{}", failure.reason));
    if !ctx.plan.reconnect {
        stats.failed.fetch_add(1, Relaxed);
        return false;
    }
    life.coming_back = true;
    let delay = failure.retry_after.unwrap_or_else(|| backoff(life));
    pause(delay, control).await
}

/// After a failed attempt: returns whether to try again.
async fn refused(
    ctx: &Ctx,
    failure: Failure,
    control: &mut watch::Receiver<Control>,
    life: &mut Life,
) -> bool {
    let stats = &ctx.stats;
    stats.fail(&failure.reason);
    let busy = matches!(failure.reason.as_str(), "busy" | "draining");
    if busy {
        stats.refused.fetch_add(1, Relaxed);
    }
    // A server past its admission bounds may close a TLS socket without a word rather
    // than spend a handshake on saying BUSY: an app backs off and retries either way.
    let closed = matches!(failure.reason.as_str(), "closed" | "connection_reset" | "io_brokenpipe");
    let retry = if ctx.plan.reconnect && life.ever_connected {
        Some(failure.retry_after.unwrap_or_else(|| backoff(life)))
    } else if (busy || closed) && life.attempt < ctx.plan.retries {
        Some(failure.retry_after.unwrap_or_else(|| backoff(life)))
    } else {
        None
    };
    life.attempt += 1;
    match retry {
        Some(delay) => pause(delay, control).await,
        None => {
            if !life.ever_connected {
                stats.failed.fetch_add(1, Relaxed);
            }
            false
        }
    }
}

fn backoff(life: &Life) -> Duration {
    let ms = longlink::client::backoff_ms(life.attempt, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
    Duration::from_millis(ms)
}

/// The ramp waits for every device's first outcome, whichever it is.
fn settle(stats: &Stats, life: &mut Life) {
    if !life.settled {
        life.settled = true;
        stats.settled.fetch_add(1, Relaxed);
    }
}

/// Sleeps for `delay`; false when the worker stops meanwhile.
async fn pause(delay: Duration, control: &mut watch::Receiver<Control>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = control.wait_for(|c| c.stop) => false,
    }
}

async fn serve(
    ctx: &Ctx,
    mut conn: Conn,
    heartbeat: Duration,
    control: &mut watch::Receiver<Control>,
    life: &mut Life,
) -> End {
    let mut beat = interval_at(Instant::now() + heartbeat, heartbeat);
    loop {
        let event = tokio::select! {
            _ = beat.tick() => Event::Beat,
            frame = conn.recv() => Event::Frame(frame),
            _ = control.changed() => Event::Control,
        };
        match event {
            Event::Beat => {
                if let Err(e) = conn.heartbeat().await {
                    return End::Lost(conn::io_failure(e));
                }
            }
            Event::Frame(Ok(frame)) => match conn.handle(frame).await {
                Ok(Some(delivery)) => delivered(&ctx.stats, delivery),
                Ok(None) => {}
                Err(e) => return End::Lost(conn::io_failure(e)),
            },
            Event::Frame(Err(failure)) => return End::Lost(failure),
            Event::Control => {
                let now = *control.borrow_and_update();
                if now.stop {
                    conn.close().await;
                    return End::Stop;
                }
                if now.drops > life.drops_seen {
                    life.drops_seen = now.drops;
                    return End::Drop;
                }
            }
        }
    }
}

/// The message's data starts with its send time, Unix microseconds, big-endian.
fn delivered(stats: &Stats, delivery: Delivery) {
    if delivery.redelivery {
        stats.redelivered.fetch_add(1, Relaxed);
        return;
    }
    stats.received.fetch_add(1, Relaxed);
    if let Some(sent) = delivery.data.get(..8) {
        let sent = u64::from_be_bytes(sent.try_into().expect("8 bytes"));
        let latency = unix_us().saturating_sub(sent);
        stats.delivery_us.lock().unwrap().record(latency);
    }
}
