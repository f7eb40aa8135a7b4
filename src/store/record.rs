//! Record framing and keys on disk.
//!
//! A record is `[format version][CRC32 of the payload, big-endian][payload]`: a record
//! whose version is unknown or whose checksum does not match is corrupt, reported and
//! never served. Keys sort the way they are read back: a device's messages are
//! contiguous and in seq order, so replay is one prefix scan.

use prost::Message;

/// The only record format so far.
pub const FORMAT: u8 = 1;
const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record format {0} is not one this build reads")]
    Format(u8),
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record payload does not decode: {0}")]
    Decode(String),
}

pub fn encode<M: Message>(payload: &M) -> Vec<u8> {
    let body = payload.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.push(FORMAT);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, RecordError> {
    if bytes.len() < HEADER {
        return Err(RecordError::Short(bytes.len()));
    }
    if bytes[0] != FORMAT {
        return Err(RecordError::Format(bytes[0]));
    }
    let sum = u32::from_be_bytes(bytes[1..HEADER].try_into().expect("four bytes"));
    let body = &bytes[HEADER..];
    if crc32fast::hash(body) != sum {
        return Err(RecordError::Checksum);
    }
    M::decode(body).map_err(|e| RecordError::Decode(e.to_string()))
}

/// `app \0 device`: a device's registry key, and the prefix of its messages.
pub fn device_key(app: &str, device: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(app.len() + device.len() + 2);
    key.extend_from_slice(app.as_bytes());
    key.push(0);
    key.extend_from_slice(device.as_bytes());
    key.push(0);
    key
}

/// `app \0 device \0 seq` with the seq big-endian, so keys sort by seq.
pub fn message_key(app: &str, device: &str, seq: u64) -> Vec<u8> {
    let mut key = device_key(app, device);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Splits a message key into app, device and seq.
pub fn parse_message_key(key: &[u8]) -> Option<(&str, &str, u64)> {
    let (head, seq) = key.split_at_checked(key.len().checked_sub(8)?)?;
    let mut parts = head.strip_suffix(&[0])?.splitn(2, |b| *b == 0);
    let app = std::str::from_utf8(parts.next()?).ok()?;
    let device = std::str::from_utf8(parts.next()?).ok()?;
    Some((app, device, u64::from_be_bytes(seq.try_into().ok()?)))
}

/// `app \0 seq` with the seq big-endian: one broadcast of the app.
pub fn broadcast_key(app: &str, seq: u64) -> Vec<u8> {
    let mut key = broadcast_seq_key(app);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `app \0`: the highest broadcast seq the app has given out.
pub fn broadcast_seq_key(app: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(app.len() + 9);
    key.extend_from_slice(app.as_bytes());
    key.push(0);
    key
}

/// Splits a broadcast key into the app and the seq (`None` for the app's seq record).
pub fn parse_broadcast_key(key: &[u8]) -> Option<(&str, Option<u64>)> {
    let at = key.iter().position(|b| *b == 0)?;
    let app = std::str::from_utf8(&key[..at]).ok()?;
    match &key[at + 1..] {
        [] => Some((app, None)),
        seq => Some((app, Some(u64::from_be_bytes(seq.try_into().ok()?)))),
    }
}

/// Splits a registry or request key (`a \0 b \0`) into its two parts.
pub fn parse_pair_key(key: &[u8]) -> Option<(&str, &str)> {
    let mut parts = key.strip_suffix(&[0])?.splitn(2, |b| *b == 0);
    let a = std::str::from_utf8(parts.next()?).ok()?;
    let b = std::str::from_utf8(parts.next()?).ok()?;
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::store::StoredMessage;

    #[test]
    fn records_round_trip_and_every_kind_of_damage_is_detected() {
        let m = StoredMessage { body: vec![1, 2, 3], expires_at_ms: 9, handed: true };
        let bytes = encode(&m);
        assert_eq!(decode::<StoredMessage>(&bytes), Ok(m));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode::<StoredMessage>(&flipped), Err(RecordError::Checksum));
        let mut future = bytes.clone();
        future[0] = 2;
        assert_eq!(decode::<StoredMessage>(&future), Err(RecordError::Format(2)));
        assert_eq!(decode::<StoredMessage>(&bytes[..3]), Err(RecordError::Short(3)));
    }

    #[test]
    fn message_keys_sort_by_seq_and_parse_back() {
        let a = message_key("app", "dev", 2);
        let b = message_key("app", "dev", 10);
        assert!(a < b);
        assert!(a.starts_with(&device_key("app", "dev")));
        assert!(!message_key("app", "dev2", 1).starts_with(&device_key("app", "dev")));
        assert_eq!(parse_message_key(&b), Some(("app", "dev", 10)));
        assert_eq!(parse_pair_key(&device_key("app", "dev")), Some(("app", "dev")));
        assert!(broadcast_key("app", 2) < broadcast_key("app", 10));
        assert_eq!(parse_broadcast_key(&broadcast_key("app", 10)), Some(("app", Some(10))));
        assert_eq!(parse_broadcast_key(&broadcast_seq_key("app")), Some(("app", None)));
        assert_eq!(parse_broadcast_key(b"app\0abc"), None);
    }
}
