//! The libp2p swarm: one QUIC endpoint carrying identify, ping, kad, mDNS, AutoNAT, relay
//! (client, and server where enabled), DCUtR and our own stream protocols.
//!
//! NAT traversal follows what was measured in the lab (reference/dcutr-netlab.md): the
//! identify-observed address stays a *candidate* (DCUtR takes its hole-punch addresses only
//! from candidates; AutoNAT and relay reservations confirm addresses), and relay servers get a
//! confirmed external address at start (`--external`) so that the first reservations are not
//! refused.
//!
//! Banned peers are refused at the handshake (`blocked`, filled by the net loop), and
//! connection limits cap what one peer and half-open handshakes can take (see
//! [`limits`]).
//!
//! Owns transport configuration and address parsing. Protocol logic lives in `node/`.

pub mod streams;
pub mod udp;

use std::net::SocketAddr;

use libp2p::allow_block_list::{self, BlockedPeers};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, StreamProtocol};
use libp2p::{
    autonat, dcutr, identify, kad, mdns, noise, ping, relay, yamux, Multiaddr, PeerId, Swarm,
};
use thiserror::Error;

use crate::config::{IDLE_CONNECTION_TIMEOUT, QUIC_CONNECTION_WINDOW, QUIC_STREAM_WINDOW};
use crate::wire::{CHUNKS_PROTOCOL, CONTROL_PROTOCOL};

/// Errors of the network layer.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("not an address: {0:?} (expected IP:PORT or a multiaddr like /ip4/1.2.3.4/udp/9000/quic-v1)")]
    BadAddr(String),
    #[error("could not listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("building the swarm: {0}")]
    Build(String),
}

/// All behaviours of a treecast node. The first two only accept or deny connections, and come
/// first so that a denied connection never reaches the others.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Peers we banned: their connections are refused at the handshake, both ways.
    pub blocked: allow_block_list::Behaviour<BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub autonat: autonat::Behaviour,
    pub relay_client: relay::client::Behaviour,
    pub relay: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub upnp: Toggle<libp2p::upnp::tokio::Behaviour>,
    pub streams: streams::Behaviour,
}

/// What a node's swarm offers besides the basics.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwarmOptions {
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Serve as a relay (circuit v2) for nodes that cannot be reached directly; `Some` holds
    /// the most bytes one relayed connection may carry.
    pub relay_circuit_bytes: Option<u64>,
    /// Ask a UPnP gateway (a home router) to forward our port. The search multicasts on the
    /// LAN at start, so it is off unless asked for.
    pub upnp: bool,
}

/// Most connections established with one peer. One relayed, one each way when both sides dial
/// at once (peer exchange, DCUtR's hole punch), and one left over from a peer that restarted
/// before its old connection timed out. A peer past it gains nothing: stream limits are per
/// connection, so this caps what one peer can hold.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;

/// Most incoming handshakes under way at once.
pub const MAX_PENDING_INCOMING: u32 = 64;

/// The connection limits of a node. Connections in total are not capped: sessions already are
/// (`--max-peers`), DHT and relay clients come and go (idle connections close after
/// `IDLE_CONNECTION_TIMEOUT`), and with keys free to make, a total would let one attacker hold
/// every connection and lock honest peers out.
pub fn limits() -> ConnectionLimits {
    ConnectionLimits::default()
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
}

/// The relay protocol a peer lists in identify when it serves as a relay.
pub const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// The IP address `addr` starts from, if it has one (not a DNS name or a memory address).
pub fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// True if `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// True if a connection with this endpoint goes through a relay.
pub fn is_relayed_endpoint(endpoint: &libp2p::core::ConnectedPoint) -> bool {
    match endpoint {
        libp2p::core::ConnectedPoint::Dialer { address, .. } => is_relayed(address),
        libp2p::core::ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => is_relayed(local_addr) || is_relayed(send_back_addr),
    }
}

/// The addresses a dial of `peer` should try, best first: public, relayed, LAN,
/// loopback. A direct address loses a `/p2p/<peer>` suffix and a relayed one gains it, so that
/// an address means the same place whichever peer it was given for (the dial policy tries
/// each place once at a time); an address naming another peer is dropped.
pub fn dial_order(peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let mut addrs: Vec<Multiaddr> = addrs
        .into_iter()
        .filter_map(|mut a| {
            if is_relayed(&a) {
                return a.with_p2p(peer).ok();
            }
            match a.iter().last() {
                Some(Protocol::P2p(id)) if id != peer => None,
                Some(Protocol::P2p(_)) => {
                    a.pop();
                    Some(a)
                }
                _ => Some(a),
            }
        })
        .collect();
    addrs.sort_by_key(|a| {
        let ip = ip_of(a);
        if is_relayed(a) {
            1
        } else if ip.is_some_and(|ip| ip.is_loopback()) {
            3
        } else if ip.is_some_and(is_lan) {
            2
        } else {
            0
        }
    });
    addrs
}

