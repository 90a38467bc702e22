//! The libp2p swarm: one QUIC endpoint (and TCP for the public DHT's nodes) carrying identify, ping, kad, mDNS, AutoNAT, relay
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

//!
//! Modules; none imports this `mod.rs`, and none imports in a circle:
//! - `error`: [`NetError`]; `addr`: parsing addresses and the order to dial them in.
//! - `dht`: the DHT's keys, head records and store policy; `providers`: which provider
//!   records of other nodes the store keeps.
//! - `amino`: the public IPFS DHT (`/ipfs/kad/1.0.0`): its key, bootstrap peers, behaviour and
//!   when to announce there.
//! - `streams`: our small stream behaviour with bounded queues; `udp`: socket buffers.
//! - `congestion`: which congestion controller QUIC runs (BBR, or Cubic by `TREECAST_QUIC_CC`).
//! - `behaviour`: the node's [`Behaviour`], its connection limits, and [`build_swarm`].

mod addr;
mod amino;
mod behaviour;
mod congestion;
mod dht;
mod error;
mod providers;
pub mod streams;
pub mod udp;

pub use addr::{dial_order, ip_of, is_relayed, is_relayed_endpoint, parse_addr, peer_of};
pub use amino::{
    amino_key, bootstrap_peer, default_bootstrap, Announcer, AMINO_BOOTSTRAP, AMINO_PROTOCOL,
    AMINO_REANNOUNCE, AMINO_RECORD_TTL,
};
pub use behaviour::{
    build_swarm, limits, Behaviour, BehaviourEvent, SwarmOptions, MAX_CONNECTIONS_PER_PEER,
    MAX_PENDING_INCOMING, RELAY_HOP_PROTOCOL,
};
pub use congestion::{Congestion, WireCounter, QUIC_CC_ENV};
pub use dht::{
    head_key, make_room, swarm_key, validate_head_record, HeadRecordError, Room, KAD_PROTOCOL,
};
pub use error::NetError;
pub use providers::{
    Admit, Network, Offer, ProviderBook, MAX_PROVIDERS_PER_KEY, MAX_PROVIDERS_PER_NETWORK,
    MAX_PROVIDER_KEYS,
};
