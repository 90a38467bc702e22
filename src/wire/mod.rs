//! The treecast wire protocol. This comment is its specification.
//!
//! # Transport
//! One QUIC connection per peer pair (libp2p-quic). Each protocol below is a QUIC bidirectional
//! stream, negotiated by libp2p's multistream-select under its protocol name.
//!
//! # Framing
//! After the handshake (control only), every message is a frame: a `u32` little-endian length
//! followed by that many bytes. A reader refuses any frame longer than the cap of its stream
//! (`MAX_CONTROL_FRAME`, `MAX_CHUNK_FRAME`) before reading its body; a peer that sends one is
//! disconnected and banned.
//!
//! # `/treecast/control/1`
//! One long-lived stream per peer, opened by the dialing side.
//! 1. Handshake, both directions, not framed: the 8 bytes `treecast` then the sender's protocol
//!    version as `u32` LE (this build: [`PROTOCOL_VERSION`]). A peer whose version differs is
//!    told nothing more: each side logs both versions and closes the connection.
//! 2. Each side sends [`ControlMsg::Hello`] (node UUID, swarm ID, role, newest head it holds).
//!    A hello for another swarm ends the session.
//! 3. Then, in any order: [`ControlMsg::Head`] when a node learns a newer verified head
//!    (announcement: each node forwards a head once, when it first learns it, so heads flood the
//!    swarm and duplicates die out), [`ControlMsg::Peers`] (peer exchange, on connect and when
//!    peers join; a hint, not an order: the receiver dials few of them, within budgets per sender
//!    and in total, see `swarm::dials`), [`ControlMsg::Have`] (which chunks of the revision being
//!    downloaded the sender holds, a bitfield, sent when it changes), [`ControlMsg::Complete`] when
//!    the sender has applied a revision (a head announcement alone says nothing about what the
//!    sender holds), [`ControlMsg::Heartbeat`] every `HEARTBEAT_INTERVAL`, and
//!    [`ControlMsg::Goodbye`] before a graceful close. Silence for `PEER_TIMEOUT` means gone.
//!
//! A head (in a hello or a `Head`) carries at most `MAX_SUCCESSION` handover records, outside
//! its signature. A receiver keeps and passes on only the chain from the swarm's first key to
//! the head's signer; a peer that sends more records, or a forged one, is banned.
//!
//! Messages are postcard-encoded enums: new variants are only appended, so slots never move.
//!
//! # `/treecast/chunks/1`
//! Long-lived, pipelined request/response streams opened by the downloading side (a few per
//! peer, never one per chunk). The requester sends [`ChunkRequest`] frames without waiting; the
//! server answers each, in order, with a frame made of a postcard [`ChunkReplyHeader`] followed
//! by the raw bytes when `found`. Chunks, manifest chunks and manifest indexes are all addressed
//! by BLAKE3 hash: the requester verifies every reply against the hash it asked for.
//!
//! # Error handling
//! A decode failure, an oversize frame, a wrong hash or a timeout ends the stream; bad data also
//! bans the peer for `BAN_DURATION`. Nothing a peer sent before the failure is kept unless it
//! was verified by hash.

mod frame;

pub use frame::{
    read_frame, read_frame_into, read_handshake, write_frame, write_frame_parts, write_handshake,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::tree::ContentHash;
use crate::trust::SignedHead;

/// Protocol version spoken by this build. 3: manifests carry each file's mode (format 2), which
/// a node of version 2 cannot read.
pub const PROTOCOL_VERSION: u32 = 3;
/// Magic bytes at the start of every control stream.
pub const MAGIC: &[u8; 8] = b"treecast";
/// Protocol name of the control stream.
pub const CONTROL_PROTOCOL: &str = "/treecast/control/1";
/// Protocol name of chunk streams.
pub const CHUNKS_PROTOCOL: &str = "/treecast/chunks/1";
/// Longest goodbye reason kept.
pub const MAX_REASON_LEN: usize = 256;
/// Most peers in one peer-exchange message.
pub const MAX_PEERS_PER_MSG: usize = 64;
/// Most addresses kept per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Errors reading or writing the wire.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is over the cap of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("not a treecast peer (bad magic)")]
    BadMagic,
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("flooding: {0}")]
    Flood(&'static str),
}

