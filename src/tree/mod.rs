//! The tree layer: content hashes, validated paths, FastCDC chunking, scanning and manifests.
//!
//! Pure apart from reading the files it scans; knows nothing of the network or the state DB.
//! Owns the limits of what a tree may hold (chunk sizes, path length and depth, entries): they
//! are protocol limits, listed again in `config`.
//!
//! Modules, from the bottom up; none imports this `mod.rs`, and none imports in a circle:
//! - `error`: [`TreeError`]; `hash`: [`ContentHash`] and read checks.
//! - `path`: [`RelPath`] and the state directory's name; `open`: opening a tree's files
//!   without following links, and telling a file's identity ([`FileId`]).
//! - `chunk`: FastCDC chunking and a file's hash (of its chunk list); `ignore`: a publisher's ignore rules.
//! - `manifest`: the [`Manifest`] and its canonical encoding; `scan`: a directory into one.

mod chunk;
mod error;
mod hash;
mod ignore;
mod manifest;
mod open;
mod path;
mod scan;

pub use chunk::{
    chunk_bytes, chunk_reader, file_hash, ChunkRef, ChunkedFile, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN,
};
pub use error::TreeError;
pub use hash::{read_check, ContentHash};
pub use ignore::{IgnoreRules, IGNORE_FILE};
pub use manifest::{
    published_mode, Entry, EntryKind, EntryWire, Manifest, ManifestWire, MANIFEST_FORMAT,
    MAX_ENTRIES, MODE_BITS,
};
pub use open::{mtime_ns, open_beneath, open_beneath_cached, open_cached, FileId};
pub use path::{is_state_dir, RelPath, MAX_COMPONENT_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN, STATE_DIR};
pub use scan::{scan, scan_with_progress, FileRecord, ListedHook, Scan, ScanProgress, ScanStats};
