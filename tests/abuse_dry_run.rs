//! Dry runs must change nothing: no delivery, no store write, no seq, no request id, no
//! timeline, no counters of real pushes, and no memory kept.

mod support;

use std::time::Duration;

use longlink::session::DeviceKey;
use support::*;

/// Everything observable about the node that a push could change.
async fn observe(server: &TestServer) -> (f64, f64, f64, f64, f64, usize) {
    let writes = metric(server, "longlink_store_writes_total").await;
    let sent = metric(server, "longlink_pushes_total{result=\"sent\"}").await;
    let stored = metric(server, "longlink_pushes_total{result=\"stored\"}").await;
    let rejected = metric(server, "longlink_pushes_total{result=\"rejected\"}").await;
    let too_large = metric(server, "longlink_pushes_total{result=\"payload_too_large\"}").await;
    let pending = server.node().hub.pending(&DeviceKey::new(APP, "off"));
    (writes, sent, stored, rejected, too_large, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_change_no_counter_of_real_pushes() {
    let server = start().await;
    let (d, _) = server.device("off").await;
    drop(d);
    eventually(5, || server.node().hub.session(&DeviceKey::new(APP, "off")).is_none()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = observe(&server).await;
    let mut router = server.router().await;
    for i in 0..10 {
        let mut r = notification(&["off", "", "off", "ghost"], &format!("d{i}"));
        r.dry_run = true;
        let answer = router.push(r).await.unwrap().into_inner();
        assert_eq!(answer.results.len(), 4);
        let mut big = notification(&["off"], &"x".repeat(5000));
        big.dry_run = true;
        assert!(router.push(big).await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = observe(&server).await;
    assert_eq!(
        before, after,
        "(store writes, pushes sent, stored, rejected, payload_too_large, pending) before vs \
         after 20 dry runs"
    );
    server.stop().await;
    dry_runs_and_refused_pushes_keep_no_request_slot().await;
}

/// Neither a dry run nor a refused push keeps anything under its request id: dry runs
/// take no idempotency slot, and a refused push's slot goes at the next purge, while a
/// real answer stays for its retention window. (Called from the test above: the
/// counters it compares are process-wide, so nothing else in this binary may push.)
async fn dry_runs_and_refused_pushes_keep_no_request_slot() {
    let server = start().await;
    let mut router = server.router().await;
    let requests = &server.node().requests;
    for i in 0..100 {
        let mut r = notification(&["nobody"], "t");
        r.dry_run = true;
        r.request_id = format!("dry-{i}");
        router.push(r).await.unwrap();
    }
    assert_eq!(requests.len(), 0, "dry runs took slots");
    for i in 0..100 {
        let mut r = notification(&["nobody"], "t");
        r.request_id = format!("refused-{i}");
        r.message.as_mut().unwrap().ttl_secs = Some(u32::MAX);
        assert!(router.push(r).await.is_err());
    }
    let mut kept = notification(&["nobody"], "t");
    kept.request_id = "kept".into();
    router.push(kept).await.unwrap();
    requests.purge(server.node().hub.store(), longlink::clock::unix_ms());
    assert_eq!(requests.len(), 1, "only the answered request id is kept");
    server.stop().await;
}
