//! What this node can serve: the current head, its manifest blobs, and where each chunk of the
//! current revision lives on disk. Swapped whole when a revision is published or applied.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

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

/// Verified chunks of the revision being downloaded, in staging: hash to (file, offset, len).
type Partial = HashMap<ContentHash, (PathBuf, u64, u32)>;

/// What this node serves, shared between the engine (writer) and chunk servers (readers): the
/// index of the revision it holds, plus verified chunks of the one it is downloading.
#[derive(Clone, Default)]
pub(crate) struct Content {
    index: Arc<RwLock<Arc<ServeIndex>>>,
    partial: Arc<RwLock<Partial>>,
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

    /// The bytes of `hash`, checked, from the held revision or staging. Blocking.
    pub fn read(&self, hash: &ContentHash) -> Option<Vec<u8>> {
        if let Some(data) = self.current().read(hash) {
            return Some(data);
        }
        let place = self
            .partial
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()?;
        read_checked(&place.0, place.1, place.2, hash)
    }
}

fn read_checked(path: &std::path::Path, off: u64, len: u32, hash: &ContentHash) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, off).ok()?;
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
