//! The piece picker: what to request from whom.
//!
//! Invariant: every wanted chunk is in exactly one of `missing`, `requested(peer, since)` or
//! `verified`; an end-game second request (`second`) exists only for a chunk in `requested`,
//! to another peer. A peer never has more requests outstanding than its limit, is only asked for
//! chunks it says it has, and is never asked again for a chunk it said it lacks.
//!
//! Policy:
//! - Rarest first: among the chunks a peer has, pick the one the fewest peers have; ties are
//!   broken by this node's salt, so that different downloaders pick different chunks. Missing
//!   chunks are kept in that order, so a pick looks at the rarest first and usually stops at
//!   the first one instead of scanning them all.
//! - Last-resort seeds (the publisher) are only asked for chunks no other peer has (or every
//!   peer listing it said it lacks it after all), in the end game too: its upload goes to
//!   chunks that are new to the swarm, and subscribers trade the rest. (Asking it for the
//!   rarest held chunks once none was new sent each chunk to the swarm again and again: in a
//!   big swarm there is always a subscriber at that point.)
//! - Faster peers get more requests in flight (`set_limit`, from measured throughput).
//! - A request older than `stall_timeout` is taken back and given to someone else.
//! - End game: once every missing chunk is requested, a peer with room is also asked for a
//!   chunk that has been outstanding elsewhere for `endgame_after` (the oldest first, at most
//!   one second request per chunk); whichever copy verifies first wins. This keeps the last
//!   chunks from waiting on one slow peer while others sit idle.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::tree::ContentHash;

/// Picker limits.
#[derive(Debug, Clone, Copy)]
pub struct PickerConfig {
    /// Requests outstanding per peer until a measured limit is set.
    pub default_in_flight: usize,
    /// Requests outstanding to a last-resort seed until a measured limit is set: small, so
    /// that chunks asked of the seed are still rare when it gets to them.
    pub seed_in_flight: usize,
    /// A request older than this is taken back and given to someone else.
    pub stall_timeout: Duration,
    /// A peer that said it lacks a chunk is asked for it again after this long.
    pub lack_retry: Duration,
    /// In the end game, a request outstanding this long may also be sent to another peer.
    pub endgame_after: Duration,
    /// Mixed into tie-breaking, so that different downloaders pick different chunks (each
    /// node passes something of its own, such as a hash of its peer ID).
    pub local_salt: u64,
}

/// The hasher of the picker's maps. Every pick looks chunks and peers up, many times a second
/// per peer; with std's SipHash that was most of a node's CPU in a 40-subscriber swarm.
/// foldhash is several times faster and, like std's, seeded per process.
type Fast = foldhash::fast::RandomState;
type Map<K, V> = HashMap<K, V, Fast>;
/// A set of chunk hashes, hashed with the picker's fast hasher.
pub type ChunkHashes = HashSet<ContentHash, Fast>;

/// What a peer can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Every chunk of the target revision.
    All,
    /// These chunks.
    Some(ChunkHashes),
}

impl Availability {
    /// True if the peer can serve `hash`.
    pub fn contains(&self, hash: &ContentHash) -> bool {
        match self {
            Availability::All => true,
            Availability::Some(set) => set.contains(hash),
        }
    }
}

#[derive(Debug)]
struct PeerState {
    have: Availability,
    last_resort: bool,
    limit: usize,
    in_flight: usize,
    /// The peer said it is busy: it is asked for nothing until told otherwise.
    busy: bool,
}

/// A chunk's place in the pick order: (listed holders minus those that said they lack it,
/// tie-breaking salt, hash). Peers holding everything add the same to every chunk, so they do
/// not change the order and are left out.
type Rank = (i64, u64, ContentHash);

/// Decides what to request from whom. `P` is the peer identifier.
#[derive(Debug)]
pub struct Picker<P> {
    config: PickerConfig,
    missing: ChunkHashes,
    /// `missing` in pick order.
    queue: BTreeSet<Rank>,
    requested: Map<ContentHash, (P, Instant)>,
    /// `requested` in pick order (to tell whether any chunk in flight has no holder).
    requested_queue: BTreeSet<Rank>,
    second: Map<ContentHash, (P, Instant)>,
    verified: ChunkHashes,
    peers: Map<P, PeerState>,
    /// Per peer, the chunks it said it lacks, and when.
    lacks: Map<P, Map<ContentHash, Instant>>,
    /// Per chunk, how many peers (not last-resort) list it; peers with `All` count in
    /// `all_holders` instead.
    holder_counts: Map<ContentHash, usize>,
    all_holders: usize,
    /// Per chunk, how many counted holders said they lack it after all.
    lack_counts: Map<ContentHash, usize>,
}

