//! Discovery: when to look for the swarm's peers and head record in the DHT, when to announce
//! this node there, when to dial the bootstrap peers again, which peers found in the DHT or on
//! the LAN to dial, and what each head lookup has found so far.
//!
//! Owns the lookup and announcement timers with their backoff, the bootstrap redial backoff
//! ([`Discovery`]), and the head lookups under way with the best head each has found
//! ([`HeadLookups`]). It must not touch the DHT or the swarm, read the clock or check a
//! signature: the caller passes `now` and what it sees of the swarm ([`View`], [`Seen`]),
//! carries out the [`DiscoveryAction`]s it gets back, reports the head lookups it started, and
//! hands in only heads it has verified, with their revision.
//!
//! Policy:
//! - Lookups: the first look is `first_look` after the start, or as soon as the DHT routing
//!   table gets its first peer. While no session is open and the routing table holds a peer,
//!   each look asks for the swarm key's providers and the head record, and the wait before the
//!   next doubles from `lookup_every` up to `lookup_max` (nobody found yet: ask less often).
//!   Once a session is open the wait is back to `lookup_every` for the next time, and only the
//!   head record is looked up, every `refresh_every`. A starved node (a download under way
//!   whose sessions all moved no chunk bytes for `STARVED_AFTER`: its peers hold nothing it
//!   lacks, and the publisher is not among them) looks for providers as a node with no session
//!   does.
//! - Announcing: once the routing table holds a peer, the node provides the swarm key (and puts
//!   the newest head it holds) and again every `provide_every`, or at the next look after a new
//!   external address is confirmed (so that the DHT hands out that address), which is at once.
//! - A node without a swarm key (a DHT-only node) neither looks nor announces.
//! - Bootstrap: while no peer is connected and no session is open, or while the node is
//!   starved, the bootstrap addresses are dialled again, `redial_min` after the start and then
//!   with the wait doubling up to `redial_max`; a connected peer (that feeds the download)
//!   resets the wait to `redial_min`. Redialling only a node with no peer at all stranded
//!   subscribers of a `--once` swarm: connected to a dozen peers that had finished or held the
//!   same chunks, never to the publisher again, they waited for ever for the chunks only it
//!   still held (swarm-sim `--n 100 --once --leave 0.2`: 42 of 86 subscribers, each 63 of 64
//!   chunks, 6-27 peers, none of them the publisher, whose slots were all free).
//! - Found peers: a provider or a LAN (mDNS) peer is dialled unless it is this node, connected
//!   already, banned, or the node has no room to dial (see `sessions::dial_target`).
//! - Head lookups: each keeps the newest head (highest revision) it has found. One the node runs
//!   on its own (no asker) hands each newer head found at a peer to the engine as it arrives;
//!   one someone asked for answers them once, when it ends, with the best head.
//!
//! Invariant: [`Discovery::poll_timeout`] is the earliest of the next look and the next
//! redial, both always set; a head lookup is held from [`HeadLookups::handle_started`] to
//! [`HeadLookups::handle_finished`], and its best head only moves to a higher revision.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Discovery's waits.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// From the start to the first look.
    pub first_look: Duration,
    /// Between looks while no session is open (the first wait of the backoff).
    pub lookup_every: Duration,
    /// Longest wait between looks while no swarm peer is found.
    pub lookup_max: Duration,
    /// Between looks while a session is open.
    pub refresh_every: Duration,
    /// Between announcements of this node as a provider of the swarm key.
    pub provide_every: Duration,
    /// First wait between redials of the bootstrap peers.
    pub redial_min: Duration,
    /// Longest wait between redials of the bootstrap peers.
    pub redial_max: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            first_look: Duration::from_millis(500),
            lookup_every: Duration::from_secs(2),
            lookup_max: Duration::from_secs(60),
            refresh_every: Duration::from_secs(30),
            provide_every: Duration::from_secs(300),
            redial_min: Duration::from_secs(2),
            // A node with no peer at all dials its bootstrap peers at least this often: a
            // relay or bootstrap host that died and came back is reached again within it (at
            // 60 s, a NATed publisher came back 33 s after its relay did). A handful of dials
            // every 15 s, only while nobody is connected, costs nothing worth saving.
            redial_max: Duration::from_secs(15),
        }
    }
}

