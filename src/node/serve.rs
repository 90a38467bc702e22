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

/// The current index, shared between the engine (writer) and chunk servers (readers).
#[derive(Clone, Default)]
pub(crate) struct Content(Arc<RwLock<Arc<ServeIndex>>>);

impl Content {
    pub fn current(&self) -> Arc<ServeIndex> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, index: ServeIndex) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    }
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
        let full = path.under(&self.root);
        let file = std::fs::File::open(&full).ok()?;
        let mut buf = vec![0u8; *len as usize];
        file.read_exact_at(&mut buf, *off).ok()?;
        if !hash.matches(&buf) {
            tracing::warn!(path = %path, "file changed on disk since it was indexed; not serving the stale chunk");
            return None;
        }
        Some(buf)
    }
}
