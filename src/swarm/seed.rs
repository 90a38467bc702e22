//! The seeding policy of the publisher: send each chunk of a revision to as few subscribers as
//! it can, so that subscribers soon hold different chunks and trade them (BitTorrent's
//! super-seeding, on the evidence of the subscribers' own availability messages).
//!
//! A chunk sent to one peer (its first receiver) is refused to others ("not found": ask your
//! peers) until there is evidence that it spread: another peer's bitfield lists it. The hold
//! also ends when its receiver leaves, when the send failed, and at the latest `backstop` after
//! it began, so that a receiver that never passes it on (slow, or hostile, asking for chunks to
//! keep them from everyone else) cannot keep a chunk stuck. The same peer may ask again (its
//! reply may have been lost); that does not restart the hold.
//!
//! Evidence, not a fixed time: a hold that ran out on a timer before the first receiver had the
//! chunk (the publisher's queue grows with the number of subscribers) sent it again to others,
//! and a long timer kept chunks reserved for receivers that had gone.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::tree::ContentHash;

/// Holds kept before those past the backstop are dropped.
const MAX_TRACKED: usize = 100_000;

/// A chunk reserved for its first receiver.
#[derive(Debug)]
struct Hold<P> {
    to: P,
    since: Instant,
}

/// Tracks what the seed sent to whom, and what spread since.
#[derive(Debug)]
pub struct SeedPolicy<P> {
    backstop: Duration,
    holds: HashMap<ContentHash, Hold<P>>,
    /// Chunks some peer other than their first receiver listed: served to anyone.
    spread: HashSet<ContentHash>,
    /// The revision `spread` is about.
    revision: u64,
}

impl<P: Clone + Eq + Hash> SeedPolicy<P> {
    /// A policy whose holds end at the latest `backstop` after they began.
    pub fn new(backstop: Duration) -> Self {
        SeedPolicy {
            backstop,
            holds: HashMap::new(),
            spread: HashSet::new(),
            revision: 0,
        }
    }

    /// Should the seed send `hash` to `peer` now? Records the send if so.
    pub fn should_serve(&mut self, peer: &P, hash: ContentHash, now: Instant) -> bool {
        if self.spread.contains(&hash) {
            return true;
        }
        match self.holds.get(&hash) {
            None => {}
            // A retry: served, and the hold keeps counting from the first send.
            Some(hold) if hold.to == *peer => return true,
            Some(hold) if now.saturating_duration_since(hold.since) < self.backstop => {
                return false
            }
            Some(_) => {}
        }
        if self.holds.len() >= MAX_TRACKED {
            let backstop = self.backstop;
            self.holds
                .retain(|_, h| now.saturating_duration_since(h.since) < backstop);
        }
        let hold = Hold {
            to: peer.clone(),
            since: now,
        };
        self.holds.insert(hash, hold);
        true
    }

    /// The send of `hash` to `peer` failed: it may go to someone else at once.
    pub fn unsent(&mut self, peer: &P, hash: &ContentHash) {
        if self.holds.get(hash).is_some_and(|h| h.to == *peer) {
            self.holds.remove(hash);
        }
    }

    /// `peer` lists `hash` in its bitfield: if it is not the chunk's first receiver, the chunk
    /// has spread and anyone may have it.
    pub fn seen(&mut self, peer: &P, hash: ContentHash) {
        if self.holds.get(&hash).is_some_and(|h| h.to == *peer) {
            return;
        }
        self.holds.remove(&hash);
        self.spread.insert(hash);
    }

    /// `peer` holds the chunks at `indices` of `revision`'s chunk order `order` (a `Have`:
    /// each only adds). A newer revision than before forgets what spread.
    pub fn have(&mut self, peer: &P, revision: u64, order: &[ContentHash], indices: &[u32]) {
        if revision > self.revision {
            self.revision = revision;
            self.spread.clear();
        } else if revision < self.revision {
            return;
        }
        for &i in indices {
            if let Some(hash) = order.get(i as usize) {
                self.seen(peer, *hash);
            }
        }
    }

