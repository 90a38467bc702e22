//! The messages of the control and chunk streams, their limits, and their postcard encoding.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::WireError;
use crate::tree::ContentHash;
use crate::trust::SignedHead;

/// Longest goodbye reason kept.
pub const MAX_REASON_LEN: usize = 256;
/// Most peers in one peer-exchange message.
pub const MAX_PEERS_PER_MSG: usize = 64;
/// Most addresses kept per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;

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
    use crate::wire::{read_frame_into, write_frame_parts};

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
