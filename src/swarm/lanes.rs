//! The lanes of one download and the requests on them: which chunk streams are open to which
//! peer, and which lane each outstanding request went on.
//!
//! Owns the lane ids (never reused, so the late events of a lane that ended cannot be taken
//! for those of a new lane to the same peer), each lane's peer and state, and the assignment of
//! requests to lanes. It does not decide what to request from whom, nor when to open or reopen a
//! lane: the fetch scheduler does.
//!
//! Invariant: a lane is open or closing, and a closing lane holds no request. Every request is
//! on exactly one open lane of its peer, so a chunk is on at most one lane of a peer; a lane's
//! load is the number of requests on it.

use std::collections::HashMap;
use std::hash::Hash;

use crate::tree::ContentHash;

/// One lane of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneId(pub(super) u64);

#[cfg(test)]
impl LaneId {
    /// A lane's id, for tests of the code that runs lanes.
    pub(crate) fn for_test(n: u64) -> Self {
        LaneId(n)
    }
}

#[derive(Debug)]
struct Lane<P> {
    peer: P,
    load: usize,
    closing: bool,
    /// A request could not be queued on it (its stream stalled): it takes none until the
    /// lane is heard from again.
    refused: bool,
}

/// A lane whose end was reported.
#[derive(Debug)]
pub(super) struct Ended<P> {
    pub peer: P,
    /// It ended by itself (it was not closed by the scheduler).
    pub was_open: bool,
    /// The requests it held.
    pub lost: Vec<ContentHash>,
}

/// The lanes of one download and their requests.
#[derive(Debug)]
pub(super) struct Lanes<P> {
    lanes: HashMap<LaneId, Lane<P>>,
    next: u64,
    /// Per chunk, the peers it is requested from and the lane of each.
    assigned: HashMap<ContentHash, Vec<(P, LaneId)>>,
}

impl<P> Default for Lanes<P> {
    fn default() -> Self {
        Lanes {
            lanes: HashMap::new(),
            next: 0,
            assigned: HashMap::new(),
        }
    }
}

impl<P: Clone + Eq + Hash> Lanes<P> {
    /// A new open lane to `peer`.
    pub fn open(&mut self, peer: P) -> LaneId {
        let id = LaneId(self.next);
        self.next += 1;
        let lane = Lane {
            peer,
            load: 0,
            closing: false,
            refused: false,
        };
        self.lanes.insert(id, lane);
        id
    }

    /// Open lanes to `peer`.
    pub fn open_to(&self, peer: &P) -> usize {
        let open = |l: &&Lane<P>| !l.closing && l.peer == *peer;
        self.lanes.values().filter(open).count()
    }

    /// The peer of `lane`, until its end is reported.
    pub fn peer_of(&self, lane: LaneId) -> Option<P> {
        self.lanes.get(&lane).map(|l| l.peer.clone())
    }

    /// Start closing the open lanes of `peer`, forgetting its requests; returns those lanes.
    pub fn close_peer(&mut self, peer: &P) -> Vec<LaneId> {
        self.assigned.retain(|_, to| {
            to.retain(|(p, _)| p != peer);
            !to.is_empty()
        });
        let mut closed = Vec::new();
        for (id, lane) in self.lanes.iter_mut().filter(|(_, l)| l.peer == *peer) {
            lane.load = 0;
            if !std::mem::replace(&mut lane.closing, true) {
                closed.push(*id);
            }
        }
        closed
    }

    /// `lane` ended: forget it and the requests it held.
    pub fn end(&mut self, lane: LaneId) -> Option<Ended<P>> {
        let state = self.lanes.remove(&lane)?;
        let lost: Vec<ContentHash> = self
            .assigned
            .iter()
            .filter(|(_, to)| to.iter().any(|(_, l)| *l == lane))
            .map(|(h, _)| *h)
            .collect();
        for hash in &lost {
            self.unassign(*hash, &state.peer);
        }
        Some(Ended {
            peer: state.peer,
            was_open: !state.closing,
            lost,
        })
    }

    /// The open lanes of each peer that has any.
    pub fn open_by_peer(&self) -> HashMap<P, Vec<LaneId>> {
        let mut by_peer: HashMap<P, Vec<LaneId>> = HashMap::new();
        for (id, lane) in self.lanes.iter().filter(|(_, l)| !l.closing) {
            by_peer.entry(lane.peer.clone()).or_default().push(*id);
        }
        by_peer
    }

    /// The open lanes of `peer`.
    pub fn open_of(&self, peer: &P) -> Vec<LaneId> {
        let open = |(_, l): &(&LaneId, &Lane<P>)| !l.closing && l.peer == *peer;
        self.lanes.iter().filter(open).map(|(id, _)| *id).collect()
    }

    /// The lane of `lanes` to put a request on: the oldest with fewer than `room` requests,
    /// so that a peer's requests queue on one stream and are answered one after the other
    /// (spread over two streams, they are sent interleaved and each arrives later: the
    /// publisher's seed hold runs out before others hear who has a chunk). The others take
    /// over when it is full or gone. With every lane full, the one with the fewest. A lane
    /// that refused a request ([`Self::refuse`]) takes none until it is heard from.
    pub fn lane_for(&self, lanes: &[LaneId], room: usize) -> Option<LaneId> {
        let state = |l: &LaneId| {
            self.lanes
                .get(l)
                .map_or((0, false), |l| (l.load, l.refused))
        };
        let usable = lanes.iter().copied().filter(|l| !state(l).1);
        let oldest_with_room = usable.clone().filter(|l| state(l).0 < room).min();
        oldest_with_room.or_else(|| usable.min_by_key(|l| (state(l).0, *l)))
    }

