//! FastCDC chunking with BLAKE3 per chunk (and a read check per chunk, see [`read_check`]), and
//! a file's identity, [`file_hash`]: a hash of its chunk list, so that verifying every chunk
//! verifies the file.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::{read_check, ContentHash};

/// FastCDC minimum chunk size.
pub const CHUNK_MIN: u32 = 64 * 1024;
/// FastCDC average chunk size.
pub const CHUNK_AVG: u32 = 256 * 1024;
/// FastCDC maximum chunk size; also the largest blob a peer may send in one reply.
pub const CHUNK_MAX: u32 = 1024 * 1024;

/// One chunk of a file or blob: its hash and length. Offsets follow from the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: ContentHash,
    pub len: u32,
}

/// BLAKE3 key-derivation context of [`file_hash`]: it keeps a file's hash apart from every
/// plain BLAKE3 hash (a chunk's, a manifest's), also for a file of one chunk.
const FILE_HASH_CONTEXT: &str = "treecast 2026-12 file hash from its chunk list v1";

/// A file's identity: BLAKE3 in key-derivation mode ([`FILE_HASH_CONTEXT`]) over each chunk's
/// hash (32 bytes) and length (`u32` LE), in order. Fixed-width records, so no two chunk lists
/// give the same input. Bytes that match every chunk hash of the list, in order, are the file:
/// verifying each chunk verifies the file, without a second pass over its bytes.
pub fn file_hash(chunks: &[ChunkRef]) -> ContentHash {
    let mut hasher = blake3::Hasher::new_derive_key(FILE_HASH_CONTEXT);
    for c in chunks {
        hasher.update(&c.hash.0);
        hasher.update(&c.len.to_le_bytes());
    }
    hasher.finalize().into()
}

/// The result of chunking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedFile {
    /// [`file_hash`] of `chunks`.
    pub hash: ContentHash,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
    /// The [`read_check`] of each chunk, in the same order.
    pub checks: Vec<u64>,
}

/// Chunk everything `reader` yields.
pub fn chunk_reader(reader: impl Read) -> std::io::Result<ChunkedFile> {
    let mut chunks = Vec::new();
    let mut checks = Vec::new();
    let mut size = 0u64;
    let cdc = fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
    for chunk in cdc {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        size += chunk.data.len() as u64;
        chunks.push(ChunkRef {
            hash: ContentHash::of(&chunk.data),
            len: chunk.data.len() as u32,
        });
        checks.push(read_check(&chunk.data));
    }
    Ok(ChunkedFile {
        hash: file_hash(&chunks),
        size,
        chunks,
        checks,
    })
}

/// Chunk an in-memory blob, returning the refs and the chunk bytes.
pub fn chunk_bytes(bytes: &[u8]) -> Vec<(ChunkRef, &[u8])> {
    fastcdc::v2020::FastCDC::new(bytes, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX)
        .map(|c| {
            let data = &bytes[c.offset..c.offset + c.length];
            let r = ChunkRef {
                hash: ContentHash::of(data),
                len: c.length as u32,
            };
            (r, data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut out);
        out
    }

    #[test]
    fn one_byte_edit_changes_about_one_chunk() {
        let mut data = noise(8 << 20, 1);
        let before = chunk_reader(&data[..]).unwrap();
        data[4 << 20] ^= 0xff;
        let after = chunk_reader(&data[..]).unwrap();
        let old: std::collections::HashSet<_> = before.chunks.iter().collect();
        let changed = after.chunks.iter().filter(|c| !old.contains(c)).count();
        assert!(changed <= 2, "{changed} chunks changed");
        assert_ne!(before.hash, after.hash);
        assert_eq!(after.size, 8 << 20);
    }

    #[test]
    fn chunk_bounds_hold_and_blob_matches_stream() {
        let data = noise(5 << 20, 2);
        let streamed = chunk_reader(&data[..]).unwrap();
        let pieces = chunk_bytes(&data);
        let blob: Vec<ChunkRef> = pieces.iter().map(|(r, _)| *r).collect();
        assert_eq!(streamed.chunks, blob);
        let checks: Vec<u64> = pieces.iter().map(|(_, d)| read_check(d)).collect();
        assert_eq!(streamed.checks, checks, "a read check per chunk, in order");
        let (last, rest) = blob.split_last().unwrap();
        assert!(rest
            .iter()
            .all(|c| c.len >= CHUNK_MIN && c.len <= CHUNK_MAX));
        assert!(last.len <= CHUNK_MAX);
        assert_eq!(streamed.hash, file_hash(&blob));
        let empty = chunk_reader(&[][..]).unwrap();
        assert!(empty.chunks.is_empty());
        assert_eq!(empty.hash, file_hash(&[]));
    }

    /// The file hash names the chunk list and nothing else: another order, another length or
    /// another chunk is another file, and a file of one chunk is not named like its chunk.
    #[test]
    fn the_file_hash_is_the_chunk_list_and_only_it() {
        let data = noise(3 << 20, 4);
        let c = chunk_reader(&data[..]).unwrap();
        assert!(c.chunks.len() > 2);
        let mut swapped = c.chunks.clone();
        swapped.swap(0, 1);
        let mut longer = c.chunks.clone();
        longer[0].len += 1;
        let mut other = c.chunks.clone();
        other[1].hash = ContentHash::of(b"another chunk");
        for list in [&swapped, &longer, &other, &c.chunks[1..].to_vec()] {
            assert_ne!(file_hash(list), c.hash);
        }
        let small = chunk_reader(&b"one chunk"[..]).unwrap();
        assert_eq!(small.chunks.len(), 1);
        assert_ne!(small.hash, small.chunks[0].hash, "domain-separated");
        assert_ne!(small.hash, ContentHash::of(b"one chunk"));
        assert_ne!(file_hash(&[]), ContentHash::of(b""));
    }
}
