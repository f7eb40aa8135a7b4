//! longlink: the self-built channel of a mobile push platform.
//!
//! Data flow (see ARCHITECTURE.md): `listener` accepts a socket, `connection` runs its
//! handshake (`handshake`, `token`) and its frame loop (`frame`), the `hub` keeps the
//! session table (`session`), each device's `mailbox` and the links (`link`) through
//! which pushes from the router API (`router`) reach connections; `heartbeat` closes the
//! silent ones, and idle plain connections wait without a task in `park`; `server` starts and drains it all. `receipts` publishes what happens to
//! deliveries and `timeline` keeps it, with every connection's story, for `inspect` and
//! `trace`.

pub mod admin;
pub mod admission;
pub mod apps;
pub mod broadcast;
pub mod budget;
pub mod cli;
pub mod client;
pub mod clock;
pub mod close;
pub mod config;
pub mod connection;
pub mod frame;
pub mod handler;
pub mod handshake;
pub mod heartbeat;
pub mod hub;
pub mod limits;
pub mod link;
pub mod listener;
pub mod mailbox;
pub mod message;
pub mod node;
pub mod park;
pub mod priority;
pub mod proto;
pub mod receipts;
pub mod recent;
pub mod requests;
pub mod router;
pub mod server;
pub mod session;
pub mod status;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod timeline;
pub mod tls;
pub mod tls_stream;
pub mod token;
