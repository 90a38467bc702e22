//! FastCDC chunking with BLAKE3 per chunk and per file (and a read check per chunk, see
//! [`read_check`]).

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

/// The result of chunking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedFile {
    pub hash: ContentHash,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
    /// The [`read_check`] of each chunk, in the same order.
    pub checks: Vec<u64>,
}

/// Chunk everything `reader` yields.
pub fn chunk_reader(reader: impl Read) -> std::io::Result<ChunkedFile> {
    let mut file_hasher = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut checks = Vec::new();
    let mut size = 0u64;
    let cdc = fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
    for chunk in cdc {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        file_hasher.update(&chunk.data);
        size += chunk.data.len() as u64;
        chunks.push(ChunkRef {
            hash: ContentHash::of(&chunk.data),
            len: chunk.data.len() as u32,
        });
        checks.push(read_check(&chunk.data));
    }
    Ok(ChunkedFile {
        hash: file_hasher.finalize().into(),
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
        assert_eq!(streamed.hash, ContentHash::of(&data));
        assert!(chunk_reader(&[][..]).unwrap().chunks.is_empty());
    }
}
