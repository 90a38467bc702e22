//! Session slots: who holds one of the node's `max_peers` control sessions, and whom a newcomer
//! may push out when all are taken.
//!
//! Slots used to be first come, first kept: a few dozen keys that connect and send heartbeats
//! held every slot for ever, and no honest peer got in (an eclipse). Now a slot has to be
//! earned: a peer is *useful* while chunk bytes move between it and us (it serves verified
//! chunks, or fetches the revision we hold), and *current* while it holds our newest revision.
//! When a newcomer finds every slot taken, the session idle the longest goes — first one never
//! useful, then one not current, then the rest by when it was last useful — but only once it
//! has been idle for `idle`, so every session, the newcomer's included, has that long to prove
//! itself. If none has, the newcomer is refused.
//!
//! Sans-IO: the caller reports joins, leaves and byte counters with `now`, and carries out the
//! eviction it is told to.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What [`Slots::admit`] decided for a newcomer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<P> {
    /// A slot was free: the newcomer has it.
    Admitted,
    /// The newcomer takes the slot of this peer, whose session the caller ends.
    Evict(P),
    /// Every slot holds a session not yet idle for long enough.
    Full,
}

#[derive(Debug, Clone)]
struct Slot {
    joined: Instant,
    useful_at: Option<Instant>,
    bytes: u64,
    current: bool,
}

impl Slot {
    /// Since when the peer has been idle: its last useful moment, or its join.
    fn idle_since(&self) -> Instant {
        self.useful_at.unwrap_or(self.joined)
    }
}

/// The node's session slots.
#[derive(Debug)]
pub struct Slots<P> {
    max: usize,
    idle: Duration,
    peers: HashMap<P, Slot>,
}

impl<P: Clone + Eq + Hash + Ord> Slots<P> {
    /// `max` slots; a session idle for `idle` may be evicted for a newcomer.
    pub fn new(max: usize, idle: Duration) -> Self {
        Slots {
            max,
            idle,
            peers: HashMap::new(),
        }
    }

    /// May a session of `peer` begin? `bytes` is its byte counter now (see
    /// [`Slots::observe`]): only bytes moved after this count as usefulness. A peer that holds
    /// a slot already keeps it (its session is replaced).
    pub fn admit(&mut self, peer: P, bytes: u64, now: Instant) -> Admission<P> {
        if self.peers.contains_key(&peer) {
            return Admission::Admitted;
        }
        let decision = if self.peers.len() < self.max {
            Admission::Admitted
        } else {
            match self.idlest(now) {
                Some(victim) => {
                    self.peers.remove(&victim);
                    Admission::Evict(victim)
                }
                None => return Admission::Full,
            }
        };
        let slot = Slot {
            joined: now,
            useful_at: None,
            bytes,
            current: false,
        };
        self.peers.insert(peer, slot);
        decision
    }

