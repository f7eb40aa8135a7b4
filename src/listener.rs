//! The device listener: accepts sockets and hands each to its own connection task.
//!
//! It survives running out of file descriptors: accept errors for lack of descriptors
//! back off (a few milliseconds, doubling up to [`MAX_BACKOFF`]) instead of spinning, are
//! logged at most once per [`LOG_EVERY`] with a count, and accepting resumes by itself as
//! soon as descriptors free up. Sockets beyond the handshake admission limits (in all, and
//! per peer address: [`crate::admission`]) are answered BUSY with a retry delay rather
//! than left waiting.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admission::Refused;
use crate::connection;
use crate::node::Node;
use crate::tls_stream::Acceptor;

const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Accepts until `stop` turns true, then drops the listening socket.
pub async fn run(
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<Acceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut errors = ErrorLog::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = MIN_BACKOFF;
                prepare(&socket, node.settings.send_buffer_bytes);
                let node = node.clone();
                let tls = tls.clone();
                match node.admission.admit(peer.ip()) {
                    Ok(permit) => {
                        tokio::spawn(connection::serve(node, socket, peer, tls, permit));
                    }
                    Err(refused) => {
                        if refused == Refused::Peer {
                            tracing::debug!(%peer, "busy: this address holds its share of the handshakes");
                        }
                        tokio::spawn(connection::busy(node, socket, tls));
                    }
                }
            }
            Err(error) if out_of_descriptors(&error) => {
                metrics::counter!("longlink_accept_errors_total", "kind" => "no_descriptors")
                    .increment(1);
                errors.note(&error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(error) => {
                // Aborted handshakes and similar are the peer's doing: skip the socket.
                metrics::counter!("longlink_accept_errors_total", "kind" => "other").increment(1);
                tracing::debug!(%error, "accept failed");
            }
        }
    }
}

fn prepare(socket: &tokio::net::TcpStream, send_buffer_bytes: usize) {
    let _ = socket.set_nodelay(true);
    if send_buffer_bytes > 0 {
        let _ = socket2::SockRef::from(socket).set_send_buffer_size(send_buffer_bytes);
    }
}

fn out_of_descriptors(error: &io::Error) -> bool {
    // EMFILE (24): this process; ENFILE (23): the whole system; ENOBUFS/ENOMEM: the kernel.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Logs descriptor exhaustion at a bounded rate.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn note(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self.last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::error!(
            %error,
            suppressed = self.suppressed,
            "cannot accept: out of file descriptors; backing off"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}
