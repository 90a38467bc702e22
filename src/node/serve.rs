//! What this node can serve: the current head, its manifest blobs, and where each chunk of the
//! current revision lives on disk. Swapped whole when a revision is published or applied.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::tree::{chunk_bytes, ChunkRef, ContentHash, Manifest, RelPath};
use crate::trust::SignedHead;

/// Index of servable content for one revision.
#[derive(Default)]
pub(crate) struct ServeIndex {
    root: PathBuf,
    pub head: Option<SignedHead>,
    chunks: HashMap<ContentHash, (RelPath, u64, u32)>,
    blobs: HashMap<ContentHash, Vec<u8>>,
}

/// Memory for recently served or fetched chunks, per node.
const CACHE_BYTES: usize = 32 << 20;

/// Verified chunks of the revision being downloaded, in staging: hash to (file, offset, len).
type Partial = HashMap<ContentHash, (PathBuf, u64, u32)>;

/// What this node serves, shared between the engine (writer) and chunk servers (readers): the
/// index of the revision it holds, plus verified chunks of the one it is downloading.
#[derive(Clone, Default)]
pub(crate) struct Content {
    index: Arc<RwLock<Arc<ServeIndex>>>,
    partial: Arc<RwLock<Partial>>,
    cache: Arc<Mutex<ChunkCache>>,
}

/// Verified chunks kept in memory, oldest dropped first. In a swarm each chunk is asked for by
/// several peers soon after it arrives; without this every one of those requests would read
/// it from disk and hash it again.
#[derive(Default)]
struct ChunkCache {
    map: HashMap<ContentHash, Arc<[u8]>>,
    order: VecDeque<ContentHash>,
    bytes: usize,
}

impl ChunkCache {
    fn get(&self, hash: &ContentHash) -> Option<Arc<[u8]>> {
        self.map.get(hash).cloned()
    }

    fn insert(&mut self, hash: ContentHash, data: Arc<[u8]>) {
        if data.len() > CACHE_BYTES || self.map.contains_key(&hash) {
            return;
        }
        while self.bytes + data.len() > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
        self.bytes += data.len();
        self.order.push_back(hash);
        self.map.insert(hash, data);
    }
}

impl Content {
    pub fn current(&self) -> Arc<ServeIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Make `index` the revision served; forget partial chunks.
    pub fn replace(&self, index: ServeIndex) {
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        self.partial
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A chunk of the revision being downloaded is verified at `path`/`offset` in staging.
    pub fn add_partial(&self, hash: ContentHash, path: PathBuf, offset: u64, len: u32) {
        self.partial
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, (path, offset, len));
    }

    /// True if `hash` is one of the held revision's manifest blobs.
    pub fn is_manifest_blob(&self, hash: &ContentHash) -> bool {
        self.current().blobs.contains_key(hash)
    }

    /// `data` of `hash` was just verified: keep it in memory for the peers about to ask.
    pub fn remember(&self, hash: ContentHash, data: &[u8]) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(hash, Arc::from(data));
    }

    /// The bytes of `hash`, checked, from memory, the held revision or staging. Blocking.
    pub fn read(&self, hash: &ContentHash) -> Option<Vec<u8>> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash);
        if let Some(data) = cached {
            return Some(data.to_vec());
        }
        let data = match self.current().read(hash) {
            Some(data) => data,
            None => {
                let place = self
                    .partial
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(hash)
                    .cloned()?;
                read_checked(&place.0, place.1, place.2, hash)?
            }
        };
        self.remember(*hash, &data);
        Some(data)
    }
}

fn read_checked(path: &std::path::Path, off: u64, len: u32, hash: &ContentHash) -> Option<Vec<u8>> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(off)).ok()?;
    // Read into spare capacity: the buffer is not zeroed first.
    let mut buf = Vec::with_capacity(len as usize);
    file.take(u64::from(len)).read_to_end(&mut buf).ok()?;
    if buf.len() != len as usize {
        return None;
    }
    if !hash.matches(&buf) {
        tracing::warn!(path = %path.display(), "data changed on disk since it was indexed; not serving it");
        return None;
    }
    Some(buf)
}

