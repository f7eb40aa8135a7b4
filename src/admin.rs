//! The admin HTTP listener: `/healthz` (the process runs), `/readyz` (it takes
//! connections; 503 while draining), `/metrics` (Prometheus text), and the status page
//! at `/` with its JSON at `/api/status` (see `status`).
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
    let (status, kind, body) = route(node, method, path);
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
    const JSON: &str = "application/json";
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