impl<P: Clone + Eq + Hash> Picker<P> {
    /// A picker for `wanted` chunks, of which `present` are already verified.
    pub fn new(
        config: PickerConfig,
        wanted: impl IntoIterator<Item = ContentHash>,
        present: &HashSet<ContentHash>,
    ) -> Self {
        let mut missing = ChunkHashes::default();
        let mut verified = ChunkHashes::default();
        for h in wanted {
            if present.contains(&h) {
                verified.insert(h);
            } else {
                missing.insert(h);
            }
        }
        let queue = missing
            .iter()
            .map(|h| (0, mix(h, config.local_salt), *h))
            .collect();
        Picker {
            config,
            missing,
            queue,
            requested: Map::default(),
            requested_queue: BTreeSet::new(),
            second: Map::default(),
            verified,
            peers: Map::default(),
            lacks: Map::default(),
            holder_counts: Map::default(),
            all_holders: 0,
            lack_counts: Map::default(),
        }
    }

    fn count(&mut self, have: &Availability, last_resort: bool, add: bool) {
        if last_resort {
            return;
        }
        match have {
            Availability::All if add => self.all_holders += 1,
            Availability::All => self.all_holders = self.all_holders.saturating_sub(1),
            Availability::Some(set) => {
                for h in set {
                    self.rekey(h, |p| {
                        let c = p.holder_counts.entry(*h).or_default();
                        *c = if add { *c + 1 } else { c.saturating_sub(1) };
                    });
                }
            }
        }
    }

    /// Add or update a peer. `last_resort` peers are only asked for chunks nobody else has.
    pub fn set_peer(&mut self, peer: P, have: Availability, last_resort: bool) {
        if let Some(old) = self.peers.get_mut(&peer) {
            let old_have = std::mem::replace(&mut old.have, Availability::All);
            let old_last = old.last_resort;
            self.count(&old_have, old_last, false);
        }
        self.count(&have, last_resort, true);
        let default = if last_resort {
            self.config.seed_in_flight
        } else {
            self.config.default_in_flight
        };
        let state = self.peers.entry(peer).or_insert(PeerState {
            have: Availability::All,
            last_resort,
            limit: default,
            in_flight: 0,
            busy: false,
        });
        state.have = have;
        state.last_resort = last_resort;
    }

