//! Which peers learned by peer exchange get dialled, when, and at which addresses.
//!
//! Owns the admission budgets (per source and in total), the peers admitted and waiting for a
//! dial, and the dials in flight. It does not dial, does not know whether a peer is connected
//! or has a session (the caller leaves those out), and does not rank addresses (the caller
//! passes them best first). Sans-IO: the caller passes `now`, carries out each [`Dial`] that
//! [`PexDials::poll_dial`] returns and reports how it ended.
//!
//! A peer named in peer exchange is a hint from one peer, not an order (as in BitTorrent PEX,
//! where a client adds what it hears to its peer list and connects as slots free up). Policy:
//! - Admission: a peer `source` names is admitted only while `source`'s bucket (`per_source`
//!   a minute) and the bucket of all sources together (`per_minute`) both hold a token;
//!   otherwise it is refused and forgotten. Naming a peer already admitted costs nothing and
//!   vouches for it.
//! - Only while useful: the caller passes `room`, the sessions it still wants; dials in flight
//!   never exceed `room` nor `in_flight`. A dial is in flight until the caller reports the peer
//!   connected or the dial failed.
//! - Which first: the admitted peer vouched for by the most sources (more than one source
//!   naming it is better evidence that it exists), then the one admitted first.
//! - Addresses: at most `addrs_per_dial` of those given, in the given order, without
//!   duplicates and without an address another dial in flight is trying; a peer with no
//!   address left waits. So however many peers name one address, it gets one attempt at a time.
//! - Forgetting: an admitted peer not dialled within `candidate_ttl` is dropped; a dial whose
//!   outcome was not reported within `dial_timeout` stops counting as in flight.
//!
//! Invariant: a peer is in at most one of `waiting` (admitted, not dialled) or `dialling` (in
//! flight, with the addresses it tries); `dialling.len() <= in_flight`; an address is tried by at
//! most one dial in flight. Every peer in `waiting` was admitted within `candidate_ttl`, so
//! there are at most `per_minute` × (1 + `candidate_ttl` in minutes) of them.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Sources whose budget is remembered. Beyond this, sources whose bucket is full again are
/// forgotten (they lose nothing); if that is not enough, new sources are refused until it is.
/// Sources are peers with a session, so far fewer are live at once.
const MAX_SOURCES: usize = 256;

/// Sources remembered per admitted peer; more rank the same.
const MAX_VOUCHERS: usize = 4;

/// The limits peer-exchange dials keep to.
#[derive(Debug, Clone, Copy)]
pub struct DialLimits {
    /// Peers one source may get admitted per minute (bucket size and refill rate).
    pub per_source: u32,
    /// Peers all sources together may get admitted per minute.
    pub per_minute: u32,
    /// Dials in flight at once.
    pub in_flight: usize,
    /// Addresses tried per dial.
    pub addrs_per_dial: usize,
    /// An admitted peer not dialled within this long is forgotten.
    pub candidate_ttl: Duration,
    /// A dial with no reported outcome after this long stops counting as in flight.
    pub dial_timeout: Duration,
}

impl Default for DialLimits {
    fn default() -> Self {
        use crate::config::{
            PEX_ADDRS_PER_DIAL, PEX_CANDIDATE_TTL, PEX_DIALS_IN_FLIGHT, PEX_DIALS_PER_MINUTE,
            PEX_DIALS_PER_SOURCE, PEX_DIAL_TIMEOUT,
        };
        DialLimits {
            per_source: PEX_DIALS_PER_SOURCE,
            per_minute: PEX_DIALS_PER_MINUTE,
            in_flight: PEX_DIALS_IN_FLIGHT,
            addrs_per_dial: PEX_ADDRS_PER_DIAL,
            candidate_ttl: PEX_CANDIDATE_TTL,
            dial_timeout: PEX_DIAL_TIMEOUT,
        }
    }
}

/// What became of a peer named in peer exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Admitted: it will be dialled when there is room.
    Admitted,
    /// Already admitted or being dialled; the source now vouches for it too.
    Known,
    /// The source or all sources together spent their budget: not dialled.
    Refused,
}

/// A dial to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial<P, A> {
    pub peer: P,
    pub addrs: Vec<A>,
}

