//! What the net loop remembers of peers beyond a single event: bans, the address we dialed
//! each connected peer at, the address each connected peer's first connection came from, and
//! the relays we know.
//!
//! Pure bookkeeping: time comes in as an argument, and the net loop carries out what comes
//! back (block a banned peer in the swarm, unblock one whose ban ended). It must not touch the
//! swarm or read the clock.
//!
//! Every map is bounded:
//! - a ban lasts `BAN_DURATION` and `sweep` drops it then; at most `MAX_BANNED` are held, and
//!   a new one pushes out the one closest to its end;
//! - a dialed address, and a connection's remote address, live while the peer has a
//!   connection;
//! - a relay is forgotten `RELAY_FORGET` after its last connection closed (kept until then, so
//!   that a node that lost its relay dials peers through it again), and at most `MAX_RELAYS`
//!   are known: a new one takes the place of the one gone longest, or is not kept.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use crate::config::BAN_DURATION;

/// Most bans held at once.
pub(crate) const MAX_BANNED: usize = 4096;

/// Most relays known at once.
pub(crate) const MAX_RELAYS: usize = 16;

/// How long a relay with no connection is remembered.
pub(crate) const RELAY_FORGET: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Relay {
    addr: Multiaddr,
    /// When its last connection closed; `None` while connected.
    gone_since: Option<Instant>,
}

/// Bans, dialed addresses and relays; see the module doc for their bounds.
#[derive(Debug, Default)]
pub(crate) struct PeerBook {
    banned: HashMap<PeerId, Instant>,
    dialed: HashMap<PeerId, Multiaddr>,
    remote: HashMap<PeerId, std::net::IpAddr>,
    relays: HashMap<PeerId, Relay>,
}

/// A ban that was not there before.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NewBan {
    /// A ban dropped to make room: unblock this peer.
    pub evicted: Option<PeerId>,
}

impl PeerBook {
    /// Ban `peer` for `BAN_DURATION` from `now`; `None` if it is banned already (a ban is not
    /// extended).
    pub fn ban(&mut self, peer: PeerId, now: Instant) -> Option<NewBan> {
        if self.is_banned(&peer, now) {
            return None;
        }
        let full = self.banned.len() >= MAX_BANNED && !self.banned.contains_key(&peer);
        let evicted = if full { self.end_first_ban() } else { None };
        self.banned.insert(peer, now + BAN_DURATION);
        Some(NewBan { evicted })
    }

