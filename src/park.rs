//! Where idle plain connections wait without a task: their socket on one epoll of the
//! node's own, their state in a slab entry.
//!
//! An idle connection is nearly all of what a node holds, and as a tokio task it keeps
//! the task (about 380 bytes) and tokio's readiness record of its socket (about 250)
//! only to wait. A plain connection that has had nothing to read or write for
//! `device.park_after_ms`, with no frame half read or half written, is parked instead:
//! its task ends, its socket moves here, and the link's waker becomes this slab entry's.
//! What the device sends is read by the park thread itself, in place: whole frames (a
//! ping, an ack) are handled and answered there, and the connection stays parked, its
//! socket registered as it was ([`crate::connection::read_parked`]). Frames queued on
//! the link are written straight to the socket by whoever queued them, as long as the
//! socket takes them whole. Anything else (half a frame, a close request, a socket that
//! pushes back) hands the connection to a new task ([`crate::connection::resume`]),
//! which carries on where the parked connection stopped.
//!
//! The park thread never waits: what it runs for a frame is the same synchronous
//! handling a connection task runs, which enqueues and never blocks. It holds no slab
//! lock meanwhile (the entry is marked as being read instead), since handling a frame
//! takes the device's registry entry, and a fan-out holds that entry while it takes a
//! slab lock to write.
//!
//! Nothing is lost in between: registering a socket that already has data pending
//! reports it at once (epoll checks readiness on add), and the link is checked for work
//! after the entry's waker is in place, so a push that raced the parking is found by
//! that check or wakes the entry. The entry's waker is only ever put on the link under
//! the lock of the slab that holds the entry ([`arm`]): registered after the entry left,
//! it would take the place of the waker of the task that has the connection now, and
//! that task would not hear of pushes or closes until its device sent something.

use std::cell::Cell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use parking_lot::Mutex;
use slab::Slab;

use crate::connection::Quick;
use crate::frame::Decoder;
use crate::link::Link;
use crate::node::ConnectionGuard;
use crate::session::DeviceKey;

/// Readiness events taken per wait of the park thread.
const EVENTS: usize = 1024;
/// Slabs the parked connections are spread over. A frame queued on a parked link is
/// written under its slab's lock (that lock is what keeps two writers off one socket),
/// so a fan-out on every core needs many slabs, or its threads take turns at one.
const SHARDS: usize = 64;
/// Entries a full slab grows by. Not doubling: a slab that doubled is on average a
/// third empty, which cost 45 bytes per parked connection at 19,000; the copy a
/// fixed step makes instead is a few microseconds a slab, rarely.
const GROW: usize = 64;
/// How long the park thread waits before it checks whether its node is gone.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// A parked connection: everything a new task needs to carry on.
#[derive(Debug)]
pub struct Parked {
    pub socket: TcpStream,
    /// Told apart from a later entry in the same slot: a stale event or waker for the
    /// slot must not unpark whoever parked there since.
    generation: u32,
    pub link: Arc<Link>,
    pub key: DeviceKey,
    /// Keeps the connection counted while it is parked (a drain waits for it).
    pub guard: ConnectionGuard,
    /// The waker its link holds; it follows the connection to each new slot.
    unpark: Arc<Unpark>,
}

#[derive(Debug)]
pub struct Park {
    registry: mio::Registry,
    shards: Box<[Mutex<Slots>]>,
    /// Where the next connection parks: round robin over `shards`.
    next: AtomicUsize,
    runtime: tokio::runtime::Handle,
    /// Connections parked since start.
    parks: AtomicU64,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Slab<Slot>,
    generation: u32,
}

/// A slab entry.
#[derive(Debug)]
enum Slot {
    Parked(Parked),
    /// The park thread is reading from the connection parked here (it has it, and puts it
    /// back or hands it to a task): nobody else writes to its socket meanwhile.
    Reading,
}

/// The waker a parked connection's link holds: one per connection, made when it first
/// parks, whose token moves with it, so a waker registered late still finds it.
#[derive(Debug)]
struct Unpark {
    park: Arc<Park>,
    token: AtomicUsize,
}

thread_local! {
    /// Set while this thread, holding a slab's lock, registers an entry's waker:
    /// registering wakes the new waker at once when a wake raced it, and that wake must
    /// not take the same lock again. The registering thread looks for work right after.
    static ARMING: Cell<bool> = const { Cell::new(false) };
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !ARMING.get() {
            self.park.deliver(self);
        }
    }
}

/// Makes `unpark` the link's waker and says whether the link already has work (frames
/// or a close that came before). Only under the lock of the slab that holds the entry:
/// once the lock is released the entry may leave the park at any moment, and a waker
/// registered after that would take the place of its task's (a lost wake-up).
fn arm(link: &Link, unpark: &Arc<Unpark>) -> bool {
    ARMING.set(true);
    link.register(&Waker::from(unpark.clone()));
    ARMING.set(false);
    link.has_work()
}