/// Tokens refilled continuously up to `size`, `size` per minute.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(size: u32, now: Instant) -> Self {
        Bucket {
            tokens: size as f64,
            last: now,
        }
    }

    /// Refill for the time since the last call; true if the bucket is full.
    fn refill(&mut self, size: u32, now: Instant) -> bool {
        let minutes = now.saturating_duration_since(self.last).as_secs_f64() / 60.0;
        self.tokens = (self.tokens + minutes * size as f64).min(size as f64);
        self.last = now;
        self.tokens >= size as f64
    }
}

#[derive(Debug)]
struct Waiting<P, A> {
    addrs: Vec<A>,
    vouchers: Vec<P>,
    /// Admission order, for ties.
    seq: u64,
    since: Instant,
}

#[derive(Debug)]
struct InFlight<A> {
    addrs: Vec<A>,
    since: Instant,
}

/// Decides which peers learned by peer exchange to dial. `P` identifies peers, `A` addresses.
#[derive(Debug)]
pub struct PexDials<P, A> {
    limits: DialLimits,
    total: Bucket,
    sources: HashMap<P, Bucket>,
    waiting: HashMap<P, Waiting<P, A>>,
    dialling: HashMap<P, InFlight<A>>,
    next_seq: u64,
}

impl<P: Clone + Eq + Hash, A: Clone + Eq + Hash> PexDials<P, A> {
    pub fn new(limits: DialLimits, now: Instant) -> Self {
        PexDials {
            total: Bucket::full(limits.per_minute, now),
            limits,
            sources: HashMap::new(),
            waiting: HashMap::new(),
            dialling: HashMap::new(),
            next_seq: 0,
        }
    }

    /// `source` says `peer` is at `addrs` (best first).
    pub fn handle_learned(&mut self, source: P, peer: P, addrs: Vec<A>, now: Instant) -> Learned {
        self.expire(now);
        if self.dialling.contains_key(&peer) {
            return Learned::Known;
        }
        if let Some(w) = self.waiting.get_mut(&peer) {
            if w.vouchers.len() < MAX_VOUCHERS && !w.vouchers.contains(&source) {
                w.vouchers.push(source);
            }
            return Learned::Known;
        }
        if !self.spend(&source, now) {
            return Learned::Refused;
        }
        self.next_seq += 1;
        let waiting = Waiting {
            addrs,
            vouchers: vec![source],
            seq: self.next_seq,
            since: now,
        };
        self.waiting.insert(peer, waiting);
        Learned::Admitted
    }

    /// The next dial to start, if any: the caller still wants `room` more sessions.
    pub fn poll_dial(&mut self, room: usize, now: Instant) -> Option<Dial<P, A>> {
        self.expire(now);
        if self.dialling.len() >= room.min(self.limits.in_flight) {
            return None;
        }
        let busy: HashSet<&A> = self.dialling.values().flat_map(|d| &d.addrs).collect();
        let n = self.limits.addrs_per_dial;
        let (peer, addrs) = self
            .waiting
            .iter()
            .filter_map(|(p, w)| {
                let addrs = pick(&w.addrs, &busy, n);
                let rank = (w.vouchers.len(), std::cmp::Reverse(w.seq));
                (!addrs.is_empty()).then_some((rank, p, addrs))
            })
            .max_by_key(|(rank, _, _)| *rank)
            .map(|(_, p, addrs)| (p.clone(), addrs))?;
        self.waiting.remove(&peer);
        let flight = InFlight {
            addrs: addrs.clone(),
            since: now,
        };
        self.dialling.insert(peer.clone(), flight);
        Some(Dial { peer, addrs })
    }

    /// `peer` is connected (by our dial or otherwise): nothing left to dial.
    pub fn handle_connected(&mut self, peer: &P) {
        self.waiting.remove(peer);
        self.dialling.remove(peer);
    }

    /// Our dial to `peer` failed (or could not start). It is forgotten until named again.
    pub fn handle_dial_failed(&mut self, peer: &P) {
        self.dialling.remove(peer);
    }

    /// Dials in flight.
    pub fn in_flight(&self) -> usize {
        self.dialling.len()
    }

