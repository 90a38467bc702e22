//! Addresses: parsing them, telling relayed from direct, public from LAN, and the order to
//! dial a peer's addresses in.

use std::net::SocketAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::error::NetError;

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

/// An address of the internet: not loopback, LAN (see [`is_lan`]), unspecified, multicast or
/// broadcast.
pub(crate) fn is_global(ip: std::net::IpAddr) -> bool {
    let special = match ip {
        std::net::IpAddr::V4(v4) => v4.is_broadcast(),
        std::net::IpAddr::V6(_) => false,
    };
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || special || is_lan(ip))
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
}