    /// The session of `peer` ended.
    pub fn leave(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    /// What we know of `peer` now: chunk bytes moved between it and us so far (both ways; a
    /// rise since the last call makes it useful at `now`), and whether it holds our newest
    /// revision.
    pub fn observe(&mut self, peer: &P, bytes: u64, current: bool, now: Instant) {
        if let Some(slot) = self.peers.get_mut(peer) {
            if bytes > slot.bytes {
                slot.useful_at = Some(now);
            }
            slot.bytes = bytes;
            slot.current = current;
        }
    }

    /// True if every session held has been idle (see [`Slots::observe`]; a session's own
    /// grace counts from its join) for `after` at `now`, or none is held: the peers we have
    /// move no chunk bytes with us.
    pub fn idle_for(&self, now: Instant, after: Duration) -> bool {
        self.peers
            .values()
            .all(|s| now.saturating_duration_since(s.idle_since()) >= after)
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True if no session is held.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The session to evict for a newcomer, if one has been idle for `idle`.
    fn idlest(&self, now: Instant) -> Option<P> {
        self.peers
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.idle_since()) >= self.idle)
            // Ties go to the least peer, not to the hash map's order: a run of the simulator
            // repeats exactly for one seed.
            .min_by_key(|(p, s)| (s.useful_at.is_some(), s.current, s.idle_since(), *p))
            .map(|(p, _)| p.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn free_slots_are_taken_then_newcomers_wait_for_an_idle_one() {
        let t0 = Instant::now();
        let mut slots = Slots::new(2, IDLE);
        assert_eq!(slots.admit(1, 0, t0), Admission::Admitted);
        assert_eq!(slots.admit(2, 0, t0), Admission::Admitted);
        assert_eq!(
            slots.admit(1, 0, t0),
            Admission::Admitted,
            "a replaced session"
        );
        assert_eq!(slots.admit(3, 0, secs(t0, 59)), Admission::Full);
        // Both idle since they joined, alike: the least goes (whatever the map's order, so
        // that a simulated run repeats), then the other.
        assert_eq!(slots.admit(3, 0, secs(t0, 60)), Admission::Evict(1));
        assert_eq!(slots.len(), 2);
        // The newcomer has its own grace.
        assert_eq!(slots.admit(4, 0, secs(t0, 61)), Admission::Evict(2));
        assert_eq!(slots.admit(5, 0, secs(t0, 62)), Admission::Full);
    }

    /// Sybils that only keep their sessions alive hold no slot against useful peers: they go
    /// first, and a peer that moves chunks is never evicted while it does.
    #[test]
    fn idle_sessions_go_before_useful_ones() {
        let t0 = Instant::now();
        let mut slots = Slots::new(3, IDLE);
        for p in ["sybil", "honest", "synced"] {
            assert_eq!(slots.admit(p, 0, t0), Admission::Admitted);
        }
        slots.observe(&"honest", 1000, false, secs(t0, 50));
        slots.observe(&"synced", 500, true, secs(t0, 50));
        slots.observe(&"sybil", 0, false, secs(t0, 50));
        assert_eq!(
            slots.admit("new1", 0, secs(t0, 60)),
            Admission::Evict("sybil")
        );
        assert_eq!(slots.admit("new2", 0, secs(t0, 70)), Admission::Full);
        // Still moving bytes: stays. Never useful goes first, then not current, then the rest.
        slots.observe(&"honest", 2000, false, secs(t0, 115));
        assert_eq!(
            slots.admit("new2", 0, secs(t0, 120)),
            Admission::Evict("new1")
        );
        assert_eq!(
            slots.admit("new3", 0, secs(t0, 180)),
            Admission::Evict("new2")
        );
        assert_eq!(
            slots.admit("new4", 0, secs(t0, 181)),
            Admission::Evict("honest")
        );
        slots.leave(&"synced");
        assert_eq!(slots.admit("new5", 0, secs(t0, 181)), Admission::Admitted);
        assert!(!slots.is_empty());
    }

    /// Idle for: every session, the newest included, moved nothing for that long.
    #[test]
    fn idle_for_needs_every_session_idle() {
        let t0 = Instant::now();
        let mut slots = Slots::new(3, IDLE);
        let ten = Duration::from_secs(10);
        assert!(slots.idle_for(t0, ten), "no session");
        slots.admit("a", 0, t0);
        assert!(!slots.idle_for(secs(t0, 9), ten), "a's own grace");
        assert!(slots.idle_for(secs(t0, 10), ten));
        slots.observe(&"a", 100, false, secs(t0, 20));
        assert!(!slots.idle_for(secs(t0, 25), ten), "a moved bytes at 20 s");
        slots.admit("b", 0, secs(t0, 30));
        assert!(!slots.idle_for(secs(t0, 35), ten), "b joined at 30 s");
        assert!(slots.idle_for(secs(t0, 40), ten));
    }

    /// Bytes moved before the session began (an earlier session of the same peer) are not
    /// usefulness, and neither is a counter that did not rise.
    #[test]
    fn a_counter_that_did_not_rise_is_not_usefulness() {
        let t0 = Instant::now();
        let mut slots = Slots::new(1, IDLE);
        slots.admit("a", 5000, t0);
        slots.observe(&"a", 5000, false, secs(t0, 50));
        assert_eq!(slots.admit("b", 0, secs(t0, 60)), Admission::Evict("a"));
    }
}