    /// Admitted peers waiting for a dial.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Take a token from `source`'s bucket and the total one, if both have one.
    fn spend(&mut self, source: &P, now: Instant) -> bool {
        let (per_source, per_minute) = (self.limits.per_source, self.limits.per_minute);
        if !self.sources.contains_key(source) && !self.make_room_for_a_source(now) {
            return false;
        }
        self.total.refill(per_minute, now);
        let bucket = self
            .sources
            .entry(source.clone())
            .or_insert_with(|| Bucket::full(per_source, now));
        bucket.refill(per_source, now);
        if bucket.tokens < 1.0 || self.total.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        self.total.tokens -= 1.0;
        true
    }

    /// Keep the source table bounded: forget sources whose bucket is full again.
    fn make_room_for_a_source(&mut self, now: Instant) -> bool {
        if self.sources.len() < MAX_SOURCES {
            return true;
        }
        let per_source = self.limits.per_source;
        self.sources.retain(|_, b| !b.refill(per_source, now));
        self.sources.len() < MAX_SOURCES
    }

    fn expire(&mut self, now: Instant) {
        let (ttl, timeout) = (self.limits.candidate_ttl, self.limits.dial_timeout);
        self.waiting
            .retain(|_, w| now.saturating_duration_since(w.since) < ttl);
        self.dialling
            .retain(|_, d| now.saturating_duration_since(d.since) < timeout);
    }
}