/// Split encoded manifest bytes into blobs: its chunks plus the chunk index. Returns the index
/// hash and every blob.
pub(crate) fn manifest_blobs(manifest: &[u8]) -> (ContentHash, Vec<(ContentHash, Vec<u8>)>) {
    let pieces = chunk_bytes(manifest);
    let index: Vec<ChunkRef> = pieces.iter().map(|(r, _)| *r).collect();
    let index_bytes = postcard::to_stdvec(&index).expect("index encodes");
    let index_hash = ContentHash::of(&index_bytes);
    let mut blobs: Vec<_> = pieces
        .into_iter()
        .map(|(r, d)| (r.hash, d.to_vec()))
        .collect();
    blobs.push((index_hash, index_bytes));
    (index_hash, blobs)
}

impl ServeIndex {
    pub fn build(
        root: PathBuf,
        head: SignedHead,
        manifest: &Manifest,
        blobs: Vec<(ContentHash, Vec<u8>)>,
    ) -> Self {
        let mut chunks = HashMap::new();
        for (path, _, _, _, refs) in manifest.files() {
            let mut off = 0u64;
            for c in refs {
                chunks
                    .entry(c.hash)
                    .or_insert_with(|| (path.clone(), off, c.len));
                off += c.len as u64;
            }
        }
        ServeIndex {
            root,
            head: Some(head),
            chunks,
            blobs: blobs.into_iter().collect(),
        }
    }

    /// The bytes of `hash`, read from disk and checked, or `None`. Blocking.
    pub fn read(&self, hash: &ContentHash) -> Option<Vec<u8>> {
        if let Some(b) = self.blobs.get(hash) {
            return Some(b.clone());
        }
        let (path, off, len) = self.chunks.get(hash)?;
        read_checked(&path.under(&self.root), *off, *len, hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_drops_the_oldest_past_its_size() {
        let mut c = ChunkCache::default();
        let big = |b: u8| Arc::<[u8]>::from(vec![b; CACHE_BYTES / 4]);
        let hashes: Vec<_> = (0..5u8).map(|i| ContentHash::of(&[i])).collect();
        for (i, h) in hashes.iter().enumerate() {
            c.insert(*h, big(i as u8));
        }
        assert!(c.get(&hashes[0]).is_none(), "oldest dropped");
        for h in &hashes[1..] {
            assert!(c.get(h).is_some());
        }
        assert_eq!(c.bytes, CACHE_BYTES);
        c.insert(
            ContentHash::of(b"huge"),
            Arc::from(vec![0u8; CACHE_BYTES + 1]),
        );
        assert_eq!(c.map.len(), 4, "an entry over the whole size is not kept");
    }

    #[test]
    fn content_serves_remembered_chunks_and_checks_disk_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staged");
        std::fs::write(&path, b"0123456789").unwrap();
        let content = Content::default();
        let good = ContentHash::of(b"2345");
        content.add_partial(good, path.clone(), 2, 4);
        assert_eq!(content.read(&good).as_deref(), Some(&b"2345"[..]));
        // Damaged on disk after it was read once: the verified copy in memory is served.
        std::fs::write(&path, b"01xxxx6789").unwrap();
        assert_eq!(content.read(&good).as_deref(), Some(&b"2345"[..]));
        // Never read before and damaged: refused.
        let other = ContentHash::of(b"6789");
        std::fs::write(&path, b"012345xxxx").unwrap();
        content.add_partial(other, path, 6, 4);
        assert_eq!(content.read(&other), None);
        let fresh = ContentHash::of(b"fresh");
        content.remember(fresh, b"fresh");
        assert_eq!(content.read(&fresh).as_deref(), Some(&b"fresh"[..]));
    }
}
