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
    #[error("building the swarm: {0}")]
    Build(String),
}
