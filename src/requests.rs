//! Idempotency keys: the first answer to a push that carried a request id, kept (in
//! memory and in the store) for the retention window, so that a retry returns it and
//! delivers nothing twice.
//!
//! Each key has its own async lock: a retry that arrives while the first attempt is
//! still running waits for it and then returns its answer.

use std::sync::Arc;

use dashmap::DashMap;
use prost::Message as _;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::proto::router::PushResponse;
use crate::proto::store::StoredRequest;
use crate::store::record::{self, device_key};
use crate::store::{Space, Store};

/// The first answer to a request id, and until when it is kept (Unix ms).
#[derive(Debug, Clone)]
pub struct Answer {
    pub expires_at_ms: i64,
    pub response: PushResponse,
}

pub type Slot = OwnedMutexGuard<Option<Answer>>;

/// (app, request id) -> the lock holding its first answer.
type Slots = DashMap<(Arc<str>, String), Arc<Mutex<Option<Answer>>>>;

#[derive(Debug, Default)]
pub struct Requests {
    slots: Slots,
}

impl Requests {
    /// Puts back the answers the store kept.
    pub fn restore(&self, kept: Vec<(String, String, StoredRequest)>) -> usize {
        let mut n = 0;
        for (app, id, stored) in kept {
            if let Ok(response) = PushResponse::decode(stored.response.as_slice()) {
                let answer = Answer { expires_at_ms: stored.expires_at_ms, response };
                self.slots.insert((app.into(), id), Arc::new(Mutex::new(Some(answer))));
                n += 1;
            }
        }
        n
    }

    /// The locked slot of `id`: holds the first answer when there was one.
    pub async fn slot(&self, app: &Arc<str>, id: &str) -> Slot {
        let lock = self.slots.entry((app.clone(), id.to_string())).or_default().clone();
        lock.lock_owned().await
    }

    /// The first answer of `id`, if it has one, without taking its slot (dry runs).
    /// A first attempt still running counts as none: it may yet be refused.
    pub fn answered(&self, app: &Arc<str>, id: &str) -> Option<PushResponse> {
        let lock = self.slots.get(&(app.clone(), id.to_string()))?.clone();
        let answer = lock.try_lock().ok()?;
        answer.as_ref().map(|a| a.response.clone())
    }

    /// Records `response` as the answer of `id` in its slot and enqueues it for the store.
    pub fn remember(&self, slot: &mut Slot, store: &Store, app: &str, id: &str, answer: Answer) {
        let stored = StoredRequest {
            expires_at_ms: answer.expires_at_ms,
            response: answer.response.encode_to_vec(),
        };
        store.put(Space::Requests, device_key(app, id), record::encode(&stored));
        **slot = Some(answer);
    }

    /// Request ids with a slot (answered, or being answered).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forgets answers past their retention, and the slots of pushes that were refused
    /// (no answer to remember, no attempt in progress); returns how many answers.
    pub fn purge(&self, store: &Store, now_ms: i64) -> usize {
        let mut gone = Vec::new();
        self.slots.retain(|(app, id), slot| {
            let Ok(answer) = slot.try_lock() else { return true };
            match answer.as_ref() {
                None => false,
                Some(a) if a.expires_at_ms <= now_ms => {
                    gone.push(device_key(app, id));
                    false
                }
                Some(_) => true,
            }
        });
        let n = gone.len();
        for key in gone {
            store.delete(Space::Requests, key);
        }
        n
    }
}
