//! What peers' sessions tell the engine, and the queue that carries it from the swarm task to
//! the engine without ever making the swarm task wait.
//!
//! The swarm task pushes with [`EventSender::push`], which never blocks and never fails: events
//! that only say "the newest state of this peer" (its availability `Have`, its `Head`, its
//! `Complete`) replace the one of the same kind still waiting for that peer, so a peer sending
//! them at any rate holds at most one of each in the queue. Session changes (`Up`, `Down`,
//! `Incompatible`) keep their order. Past `MAX_QUEUED` waiting events (a cap a swarm of honest
//! peers never reaches: three per peer plus their session changes) a new one is dropped and
//! logged. A slow engine therefore sees fewer, newer events; the swarm task never stops.
//!
//! A leaf: it imports nothing from the node's other modules.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use tokio::sync::Notify;

use crate::trust::SignedHead;
use crate::wire::{Hello, PeerInfo};

/// Most events waiting for the engine; more are dropped (and logged by the swarm task).
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
        revision: u64,
        bitfield: Vec<u8>,
    },
    Complete {
        peer: PeerId,
        revision: u64,
    },
}

/// The kinds of event where only the newest of a peer matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Latest {
    Have,
    Head,
    Complete,
}

impl PeerEvent {
    fn latest(&self) -> Option<(PeerId, Latest)> {
        match self {
            PeerEvent::Have { peer, .. } => Some((*peer, Latest::Have)),
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
}

#[derive(Default)]
struct Queue {
    slots: VecDeque<Slot>,
    latest: HashMap<(PeerId, Latest), PeerEvent>,
    closed: bool,
}

impl Queue {
    fn push(&mut self, ev: PeerEvent) -> bool {
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
        PeerEvent::Have {
            peer,
            revision,
            bitfield: vec![bit],
        }
    }

    fn down(peer: PeerId, session: u64) -> PeerEvent {
        PeerEvent::Down { peer, session }
    }

    fn drain(rx: &mut EventReceiver) -> Vec<PeerEvent> {
        let mut q = lock(&rx.0);
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn only_the_newest_have_of_a_peer_waits_in_its_place() {
        let (tx, mut rx) = queue();
        let (a, b) = (PeerId::random(), PeerId::random());
        tx.push(have(a, 1, 1));
        tx.push(down(b, 7));
        for bit in 2..1000u16 {
            tx.push(have(a, 1, bit as u8));
        }
        tx.push(have(b, 2, 9));
        assert_eq!(
            drain(&mut rx),
            vec![have(a, 1, (999u16 % 256) as u8), down(b, 7), have(b, 2, 9)]
        );
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
    fn a_have_read_by_the_engine_lets_the_next_one_queue_again() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        tx.push(have(a, 1, 1));
        assert_eq!(drain(&mut rx), vec![have(a, 1, 1)]);
        tx.push(down(a, 1));
        tx.push(have(a, 1, 2));
        assert_eq!(drain(&mut rx), vec![down(a, 1), have(a, 1, 2)]);
    }

    #[test]
    fn a_full_queue_drops_instead_of_waiting() {
        let (tx, mut rx) = queue();
        let a = PeerId::random();
        let queued = (0..MAX_QUEUED as u64 + 10)
            .filter(|s| tx.push(down(a, *s)))
            .count();
        assert_eq!(queued, MAX_QUEUED);
        assert!(
            !tx.push(have(PeerId::random(), 1, 1)),
            "a new place in a full queue"
        );
        assert_eq!(drain(&mut rx).len(), MAX_QUEUED);
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