    /// `peer` now also has `hash`.
    pub fn peer_has(&mut self, peer: &P, hash: ContentHash) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let last_resort = state.last_resort;
        if let Availability::Some(set) = &mut state.have {
            if set.insert(hash) && !last_resort {
                self.rekey(&hash, |p| *p.holder_counts.entry(hash).or_default() += 1);
            }
        }
    }

    /// Set how many requests `peer` may have outstanding (from its measured throughput).
    pub fn set_limit(&mut self, peer: &P, limit: usize) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.limit = limit.max(1);
        }
    }

    fn has(&self, peer: &P, hash: &ContentHash) -> bool {
        self.peers.get(peer).is_some_and(|s| s.have.contains(hash))
    }

    /// True if `peer` said it lacks `hash` (less than `lack_retry` ago).
    fn lacks(&self, peer: &P, hash: &ContentHash) -> bool {
        self.lacks.get(peer).is_some_and(|l| l.contains_key(hash))
    }

    fn rank(&self, hash: &ContentHash) -> Rank {
        let listed = self.holder_counts.get(hash).copied().unwrap_or(0) as i64;
        let lacked = self.lack_counts.get(hash).copied().unwrap_or(0) as i64;
        (listed - lacked, mix(hash, self.config.local_salt), *hash)
    }

    /// True if no peer other than a last-resort seed has the chunk ranked `rank`.
    fn unheld(&self, rank: &Rank) -> bool {
        rank.0 + self.all_holders as i64 <= 0
    }

    /// Change counts that rank `hash`, keeping the ordered sets in order.
    fn rekey(&mut self, hash: &ContentHash, change: impl FnOnce(&mut Self)) {
        let old = self.rank(hash);
        change(self);
        let new = self.rank(hash);
        if old != new {
            if self.queue.remove(&old) {
                self.queue.insert(new);
            }
            if self.requested_queue.remove(&old) {
                self.requested_queue.insert(new);
            }
        }
    }

    fn add_missing(&mut self, hash: ContentHash) {
        if self.missing.insert(hash) {
            self.queue.insert(self.rank(&hash));
        }
    }

    fn remove_missing(&mut self, hash: &ContentHash) {
        if self.missing.remove(hash) {
            self.queue.remove(&self.rank(hash));
        }
    }

    fn add_requested(&mut self, hash: ContentHash, by: (P, Instant)) {
        if self.requested.insert(hash, by).is_none() {
            self.requested_queue.insert(self.rank(&hash));
        }
    }

    fn remove_requested(&mut self, hash: &ContentHash) -> Option<(P, Instant)> {
        let by = self.requested.remove(hash)?;
        self.requested_queue.remove(&self.rank(hash));
        Some(by)
    }

    /// The next chunk to request from `peer`, or `None` if it is at its limit or has nothing
    /// we should ask it for. The caller must send the request.
    pub fn next_for(&mut self, peer: &P, now: Instant) -> Option<ContentHash> {
        let state = self.peers.get(peer)?;
        if state.in_flight >= state.limit || state.busy {
            return None;
        }
        // The rarest chunks come first: a seed's are at the front. The peer's entries are
        // looked up once, not per chunk: this scan is the node's hottest loop.
        let seed = state.last_resort;
        let lacked = self.lacks.get(peer).filter(|l| !l.is_empty());
        let hash = self
            .queue
            .iter()
            .take_while(|r| !seed || self.unheld(r))
            .map(|r| r.2)
            .find(|h| state.have.contains(h) && !lacked.is_some_and(|l| l.contains_key(h)));
        let Some(hash) = hash else {
            return self.endgame_for(peer, now);
        };
        self.remove_missing(&hash);
        self.add_requested(hash, (peer.clone(), now));
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_flight += 1;
        }
        Some(hash)
    }

    /// End game: a second request for the oldest chunk outstanding elsewhere (of a seed, only
    /// one no other peer has).
    fn endgame_for(&mut self, peer: &P, now: Instant) -> Option<ContentHash> {
        if !self.missing.is_empty() {
            return None;
        }
        let seed = self.peers.get(peer).is_some_and(|s| s.last_resort);
        let after = self.config.endgame_after;
        let hash = self
            .requested
            .iter()
            .filter(|(h, (owner, since))| {
                owner != peer
                    && now.saturating_duration_since(*since) >= after
                    && !self.second.contains_key(*h)
                    && self.has(peer, h)
                    && !self.lacks(peer, h)
                    && (!seed || self.unheld(&self.rank(h)))
            })
            .min_by_key(|(h, (_, since))| (*since, mix(h, self.config.local_salt), **h))
            .map(|(h, _)| *h)?;
        self.second.insert(hash, (peer.clone(), now));
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_flight += 1;
        }
        Some(hash)
    }

    /// `hash` arrived (from anyone) and verified. Returns the peers whose request for it ended
    /// (they have room for another).
    pub fn on_verified(&mut self, hash: ContentHash) -> Vec<P> {
        let mut released = Vec::new();
        if let Some((owner, _)) = self.remove_requested(&hash) {
            self.release(&owner);
            released.push(owner);
        }
        if let Some((owner, _)) = self.second.remove(&hash) {
            self.release(&owner);
            released.push(owner);
        }
        self.remove_missing(&hash);
        self.verified.insert(hash);
        released
    }

    /// `peer` does not have `hash` (or will not send it now): give it to someone else, and
    /// stop counting it as a holder until `lack_retry` has passed.
    pub fn on_not_found(&mut self, peer: &P, hash: ContentHash, now: Instant) {
        let counted = self.peers.get(peer).is_some_and(|s| !s.last_resort) && self.has(peer, &hash);
        let fresh = self
            .lacks
            .entry(peer.clone())
            .or_default()
            .insert(hash, now)
            .is_none();
        if fresh && counted {
            self.rekey(&hash, |p| *p.lack_counts.entry(hash).or_default() += 1);
        }
        self.take_back(peer, hash);
    }

    /// `peer` has `hash` but will not send anything now (its upload is full): the chunk goes
    /// to someone else, still counted as held by `peer`, and `peer` is asked for nothing until
    /// [`Self::set_busy`] says it may be again.
    pub fn on_busy(&mut self, peer: &P, hash: ContentHash) {
        self.take_back(peer, hash);
        self.set_busy(peer, true);
    }

    /// Whether `peer` is to be left alone for now (see [`Self::on_busy`]).
    pub fn set_busy(&mut self, peer: &P, busy: bool) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.busy = busy;
        }
    }

    fn forget_lacks(&mut self, now: Instant) {
        let retry = self.config.lack_retry;
        let expired: Vec<(P, ContentHash)> = self
            .lacks
            .iter()
            .flat_map(|(p, l)| {
                l.iter()
                    .filter(|(_, at)| now.saturating_duration_since(**at) >= retry)
                    .map(move |(h, _)| (p.clone(), *h))
            })
            .collect();
        for key in expired {
            if let Some(l) = self.lacks.get_mut(&key.0) {
                l.remove(&key.1);
                if l.is_empty() {
                    self.lacks.remove(&key.0);
                }
            }
            let counted = self.peers.get(&key.0).is_some_and(|s| !s.last_resort);
            if counted {
                self.rekey(&key.1, |p| {
                    if let Some(c) = p.lack_counts.get_mut(&key.1) {
                        *c = c.saturating_sub(1);
                    }
                });
            }
        }
    }

    /// The request for `hash` from `peer` failed (stream error).
    pub fn on_failed(&mut self, peer: &P, hash: ContentHash) {
        self.take_back(peer, hash);
    }

    /// `peer` is gone: everything it had outstanding goes back to `missing`.
    pub fn on_peer_gone(&mut self, peer: &P) {
        let hashes: Vec<_> = self
            .requested
            .iter()
            .chain(self.second.iter())
            .filter(|(_, (p, _))| p == peer)
            .map(|(h, _)| *h)
            .collect();
        for h in hashes {
            self.take_back(peer, h);
        }
        let lacked: Vec<ContentHash> = self
            .lacks
            .remove(peer)
            .map(|l| l.into_keys().collect())
            .unwrap_or_default();
        if let Some(state) = self.peers.remove(peer) {
            self.count(&state.have, state.last_resort, false);
            if !state.last_resort {
                for h in &lacked {
                    self.rekey(h, |p| {
                        if let Some(c) = p.lack_counts.get_mut(h) {
                            *c = c.saturating_sub(1);
                        }
                    });
                }
            }
        }
    }

    /// Take back requests older than the stall timeout (returned with their peer), and let
    /// peers be asked again for chunks they lacked `lack_retry` ago.
    pub fn poll_stalled(&mut self, now: Instant) -> Vec<(P, ContentHash)> {
        self.forget_lacks(now);
        let stalled: Vec<_> = self
            .requested
            .iter()
            .chain(self.second.iter())
            .filter(|(_, (_, since))| now.duration_since(*since) >= self.config.stall_timeout)
            .map(|(h, (p, _))| (p.clone(), *h))
            .collect();
        for (p, h) in &stalled {
            self.take_back(p, *h);
        }
        stalled
    }

    /// `peer`'s request for `hash` is over without the chunk: if another request for it is
    /// still out, that one carries on; otherwise the chunk is missing again.
    fn take_back(&mut self, peer: &P, hash: ContentHash) {
        if self.second.get(&hash).is_some_and(|(p, _)| p == peer) {
            self.second.remove(&hash);
            self.release(peer);
            return;
        }
        match self.requested.get(&hash) {
            Some((owner, _)) if owner == peer => {}
            _ => return,
        }
        self.remove_requested(&hash);
        self.release(peer);
        match self.second.remove(&hash) {
            Some(other) => self.add_requested(hash, other),
            None => self.add_missing(hash),
        }
    }

    fn release(&mut self, peer: &P) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }

    /// True while every missing chunk is requested and some are still outstanding: a request
    /// may go to a second peer once it is old enough.
    pub fn in_endgame(&self) -> bool {
        self.missing.is_empty() && !self.requested.is_empty()
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

    /// How many requests `peer` may have outstanding.
    pub fn limit(&self, peer: &P) -> Option<usize> {
        self.peers.get(peer).map(|s| s.limit)
    }

    /// True if `peer` is a last-resort seed.
    pub fn is_last_resort(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|s| s.last_resort)
    }

    /// Requests outstanding to `peer`.
    pub fn in_flight(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |s| s.in_flight)
    }
}

