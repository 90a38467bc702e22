//! NAT traversal: which relays this node holds reservations on, how others reach it, and when
//! a relayed connection gives way to a direct one.
//!
//! Owns what AutoNAT last said of this node, the reservations it holds (each relay with the
//! listener that carries its reservation), the retry timer for reservations, and the peers
//! whose session is to be reopened on a direct connection. It must not listen, dial, close a
//! connection or read the clock, and it does not know which relays exist: the caller's peer
//! book does, and passes those connected at each call. Hole punching itself is DCUtR's work in
//! the swarm; its outcome is only counted, by the caller.
//!
//! Policy:
//! - Reservations: a node that is a relay itself, or that AutoNAT found public, reserves
//!   nowhere. Any other (behind a NAT, or not known yet) holds up to `max_reservations`, each
//!   on a different connected relay. It asks for the ones it lacks when AutoNAT's verdict
//!   changes, when a relay it holds none on appears or comes back, and every `retry`. A
//!   reservation ends when the listener carrying it closes; the next ask replaces it.
//! - Reachability: public if the node is a relay, has a confirmed external address that is not
//!   through a relay, or AutoNAT says public; otherwise relayed while it holds a reservation;
//!   otherwise nated if AutoNAT says private; otherwise unknown.
//! - Direct beats relayed: once a direct connection to a peer is up, its relayed connections
//!   close (chunks should not cost a relay's bandwidth); a session that ran on them is opened
//!   again on the direct connection once it has ended.
//!
//! Invariant: at most `max_reservations` reservations, at most one per relay, and none while
//! the node is a relay; a peer is in `reopen` only from the moment its relayed connections were
//! closed under a session until the caller reports it has no session left.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often a node behind a NAT retries the relay reservations it does not hold.
pub const RESERVE_RETRY: Duration = Duration::from_secs(10);

/// NAT traversal limits.
#[derive(Debug, Clone, Copy)]
pub struct NatConfig {
    /// This node serves as a relay: it is public and reserves nowhere.
    pub relay_server: bool,
    /// Reservations held at once.
    pub max_reservations: usize,
    /// How often missing reservations are asked for again.
    pub retry: Duration,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            relay_server: false,
            max_reservations: crate::config::MAX_RELAY_RESERVATIONS,
            retry: RESERVE_RETRY,
        }
    }
}

/// What AutoNAT last said of this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AutoNat {
    #[default]
    Unknown,
    Private,
    Public,
}

/// How others reach this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    Public,
    Relayed,
    Nated,
    Unknown,
}

impl Reachability {
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Public => "public",
            Reachability::Relayed => "relayed",
            Reachability::Nated => "nated",
            Reachability::Unknown => "unknown",
        }
    }
}

/// Ask `relay`, reached at `addr`, for a reservation; report the listener that carries it with
/// [`Nat::handle_reserving`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserve<P, A> {
    pub relay: P,
    pub addr: A,
}

/// Reservations, reachability and relayed-to-direct moves. `P` identifies peers and `L` the
/// listeners that carry reservations; addresses (`A`) are only passed through.
#[derive(Debug)]
pub struct Nat<P, L> {
    config: NatConfig,
    status: AutoNat,
    reservations: HashMap<P, L>,
    next_reserve: Instant,
    reopen: HashSet<P>,
}

impl<P: Clone + Eq + Hash, L: PartialEq> Nat<P, L> {
    pub fn new(config: NatConfig, now: Instant) -> Self {
        Nat {
            config,
            status: AutoNat::Unknown,
            reservations: HashMap::new(),
            next_reserve: now + config.retry,
            reopen: HashSet::new(),
        }
    }

