//! `longlink_delivery_failures_total` counts each device a push failed for once. Alone in
//! its test binary: the metrics recorder is global to the process, and other tests'
//! failures would move the same counters.

mod support;

use std::collections::BTreeMap;

use longlink::session::DeviceKey;
use support::*;

async fn failures(server: &TestServer, reason: &str) -> f64 {
    metric(server, &format!("longlink_delivery_failures_total{{reason=\"{reason}\"}}")).await
}

/// Devices a push fails for alike share one entry in the message's timeline beside
/// their own; the counter counts devices, not entries: offline with TTL 0, unknown and
/// rejected ids, one device and several at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_device_is_counted_once() {
    let server = start().await;
    for id in ["off-1", "off-2", "off-3"] {
        drop(server.device(id).await);
        eventually(5, || server.node().hub.session(&DeviceKey::new(APP, id)).is_none()).await;
    }
    let long = "x".repeat(200);
    let longer = "y".repeat(300);
    let pushes: [&[&str]; 4] = [
        &["off-1"],
        &["off-1", "off-2", "off-3", "ghost-1", "ghost-2", &long, &longer],
        &["ghost-3"],
        &[&long],
    ];
    let reasons = ["offline", "unknown_device", "invalid_device_id"];
    let mut before = BTreeMap::new();
    for reason in reasons {
        before.insert(reason, failures(&server, reason).await);
    }
    let mut expected: BTreeMap<&str, f64> = BTreeMap::new();
    let mut router = server.router().await;
    for devices in pushes {
        let mut request = notification(devices, "now or never");
        request.message.as_mut().unwrap().ttl_secs = Some(0);
        let answer = within(5, router.push(request)).await.unwrap().into_inner();
        for result in &answer.results {
            let reason = reasons.iter().find(|r| **r == result.reason).expect("a failure");
            *expected.entry(reason).or_default() += 1.0;
        }
    }
    assert_eq!(expected.values().sum::<f64>(), 10.0);
    server.node().hub.receipts.timeline().settled().await;
    for reason in reasons {
        let counted = failures(&server, reason).await - before[reason];
        assert_eq!(counted, expected[reason], "{reason}");
    }
    server.stop().await;
}
