//! `ContentHash`: a BLAKE3 digest naming a chunk, a manifest, or a file (by its chunk list, see
//! `chunk::file_hash`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// BLAKE3 hash of some bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hash `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// True if `bytes` hash to this value.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }

    /// Lowercase hex, as used in staging file names.
    pub fn to_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0)
    }
}

/// A cheap checksum (XXH3, 64 bits) of bytes this node has already verified against their
/// [`ContentHash`], kept to check later reads of them from its own disk before serving them:
/// it catches a file edited or rotted since it was indexed, at a tenth of BLAKE3's cost.
/// Local only: never sent, never trusted from a peer, and bytes from a peer are always checked
/// against their BLAKE3 hash.
pub fn read_check(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        ContentHash(*h.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{self}")
    }
}
