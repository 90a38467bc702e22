//! The manifest: the sorted list of entries of one revision, in a canonical postcard encoding.
//!
//! `ManifestWire` is what travels; `Manifest` is what the rest of the program uses, built only
//! through `TryFrom<ManifestWire>`, which rejects anything hostile.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::error::TreeError;
use super::{file_hash, ChunkRef, ContentHash, RelPath, CHUNK_MAX};

/// Most entries in one manifest.
pub const MAX_ENTRIES: usize = 10_000_000;

/// Version of the manifest encoding. Format 1 had an exec bit where format 2 has a file's mode.
/// Format 3 has the encoding of format 2, and each file's hash is its [`file_hash`] (of its
/// chunk list) where formats 1 and 2 had the BLAKE3 of its bytes. All three are read: a file
/// hash of format 1 or 2 is replaced by the file hash of its chunks (their chunk lists name the
/// bytes already), so revisions applied before the change stay held and served.
pub const MANIFEST_FORMAT: u32 = 3;

/// The permission bits a manifest may give a file: read and execute, for owner, group and
/// others. Never write, setuid, setgid or sticky.
pub const MODE_BITS: u32 = 0o555;

/// The mode a published file has in the manifest: the publisher's read and execute bits, and
/// always read for the owner (the mirror's owner reads its own mirror).
pub fn published_mode(st_mode: u32) -> u32 {
    st_mode & MODE_BITS | 0o400
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
        /// The file's mode in the mirror (see [`published_mode`]).
        mode: u32,
        hash: ContentHash,
        chunks: Vec<ChunkRef>,
    },
}

/// An entry's kind in format 1: the mirror made a file 0555 if executable, else 0444.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum EntryKindV1 {
    Dir,
    File {
        size: u64,
        executable: bool,
        hash: ContentHash,
        chunks: Vec<ChunkRef>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EntryWireV1 {
    path: String,
    kind: EntryKindV1,
}

/// A format 1 manifest (revisions published before modes), still held and served by nodes
/// that applied one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ManifestWireV1 {
    format: u32,
    entries: Vec<EntryWireV1>,
}

impl From<ManifestWireV1> for ManifestWire {
    fn from(old: ManifestWireV1) -> Self {
        let kind = |k| match k {
            EntryKindV1::Dir => EntryKind::Dir,
            EntryKindV1::File {
                size,
                executable,
                hash,
                chunks,
            } => EntryKind::File {
                size,
                mode: if executable { 0o555 } else { 0o444 },
                hash,
                chunks,
            },
        };
        ManifestWire {
            format: 2,
            entries: old
                .entries
                .into_iter()
                .map(|e| EntryWire {
                    path: e.path,
                    kind: kind(e.kind),
                })
                .collect(),
        }
    }
}

/// A format 2 manifest as format 3: each file's hash becomes the file hash of its chunks.
fn hash_by_chunks(mut wire: ManifestWire) -> ManifestWire {
    for e in &mut wire.entries {
        if let EntryKind::File { hash, chunks, .. } = &mut e.kind {
            *hash = file_hash(chunks);
        }
    }
    wire.format = MANIFEST_FORMAT;
    wire
}

/// A manifest entry as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryWire {
    pub path: String,
    pub kind: EntryKind,
}

/// A manifest as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestWire {
    pub format: u32,
    pub entries: Vec<EntryWire>,
}

/// A validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    pub kind: EntryKind,
}

/// A validated manifest: entries sorted by path, unique, no entry below a file, consistent
/// chunk lists.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    entries: Vec<Entry>,
}