/// What discovery is for, on this node.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig<P, A> {
    /// This node (never dialled).
    pub local: P,
    /// Dialled again while no peer is connected.
    pub bootstrap: Vec<A>,
    /// The node belongs to a swarm, whose key it looks up and provides (false on a DHT-only
    /// node).
    pub swarm_key: bool,
    /// The node knows the swarm's publisher, so the swarm's head record has a key.
    pub head_key: bool,
    pub timings: Timings,
}

/// What the caller sees of the swarm at a timeout; facts discovery does not own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    /// The DHT routing table holds at least one peer.
    pub routable: bool,
    /// Control sessions open.
    pub sessions: usize,
    /// Peers connected, with a session or not.
    pub connected: usize,
    /// A download is under way and every session moved no chunk bytes for a while (see
    /// `SessionTable::idle_for`): the peers we have cannot feed it.
    pub starved: bool,
}

/// What the caller knows of a peer that discovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub connected: bool,
    pub banned: bool,
}

/// What discovery asks the caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryAction<P, A> {
    /// Provide the swarm key and put the newest head held; report success with
    /// [`Discovery::handle_provided`].
    Provide,
    /// Look for providers of the swarm key; the next look is `retry_in` away.
    FindProviders { retry_in: Duration },
    /// Look up the swarm's head record, and report the lookup with
    /// [`HeadLookups::handle_started`] (no asker).
    LookupHead,
    /// No peer is connected, or the node is starved: dial these bootstrap addresses (the caller
    /// leaves out those of peers it has a session with); the next round is `retry_in` away.
    Redial { addrs: Vec<A>, retry_in: Duration },
    /// Dial a peer found in the DHT (at what the DHT knows of it, and through relays).
    DialProvider(P),
    /// Dial a peer found on the LAN, at this address.
    DialNeighbour(P, A),
}

/// When to look, announce and redial. `P` identifies peers, `A` addresses.
#[derive(Debug)]
pub struct Discovery<P, A> {
    config: DiscoveryConfig<P, A>,
    next_look: Instant,
    lookup_backoff: Duration,
    /// When the swarm key was last provided; `None` until it is, or to provide at the next look.
    provided_at: Option<Instant>,
    next_redial: Instant,
    redial_backoff: Duration,
}

impl<P: Clone + Eq, A: Clone> Discovery<P, A> {
    pub fn new(config: DiscoveryConfig<P, A>, now: Instant) -> Self {
        let t = config.timings;
        Discovery {
            next_look: now + t.first_look,
            lookup_backoff: t.lookup_every,
            provided_at: None,
            next_redial: now + t.redial_min,
            redial_backoff: t.redial_min,
            config,
        }
    }

