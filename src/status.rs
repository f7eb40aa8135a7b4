//! The admin status page: one self-contained HTML document at `/` (inline CSS and
//! script, no external assets, so it works offline) and the JSON it polls at
//! `/api/status`.
//!
//! The page shows live sessions per app and transport and the handshake failures and
//! kicks of the last [`recent::MINUTES`] minutes by reason (see `recent`), and has a form
//! that looks a device or a message up through `/api/device` and `/api/message` and
//! renders the timeline they return. It also takes `?app=A&device=D` (or `&message=M`) in
//! its own address and looks that up on load, so a link to a device's timeline can be
//! pasted into a ticket. Everything it renders goes through `textContent`, never HTML:
//! device ids and receipt reasons come from apps.
//!
//! This module only reads the node; it never changes anything.

use serde_json::{Map, Value, json};

use crate::node::Node;
use crate::recent::{self, Minute};

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("status.html");

/// The `/api/status` document at `now_ms`.
pub fn json(node: &Node, now_ms: i64) -> Value {
    json!({
        "now_ms": now_ms,
        "draining": node.is_draining(),
        "connections": node.connections(),
        "sessions": sessions(node),
        "window_minutes": recent::MINUTES,
        "minutes": node.recent.minutes(now_ms).iter().map(minute).collect::<Vec<_>>(),
    })
}

/// One row per configured app and transport, zeros included, so that an app with no
/// session still shows.
fn sessions(node: &Node) -> Vec<Value> {
    let mut rows: Vec<(String, &'static str, i64)> = Vec::new();
    for app in node.apps().ids() {
        for transport in ["tcp", "tls"] {
            rows.push((app.to_string(), transport, 0));
        }
    }
    for (app, transport, n) in node.hub.sessions.counts() {
        let key = (&*app, transport.label());
        match rows.iter_mut().find(|r| (r.0.as_str(), r.1) == key) {
            Some(row) => row.2 = n,
            None => rows.push((app.to_string(), transport.label(), n)),
        }
    }
    rows.sort();
    rows.into_iter()
        .map(
            |(app, transport, count)| json!({ "app": app, "transport": transport, "count": count }),
        )
        .collect()
}

fn minute(m: &Minute) -> Value {
    let counts = |c: &[(&str, u64)]| -> Map<String, Value> {
        c.iter().map(|(reason, n)| (reason.to_string(), json!(n))).collect()
    };
    json!({
        "start_ms": m.start_ms,
        "handshake_failures": counts(&m.handshake_failures),
        "kicks": counts(&m.kicks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page must work offline: nothing it loads may come from elsewhere.
    #[test]
    fn the_page_loads_no_external_asset() {
        for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!PAGE.contains(needle), "the page references {needle}");
        }
        for endpoint in ["/api/status", "/api/device", "/api/message"] {
            assert!(PAGE.contains(endpoint), "the page does not call {endpoint}");
        }
    }

    /// Text from apps is never parsed as HTML.
    #[test]
    fn the_page_renders_text_only() {
        assert!(!PAGE.contains("innerHTML"), "use textContent");
        assert!(!PAGE.contains("document.write"));
    }
}
