//! The messages of the control and chunk streams, their limits, and their postcard encoding.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::WireError;
use crate::tree::{ContentHash, CHUNK_MAX};
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
    /// Availability while downloading a revision: chunks the sender holds (a part of its full
    /// map, or what it gained since its last `Have`). See [`Have`].
    Have(Have),
    /// Completion notice: the sender now holds `revision` completely (flooded once).
    Complete {
        revision: u64,
    },
    /// "Send me your full map of `revision`": the receiver answers with `Have`s marked `sync`
    /// if it is downloading that revision, and ignores it otherwise.
    HaveSync {
        revision: u64,
    },
}

/// Most bitfield bytes in one [`ChunkSet::Bits`]: 1,048,576 chunks.
pub const MAX_HAVE_BITS: usize = 128 * 1024;
/// Most indices in one [`ChunkSet::Gaps`].
pub const MAX_HAVE_INDICES: usize = 32 * 1024;

/// Chunks of a revision, as indices into its chunk order (the sorted, de-duplicated chunk
/// hashes of its files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkSet {
    /// Bit `i` of `bits` (least significant bit of each byte first) set: chunk `first + i`.
    /// At most [`MAX_HAVE_BITS`] bytes.
    Bits { first: u32, bits: Vec<u8> },
    /// Strictly ascending indices, each written as its distance from the one before (the
    /// first from 0), so that close indices take a byte each. At most [`MAX_HAVE_INDICES`].
    Gaps(Vec<u32>),
}

/// One availability message. Chunks a node holds stay held while it downloads a revision, so
/// every `Have` only adds: the receiver's view of the sender is the union of what it was told.
///
/// `seq` numbers the sender's broadcasts of a revision (1, 2, …). A full map (the first
/// broadcast of a revision, the answer to [`ControlMsg::HaveSync`], or after the sender could
/// not queue a broadcast) is one or more messages marked `sync`, all with the `seq` of the
/// last broadcast they include. A receiver expects `seq + 1` next; any other number (or a
/// message that is not `sync` before any that is) means it missed one, and it asks for a full
/// map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    pub revision: u64,
    pub seq: u32,
    pub sync: bool,
    pub chunks: ChunkSet,
}

impl ChunkSet {
    /// `indices` (strictly ascending) as gaps.
    pub fn gaps(indices: &[u32]) -> Self {
        let mut prev = 0;
        let gaps = indices
            .iter()
            .map(|&i| {
                let gap = i - prev;
                prev = i;
                gap
            })
            .collect();
        ChunkSet::Gaps(gaps)
    }

    /// Over its size cap: a hostile message.
    pub fn check_size(&self) -> Result<(), WireError> {
        let (n, max, what) = match self {
            ChunkSet::Bits { bits, .. } => (bits.len(), MAX_HAVE_BITS, "bitfield bytes"),
            ChunkSet::Gaps(gaps) => (gaps.len(), MAX_HAVE_INDICES, "indices"),
        };
        if n > max {
            return Err(WireError::Decode(format!(
                "a Have of {n} {what} (at most {max})"
            )));
        }
        Ok(())
    }

    /// The indices this names, ascending, each below `len` (the revision's chunk count).
    /// An index out of range, gaps that are not ascending or overflow, or a set over its cap
    /// is malformed.
    pub fn indices(&self, len: usize) -> Result<Vec<u32>, WireError> {
        self.check_size()?;
        let out_of_range =
            |i: u64| WireError::Decode(format!("a Have names chunk {i}, the revision has {len}"));
        match self {
            ChunkSet::Bits { first, bits } => {
                let mut out = Vec::new();
                for (byte_at, byte) in bits.iter().enumerate().filter(|(_, b)| **b != 0) {
                    for bit in (0..8).filter(|b| byte & (1 << b) != 0) {
                        let i = u64::from(*first) + byte_at as u64 * 8 + bit;
                        if i >= len as u64 {
                            return Err(out_of_range(i));
                        }
                        out.push(i as u32);
                    }
                }
                Ok(out)
            }
            ChunkSet::Gaps(gaps) => {
                let mut out = Vec::with_capacity(gaps.len());
                let mut at = 0u64;
                for (k, gap) in gaps.iter().enumerate() {
                    if k > 0 && *gap == 0 {
                        return Err(WireError::Decode("a Have names a chunk twice".into()));
                    }
                    at += u64::from(*gap);
                    if at >= len as u64 {
                        return Err(out_of_range(at));
                    }
                    out.push(at as u32);
                }
                Ok(out)
            }
        }
    }
}

/// Most chunk requests in one request frame, and most replies in one reply frame.
pub const MAX_CHUNKS_PER_FRAME: usize = 128;
/// Largest frame a requester sends on a chunk stream: a full batch of hashes, its first id,
/// its length and the message's tag.
pub const MAX_REQUEST_FRAME: usize = MAX_CHUNKS_PER_FRAME * 32 + 16;
/// Chunk bytes a server packs into one reply frame at most; a chunk larger than this travels
/// alone. Small chunks share a frame (one length, one write, one wakeup), large ones do not
/// wait for each other.
pub const REPLY_PACK_BYTES: usize = 64 * 1024;

