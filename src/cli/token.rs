//! `longlink token`: signs a device token with an app's key.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::token::{AppKey, Claims};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    app: String,
    #[arg(long)]
    device: String,
    /// User to bind the device to.
    #[arg(long)]
    user: Option<String>,
    /// Validity from now, in seconds (the server allows 60 s of clock skew past it).
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    valid_for: i64,
    /// Data directory holding generated app keys.
    #[arg(long, default_value = "longlink-data", env = "LONGLINK_DATA_DIR")]
    data_dir: PathBuf,
    /// The app's key itself, instead of the one in the data directory.
    #[arg(long, env = "LONGLINK_APP_KEY", hide_env_values = true)]
    key: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let secret = match args.key {
        Some(key) => key,
        None => {
            let path = crate::apps::key_path(&args.data_dir, &args.app);
            crate::apps::read_secret(&path).map_err(|e| {
                e.context("no key for this app: start `longlink serve` once, or pass --key")
            })?
        }
    };
    let now = crate::clock::unix_secs();
    let claims = Claims {
        sub: args.device,
        app: args.app,
        uid: args.user,
        exp: now + args.valid_for,
        iat: now,
        nbf: None,
    };
    super::output::say(AppKey::hs256(secret.into_bytes()).sign(&claims));
    Ok(ExitCode::SUCCESS)
}
