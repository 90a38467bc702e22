//! The node's control sessions: at most one per peer, each holding one of the session slots
//! ([`Slots`]), and what the engine has been told of each.
//!
//! A new control stream from a peer that has a session replaces it (the peer restarted, or
//! lost its session while the connection lived on), unless both sides dialled and the
//! tie-break keeps the running one: the stream opened by the smaller peer ID wins, on both
//! ends. A replacement takes over the old session's slot as it stands: it needs no admission
//! (at the limit it would find every slot taken) and gets no fresh grace.
//!
//! Invariant: the engine hears the `Up` of a session at most once, and only while it is its
//! peer's live session; for every `Up` it heard it hears exactly one `Down`, before the `Up` of
//! that peer's next session. Per peer it sees Up, Down, Up, Down… and may count peers by
//! events. A session leaves the table when its task ends, when it is replaced, when a newcomer
//! evicts it, or when its peer is banned; if the engine was told it is up, the caller tells
//! the engine `Down` right then, and the session's own late `Up` or `Down` are dropped.
//!
//! Sessions the node opens itself are capped lower than the slots ([`dial_target`]): a node
//! dials until it has opened that many and takes the rest from peers that dial it. When every
//! node dialled until its slots were full, a swarm bigger than the slots filled every slot
//! everywhere, and the nodes that came last were refused by all (in a 40-subscriber lab, a
//! few subscribers had 2-5 peers and thousands of refused dials went round). With each node
//! opening `3/8` of its slots, the sessions of a swarm average `3/4` of them and most nodes
//! have room for a newcomer. Bitcoin's outbound/inbound split and BitTorrent's half-open
//! limits answer the same problem.
//!
//! Sans-IO: the caller reports streams, sessions' events and ends (with `now` for the slots)
//! and carries out what it is told. `H` is the caller's handle on a session (its outbox and
//! cancel token), kept here so that handles and sessions cannot disagree; the table never
//! uses it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::slots::{Admission, Slots};

/// A session that left the table.
#[derive(Debug)]
pub struct Gone<P, H> {
    pub peer: P,
    pub id: u64,
    /// The caller ends the session with it (nothing to do for one whose task is over).
    pub handle: H,
    /// The engine was told the session is up: the caller tells it `Down` now.
    pub tell_down: bool,
}

/// What [`SessionTable::open`] decided for a new control stream.
#[derive(Debug)]
pub enum Open<P, H> {
    /// Run session `id` on the stream.
    Start {
        id: u64,
        /// The peer's previous session; the new one has its slot.
        replaced: Option<Gone<P, H>>,
        /// The session idle the longest, ended to make room (see [`Slots`]).
        evicted: Option<Gone<P, H>>,
    },
    /// Both sides dialled, and the tie-break keeps the running session: drop the stream.
    Kept,
    /// Every slot holds a session not yet idle for long enough: drop the stream.
    Full,
}

#[derive(Debug)]
struct Live<P, H> {
    id: u64,
    opener: P,
    handle: H,
}

/// How many sessions a node with `max` slots opens itself (see the module's doc): all of them
/// up to 8, else `3/8` of them (12 of the default 32).
pub fn dial_target(max: usize) -> usize {
    max.min(8).max(max * 3 / 8)
}

/// The live session of each peer, its slot, and which `Up`s the engine heard.
#[derive(Debug)]
pub struct SessionTable<P, H> {
    local: P,
    max: usize,
    slots: Slots<P>,
    live: HashMap<P, Live<P, H>>,
    /// The session of a peer the engine was told is up, until it is told `Down`.
    told_up: HashMap<P, u64>,
    next_id: u64,
}

impl<P: Clone + Eq + Hash + Ord, H> SessionTable<P, H> {
    /// The sessions of node `local`: `max` slots, a session idle for `idle` may be evicted.
    pub fn new(local: P, max: usize, idle: Duration) -> Self {
        SessionTable {
            local,
            max,
            slots: Slots::new(max, idle),
            live: HashMap::new(),
            told_up: HashMap::new(),
            next_id: 0,
        }
    }