/// Up to `n` of `addrs` in order, without duplicates or addresses in `busy`.
fn pick<A: Clone + Eq + Hash>(addrs: &[A], busy: &HashSet<&A>, n: usize) -> Vec<A> {
    let mut out: Vec<A> = Vec::with_capacity(n);
    for a in addrs {
        if out.len() == n {
            break;
        }
        if !busy.contains(a) && !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limits() -> DialLimits {
        DialLimits {
            per_source: 4,
            per_minute: 10,
            in_flight: 3,
            addrs_per_dial: 2,
            candidate_ttl: MINUTE,
            dial_timeout: Duration::from_secs(30),
        }
    }

    /// Peers are numbers, sources are numbers from 1000, addresses are strings.
    fn dials(t0: Instant) -> PexDials<u32, &'static str> {
        PexDials::new(limits(), t0)
    }

    fn drain(d: &mut PexDials<u32, &'static str>, room: usize, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| d.poll_dial(room, now))
            .map(|x| x.peer)
            .collect()
    }

    #[test]
    fn one_source_gets_its_budget_a_minute_and_no_more() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        let learned: Vec<Learned> = (0..20)
            .map(|p| d.handle_learned(1000, p, vec!["a"], t0))
            .collect();
        assert_eq!(
            learned.iter().filter(|l| **l == Learned::Admitted).count(),
            4
        );
        assert_eq!(learned[4..], [Learned::Refused; 16]);
        // A quarter of a minute later one token has come back.
        let t1 = t0 + MINUTE / 4;
        assert_eq!(d.handle_learned(1000, 50, vec!["a"], t1), Learned::Admitted);
        assert_eq!(d.handle_learned(1000, 51, vec!["a"], t1), Learned::Refused);
        // Another source has its own budget.
        assert_eq!(d.handle_learned(1001, 52, vec!["a"], t1), Learned::Admitted);
    }

    #[test]
    fn all_sources_together_share_the_total_budget() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        let admitted = (0..10u32)
            .flat_map(|s| (0..4).map(move |i| (1000 + s, s * 10 + i)))
            .filter(|(s, p)| d.handle_learned(*s, *p, vec!["a"], t0) == Learned::Admitted)
            .count();
        assert_eq!(admitted, 10);
        let t1 = t0 + MINUTE;
        assert_eq!(
            d.handle_learned(2000, 500, vec!["a"], t1),
            Learned::Admitted
        );
    }

    #[test]
    fn naming_a_known_peer_again_costs_nothing() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        assert_eq!(d.handle_learned(1000, 1, vec!["a"], t0), Learned::Admitted);
        for _ in 0..10 {
            assert_eq!(d.handle_learned(1000, 1, vec!["a"], t0), Learned::Known);
        }
        assert_eq!(drain(&mut d, 10, t0), [1]);
        assert_eq!(d.handle_learned(1001, 1, vec!["a"], t0), Learned::Known);
        for p in 2..5 {
            assert_eq!(d.handle_learned(1000, p, vec!["a"], t0), Learned::Admitted);
        }
    }

    #[test]
    fn dials_in_flight_stay_within_the_cap_and_the_room() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        let addrs = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        for (p, a) in addrs.iter().enumerate() {
            d.handle_learned(1000 + p as u32, p as u32, vec![a], t0);
        }
        assert_eq!(
            drain(&mut d, 2, t0).len(),
            2,
            "only as many as sessions wanted"
        );
        assert_eq!(drain(&mut d, 10, t0).len(), 1, "never more than in_flight");
        assert_eq!(d.in_flight(), 3);
        let first = *d.dialling.keys().next().unwrap();
        d.handle_dial_failed(&first);
        assert_eq!(drain(&mut d, 10, t0).len(), 1);
        let second = *d.dialling.keys().next().unwrap();
        d.handle_connected(&second);
        assert_eq!(drain(&mut d, 10, t0).len(), 1);
        assert_eq!((d.in_flight(), d.waiting()), (3, 5));
    }

    #[test]
    fn a_dial_tries_a_few_addresses_once_each_and_none_another_dial_is_trying() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        let victim = vec!["v1", "v1", "v2", "v3"];
        d.handle_learned(1000, 1, victim.clone(), t0);
        d.handle_learned(1001, 2, victim.clone(), t0);
        d.handle_learned(1002, 3, victim, t0);
        let first = d.poll_dial(10, t0).unwrap();
        assert_eq!((first.peer, first.addrs), (1, vec!["v1", "v2"]));
        let second = d.poll_dial(10, t0).unwrap();
        assert_eq!((second.peer, second.addrs), (2, vec!["v3"]));
        assert_eq!(
            d.poll_dial(10, t0),
            None,
            "every address has a dial in flight"
        );
        d.handle_dial_failed(&1);
        let third = d.poll_dial(10, t0).unwrap();
        assert_eq!((third.peer, third.addrs), (3, vec!["v1", "v2"]));
    }

    #[test]
    fn a_peer_vouched_for_by_more_sources_is_dialled_first() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        d.handle_learned(1000, 1, vec!["a"], t0);
        d.handle_learned(1000, 2, vec!["b"], t0);
        d.handle_learned(1000, 3, vec!["c"], t0);
        d.handle_learned(1001, 3, vec!["c"], t0);
        assert_eq!(drain(&mut d, 10, t0), [3, 1, 2]);
    }

    #[test]
    fn waiting_peers_and_unreported_dials_expire() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        for p in 0..4 {
            d.handle_learned(1000, p, vec!["a"], t0);
        }
        assert_eq!(
            drain(&mut d, 10, t0).len(),
            1,
            "one address: one dial at a time"
        );
        let t1 = t0 + limits().dial_timeout;
        assert_eq!(d.in_flight(), 1);
        assert!(
            d.poll_dial(10, t1).is_some(),
            "the silent dial no longer counts"
        );
        let t2 = t0 + limits().candidate_ttl;
        assert_eq!(d.poll_dial(10, t2), None);
        assert_eq!(d.waiting(), 0);
    }

    #[test]
    fn a_peer_that_connects_by_itself_is_not_dialled() {
        let t0 = Instant::now();
        let mut d = dials(t0);
        d.handle_learned(1000, 1, vec!["a"], t0);
        d.handle_connected(&1);
        assert_eq!(d.poll_dial(10, t0), None);
    }

    #[test]
    fn the_source_table_stays_bounded() {
        let t0 = Instant::now();
        let mut d = PexDials::<u32, &str>::new(
            DialLimits {
                per_minute: 100_000,
                ..limits()
            },
            t0,
        );
        for s in 0..MAX_SOURCES as u32 {
            assert_eq!(
                d.handle_learned(s, 10_000 + s, vec!["a"], t0),
                Learned::Admitted
            );
        }
        let newcomer = MAX_SOURCES as u32;
        assert_eq!(
            d.handle_learned(newcomer, 1, vec!["a"], t0),
            Learned::Refused
        );
        // Once their buckets are full again, old sources make room.
        let t1 = t0 + MINUTE;
        assert_eq!(
            d.handle_learned(newcomer, 1, vec!["a"], t1),
            Learned::Admitted
        );
        assert!(d.sources.len() <= MAX_SOURCES);
    }
}
