//! The router API (gRPC): how the push router injects messages, asks who is online and
//! disconnects devices. Every request names its app; the caller's key must allow it.

pub mod auth;
mod presence;
mod push;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::close::CloseReason;
use crate::node::Node;
use crate::proto::router::router_server::Router;
use crate::proto::router::{
    KickRequest, KickResponse, PresenceRequest, PresenceResponse, PushRequest, PushResponse,
};
use crate::session::DeviceKey;
use auth::Access;

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
    let access = request
        .extensions()
        .get::<Access>()
        .cloned()
        .unwrap_or(Access::All);
    if access.allows(app) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "app_not_allowed: this key may not act for `{app}`"
        )))
    }
}

/// Resolves `app` to its interned id, or fails with `unknown_app`.
fn known_app(node: &Node, app: &str) -> Result<Arc<str>, Status> {
    node.apps()
        .get(app)
        .map(|(id, _)| id)
        .ok_or_else(|| Status::not_found(format!("unknown_app: `{app}` is not configured")))
}

type PushStream = Pin<Box<dyn Stream<Item = Result<PushResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Router for Service {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        push::push(&self.node, request.into_inner()).map(Response::new)
    }

    type PushStreamStream = PushStream;

    async fn push_stream(
        &self,
        request: Request<Streaming<PushRequest>>,
    ) -> Result<Response<PushStream>, Status> {
        let access = request
            .extensions()
            .get::<Access>()
            .cloned()
            .unwrap_or(Access::All);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BACKLOG);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let response = next.and_then(|req| {
                    if !access.allows(&req.app_id) {
                        return Err(Status::permission_denied("app_not_allowed"));
                    }
                    push::push(&node, req)
                });
                if tx.send(response).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        presence::presence(&self.node, request.into_inner()).map(Response::new)
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        authorize(&request, &request.get_ref().app_id)?;
        let req = request.into_inner();
        let app = known_app(&self.node, &req.app_id)?;
        let key = DeviceKey {
            app,
            device: req.device_id.as_str().into(),
        };
        let reconnect_after_ms = req
            .reconnect
            .then(|| self.node.settings.reconnect_delay_ms());
        let kicked = self
            .node
            .hub
            .kick(&key, CloseReason::Operator { reconnect_after_ms });
        metrics::counter!("longlink_kicks_total", "reason" => "operator").increment(kicked as u64);
        tracing::info!(app = %key.app, device = %key.device, kicked, "kick requested");
        Ok(Response::new(KickResponse { kicked }))
    }
}