    /// When [`Nat::handle_timeout`] has something to do next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_reserve
    }

    /// Time passed: if the retry is due, the reservations to ask for among `relays` (the
    /// known relays connected now, with the address each is reached at).
    pub fn handle_timeout<A: Clone>(
        &mut self,
        now: Instant,
        relays: &[(P, A)],
    ) -> Vec<Reserve<P, A>> {
        if now < self.next_reserve {
            return Vec::new();
        }
        self.next_reserve = now + self.config.retry;
        self.reserve(relays)
    }

    /// AutoNAT's verdict changed.
    pub fn handle_status<A: Clone>(
        &mut self,
        status: AutoNat,
        relays: &[(P, A)],
    ) -> Vec<Reserve<P, A>> {
        self.status = status;
        self.reserve(relays)
    }

    /// `relay` was learnt or is connected again: ask for a reservation on it (or another
    /// connected relay in `relays`) unless it holds one already.
    pub fn handle_relay_up<A: Clone>(
        &mut self,
        relay: &P,
        relays: &[(P, A)],
    ) -> Vec<Reserve<P, A>> {
        if self.reservations.contains_key(relay) {
            return Vec::new();
        }
        self.reserve(relays)
    }

    /// The reservation asked of `relay` is carried by `listener`.
    pub fn handle_reserving(&mut self, relay: P, listener: L) {
        self.reservations.insert(relay, listener);
    }

    /// `listener` closed: the relays whose reservation it carried (they are asked again at the
    /// next retry).
    pub fn handle_listener_closed(&mut self, listener: &L) -> Vec<P> {
        let lost: Vec<P> = self
            .reservations
            .iter()
            .filter(|(_, l)| *l == listener)
            .map(|(p, _)| p.clone())
            .collect();
        for relay in &lost {
            self.reservations.remove(relay);
        }
        lost
    }

    /// A direct connection to `peer` is up while `relayed` relayed ones are open, and a session
    /// with it is open (`in_session`) or not. True: close the relayed connections (the session
    /// is then opened again, see [`Nat::handle_session_ended`]).
    pub fn handle_direct(&mut self, peer: P, relayed: usize, in_session: bool) -> bool {
        if relayed == 0 {
            return false;
        }
        if in_session {
            self.reopen.insert(peer);
        }
        true
    }

    /// `peer` has no session left. True if its session was closed for a direct connection,
    /// which is to carry a new one (if it is still connected).
    pub fn handle_session_ended(&mut self, peer: &P) -> bool {
        self.reopen.remove(peer)
    }

    /// How others reach this node; `direct_external`: a confirmed external address that is not
    /// through a relay.
    pub fn reachability(&self, direct_external: bool) -> Reachability {
        let public = self.config.relay_server || direct_external || self.status == AutoNat::Public;
        if public {
            Reachability::Public
        } else if !self.reservations.is_empty() {
            Reachability::Relayed
        } else if self.status == AutoNat::Private {
            Reachability::Nated
        } else {
            Reachability::Unknown
        }
    }

    /// Reservations held.
    pub fn reservations(&self) -> usize {
        self.reservations.len()
    }

    /// The reservations to ask for among `relays` now.
    fn reserve<A: Clone>(&self, relays: &[(P, A)]) -> Vec<Reserve<P, A>> {
        if self.config.relay_server || self.status == AutoNat::Public {
            return Vec::new();
        }
        let wanted = self
            .config
            .max_reservations
            .saturating_sub(self.reservations.len());
        relays
            .iter()
            .filter(|(relay, _)| !self.reservations.contains_key(relay))
            .take(wanted)
            .map(|(relay, addr)| Reserve {
                relay: relay.clone(),
                addr: addr.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NatConfig {
        NatConfig {
            relay_server: false,
            max_reservations: 2,
            retry: Duration::from_secs(10),
        }
    }

    fn relays(ids: &[u32]) -> Vec<(u32, &'static str)> {
        ids.iter().map(|i| (*i, "addr")).collect()
    }

    fn asked(reserves: Vec<Reserve<u32, &str>>) -> Vec<u32> {
        reserves.into_iter().map(|r| r.relay).collect()
    }

    /// Every reservation asked for is granted, on a listener of its own (the relay's id + 100).
    fn grant(nat: &mut Nat<u32, u32>, reserves: Vec<Reserve<u32, &str>>) -> Vec<u32> {
        let relays = asked(reserves);
        for r in &relays {
            nat.handle_reserving(*r, *r + 100);
        }
        relays
    }

    #[test]
    fn a_node_not_known_public_reserves_on_a_few_connected_relays() {
        let t0 = Instant::now();
        let mut nat = Nat::new(config(), t0);
        let three = relays(&[1, 2, 3]);
        let reserves = nat.handle_status(AutoNat::Private, &three);
        let held = grant(&mut nat, reserves);
        assert_eq!(held.len(), 2, "max_reservations");
        assert!(nat.handle_status(AutoNat::Unknown, &three).is_empty());
        assert!(nat.handle_relay_up(&held[0], &three).is_empty());
        assert_eq!(nat.reservations(), 2);
    }

    #[test]
    fn a_public_node_or_a_relay_reserves_nowhere() {
        let t0 = Instant::now();
        let one = relays(&[1]);
        let mut nat = Nat::<u32, u32>::new(config(), t0);
        assert!(nat.handle_status(AutoNat::Public, &one).is_empty());
        assert!(nat.handle_timeout(t0 + config().retry, &one).is_empty());
        let relay = NatConfig {
            relay_server: true,
            ..config()
        };
        let mut nat = Nat::<u32, u32>::new(relay, t0);
        assert!(nat.handle_status(AutoNat::Private, &one).is_empty());
        assert!(nat.handle_relay_up(&1, &one).is_empty());
    }

    #[test]
    fn a_lost_reservation_is_asked_for_again_at_the_next_retry() {
        let t0 = Instant::now();
        let mut nat = Nat::new(config(), t0);
        let two = relays(&[1, 2]);
        let reserves = nat.handle_status(AutoNat::Private, &two);
        grant(&mut nat, reserves);
        assert_eq!(nat.handle_listener_closed(&101), [1]);
        assert!(nat.handle_listener_closed(&999).is_empty());
        assert_eq!(nat.reservations(), 1);
        let early = t0 + Duration::from_secs(9);
        assert!(nat.handle_timeout(early, &two).is_empty(), "not yet");
        let due = nat.poll_timeout();
        assert_eq!(due, t0 + Duration::from_secs(10));
        let reserves = nat.handle_timeout(due, &two);
        assert_eq!(grant(&mut nat, reserves), [1]);
        let next = nat.poll_timeout();
        assert_eq!(next, due + Duration::from_secs(10));
        assert!(nat.handle_timeout(next, &two).is_empty(), "all held");
    }

    #[test]
    fn a_relay_that_comes_back_gets_a_reservation_at_once() {
        let t0 = Instant::now();
        let mut nat = Nat::new(config(), t0);
        assert!(nat.handle_status(AutoNat::Private, &relays(&[])).is_empty());
        let reserves = nat.handle_relay_up(&7, &relays(&[7]));
        assert_eq!(grant(&mut nat, reserves), [7]);
        nat.handle_listener_closed(&107);
        // Its connection is back (a new NAT mapping, say): no need to wait for the retry.
        assert_eq!(asked(nat.handle_relay_up(&7, &relays(&[7]))), [7]);
    }

    #[test]
    fn reachability_follows_autonat_the_relay_flag_addresses_and_reservations() {
        let t0 = Instant::now();
        let mut nat = Nat::<u32, u32>::new(config(), t0);
        assert_eq!(nat.reachability(false), Reachability::Unknown);
        assert_eq!(nat.reachability(true), Reachability::Public);
        nat.handle_status(AutoNat::Private, &relays(&[]));
        assert_eq!(nat.reachability(false), Reachability::Nated);
        let reserves = nat.handle_relay_up(&1, &relays(&[1]));
        grant(&mut nat, reserves);
        assert_eq!(nat.reachability(false).as_str(), "relayed");
        nat.handle_status(AutoNat::Public, &relays(&[1]));
        assert_eq!(nat.reachability(false), Reachability::Public);
        let relay = NatConfig {
            relay_server: true,
            ..config()
        };
        let nat = Nat::<u32, u32>::new(relay, t0);
        assert_eq!(nat.reachability(false).as_str(), "public");
    }

    #[test]
    fn a_direct_connection_closes_relayed_ones_and_the_session_is_reopened_once() {
        let t0 = Instant::now();
        let mut nat = Nat::<u32, u32>::new(config(), t0);
        assert!(!nat.handle_direct(1, 0, true), "nothing relayed to close");
        assert!(!nat.handle_session_ended(&1));
        assert!(nat.handle_direct(1, 2, true));
        assert!(nat.handle_session_ended(&1));
        assert!(!nat.handle_session_ended(&1), "reopened once");
        // No session on the relayed connection: close it, nothing to reopen.
        assert!(nat.handle_direct(2, 1, false));
        assert!(!nat.handle_session_ended(&2));
    }
}