    /// When [`Discovery::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_look.min(self.next_redial)
    }

    /// Time passed: look, announce or redial if it is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, view: View) -> Vec<DiscoveryAction<P, A>> {
        let mut actions = Vec::new();
        if now >= self.next_look {
            self.look(now, view, &mut actions);
        }
        if now >= self.next_redial {
            self.redial(now, view, &mut actions);
        }
        actions
    }

    /// The swarm key was provided at `now`.
    pub fn handle_provided(&mut self, now: Instant) {
        self.provided_at = Some(now);
    }

    /// A new peer entered the DHT routing table: if nothing was provided yet, this is the first
    /// contact, so look and announce at once.
    pub fn handle_routing_updated(&mut self, now: Instant) {
        if self.provided_at.is_none() {
            self.next_look = now;
        }
    }

    /// An external address was confirmed: announce again at once, so that the DHT hands it out.
    pub fn handle_new_address(&mut self, now: Instant) {
        self.provided_at = None;
        self.next_look = now;
    }

    /// The DHT named `peer` as a provider of the swarm key.
    pub fn handle_provider(
        &self,
        peer: P,
        seen: Seen,
        dial_room: usize,
    ) -> Option<DiscoveryAction<P, A>> {
        self.worth_dialing(&peer, seen, dial_room)
            .then_some(DiscoveryAction::DialProvider(peer))
    }

    /// mDNS found `peer` on the LAN at `addr`.
    pub fn handle_neighbour(
        &self,
        peer: P,
        addr: A,
        seen: Seen,
        dial_room: usize,
    ) -> Option<DiscoveryAction<P, A>> {
        self.worth_dialing(&peer, seen, dial_room)
            .then_some(DiscoveryAction::DialNeighbour(peer, addr))
    }

    fn worth_dialing(&self, peer: &P, seen: Seen, dial_room: usize) -> bool {
        *peer != self.config.local && !seen.connected && !seen.banned && dial_room > 0
    }

    fn look(&mut self, now: Instant, view: View, actions: &mut Vec<DiscoveryAction<P, A>>) {
        let t = self.config.timings;
        if !self.config.swarm_key {
            self.next_look = now + t.refresh_every;
            return;
        }
        if view.routable && self.provide_due(now) {
            actions.push(DiscoveryAction::Provide);
        }
        let lonely = view.routable && (view.sessions == 0 || view.starved);
        if lonely {
            let retry_in = self.lookup_backoff;
            actions.push(DiscoveryAction::FindProviders { retry_in });
        }
        if view.routable && self.config.head_key {
            actions.push(DiscoveryAction::LookupHead);
        }
        if view.sessions > 0 && !view.starved {
            self.lookup_backoff = t.lookup_every;
            self.next_look = now + t.refresh_every;
            return;
        }
        self.next_look = now + self.lookup_backoff;
        if lonely {
            self.lookup_backoff = (self.lookup_backoff * 2).min(t.lookup_max);
        }
    }

    fn provide_due(&self, now: Instant) -> bool {
        let every = self.config.timings.provide_every;
        self.provided_at
            .is_none_or(|at| now.saturating_duration_since(at) >= every)
    }

    fn redial(&mut self, now: Instant, view: View, actions: &mut Vec<DiscoveryAction<P, A>>) {
        let t = self.config.timings;
        let alone = view.sessions == 0 && view.connected == 0;
        if !(alone || view.starved) || self.config.bootstrap.is_empty() {
            self.redial_backoff = t.redial_min;
            self.next_redial = now + t.redial_min;
            return;
        }
        let retry_in = self.redial_backoff;
        let addrs = self.config.bootstrap.clone();
        actions.push(DiscoveryAction::Redial { addrs, retry_in });
        self.next_redial = now + retry_in;
        self.redial_backoff = (retry_in * 2).min(t.redial_max);
    }
}

/// A newer head a lookup the node runs on its own found at `peer`: for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHead<P, H> {
    pub peer: P,
    pub head: H,
}

/// A lookup someone asked for ended: hand `head`, the best found, to `asker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<R, H> {
    pub asker: R,
    pub head: Option<H>,
}

#[derive(Debug)]
struct Lookup<H, R> {
    asker: Option<R>,
    best: Option<(u64, H)>,
}

/// Head lookups under way. `Q` identifies a lookup, `H` is a verified head, `R` whoever asked
/// (the caller's reply channel, carried and handed back, never used here).
#[derive(Debug)]
pub struct HeadLookups<Q, H, R> {
    lookups: HashMap<Q, Lookup<H, R>>,
}

impl<Q, H, R> Default for HeadLookups<Q, H, R> {
    fn default() -> Self {
        HeadLookups {
            lookups: HashMap::new(),
        }
    }
}

impl<Q: Eq + Hash, H: Clone, R> HeadLookups<Q, H, R> {
    /// The caller started lookup `id`, for `asker` or (`None`) on its own.
    pub fn handle_started(&mut self, id: Q, asker: Option<R>) {
        let lookup = Lookup { asker, best: None };
        self.lookups.insert(id, lookup);
    }

    /// True while lookup `id` is under way (results of other queries are not ours).
    pub fn is_running(&self, id: &Q) -> bool {
        self.lookups.contains_key(id)
    }

    /// Lookup `id` found `head`, verified, at revision `revision`, from `from` (`None`: from
    /// the local store). A newer head than any found before becomes the best; found at a peer
    /// by a lookup nobody asked for, it is handed on.
    pub fn handle_found<P>(
        &mut self,
        id: &Q,
        from: Option<P>,
        revision: u64,
        head: H,
    ) -> Option<NewHead<P, H>> {
        let lookup = self.lookups.get_mut(id)?;
        if lookup
            .best
            .as_ref()
            .is_some_and(|(best, _)| *best >= revision)
        {
            return None;
        }
        lookup.best = Some((revision, head.clone()));
        match (from, &lookup.asker) {
            (Some(peer), None) => Some(NewHead { peer, head }),
            _ => None,
        }
    }

