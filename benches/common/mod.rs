//! What several benches share: a typical notification and the hub limits the server
//! builds from its default configuration.

#![allow(dead_code)]

use longlink::config::Config;
use longlink::hub::HubLimits;
use longlink::proto::device::{Notification, Push, PushKind};

/// A push of a size typical for a notification: title, body, a little data.
pub fn push() -> Push {
    Push {
        message_id: "018c2a9e5f3b4d7e9a1c2b3d4e5f6a7b".into(),
        kind: PushKind::Notification as i32,
        notification: Some(Notification {
            title: "Your order has shipped".into(),
            body: "Parcel 4711 left the warehouse and arrives tomorrow between 9 and 12.".into(),
            click_action: "app://orders/4711".into(),
        }),
        data: vec![7; 48],
        created_at_ms: 1_800_000_000_000,
        ..Default::default()
    }
}

/// Limits as `server` builds them from the default configuration.
pub fn limits() -> HubLimits {
    HubLimits::from_config(&Config::default())
}
