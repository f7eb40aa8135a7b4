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
    match cli.command {
        // One thread per worker process: its devices' tasks never wake a second thread
        // of their own runtime, which on a machine shared with the server costs it
        // cross-core wake-ups; more devices means more worker processes instead.
        cli::Command::Worker => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(worker::run()).map(|()| ExitCode::SUCCESS)
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let ok = runtime.block_on(scenario::run(command))?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}
