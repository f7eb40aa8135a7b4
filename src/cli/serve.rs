//! `longlink serve`: runs the gateway until SIGTERM or SIGINT, then drains. SIGHUP
//! reloads app keys.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::server::Running;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file; without one the embedded defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(dir) = args.data_dir.clone() {
        config.data_dir = dir;
    }
    crate::telemetry::init_logs(&config.log);
    crate::telemetry::prometheus();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let running = crate::server::start(config.clone()).await?;
        print_welcome(&config, &running);
        wait_for_signals(args.config.as_deref(), &config.data_dir, &running).await?;
        running.stopped().await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signals(
    path: Option<&Path>,
    data_dir: &Path,
    running: &Running,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(path, data_dir, running),
        }
    }
    running.drain();
    // A second signal during the drain means "now".
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting without waiting for the drain");
        std::process::exit(1);
    });
    Ok(())
}

/// Re-reads the configuration and swaps in the app keys it names; the old keys stay in
/// force when anything is wrong.
fn reload(path: Option<&Path>, data_dir: &Path, running: &Running) {
    let apps =
        Config::load(path, std::env::vars()).map_err(anyhow::Error::from).and_then(|mut config| {
            config.data_dir = data_dir.to_path_buf();
            crate::apps::Apps::load(&config)
        });
    match apps {
        Ok(apps) => {
            *running.node.apps.write() = std::sync::Arc::new(apps);
            tracing::info!("app keys reloaded");
        }
        Err(error) => tracing::error!(%error, "reload failed; keeping the old app keys"),
    }
}

fn print_welcome(config: &Config, running: &Running) {
    let bin = "cargo run --release --";
    println!("longlink is running (data directory: {})", config.data_dir.display());
    if let Some(addr) = running.tcp_addr {
        println!("  device TCP   {addr}");
    }
    if let Some(addr) = running.tls_addr {
        let (cert, _) = crate::tls::generated_paths(&config.data_dir);
        let cert = config.tls.cert_file.clone().unwrap_or(cert);
        println!("  device TLS   {addr}   (certificate: {})", cert.display());
    }
    println!("  router API   {}", running.router_addr);
    if let Some(addr) = running.admin_addr {
        println!(
            "  admin HTTP   http://{addr}/ (status page)  /healthz  /readyz  /metrics  /api/status  \
             /api/device  /api/message"
        );
    }
    if config.apps.is_empty() {
        let dir = config.data_dir.display();
        let tcp = running.tcp_addr.map(|a| a.to_string()).unwrap_or_default();
        println!();
        println!("Try it, in a second terminal:");
        println!("  TOKEN=$({bin} token --app demo --device phone-1 --data-dir {dir})");
        println!("  {bin} client --addr {tcp} --app demo --device phone-1 --token \"$TOKEN\"");
        println!("and in a third:");
        println!(
            "  {bin} push --api {} --app demo --device phone-1 --title Hello --body World",
            running.router_addr
        );
        println!("and to see what became of a message (its id, or its --request-id):");
        println!("  {bin} trace --api {} --app demo --message ID", running.router_addr);
    }
}
