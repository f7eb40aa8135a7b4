//! Reading the whole store back at start: every device with its kept messages in seq
//! order, every app's broadcasts in seq order, and the idempotency keys still in their
//! retention window.
//!
//! Corrupt records are counted, logged with their key, and skipped: never served.
//! Expired messages and requests are skipped and deleted.

use std::collections::BTreeMap;

use super::record::{self, parse_broadcast_key, parse_message_key, parse_pair_key};
use super::{Space, Store, StoreError};
use crate::proto::store::{
    StoredBroadcast, StoredBroadcastSeq, StoredDevice, StoredEpoch, StoredMessage, StoredRequest,
};

/// The key of the node's epoch in the `meta` keyspace.
pub const EPOCH_KEY: &[u8] = b"epoch";

#[derive(Debug, Default)]
pub struct LoadedDevice {
    pub record: StoredDevice,
    /// Kept messages, in seq order.
    pub messages: Vec<(u64, StoredMessage)>,
}

#[derive(Debug, Default)]
pub struct Loaded {
    /// By (app, device).
    pub devices: BTreeMap<(String, String), LoadedDevice>,
    /// (app, request id) and the first answer.
    pub requests: Vec<(String, String, StoredRequest)>,
    /// (app, broadcast seq) and the broadcast, in seq order per app.
    pub broadcasts: Vec<(String, u64, StoredBroadcast)>,
    /// (app, highest broadcast seq given out, the epoch it was written in).
    pub broadcast_seqs: Vec<(String, u64, u32)>,
    /// The epoch this start of the node runs in: one past the last one kept, 0 for a new
    /// store. The caller writes it back ([`Store::enter_epoch`]) before serving.
    pub epoch: u32,
    pub corrupt: usize,
    pub expired: usize,
}

impl Store {
    pub fn load(&self, now_ms: i64) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        self.load_epoch(&mut loaded)?;
        self.load_devices(&mut loaded)?;
        self.load_messages(&mut loaded, now_ms)?;
        self.load_requests(&mut loaded, now_ms)?;
        self.load_broadcasts(&mut loaded, now_ms)?;
        // Kept by a version that had no epochs: this start is a restart all the same.
        let kept = !loaded.devices.is_empty() || !loaded.broadcast_seqs.is_empty();
        if loaded.epoch == 0 && kept && self.spaces.meta.get(EPOCH_KEY)?.is_none() {
            loaded.epoch = 1;
        }
        if loaded.corrupt > 0 {
            metrics::counter!("longlink_store_corrupt_records_total")
                .increment(loaded.corrupt as u64);
        }
        Ok(loaded)
    }

    fn load_devices(&self, loaded: &mut Loaded) -> Result<(), StoreError> {
        for item in self.spaces.devices.iter() {
            let (key, value) = item.into_inner()?;
            let Some((app, device)) = parse_pair_key(&key) else {
                loaded.corrupt += corrupt("devices", &key, "unreadable key");
                continue;
            };
            match record::decode::<StoredDevice>(&value) {
                Ok(record) => {
                    let entry = loaded.devices.entry((app.into(), device.into())).or_default();
                    entry.record = record;
                }
                Err(e) => loaded.corrupt += corrupt("devices", &key, &e.to_string()),
            }
        }
        Ok(())
    }

    fn load_messages(&self, loaded: &mut Loaded, now_ms: i64) -> Result<(), StoreError> {
        for item in self.spaces.messages.iter() {
            let (key, value) = item.into_inner()?;
            // On disk, corrupt or not, until something deletes it.
            self.messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((app, device, seq)) = parse_message_key(&key) else {
                loaded.corrupt += corrupt("messages", &key, "unreadable key");
                continue;
            };
            let message = match record::decode::<StoredMessage>(&value) {
                Ok(m) => m,
                Err(e) => {
                    loaded.corrupt += corrupt("messages", &key, &e.to_string());
                    continue;
                }
            };
            if message.expires_at_ms > 0 && message.expires_at_ms <= now_ms {
                loaded.expired += 1;
                self.delete(Space::Messages, key.to_vec());
                continue;
            }
            let entry = loaded.devices.entry((app.into(), device.into())).or_default();
            entry.messages.push((seq, message));
        }
        Ok(())
    }

    fn load_requests(&self, loaded: &mut Loaded, now_ms: i64) -> Result<(), StoreError> {
        for item in self.spaces.requests.iter() {
            let (key, value) = item.into_inner()?;
            let Some((app, id)) = parse_pair_key(&key) else {
                loaded.corrupt += corrupt("requests", &key, "unreadable key");
                continue;
            };
            match record::decode::<StoredRequest>(&value) {
                Ok(r) if r.expires_at_ms <= now_ms => self.delete(Space::Requests, key.to_vec()),
                Ok(r) => loaded.requests.push((app.into(), id.into(), r)),
                Err(e) => loaded.corrupt += corrupt("requests", &key, &e.to_string()),
            }
        }
        Ok(())
    }
}

impl Store {
    /// Writes the epoch `loaded` runs in; durable at the next [`Store::sync`], which must
    /// come before any seq is given out.
    pub fn enter_epoch(&self, loaded: &Loaded) {
        let value = record::encode(&StoredEpoch { epoch: loaded.epoch });
        self.put(Space::Meta, EPOCH_KEY.to_vec(), value);
    }

    fn load_epoch(&self, loaded: &mut Loaded) -> Result<(), StoreError> {
        let Some(value) = self.spaces.meta.get(EPOCH_KEY)? else { return Ok(()) };
        match record::decode::<StoredEpoch>(&value) {
            Ok(r) => loaded.epoch = r.epoch.saturating_add(1),
            // Unreadable: the next epoch is unknown, so start far past any that could
            // have been (see `Hub::restore`); seqs only grow.
            Err(e) => {
                loaded.corrupt += corrupt("meta", EPOCH_KEY, &e.to_string());
                loaded.epoch = u32::from(u16::MAX);
            }
        }
        Ok(())
    }

    fn load_broadcasts(&self, loaded: &mut Loaded, now_ms: i64) -> Result<(), StoreError> {
        for item in self.spaces.broadcasts.iter() {
            let (key, value) = item.into_inner()?;
            match parse_broadcast_key(&key) {
                None => loaded.corrupt += corrupt("broadcasts", &key, "unreadable key"),
                Some((app, None)) => match record::decode::<StoredBroadcastSeq>(&value) {
                    Ok(r) => loaded.broadcast_seqs.push((app.into(), r.last_seq, r.epoch)),
                    Err(e) => loaded.corrupt += corrupt("broadcasts", &key, &e.to_string()),
                },
                Some((app, Some(seq))) => match record::decode::<StoredBroadcast>(&value) {
                    Ok(b) if b.expires_at_ms > 0 && b.expires_at_ms <= now_ms => {
                        loaded.expired += 1;
                        self.delete(Space::Broadcasts, key.to_vec());
                    }
                    Ok(b) => loaded.broadcasts.push((app.into(), seq, b)),
                    Err(e) => loaded.corrupt += corrupt("broadcasts", &key, &e.to_string()),
                },
            }
        }
        Ok(())
    }
}

fn corrupt(space: &str, key: &[u8], why: &str) -> usize {
    tracing::warn!(space, key = %String::from_utf8_lossy(key).replace('\0', "/"), why, "corrupt record skipped");
    1
}
