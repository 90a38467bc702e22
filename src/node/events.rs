//! What peers' sessions tell the engine, and the queue that carries it from the swarm task to
//! the engine without ever making the swarm task wait.
//!
//! The swarm task pushes with [`EventSender::push`], which never blocks and never fails: events
//! that only say "the newest state of this peer" (its `Head`, its `Complete`) replace the one
//! of the same kind still waiting for that peer, so a peer sending them at any rate holds at
//! most one of each in the queue. Session changes (`Up`, `Down`, `Incompatible`) and
//! availability (`Have`, each adding to the one before, and `HaveSync`) keep their order. `Up` and `Down` are never dropped, so an engine that counts
//! them never drifts; a session that went `Down` while its `Up` still waited is taken out whole
//! (the engine never hears of it), so a peer holds at most one waiting `Down` (of the session
//! the engine heard of) and one waiting `Up`. Past `MAX_QUEUED` waiting events (a cap a swarm of
//! honest peers never reaches: a handful per peer) any other new event is dropped and logged.
//! A slow engine therefore sees fewer, newer events; the swarm task never stops.
//!
//! A leaf: it imports nothing from the node's other modules.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use tokio::sync::Notify;

use crate::trust::SignedHead;
use crate::wire::{Have, Hello, PeerInfo};

/// Most events waiting for the engine; more (but `Up` and `Down`) are dropped and logged by the
/// swarm task.
pub(crate) const MAX_QUEUED: usize = 16_384;

/// What sessions tell the engine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PeerEvent {
    /// `session` tells a live session from one the tie-break already replaced.
    Up {
        peer: PeerId,
        session: u64,
        hello: Hello,
    },
    Head {
        peer: PeerId,
        head: SignedHead,
    },
    Down {
        peer: PeerId,
        session: u64,
    },
    Incompatible {
        peer: PeerId,
        ours: u32,
        theirs: u32,
    },
    Peers {
        peer: PeerId,
        list: Vec<PeerInfo>,
    },
    Have {
        peer: PeerId,
        have: Have,
    },
    HaveSync {
        peer: PeerId,
        revision: u64,
    },
    Complete {
        peer: PeerId,
        revision: u64,
    },
}

/// The kinds of event where only the newest of a peer matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Latest {
    Head,
    Complete,
}

impl PeerEvent {
    fn latest(&self) -> Option<(PeerId, Latest)> {
        match self {
            PeerEvent::Head { peer, .. } => Some((*peer, Latest::Head)),
            PeerEvent::Complete { peer, .. } => Some((*peer, Latest::Complete)),
            _ => None,
        }
    }
}

/// A place in the queue: an event, or the newest event of one kind of one peer (kept in
/// `latest`, replaced while it waits).
enum Slot {
    Event(Box<PeerEvent>),
    Latest(PeerId, Latest),
    /// A session's `Up`, kept in `ups` until read, or taken out by the session's `Down`.
    Up(PeerId, u64),
}

#[derive(Default)]
struct Queue {
    slots: VecDeque<Slot>,
    latest: HashMap<(PeerId, Latest), PeerEvent>,
    ups: HashMap<(PeerId, u64), PeerEvent>,
    closed: bool,
}

impl Queue {
    fn push(&mut self, ev: PeerEvent) -> bool {
        match ev {
            PeerEvent::Up { peer, session, .. } => {
                self.ups.insert((peer, session), ev);
                self.slots.push_back(Slot::Up(peer, session));
                return true;
            }
            PeerEvent::Down { peer, session } => {
                if self.ups.remove(&(peer, session)).is_none() {
                    self.slots.push_back(Slot::Event(Box::new(ev)));
                }
                return true;
            }
            _ => {}
        }
        if let Some(key) = ev.latest() {
            if let Some(waiting) = self.latest.get_mut(&key) {
                *waiting = ev;
                return true;
            }
        }
        if self.slots.len() >= MAX_QUEUED {
            return false;
        }
        match ev.latest() {
            Some(key) => {
                self.latest.insert(key, ev);
                self.slots.push_back(Slot::Latest(key.0, key.1));
            }
            None => self.slots.push_back(Slot::Event(Box::new(ev))),
        }
        true
    }

    fn pop(&mut self) -> Option<PeerEvent> {
        loop {
            match self.slots.pop_front()? {
                Slot::Event(ev) => return Some(*ev),
                Slot::Latest(peer, kind) => {
                    if let Some(ev) = self.latest.remove(&(peer, kind)) {
                        return Some(ev);
                    }
                }
                Slot::Up(peer, session) => {
                    if let Some(ev) = self.ups.remove(&(peer, session)) {
                        return Some(ev);
                    }
                }
            }
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Notify,
}

/// The swarm task's end of the queue. Dropping it closes the queue: the engine reads what
/// waits, then `None`.
pub(crate) struct EventSender(Arc<Shared>);

/// The engine's end of the queue.
pub(crate) struct EventReceiver(Arc<Shared>);

/// A new, empty queue.
pub(crate) fn queue() -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        ready: Notify::new(),
    });
    (EventSender(shared.clone()), EventReceiver(shared))
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventSender {
    /// Queue `ev` for the engine; never waits. False if it was dropped: the queue is full.
    pub fn push(&self, ev: PeerEvent) -> bool {
        let queued = lock(&self.0).push(ev);
        self.0.ready.notify_one();
        queued
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        lock(&self.0).closed = true;
        self.0.ready.notify_one();
    }
}