/// A private, shared (carrier-grade NAT), link-local or unique-local address.
fn is_lan(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        std::net::IpAddr::V6(v6) => v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// The DHT key of a swarm's newest signed head: BLAKE3("treecast/head/v1" ‖ uuid ‖ publisher
/// key). It names the key, so any DHT node can check a record without knowing the swarm.
pub fn head_key(swarm_id: &uuid::Uuid, publisher: &[u8; 32]) -> kad::RecordKey {
    let mut h = blake3::Hasher::new();
    h.update(b"treecast/head/v1");
    h.update(swarm_id.as_bytes());
    h.update(publisher);
    kad::RecordKey::new(h.finalize().as_bytes())
}

/// Check a head record offered for storage: its key must be the head key of the swarm and
/// signer it names, its signature must verify, and it must be newer than `existing`.
pub fn validate_head_record(
    record: &kad::Record,
    existing: Option<&kad::Record>,
) -> Result<crate::trust::SignedHead, HeadRecordError> {
    let invalid = |e: String| HeadRecordError::Invalid(e);
    let head =
        crate::trust::SignedHead::decode(&record.value).map_err(|e| invalid(e.to_string()))?;
    let body = head.body.clone();
    if head_key(&body.swarm_id, &body.signer) != record.key {
        return Err(invalid(
            "record key does not match the head's swarm and signer".into(),
        ));
    }
    let signer = crate::trust::PublisherPublicKey::from_bytes(body.signer)
        .map_err(|e| invalid(e.to_string()))?;
    head.clone()
        .verify(&signer, body.swarm_id)
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(old) = existing.and_then(|r| crate::trust::SignedHead::decode(&r.value).ok()) {
        if old.body.revision >= body.revision {
            return Err(HeadRecordError::NotNewer {
                revision: body.revision,
                stored: old.body.revision,
            });
        }
    }
    Ok(head)
}

/// Why a head record was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadRecordError {
    /// Forged, damaged or misfiled: counts against the sender.
    #[error("{0}")]
    Invalid(String),
    /// Validly signed but not newer than the record held (republished or old): harmless.
    #[error("revision {revision} is not newer than the stored {stored}")]
    NotNewer { revision: u64, stored: u64 },
}

/// What to do with a valid record offered for the DHT store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    /// Store it.
    Store,
    /// Remove this record first, then store it.
    Evict(kad::RecordKey),
    /// Do not store it.
    Refuse(&'static str),
}

/// Whether the store, holding `held` and able to hold `capacity` records, takes `record`
/// from `source`. A record replacing one held always fits. Each sender may have at most
/// `MAX_RECORDS_PER_PEER` records stored here, so one peer cannot fill the store with heads of
/// swarms it invented; a full store refuses newcomers, except the head of this node's own
/// swarm (`own`), which takes the place of the record that expires first.
pub fn make_room<R: std::borrow::Borrow<kad::Record>>(
    held: impl IntoIterator<Item = R>,
    capacity: usize,
    record: &kad::Record,
    source: &PeerId,
    own: Option<&kad::RecordKey>,
) -> Room {
    let mine = own == Some(&record.key);
    let (mut count, mut from_source) = (0, 0);
    // The record that expires first, other than our own swarm's: the one to evict.
    let mut first_to_expire: Option<(Option<std::time::Instant>, kad::RecordKey)> = None;
    for held in held {
        let held = held.borrow();
        if held.key == record.key {
            return Room::Store;
        }
        count += 1;
        from_source += usize::from(held.publisher == Some(*source));
        if Some(&held.key) != own && first_to_expire.as_ref().is_none_or(|f| held.expires < f.0) {
            first_to_expire = Some((held.expires, held.key.clone()));
        }
    }
    if from_source >= crate::config::MAX_RECORDS_PER_PEER && !mine {
        return Room::Refuse("its sender is over its share of the store");
    }
    if count < capacity {
        return Room::Store;
    }
    match (mine, first_to_expire) {
        (true, Some((_, key))) => Room::Evict(key),
        _ => Room::Refuse("the store is full"),
    }
}

/// Kademlia protocol name: our own DHT, not the public IPFS one.
pub const KAD_PROTOCOL: &str = "/treecast/kad/1";

