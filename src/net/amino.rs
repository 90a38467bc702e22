//! The public IPFS DHT (Amino, `/ipfs/kad/1.0.0`) as a second place to find a swarm: its key,
//! its bootstrap peers, its Kademlia behaviour, and when to announce this node there.
//!
//! Amino's nodes were not written by us and follow Amino's rules, so this module does too:
//! - provider records only, keyed by a sha2-256 multihash ([`amino_key`]): js-libp2p's kad-dht
//!   reads an ADD_PROVIDER key as a CID and refuses any other hash function. No PUT_VALUE: Amino
//!   stores values only under `/pk/` and `/ipns/`; the swarm's signed heads stay in its own DHT.
//! - a provider record lives 48 h on Amino nodes ([`AMINO_RECORD_TTL`]); [`Announcer`] announces
//!   once the routing table has a peer and the node a confirmed address (a record naming no
//!   address is dropped), again when a new external address is confirmed (at most every
//!   [`ANNOUNCE_GAP`]), and every [`AMINO_REANNOUNCE`] (22 h, as kubo does).
//! - client mode until AutoNAT says the node is public (Amino expects servers to be reachable);
//!   the net loop switches it.
//!
//! Owns no socket and reads no clock: [`Announcer`] takes `now`; the net loop carries out what it
//! decides. It must not touch the swarm's own DHT (`dht`), whose keys and records are ours.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::swarm::StreamProtocol;
use libp2p::{kad, Multiaddr, PeerId};
use sha2::{Digest, Sha256};

use super::error::NetError;

/// Amino's Kademlia protocol.
pub const AMINO_PROTOCOL: &str = "/ipfs/kad/1.0.0";

/// Amino's public bootstrap peers, as kubo and helia list them. `/dnsaddr` is resolved by
/// libp2p's DNS transport when dialled.
pub const AMINO_BOOTSTRAP: [&str; 7] = [
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/dnsaddr/va1.bootstrap.libp2p.io/p2p/12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
    "/ip4/104.131.131.82/udp/4001/quic-v1/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
];

/// How long Amino's nodes keep a provider record.
pub const AMINO_RECORD_TTL: Duration = Duration::from_secs(48 * 3600);
/// Between two announcements of a node that has nothing new to say (well before the TTL).
pub const AMINO_REANNOUNCE: Duration = Duration::from_secs(22 * 3600);
/// Least time between two announcements (new addresses come in bursts).
pub const ANNOUNCE_GAP: Duration = Duration::from_secs(60);
/// Wait before announcing again after an announcement that reached no node.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(30);

/// Amino's bootstrap peers as addresses.
pub fn default_bootstrap() -> Vec<Multiaddr> {
    AMINO_BOOTSTRAP
        .iter()
        .map(|a| a.parse().expect("a valid built-in multiaddr"))
        .collect()
}

/// The Amino key of a swarm: the sha2-256 multihash (`0x12 0x20` + digest) of
/// SHA-256("treecast/amino/v1" ‖ swarm UUID). Domain-separated from the swarm's own DHT key, and
/// a multihash any Amino node reads as a CIDv0.
pub fn amino_key(swarm_id: &uuid::Uuid) -> kad::RecordKey {
    let mut h = Sha256::new();
    h.update(b"treecast/amino/v1");
    h.update(swarm_id.as_bytes());
    let mut key = vec![0x12, 0x20];
    key.extend_from_slice(&h.finalize());
    kad::RecordKey::new(&key)
}

/// The peer and address of a bootstrap entry. Kademlia needs the peer ID, so an address without
/// `/p2p/…` is an error that names it.
pub fn bootstrap_peer(addr: &Multiaddr) -> Result<(PeerId, Multiaddr), NetError> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok((peer, addr.clone())),
        _ => Err(NetError::NoPeerId(addr.clone())),
    }
}

/// The Kademlia behaviour speaking Amino's protocol: client mode, nothing stored that the net
/// loop did not admit, provider records announced when [`Announcer`] says.
pub fn behaviour(peer: PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut cfg = kad::Config::new(StreamProtocol::new(AMINO_PROTOCOL));
    cfg.set_query_timeout(Duration::from_secs(60));
    // Provider records offered to us (in server mode) go through the net loop's admission;
    // values are never stored (no PUT_VALUE outside Amino's namespaces, and we validate none).
    cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
    cfg.set_provider_record_ttl(Some(AMINO_RECORD_TTL));
    // Announcements follow `Announcer`, not kad's own timer.
    cfg.set_provider_publication_interval(None);
    cfg.set_record_ttl(None);
    cfg.set_publication_interval(None);
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), cfg);
    kad.set_mode(Some(kad::Mode::Client));
    kad
}

/// When to announce this node as a provider of its swarm's Amino key.
///
/// An announcement carries the node's confirmed external addresses, and Amino's nodes drop a
/// record that names none, so the first one waits for both a peer in the routing table and a
/// confirmed address.
///
/// Invariant: at most one announcement is under way (`in_flight`), and while none is, `due` says
/// when the next one starts (`None`: not before a peer and an address are known).
#[derive(Debug, Default)]
pub struct Announcer {
    routable: bool,
    addressed: bool,
    due: Option<Instant>,
    last: Option<Instant>,
    in_flight: bool,
}

