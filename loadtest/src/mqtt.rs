//! A minimal MQTT 3.1.1 client: the packets the same load shapes need against a broker
//! (CONNECT, CONNACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, PUBLISH at QoS 0 and 1,
//! PUBACK, DISCONNECT) and nothing else.
//!
//! `recv` is cancel-safe (bytes read are kept in the client's buffer), so it can sit in a
//! `select!`; writes are not and must run outside one. Note: no TLS, no QoS 2, no
//! retained-message or will handling; packets of other types are returned as `Other`.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 256 * 1024;

#[derive(Debug)]
pub enum MqttError {
    Io(io::Error),
    Closed,
    /// CONNACK with a non-zero return code.
    Refused(u8),
    Protocol(String),
}

impl fmt::Display for MqttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MqttError::Io(e) => write!(f, "{e}"),
            MqttError::Closed => write!(f, "broker closed the connection"),
            MqttError::Refused(rc) => write!(f, "CONNACK return code {rc}"),
            MqttError::Protocol(what) => write!(f, "protocol error: {what}"),
        }
    }
}

impl From<io::Error> for MqttError {
    fn from(e: io::Error) -> Self {
        MqttError::Io(e)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    ConnAck { code: u8 },
    SubAck { id: u16 },
    Publish { qos: u8, id: Option<u16>, payload: Vec<u8> },
    PubAck { id: u16 },
    PingResp,
    Other(u8),
}

#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    packets: VecDeque<Packet>,
    next_id: u16,
}

impl Client {
    pub async fn connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<Client> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, buf: Vec::with_capacity(512), packets: VecDeque::new(), next_id: 0 })
    }

    /// CONNECT with a clean session, then waits for CONNACK.
    pub async fn handshake(
        &mut self,
        client_id: &str,
        keepalive_secs: u16,
    ) -> Result<(), MqttError> {
        let mut body = Vec::with_capacity(16 + client_id.len());
        put_str(&mut body, "MQTT");
        body.push(4); // protocol level 3.1.1
        body.push(0x02); // clean session
        body.extend_from_slice(&keepalive_secs.to_be_bytes());
        put_str(&mut body, client_id);
        self.write(0x10, &body).await?;
        match self.recv().await? {
            Packet::ConnAck { code: 0 } => Ok(()),
            Packet::ConnAck { code } => Err(MqttError::Refused(code)),
            other => Err(MqttError::Protocol(format!("expected CONNACK, got {other:?}"))),
        }
    }

    /// SUBSCRIBE to `topics` at `qos`, then waits for SUBACK.
    pub async fn subscribe(&mut self, topics: &[&str], qos: u8) -> Result<(), MqttError> {
        let id = self.packet_id();
        let mut body = id.to_be_bytes().to_vec();
        for topic in topics {
            put_str(&mut body, topic);
            body.push(qos);
        }
        self.write(0x82, &body).await?;
        loop {
            match self.recv().await? {
                Packet::SubAck { id: got } if got == id => return Ok(()),
                Packet::SubAck { .. } | Packet::PingResp => continue,
                other => {
                    return Err(MqttError::Protocol(format!("expected SUBACK, got {other:?}")));
                }
            }
        }
    }

    pub async fn ping(&mut self) -> io::Result<()> {
        self.write(0xC0, &[]).await
    }

    /// PUBLISH; returns the packet id a QoS 1 PUBACK will name.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> io::Result<Option<u16>> {
        let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
        put_str(&mut body, topic);
        let id = (qos > 0).then(|| self.packet_id());
        if let Some(id) = id {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        self.write(0x30 | (qos.min(1) << 1), &body).await?;
        Ok(id)
    }

    pub async fn puback(&mut self, id: u16) -> io::Result<()> {
        self.write(0x40, &id.to_be_bytes()).await
    }

    pub async fn disconnect(&mut self) -> io::Result<()> {
        self.write(0xE0, &[]).await
    }

    /// The next packet from the broker. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Packet, MqttError> {
        loop {
            if let Some(packet) = self.packets.pop_front() {
                return Ok(packet);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(MqttError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
            while let Some((packet, used)) = decode(&self.buf)? {
                self.buf.drain(..used);
                self.packets.push_back(packet);
            }
        }
    }

    fn packet_id(&mut self) -> u16 {
        // Zero is not a valid packet id.
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    async fn write(&mut self, header: u8, body: &[u8]) -> io::Result<()> {
        let mut packet = Vec::with_capacity(body.len() + 5);
        packet.push(header);
        put_length(&mut packet, body.len());
        packet.extend_from_slice(body);
        self.stream.write_all(&packet).await
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

/// One packet from the front of `buf` and the bytes it used; `None` until it is whole.
fn decode(buf: &[u8]) -> Result<Option<(Packet, usize)>, MqttError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        len |= ((byte & 0x7F) as usize) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(MqttError::Protocol("remaining length over 4 bytes".into()));
        }
    }
    if len > MAX_PACKET {
        return Err(MqttError::Protocol(format!("packet of {len} bytes")));
    }
    let Some(body) = buf.get(at..at + len) else {
        return Ok(None);
    };
    Ok(Some((parse(header, body)?, at + len)))
}

fn parse(header: u8, body: &[u8]) -> Result<Packet, MqttError> {
    let short = || MqttError::Protocol(format!("short packet of type {}", header >> 4));
    let u16_at = |i: usize| -> Result<u16, MqttError> {
        let b = body.get(i..i + 2).ok_or_else(short)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    };
    Ok(match header >> 4 {
        2 => Packet::ConnAck { code: *body.get(1).ok_or_else(short)? },
        3 => {
            let qos = (header >> 1) & 0x03;
            let topic_len = u16_at(0)? as usize;
            let mut at = 2 + topic_len;
            let id = if qos > 0 {
                let id = u16_at(at)?;
                at += 2;
                Some(id)
            } else {
                None
            };
            let payload = body.get(at..).ok_or_else(short)?.to_vec();
            Packet::Publish { qos, id, payload }
        }
        4 => Packet::PubAck { id: u16_at(0)? },
        9 => Packet::SubAck { id: u16_at(0)? },
        13 => Packet::PingResp,
        other => Packet::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_publish_split_anywhere() {
        let mut body = Vec::new();
        put_str(&mut body, "d/lt1");
        body.extend_from_slice(&7u16.to_be_bytes());
        body.extend_from_slice(&[1; 200]);
        let mut packet = vec![0x32];
        put_length(&mut packet, body.len());
        packet.extend_from_slice(&body);
        for cut in 0..packet.len() {
            assert!(decode(&packet[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (got, used) = decode(&packet).unwrap().unwrap();
        assert_eq!(used, packet.len());
        assert_eq!(got, Packet::Publish { qos: 1, id: Some(7), payload: vec![1; 200] });
    }
}
