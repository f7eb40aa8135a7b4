//! The router API (gRPC): how the push router injects messages, asks who is online and
//! disconnects devices. Every request names its app; the caller's key must allow it.

pub mod auth;
pub mod inspect;
mod presence;
mod push;
mod receipts;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::close::CloseReason;
use crate::node::Node;
use crate::proto::router::router_server::Router;
use crate::proto::router::{
    InspectDeviceRequest, InspectDeviceResponse, TraceMessageRequest, TraceMessageResponse,
};
use crate::proto::router::{
    KickRequest, KickResponse, PresenceRequest, PresenceResponse, PushRequest, PushResponse,
    ReceiptEvent, ReceiptsRequest,
};
use crate::session::DeviceKey;
use auth::Access;

pub use crate::proto::router::inspection_server::InspectionServer;
pub use crate::proto::router::router_server::RouterServer;

/// Responses of one PushStream call that may wait for the caller to read them.
const STREAM_BACKLOG: usize = 256;

#[derive(Debug, Clone)]
pub struct Service {
    node: Arc<Node>,
}

impl Service {
    pub fn new(node: Arc<Node>) -> Self {
        Service { node }
    }
}

/// The access the interceptor granted, checked against `app`.
fn authorize<T>(request: &Request<T>, app: &str) -> Result<(), Status> {
    let access = request.extensions().get::<Access>().cloned().unwrap_or(Access::All);
    if access.allows(app) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!("app_not_allowed: this key may not act for `{app}`")))
    }
}

/// [`authorize`] for a push: a refusal is kept in the timeline under the request id.
fn authorize_push(node: &Node, request: &Request<PushRequest>) -> Result<(), Status> {
    authorize(request, &request.get_ref().app_id).inspect_err(|status| {
        refuse(node, request.get_ref(), status.message());
    })
}

fn refuse(node: &Node, request: &PushRequest, why: &str) {
    let app = node.apps().get(&request.app_id).map(|(id, _)| id);
    let timeline = node.hub.receipts.timeline();
    crate::timeline::steps::refused(timeline, app.as_ref(), &request.request_id, why);
}

/// Resolves `app` to its interned id, or fails with `unknown_app`.
fn known_app(node: &Node, app: &str) -> Result<Arc<str>, Status> {
    node.apps()
        .get(app)
        .map(|(id, _)| id)
        .ok_or_else(|| Status::not_found(format!("unknown_app: `{app}` is not configured")))
}

type PushStream = Pin<Box<dyn Stream<Item = Result<PushResponse, Status>> + Send>>;
type ReceiptStream = Pin<Box<dyn Stream<Item = Result<ReceiptEvent, Status>> + Send>>;
type Answering = tokio::task::JoinHandle<Result<PushResponse, Status>>;

/// Serves one PushStream call. Requests are delivered one after the other, in order, so
/// messages keep their order per device; the waits for durability overlap, so one fsync
/// answers many requests; answers go back in request order.
async fn stream_pushes(
    node: Arc<Node>,
    access: Access,
    mut inbound: Streaming<PushRequest>,
    tx: tokio::sync::mpsc::Sender<Result<PushResponse, Status>>,
) {
    let (order, mut answers) = tokio::sync::mpsc::channel::<Answering>(STREAM_BACKLOG);
    let forward = tokio::spawn(async move {
        while let Some(answering) = answers.recv().await {
            let answer = answering.await.unwrap_or_else(|_| Err(Status::internal("push failed")));
            if tx.send(answer).await.is_err() {
                break;
            }
        }
    });
    while let Some(next) = inbound.next().await {
        let answering = match next {
            Ok(req) if !access.allows(&req.app_id) => {
                refuse(&node, &req, "app_not_allowed");
                tokio::spawn(std::future::ready(Err(Status::permission_denied("app_not_allowed"))))
            }
            // Idempotent requests take the full path, which waits on their key.
            Ok(req) if !req.request_id.is_empty() => {
                let answer = push::push(&node, req).await;
                tokio::spawn(std::future::ready(answer))
            }
            Ok(req) => match push::prepare(&node, req) {
                (prepared, false) => tokio::spawn(std::future::ready(prepared)),
                (prepared, true) => {
                    let node = node.clone();
                    tokio::spawn(async move { push::durable(&node, prepared?).await })
                }
            },
            Err(status) => tokio::spawn(std::future::ready(Err(status))),
        };
        if order.send(answering).await.is_err() {
            break;
        }
    }
    drop(order);
    let _ = forward.await;
}

#[tonic::async_trait]
impl Router for Service {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        authorize_push(&self.node, &request)?;
        push::push(&self.node, request.into_inner()).await.map(Response::new)
    }

    type PushStreamStream = PushStream;

    async fn push_stream(
        &self,
        request: Request<Streaming<PushRequest>>,
    ) -> Result<Response<PushStream>, Status> {
        let access = request.extensions().get::<Access>().cloned().unwrap_or(Access::All);
        let inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BACKLOG);
        tokio::spawn(stream_pushes(self.node.clone(), access, inbound, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        presence::presence(&self.node, request.into_inner()).map(Response::new)
    }

    type ReceiptsStream = ReceiptStream;

    async fn receipts(
        &self,
        request: Request<ReceiptsRequest>,
    ) -> Result<Response<ReceiptStream>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        known_app(&self.node, &request.get_ref().app_id)?;
        let rx = receipts::subscribe(&self.node, request.into_inner());
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        let req = request.into_inner();
        let app = known_app(&self.node, &req.app_id)?;
        let key = DeviceKey { app, device: req.device_id.as_str().into() };
        let reconnect_after_ms = req.reconnect.then(|| self.node.settings.reconnect_delay_ms());
        let kicked = self.node.hub.kick(&key, CloseReason::Operator { reconnect_after_ms });
        tracing::info!(app = %key.app, device = %key.device, kicked, "kick requested");
        Ok(Response::new(KickResponse { kicked }))
    }
}

/// The inspection service: timelines and verdicts, on the router API's listener, under the
/// same keys and per-app checks.
#[derive(Debug, Clone)]
pub struct Inspection {
    node: Arc<Node>,
}

impl Inspection {
    pub fn new(node: Arc<Node>) -> Self {
        Inspection { node }
    }
}

#[tonic::async_trait]
impl crate::proto::router::inspection_server::Inspection for Inspection {
    async fn inspect_device(
        &self,
        request: Request<InspectDeviceRequest>,
    ) -> Result<Response<InspectDeviceResponse>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        inspect::inspect(&self.node, request.into_inner()).await.map(Response::new)
    }

    async fn trace_message(
        &self,
        request: Request<TraceMessageRequest>,
    ) -> Result<Response<TraceMessageResponse>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        inspect::trace(&self.node, request.into_inner()).await.map(Response::new)
    }
}
