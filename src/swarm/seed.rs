//! The seeding policy of the publisher: send each chunk of a revision to as few subscribers as
//! it can, so that subscribers soon hold different chunks and trade them (BitTorrent's
//! super-seeding, on the evidence of the subscribers' own availability messages).
//!
//! A chunk sent to one peer (its first receiver) is refused to others ("not found": ask your
//! peers) until there is evidence that it spread, and while some chunk of the revision has gone
//! to nobody (see `unsent_left`), so that the seed's upload goes to chunks nobody has.
//! Evidence: [`SPREAD_AFTER`] other peers' bitfields list it, or fewer did and [`SPREAD_WAIT`]
//! has passed since the first of them. (With one, a chunk that two subscribers held was still
//! missing from the peer sets of many others, who asked the seed for it.) The hold also ends
//! when its receiver leaves, when the send failed, and on a backstop, so that a
//! receiver that never passes it on (slow, or hostile, asking for chunks to keep them from
//! everyone else) cannot keep a chunk stuck: `backstop` after the receiver listed the chunk
//! (it had it and nobody got it from it), or `unlisted` after the send if it never listed it
//! (it never got it: its own request has timed out by then). The same peer may ask again (its
//! reply may have been lost); that does not restart the hold.
//!
//! Evidence, not a fixed time: a hold that ran out on a timer before the first receiver had the
//! chunk (the publisher's queue grows with the number of subscribers, and with a CPU-starved
//! machine's delays) sent it again to others, and a long timer kept chunks reserved for
//! receivers that had gone.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::tree::ContentHash;

/// Holds kept before those past the backstop are dropped (and if few are, the oldest, down to
/// half of this).
const MAX_TRACKED: usize = 100_000;
/// Peers besides its first receiver that list a chunk before the seed serves it to anyone.
pub const SPREAD_AFTER: usize = 3;
/// A chunk fewer peers list has spread too, this long after the first of them listed it (a
/// small swarm has not that many, or some subscribers cannot reach those that hold it).
pub const SPREAD_WAIT: Duration = Duration::from_secs(4);

/// A chunk reserved for its first receiver.
#[derive(Debug)]
struct Hold<P> {
    to: P,
    /// When it was first sent.
    since: Instant,
    /// When the receiver first listed it.
    listed: Option<Instant>,
    /// Other peers that listed it (at most `SPREAD_AFTER`), and when the first did.
    others: Vec<P>,
    others_since: Option<Instant>,
}

/// Tracks what the seed sent to whom, and what spread since.
#[derive(Debug)]
pub struct SeedPolicy<P> {
    backstop: Duration,
    unlisted: Duration,
    holds: HashMap<ContentHash, Hold<P>>,
    /// Chunks some peer other than their first receiver listed: served to anyone.
    spread: HashSet<ContentHash>,
    /// The revision `spread` is about.
    revision: u64,
    /// How many chunks that revision has (from the `Have`s heard; 0 until one is).
    chunks: usize,
    /// When a chunk last went to a first receiver.
    last_new: Option<Instant>,
}

impl<P: Clone + Eq + Hash> SeedPolicy<P> {
    /// A policy whose holds end at the latest `backstop` after their receiver listed the chunk,
    /// or `unlisted` after the send while it has not.
    pub fn new(backstop: Duration, unlisted: Duration) -> Self {
        SeedPolicy {
            backstop,
            unlisted,
            holds: HashMap::new(),
            spread: HashSet::new(),
            revision: 0,
            chunks: 0,
            last_new: None,
        }
    }

