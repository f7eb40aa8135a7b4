//! The open-file limit: raised to the hard limit at start, and checked against the
//! capacity the node is configured for.

/// Descriptors kept for listeners, the store, logs and the router API.
const RESERVED_FILES: u64 = 64;

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
pub fn raise_open_files(capacity: u64) -> u64 {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            return 0;
        }
    };
    let limit = if soft < hard {
        match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    if capacity + RESERVED_FILES > limit {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = capacity,
            "the open-file limit cannot hold the configured connections; raise the hard \
             limit (LimitNOFILE in systemd, ulimit -Hn) or lower device.max_connections"
        );
    } else {
        tracing::info!(open_file_limit = limit, "open-file limit");
    }
    limit
}