impl Announcer {
    /// When [`Announcer::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due.filter(|_| !self.in_flight)
    }

    /// Whether to announce now; if so, the announcement is under way until
    /// [`Announcer::handle_done`].
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let due = self.poll_timeout().is_some_and(|d| d <= now);
        if due {
            self.in_flight = true;
            self.due = None;
        }
        due
    }

    /// The routing table got a peer: the first announcement may start. (Later peers change
    /// nothing: the record is already on the nodes closest to the key.)
    pub fn handle_routing_updated(&mut self, now: Instant) {
        self.routable = true;
        if self.last.is_none() && !self.in_flight {
            self.schedule(now);
        }
    }

    /// A new external address was confirmed: announce it, but not sooner than
    /// [`ANNOUNCE_GAP`] after the last announcement.
    pub fn handle_new_address(&mut self, now: Instant) {
        self.addressed = true;
        self.schedule(now);
    }

    fn schedule(&mut self, now: Instant) {
        if !(self.routable && self.addressed) {
            return;
        }
        let earliest = self.last.map_or(now, |l| (l + ANNOUNCE_GAP).max(now));
        self.due = Some(self.due.map_or(earliest, |d| d.min(earliest)));
    }

    /// The announcement under way ended: `stored` says whether any node took the record.
    pub fn handle_done(&mut self, now: Instant, stored: bool) {
        self.in_flight = false;
        let next = if stored {
            self.last = Some(now);
            now + AMINO_REANNOUNCE
        } else {
            now + ANNOUNCE_RETRY
        };
        // An address confirmed meanwhile is announced, but not right after this one.
        let pending = self.due.map(|d| match stored {
            true => d.max(now + ANNOUNCE_GAP),
            false => d,
        });
        self.due = Some(pending.map_or(next, |d| d.min(next)));
    }

    /// When an announcement last reached a node.
    pub fn last(&self) -> Option<Instant> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_a_sha2_256_multihash_apart_from_the_swarms_own() {
        let swarm = uuid::Uuid::from_u128(7);
        let key = amino_key(&swarm);
        let bytes = key.as_ref();
        assert_eq!(&bytes[..2], &[0x12, 0x20]);
        assert_eq!(bytes.len(), 34);
        let plain: [u8; 32] = Sha256::digest(swarm.as_bytes()).into();
        assert_ne!(&bytes[2..], &plain, "domain-separated");
        assert_ne!(key, super::super::dht::swarm_key(&swarm));
        assert_ne!(key, amino_key(&uuid::Uuid::from_u128(8)));
        // libp2p's own reading of it: a sha2-256 multihash of 32 bytes.
        let mh = libp2p::multihash::Multihash::<64>::from_bytes(bytes).unwrap();
        assert_eq!((mh.code(), mh.size()), (0x12, 32));
    }

    #[test]
    fn bootstrap_entries_need_a_peer_id() {
        assert_eq!(default_bootstrap().len(), AMINO_BOOTSTRAP.len());
        for addr in default_bootstrap() {
            bootstrap_peer(&addr).unwrap();
        }
        let bare: Multiaddr = "/ip4/198.18.1.1/tcp/4001".parse().unwrap();
        let err = bootstrap_peer(&bare).unwrap_err().to_string();
        assert!(err.contains("/p2p/"), "{err}");
    }

    #[test]
    fn announces_at_first_contact_then_before_the_records_expire() {
        let t0 = Instant::now();
        let mut a = Announcer::default();
        assert_eq!(a.poll_timeout(), None, "nobody to announce to yet");
        assert!(!a.handle_timeout(t0));
        a.handle_routing_updated(t0);
        assert_eq!(a.poll_timeout(), None, "no address to announce yet");
        a.handle_new_address(t0);
        assert!(a.handle_timeout(t0));
        assert_eq!(a.poll_timeout(), None, "one at a time");
        a.handle_routing_updated(t0);
        assert!(!a.handle_timeout(t0));
        let t1 = t0 + Duration::from_secs(1);
        a.handle_done(t1, true);
        assert_eq!(a.last(), Some(t1));
        let next = a.poll_timeout().unwrap();
        assert_eq!(next, t1 + AMINO_REANNOUNCE);
        assert!(next < t1 + AMINO_RECORD_TTL);
        assert!(!a.handle_timeout(next - Duration::from_secs(1)));
        assert!(a.handle_timeout(next));
    }

    #[test]
    fn a_new_address_is_announced_soon_but_not_in_a_burst() {
        let t0 = Instant::now();
        let mut a = Announcer::default();
        a.handle_new_address(t0);
        assert_eq!(a.poll_timeout(), None, "nobody to announce to yet");
        a.handle_routing_updated(t0);
        assert!(a.handle_timeout(t0));
        a.handle_done(t0, true);
        let t1 = t0 + Duration::from_secs(5);
        a.handle_new_address(t1);
        assert_eq!(a.poll_timeout(), Some(t0 + ANNOUNCE_GAP));
        let t2 = t0 + Duration::from_secs(600);
        assert!(a.handle_timeout(t2));
        a.handle_new_address(t2);
        assert_eq!(a.poll_timeout(), None, "waits for the one under way");
        a.handle_done(t2, true);
        assert_eq!(a.poll_timeout(), Some(t2 + ANNOUNCE_GAP));
    }

    #[test]
    fn an_announcement_that_reached_nobody_is_retried() {
        let t0 = Instant::now();
        let mut a = Announcer::default();
        a.handle_routing_updated(t0);
        a.handle_new_address(t0);
        assert!(a.handle_timeout(t0));
        a.handle_done(t0, false);
        assert_eq!(a.last(), None);
        assert_eq!(a.poll_timeout(), Some(t0 + ANNOUNCE_RETRY));
    }
}