impl EventReceiver {
    /// The next event; `None` once the swarm task has gone and every event was read.
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        loop {
            {
                let mut q = lock(&self.0);
                if let Some(ev) = q.pop() {
                    return Some(ev);
                }
                if q.closed {
                    return None;
                }
            }
            // One receiver: `notify_one` keeps a permit when nobody waits, so a push between
            // the check above and this wait is not missed.
            self.0.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(peer: PeerId, revision: u64, bit: u8) -> PeerEvent {
        let have = Have {
            revision,
            seq: u32::from(bit),
            sync: false,
            chunks: crate::wire::ChunkSet::Gaps(vec![u32::from(bit)]),
        };
        PeerEvent::Have { peer, have }
    }

    fn complete(peer: PeerId, revision: u64) -> PeerEvent {
        PeerEvent::Complete { peer, revision }
    }

    fn down(peer: PeerId, session: u64) -> PeerEvent {
        PeerEvent::Down { peer, session }
    }

    fn up(peer: PeerId, session: u64) -> PeerEvent {
        let hello = Hello {
            node_id: uuid::Uuid::nil(),
            swarm_id: uuid::Uuid::nil(),
            role: crate::wire::Role::Subscriber,
            head: None,
            addrs: vec![],
        };
        PeerEvent::Up {
            peer,
            session,
            hello,
        }
    }

    fn incompatible(peer: PeerId, theirs: u32) -> PeerEvent {
        PeerEvent::Incompatible {
            peer,
            ours: 3,
            theirs,
        }
    }

    fn drain(rx: &mut EventReceiver) -> Vec<PeerEvent> {
        let mut q = lock(&rx.0);
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn only_the_newest_completion_of_a_peer_waits_in_its_place() {
        let (tx, mut rx) = queue();
        let (a, b) = (PeerId::random(), PeerId::random());
        tx.push(complete(a, 1));
        tx.push(down(b, 7));
        for revision in 2..1000 {
            tx.push(complete(a, revision));
        }
        tx.push(complete(b, 2));
        assert_eq!(
            drain(&mut rx),
            vec![complete(a, 999), down(b, 7), complete(b, 2)]
        );
    }

    /// Each `Have` adds to the one before: none replaces another.
    #[test]
    fn haves_keep_their_order_and_are_never_merged() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        let haves: Vec<_> = (0..200).map(|i| have(a, 1, i)).collect();
        for ev in haves.iter().cloned() {
            tx.push(ev);
        }
        assert_eq!(drain(&mut rx), haves);
    }

    #[test]
    fn session_changes_keep_their_order_and_are_never_merged() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        let events = [down(a, 1), down(a, 2), down(a, 3)];
        for ev in events.iter().cloned() {
            tx.push(ev);
        }
        assert_eq!(drain(&mut rx), events.to_vec());
    }

    #[test]
    fn a_completion_read_by_the_engine_lets_the_next_one_queue_again() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        tx.push(complete(a, 1));
        assert_eq!(drain(&mut rx), vec![complete(a, 1)]);
        tx.push(down(a, 1));
        tx.push(complete(a, 2));
        assert_eq!(drain(&mut rx), vec![down(a, 1), complete(a, 2)]);
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        let queued = (0..MAX_QUEUED as u32 + 10)
            .filter(|v| tx.push(incompatible(a, *v)))
            .count();
        assert_eq!(queued, MAX_QUEUED);
        assert!(
            !tx.push(have(PeerId::random(), 1, 1)),
            "a new place in a full queue"
        );
        // Session changes are never dropped: an engine counting them would drift.
        assert!(tx.push(up(a, 1)));
        assert!(tx.push(down(a, 0)));
        let got = drain(&mut rx);
        assert_eq!(got.len(), MAX_QUEUED + 2);
        assert_eq!(got[MAX_QUEUED..], [up(a, 1), down(a, 0)]);
    }

    #[test]
    fn a_session_gone_before_the_engine_heard_of_it_is_taken_out_whole() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        tx.push(up(a, 1));
        tx.push(down(a, 1));
        tx.push(up(a, 2));
        assert_eq!(drain(&mut rx), vec![up(a, 2)]);
        // Heard of: its Down comes through.
        tx.push(down(a, 2));
        tx.push(up(a, 3));
        tx.push(down(a, 3));
        assert_eq!(drain(&mut rx), vec![down(a, 2)]);
    }

    #[tokio::test]
    async fn the_receiver_reads_what_waits_then_ends_when_the_sender_goes() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(ev) = rx.recv().await {
                got.push(ev);
            }
            got
        });
        tx.push(down(a, 1));
        tx.push(down(a, 2));
        drop(tx);
        assert_eq!(reader.await.unwrap(), vec![down(a, 1), down(a, 2)]);
    }
}
