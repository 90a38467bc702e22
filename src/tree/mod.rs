//! The tree layer: content hashes, validated paths, FastCDC chunking, scanning and manifests.
//!
//! Pure apart from reading the files it scans; knows nothing of the network or the state DB.

mod chunk;
mod hash;
mod ignore;
mod manifest;
mod open;
mod path;
mod scan;

pub use chunk::{chunk_bytes, chunk_reader, ChunkRef, ChunkedFile};
pub use hash::{read_check, ContentHash};
pub use ignore::{IgnoreRules, IGNORE_FILE};
pub use manifest::{
    published_mode, Entry, EntryKind, EntryWire, Manifest, ManifestWire, MANIFEST_FORMAT, MODE_BITS,
};
pub use open::{open_beneath, open_beneath_cached, open_cached, FileId};
pub use path::{is_state_dir, RelPath};
pub use scan::{mtime_ns, scan, scan_with_progress, FileRecord, Scan, ScanProgress, ScanStats};

use thiserror::Error;

/// Errors of the tree layer.
#[derive(Debug, Error)]
pub enum TreeError {
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("bad ignore rules in {0}")]
    BadIgnore(String),
    #[error("manifest rejected: {0}")]
    BadManifest(String),
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("scanning: {0}")]
    Walk(#[from] walkdir::Error),
}
