//! [`NetError`], the errors of the network layer. A leaf.

use libp2p::Multiaddr;
use thiserror::Error;

/// Errors of the network layer.
#[derive(Debug, Error)]
pub enum NetError {
    #[error("not an address: {0:?} (expected IP:PORT or a multiaddr like /ip4/1.2.3.4/udp/9000/quic-v1)")]
    BadAddr(String),
    #[error("could not listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("{0} names no peer: a DHT bootstrap address ends in /p2p/<peer ID>")]
    NoPeerId(Multiaddr),
    #[error("building the swarm: {0}")]
    Build(String),
    #[error("TREECAST_QUIC_CC={0:?} names no congestion controller (expected bbr or cubic)")]
    Congestion(String),
}