impl Park {
    /// Opens the epoll and starts the thread that waits on it. Parked connections are
    /// handed back to tasks on the runtime this is called from.
    pub fn start() -> io::Result<Arc<Park>> {
        let poll = Poll::new()?;
        let park = Arc::new(Park {
            registry: poll.registry().try_clone()?,
            shards: (0..SHARDS).map(|_| Mutex::new(Slots::default())).collect(),
            next: AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::current(),
            parks: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&park);
        let runtime = park.runtime.clone();
        std::thread::Builder::new().name("longlink-park".into()).spawn(move || {
            // Frames are handled on this thread: in the runtime's context, as on a task.
            let _runtime = runtime.enter();
            wait(poll, weak)
        })?;
        Ok(park)
    }

    /// Parks a connection. On error (the socket could not be registered) it is handed
    /// back unchanged.
    pub fn park(
        self: &Arc<Self>,
        socket: TcpStream,
        link: Arc<Link>,
        key: DeviceKey,
        guard: ConnectionGuard,
    ) -> Result<(), (TcpStream, Arc<Link>, DeviceKey, ConnectionGuard)> {
        let unpark = Arc::new(Unpark { park: self.clone(), token: AtomicUsize::new(0) });
        let parked = Parked { socket, generation: 0, link, key, guard, unpark };
        self.file(parked).map_err(|p| (p.socket, p.link, p.key, p.guard))
    }

    fn file(&self, mut parked: Parked) -> Result<(), Parked> {
        let unpark = parked.unpark.clone();
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let work = {
            let mut slots = self.shards[shard].lock();
            if slots.entries.len() == slots.entries.capacity() {
                slots.entries.reserve_exact(GROW);
            }
            slots.generation = slots.generation.wrapping_add(1);
            parked.generation = slots.generation;
            let entry = slots.entries.vacant_entry();
            let token = token(Place { shard, slot: entry.key() }, parked.generation);
            // Under the lock: an event for this token waits until the entry is in. It
            // reports data that is already there.
            if self.registry.register(&mut parked.socket, token, Interest::READABLE).is_err() {
                return Err(parked);
            }
            unpark.token.store(token.0, Ordering::Release);
            // A push or close that came after the last look went to the earlier waker.
            let work = arm(&parked.link, &unpark);
            entry.insert(Slot::Parked(parked));
            work
        };
        self.parks.fetch_add(1, Ordering::Relaxed);
        if work {
            self.deliver(&unpark);
        }
        Ok(())
    }

    /// Takes up what was queued on a parked connection's link. Frames are written
    /// straight to the socket, from the thread that queued them, for as long as the
    /// socket takes them whole: a push or a broadcast to an idle device costs no task.
    /// A close request, or a socket that pushes back, hands the connection back to a
    /// task, with what is left of the frame it was writing.
    fn deliver(&self, unpark: &Arc<Unpark>) {
        loop {
            let (place, generation) = split(Token(unpark.token.load(Ordering::Acquire)));
            let mut slots = self.shards[place.shard].lock();
            let parked = match slots.entries.get_mut(place.slot) {
                Some(Slot::Parked(p)) if p.generation == generation => p,
                // Taken out or being read meanwhile: whoever has it looks at the link once
                // it has armed the waker again (see `arm`).
                _ => return,
            };
            if let Err(rest) = write_out(parked) {
                let Slot::Parked(parked) = slots.entries.remove(place.slot) else { return };
                drop(slots);
                self.hand_back(parked, rest, None);
                return;
            }
            // Waking took the waker out of the link: put it back, then look again for
            // what came meanwhile.
            if !arm(&parked.link, unpark) {
                return;
            }
        }
    }

    /// The device sent something on the connection parked under `token`, if it is still
    /// parked: reads and handles it here, and puts the connection back as it was, or
    /// hands it to a task when it needs one.
    fn readable(&self, token: Token) {
        let (place, generation) = split(token);
        let mut parked = {
            let mut slots = self.shards[place.shard].lock();
            let Some(slot) = slots.entries.get_mut(place.slot) else { return };
            match std::mem::replace(slot, Slot::Reading) {
                Slot::Parked(p) if p.generation == generation => p,
                // Being read, or another connection's now: left as it was.
                other => {
                    *slot = other;
                    return;
                }
            }
        };
        let node = parked.guard.node().clone();
        let mut decoder = Decoder::new(node.settings.max_frame_bytes);
        match crate::connection::read_parked(&node, &mut parked, &mut decoder) {
            Quick::Done => self.put_back(place, parked),
            Quick::Task(writing) => {
                self.shards[place.shard].lock().entries.remove(place.slot);
                self.hand_back(parked, writing, Some(decoder));
            }
        }
    }

    /// Puts a connection the park thread has read from back in its slot, under the same
    /// token (its socket's registration never changed), and takes up what was queued on
    /// its link meanwhile.
    fn put_back(&self, place: Place, parked: Parked) {
        let unpark = {
            let mut slots = self.shards[place.shard].lock();
            let work = arm(&parked.link, &parked.unpark);
            let unpark = work.then(|| parked.unpark.clone());
            slots.entries[place.slot] = Slot::Parked(parked);
            unpark
        };
        if let Some(unpark) = unpark {
            self.deliver(&unpark);
        }
    }

    /// Spawns the task that carries on with `parked`, writing `writing` first and
    /// decoding on from `decoder` (what was read of a frame), if any.
    fn hand_back(&self, mut parked: Parked, writing: Option<Bytes>, decoder: Option<Decoder>) {
        self.release(&mut parked);
        self.runtime.spawn(crate::connection::resume(parked, writing, decoder));
    }

    /// Takes a socket taken out of the slab off the epoll, for a task to own it.
    fn release(&self, parked: &mut Parked) {
        // Events already taken for its token find the slot empty, or another generation.
        let _ = self.registry.deregister(&mut parked.socket);
    }

    /// Connections parked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes every frame queued on the link; only whoever holds `parked` (out of its slab,
/// or under its slab's lock) may. `Err` hands the connection back: with what is left of
/// a frame the socket did not take whole, or with nothing on a close request (the task
/// closes) or a write error (the task writes again and sees it).
pub(crate) fn write_out(parked: &mut Parked) -> Result<(), Option<Bytes>> {
    loop {
        let mut frame = match parked.link.next() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(_closing) => return Err(None),
        };
        while !frame.is_empty() {
            match (&parked.socket).write(&frame) {
                Ok(n) if n > 0 => frame.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => return Err(Some(frame)),
            }
        }
    }
}

/// The park thread: hands every connection with an event back, until the node is gone.
fn wait(mut poll: Poll, park: Weak<Park>) {
    let mut events = Events::with_capacity(EVENTS);
    loop {
        if let Err(error) = poll.poll(&mut events, Some(IDLE_WAIT)) {
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(%error, "park epoll failed; parked connections stay until woken");
            return;
        }
        let Some(park) = park.upgrade() else { return };
        for event in events.iter() {
            park.readable(event.token());
        }
    }
}

/// Where a parked connection is: which slab, which entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    shard: usize,
    slot: usize,
}