    /// A control stream with `peer`, opened by `opener` (the peer or us): may a session with
    /// `handle` run on it? `bytes` is the peer's chunk byte counter now (see [`Slots::admit`]).
    pub fn open(&mut self, peer: P, opener: P, handle: H, bytes: u64, now: Instant) -> Open<P, H> {
        if let Some(live) = self.live.get_mut(&peer) {
            let winner = self.local.clone().min(peer.clone());
            if live.opener != opener && live.opener == winner {
                return Open::Kept;
            }
            self.next_id += 1;
            let new = Live {
                id: self.next_id,
                opener,
                handle,
            };
            let old = std::mem::replace(live, new);
            return Open::Start {
                id: self.next_id,
                replaced: Some(self.gone(peer, old)),
                evicted: None,
            };
        }
        let evicted = match self.slots.admit(peer.clone(), bytes, now) {
            Admission::Admitted => None,
            Admission::Evict(victim) => self.live.remove(&victim).map(|s| self.gone(victim, s)),
            Admission::Full => return Open::Full,
        };
        self.next_id += 1;
        let live = Live {
            id: self.next_id,
            opener,
            handle,
        };
        self.live.insert(peer, live);
        Open::Start {
            id: self.next_id,
            replaced: None,
            evicted,
        }
    }

    /// Session `id` of `peer` says it is up. True if the engine is to hear it: it is the
    /// peer's live session, and the engine has not heard so yet.
    pub fn up(&mut self, peer: &P, id: u64) -> bool {
        let live = self.live.get(peer).is_some_and(|s| s.id == id);
        if !live || self.told_up.contains_key(peer) {
            return false;
        }
        self.told_up.insert(peer.clone(), id);
        true
    }

    /// Session `id` of `peer` says it is down. True if the engine is to hear it: it heard
    /// that this session is up, and not yet that it is down.
    pub fn down(&mut self, peer: &P, id: u64) -> bool {
        if self.told_up.get(peer) != Some(&id) {
            return false;
        }
        self.told_up.remove(peer);
        true
    }

    /// The task of session `id` of `peer` is over: if it is the live one, it leaves and frees
    /// its slot. (A replaced or evicted session's end changes nothing.)
    pub fn ended(&mut self, peer: &P, id: u64) -> Option<Gone<P, H>> {
        if self.live.get(peer).is_none_or(|s| s.id != id) {
            return None;
        }
        self.remove(peer)
    }

    /// End `peer`'s session, whichever it is (a ban), and free its slot.
    pub fn remove(&mut self, peer: &P) -> Option<Gone<P, H>> {
        self.slots.leave(peer);
        let old = self.live.remove(peer)?;
        Some(self.gone(peer.clone(), old))
    }

    /// What we know of `peer` now, for the slots (see [`Slots::observe`]).
    pub fn observe(&mut self, peer: &P, bytes: u64, current: bool, now: Instant) {
        self.slots.observe(peer, bytes, current, now);
    }

    /// The handle of `peer`'s live session.
    pub fn get(&self, peer: &P) -> Option<&H> {
        self.live.get(peer).map(|s| &s.handle)
    }

    pub fn contains_key(&self, peer: &P) -> bool {
        self.live.contains_key(peer)
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// How many more sessions the node may open itself: up to [`dial_target`] opened by us,
    /// and never past its slots.
    pub fn dial_room(&self) -> usize {
        let ours = self
            .live
            .values()
            .filter(|l| l.opener == self.local)
            .count();
        let target = dial_target(self.max).saturating_sub(ours);
        target.min(self.max.saturating_sub(self.live.len()))
    }

    /// How many sessions a starved download may open ([`SessionTable::idle_for`]): its dial
    /// target does not hold, as what it opened moves nothing; its slots do, but at the limit
    /// one more may be tried (the admission then ends a session idle for long enough, or
    /// refuses it).
    pub fn starved_room(&self) -> usize {
        self.max.saturating_sub(self.live.len()).max(1)
    }

    /// True if every live session has been idle for `after` at `now` (see [`Slots::idle_for`]).
    pub fn idle_for(&self, now: Instant, after: Duration) -> bool {
        self.slots.idle_for(now, after)
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Peers in session.
    pub fn keys(&self) -> impl Iterator<Item = &P> {
        self.live.keys()
    }

    /// Handles of the live sessions.
    pub fn values(&self) -> impl Iterator<Item = &H> {
        self.live.values().map(|s| &s.handle)
    }

    pub fn iter(&self) -> Iter<'_, P, H> {
        Iter(self.live.iter())
    }

    fn gone(&mut self, peer: P, old: Live<P, H>) -> Gone<P, H> {
        let tell_down = self.told_up.get(&peer) == Some(&old.id);
        if tell_down {
            self.told_up.remove(&peer);
        }
        Gone {
            peer,
            id: old.id,
            handle: old.handle,
            tell_down,
        }
    }
}

/// The live sessions: each peer and the handle of its session.
pub struct Iter<'a, P, H>(std::collections::hash_map::Iter<'a, P, Live<P, H>>);

