//! The router side against an MQTT broker: one publishing client that sends to device
//! topics at a fixed rate, or one message to the broadcast topic, counting PUBACKs at
//! QoS 1. Its tally has the same shape as the longlink router's.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::mqtt::{Client, MqttError, Packet};
use crate::plan::{BROADCAST_TOPIC, device_id, device_topic};
use crate::router::{Drive, Tally};
use crate::stats::unix_us;

const CLIENT_ID: &str = "lt-publisher";
const KEEPALIVE_SECS: u16 = 60;
/// How long PUBACKs may trail the last PUBLISH.
const ACK_GRACE: Duration = Duration::from_secs(10);

pub struct Publisher {
    client: Client,
    qos: u8,
    tally: Tally,
}

impl Publisher {
    pub async fn connect(addr: SocketAddr, qos: u8) -> anyhow::Result<Publisher> {
        let mut client = Client::connect(addr, None).await?;
        client
            .handshake(CLIENT_ID, KEEPALIVE_SECS)
            .await
            .map_err(|e| anyhow::anyhow!("publisher: {e}"))?;
        Ok(Publisher { client, qos, tally: Tally::default() })
    }

    /// Publishes to random device topics as `drive` says; returns how long sending took.
    pub async fn drive(mut self, drive: &Drive) -> anyhow::Result<(Tally, Duration)> {
        let start = Instant::now();
        let mut published = 0;
        while published < drive.total() && Instant::now() < drive.deadline {
            while published < drive.due(start.elapsed()) {
                let id = device_id(rand::random_range(0..drive.n.max(1)));
                self.publish(&device_topic(&id)).await?;
                published += 1;
            }
            self.take_acks(Instant::now() + Duration::from_millis(1)).await?;
        }
        let elapsed = start.elapsed();
        self.settle().await?;
        Ok((self.tally, elapsed))
    }

    /// Publishes one message to the broadcast topic; returns its send time.
    pub async fn broadcast(mut self) -> anyhow::Result<(Tally, u64)> {
        let sent_at = self.publish(BROADCAST_TOPIC).await?;
        self.settle().await?;
        Ok((self.tally, sent_at))
    }

    async fn publish(&mut self, topic: &str) -> anyhow::Result<u64> {
        let sent_at = unix_us();
        self.client.publish(topic, &sent_at.to_be_bytes(), self.qos).await?;
        self.tally.requests += 1;
        if self.qos == 0 {
            // Nothing will confirm it: count it as sent.
            self.tally.sent += 1;
        }
        Ok(sent_at)
    }

    /// Waits for PUBACKs of everything published, within [`ACK_GRACE`].
    async fn settle(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + ACK_GRACE;
        while self.tally.sent < self.tally.requests && Instant::now() < until {
            self.take_acks(until).await?;
        }
        let unacked = self.tally.requests - self.tally.sent;
        if unacked > 0 {
            self.tally.not_sent.insert("unacked".into(), unacked);
        }
        Ok(())
    }

    /// Counts the PUBACKs that arrive before `until`.
    async fn take_acks(&mut self, until: Instant) -> anyhow::Result<()> {
        loop {
            let packet = tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                packet = self.client.recv() => packet,
            };
            match packet {
                Ok(Packet::PubAck { .. }) => self.tally.sent += 1,
                Ok(_) => {}
                Err(MqttError::Io(e)) => return Err(e.into()),
                Err(e) => anyhow::bail!("publisher: {e}"),
            }
            if self.tally.sent >= self.tally.requests {
                return Ok(());
            }
        }
    }
}
