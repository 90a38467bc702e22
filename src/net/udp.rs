//! Kernel buffers of our QUIC sockets.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default. A QUIC receiver that is
//! busy for a moment (hashing and writing a chunk) overflows it at loopback or LAN speeds, the
//! kernel drops the datagrams, and the sender's congestion control reads the drops as
//! congestion and slows down. quic-go raises its buffers for the same reason. libp2p-quic
//! creates its sockets itself and has no option for this, so once they are bound we find them
//! among this process's file descriptors by their port and raise their buffers there.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use socket2::{SockRef, Type};

/// The receive and send buffer asked for on each QUIC socket (the kernel doubles it for its
/// own bookkeeping).
pub const UDP_BUFFER: usize = 4 << 20;

/// What became of one socket's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub port: u16,
    /// Receive buffer the kernel now reports (counting its doubling).
    pub recv: usize,
    /// True if the system limit (`net.core.rmem_max`) kept it below [`UDP_BUFFER`] and we may
    /// not exceed that limit (`CAP_NET_ADMIN`).
    pub capped: bool,
}

/// Raise the buffers of the UDP sockets behind this process's listen addresses `addrs`
/// (relayed ones have no socket of their own and are skipped).
pub fn grow_for(addrs: &[Multiaddr]) -> Vec<Grown> {
    let ports: Vec<u16> = addrs
        .iter()
        .filter(|a| !super::addr::is_relayed(a))
        .filter_map(|a| {
            a.iter().find_map(|p| match p {
                Protocol::Udp(port) => Some(port),
                _ => None,
            })
        })
        .collect();
    grow_buffers(&ports)
}

/// Raise the receive and send buffers of this process's UDP sockets bound to one of `ports`.
pub fn grow_buffers(ports: &[u16]) -> Vec<Grown> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut grown = Vec::new();
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: `fd` was open in this process when listed just now, and it is only borrowed
        // for the few calls below. Were another thread to close it and open something else
        // under the same number meanwhile, the checks below would no longer match (or fail):
        // only a UDP socket bound to one of our ports is changed.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = SockRef::from(&fd);
        if !matches!(sock.r#type(), Ok(t) if t == Type::DGRAM) {
            continue;
        }
        let Some(port) = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
        else {
            continue;
        };
        if !ports.contains(&port) {
            continue;
        }
        grown.push(grow(&sock, port));
    }
    grown
}

fn grow(sock: &SockRef<'_>, port: u16) -> Grown {
    // Best effort: a socket keeps working with whatever buffer it has.
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let mut recv = sock.recv_buffer_size().unwrap_or(0);
    if recv < UDP_BUFFER {
        // Past net.core.rmem_max: allowed with CAP_NET_ADMIN (root).
        force(sock, libc::SO_SNDBUFFORCE);
        force(sock, libc::SO_RCVBUFFORCE);
        recv = sock.recv_buffer_size().unwrap_or(0);
    }
    Grown {
        port,
        recv,
        capped: recv < UDP_BUFFER,
    }
}

fn force(sock: &SockRef<'_>, option: libc::c_int) {
    let size = libc::c_int::try_from(UDP_BUFFER).unwrap_or(libc::c_int::MAX);
    // SAFETY: a plain setsockopt on a valid socket with a pointer to an int and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_only_the_sockets_on_the_given_ports() {
        let ours = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = SockRef::from(&other).recv_buffer_size().unwrap();
        let port = ours.local_addr().unwrap().port();

        let grown = grow_buffers(&[port]);
        assert_eq!(grown.len(), 1, "{grown:?}");
        assert_eq!(grown[0].port, port);
        let now = SockRef::from(&ours).recv_buffer_size().unwrap();
        assert_eq!(grown[0].recv, now);
        assert!(now >= before, "never smaller than the default");
        assert_eq!(grown[0].capped, now < UDP_BUFFER);
        assert_eq!(
            SockRef::from(&other).recv_buffer_size().unwrap(),
            before,
            "a socket on another port is left alone"
        );
    }
}