impl<'a, P, H> Iterator for Iter<'a, P, H> {
    type Item = (&'a P, &'a H);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(p, s)| (p, &s.handle))
    }
}

impl<'a, P: Clone + Eq + Hash + Ord, H> IntoIterator for &'a SessionTable<P, H> {
    type Item = (&'a P, &'a H);
    type IntoIter = Iter<'a, P, H>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The control streams this node is opening, at most one per peer.
///
/// A node that dials a peer twice at once (a saved address and the ticket's, say) gets two
/// connections, and each would carry a stream of ours. The peer may register the two streams
/// in the other order than we do (each side as its open completes), so each side keeps the
/// session the other replaced, ends the one it replaced, and both sessions die ("peer said
/// goodbye" on both ends; the next connection came ~3 s later in a re-sync on loopback). One
/// open at a time per peer makes the order the same on both ends. A call while one is open is
/// remembered: if that open fails, the caller opens again (the connection it ran on may have
/// closed while another came up).
#[derive(Debug)]
pub struct Opening<P> {
    /// Peer, when its open began, and whether another was asked for meanwhile.
    open: HashMap<P, (Instant, bool)>,
    timeout: Duration,
}

impl<P: Clone + Eq + Hash> Opening<P> {
    /// An open not heard of within `timeout` no longer blocks the next.
    pub fn new(timeout: Duration) -> Self {
        Opening {
            open: HashMap::new(),
            timeout,
        }
    }

    /// May the caller open a control stream to `peer` now? False while one is open.
    pub fn begin(&mut self, peer: &P, now: Instant) -> bool {
        if let Some((since, again)) = self.open.get_mut(peer) {
            if now.saturating_duration_since(*since) < self.timeout {
                *again = true;
                return false;
            }
        }
        self.open.insert(peer.clone(), (now, false));
        true
    }

    /// The open to `peer` gave a stream.
    pub fn opened(&mut self, peer: &P) {
        self.open.remove(peer);
    }