impl Manifest {
    /// Build from entries in any order (the scanner's output).
    pub fn from_entries(mut entries: Vec<Entry>) -> Result<Self, TreeError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let wire = ManifestWire {
            format: MANIFEST_FORMAT,
            entries: entries
                .into_iter()
                .map(|e| EntryWire {
                    path: e.path.as_str().to_owned(),
                    kind: e.kind,
                })
                .collect(),
        };
        Manifest::try_from(wire)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// File entries with their size, mode, hash and chunks.
    pub fn files(&self) -> impl Iterator<Item = (&RelPath, u64, u32, ContentHash, &[ChunkRef])> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File {
                size,
                mode,
                hash,
                chunks,
            } => Some((&e.path, *size, *mode, *hash, chunks.as_slice())),
            EntryKind::Dir => None,
        })
    }

    /// Total bytes of file content.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|f| f.1).sum()
    }

    /// Canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        let wire = ManifestWire {
            format: MANIFEST_FORMAT,
            entries: self
                .entries
                .iter()
                .map(|e| EntryWire {
                    path: e.path.as_str().to_owned(),
                    kind: e.kind.clone(),
                })
                .collect(),
        };
        postcard::to_stdvec(&wire).expect("manifest encodes")
    }

    /// Decode and validate; a manifest of format 1 or 2 is read too (see [`MANIFEST_FORMAT`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let bad = |e: postcard::Error| TreeError::BadManifest(e.to_string());
        // The format comes first in every encoding.
        let format: u32 = postcard::take_from_bytes(bytes).map_err(bad)?.0;
        let wire: ManifestWire = match format {
            1 => hash_by_chunks(
                postcard::from_bytes::<ManifestWireV1>(bytes)
                    .map_err(bad)?
                    .into(),
            ),
            2 => hash_by_chunks(postcard::from_bytes(bytes).map_err(bad)?),
            _ => postcard::from_bytes(bytes).map_err(bad)?,
        };
        Manifest::try_from(wire)
    }
}

impl TryFrom<ManifestWire> for Manifest {
    type Error = TreeError;

    fn try_from(wire: ManifestWire) -> Result<Self, TreeError> {
        if wire.format != MANIFEST_FORMAT {
            return Err(TreeError::BadManifest(format!(
                "format {} (this build reads {MANIFEST_FORMAT})",
                wire.format
            )));
        }
        if wire.entries.len() > MAX_ENTRIES {
            return Err(TreeError::BadManifest("too many entries".into()));
        }
        let mut files: HashSet<String> = HashSet::new();
        let mut entries = Vec::with_capacity(wire.entries.len());
        for e in wire.entries {
            let path = RelPath::new(&e.path)?;
            if let Some(prev) = entries.last().map(|p: &Entry| &p.path) {
                if *prev >= path {
                    return Err(TreeError::BadManifest(format!(
                        "entries not strictly sorted at {path}"
                    )));
                }
            }
            if let Some(a) = path.ancestors().find(|a| files.contains(*a)) {
                return Err(TreeError::BadManifest(format!(
                    "{path} lies below the file {a}"
                )));
            }
            check_kind(&path, &e.kind)?;
            if matches!(e.kind, EntryKind::File { .. }) {
                files.insert(path.as_str().to_owned());
            }
            entries.push(Entry { path, kind: e.kind });
        }
        Ok(Manifest { entries })
    }
}