/// The low 32 bits say where (slot * SHARDS + shard: 67 million entries a slab), the
/// high 32 bits which occupant.
fn token(place: Place, generation: u32) -> Token {
    let at = (place.slot * SHARDS + place.shard) as u64;
    debug_assert!(at <= u64::from(u32::MAX));
    Token((u64::from(generation) << 32 | at) as usize)
}

fn split(token: Token) -> (Place, u32) {
    let raw = token.0 as u64;
    let at = (raw & u64::from(u32::MAX)) as usize;
    (Place { shard: at % SHARDS, slot: at / SHARDS }, (raw >> 32) as u32)
}

/// The node's park, started on first use; `None` when it could not start (logged once).
#[derive(Debug, Default)]
pub struct Lazy(OnceLock<Option<Arc<Park>>>);

impl Lazy {
    pub fn get(&self) -> Option<&Arc<Park>> {
        self.0
            .get_or_init(|| match Park::start() {
                Ok(park) => Some(park),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the park thread; idle connections keep their tasks");
                    None
                }
            })
            .as_ref()
    }

    /// Connections parked now (0 before the first).
    pub fn parked(&self) -> usize {
        self.started().map_or(0, |p| p.len())
    }

    /// Times a connection was parked since start.
    pub fn parks(&self) -> u64 {
        self.started().map_or(0, |p| p.parks.load(Ordering::Relaxed))
    }

    fn started(&self) -> Option<&Arc<Park>> {
        self.0.get().and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_shard_slot_and_generation_apart() {
        let max_slot = u32::MAX as usize / SHARDS;
        let places = [(0, 0), (1, 0), (0, 1), (SHARDS - 1, 123_456), (SHARDS - 1, max_slot)];
        for (shard, slot) in places {
            for generation in [0, 1, u32::MAX] {
                let place = Place { shard, slot };
                assert_eq!(split(token(place, generation)), (place, generation));
            }
        }
        let place = Place { shard: 3, slot: 5 };
        assert_ne!(token(place, 1), token(place, 2));
        assert_ne!(token(place, 1), token(Place { shard: 4, slot: 5 }, 1));
    }
}