    /// The open to `peer` failed: true if another was asked for while it ran (the caller
    /// opens again if it still has a connection and no session).
    pub fn failed(&mut self, peer: &P) -> bool {
        self.open.remove(peer).is_some_and(|(_, again)| again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    /// One open per peer at a time; a second asked for meanwhile is owed only if the first
    /// fails; an open that was never heard of stops blocking after the timeout.
    #[test]
    fn one_control_stream_is_opened_per_peer_at_a_time() {
        let t0 = Instant::now();
        let mut o = Opening::new(Duration::from_secs(10));
        assert!(o.begin(&1u32, t0));
        assert!(
            !o.begin(&1, secs(t0, 1)),
            "a second open while the first runs"
        );
        assert!(o.begin(&2, secs(t0, 1)), "another peer is not held up");
        o.opened(&1);
        assert!(
            o.begin(&1, secs(t0, 2)),
            "the next open once the first gave a stream"
        );
        assert!(!o.failed(&1), "nothing was asked for meanwhile");
        assert!(o.begin(&1, secs(t0, 3)));
        assert!(!o.begin(&1, secs(t0, 4)));
        assert!(o.failed(&1), "the open asked for meanwhile is owed");
        assert!(!o.failed(&1), "and owed once");
        assert!(!o.begin(&2, secs(t0, 10)), "peer 2's open is 9 s old");
        assert!(
            o.begin(&2, secs(t0, 11)),
            "peer 2's open was never heard of"
        );
    }

    /// This node's peer ID: the streams of peers below it win the tie-break against ours.
    const US: u32 = 5;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    /// Open a session `peer` opened, and return its id.
    fn start(t: &mut SessionTable<u32, &'static str>, peer: u32, now: Instant) -> u64 {
        match t.open(peer, peer, "handle", 0, now) {
            Open::Start { id, .. } => id,
            other => panic!("not started: {other:?}"),
        }
    }

    /// A node dials until it has opened its dial target, and takes more from peers that dial
    /// it, up to its slots.
    #[test]
    fn a_node_opens_its_dial_target_and_accepts_the_rest() {
        assert_eq!(dial_target(32), 12);
        assert_eq!(dial_target(64), 24);
        assert_eq!(dial_target(6), 6, "small limits are all dialled");
        let t0 = Instant::now();
        let mut t: SessionTable<u32, &str> = SessionTable::new(US, 32, IDLE);
        for peer in 100..111 {
            assert!(matches!(
                t.open(peer, US, "ours", 0, t0),
                Open::Start { .. }
            ));
        }
        assert_eq!(t.dial_room(), 1, "11 of 12 opened by us");
        for peer in 200..215 {
            start(&mut t, peer, t0);
        }
        assert_eq!(
            t.dial_room(),
            1,
            "sessions peers opened leave the dial room alone"
        );
        assert!(matches!(t.open(111, US, "ours", 0, t0), Open::Start { .. }));
        assert_eq!(t.dial_room(), 0, "the target is reached");
        for peer in 300..305 {
            start(&mut t, peer, t0);
        }
        assert_eq!(t.len(), 32);
        t.remove(&200);
        assert_eq!(t.dial_room(), 0, "a free slot, but the target is reached");
        t.remove(&100);
        assert_eq!(t.dial_room(), 1, "one of ours gone");
        start(&mut t, 400, t0);
        start(&mut t, 401, t0);
        assert_eq!(t.dial_room(), 0, "every slot taken");
    }

    #[test]
    fn a_replacement_at_the_limit_takes_over_the_slot() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(US, 1, IDLE);
        let first = start(&mut t, 1, t0);
        let Open::Start {
            id: second,
            replaced: Some(old),
            evicted: None,
        } = t.open(1, 1, "new", 0, secs(t0, 1))
        else {
            panic!("the peer's second stream did not replace its session");
        };
        assert_eq!((old.peer, old.id, old.handle), (1, first, "handle"));
        assert_eq!((t.len(), t.get(&1)), (1, Some(&"new")));
        // The slot is the new session's: the old one's end frees nothing, a newcomer waits.
        assert!(t.ended(&1, first).is_none());
        assert!(matches!(t.open(2, 2, "h", 0, secs(t0, 2)), Open::Full));
        // The replacement got no fresh grace: idle since the first session began.
        let Open::Start {
            evicted: Some(gone),
            ..
        } = t.open(2, 2, "h", 0, secs(t0, 60))
        else {
            panic!("the idle session was not evicted");
        };
        assert_eq!((gone.peer, gone.id), (1, second));
        assert!(!t.contains_key(&1));
    }

    /// Per peer the engine hears Up, Down, Up, Down: a replaced session's Down comes at its
    /// replacement, before the next session's Up; its own late Up or Down is dropped.
    #[test]
    fn every_up_the_engine_heard_gets_one_down_before_the_next_up() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(US, 4, IDLE);
        let first = start(&mut t, 1, t0);
        assert!(t.up(&1, first));
        assert!(!t.up(&1, first), "an Up is heard once");
        let Open::Start {
            id: second,
            replaced: Some(old),
            ..
        } = t.open(1, 1, "h", 0, t0)
        else {
            panic!("not replaced");
        };
        assert!(old.tell_down, "the replaced session's Up was heard");
        assert!(!t.down(&1, first), "its own Down comes late: dropped");
        assert!(t.up(&1, second));
        assert!(t.down(&1, second));
        assert!(!t.down(&1, second), "a Down is heard once");
        let gone = t.ended(&1, second).expect("the live session ended");
        assert!(!gone.tell_down, "the engine heard its Down already");
        assert!(t.is_empty());
    }

    /// A session replaced (or banned) before its Up reached us never reaches the engine.
    #[test]
    fn a_session_the_engine_never_heard_of_gets_no_down() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(US, 4, IDLE);
        let first = start(&mut t, 1, t0);
        let Open::Start {
            id: second,
            replaced: Some(old),
            ..
        } = t.open(1, 1, "h", 0, t0)
        else {
            panic!("not replaced");
        };
        assert!(!old.tell_down);
        assert!(!t.up(&1, first), "a replaced session's late Up");
        assert!(!t.down(&1, first));
        let banned = t.remove(&1).expect("a session to end");
        assert_eq!((banned.id, banned.tell_down), (second, false));
        assert!(!t.up(&1, second), "a banned session's late Up");
    }