    /// `peer` left: the chunks held for it that did not spread may go to others at once.
    pub fn peer_left(&mut self, peer: &P) {
        self.holds.retain(|_, h| h.to != *peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> ContentHash {
        ContentHash::of(&[i])
    }

    fn secs(t: Instant, s: f64) -> Instant {
        t + Duration::from_secs_f64(s)
    }

    fn policy() -> SeedPolicy<u8> {
        SeedPolicy::new(Duration::from_secs(10))
    }

    #[test]
    fn a_chunk_is_held_for_its_first_receiver_until_another_peer_lists_it() {
        let t0 = Instant::now();
        let mut s = policy();
        assert!(s.should_serve(&1, h(1), t0));
        assert!(!s.should_serve(&2, h(1), secs(t0, 1.0)));
        assert!(
            s.should_serve(&1, h(1), secs(t0, 2.0)),
            "its receiver may retry"
        );
        s.seen(&1, h(1));
        assert!(
            !s.should_serve(&2, h(1), secs(t0, 3.0)),
            "the receiver listing it is no evidence it spread"
        );
        s.seen(&2, h(1));
        assert!(
            s.should_serve(&3, h(1), secs(t0, 3.0)),
            "listed by a second peer: anyone may have it"
        );
        assert!(s.should_serve(&4, h(1), secs(t0, 3.0)));
        assert!(
            s.should_serve(&3, h(2), secs(t0, 3.0)),
            "other chunks are free"
        );
    }

    #[test]
    fn a_hold_ends_when_its_receiver_leaves_or_the_send_failed() {
        let t0 = Instant::now();
        let mut s = policy();
        assert!(s.should_serve(&1, h(1), t0));
        assert!(s.should_serve(&1, h(2), t0));
        assert!(s.should_serve(&3, h(3), t0));
        s.peer_left(&1);
        assert!(
            s.should_serve(&2, h(1), secs(t0, 0.1)),
            "1 left: 2 is the receiver now"
        );
        assert!(!s.should_serve(&1, h(1), secs(t0, 0.2)), "and held for 2");
        assert!(
            !s.should_serve(&2, h(3), secs(t0, 0.1)),
            "3's hold is untouched"
        );
        s.unsent(&2, &h(3));
        assert!(
            !s.should_serve(&2, h(3), secs(t0, 0.1)),
            "only 3's own send failing ends it"
        );
        s.unsent(&3, &h(3));
        assert!(s.should_serve(&2, h(3), secs(t0, 0.1)));
    }

    #[test]
    fn a_receiver_that_never_passes_a_chunk_on_loses_it_at_the_backstop() {
        let t0 = Instant::now();
        let mut s = policy();
        assert!(s.should_serve(&1, h(1), t0));
        // Asking again and again does not restart the hold.
        for i in 1..10 {
            assert!(s.should_serve(&1, h(1), secs(t0, i as f64)));
            assert!(!s.should_serve(&2, h(1), secs(t0, i as f64 + 0.5)));
        }
        assert!(s.should_serve(&2, h(1), secs(t0, 10.0)), "backstop reached");
        assert!(!s.should_serve(&1, h(1), secs(t0, 10.5)), "now held for 2");
    }

    #[test]
    fn haves_are_evidence_only_from_others_and_for_the_newest_revision() {
        let t0 = Instant::now();
        let mut s = policy();
        let order: Vec<ContentHash> = (0..10).map(h).collect();
        for i in 0..10 {
            assert!(s.should_serve(&1, h(i), t0));
        }
        // Peer 2 holds chunks 0 and 9; an index past the order names nothing.
        s.have(&2, 5, &order, &[0, 9, 10]);
        assert!(s.should_serve(&3, h(0), t0));
        assert!(s.should_serve(&3, h(9), t0));
        assert!(!s.should_serve(&3, h(1), t0));
        // The receiver's own Have is no evidence.
        s.have(&1, 5, &order, &[1, 2, 3]);
        assert!(!s.should_serve(&3, h(1), t0));
        // An old revision's Have is ignored.
        s.have(&2, 4, &order, &[1]);
        assert!(!s.should_serve(&3, h(1), t0));
        s.have(&2, 5, &order, &[1]);
        assert!(s.should_serve(&3, h(1), t0), "2 holds it now");
        // A new revision forgets what spread in the old one.
        s.have(&2, 6, &order, &[]);
        assert!(s.should_serve(&3, h(0), t0));
        assert!(!s.should_serve(&1, h(0), t0), "held for 3 again");
    }
}
