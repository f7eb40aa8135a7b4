//! The admin status page in a real browser: headless Chromium loads `/` from a running
//! server and the test reads the DOM its script built (`--dump-dom`).
//!
//! Chromium comes from Debian (`chromium`, installed by `.ci/run`); without it each test
//! prints why it skipped. It runs with `--no-sandbox` (CI runs as root), a throwaway
//! profile, and background networking off: it only ever talks to loopback.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use longlink::client::{ClientError, Device, hello};
use longlink::proto::router::KickRequest;
use longlink::session::DeviceKey;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One browser at a time: two cores, and each Chromium starts several processes.
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The browser binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Loads `url` in headless Chromium and returns the DOM once the page's script has had
/// `budget_ms` of virtual time (network waits do not use it up).
async fn dump_dom(browser: PathBuf, url: String, budget_ms: u32) -> String {
    tokio::task::spawn_blocking(move || {
        let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
        let profile = tempfile::tempdir().unwrap();
        run_browser(&browser, profile.path(), &url, budget_ms)
    })
    .await
    .unwrap()
}

fn run_browser(browser: &Path, profile: &Path, url: &str, budget_ms: u32) -> String {
    let mut child = Command::new(browser)
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .arg("--no-first-run")
        .arg("--disable-background-networking")
        .arg("--disable-component-update")
        .arg("--disable-sync")
        .arg("--disable-default-apps")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of the table with id `table` in a dumped DOM, each as its cells' text.
fn rows(dom: &str, table: &str) -> Vec<(String, Vec<String>)> {
    let start = dom.find(&format!("<table id=\"{table}\"")).unwrap_or_else(|| panic!("{dom}"));
    let end = start + dom[start..].find("</table>").unwrap();
    let body = &dom[start..end];
    let body = &body[body.find("<tbody>").map(|i| i + 7).unwrap_or(0)..];
    body.split("<tr")
        .skip(1)
        .map(|row| {
            let attrs = row[..row.find('>').unwrap()].to_string();
            let cells = row
                .split("<td")
                .skip(1)
                .map(|c| {
                    let html = &c[c.find('>').unwrap() + 1..];
                    strip_tags(&html[..html.find("</td>").unwrap_or(html.len())])
                })
                .collect();
            (attrs, cells)
        })
        .collect()
}

/// `a <a href="x">b</a>` as `a b`.
fn strip_tags(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// The text of the element with id `id` (no nested elements).
fn text_of(dom: &str, id: &str) -> String {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}\n{dom}"));
    let text = &dom[at + dom[at..].find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

macro_rules! browser_or_skip {
    () => {
        match chromium() {
            Some(browser) => browser,
            None => {
                println!("SKIP: no chromium on PATH (Debian package `chromium`); page not tested");
                return;
            }
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_live_sessions_and_recent_refusals_and_kicks_by_reason() {
    let browser = browser_or_skip!();
    let server = start().await;
    let (_online, _) = server.device("s1").await;
    let (mut kicked, _) = server.device("s2").await;
    let mut stranger = Device::connect(&server.tcp()).await.unwrap();
    let refused = within(5, stranger.hello(hello(APP, "s3", "not-a-jwt", 0))).await;
    assert!(matches!(refused, Err(ClientError::Refused(_))), "{refused:?}");
    let kick = KickRequest { app_id: APP.into(), device_id: "s2".into(), ..Default::default() };
    assert!(within(5, server.router().await.kick(kick)).await.unwrap().into_inner().kicked);
    assert!(matches!(within(5, kicked.recv()).await, Err(ClientError::Kicked(_))));
    eventually(5, || server.node().hub.sessions.len() == 1).await;

    let url = format!("http://{}/", server.running().admin_addr.unwrap());
    let dom = dump_dom(browser, url, 3_000).await;
    assert_eq!(text_of(&dom, "state"), "serving", "{dom}");
    let sessions = rows(&dom, "sessions");
    let tcp = sessions.iter().find(|(a, _)| a.contains("data-transport=\"tcp\"")).expect("tcp row");
    assert_eq!(tcp.1, vec![APP, "tcp", "1"], "{dom}");
    let tls = sessions.iter().find(|(a, _)| a.contains("data-transport=\"tls\"")).expect("tls row");
    assert_eq!(tls.1[2], "0");
    let failures = rows(&dom, "failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    // Reason and total; "this minute" depends on whether a minute boundary passed.
    assert_eq!(failures[0].1[..2], ["token_malformed", "1"], "{failures:?}");
    let kicks = rows(&dom, "kicks");
    assert_eq!(kicks.len(), 1, "{kicks:?}");
    assert_eq!(kicks[0].1[..2], ["operator", "1"], "{kicks:?}");
    server.stop().await;
}

/// What the page reads, without a browser: `/api/status` as JSON, and `/` as the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_status_reports_sessions_per_app_and_transport_and_recent_refusals() {
    let server = start().await;
    let (_online, _) = server.device("j1").await;
    let mut stranger = Device::connect(&server.tcp()).await.unwrap();
    let refused = within(5, stranger.hello(hello(APP, "j2", "not-a-jwt", 0))).await;
    assert!(matches!(refused, Err(ClientError::Refused(_))), "{refused:?}");
    let admin = server.running().admin_addr.unwrap();
    let (code, body) = http_get(admin, "/api/status").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["draining"], false);
    let sessions = status["sessions"].as_array().unwrap();
    let count = |transport: &str| {
        sessions.iter().find(|s| s["app"] == APP && s["transport"] == transport).unwrap()["count"]
            .as_i64()
    };
    assert_eq!((count("tcp"), count("tls")), (Some(1), Some(0)), "{body}");
    let refusals: i64 = status["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["handshake_failures"]["token_malformed"].as_i64())
        .sum();
    assert_eq!(refusals, 1, "{body}");
    let (code, page) = http_get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>") && page.contains("/api/status"));
    server.stop().await;
}

/// The whole chain against the real lookup endpoints: a device that received a message
/// and acked it. Its own timeline shows the connection and links to nothing routine (a
/// device's timeline leaves sends and acks to its messages' timelines, see `timeline`),
/// so the ack is asserted where the page's message link leads: the message's timeline,
/// which names the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lookup_and_its_message_lookup_show_the_ack() {
    let browser = browser_or_skip!();
    let server = start().await;
    let (mut device, _) = server.device("phone-1").await;
    let message_id = server.notify(&["phone-1"], "hello").await.message_id;
    let push = next_push(&mut device).await;
    assert_eq!(push.message_id, message_id);
    within(5, device.ack(push.seq)).await.unwrap();
    let key = DeviceKey::new(APP, "phone-1");
    eventually(5, || server.node().hub.pending(&key) == 0).await;
    let admin = server.running().admin_addr.unwrap();

    let url = format!("http://{admin}/?app={APP}&device=phone-1");
    let dom = dump_dom(browser.clone(), url, 3_000).await;
    assert!(dom.contains("data-lookup=\"done\""), "the lookup never finished\n{dom}");
    assert_eq!(text_of(&dom, "lookup-error"), "", "{dom}");
    assert_eq!(text_of(&dom, "verdict"), "nothing wrong found", "{dom}");
    assert!(text_of(&dom, "summary").starts_with("online over tcp"), "{dom}");
    assert!(text_of(&dom, "summary").contains("0 pending"), "{dom}");
    let timeline = rows(&dom, "timeline");
    assert!(timeline.iter().any(|(attrs, _)| attrs.contains("data-event=\"connected\"")));

    let url = format!("http://{admin}/?app={APP}&message={message_id}");
    let dom = dump_dom(browser, url, 3_000).await;
    assert_eq!(text_of(&dom, "lookup-error"), "", "{dom}");
    let timeline = rows(&dom, "timeline");
    let acked = timeline.iter().find(|(attrs, cells)| {
        attrs.contains("data-event=\"acked\"") && cells[2] == message_id && cells[3] == "phone-1"
    });
    assert!(acked.is_some(), "no acked row for {message_id} on phone-1: {timeline:?}");
    let link = format!("href=\"?app={APP}&amp;device=phone-1\"");
    assert!(dom.contains(&link), "the device id links to its lookup\n{dom}");
    server.stop().await;
}

/// The page's rendering against a stub of the lookup API (the contract: `verdict`, and
/// `timeline` rows of `at_ms`, `event`, `message_id`, `reason`, `detail`; 404 with
/// `error`), so the page is checked whatever the real endpoint's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_the_verdict_and_timeline_the_lookup_api_returns() {
    let browser = browser_or_skip!();
    let stub = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stub.local_addr().unwrap();
    let serving = tokio::spawn(serve_stub(stub));

    let dom = dump_dom(browser.clone(), format!("http://{addr}/?app=demo&device=d1"), 3_000).await;
    assert_eq!(text_of(&dom, "verdict"), "delivered: acked by the device", "{dom}");
    let timeline = rows(&dom, "timeline");
    let events: Vec<&str> = timeline.iter().map(|(_, c)| c[1].as_str()).collect();
    assert_eq!(events, ["connected", "accepted", "sent", "acked"], "{timeline:?}");
    assert_eq!(timeline[3].1[2], "m-42");
    assert!(timeline[3].0.contains("data-event=\"acked\""));
    assert_eq!(timeline[1].1[5], "<b>not markup</b>".replace('<', "&lt;").replace('>', "&gt;"));
    assert!(timeline[0].1[0].contains(".250"), "local time with milliseconds: {timeline:?}");

    let dom = dump_dom(browser, format!("http://{addr}/?app=demo&message=nope"), 3_000).await;
    let error = text_of(&dom, "lookup-error");
    assert!(error.contains("unknown message") && error.contains("404"), "{error}");
    serving.abort();
}

/// Serves the real page, a fixed status, a device timeline and a 404 for messages.
async fn serve_stub(listener: tokio::net::TcpListener) {
    let status = r#"{"now_ms":1700000000000,"draining":false,"connections":1,
        "sessions":[{"app":"demo","transport":"tcp","count":1}],"window_minutes":15,"minutes":[]}"#;
    let device = r#"{"verdict":"delivered: acked by the device","timeline":[
        {"at_ms":1700000000250,"event":"connected","message_id":"","reason":"","detail":"tcp"},
        {"at_ms":1700000001000,"event":"accepted","message_id":"m-42","reason":"",
         "detail":"<b>not markup</b>"},
        {"at_ms":1700000001002,"event":"sent","message_id":"m-42","reason":"","detail":""},
        {"at_ms":1700000001010,"event":"acked","message_id":"m-42","reason":"","detail":""}]}"#;
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        let mut head = vec![0u8; 4096];
        let n = socket.read(&mut head).await.unwrap_or(0);
        let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_string();
        let path = line.split(' ').nth(1).unwrap_or("").split('?').next().unwrap_or("");
        let (code, kind, body) = match path {
            "/" => ("200 OK", "text/html", longlink::status::PAGE.to_string()),
            "/api/status" => ("200 OK", "application/json", status.to_string()),
            "/api/device" => ("200 OK", "application/json", device.to_string()),
            _ => ("404 Not Found", "application/json", r#"{"error":"unknown message"}"#.into()),
        };
        let response = format!(
            "HTTP/1.1 {code}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
        let _ = socket.shutdown().await;
    }
}