fn check_kind(path: &RelPath, kind: &EntryKind) -> Result<(), TreeError> {
    let EntryKind::File {
        size,
        chunks,
        mode,
        hash,
    } = kind
    else {
        return Ok(());
    };
    if *mode & !MODE_BITS != 0 || *mode & 0o400 == 0 {
        return Err(TreeError::BadManifest(format!(
            "{path}: mode {mode:o} (only read and execute bits, owner read always)"
        )));
    }
    if chunks.iter().any(|c| c.len == 0 || c.len > CHUNK_MAX) {
        return Err(TreeError::BadManifest(format!("{path}: bad chunk length")));
    }
    let sum: u64 = chunks.iter().map(|c| c.len as u64).sum();
    if sum != *size {
        return Err(TreeError::BadManifest(format!(
            "{path}: chunks add up to {sum}, size says {size}"
        )));
    }
    if *hash != file_hash(chunks) {
        return Err(TreeError::BadManifest(format!(
            "{path}: the file hash is not the hash of its chunk list"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> EntryWire {
        let c = crate::tree::chunk_reader(data).unwrap();
        EntryWire {
            path: path.into(),
            kind: EntryKind::File {
                size: c.size,
                mode: 0o444,
                hash: c.hash,
                chunks: c.chunks,
            },
        }
    }

    fn wire(entries: Vec<EntryWire>) -> ManifestWire {
        ManifestWire {
            format: MANIFEST_FORMAT,
            entries,
        }
    }

    #[test]
    fn round_trip_is_canonical() {
        let m = Manifest::try_from(wire(vec![
            EntryWire {
                path: "a".into(),
                kind: EntryKind::Dir,
            },
            file("a/b", b"hello"),
            file("c", b""),
        ]))
        .unwrap();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(Manifest::decode(&bytes).unwrap().encode(), bytes);
    }

    #[test]
    fn hostile_manifests_are_rejected() {
        let cases = vec![
            wire(vec![file("../x", b"x")]),
            wire(vec![file("/etc/x", b"x")]),
            wire(vec![file("a/../../x", b"x")]),
            wire(vec![file("b", b"x"), file("a", b"x")]),
            wire(vec![file("a", b"x"), file("a", b"x")]),
            wire(vec![file("a", b"x"), file("a/b", b"x")]),
            wire(vec![EntryWire {
                path: "a".into(),
                kind: EntryKind::File {
                    size: 10,
                    mode: 0o444,
                    hash: ContentHash::of(b""),
                    chunks: vec![],
                },
            }]),
            with_mode(0o4555),
            with_mode(0o644),
            with_mode(0o044),
            with_hash(ContentHash::of(b"x")),
            with_hash(ContentHash::of(b"y")),
        ];
        for c in cases {
            assert!(Manifest::try_from(c.clone()).is_err(), "{c:?} accepted");
        }
    }

    fn with_mode(mode: u32) -> ManifestWire {
        let mut e = file("a", b"x");
        if let EntryKind::File { mode: m, .. } = &mut e.kind {
            *m = mode;
        }
        wire(vec![e])
    }

    /// A file whose hash is not its chunk list's: the bytes of `x` (the hash of formats 1
    /// and 2), or another file's.
    fn with_hash(hash: ContentHash) -> ManifestWire {
        let mut e = file("a", b"x");
        if let EntryKind::File { hash: h, .. } = &mut e.kind {
            *h = hash;
        }
        wire(vec![e])
    }

    /// A revision published before modes is still read: the exec bit becomes 0555, else 0444,
    /// the modes its mirror had.
    #[test]
    fn format_1_manifests_still_decode() {
        let c = crate::tree::chunk_reader(&b"x"[..]).unwrap();
        let old = |path: &str, executable| EntryWireV1 {
            path: path.into(),
            kind: EntryKindV1::File {
                size: c.size,
                executable,
                hash: c.hash,
                chunks: c.chunks.clone(),
            },
        };
        let bytes = postcard::to_stdvec(&ManifestWireV1 {
            format: 1,
            entries: vec![old("a", true), old("b", false)],
        })
        .unwrap();
        let m = Manifest::decode(&bytes).unwrap();
        let modes: Vec<_> = m.files().map(|f| (f.0.as_str(), f.2)).collect();
        assert_eq!(modes, vec![("a", 0o555), ("b", 0o444)]);
        let mut v4 = postcard::to_stdvec(&4u32).unwrap();
        v4.extend(&bytes[1..]);
        assert!(Manifest::decode(&v4).is_err(), "an unknown format");
    }

    /// A revision published before file hashes came from chunk lists (format 2: the BLAKE3 of
    /// the bytes) is still read, its file hashes replaced by those of the chunk lists; the same
    /// bytes as format 3 are refused, since their hashes do not name the chunk lists.
    #[test]
    fn format_2_manifests_decode_with_file_hashes_of_their_chunks() {
        let data = vec![7u8; 3 << 20];
        let c = crate::tree::chunk_reader(&data[..]).unwrap();
        assert!(c.chunks.len() > 1);
        let old = |format| ManifestWire {
            format,
            entries: vec![EntryWire {
                path: "a".into(),
                kind: EntryKind::File {
                    size: c.size,
                    mode: 0o444,
                    hash: ContentHash::of(&data),
                    chunks: c.chunks.clone(),
                },
            }],
        };
        let m = Manifest::decode(&postcard::to_stdvec(&old(2)).unwrap()).unwrap();
        let hashes: Vec<_> = m.files().map(|f| f.3).collect();
        assert_eq!(hashes, vec![c.hash]);
        let new = Manifest::decode(&m.encode()).unwrap();
        assert_eq!(new, m, "and encodes as format 3");
        let err = Manifest::decode(&postcard::to_stdvec(&old(3)).unwrap()).unwrap_err();
        assert!(err.to_string().contains("chunk list"), "{err}");
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 17 + len) as u8).collect();
            let _ = Manifest::decode(&bytes);
        }
    }
}
