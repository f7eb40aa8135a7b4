//! The admin HTTP listener: `/healthz` (the process runs), `/readyz` (it takes
//! connections; 503 while draining), `/metrics` (Prometheus text), the status page at
//! `/` with its JSON at `/api/status` (see `status`), and the timelines as JSON for that
//! page: `/api/device?app=A&device=D` and `/api/message?app=A&message=M` answer exactly
//! what `longlink inspect --json` and `longlink trace --json` print; an unknown device or
//! message is a 404 with `{"error": "..."}`.
//!
//! Note: like `/metrics`, the JSON endpoints ask for no credentials: keep `admin.addr` on
//! loopback or on an operators' network.
//!
//! A deliberately small HTTP/1.1 responder: GET only, one request per connection, a
//! bounded request head and a deadline, so that it needs no web framework and a stuck
//! scraper cannot hold it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::node::Node;
use crate::status;

const MAX_HEAD: usize = 8 * 1024;
const DEADLINE: Duration = Duration::from_secs(5);

pub async fn run(node: Arc<Node>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(DEADLINE, answer(&node, socket)).await;
                });
            }
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(node: &Node, mut socket: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match path.strip_prefix("/api/") {
        Some(api) if method == "GET" && !is_status(api) => timeline(node, api).await,
        _ => route(node, method, path),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

fn route(node: &Node, method: &str, path: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" if node.is_draining() => ("503 Service Unavailable", TEXT, "draining\n".into()),
        "/readyz" => ("200 OK", TEXT, "ready\n".into()),
        "/" => ("200 OK", "text/html; charset=utf-8", status::PAGE.into()),
        "/api/status" => ("200 OK", JSON, status::json(node, crate::clock::unix_ms()).to_string()),
        "/metrics" => match crate::telemetry::render(node) {
            Some(text) => ("200 OK", "text/plain; version=0.0.4", text),
            None => ("503 Service Unavailable", TEXT, "metrics recorder unavailable\n".into()),
        },
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

const JSON: &str = "application/json";

/// `/api/status` (the status page's own JSON, answered by `route`).
fn is_status(api: &str) -> bool {
    api.split('?').next() == Some("status")
}

/// `/api/device` and `/api/message`.
async fn timeline(node: &Node, api: &str) -> (&'static str, &'static str, String) {
    use crate::proto::router::{InspectDeviceRequest, TraceMessageRequest};
    use crate::timeline::render;
    let (name, query) = api.split_once('?').unwrap_or((api, ""));
    let Some(params) = parse_query(query) else {
        return error("400 Bad Request", "bad_request: malformed query".into());
    };
    let get = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let needed: &[&str] = match name {
        "device" => &["app", "device"],
        "message" => &["app", "message"],
        _ => &[],
    };
    if let Some(missing) = needed.iter().find(|k| get(k).is_none_or(|v| v.is_empty())) {
        return error("400 Bad Request", format!("missing_parameter: {missing}"));
    }
    let app = get("app").unwrap_or_default();
    let answer = match name {
        "device" => {
            let device_id = get("device").unwrap_or_default();
            let user_id = get("user").unwrap_or_default();
            let request = InspectDeviceRequest { app_id: app, device_id, user_id };
            crate::router::inspect::inspect(node, request).await.map(|r| render::device_json(&r))
        }
        "message" => {
            let message_id = get("message").unwrap_or_default();
            let request = TraceMessageRequest { app_id: app, message_id };
            crate::router::inspect::trace(node, request).await.map(|r| render::message_json(&r))
        }
        _ => return error("404 Not Found", "not_found: no such endpoint".into()),
    };
    match answer {
        Ok(value) => ("200 OK", JSON, format!("{value}\n")),
        Err(status) => {
            let line = match status.code() {
                tonic::Code::NotFound => "404 Not Found",
                tonic::Code::InvalidArgument => "400 Bad Request",
                _ => "500 Internal Server Error",
            };
            error(line, status.message().to_string())
        }
    }
}

fn error(status: &'static str, message: String) -> (&'static str, &'static str, String) {
    (status, JSON, format!("{}\n", serde_json::json!({ "error": message })))
}

/// `a=1&b=x%20y` into pairs, percent-decoded (`+` is a space); `None` when malformed.
fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let pairs = parse_query("app=com.example&device=phone%201&user=a+b%2Fc").unwrap();
        let want = [("app", "com.example"), ("device", "phone 1"), ("user", "a b/c")];
        let want: Vec<_> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(pairs, want);
        assert!(parse_query("device=%zz").is_none());
        assert!(parse_query("device=%e2%82").is_none(), "not UTF-8");
    }
}