    #[test]
    fn evicted_and_banned_sessions_tell_the_engine_down_once() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(US, 1, IDLE);
        let a = start(&mut t, 1, t0);
        assert!(t.up(&1, a));
        let Open::Start {
            id: b,
            evicted: Some(gone),
            ..
        } = t.open(2, 2, "h", 0, secs(t0, 60))
        else {
            panic!("not evicted");
        };
        assert_eq!((gone.peer, gone.tell_down), (1, true));
        assert!(!t.down(&1, a), "the evicted session's own Down");
        assert!(t.up(&2, b));
        let banned = t.remove(&2).expect("a session to end");
        assert!(banned.tell_down);
        assert!(!t.down(&2, b));
        assert!(t.remove(&2).is_none());
        assert!(t.is_empty());
    }

    /// Both sides dialled: the stream opened by the smaller peer ID wins on both ends.
    #[test]
    fn both_sides_dialled_keeps_the_smaller_openers_stream() {
        let t0 = Instant::now();
        let mut t = SessionTable::new(US, 4, IDLE);
        // Peer 3 < us: its stream wins over ours, whichever came first.
        start(&mut t, 3, t0);
        assert!(matches!(t.open(3, US, "ours", 0, t0), Open::Kept));
        assert!(matches!(t.open(9, US, "ours", 0, t0), Open::Start { .. }));
        // Peer 9 > us: ours wins; its stream is dropped.
        assert!(matches!(t.open(9, 9, "theirs", 0, t0), Open::Kept));
        let mut t = SessionTable::new(US, 4, IDLE);
        assert!(matches!(t.open(3, US, "ours", 0, t0), Open::Start { .. }));
        assert!(matches!(
            t.open(3, 3, "theirs", 0, t0),
            Open::Start {
                replaced: Some(_),
                ..
            }
        ));
        assert_eq!(t.get(&3), Some(&"theirs"));
        // The same opener again (a restart) replaces.
        assert!(matches!(
            t.open(3, 3, "again", 0, t0),
            Open::Start {
                replaced: Some(_),
                ..
            }
        ));
    }

    /// Streams, replacements, evictions, bans and sessions' events in a pseudo-random order:
    /// the engine, counting peers by events as the publisher does, always counts the peers
    /// whose live session it heard is up, never goes below zero, and ends at zero.
    #[test]
    fn an_engine_counting_by_events_never_drifts() {
        let t0 = Instant::now();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut t: SessionTable<u32, ()> = SessionTable::new(US, 3, Duration::from_secs(2));
        // Sessions whose task runs: (peer, id, said up).
        let mut running: Vec<(u32, u64, bool)> = Vec::new();
        let mut count: i64 = 0;
        let tell = |count: &mut i64, gone: Option<Gone<u32, ()>>| {
            if gone.is_some_and(|g| g.tell_down) {
                *count -= 1;
            }
        };
        // Peers on both sides of us in the tie-break.
        const PEERS: [u32; 6] = [1, 2, 3, 7, 8, 9];
        for step in 0..20_000u64 {
            let now = secs(t0, step / 10);
            match next(5) {
                0 | 1 => {
                    let peer = PEERS[next(6) as usize];
                    let opener = if next(2) == 0 { peer } else { US };
                    if let Open::Start {
                        id,
                        replaced,
                        evicted,
                    } = t.open(peer, opener, (), 0, now)
                    {
                        tell(&mut count, replaced);
                        tell(&mut count, evicted);
                        running.push((peer, id, false));
                    }
                }
                2 if !running.is_empty() => {
                    // A session says it is up (once).
                    let i = next(running.len() as u64) as usize;
                    let (peer, id, said) = &mut running[i];
                    if !*said {
                        *said = true;
                        if t.up(peer, *id) {
                            count += 1;
                        }
                    }
                }
                3 if !running.is_empty() => {
                    // A session's task ends: its Down (if it said Up), then its end.
                    let (peer, id, said) = running.swap_remove(next(running.len() as u64) as usize);
                    if said && t.down(&peer, id) {
                        count -= 1;
                    }
                    tell(&mut count, t.ended(&peer, id));
                }
                4 if next(20) == 0 => tell(&mut count, t.remove(&PEERS[next(6) as usize])),
                _ => {}
            }
            assert!(count >= 0 && count as usize <= t.len(), "step {step}");
            assert_eq!(count as usize, t.told_up.len(), "step {step}");
        }
        for (peer, id, said) in running {
            if said && t.down(&peer, id) {
                count -= 1;
            }
            tell(&mut count, t.ended(&peer, id));
        }
        assert_eq!((count, t.len()), (0, 0));
    }
}
