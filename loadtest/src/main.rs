//! `longlink-loadtest`: the load generator. The parent parses the command line and runs
//! a scenario ([`scenario`]), spreading devices over worker processes of this same
//! binary ([`fleet`], [`worker`]); see `loadtest/README.md`.

mod cli;
mod conn;
mod device;
mod fleet;
mod histogram;
mod memory;
mod mqtt;
mod outcome;
mod plan;
mod plot;
mod publisher;
mod report;
mod router;
mod scenario;
mod setup;
mod stats;
mod tls;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        cli::Command::Worker => runtime.block_on(worker::run()).map(|()| ExitCode::SUCCESS),
        command => {
            let ok = runtime.block_on(scenario::run(command))?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
