//! `longlink push` and `longlink presence`: router API calls from the command line.

use std::process::ExitCode;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::proto::device::{Badge, Notification, Platform, PushKind, badge};
use crate::proto::router::push_request;
use crate::proto::router::router_client::RouterClient;
use crate::proto::router::{Broadcast, Devices, Message, PresenceRequest, PushRequest, User};
use crate::proto::router::{KickRequest, ReceiptsRequest};

#[derive(Debug, clap::Args)]
pub struct Api {
    /// Router API address (the server's `router.addr`).
    #[arg(long, default_value = "127.0.0.1:7101", env = "LONGLINK_ROUTER__ADDR")]
    pub(super) api: String,
    /// Router key, when the server requires one.
    #[arg(long, env = "LONGLINK_ROUTER_KEY", hide_env_values = true)]
    pub(super) router_key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    api: Api,
    #[arg(long)]
    app: String,
    /// Target devices (repeat, or separate with commas).
    #[arg(long = "device", value_delimiter = ',', conflicts_with_all = ["user", "broadcast"])]
    devices: Vec<String>,
    /// Target every device bound to this user.
    #[arg(long, conflicts_with = "broadcast")]
    user: Option<String>,
    /// Target every device of the app: online ones now, the others as they reconnect.
    #[arg(long)]
    broadcast: bool,
    /// With --broadcast: also for devices first seen after it (while its TTL lasts).
    #[arg(long, requires = "broadcast")]
    new_devices: bool,
    /// With --user: only devices of this platform (android, ios, harmony, web).
    #[arg(long, requires = "user")]
    platform: Option<String>,
    #[arg(long, default_value = "notification", value_parser = ["notification", "badge", "silent"])]
    kind: String,
    #[arg(long, default_value = "")]
    title: String,
    #[arg(long, default_value = "")]
    body: String,
    /// Opaque data, sent as UTF-8 bytes.
    #[arg(long, default_value = "")]
    data: String,
    /// Badge: set the counter to N (implies --kind badge).
    #[arg(long)]
    badge: Option<u32>,
    /// Badge counter name.
    #[arg(long, default_value = "")]
    badge_key: String,
    /// Time to live in seconds; 0 means now or never.
    #[arg(long)]
    ttl: Option<u32>,
    #[arg(long, default_value = "")]
    collapse_key: String,
    /// Idempotency key for retries.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Say what would happen for each device, delivering and changing nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReceiptsArgs {
    #[command(flatten)]
    api: Api,
    #[arg(long)]
    app: String,
    /// Only events of this device.
    #[arg(long, default_value = "")]
    device: String,
}

#[derive(Debug, clap::Args)]
pub struct KickArgs {
    #[command(flatten)]
    api: Api,
    #[arg(long)]
    app: String,
    #[arg(long)]
    device: String,
    /// Let the app come back on its own, after a randomized delay.
    #[arg(long)]
    reconnect: bool,
    /// Detail passed to the app.
    #[arg(long, default_value = "")]
    message: String,
}

#[derive(Debug, clap::Args)]
pub struct PresenceArgs {
    #[command(flatten)]
    api: Api,
    #[arg(long)]
    app: String,
    #[arg(long = "device", value_delimiter = ',', required = true)]
    devices: Vec<String>,
}

async fn connect(
    api: &Api,
) -> anyhow::Result<
    RouterClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
> {
    let (channel, bearer) = (channel(api).await?, bearer(api)?);
    Ok(RouterClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(value) = &bearer {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }))
}

/// A connection to the router API, or an error that says where it looked.
pub(super) async fn channel(api: &Api) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(format!("http://{}", api.api))?;
    endpoint.connect().await.map_err(|_| {
        anyhow::anyhow!(
            "cannot reach the router API at {} (is `longlink serve` running? its address is \
             `router.addr`; set --api or LONGLINK_ROUTER__ADDR)",
            api.api
        )
    })
}

/// The `authorization` value for the router key, when there is one.
pub(super) fn bearer(api: &Api) -> anyhow::Result<Option<MetadataValue<tonic::metadata::Ascii>>> {
    let key = api.router_key.as_ref();
    Ok(key.map(|k| MetadataValue::try_from(format!("Bearer {k}"))).transpose()?)
}

