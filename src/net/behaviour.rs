//! The behaviours of a node's libp2p swarm, its connection limits, and building the swarm on
//! QUIC, with TCP (noise + yamux) and DNS beside it for the public DHT's nodes.

use libp2p::allow_block_list::{self, BlockedPeers};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, StreamProtocol};
use libp2p::{autonat, dcutr, identify, kad, mdns, noise, ping, relay, yamux, Swarm};

use super::congestion::Congestion;
use super::dht::KAD_PROTOCOL;
use super::error::NetError;
use super::streams;
use crate::config::{IDLE_CONNECTION_TIMEOUT, QUIC_CONNECTION_WINDOW, QUIC_STREAM_WINDOW};
use crate::wire::{CHUNKS_PROTOCOL, CONTROL_PROTOCOL};

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
    /// The public IPFS DHT (Amino), when on (see `amino`).
    pub amino: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub autonat: autonat::Behaviour,
    pub relay_client: relay::client::Behaviour,
    pub relay: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub upnp: Toggle<libp2p::upnp::tokio::Behaviour>,
    pub streams: streams::Behaviour,
}

/// What a node's swarm offers besides the basics.
#[derive(Debug, Clone, Default)]
pub struct SwarmOptions {
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// Serve as a relay (circuit v2) for nodes that cannot be reached directly; `Some` holds
    /// the most bytes one relayed connection may carry.
    pub relay_circuit_bytes: Option<u64>,
    /// Ask a UPnP gateway (a home router) to forward our port. The search multicasts on the
    /// LAN at start, so it is off unless asked for.
    pub upnp: bool,
    /// Speak the public IPFS DHT (Amino) beside the swarm's own.
    pub public_dht: bool,
    /// Counts the bytes our QUIC connections send.
    pub wire: super::WireCounter,
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

/// Build the swarm on QUIC with explicit flow-control windows and the congestion controller
/// `TREECAST_QUIC_CC` names (BBR unless set, see `congestion`). Relayed connections run noise
/// and yamux inside the relay circuit (a circuit is a plain stream to the relay). TCP (noise +
/// yamux) is there for public-DHT nodes that speak no QUIC; it listens only where the net loop
/// asks it to. DNS resolves `/dns` and `/dnsaddr` addresses (Amino's bootstrap list) with the
/// system's resolver, and only when such an address is dialled.
pub fn build_swarm(key: Keypair, opts: SwarmOptions) -> Result<Swarm<Behaviour>, NetError> {
    let mdns = opts.mdns;
    let wire = opts.wire.clone();
    let build = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    let congestion = Congestion::from_env()?;
    tracing::debug!(congestion = congestion.name(), "QUIC congestion controller");
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| build(&e))?
        .with_quic_config(|mut c| {
            c.max_stream_data = QUIC_STREAM_WINDOW;
            c.max_connection_data = QUIC_CONNECTION_WINDOW;
            // Short enough to keep NAT mappings (about 30 s for UDP on many routers) alive.
            c.keep_alive_interval = std::time::Duration::from_secs(5);
            c.congestion_controller = Some(congestion.counting_factory(wire.clone()));
            c
        })
        .with_dns()
        .map_err(|e| build(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| build(&e))?
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
            amino: Toggle::from(
                opts.public_dht
                    .then(|| super::amino::behaviour(key.public().to_peer_id())),
            ),
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
