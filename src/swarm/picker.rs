//! The piece picker.
//!
//! Invariant: every wanted chunk is in exactly one of `missing`, `requested(peer, since)` or
//! `verified`. A peer never has more than `max_in_flight` requests outstanding, and is never
//! asked again for a chunk it said it does not have (until the target changes).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::tree::ContentHash;

/// Picker limits.
#[derive(Debug, Clone, Copy)]
pub struct PickerConfig {
    /// Requests outstanding per peer.
    pub max_in_flight: usize,
    /// A request older than this is taken back and given to someone else.
    pub stall_timeout: Duration,
}

/// Decides what to request from whom. `P` is the peer identifier.
#[derive(Debug)]
pub struct Picker<P> {
    config: PickerConfig,
    missing: VecDeque<ContentHash>,
    requested: HashMap<ContentHash, (P, Instant)>,
    verified: HashSet<ContentHash>,
    in_flight: HashMap<P, usize>,
    lacks: HashSet<(P, ContentHash)>,
}

impl<P: Clone + Eq + Hash> Picker<P> {
    /// A picker for `wanted` chunks, of which `present` are already verified.
    pub fn new(
        config: PickerConfig,
        wanted: impl IntoIterator<Item = ContentHash>,
        present: &HashSet<ContentHash>,
    ) -> Self {
        let mut seen = HashSet::new();
        let mut missing = VecDeque::new();
        let mut verified = HashSet::new();
        for h in wanted {
            if !seen.insert(h) {
                continue;
            }
            if present.contains(&h) {
                verified.insert(h);
            } else {
                missing.push_back(h);
            }
        }
        Picker {
            config,
            missing,
            requested: HashMap::new(),
            verified,
            in_flight: HashMap::new(),
            lacks: HashSet::new(),
        }
    }

    /// The next chunk to request from `peer`, or `None` if it is at its limit or has nothing
    /// we can use. The caller must send the request.
    pub fn next_for(&mut self, peer: &P, now: Instant) -> Option<ContentHash> {
        if self.in_flight.get(peer).copied().unwrap_or(0) >= self.config.max_in_flight {
            return None;
        }
        let pos = self
            .missing
            .iter()
            .position(|h| !self.lacks.contains(&(peer.clone(), *h)))?;
        let hash = self.missing.remove(pos).expect("position is in range");
        self.requested.insert(hash, (peer.clone(), now));
        *self.in_flight.entry(peer.clone()).or_default() += 1;
        Some(hash)
    }

    /// `peer` delivered `hash` and it verified.
    pub fn on_verified(&mut self, peer: &P, hash: ContentHash) {
        if let Some((owner, _)) = self.requested.remove(&hash) {
            self.release(&owner);
        } else {
            self.missing.retain(|h| *h != hash);
        }
        let _ = peer;
        self.verified.insert(hash);
    }

    /// `peer` does not have `hash`: give it to someone else.
    pub fn on_not_found(&mut self, peer: &P, hash: ContentHash) {
        self.lacks.insert((peer.clone(), hash));
        self.take_back(peer, hash);
    }

    /// The request for `hash` from `peer` failed (bad data, stream error).
    pub fn on_failed(&mut self, peer: &P, hash: ContentHash) {
        self.take_back(peer, hash);
    }

    /// `peer` is gone: everything it had outstanding goes back to `missing`.
    pub fn on_peer_gone(&mut self, peer: &P) {
        let hashes: Vec<_> = self
            .requested
            .iter()
            .filter(|(_, (p, _))| p == peer)
            .map(|(h, _)| *h)
            .collect();
        for h in hashes {
            self.take_back(peer, h);
        }
        self.in_flight.remove(peer);
        self.lacks.retain(|(p, _)| p != peer);
    }

