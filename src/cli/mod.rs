//! The command line: `serve`, `token`, `client`, `push`, `presence`, `receipts`, `kick`,
//! `inspect`, `trace` and `config print`.
//! Each command parses its flags here and does its work in its own module.

mod client;
mod inspect;
pub mod output;
mod push;
mod serve;
mod token;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "longlink", version, about = "Persistent-connection push gateway")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the gateway (embedded defaults when no configuration is given).
    Serve(serve::Args),
    /// Prints a device token signed with an app's key.
    Token(token::Args),
    /// Connects as a device, prints every message as JSON and acknowledges it.
    Client(client::Args),
    /// Pushes a message through the router API and prints the per-device results.
    Push(push::PushArgs),
    /// Prints the presence of devices as JSON.
    Presence(push::PresenceArgs),
    /// Follows the receipts stream: one JSON object per event.
    Receipts(push::ReceiptsArgs),
    /// Disconnects a device with Kick(operator).
    Kick(push::KickArgs),
    /// Prints a device's timeline (connections, closes, token rejections, bindings,
    /// reports, failed deliveries) and a verdict when something is wrong.
    Inspect(inspect::InspectArgs),
    /// Prints every step a message took or failed to take, with reason codes.
    Trace(inspect::TraceArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Prints the effective configuration (file, then LONGLINK_* variables), secrets redacted.
    Print {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Token(args) => token::run(args),
        Command::Client(args) => runtime()?.block_on(client::run(args)),
        Command::Push(args) => runtime()?.block_on(push::push(args)),
        Command::Presence(args) => runtime()?.block_on(push::presence(args)),
        Command::Receipts(args) => runtime()?.block_on(push::receipts(args)),
        Command::Kick(args) => runtime()?.block_on(push::kick(args)),
        Command::Inspect(args) => runtime()?.block_on(inspect::inspect(args)),
        Command::Trace(args) => runtime()?.block_on(inspect::trace(args)),
        Command::Config { command: ConfigCommand::Print { config } } => {
            let config = crate::config::Config::load(config.as_deref(), std::env::vars())?;
            print!("{}", config.to_toml());
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