    /// Drop the ban closest to its end.
    fn end_first_ban(&mut self) -> Option<PeerId> {
        let (peer, _) = self.banned.iter().min_by_key(|(_, until)| **until)?;
        let peer = *peer;
        self.banned.remove(&peer);
        Some(peer)
    }

    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now)
    }

    /// The peers banned at `now`.
    pub fn banned(&self, now: Instant) -> impl Iterator<Item = PeerId> + '_ {
        self.banned
            .iter()
            .filter(move |(_, until)| **until > now)
            .map(|(p, _)| *p)
    }

    /// A direct connection we dialed to `peer` at `addr` is up.
    pub fn dialed(&mut self, peer: PeerId, addr: Multiaddr) {
        self.dialed.insert(peer, addr);
    }

    /// The address of the direct connection we dialed to `peer`, while it is connected.
    pub fn direct_addr(&self, peer: &PeerId) -> Option<&Multiaddr> {
        self.dialed.get(peer)
    }

    /// A connection to `peer`, from or to `remote` (the relay's address for a relayed one), is
    /// up.
    pub fn connected(&mut self, peer: &PeerId, remote: Option<std::net::IpAddr>) {
        if let Some(ip) = remote {
            self.remote.entry(*peer).or_insert(ip);
        }
        if let Some(relay) = self.relays.get_mut(peer) {
            relay.gone_since = None;
        }
    }

    /// The last connection to `peer` closed at `now`.
    pub fn disconnected(&mut self, peer: &PeerId, now: Instant) {
        self.dialed.remove(peer);
        self.remote.remove(peer);
        if let Some(relay) = self.relays.get_mut(peer) {
            relay.gone_since = Some(now);
        }
    }

    /// The address `peer`'s first live connection came from, or went to.
    pub fn remote_ip(&self, peer: &PeerId) -> Option<std::net::IpAddr> {
        self.remote.get(peer).copied()
    }

    /// `peer`, connected, serves as a relay and is reached at `addr`. False when it is known
    /// already, or all `MAX_RELAYS` are connected.
    pub fn add_relay(&mut self, peer: PeerId, addr: Multiaddr) -> bool {
        if self.relays.contains_key(&peer) {
            return false;
        }
        if self.relays.len() >= MAX_RELAYS && !self.forget_longest_gone_relay() {
            return false;
        }
        let relay = Relay {
            addr,
            gone_since: None,
        };
        self.relays.insert(peer, relay);
        true
    }

    fn forget_longest_gone_relay(&mut self) -> bool {
        let longest = self
            .relays
            .iter()
            .filter_map(|(p, r)| Some((r.gone_since?, *p)))
            .min();
        longest.is_some_and(|(_, p)| self.relays.remove(&p).is_some())
    }

    pub fn is_relay(&self, peer: &PeerId) -> bool {
        self.relays.contains_key(peer)
    }

    /// The relays we know, connected or not, and the address we reach each at.
    pub fn relays(&self) -> impl Iterator<Item = (&PeerId, &Multiaddr)> {
        self.relays.iter().map(|(p, r)| (p, &r.addr))
    }

    /// Drop bans that ended and relays gone for `RELAY_FORGET`. Returns the peers whose ban
    /// ended, to be unblocked.
    pub fn sweep(&mut self, now: Instant) -> Vec<PeerId> {
        self.relays.retain(|_, r| {
            r.gone_since
                .is_none_or(|t| now.saturating_duration_since(t) < RELAY_FORGET)
        });
        let ended: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &ended {
            self.banned.remove(p);
        }
        ended
    }

    #[cfg(test)]
    fn sizes(&self) -> (usize, usize, usize) {
        (self.banned.len(), self.dialed.len(), self.relays.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/10.0.0.1/udp/{port}/quic-v1").parse().unwrap()
    }

    #[test]
    fn a_ban_is_swept_when_it_runs_out_and_handed_back_for_unblocking() {
        let mut book = PeerBook::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert_eq!(book.ban(a, t0), Some(NewBan { evicted: None }));
        assert_eq!(book.ban(a, t0), None, "banned already");
        book.ban(b, t0 + Duration::from_secs(60));
        let a_ends = t0 + BAN_DURATION;
        assert!(book.is_banned(&a, a_ends - Duration::from_secs(1)));
        assert!(book.sweep(a_ends - Duration::from_secs(1)).is_empty());
        assert!(!book.is_banned(&a, a_ends));
        assert_eq!(book.sweep(a_ends), vec![a]);
        assert_eq!(book.sizes(), (1, 0, 0));
        assert!(book.sweep(a_ends).is_empty(), "handed back once");
        assert_eq!(book.banned(a_ends).collect::<Vec<_>>(), vec![b]);
    }

    #[test]
    fn bans_are_capped_and_the_one_ending_first_makes_room() {
        let mut book = PeerBook::default();
        let t0 = Instant::now();
        let first = PeerId::random();
        book.ban(first, t0);
        for i in 1..MAX_BANNED {
            book.ban(PeerId::random(), t0 + Duration::from_millis(i as u64));
        }
        let late = t0 + Duration::from_secs(1);
        let newest = PeerId::random();
        assert_eq!(
            book.ban(newest, late),
            Some(NewBan {
                evicted: Some(first)
            })
        );
        assert_eq!(book.sizes().0, MAX_BANNED);
        assert!(book.is_banned(&newest, late) && !book.is_banned(&first, late));
    }

    #[test]
    fn the_dialed_address_goes_with_the_last_connection() {
        let mut book = PeerBook::default();
        let p = PeerId::random();
        book.dialed(p, addr(1));
        let (first, second) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        book.connected(&p, Some(first));
        book.connected(&p, Some(second));
        assert_eq!(book.direct_addr(&p), Some(&addr(1)));
        assert_eq!(book.remote_ip(&p), Some(first), "the first connection's");
        book.disconnected(&p, Instant::now());
        assert_eq!(book.direct_addr(&p), None);
        assert_eq!(book.remote_ip(&p), None);
        assert_eq!(book.sizes(), (0, 0, 0));
    }

    #[test]
    fn a_relay_is_forgotten_a_while_after_its_last_connection_closed() {
        let mut book = PeerBook::default();
        let r = PeerId::random();
        let t0 = Instant::now();
        assert!(book.add_relay(r, addr(1)));
        assert!(!book.add_relay(r, addr(2)), "known already");
        book.disconnected(&r, t0);
        assert!(book
            .sweep(t0 + RELAY_FORGET - Duration::from_secs(1))
            .is_empty());
        assert!(
            book.is_relay(&r),
            "kept: a lost relay is dialed again through it"
        );
        // Back, then gone again: forgotten only RELAY_FORGET after the last close.
        book.connected(&r, None);
        book.sweep(t0 + 2 * RELAY_FORGET);
        assert!(book.is_relay(&r));
        let t1 = t0 + 2 * RELAY_FORGET;
        book.disconnected(&r, t1);
        book.sweep(t1 + RELAY_FORGET);
        assert!(!book.is_relay(&r));
        assert_eq!(book.sizes(), (0, 0, 0));
    }

    #[test]
    fn relays_are_capped_and_only_a_gone_one_makes_room() {
        let mut book = PeerBook::default();
        let t0 = Instant::now();
        let relays: Vec<PeerId> = (0..MAX_RELAYS).map(|_| PeerId::random()).collect();
        for (i, r) in relays.iter().enumerate() {
            assert!(book.add_relay(*r, addr(i as u16)));
        }
        let newcomer = PeerId::random();
        assert!(
            !book.add_relay(newcomer, addr(999)),
            "all connected: no room"
        );
        book.disconnected(&relays[3], t0);
        book.disconnected(&relays[5], t0 + Duration::from_secs(1));
        assert!(book.add_relay(newcomer, addr(999)));
        assert!(!book.is_relay(&relays[3]) && book.is_relay(&relays[5]));
        assert_eq!(book.relays().count(), MAX_RELAYS);
    }
}
