//! The apps whose devices may connect, and their token keys.
//!
//! With no app configured, one app `demo` is set up with a key generated into the data
//! directory on first start and reused afterwards, so tokens stay valid across restarts.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::token::AppKey;

/// The app created when none is configured.
pub const DEMO_APP: &str = "demo";

#[derive(Debug, Default)]
pub struct Apps {
    keys: HashMap<Arc<str>, AppKey>,
}

impl Apps {
    /// Reads every configured app key, or sets up the demo app.
    pub fn load(config: &Config) -> anyhow::Result<Apps> {
        let mut keys = HashMap::new();
        if config.apps.is_empty() {
            let secret = read_or_create_key(&key_path(&config.data_dir, DEMO_APP))?;
            keys.insert(Arc::from(DEMO_APP), AppKey::hs256(secret));
        }
        for app in &config.apps {
            let secret = match (&app.key, &app.key_file) {
                (Some(key), _) => key.clone(),
                (None, Some(file)) => read_secret(file)?,
                (None, None) => unreachable!("validated: one of key and key_file is set"),
            };
            keys.insert(Arc::from(app.id.as_str()), AppKey::hs256(secret.into_bytes()));
        }
        Ok(Apps { keys })
    }

    /// The interned id and key of `app`, if configured.
    pub fn get(&self, app: &str) -> Option<(Arc<str>, &AppKey)> {
        self.keys.get_key_value(app).map(|(id, key)| (id.clone(), key))
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(|k| k.as_ref())
    }
}

/// Where the generated key of `app` lives.
pub fn key_path(data_dir: &Path, app: &str) -> PathBuf {
    data_dir.join("apps").join(format!("{app}.key"))
}

/// Reads a secret from `path`, ignoring trailing whitespace.
pub fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    let secret = text.trim_end().to_string();
    anyhow::ensure!(!secret.is_empty(), "key file {} is empty", path.display());
    Ok(secret)
}

fn read_or_create_key(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        return read_secret(path);
    }
    let dir = path.parent().expect("key paths have a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    writeln!(file, "{secret}")?;
    tracing::info!(path = %path.display(), "generated an app key (sign device tokens with it)");
    Ok(secret)
}