impl WireError {
    /// True if the error shows the peer misbehaving (as opposed to a lost connection).
    pub fn is_hostile(&self) -> bool {
        matches!(
            self,
            WireError::FrameTooLarge { .. }
                | WireError::Decode(_)
                | WireError::BadMagic
                | WireError::Flood(_)
        )
    }
}

/// What a node is in this swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Publisher,
    Subscriber,
    /// Serves the DHT (and, later, relays) without joining a swarm.
    DhtNode,
}

/// First message after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: Uuid,
    pub swarm_id: Uuid,
    pub role: Role,
    /// Newest revision the sender holds completely.
    pub head: Option<SignedHead>,
    /// Addresses the sender listens on (multiaddr bytes), at most `MAX_ADDRS_PER_PEER`.
    pub addrs: Vec<Vec<u8>>,
}

/// A peer as told by peer exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// libp2p peer ID bytes.
    pub peer_id: Vec<u8>,
    /// Multiaddr bytes, at most `MAX_ADDRS_PER_PEER`.
    pub addrs: Vec<Vec<u8>>,
}

/// Messages on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    Hello(Hello),
    /// A newer verified head (announcement; flooded once per revision).
    Head(SignedHead),
    Heartbeat,
    Goodbye {
        reason: String,
    },
    /// Peer exchange: peers the sender is connected to, at most `MAX_PEERS_PER_MSG`.
    Peers(Vec<PeerInfo>),
    /// Availability while downloading `revision`: bit i set = the sender holds chunk i of the
    /// revision's chunk order (the sorted, de-duplicated chunk hashes of its files).
    Have {
        revision: u64,
        bitfield: Vec<u8>,
    },
    /// Completion notice: the sender now holds `revision` completely (flooded once).
    Complete {
        revision: u64,
    },
}

/// One chunk request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequest {
    pub id: u32,
    pub hash: ContentHash,
}

/// Header of a chunk reply; the chunk bytes follow in the same frame when `found`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReplyHeader {
    pub id: u32,
    pub found: bool,
}

/// Encode a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("wire messages encode")
}

/// Decode a message that must fill the whole frame.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// The header of a chunk reply frame; the chunk's bytes follow it (see `write_frame_parts`).
pub fn encode_reply_header(id: u32, found: bool) -> Vec<u8> {
    encode(&ChunkReplyHeader { id, found })
}

/// Split a chunk reply frame body into its header and bytes.
pub fn decode_reply(frame: &[u8]) -> Result<(ChunkReplyHeader, &[u8]), WireError> {
    let (header, body): (ChunkReplyHeader, &[u8]) =
        postcard::take_from_bytes(frame).map_err(|e| WireError::Decode(e.to_string()))?;
    if !header.found && !body.is_empty() {
        return Err(WireError::Decode(format!(
            "a not-found reply carrying {} bytes",
            body.len()
        )));
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trips() {
        // As a server sends them: header and bytes written as the parts of one frame.
        futures::executor::block_on(async {
            let mut wire = Vec::new();
            let found = encode_reply_header(9, true);
            write_frame_parts(&mut wire, &[&found, b"abc"])
                .await
                .unwrap();
            let missing = encode_reply_header(3, false);
            write_frame_parts(&mut wire, &[&missing, b""])
                .await
                .unwrap();
            let mut r = &wire[..];
            let mut frame = Vec::new();
            assert!(read_frame_into(&mut r, 64, &mut frame).await.unwrap());
            let (h, data) = decode_reply(&frame).unwrap();
            assert_eq!(h, ChunkReplyHeader { id: 9, found: true });
            assert_eq!(data, b"abc");
            assert!(read_frame_into(&mut r, 64, &mut frame).await.unwrap());
            let (h, data) = decode_reply(&frame).unwrap();
            assert!(!h.found && data.is_empty());
            assert!(!read_frame_into(&mut r, 64, &mut frame).await.unwrap());
        });
    }

    /// Found by `scripts/fuzz` (target chunk_msgs): a not-found reply with bytes after it was
    /// accepted and the bytes silently ignored.
    #[test]
    fn a_not_found_reply_with_a_body_is_malformed() {
        assert!(decode_reply(&[0x00, 0x00, 0x60]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..128 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let _ = decode::<ControlMsg>(&bytes);
            let _ = decode::<ChunkRequest>(&bytes);
            let _ = decode_reply(&bytes);
        }
    }
}
