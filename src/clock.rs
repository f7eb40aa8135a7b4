//! Wall-clock time for protocol fields (Unix milliseconds and seconds).
//! Deadlines use tokio's monotonic clock instead; see `heartbeat`.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn unix_secs() -> i64 {
    unix_ms() / 1000
}