/// A batch of chunk requests: request `i` has id `first_id + i` (wrapping) and asks for
/// `hashes[i]`. At least one and at most [`MAX_CHUNKS_PER_FRAME`] hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequests {
    pub first_id: u32,
    pub hashes: Vec<ContentHash>,
}

/// What a requester sends on a chunk stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LaneMsg {
    /// A batch of requests.
    Ask(ChunkRequests),
    /// The replies through request id `through` have arrived: the server's upload budget
    /// counts their bytes no longer.
    Received { through: u32 },
}

/// One request's answer: the chunk (its bytes, or in a header their length), "not found"
/// (the server does not hold it, or its seeding policy holds it back), or "busy" (held, but
/// the server's upload is full now: ask another holder, and this server again later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer<T> {
    Chunk(T),
    NotFound,
    Busy,
}

impl<T> Answer<T> {
    /// The chunk, if this answer carries one.
    pub fn chunk(&self) -> Option<&T> {
        match self {
            Answer::Chunk(c) => Some(c),
            Answer::NotFound | Answer::Busy => None,
        }
    }

    /// The chunk, or the answer that carries none (as an answer of any chunk type).
    pub fn into_chunk<U>(self) -> Result<T, Answer<U>> {
        match self {
            Answer::Chunk(c) => Ok(c),
            Answer::NotFound => Err(Answer::NotFound),
            Answer::Busy => Err(Answer::Busy),
        }
    }

    /// The same answer, borrowing its chunk.
    pub fn as_ref(&self) -> Answer<&T> {
        match self {
            Answer::Chunk(c) => Answer::Chunk(c),
            Answer::NotFound => Answer::NotFound,
            Answer::Busy => Answer::Busy,
        }
    }

    /// The same answer, a chunk's carried as `f` makes it.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Chunk(c) => Answer::Chunk(f(c)),
            Answer::NotFound => Answer::NotFound,
            Answer::Busy => Answer::Busy,
        }
    }
}

/// Header of a reply frame: the answers to the requests `first_id`, `first_id + 1`, … in
/// order, a chunk's as its length (the bytes follow the header, one chunk after the other, in
/// the same order). At least one and at most [`MAX_CHUNKS_PER_FRAME`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRepliesHeader {
    pub first_id: u32,
    pub lens: Vec<Answer<u32>>,
}

/// A decoded reply frame: its first id and each answer, a chunk's as its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReplies<'a> {
    pub first_id: u32,
    pub chunks: Vec<Answer<&'a [u8]>>,
}

/// Encode a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("wire messages encode")
}

/// Decode a message that must fill the whole frame.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// A request frame asking for `hashes` (1 to [`MAX_CHUNKS_PER_FRAME`]) with ids from `first_id`.
pub fn encode_requests(first_id: u32, hashes: &[ContentHash]) -> Vec<u8> {
    debug_assert!(!hashes.is_empty() && hashes.len() <= MAX_CHUNKS_PER_FRAME);
    encode(&LaneMsg::Ask(ChunkRequests {
        first_id,
        hashes: hashes.to_vec(),
    }))
}

/// The frame acknowledging the replies through request id `through`.
pub fn encode_received(through: u32) -> Vec<u8> {
    encode(&LaneMsg::Received { through })
}

/// Decode a requester's frame; an empty batch or one over [`MAX_CHUNKS_PER_FRAME`] is
/// malformed.
pub fn decode_lane_msg(frame: &[u8]) -> Result<LaneMsg, WireError> {
    let msg: LaneMsg = decode(frame)?;
    if let LaneMsg::Ask(requests) = &msg {
        check_count("request", requests.hashes.len())?;
    }
    Ok(msg)
}

/// The header of a reply frame whose replies are `lens` (see [`ChunkRepliesHeader`]); the
/// chunks' bytes follow it (see `write_frame_parts`).
pub fn encode_replies_header(first_id: u32, lens: Vec<Answer<u32>>) -> Vec<u8> {
    encode(&ChunkRepliesHeader { first_id, lens })
}

