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
//!    downloaded the sender holds: a full map once, then what it gained since; see Availability
//!    below), [`ControlMsg::HaveSync`] (asks for a full map), [`ControlMsg::Complete`] when
//!    the sender has applied a revision (a head announcement alone says nothing about what the
//!    sender holds), [`ControlMsg::Heartbeat`] every `HEARTBEAT_INTERVAL`, and
//!    [`ControlMsg::Goodbye`] before a graceful close. Silence for `PEER_TIMEOUT` means gone.
//!
//! ## Availability
//! A downloading node numbers the chunks of the revision in its chunk order (the sorted,
//! de-duplicated chunk hashes of its files) and tells its peers which it holds, at most every
//! `HAVE_INTERVAL` and only when that changed. Chunks held stay held, so every [`Have`] only
//! adds, and a message costs what changed, never the revision's size:
//! - The first broadcast of a revision is a full map: one [`Have`] per 1,048,576 chunks at most
//!   ([`ChunkSet::Bits`] of up to [`MAX_HAVE_BITS`] bytes, or [`ChunkSet::Gaps`] where that is
//!   fewer bytes), all marked `sync`; parts holding nothing are left out, but the first. At 10M
//!   chunks a full map is at most ten frames of about 128 KiB, under `MAX_CONTROL_FRAME`.
//! - Then each broadcast says what the sender gained since the last one, as gaps (up to
//!   [`MAX_HAVE_INDICES`] a message), or a full map when that is smaller.
//! - Broadcasts are numbered (`seq`); a full map carries the number of the last broadcast it
//!   includes. A receiver that sees a number other than the next one, or an update before any
//!   full map, asks for a full map with [`ControlMsg::HaveSync`] and keeps what it was told (it
//!   is still true). A node that could not queue a broadcast sends a full map next. A node
//!   that joins a download asks each peer not holding the revision for its full map.
//! - An index at or past the revision's chunk count, or a set over its cap, is hostile.
//!
//! A head (in a hello or a `Head`) carries at most `MAX_SUCCESSION` handover records, outside
//! its signature. A receiver keeps and passes on only the chain from the swarm's first key to
//! the head's signer; a peer that sends more records, or a forged one, is banned.
//!
//! Messages are postcard-encoded enums: new variants are only appended, so slots never move.
//!
//! # `/treecast/chunks/3`
//! Long-lived, pipelined request/response streams opened by the downloading side (a few per
//! peer, never one per chunk). The requester sends [`LaneMsg`] frames without waiting: an
//! `Ask` carries 1 to [`MAX_CHUNKS_PER_FRAME`] chunk hashes with consecutive request ids (a
//! requester batches what it has to ask when it writes; a frame over [`MAX_REQUEST_FRAME`] bytes,
//! an empty batch or one over the cap is hostile). The server answers every request, in order,
//! in reply frames: a postcard [`ChunkRepliesHeader`] (the first request id answered, then per
//! reply the chunk's length, "not found" or "busy") followed by the chunks' bytes one after the other.
//! A server packs consecutive replies into one frame up to [`REPLY_PACK_BYTES`] of chunk bytes;
//! a larger chunk travels alone, so no frame exceeds `MAX_CHUNK_FRAME`. The lengths must account
//! for every byte of the frame, and the ids must be the next ones the requester awaits: anything
//! else is hostile. As it reads each reply frame the requester sends `Received` with the
//! frame's last id: the server counts the bytes it sent and has not heard received against its
//! upload budget, and while that is full it may answer further requests from a peer "busy"
//! (`swarm::UploadBudget`): the requester asks another holder, and leaves this server alone
//! for `BUSY_BACKOFF`. Chunks,
//! manifest chunks and manifest indexes are all addressed by BLAKE3 hash: the requester
//! verifies every reply against the hash it asked for.
//!
//! # Error handling
//! A decode failure, an oversize frame, a wrong hash or a timeout ends the stream; bad data also
//! bans the peer for `BAN_DURATION`. Nothing a peer sent before the failure is kept unless it
//! was verified by hash.
//!
//! # Modules
//! `protocol`: the names and version above; `msg`: the messages, their limits and encoding;
//! `frame`: framing and the handshake; `error`: [`WireError`]. None imports this `mod.rs`.

mod error;
mod frame;
mod msg;
mod protocol;

pub use error::WireError;
pub use frame::{
    read_frame, read_frame_into, read_handshake, write_frame, write_frame_parts, write_handshake,
};
pub use msg::{
    decode, decode_lane_msg, decode_replies, encode, encode_received, encode_replies_header,
    encode_requests, Answer, ChunkReplies, ChunkRepliesHeader, ChunkRequests, ChunkSet, ControlMsg,
    Have, Hello, LaneMsg, PeerInfo, Role, MAX_ADDRS_PER_PEER, MAX_CHUNKS_PER_FRAME, MAX_HAVE_BITS,
    MAX_HAVE_INDICES, MAX_PEERS_PER_MSG, MAX_REASON_LEN, MAX_REQUEST_FRAME, REPLY_PACK_BYTES,
};
pub use protocol::{CHUNKS_PROTOCOL, CONTROL_PROTOCOL, MAGIC, PROTOCOL_VERSION};