    /// Should the seed send `hash` to `peer` now? Records the send if so.
    pub fn should_serve(&mut self, peer: &P, hash: ContentHash, now: Instant) -> bool {
        let waited = |h: &Hold<P>| {
            h.to != *peer
                && h.others_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= SPREAD_WAIT)
        };
        if self.holds.get(&hash).is_some_and(waited) {
            self.holds.remove(&hash);
            self.spread.insert(hash);
        }
        if self.spread.contains(&hash) {
            if self.unsent_left(now) {
                tracing::trace!(%hash, "seed keeps its upload for chunks nobody has yet");
                return false;
            }
            tracing::trace!(%hash, "seed serves a chunk that spread");
            return true;
        }
        match self.holds.get(&hash) {
            None => {}
            // A retry: served, and the hold keeps counting from the first send.
            Some(hold) if hold.to == *peer => {
                tracing::debug!(%hash, "seed serves a chunk again to its receiver (a retry)");
                return true;
            }
            Some(hold) if !self.ran_out(hold, now) => return false,
            Some(hold) => {
                let age = |t: Instant| now.saturating_duration_since(t).as_secs_f32();
                tracing::debug!(
                    %hash,
                    sent_s_ago = age(hold.since),
                    listed_s_ago = hold.listed.map(age),
                    others = hold.others.len(),
                    "seed hold ran out: the chunk goes to a second receiver"
                );
            }
        }
        if self.holds.len() >= MAX_TRACKED {
            self.prune(now);
        }
        tracing::trace!(%hash, "seed sends a chunk to a first receiver");
        self.last_new = Some(now);
        let hold = Hold {
            to: peer.clone(),
            since: now,
            listed: None,
            others: Vec::new(),
            others_since: None,
        };
        self.holds.insert(hash, hold);
        true
    }

    /// Drop the holds that ran out and, if that leaves more than half of [`MAX_TRACKED`], the
    /// oldest down to half. A revision of millions of chunks sent faster than the backstop
    /// lets holds run out left all but a few: the pass over every hold then ran at each send
    /// (at a million small files, one subscriber, most of the publisher's time). Now it runs
    /// once per half of `MAX_TRACKED` sends at most; an old hold dropped only lets its chunk
    /// go to a second receiver.
    fn prune(&mut self, now: Instant) {
        let (backstop, unlisted) = (self.backstop, self.unlisted);
        self.holds
            .retain(|_, h| !ran_out(backstop, unlisted, h, now));
        let keep = MAX_TRACKED / 2;
        if self.holds.len() <= keep {
            return;
        }
        let mut since: Vec<Instant> = self.holds.values().map(|h| h.since).collect();
        let drop = since.len() - keep;
        let (_, &mut cutoff, _) = since.select_nth_unstable(drop - 1);
        self.holds.retain(|_, h| h.since > cutoff);
    }

    /// Whether some chunk of the revision has not been sent to anyone, as far as the holds and
    /// the spread chunks tell, and a chunk went to a first receiver less than [`SPREAD_WAIT`]
    /// ago. The count can stay short for good (a hold dropped when its receiver left, or by
    /// `prune`, is not counted again when listed later): the time limit keeps that from
    /// refusing spread chunks for the rest of the revision. Holds of an older revision's chunks
    /// only make this say no sooner.
    fn unsent_left(&self, now: Instant) -> bool {
        self.holds.len() + self.spread.len() < self.chunks
            && self
                .last_new
                .is_some_and(|t| now.saturating_duration_since(t) < SPREAD_WAIT)
    }

    /// The send of `hash` to `peer` failed: it may go to someone else at once.
    pub fn unsent(&mut self, peer: &P, hash: &ContentHash) {
        if self.holds.get(hash).is_some_and(|h| h.to == *peer) {
            self.holds.remove(hash);
        }
    }

    fn ran_out(&self, hold: &Hold<P>, now: Instant) -> bool {
        ran_out(self.backstop, self.unlisted, hold, now)
    }

    /// `peer` lists `hash` in its bitfield at `now`: once [`SPREAD_AFTER`] peers other than
    /// the chunk's first receiver did, it has spread and anyone may have it. (A chunk the seed
    /// holds no hold for, never sent by it or its hold over, has spread at once.)
    pub fn seen(&mut self, peer: &P, hash: ContentHash, now: Instant) {
        if let Some(hold) = self.holds.get_mut(&hash) {
            if hold.to == *peer {
                hold.listed.get_or_insert(now);
                return;
            }
            if !hold.others.contains(peer) {
                hold.others.push(peer.clone());
                hold.others_since.get_or_insert(now);
            }
            if hold.others.len() < SPREAD_AFTER {
                return;
            }
        }
        self.holds.remove(&hash);
        self.spread.insert(hash);
    }

    /// `peer` holds the chunks at `indices` of `revision`'s chunk order `order` (a `Have`
    /// heard at `now`: each only adds). A newer revision than before forgets what spread.
    pub fn have(
        &mut self,
        peer: &P,
        revision: u64,
        order: &[ContentHash],
        indices: &[u32],
        now: Instant,
    ) {
        if revision > self.revision {
            self.revision = revision;
            self.spread.clear();
        } else if revision < self.revision {
            return;
        }
        self.chunks = order.len();
        for &i in indices {
            if let Some(hash) = order.get(i as usize) {
                self.seen(peer, *hash, now);
            }
        }
    }

    /// `peer` left: the chunks held for it that did not spread may go to others at once.
    pub fn peer_left(&mut self, peer: &P) {
        self.holds.retain(|_, h| h.to != *peer);
    }
}

