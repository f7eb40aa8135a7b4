//! `Receipts`: one subscriber's view of the receipts feed, filtered to its app (and
//! device), with a notice whenever it fell behind and lost events.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::Status;

use crate::node::Node;
use crate::proto::router::{Event, ReceiptEvent, ReceiptsRequest};
use crate::receipts::matches;

/// Events buffered for one subscriber's gRPC stream.
const BACKLOG: usize = 1024;

pub fn subscribe(
    node: &Arc<Node>,
    request: ReceiptsRequest,
) -> mpsc::Receiver<Result<ReceiptEvent, Status>> {
    let mut feed = node.hub.receipts.subscribe();
    let (tx, rx) = mpsc::channel(BACKLOG);
    let node = node.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                _ = node.hub.receipts.closed() => break,
                next = feed.recv() => next,
            };
            let event = match next {
                Ok(event) if matches(&event, &request.app_id, &request.device_id) => {
                    Arc::unwrap_or_clone(event)
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(lost)) => lost_notice(&request, lost),
                Err(RecvError::Closed) => break,
            };
            if tx.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    rx
}

fn lost_notice(request: &ReceiptsRequest, lost: u64) -> ReceiptEvent {
    metrics::counter!("longlink_receipts_lost_total").increment(lost);
    ReceiptEvent {
        event: Event::Lost as i32,
        app_id: request.app_id.clone(),
        at_ms: crate::clock::unix_ms(),
        lost,
        ..Default::default()
    }
}