/// Split a reply frame body into its replies. The lengths must account for every byte after
/// the header, none over `CHUNK_MAX`.
pub fn decode_replies(frame: &[u8]) -> Result<ChunkReplies<'_>, WireError> {
    let (header, mut body): (ChunkRepliesHeader, &[u8]) =
        postcard::take_from_bytes(frame).map_err(|e| WireError::Decode(e.to_string()))?;
    check_count("reply", header.lens.len())?;
    let mut chunks = Vec::with_capacity(header.lens.len());
    for answer in header.lens {
        let len = match answer.into_chunk() {
            Ok(len) => len,
            Err(none) => {
                chunks.push(none);
                continue;
            }
        };
        let len = len as usize;
        if len > CHUNK_MAX as usize || len > body.len() {
            return Err(WireError::Decode(format!(
                "a reply of {len} bytes where {} are left",
                body.len()
            )));
        }
        let (chunk, rest) = body.split_at(len);
        chunks.push(Answer::Chunk(chunk));
        body = rest;
    }
    if !body.is_empty() {
        return Err(WireError::Decode(format!(
            "{} bytes after the last reply",
            body.len()
        )));
    }
    Ok(ChunkReplies {
        first_id: header.first_id,
        chunks,
    })
}

fn check_count(what: &str, n: usize) -> Result<(), WireError> {
    if n == 0 || n > MAX_CHUNKS_PER_FRAME {
        return Err(WireError::Decode(format!(
            "a {what} frame of {n} chunks (1 to {MAX_CHUNKS_PER_FRAME})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{read_frame_into, write_frame_parts};

    #[test]
    fn replies_round_trip_packed_in_one_frame() {
        // As a server sends them: header and bytes written as the parts of one frame.
        futures::executor::block_on(async {
            let mut wire = Vec::new();
            let lens = vec![
                Answer::Chunk(3),
                Answer::NotFound,
                Answer::Chunk(0),
                Answer::Busy,
                Answer::Chunk(2),
            ];
            let header = encode_replies_header(9, lens);
            write_frame_parts(&mut wire, &[&header, b"abc", b"", b"de"])
                .await
                .unwrap();
            let mut r = &wire[..];
            let mut frame = Vec::new();
            assert!(read_frame_into(&mut r, 64, &mut frame).await.unwrap());
            let replies = decode_replies(&frame).unwrap();
            assert_eq!(replies.first_id, 9);
            let expected: Vec<Answer<&[u8]>> = vec![
                Answer::Chunk(b"abc"),
                Answer::NotFound,
                Answer::Chunk(b""),
                Answer::Busy,
                Answer::Chunk(b"de"),
            ];
            assert_eq!(replies.chunks, expected);
            assert!(!read_frame_into(&mut r, 64, &mut frame).await.unwrap());
        });
    }

    #[test]
    fn requests_round_trip_and_a_full_batch_fits_its_frame() {
        let hashes: Vec<_> = (0..MAX_CHUNKS_PER_FRAME as u32)
            .map(|i| ContentHash::of(&i.to_le_bytes()))
            .collect();
        let frame = encode_requests(u32::MAX, &hashes);
        assert!(frame.len() <= MAX_REQUEST_FRAME, "{} bytes", frame.len());
        let decoded = decode_lane_msg(&frame).unwrap();
        assert_eq!(
            decoded,
            LaneMsg::Ask(ChunkRequests {
                first_id: u32::MAX,
                hashes
            })
        );
        let ack = decode_lane_msg(&encode_received(u32::MAX)).unwrap();
        assert_eq!(ack, LaneMsg::Received { through: u32::MAX });
    }

    #[test]
    fn batches_empty_or_over_the_cap_are_malformed() {
        let empty = encode(&LaneMsg::Ask(ChunkRequests {
            first_id: 0,
            hashes: vec![],
        }));
        assert!(decode_lane_msg(&empty).is_err());
        let over = encode(&LaneMsg::Ask(ChunkRequests {
            first_id: 0,
            hashes: vec![ContentHash::of(b"x"); MAX_CHUNKS_PER_FRAME + 1],
        }));
        assert!(decode_lane_msg(&over).is_err());
        assert!(decode_replies(&encode_replies_header(0, vec![])).is_err());
        let over = encode_replies_header(0, vec![Answer::NotFound; MAX_CHUNKS_PER_FRAME + 1]);
        assert!(decode_replies(&over).is_err());
    }

    /// Lengths that do not account for the body exactly: too long, too short, over a chunk.
    #[test]
    fn replies_whose_lengths_do_not_match_the_body_are_malformed() {
        let frame = |lens: Vec<Option<u32>>, body: &[u8]| {
            let lens = lens
                .into_iter()
                .map(|l| l.map_or(Answer::NotFound, Answer::Chunk))
                .collect();
            let mut f = encode_replies_header(1, lens);
            f.extend_from_slice(body);
            f
        };
        assert!(decode_replies(&frame(vec![Some(4)], b"abc")).is_err());
        assert!(decode_replies(&frame(vec![Some(2)], b"abc")).is_err());
        assert!(decode_replies(&frame(vec![None], b"a")).is_err());
        assert!(decode_replies(&frame(vec![Some(CHUNK_MAX + 1)], b"")).is_err());
        assert!(decode_replies(&frame(vec![Some(1), Some(2)], b"abc")).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..128 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let _ = decode::<ControlMsg>(&bytes);
            let _ = decode_lane_msg(&bytes);
            let _ = decode_replies(&bytes);
        }
    }
}
