//! Dry runs: the same checks and the same per-device answer as a real push, and nothing
//! delivered, stored, remembered or counted towards a seq.

mod support;

use longlink::proto::router::{Broadcast, DeviceResult, PushRequest, Result as Wire, push_request};
use longlink::session::DeviceKey;
use support::*;

fn dry(mut request: PushRequest) -> PushRequest {
    request.dry_run = true;
    request
}

fn results(results: &[DeviceResult]) -> Vec<(String, Wire, u64, String)> {
    results.iter().map(|r| (r.device_id.clone(), r.result(), r.seq, r.reason.clone())).collect()
}

fn row(id: &str, result: Wire, seq: u64, reason: &str) -> (String, Wire, u64, String) {
    (id.into(), result, seq, reason.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_answers_what_would_happen_and_changes_nothing() {
    let server = start_with(|c| c.device.pending_max = 2).await;
    let (mut online, _) = server.device("online").await;
    let (full, _) = server.device("full").await;
    drop(full);
    let key = |id: &str| DeviceKey::new(APP, id);
    eventually(5, || server.node().hub.session(&key("full")).is_none()).await;
    server.notify(&["full"], "one").await;
    server.notify(&["full"], "two").await;
    let (offline, _) = server.device("offline").await;
    drop(offline);
    eventually(5, || server.node().hub.session(&key("offline")).is_none()).await;
    let mut router = server.router().await;

    let ids = ["online", "offline", "full", "never-seen", ""];
    let mut request = dry(notification(&ids, "would"));
    request.request_id = "retry-me".into();
    let answer = router.push(request.clone()).await.unwrap().into_inner();
    assert_eq!(answer.message_id, "", "a dry run gives out no message id");
    assert_eq!(
        results(&answer.results),
        vec![
            row("online", Wire::Sent, 1, ""),
            row("offline", Wire::Stored, 1, ""),
            row("full", Wire::Stored, 3, "pending_cap"),
            row("never-seen", Wire::UnknownDevice, 0, "unknown_device"),
            row("", Wire::Rejected, 0, "invalid_device_id"),
        ]
    );
    let mut now_or_never = dry(notification(&["offline"], "ttl 0"));
    now_or_never.message.as_mut().unwrap().ttl_secs = Some(0);
    let answer = router.push(now_or_never).await.unwrap().into_inner();
    assert_eq!(results(&answer.results), vec![row("offline", Wire::NotDelivered, 0, "offline")]);
    let mut too_large = dry(notification(&["online"], "big"));
    too_large.message.as_mut().unwrap().data = vec![0; 8 * 1024];
    let refused = router.push(too_large).await.unwrap_err();
    assert!(refused.message().starts_with("payload_too_large"), "{refused:?}");

    // Nothing happened: no frame, nothing kept, and the request id is still free.
    online.ping().await.unwrap();
    let frame = within(5, online.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(longlink::proto::device::server_frame::Frame::Pong(_))));
    assert_eq!(server.node().hub.pending(&key("offline")), 0);
    assert_eq!(server.node().hub.pending(&key("full")), 2);
    request.dry_run = false;
    let real = router.push(request.clone()).await.unwrap().into_inner();
    assert_eq!(
        results(&real.results)[..3],
        [
            row("online", Wire::Sent, 1, ""),
            row("offline", Wire::Stored, 1, ""),
            row("full", Wire::Stored, 3, ""),
        ],
        "the real push does what the dry run said"
    );
    assert_eq!(next_push(&mut online).await.message_id, real.message_id);

    // Now the id is taken: a dry run with it says what a retry would get, the first
    // answer, and still delivers nothing.
    request.dry_run = true;
    let again = router.push(request).await.unwrap().into_inner();
    assert_eq!(again.message_id, real.message_id, "a retry would get the first answer");
    assert_eq!(results(&again.results), results(&real.results));
    online.ping().await.unwrap();
    let frame = within(5, online.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(longlink::proto::device::server_frame::Frame::Pong(_))));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_broadcast_counts_devices_and_takes_no_seq() {
    let server = start().await;
    let (mut online, _) = server.device("online").await;
    let (offline, _) = server.device("offline").await;
    drop(offline);
    let key = DeviceKey::new(APP, "offline");
    eventually(5, || server.node().hub.session(&key).is_none()).await;
    let mut request = dry(notification(&["unused"], "everyone"));
    request.target = Some(push_request::Target::Broadcast(Broadcast { new_devices: false }));
    let mut router = server.router().await;
    let counts = router.push(request).await.unwrap().into_inner().broadcast.unwrap();
    assert_eq!((counts.broadcast_seq, counts.sent, counts.stored), (1, 1, 1));
    assert_eq!(server.node().hub.broadcasts.last_seq(APP), 0, "no seq taken");
    assert!(server.node().hub.broadcasts.is_empty(), "nothing kept");
    online.ping().await.unwrap();
    let frame = within(5, online.recv()).await.unwrap();
    assert!(matches!(frame.frame, Some(longlink::proto::device::server_frame::Frame::Pong(_))));
    server.stop().await;
}