    /// Lookup `id` ended: its answer, if someone asked for it.
    pub fn handle_finished(&mut self, id: &Q) -> Option<Answer<R, H>> {
        let lookup = self.lookups.remove(id)?;
        let asker = lookup.asker?;
        let head = lookup.best.map(|(_, h)| h);
        Some(Answer { asker, head })
    }

    /// Lookups under way.
    pub fn len(&self) -> usize {
        self.lookups.len()
    }

    /// True if no lookup is under way.
    pub fn is_empty(&self) -> bool {
        self.lookups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DiscoveryAction as Do;

    const ME: u32 = 0;

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn config(bootstrap: Vec<&'static str>) -> DiscoveryConfig<u32, &'static str> {
        DiscoveryConfig {
            local: ME,
            bootstrap,
            swarm_key: true,
            head_key: true,
            timings: Timings::default(),
        }
    }

    fn alone_in_the_dht() -> View {
        View {
            routable: true,
            sessions: 0,
            connected: 1,
            starved: false,
        }
    }

    fn in_a_session() -> View {
        View {
            routable: true,
            sessions: 1,
            connected: 1,
            starved: false,
        }
    }

    /// The waits between the next `n` looks while nothing changes.
    fn look_waits(d: &mut Discovery<u32, &str>, view: View, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            let now = d.next_look;
            d.handle_timeout(now, view);
            out.push((d.next_look - now).as_secs());
        }
        out
    }

    #[test]
    fn nothing_is_due_before_the_first_look() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![]), t0);
        assert_eq!(d.poll_timeout(), t0 + Duration::from_millis(500));
        assert!(d.handle_timeout(t0, alone_in_the_dht()).is_empty());
        assert_eq!(d.poll_timeout(), t0 + Duration::from_millis(500));
    }

    #[test]
    fn a_lonely_node_provides_looks_up_and_backs_off_to_the_maximum() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![]), t0);
        let first = d.poll_timeout();
        let actions = d.handle_timeout(first, alone_in_the_dht());
        let found = Do::FindProviders {
            retry_in: Duration::from_secs(2),
        };
        assert_eq!(actions, [Do::Provide, found, Do::LookupHead]);
        d.handle_provided(first);
        assert_eq!(d.next_look, first + Duration::from_secs(2));
        assert_eq!(
            look_waits(&mut d, alone_in_the_dht(), 7),
            [4, 8, 16, 32, 60, 60, 60]
        );
    }

    #[test]
    fn a_session_stops_the_provider_lookups_and_resets_the_backoff() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![]), t0);
        d.handle_provided(t0);
        assert_eq!(look_waits(&mut d, alone_in_the_dht(), 4), [2, 4, 8, 16]);
        let now = d.next_look;
        assert_eq!(d.handle_timeout(now, in_a_session()), [Do::LookupHead]);
        assert_eq!(d.next_look, now + Duration::from_secs(30));
        // The session ended: look again soon, then back off again from the start.
        assert_eq!(look_waits(&mut d, alone_in_the_dht(), 3), [2, 4, 8]);
    }

    #[test]
    fn nothing_is_looked_up_until_the_dht_has_a_peer_then_at_once() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![]), t0);
        let unroutable = View::default();
        assert!(d.handle_timeout(d.poll_timeout(), unroutable).is_empty());
        assert_eq!(
            look_waits(&mut d, unroutable, 3),
            [2, 2, 2],
            "no lookup, so no backoff"
        );
        let contact = secs(t0, 8);
        assert!(d.next_look > contact);
        d.handle_routing_updated(contact);
        assert_eq!(d.poll_timeout(), contact);
        let actions = d.handle_timeout(contact, alone_in_the_dht());
        assert_eq!(actions[0], Do::Provide);
        d.handle_provided(contact);
        // Provided: further routing updates change nothing.
        d.handle_routing_updated(secs(t0, 9));
        assert_eq!(d.next_look, contact + Duration::from_secs(2));
    }

    #[test]
    fn the_key_is_provided_again_every_five_minutes_and_at_once_for_a_new_address() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![]), t0);
        let provides = |d: &mut Discovery<u32, &str>, now| {
            let a = d.handle_timeout(now, in_a_session());
            let p = a.contains(&Do::Provide);
            if p {
                d.handle_provided(now);
            }
            p
        };
        assert!(provides(&mut d, secs(t0, 1)));
        assert!(!provides(&mut d, secs(t0, 31)));
        assert!(!provides(&mut d, secs(t0, 271)));
        assert!(provides(&mut d, secs(t0, 301)));
        d.handle_new_address(secs(t0, 320));
        assert_eq!(d.next_look, secs(t0, 320));
        assert!(provides(&mut d, secs(t0, 320)));
    }

    #[test]
    fn a_failed_announcement_is_tried_again_at_the_next_look() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![]), t0);
        assert_eq!(
            d.handle_timeout(secs(t0, 1), in_a_session())[0],
            Do::Provide
        );
        assert_eq!(
            d.handle_timeout(secs(t0, 31), in_a_session())[0],
            Do::Provide
        );
    }

    #[test]
    fn a_dht_only_node_neither_looks_nor_provides() {
        let t0 = Instant::now();
        let cfg = DiscoveryConfig {
            swarm_key: false,
            head_key: false,
            ..config(vec![])
        };
        let mut d = Discovery::new(cfg, t0);
        assert!(d.handle_timeout(secs(t0, 1), alone_in_the_dht()).is_empty());
        assert_eq!(
            d.next_look,
            secs(t0, 31),
            "every refresh_every, doing nothing"
        );
        assert!(d
            .handle_timeout(secs(t0, 31), alone_in_the_dht())
            .is_empty());
    }

    #[test]
    fn without_a_head_key_only_providers_are_looked_up() {
        let t0 = Instant::now();
        let cfg = DiscoveryConfig {
            head_key: false,
            ..config(vec![])
        };
        let mut d = Discovery::new(cfg, t0);
        d.handle_provided(t0);
        let actions = d.handle_timeout(secs(t0, 1), alone_in_the_dht());
        assert!(matches!(actions[..], [Do::FindProviders { .. }]));
    }

    #[test]
    fn bootstrap_peers_are_redialled_with_backoff_while_nobody_is_connected() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec!["boot1", "boot2"]), t0);
        let nobody = View::default();
        let redials = |d: &mut Discovery<u32, &'static str>, now| {
            d.handle_timeout(now, nobody)
                .into_iter()
                .filter_map(|a| match a {
                    Do::Redial { addrs, retry_in } => Some((addrs, retry_in.as_secs())),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert!(redials(&mut d, secs(t0, 1)).is_empty(), "too early");
        assert_eq!(redials(&mut d, secs(t0, 2)), [(vec!["boot1", "boot2"], 2)]);
        let mut now = secs(t0, 2);
        let mut waits = Vec::new();
        for _ in 0..6 {
            now += Duration::from_secs(waits.last().copied().unwrap_or(2));
            let r = redials(&mut d, now);
            waits.push(r[0].1);
        }
        assert_eq!(waits, [4, 8, 15, 15, 15, 15]);
        // A peer connected: no redial, and the backoff starts over.
        let connected = View {
            connected: 1,
            ..nobody
        };
        now += Duration::from_secs(60);
        d.handle_timeout(now, connected);
        assert_eq!(d.next_redial, now + Duration::from_secs(2));
        now += Duration::from_secs(2);
        assert_eq!(redials(&mut d, now)[0].1, 2);
    }

    /// Sessions that feed nothing are no reason to stop looking: a starved node redials its
    /// bootstrap peers and looks for providers, with the same backoffs, until it is fed.
    #[test]
    fn a_starved_node_redials_and_looks_for_providers() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec!["publisher"]), t0);
        d.handle_provided(t0);
        let starved = View {
            starved: true,
            ..in_a_session()
        };
        let actions = d.handle_timeout(secs(t0, 2), starved);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Do::Redial { retry_in, .. } if retry_in.as_secs() == 2)));
        assert!(actions
            .iter()
            .any(|a| matches!(a, Do::FindProviders { .. })));
        let actions = d.handle_timeout(secs(t0, 4), starved);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Do::Redial { retry_in, .. } if retry_in.as_secs() == 4)));
        // Fed again: the session is enough, and the waits start over.
        let actions = d.handle_timeout(secs(t0, 8), in_a_session());
        assert!(!actions.iter().any(|a| matches!(a, Do::Redial { .. })));
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Do::FindProviders { .. })));
        assert_eq!(d.next_redial, secs(t0, 10));
    }

    #[test]
    fn without_bootstrap_addresses_nothing_is_redialled() {
        let t0 = Instant::now();
        let mut d = Discovery::new(config(vec![]), t0);
        let actions = d.handle_timeout(secs(t0, 2), View::default());
        assert!(!actions.iter().any(|a| matches!(a, Do::Redial { .. })));
        assert_eq!(d.next_redial, secs(t0, 4));
    }

    #[test]
    fn found_peers_are_dialled_unless_known_banned_ourselves_or_sessions_are_full() {
        let t0 = Instant::now();
        let d = Discovery::new(config(vec![]), t0);
        let fresh = Seen::default();
        assert_eq!(d.handle_provider(7, fresh, 1), Some(Do::DialProvider(7)));
        assert_eq!(d.handle_provider(ME, fresh, 1), None);
        let connected = Seen {
            connected: true,
            ..fresh
        };
        assert_eq!(d.handle_provider(7, connected, 1), None);
        let banned = Seen {
            banned: true,
            ..fresh
        };
        assert_eq!(d.handle_neighbour(7, "lan", banned, 1), None);
        assert_eq!(d.handle_neighbour(7, "lan", fresh, 0), None, "no dial room");
        assert_eq!(
            d.handle_neighbour(7, "lan", fresh, 1),
            Some(Do::DialNeighbour(7, "lan"))
        );
    }

    type Lookups = HeadLookups<u32, &'static str, &'static str>;

    #[test]
    fn our_own_lookup_hands_on_each_newer_head_found_at_a_peer() {
        let mut h = Lookups::default();
        h.handle_started(1, None);
        assert_eq!(
            h.handle_found(&1, Some(10), 5, "r5"),
            Some(NewHead {
                peer: 10,
                head: "r5"
            })
        );
        assert_eq!(h.handle_found(&1, Some(11), 5, "r5"), None, "not newer");
        assert_eq!(h.handle_found(&1, Some(11), 3, "r3"), None, "older");
        assert_eq!(
            h.handle_found::<u32>(&1, None, 6, "r6"),
            None,
            "no peer to credit"
        );
        assert_eq!(
            h.handle_found(&1, Some(12), 7, "r7"),
            Some(NewHead {
                peer: 12,
                head: "r7"
            })
        );
        assert_eq!(h.handle_finished(&1), None, "nobody asked");
        assert!(h.is_empty());
    }

    #[test]
    fn an_asked_lookup_answers_once_with_the_best_head_when_it_ends() {
        let mut h = Lookups::default();
        h.handle_started(1, Some("engine"));
        h.handle_started(2, Some("cli"));
        assert_eq!(h.handle_found(&1, Some(10), 4, "r4"), None);
        assert_eq!(h.handle_found(&1, Some(11), 9, "r9"), None);
        assert_eq!(h.handle_found(&1, Some(12), 6, "r6"), None);
        assert_eq!(h.len(), 2);
        assert_eq!(
            h.handle_finished(&1),
            Some(Answer {
                asker: "engine",
                head: Some("r9")
            })
        );
        assert_eq!(h.handle_finished(&1), None, "answered once");
        assert_eq!(
            h.handle_finished(&2),
            Some(Answer {
                asker: "cli",
                head: None
            })
        );
    }

    #[test]
    fn results_of_unknown_lookups_are_ignored() {
        let mut h = Lookups::default();
        assert!(!h.is_running(&3));
        assert_eq!(h.handle_found(&3, Some(10), 1, "r1"), None);
        assert_eq!(h.handle_finished(&3), None);
        assert!(h.is_empty());
    }
}