/// The DHT key under which the nodes of a swarm provide: BLAKE3("treecast/swarm/v1" ‖ uuid).
pub fn swarm_key(swarm_id: &uuid::Uuid) -> kad::RecordKey {
    let mut h = blake3::Hasher::new();
    h.update(b"treecast/swarm/v1");
    h.update(swarm_id.as_bytes());
    kad::RecordKey::new(h.finalize().as_bytes())
}

/// Build the swarm on QUIC with explicit flow-control windows. Relayed connections run noise
/// and yamux inside the relay circuit (a circuit is a plain stream to the relay).
pub fn build_swarm(key: Keypair, opts: SwarmOptions) -> Result<Swarm<Behaviour>, NetError> {
    let mdns = opts.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic_config(|mut c| {
            c.max_stream_data = QUIC_STREAM_WINDOW;
            c.max_connection_data = QUIC_CONNECTION_WINDOW;
            // Short enough to keep NAT mappings (about 30 s for UDP on many routers) alive.
            c.keep_alive_interval = std::time::Duration::from_secs(5);
            c
        })
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Build(e.to_string()))?
        .with_behaviour(|key, relay_client| Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            limits: connection_limits::Behaviour::new(limits()),
            // No address cache in identify: it would hand every address a peer listens on,
            // loopback included, to each dial of that peer. A dial to another host's
            // 127.0.0.1:PORT reaches ourselves, and that wrong peer ID fails the whole dial,
            // relayed addresses too. The net loop gives kad the addresses worth dialing.
            identify: identify::Behaviour::new(
                identify::Config::new("/treecast/id/1".into(), key.public()).with_cache_size(0),
            ),
            ping: ping::Behaviour::default(),
            kad: {
                let peer = key.public().to_peer_id();
                let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                cfg.set_query_timeout(std::time::Duration::from_secs(30));
                // Head records are validated before they are stored (validate_head_record).
                cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
                let mut kad =
                    kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), cfg);
                // Without AutoNAT yet, a node cannot learn it is reachable, and a client-mode
                // DHT finds nothing: every node serves the DHT for now.
                kad.set_mode(Some(kad::Mode::Server));
                kad
            },
            upnp: Toggle::from(opts.upnp.then(libp2p::upnp::tokio::Behaviour::default)),
            mdns: Toggle::from(
                mdns.then(|| {
                    let cfg = mdns::Config {
                        query_interval: std::time::Duration::from_secs(30),
                        ..Default::default()
                    };
                    mdns::tokio::Behaviour::new(cfg, key.public().to_peer_id())
                        .map_err(|e| tracing::warn!(error = %e, "mDNS unavailable"))
                        .ok()
                })
                .flatten(),
            ),
            autonat: autonat::Behaviour::new(
                key.public().to_peer_id(),
                autonat::Config {
                    // Private ranges count too: a LAN or a lab is as real as the internet.
                    only_global_ips: false,
                    boot_delay: std::time::Duration::from_secs(3),
                    ..Default::default()
                },
            ),
            relay_client,
            relay: Toggle::from(opts.relay_circuit_bytes.map(|bytes| {
                let cfg = relay::Config {
                    max_circuit_bytes: bytes,
                    max_circuit_duration: std::time::Duration::from_secs(3600),
                    ..Default::default()
                };
                relay::Behaviour::new(key.public().to_peer_id(), cfg)
            })),
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
            streams: streams::Behaviour::new(vec![
                StreamProtocol::new(CONTROL_PROTOCOL),
                StreamProtocol::new(CHUNKS_PROTOCOL),
            ]),
        })
        .map_err(|e| NetError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Parse `IP:PORT` (UDP, QUIC) or a multiaddr.
pub fn parse_addr(s: &str) -> Result<Multiaddr, NetError> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        let ip = match sa.ip() {
            std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
            std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
        };
        return Ok(Multiaddr::empty()
            .with(ip)
            .with(Protocol::Udp(sa.port()))
            .with(Protocol::QuicV1));
    }
    s.parse::<Multiaddr>()
        .map_err(|_| NetError::BadAddr(s.to_owned()))
}