/// A failed call as the server put it: a stable code, a colon, the details.
pub(super) fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let notification = args.badge.is_none() && args.kind == "notification";
    if notification && args.title.is_empty() && args.body.is_empty() {
        anyhow::bail!("a notification needs --title or --body (or choose --kind badge or silent)");
    }
    if args.platform.is_some() && args.user.is_none() {
        anyhow::bail!("--platform filters the devices of --user; it needs --user UID");
    }
    if args.kind == "badge" && args.badge.is_none() {
        anyhow::bail!("--kind badge needs --badge N (the counter's new value)");
    }
    let text = !args.title.is_empty() || !args.body.is_empty();
    if !notification && text {
        anyhow::bail!("--title and --body are for notifications, not --kind {}", args.kind);
    }
    let target = match (&args.user, args.devices.is_empty()) {
        _ if args.broadcast => {
            push_request::Target::Broadcast(Broadcast { new_devices: args.new_devices })
        }
        (Some(user), _) => push_request::Target::User(User {
            user_id: user.clone(),
            platform: parse_platform(args.platform.as_deref())? as i32,
        }),
        (None, false) => {
            push_request::Target::Devices(Devices { device_ids: args.devices.clone() })
        }
        (None, true) => anyhow::bail!("name a target: --device ID, --user UID or --broadcast"),
    };
    let request = PushRequest {
        app_id: args.app.clone(),
        request_id: args.request_id.clone(),
        target: Some(target),
        message: Some(message(&args)),
        dry_run: args.dry_run,
    };
    let mut client = connect(&args.api).await?;
    let response = client.push(request).await.map_err(status)?.into_inner();
    let mut answer = super::output::push_response(&response);
    if args.dry_run {
        answer["dry_run"] = serde_json::json!(true);
    }
    super::output::say(answer);
    Ok(ExitCode::SUCCESS)
}

fn message(args: &PushArgs) -> Message {
    let kind = match (args.badge, args.kind.as_str()) {
        (Some(_), _) | (None, "badge") => PushKind::Badge,
        (None, "silent") => PushKind::Silent,
        _ => PushKind::Notification,
    };
    let notification = (kind == PushKind::Notification).then(|| Notification {
        title: args.title.clone(),
        body: args.body.clone(),
        click_action: String::new(),
    });
    let badge = (kind == PushKind::Badge).then(|| Badge {
        key: args.badge_key.clone(),
        change: Some(badge::Change::Set(args.badge.unwrap_or(0))),
    });
    Message {
        kind: kind as i32,
        notification,
        badge,
        data: args.data.clone().into_bytes(),
        collapse_key: args.collapse_key.clone(),
        priority: 0,
        ttl_secs: args.ttl,
    }
}

fn parse_platform(name: Option<&str>) -> anyhow::Result<Platform> {
    Ok(match name {
        None => Platform::Unspecified,
        Some("android") => Platform::Android,
        Some("ios") => Platform::Ios,
        Some("harmony") => Platform::Harmony,
        Some("web") => Platform::Web,
        Some(other) => anyhow::bail!("unknown platform `{other}` (android, ios, harmony, web)"),
    })
}

pub async fn presence(args: PresenceArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let request = PresenceRequest { app_id: args.app, device_ids: args.devices };
    let response = client.presence(request).await.map_err(status)?.into_inner();
    for device in &response.devices {
        super::output::say(super::output::presence(device));
    }
    Ok(ExitCode::SUCCESS)
}

/// Disconnects a device with Kick(operator); prints whether it had a live connection.
pub async fn kick(args: KickArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let request = KickRequest {
        app_id: args.app,
        device_id: args.device,
        reconnect: args.reconnect,
        message: args.message,
    };
    let kicked = client.kick(request).await.map_err(status)?.into_inner().kicked;
    super::output::say(serde_json::json!({ "kicked": kicked }));
    Ok(ExitCode::SUCCESS)
}

/// Follows the receipts stream, printing one JSON object per event, until interrupted.
pub async fn receipts(args: ReceiptsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.api).await?;
    let request = ReceiptsRequest { app_id: args.app, device_id: args.device };
    let mut stream = client.receipts(request).await.map_err(status)?.into_inner();
    while let Some(event) = stream.message().await.map_err(status)? {
        super::output::say(super::output::receipt(&event));
    }
    let end = serde_json::json!({ "event": "end", "reason": "the server closed the stream" });
    super::output::say(end);
    Ok(ExitCode::SUCCESS)
}
