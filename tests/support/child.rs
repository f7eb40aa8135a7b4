//! A `longlink serve` child process on free ports, for tests that signal or kill it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_longlink");

pub struct Served {
    pub child: Child,
    pub dir: PathBuf,
    pub tcp: String,
    pub tls: String,
    pub api: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `longlink serve` in `dir` through `sh -c` with `prefix` (such as `ulimit -n
/// 64;`) and extra `LONGLINK_*` variables; waits until it printed its addresses.
pub fn serve_in(dir: &Path, prefix: &str, env: &[(&str, &str)]) -> Served {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("serve.log")).unwrap();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("{prefix} exec {BIN} serve"))
        .current_dir(dir)
        .env("LONGLINK_DEVICE__TCP_ADDR", "127.0.0.1:0")
        .env("LONGLINK_DEVICE__TLS_ADDR", "127.0.0.1:0")
        .env("LONGLINK_ROUTER__ADDR", "127.0.0.1:0")
        .env("LONGLINK_ADMIN__ADDR", "127.0.0.1:0")
        .env("LONGLINK_HEARTBEAT__MIN_SECS", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut tcp, mut tls, mut api) = (String::new(), String::new(), String::new());
    while api.is_empty() {
        let line = lines.next().expect("serve printed its addresses").unwrap();
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("device"), Some("TCP"), Some(a)) => tcp = a.into(),
            (Some("device"), Some("TLS"), Some(a)) => tls = a.into(),
            (Some("router"), Some("API"), Some(a)) => api = a.into(),
            _ => {}
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Served { child, dir: dir.to_path_buf(), tcp, tls, api }
}

impl Served {
    /// Runs a `longlink` subcommand in the server's directory; returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new(BIN).args(args).current_dir(&self.dir).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn token(&self, device: &str) -> String {
        self.run(&["token", "--app", "demo", "--device", device]).trim().to_string()
    }

    pub fn endpoint(&self) -> longlink::client::Endpoint {
        longlink::client::Endpoint { addr: self.tcp.parse().unwrap(), tls: None, bind: None }
    }

    pub async fn router(
        &self,
    ) -> longlink::proto::router::router_client::RouterClient<tonic::transport::Channel> {
        let url = format!("http://{}", self.api);
        longlink::proto::router::router_client::RouterClient::connect(url).await.unwrap()
    }

    /// Sends `signal` (such as "TERM" or "KILL") and waits up to `secs` for the exit.
    pub fn signal(&mut self, signal: &str, secs: u64) -> Option<Duration> {
        let started = Instant::now();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        assert!(status.unwrap().success());
        while started.elapsed() < Duration::from_secs(secs) {
            if self.child.try_wait().unwrap().is_some() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }
}