/// The peer ID at the end of a multiaddr, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_addr("127.0.0.1:0").unwrap().to_string(),
            "/ip4/127.0.0.1/udp/0/quic-v1"
        );
        assert_eq!(
            parse_addr("[::1]:9").unwrap().to_string(),
            "/ip6/::1/udp/9/quic-v1"
        );
        assert!(parse_addr("/ip4/1.2.3.4/udp/1/quic-v1").is_ok());
        assert!(matches!(parse_addr("nonsense"), Err(NetError::BadAddr(_))));
    }

    /// One peer cannot fill the store; a full store still takes this node's own swarm's head,
    /// in place of the record that expires first.
    #[test]
    fn the_store_keeps_room_per_peer_and_for_its_own_swarm() {
        use crate::config::MAX_RECORDS_PER_PEER;
        let t0 = std::time::Instant::now();
        let record = |i: u32, from: PeerId| {
            let mut r = kad::Record::new(i.to_be_bytes().to_vec(), vec![]);
            r.publisher = Some(from);
            r.expires = Some(t0 + std::time::Duration::from_secs(u64::from(i)));
            r
        };
        let (sybil, honest) = (PeerId::random(), PeerId::random());
        let held: Vec<_> = (0..MAX_RECORDS_PER_PEER as u32)
            .map(|i| record(i, sybil))
            .collect();
        let room = |held: &[kad::Record], r: &kad::Record, from, own| {
            make_room(held.iter(), 100, r, from, own)
        };
        let next = record(1000, sybil);
        assert!(matches!(room(&held, &next, &sybil, None), Room::Refuse(_)));
        assert_eq!(room(&held, &next, &honest, None), Room::Store);
        assert_eq!(
            room(&held, &held[3], &sybil, None),
            Room::Store,
            "a newer copy"
        );
        // Full, from many peers: newcomers are refused, our own swarm's head is not.
        let full: Vec<_> = (0..100).map(|i| record(i, PeerId::random())).collect();
        let own = record(5000, honest);
        assert!(matches!(room(&full, &next, &honest, None), Room::Refuse(_)));
        let evict = room(&full, &own, &honest, Some(&own.key));
        assert_eq!(
            evict,
            Room::Evict(full[0].key.clone()),
            "the first to expire"
        );
    }

    #[test]
    fn dial_order_puts_public_first_and_names_each_place_the_same_for_every_peer() {
        let peer = PeerId::random();
        let relay = PeerId::random();
        let other = PeerId::random();
        let addr = |s: String| s.parse::<Multiaddr>().unwrap();
        let given = vec![
            addr("/ip4/127.0.0.1/udp/1/quic-v1".into()),
            addr("/ip4/192.168.1.2/udp/2/quic-v1".into()),
            addr(format!(
                "/ip4/198.51.100.9/udp/3/quic-v1/p2p/{relay}/p2p-circuit"
            )),
            addr(format!("/ip4/100.64.0.7/udp/4/quic-v1/p2p/{peer}")),
            addr(format!("/ip4/203.0.113.5/udp/5/quic-v1/p2p/{other}")),
            addr("/ip4/203.0.113.5/udp/6/quic-v1".into()),
            addr("/ip6/fd00::1/udp/7/quic-v1".into()),
        ];
        let ordered: Vec<String> = dial_order(peer, given)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            ordered,
            [
                "/ip4/203.0.113.5/udp/6/quic-v1".to_string(),
                format!("/ip4/198.51.100.9/udp/3/quic-v1/p2p/{relay}/p2p-circuit/p2p/{peer}"),
                "/ip4/192.168.1.2/udp/2/quic-v1".to_string(),
                "/ip4/100.64.0.7/udp/4/quic-v1".to_string(),
                "/ip6/fd00::1/udp/7/quic-v1".to_string(),
                "/ip4/127.0.0.1/udp/1/quic-v1".to_string(),
            ]
        );
    }

    #[test]
    fn head_records_over_the_handover_cap_are_refused() {
        use crate::config::MAX_SUCCESSION;
        use crate::trust::{HeadBody, PublisherKey, SignedHead, Succession};
        let key = PublisherKey::generate();
        let swarm = uuid::Uuid::new_v4();
        let body = HeadBody {
            swarm_id: swarm,
            revision: 3,
            manifest_hash: crate::tree::ContentHash::of(b"m"),
            manifest_size: 1,
            manifest_index_hash: crate::tree::ContentHash::of(b"i"),
            created_unix_ms: 0,
            signer: [0; 32],
        };
        let mut head = SignedHead::sign(body, &key).signed().clone();
        let record =
            |h: &SignedHead| kad::Record::new(head_key(&swarm, &h.body.signer), h.encode());
        assert!(validate_head_record(&record(&head), None).is_ok());
        let junk = Succession::sign(&key, swarm, PublisherKey::generate().public(), 1);
        head.succession = vec![junk; MAX_SUCCESSION + 1];
        assert!(matches!(
            validate_head_record(&record(&head), None),
            Err(HeadRecordError::Invalid(_))
        ));
    }
}