    /// A request could not be queued on `lane`: pass it over until [`Self::heard`].
    pub fn refuse(&mut self, lane: LaneId) {
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.refused = true;
        }
    }

    /// `lane` answered a request; true if it had refused one (it takes requests again).
    pub fn heard(&mut self, lane: LaneId) -> bool {
        self.lanes
            .get_mut(&lane)
            .is_some_and(|l| std::mem::take(&mut l.refused))
    }

    /// `peer` is asked for `hash` on `lane`, one of its open lanes.
    pub fn assign(&mut self, hash: ContentHash, peer: P, lane: LaneId) {
        let to = self.assigned.entry(hash).or_default();
        debug_assert!(
            to.iter().all(|(p, _)| *p != peer),
            "a chunk twice to a peer"
        );
        to.push((peer, lane));
        if let Some(l) = self.lanes.get_mut(&lane) {
            l.load += 1;
        }
    }

    /// `peer`'s request for `hash` is over.
    pub fn unassign(&mut self, hash: ContentHash, peer: &P) {
        let Some(to) = self.assigned.get_mut(&hash) else {
            return;
        };
        let lanes = &mut self.lanes;
        to.retain(|(p, lane)| {
            if p != peer {
                return true;
            }
            if let Some(l) = lanes.get_mut(lane) {
                l.load = l.load.saturating_sub(1);
            }
            false
        });
        if to.is_empty() {
            self.assigned.remove(&hash);
        }
    }

    /// Every request for `hash` is over (it verified).
    pub fn settle(&mut self, hash: ContentHash) {
        for (_, lane) in self.assigned.remove(&hash).unwrap_or_default() {
            if let Some(l) = self.lanes.get_mut(&lane) {
                l.load = l.load.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
impl<P: Clone + Eq + Hash + std::fmt::Debug> Lanes<P> {
    /// Requests outstanding to `peer`.
    pub fn requests_to(&self, peer: &P) -> usize {
        let to = self.assigned.values().flatten();
        to.filter(|(p, _)| p == peer).count()
    }

    /// The chunks requested.
    pub fn requested(&self) -> impl Iterator<Item = &ContentHash> {
        self.assigned.keys()
    }

    /// The module's invariant.
    pub fn assert_invariant(&self) {
        for (hash, to) in &self.assigned {
            assert!(!to.is_empty() && to.len() <= 2, "{hash}: {to:?}");
            for (i, (p, lane)) in to.iter().enumerate() {
                assert!(to[..i].iter().all(|(q, _)| q != p), "{hash} twice to {p:?}");
                let l = &self.lanes[lane];
                assert!(
                    !l.closing && l.peer == *p,
                    "{hash} on a lane not open to {p:?}"
                );
            }
        }
        for (id, lane) in &self.lanes {
            let load = self.assigned.values().flatten();
            let load = load.filter(|(_, l)| l == id).count();
            assert_eq!(lane.load, load, "load of {id:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> ContentHash {
        ContentHash::of(&[i])
    }

    #[test]
    fn a_peers_requests_fill_its_oldest_lane_first() {
        let mut l: Lanes<u8> = Lanes::default();
        let (a, b) = (l.open(1), l.open(1));
        assert_eq!(l.lane_for(&[b, a], 2), Some(a), "the oldest");
        l.assign(h(0), 1, a);
        assert_eq!(
            l.lane_for(&[b, a], 2),
            Some(a),
            "the oldest while it has room"
        );
        l.assign(h(1), 1, a);
        assert_eq!(l.lane_for(&[b, a], 2), Some(b), "the next once it is full");
        l.assign(h(2), 1, b);
        l.assign(h(3), 1, b);
        assert_eq!(
            l.lane_for(&[b, a], 2),
            Some(a),
            "all full: the oldest of the least loaded"
        );
        l.assign(h(4), 1, a);
        assert_eq!(l.lane_for(&[b, a], 2), Some(b));
        l.settle(h(0));
        assert_eq!(l.lane_for(&[b, a], 2), Some(a), "room again");
        l.assert_invariant();
    }

    #[test]
    fn requests_leave_with_their_lane_and_their_peer() {
        let mut l: Lanes<u8> = Lanes::default();
        let (a, b, c) = (l.open(1), l.open(1), l.open(2));
        l.assign(h(0), 1, a);
        l.assign(h(1), 1, b);
        l.assign(h(0), 2, c);
        l.assert_invariant();
        // A lane that ends takes only its own requests with it.
        let ended = l.end(a).expect("a lane");
        assert!(ended.was_open);
        assert_eq!((ended.peer, ended.lost), (1, vec![h(0)]));
        assert_eq!(
            l.requests_to(&2),
            1,
            "the other peer's request for the same chunk stays"
        );
        // A peer that goes takes all of its requests; its lanes close, then end.
        assert_eq!(l.close_peer(&1), vec![b]);
        assert_eq!(l.requests_to(&1), 0);
        assert_eq!(l.open_to(&1), 0);
        assert_eq!(l.peer_of(b), Some(1), "known until its end");
        let ended = l.end(b).expect("a lane");
        assert!(!ended.was_open && ended.lost.is_empty());
        assert!(l.end(b).is_none(), "ends once");
        l.settle(h(0));
        assert_eq!(l.requests_to(&2), 0);
        l.assert_invariant();
    }
}
