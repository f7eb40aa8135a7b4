//! Memory readings from /proc: the server's resident set (user space), and the kernel's
//! TCP memory (socket buffers from /proc/net/sockstat, socket objects from
//! /proc/slabinfo), kept apart so the two costs are never mixed.
//!
//! Note: the kernel figures are machine-wide. Over loopback both ends of every
//! connection live in this kernel, so per connection they cover two sockets.

use serde::Serialize;

/// Slab caches that grow with each TCP socket.
const SOCKET_SLABS: &[&str] = &["TCP", "sock_inode_cache"];

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Snapshot {
    /// The server's VmRSS, bytes, when a pid was given.
    pub server_rss: Option<u64>,
    /// TCP buffer memory, bytes ("TCP: ... mem" pages times the page size).
    pub tcp_buffers: u64,
    /// TCP sockets in use, machine-wide.
    pub tcp_sockets: u64,
    /// Bytes held by the socket slab caches, when /proc/slabinfo is readable (root).
    pub socket_slabs: Option<u64>,
}

pub fn snapshot(server_pid: Option<u32>) -> Snapshot {
    let (tcp_sockets, pages) = sockstat().unwrap_or((0, 0));
    Snapshot {
        server_rss: server_pid.and_then(rss),
        tcp_buffers: pages * page_size(),
        tcp_sockets,
        socket_slabs: socket_slabs(),
    }
}

/// The change between two snapshots, total and per connection (`None` when no
/// connection was open, or the figure could not be read).
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub before: Snapshot,
    pub after: Snapshot,
    pub connections: u64,
    /// Server user-space bytes per connection.
    pub server_rss_per_connection: Option<f64>,
    /// Kernel TCP buffer bytes per connection (both ends).
    pub tcp_buffers_per_connection: Option<f64>,
    /// Kernel socket-object bytes per connection (both ends).
    pub socket_slabs_per_connection: Option<f64>,
}

pub fn change(before: Snapshot, after: Snapshot, connections: u64) -> Change {
    let per =
        |a: u64, b: u64| (connections > 0).then(|| (a as f64 - b as f64) / connections as f64);
    let both = |a: Option<u64>, b: Option<u64>| per(a?, b?);
    Change {
        before,
        after,
        connections,
        server_rss_per_connection: both(after.server_rss, before.server_rss),
        tcp_buffers_per_connection: per(after.tcp_buffers, before.tcp_buffers),
        socket_slabs_per_connection: both(after.socket_slabs, before.socket_slabs),
    }
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// (sockets in use, buffer pages) from the "TCP:" line.
fn sockstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let value = |name: &str| -> Option<u64> {
        let at = fields.iter().position(|f| *f == name)?;
        fields.get(at + 1)?.parse().ok()
    };
    Some((value("inuse")?, value("mem")?))
}

fn page_size() -> u64 {
    // The kernel states its page size in smaps; 4 KiB is the usual answer elsewhere.
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("KernelPageSize:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(4096, |kib| kib * 1024)
}

fn socket_slabs() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let mut total = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 3 && SOCKET_SLABS.contains(&fields[0]) {
            let active: u64 = fields[1].parse().ok()?;
            let size: u64 = fields[3].parse().ok()?;
            total += active * size;
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_machine() {
        let s = super::snapshot(Some(std::process::id()));
        assert!(s.server_rss.unwrap() > 0);
        assert!(super::page_size() >= 4096);
    }
}