fn mix(hash: &ContentHash, salt: u64) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash.0[..8]);
    u64::from_le_bytes(b) ^ salt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> ContentHash {
        ContentHash::of(&[i])
    }

    fn cfg() -> PickerConfig {
        PickerConfig {
            default_in_flight: 2,
            seed_in_flight: 2,
            stall_timeout: Duration::from_secs(10),
            lack_retry: Duration::from_secs(3),
            endgame_after: Duration::from_secs(1),
            local_salt: 0,
        }
    }

    fn some(v: &[u8]) -> Availability {
        Availability::Some(v.iter().map(|i| h(*i)).collect())
    }

    #[test]
    fn bounds_hold_and_everything_completes() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..5).map(h), &HashSet::new());
        p.set_peer(1, Availability::All, false);
        p.set_peer(2, Availability::All, false);
        let a = p.next_for(&1, t0).unwrap();
        let b = p.next_for(&1, t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.next_for(&1, t0), None, "limit of 2 in flight");
        p.on_verified(a);
        assert!(p.next_for(&1, t0).is_some());
        while let Some(x) = p.next_for(&2, t0) {
            p.on_verified(x);
        }
        let outstanding: Vec<_> = p.requested.keys().copied().collect();
        for x in outstanding {
            p.on_verified(x);
        }
        assert!(p.is_done());
        assert_eq!(p.progress(), (5, 5));
    }

    /// Chunks told one at a time (`peer_has`, as `Have`s arrive) rank and are picked exactly as
    /// the same set told whole (`set_peer`), never counted twice; a seed's are not counted, and
    /// a peer not set up, or holding everything, is left alone.
    #[test]
    fn chunks_told_one_at_a_time_count_as_the_set_told_whole() {
        let t0 = Instant::now();
        let held: [&[u8]; 3] = [&[1, 2, 3, 4], &[2, 3, 4], &[3, 4, 9]];
        let mut whole: Picker<u8> = Picker::new(cfg(), (0..10).map(h), &HashSet::new());
        let mut by_one: Picker<u8> = Picker::new(cfg(), (0..10).map(h), &HashSet::new());
        for (peer, chunks) in held.iter().enumerate() {
            whole.set_peer(peer as u8, some(chunks), false);
            by_one.set_peer(peer as u8, some(&[]), false);
            for c in chunks.iter().chain(chunks.iter()) {
                by_one.peer_has(&(peer as u8), h(*c));
            }
        }
        by_one.set_peer(7, Availability::All, false);
        by_one.peer_has(&7, h(0));
        by_one.peer_has(&8, h(0));
        by_one.set_peer(5, some(&[]), true);
        by_one.peer_has(&5, h(0));
        whole.set_peer(7, Availability::All, false);
        whole.set_peer(5, some(&[0]), true);
        assert_eq!(by_one.holder_counts, whole.holder_counts);
        assert_eq!(by_one.holder_counts.get(&h(4)), Some(&3));
        assert_eq!(
            by_one.holder_counts.get(&h(0)),
            None,
            "the seed's chunk is not counted"
        );
        assert_queues_match(&by_one);
        assert_eq!(by_one.queue, whole.queue);
        let picks: Vec<_> = [0, 1, 2].map(|peer| by_one.next_for(&peer, t0)).into();
        let expected: Vec<_> = [0, 1, 2].map(|peer| whole.next_for(&peer, t0)).into();
        assert_eq!(picks, expected);
        assert_eq!(picks[0], Some(h(1)), "the rarest peer 0 holds");
    }

    /// The ordered queues hold exactly the missing and requested chunks, at their current rank.
    fn assert_queues_match(p: &Picker<u8>) {
        let want: BTreeSet<Rank> = p.missing.iter().map(|h| p.rank(h)).collect();
        assert_eq!(p.queue, want, "queue follows missing");
        let want: BTreeSet<Rank> = p.requested.keys().map(|h| p.rank(h)).collect();
        assert_eq!(p.requested_queue, want, "requested_queue follows requested");
    }

    #[test]
    fn pick_order_stays_in_step_with_holder_changes() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..40).map(h), &HashSet::new());
        p.set_peer(0, Availability::All, true);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for step in 0..2000u32 {
            let now = t0 + Duration::from_millis(u64::from(step) * 10);
            let peer = next(5) as u8;
            let chunk = h(next(40) as u8);
            match next(7) {
                0 => p.peer_has(&peer, chunk),
                1 => p.set_peer(peer, some(&[next(40) as u8, next(40) as u8]), peer == 0),
                2 => p.on_not_found(&peer, chunk, now),
                3 => p.on_peer_gone(&peer),
                4 => {
                    p.poll_stalled(now);
                }
                5 => {
                    // The pick is the lowest-ranked chunk this peer may be asked for, as a
                    // scan of every missing chunk finds it.
                    let eligible: Vec<Rank> = p
                        .missing
                        .iter()
                        .filter(|x| p.has(&peer, x) && !p.lacks(&peer, x))
                        .map(|x| p.rank(x))
                        .collect();
                    let mut best = eligible.iter().min().copied();
                    // The seed takes only chunks nobody else has while there are any.
                    let seed_waits = peer == 0
                        && p.missing
                            .iter()
                            .chain(p.requested.keys())
                            .any(|x| p.unheld(&p.rank(x)));
                    if seed_waits {
                        best = best.filter(|r| p.unheld(r));
                    }
                    let full = p.in_flight(&peer) >= 2;
                    match p.next_for(&peer, now) {
                        Some(x) => match best {
                            Some(b) => assert_eq!(x, b.2, "step {step}"),
                            None => assert!(p.second.contains_key(&x), "step {step}: end game"),
                        },
                        None => assert!(
                            best.is_none() || full || !p.peers.contains_key(&peer),
                            "step {step}: nothing picked though {best:?} was eligible"
                        ),
                    }
                }
                _ => {
                    if let Some(x) = p.requested.keys().next().copied() {
                        p.on_verified(x);
                    }
                }
            }
            assert_queues_match(&p);
        }
    }

    #[test]
    fn rarest_chunk_goes_first() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..3).map(h), &HashSet::new());
        p.set_peer(1, some(&[0, 1, 2]), false);
        p.set_peer(2, some(&[0, 1]), false);
        p.set_peer(3, some(&[0]), false);
        // Chunk 2 is held by one peer, chunk 1 by two, chunk 0 by three.
        assert_eq!(p.next_for(&1, t0), Some(h(2)));
        assert_eq!(p.next_for(&1, t0), Some(h(1)));
        assert_eq!(p.next_for(&2, t0), Some(h(0)));
        assert_eq!(p.next_for(&3, t0), None, "everything it has is requested");
    }

    #[test]
    fn peers_are_only_asked_for_what_they_have() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..2).map(h), &HashSet::new());
        p.set_peer(1, some(&[]), false);
        assert_eq!(p.next_for(&1, t0), None);
        p.peer_has(&1, h(1));
        assert_eq!(p.next_for(&1, t0), Some(h(1)));
    }

    #[test]
    fn last_resort_seed_serves_what_nobody_else_has_first() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..3).map(h), &HashSet::new());
        p.set_peer(0, Availability::All, true);
        p.set_peer(1, some(&[0, 1]), false);
        p.set_peer(2, some(&[1]), false);
        assert_eq!(p.next_for(&0, t0), Some(h(2)));
        assert_eq!(
            p.next_for(&0, t0),
            None,
            "while a chunk nobody has is on its way, 0 and 1 wait for the peers"
        );
        p.on_verified(h(2));
        assert_eq!(
            p.next_for(&0, t0),
            None,
            "every chunk has a holder now: the peers serve them"
        );
        p.on_not_found(&1, h(0), t0);
        assert_eq!(
            p.next_for(&0, t0),
            Some(h(0)),
            "the only holder lacked it after all"
        );
    }

    #[test]
    fn seed_gets_no_end_game_copy_of_a_chunk_another_peer_has() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(5);
        let mut p: Picker<u8> = Picker::new(cfg(), (0..2).map(h), &HashSet::new());
        p.set_peer(0, Availability::All, true);
        p.set_peer(1, some(&[0]), false);
        assert_eq!(p.next_for(&1, t0), Some(h(0)));
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(p.next_for(&0, t1), Some(h(1)), "nobody else has chunk 1");
        assert_eq!(
            p.next_for(&0, late),
            None,
            "chunk 0 is slow to come from peer 1, but peer 1 has it: no copy from the seed"
        );
        p.set_peer(2, Availability::All, false);
        assert_eq!(
            p.next_for(&2, late),
            Some(h(0)),
            "another subscriber gets the end-game copy"
        );
        let mut q: Picker<u8> = Picker::new(cfg(), (0..2).map(h), &HashSet::new());
        q.set_peer(0, Availability::All, true);
        q.set_peer(1, Availability::All, false);
        assert!(q.next_for(&1, t0).is_some() && q.next_for(&1, t0).is_some());
        assert_eq!(
            q.next_for(&0, late),
            None,
            "both asked of peer 1, which has them"
        );
        q.on_peer_gone(&1);
        q.set_peer(3, some(&[]), false);
        let both: HashSet<_> = (0..2).filter_map(|_| q.next_for(&0, late)).collect();
        assert_eq!(both.len(), 2, "their holder left: the seed serves them");
    }

    #[test]
    fn last_resort_seed_serves_chunks_of_a_peer_that_left() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..3).map(h), &HashSet::new());
        p.set_peer(0, Availability::All, true);
        p.set_peer(1, some(&[0, 1]), false);
        assert_eq!(p.next_for(&0, t0), Some(h(2)));
        assert_eq!(p.next_for(&0, t0), None, "chunks 0 and 1 come from peer 1");
        p.on_peer_gone(&1);
        assert!(
            p.next_for(&0, t0).is_some(),
            "with peer 1 gone the seed serves them"
        );
    }

    #[test]
    fn seed_serves_what_a_holder_turned_out_to_lack() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0)], &HashSet::new());
        p.set_peer(0, Availability::All, true);
        p.set_peer(1, Availability::All, false);
        assert_eq!(p.next_for(&1, t0), Some(h(0)));
        assert_eq!(p.next_for(&0, t0), None, "asked of peer 1 already");
        p.on_not_found(&1, h(0), t0);
        assert_eq!(
            p.next_for(&0, t0),
            Some(h(0)),
            "nobody else has it after all"
        );
    }

    /// A holder that is busy still holds the chunk: the seed is not asked for it, and once
    /// the holder is no longer busy it is asked for it again at once.
    #[test]
    fn a_busy_holder_keeps_its_chunk_from_the_seed_and_is_asked_again_when_free() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0)], &HashSet::new());
        p.set_peer(0, Availability::All, true);
        p.set_peer(1, Availability::All, false);
        assert_eq!(p.next_for(&1, t0), Some(h(0)));
        p.on_busy(&1, h(0));
        assert_eq!(p.in_flight(&1), 0);
        assert_eq!(p.next_for(&0, t0), None, "peer 1 holds it: not the seed");
        assert_eq!(p.next_for(&1, t0), None, "peer 1 is busy");
        p.set_busy(&1, false);
        assert_eq!(p.next_for(&1, t0), Some(h(0)));
    }

    #[test]
    fn faster_peer_gets_more_in_flight() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..20).map(h), &HashSet::new());
        p.set_peer(1, Availability::All, false);
        p.set_peer(2, Availability::All, false);
        p.set_limit(&1, 8);
        p.set_limit(&2, 1);
        while p.next_for(&1, t0).is_some() {}
        while p.next_for(&2, t0).is_some() {}
        assert_eq!((p.in_flight(&1), p.in_flight(&2)), (8, 1));
    }

    #[test]
    fn salts_spread_simultaneous_picks() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), (0..64).map(h), &HashSet::new());
        for peer in 1..=4 {
            p.set_peer(peer, Availability::All, false);
        }
        let firsts: HashSet<_> = (1..=4).map(|peer| p.next_for(&peer, t0).unwrap()).collect();
        assert_eq!(firsts.len(), 4);
    }

    #[test]
    fn different_downloaders_ask_the_same_seed_for_different_chunks() {
        let t0 = Instant::now();
        let firsts: HashSet<_> = (1..=4u64)
            .map(|local| {
                let config = PickerConfig {
                    local_salt: local.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ..cfg()
                };
                let mut p: Picker<u8> = Picker::new(config, (0..64).map(h), &HashSet::new());
                p.set_peer(0, Availability::All, true);
                p.next_for(&0, t0).unwrap()
            })
            .collect();
        assert_eq!(firsts.len(), 4);
    }

    #[test]
    fn end_game_asks_a_second_peer_for_the_oldest_outstanding_chunk() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(1500);
        let mut p: Picker<u8> = Picker::new(cfg(), (0..3).map(h), &HashSet::new());
        p.set_peer(1, Availability::All, false);
        p.set_limit(&1, 4);
        let first = p.next_for(&1, t0).unwrap();
        let rest: Vec<_> = (0..2).map(|_| p.next_for(&1, later).unwrap()).collect();
        p.set_peer(2, Availability::All, false);
        assert_eq!(p.next_for(&2, t0), None, "nothing is old enough yet");
        assert_eq!(p.next_for(&2, later), Some(first), "the oldest goes first");
        assert_eq!(p.next_for(&2, later), None, "the others are not old enough");
        assert_eq!(p.in_flight(&2), 1);
        // The second copy wins: both requests are released.
        p.on_verified(first);
        assert_eq!((p.in_flight(&1), p.in_flight(&2)), (2, 0));
        // A second request that fails leaves the first one running.
        let far = later + Duration::from_secs(2);
        let dup = p.next_for(&2, far).unwrap();
        assert!(rest.contains(&dup));
        p.on_not_found(&2, dup, far);
        assert_eq!(p.in_flight(&2), 0);
        assert!(!p.is_done());
        // The first request failing hands the chunk to the second, not back to `missing`.
        let other = *rest.iter().find(|h| **h != dup).unwrap();
        assert_eq!(p.next_for(&2, far), Some(other));
        p.on_failed(&1, other);
        assert_eq!(p.in_flight(&2), 1, "the second request carries on");
        p.on_peer_gone(&1);
        assert_eq!(
            p.next_for(&2, far),
            None,
            "peer 2 said it lacks the one left"
        );
        let retry = far + Duration::from_secs(4);
        assert!(p.poll_stalled(retry).is_empty());
        assert_eq!(
            p.next_for(&2, retry),
            Some(dup),
            "peer 1's chunk is missing again"
        );
        p.on_verified(dup);
        p.on_verified(other);
        assert!(p.is_done());
        assert_eq!(p.in_flight(&2), 0);
    }

    #[test]
    fn stalled_request_is_reissued_elsewhere() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0)], &HashSet::new());
        p.set_peer(1, Availability::All, false);
        p.set_peer(2, Availability::All, false);
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
        p.on_verified(h(0));
        assert!(p.is_done());
        assert_eq!(p.in_flight(&2), 0);
    }

    #[test]
    fn not_found_goes_to_other_peers_and_gone_peer_releases_all() {
        let t0 = Instant::now();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0), h(1)], &HashSet::new());
        p.set_peer(1, Availability::All, false);
        p.set_peer(2, Availability::All, false);
        let x = p.next_for(&1, t0).unwrap();
        p.on_not_found(&1, x, t0);
        let y = p.next_for(&1, t0).unwrap();
        assert_ne!(x, y, "peer 1 is not asked again for what it lacks");
        assert_eq!(p.next_for(&1, t0), None);
        p.poll_stalled(t0 + Duration::from_secs(1));
        assert_eq!(p.next_for(&1, t0), None, "still lacking after 1s");
        p.on_peer_gone(&1);
        assert_eq!(p.in_flight(&1), 0);
        let mut got = vec![p.next_for(&2, t0).unwrap(), p.next_for(&2, t0).unwrap()];
        got.sort();
        let mut want = vec![x, y];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn present_chunks_are_not_requested() {
        let present: HashSet<_> = [h(0)].into();
        let mut p: Picker<u8> = Picker::new(cfg(), [h(0), h(1), h(1)], &present);
        p.set_peer(1, Availability::All, false);
        assert_eq!(p.next_for(&1, Instant::now()), Some(h(1)));
        assert_eq!(p.next_for(&1, Instant::now()), None);
        assert_eq!(p.progress(), (1, 2));
    }
}