    /// Take back requests older than the stall timeout; returns them with their peer.
    pub fn poll_stalled(&mut self, now: Instant) -> Vec<(P, ContentHash)> {
        let stalled: Vec<_> = self
            .requested
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= self.config.stall_timeout)
            .map(|(h, (p, _))| (p.clone(), *h))
            .collect();
        for (p, h) in &stalled {
            self.take_back(p, *h);
        }
        stalled
    }

    fn take_back(&mut self, peer: &P, hash: ContentHash) {
        match self.requested.get(&hash) {
            Some((owner, _)) if owner == peer => {}
            _ => return,
        }
        self.requested.remove(&hash);
        self.release(peer);
        self.missing.push_front(hash);
    }

    fn release(&mut self, peer: &P) {
        if let Some(n) = self.in_flight.get_mut(peer) {
            *n = n.saturating_sub(1);
        }
    }

    /// True once every wanted chunk is verified.
    pub fn is_done(&self) -> bool {
        self.missing.is_empty() && self.requested.is_empty()
    }

    /// Verified and total counts.
    pub fn progress(&self) -> (usize, usize) {
        let total = self.verified.len() + self.missing.len() + self.requested.len();
        (self.verified.len(), total)
    }

    /// True if `hash` is verified.
    pub fn is_verified(&self, hash: &ContentHash) -> bool {
        self.verified.contains(hash)
    }

    /// Requests outstanding to `peer`.
    pub fn in_flight(&self, peer: &P) -> usize {
        self.in_flight.get(peer).copied().unwrap_or(0)
    }

    /// True if no connected peer in `peers` can supply any missing chunk.
    pub fn stuck(&self, peers: &[P]) -> bool {
        self.requested.is_empty()
            && !self.missing.is_empty()
            && self
                .missing
                .iter()
                .all(|h| peers.iter().all(|p| self.lacks.contains(&(p.clone(), *h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> ContentHash {
        ContentHash::of(&[i])
    }

    fn cfg() -> PickerConfig {
        PickerConfig {
            max_in_flight: 2,
            stall_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn bounds_hold_and_everything_completes() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..5).map(h), &HashSet::new());
        let a = p.next_for(&1, t0).unwrap();
        let b = p.next_for(&1, t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.next_for(&1, t0), None, "limit of 2 in flight");
        p.on_verified(&1, a);
        assert!(p.next_for(&1, t0).is_some());
        while let Some(x) = p.next_for(&2, t0) {
            p.on_verified(&2, x);
        }
        for x in [b]
            .into_iter()
            .chain(p.requested.keys().copied().collect::<Vec<_>>())
        {
            p.on_verified(&1, x);
        }
        assert!(p.is_done());
        assert_eq!(p.progress(), (5, 5));
    }

    #[test]
    fn present_chunks_and_duplicates_are_not_requested() {
        let present: HashSet<_> = [h(0)].into();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0), h(1), h(1)], &present);
        assert_eq!(p.next_for(&1, Instant::now()), Some(h(1)));
        assert_eq!(p.next_for(&1, Instant::now()), None);
        assert_eq!(p.progress(), (1, 2));
    }

    #[test]
    fn stalled_request_is_reissued_elsewhere() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0)], &HashSet::new());
        assert_eq!(p.next_for(&1, t0), Some(h(0)));
        assert_eq!(p.next_for(&2, t0), None);
        assert!(p.poll_stalled(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(
            p.poll_stalled(t0 + Duration::from_secs(10)),
            vec![(1, h(0))]
        );
        assert_eq!(p.in_flight(&1), 0);
        assert_eq!(p.next_for(&2, t0 + Duration::from_secs(10)), Some(h(0)));
        // A late reply from the first peer still counts, and frees the second's slot.
        p.on_verified(&1, h(0));
        assert!(p.is_done());
    }

    #[test]
    fn not_found_goes_to_other_peers_and_gone_peer_releases_all() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0), h(1)], &HashSet::new());
        let x = p.next_for(&1, t0).unwrap();
        p.on_not_found(&1, x);
        let y = p.next_for(&1, t0).unwrap();
        assert_ne!(x, y, "peer 1 is not asked again for what it lacks");
        assert_eq!(p.next_for(&1, t0), None);
        assert!(!p.stuck(&[1]));
        p.on_peer_gone(&1);
        assert_eq!(p.in_flight(&1), 0);
        assert_eq!(p.next_for(&2, t0), Some(y));
        assert_eq!(p.next_for(&2, t0), Some(x));
    }

    #[test]
    fn stuck_when_no_peer_has_what_is_missing() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0)], &HashSet::new());
        let x = p.next_for(&1, t0).unwrap();
        p.on_not_found(&1, x);
        assert!(p.stuck(&[1]));
        assert!(!p.stuck(&[1, 2]));
    }
}