/// Whether `hold` ran out at `now`: `backstop` after its receiver listed the chunk, or
/// `unlisted` after the send while it has not.
fn ran_out<P>(backstop: Duration, unlisted: Duration, hold: &Hold<P>, now: Instant) -> bool {
    match hold.listed {
        Some(at) => now.saturating_duration_since(at) >= backstop,
        None => now.saturating_duration_since(hold.since) >= unlisted,
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
        SeedPolicy::new(Duration::from_secs(10), Duration::from_secs(30))
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
        s.seen(&1, h(1), secs(t0, 2.5));
        assert!(
            !s.should_serve(&2, h(1), secs(t0, 3.0)),
            "the receiver listing it is no evidence it spread"
        );
        for other in 2..2 + SPREAD_AFTER as u8 - 1 {
            s.seen(&other, h(1), secs(t0, 3.0));
            s.seen(&other, h(1), secs(t0, 3.0));
            assert!(
                !s.should_serve(&9, h(1), secs(t0, 3.0)),
                "listed by {other}, one peer fewer than SPREAD_AFTER (once or twice)"
            );
        }
        s.seen(&(1 + SPREAD_AFTER as u8), h(1), secs(t0, 3.0));
        assert!(
            s.should_serve(&9, h(1), secs(t0, 3.0)),
            "listed by SPREAD_AFTER peers besides its receiver: anyone may have it"
        );
        assert!(s.should_serve(&10, h(1), secs(t0, 3.0)));
        assert!(
            s.should_serve(&3, h(2), secs(t0, 3.0)),
            "other chunks are free"
        );
    }

    /// While some chunk of the revision has gone to nobody, a chunk that spread is refused:
    /// its askers get it from their peers, and the seed's upload goes to the chunks nobody has.
    #[test]
    fn a_chunk_that_spread_waits_until_every_chunk_has_gone_out() {
        let t0 = Instant::now();
        let mut s = policy();
        let order = [h(1), h(2)];
        assert!(s.should_serve(&1, h(1), t0));
        s.have(&1, 1, &order, &[0], t0);
        for other in 2..2 + SPREAD_AFTER as u8 {
            s.have(&other, 1, &order, &[0], t0);
        }
        assert!(
            !s.should_serve(&9, h(1), t0),
            "it spread, but chunk 2 has gone to nobody"
        );
        assert!(s.should_serve(&9, h(2), t0), "chunk 2 is new: served");
        assert!(
            s.should_serve(&8, h(1), t0),
            "every chunk has gone out: what spread is served to anyone"
        );

        // A third chunk that never goes out (say, its first receiver left before anyone
        // listed it, and nobody asks again): the refusal lasts SPREAD_WAIT after the last
        // new chunk went out, not for the rest of the revision.
        let order = [h(1), h(2), h(3)];
        s.have(&2, 1, &order, &[], t0);
        assert!(
            !s.should_serve(&7, h(1), secs(t0, 1.0)),
            "chunk 3 is unsent"
        );
        let later = t0 + SPREAD_WAIT;
        assert!(
            s.should_serve(&7, h(1), later),
            "no new chunk went out for SPREAD_WAIT"
        );
    }

    /// A small swarm, or subscribers that cannot reach the few that hold a chunk: fewer than
    /// `SPREAD_AFTER` others list it, and it goes to anyone `SPREAD_WAIT` after the first did.
    #[test]
    fn a_chunk_fewer_peers_list_spreads_after_a_wait() {
        let t0 = Instant::now();
        let mut s = policy();
        assert!(s.should_serve(&1, h(1), t0));
        s.seen(&1, h(1), secs(t0, 1.0));
        s.seen(&2, h(1), secs(t0, 2.0));
        let wait = SPREAD_WAIT.as_secs_f64();
        assert!(!s.should_serve(&3, h(1), secs(t0, 1.9 + wait)));
        assert!(s.should_serve(&3, h(1), secs(t0, 2.0 + wait)));
        assert!(
            s.should_serve(&4, h(1), secs(t0, 2.0 + wait)),
            "spread for all"
        );
    }

    /// A revision of more chunks than `MAX_TRACKED`, sent faster than holds run out: the
    /// oldest holds go, half of them at once, and the newest stay.
    #[test]
    fn past_the_tracked_holds_the_oldest_half_goes() {
        let t0 = Instant::now();
        let mut s = policy();
        let chunk = |i: usize| ContentHash::of(&i.to_le_bytes());
        let at = |i: usize| t0 + Duration::from_micros(i as u64);
        for i in 0..MAX_TRACKED {
            assert!(s.should_serve(&1, chunk(i), at(i)));
        }
        assert_eq!(s.holds.len(), MAX_TRACKED);
        assert!(s.should_serve(&1, chunk(MAX_TRACKED), at(MAX_TRACKED)));
        assert_eq!(s.holds.len(), MAX_TRACKED / 2 + 1);
        let now = at(MAX_TRACKED + 1);
        assert!(s.should_serve(&2, chunk(0), now), "the oldest hold went");
        assert!(
            s.should_serve(&2, chunk(MAX_TRACKED / 2 - 1), now),
            "and the older half with it"
        );
        assert!(
            !s.should_serve(&2, chunk(MAX_TRACKED / 2), now),
            "the newer half stays"
        );
        assert!(!s.should_serve(&2, chunk(MAX_TRACKED), now));
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
        // Listed at 5 s: held 10 s from then.
        s.seen(&1, h(1), secs(t0, 5.0));
        assert!(!s.should_serve(&2, h(1), secs(t0, 14.9)));
        assert!(s.should_serve(&2, h(1), secs(t0, 15.0)), "backstop reached");
        assert!(!s.should_serve(&1, h(1), secs(t0, 15.5)), "now held for 2");
    }

    #[test]
    fn a_chunk_its_receiver_has_not_listed_is_held_until_its_request_timed_out() {
        // A deep queue at the publisher, or a starved CPU: the chunk may still be on its way
        // after 10 s. Sending it to a second receiver then would be a duplicate.
        let t0 = Instant::now();
        let mut s = policy();
        assert!(s.should_serve(&1, h(1), t0));
        assert!(!s.should_serve(&2, h(1), secs(t0, 12.0)), "not listed yet");
        assert!(!s.should_serve(&2, h(1), secs(t0, 29.9)));
        assert!(
            s.should_serve(&2, h(1), secs(t0, 30.0)),
            "never listed: its receiver gave up on it"
        );
        // Listed late, at 25 s: held until 35 s.
        assert!(s.should_serve(&3, h(2), t0));
        s.seen(&3, h(2), secs(t0, 25.0));
        assert!(!s.should_serve(&2, h(2), secs(t0, 34.9)));
        assert!(s.should_serve(&2, h(2), secs(t0, 35.0)));
    }

    #[test]
    fn haves_are_evidence_only_from_others_and_for_the_newest_revision() {
        let t0 = Instant::now();
        let mut s = policy();
        let order: Vec<ContentHash> = (0..10).map(h).collect();
        for i in 0..10 {
            assert!(s.should_serve(&1, h(i), t0));
        }
        // Peers 2.. hold chunks 0 and 9; an index past the order names nothing.
        let others: Vec<u8> = (2..2 + SPREAD_AFTER as u8).collect();
        for p in &others {
            s.have(p, 5, &order, &[0, 9, 10], t0);
        }
        assert!(s.should_serve(&20, h(0), t0));
        assert!(s.should_serve(&20, h(9), t0));
        assert!(!s.should_serve(&20, h(1), t0));
        // The receiver's own Have is no evidence.
        s.have(&1, 5, &order, &[1, 2, 3], t0);
        assert!(!s.should_serve(&20, h(1), t0));
        // An old revision's Have is ignored.
        for p in &others {
            s.have(p, 4, &order, &[1], t0);
        }
        assert!(!s.should_serve(&20, h(1), t0));
        for p in &others {
            s.have(p, 5, &order, &[1], t0);
        }
        assert!(s.should_serve(&20, h(1), t0), "others hold it now");
        // A new revision forgets what spread in the old one.
        s.have(&2, 6, &order, &[], t0);
        assert!(s.should_serve(&20, h(0), t0));
        assert!(!s.should_serve(&1, h(0), t0), "held for 20 again");
    }

    /// The node's holds outlast a slow first hop: in the 40-subscriber lab a chunk often took
    /// more than 10 s to go from its first receiver to anyone else, and a 10 s backstop sent it
    /// again (34 and 59 times in two runs of about 200 chunks). With `SEED_HOLD` it goes to
    /// no one else until it spread; only a receiver that keeps it from everyone for
    /// `SEED_HOLD` gets it sent to a second.
    #[test]
    fn with_the_nodes_holds_a_chunk_slow_to_leave_its_first_receiver_is_not_sent_again() {
        use crate::config::{SEED_HOLD, SEED_HOLD_UNLISTED};
        let t0 = Instant::now();
        let mut s = SeedPolicy::new(SEED_HOLD, SEED_HOLD_UNLISTED);
        assert!(s.should_serve(&1, h(1), t0));
        s.seen(&1, h(1), secs(t0, 2.0));
        for t in [5.0, 12.0, 20.0, 24.0] {
            assert!(
                !s.should_serve(&2, h(1), secs(t0, t)),
                "{t} s after the send, its receiver still its only holder: refused"
            );
        }
        s.seen(&3, h(1), secs(t0, 25.0));
        assert!(
            !s.should_serve(&2, h(1), secs(t0, 28.0)),
            "one other lists it, less than SPREAD_WAIT ago"
        );
        assert!(
            s.should_serve(&2, h(1), secs(t0, 25.0) + SPREAD_WAIT),
            "SPREAD_WAIT after the first other listed it, anyone may have it"
        );

        // A receiver that never passes its chunk on: the hold ends SEED_HOLD after it
        // listed it.
        assert!(s.should_serve(&1, h(2), t0));
        s.seen(&1, h(2), secs(t0, 2.0));
        assert!(!s.should_serve(
            &2,
            h(2),
            secs(t0, 2.0) + SEED_HOLD - Duration::from_millis(1)
        ));
        assert!(s.should_serve(&2, h(2), secs(t0, 2.0) + SEED_HOLD));
    }
}
