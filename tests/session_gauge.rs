//! The per-app session gauge against racing connects and disconnects. Alone in its test
//! binary: the metrics recorder is global to the process, and another test server's
//! sessions of the same app would move the same gauge.

mod support;

use std::sync::Arc;
use std::time::Duration;

use longlink::session::DeviceKey;
use support::*;

/// Under concurrent connects and disconnects the gauge served on /metrics always ends
/// equal to the sessions counted (it moves by deltas, never set from a stale total).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_gauge_races_with_concurrent_updates() {
    use longlink::hub::Profile;
    use longlink::link::Link;
    use longlink::session::{Session, Transport};
    let server = start().await;
    let node = server.node().clone();
    let mut bad = Vec::new();
    let started = std::time::Instant::now();
    for trial in 0..3_000u64 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let node = node.clone();
                std::thread::spawn(move || {
                    let key = DeviceKey::new(APP, &format!("g{t}"));
                    for i in 0..3u64 {
                        let id = 1_000_000_000 + trial * 1_000_000 + t * 100_000 + i;
                        let link = Arc::new(Link::new(id, 60_000, 0));
                        let session = Session {
                            link,
                            transport: Transport::Tcp,
                            since_ms: 0,
                            heartbeat_secs: 60,
                        };
                        node.hub.connect(&key, Profile::default(), session);
                        node.hub.disconnect(&key, id, 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = longlink::telemetry::render(&node).unwrap();
        let gauge: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("longlink_sessions{app=\"demo\",transport=\"tcp\"}"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0);
        let counted = node.hub.sessions.online(APP);
        if gauge != counted as f64 {
            bad.push((trial, gauge, counted));
        }
    }
    assert!(bad.is_empty(), "(trial, gauge on /metrics, sessions counted): {bad:?}");
}
