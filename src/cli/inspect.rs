//! `longlink inspect` and `longlink trace`: a device's or a message's timeline, as text
//! (one line per step, then the verdict) or, with `--json`, as the JSON object the admin
//! listener's `/api/device` and `/api/message` also answer.

use std::process::ExitCode;

use tonic::transport::Channel;

use super::push::status;
use crate::proto::router::inspection_client::InspectionClient;
use crate::proto::router::{InspectDeviceRequest, TraceMessageRequest};
use crate::timeline::render;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    api: super::push::Api,
    #[arg(long)]
    app: String,
    #[arg(long)]
    device: String,
    /// The user this device should be bound to (default: the last one it was bound to).
    #[arg(long, default_value = "")]
    user: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    api: super::push::Api,
    #[arg(long)]
    app: String,
    /// A message id, or the request id of a push (refused pushes are kept under it).
    #[arg(long)]
    message: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

type Client = InspectionClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

async fn connect(api: &super::push::Api) -> anyhow::Result<Client> {
    let (channel, bearer) = (super::push::channel(api).await?, super::push::bearer(api)?);
    let intercept: Box<dyn FnMut(_) -> _ + Send> = Box::new(move |mut req: tonic::Request<()>| {
        if let Some(value) = &bearer {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    });
    Ok(InspectionClient::with_interceptor(channel, intercept))
}

pub async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let request =
        InspectDeviceRequest { app_id: args.app, device_id: args.device, user_id: args.user };
    let response = client.inspect_device(request).await.map_err(status)?.into_inner();
    if args.json {
        super::output::say(render::device_json(&response));
    } else {
        super::output::say(render::device_text(&response));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn trace(args: TraceArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let request = TraceMessageRequest { app_id: args.app, message_id: args.message };
    let response = client.trace_message(request).await.map_err(status)?.into_inner();
    if args.json {
        super::output::say(render::message_json(&response));
    } else {
        super::output::say(render::message_text(&response));
    }
    Ok(ExitCode::SUCCESS)
}
