//! The manifest: the sorted list of entries of one revision, in a canonical postcard encoding.
//!
//! `ManifestWire` is what travels; `Manifest` is what the rest of the program uses, built only
//! through `TryFrom<ManifestWire>`, which rejects anything hostile.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{ChunkRef, ContentHash, RelPath, TreeError};
use crate::config::{CHUNK_MAX, MAX_ENTRIES};

/// Version of the manifest encoding.
pub const MANIFEST_FORMAT: u32 = 1;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
        executable: bool,
        hash: ContentHash,
        chunks: Vec<ChunkRef>,
    },
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

    /// File entries with their metadata.
    pub fn files(&self) -> impl Iterator<Item = (&RelPath, u64, bool, ContentHash, &[ChunkRef])> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File {
                size,
                executable,
                hash,
                chunks,
            } => Some((&e.path, *size, *executable, *hash, chunks.as_slice())),
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

    /// Decode and validate.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let wire: ManifestWire =
            postcard::from_bytes(bytes).map_err(|e| TreeError::BadManifest(e.to_string()))?;
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
    let EntryKind::File { size, chunks, .. } = kind else {
        return Ok(());
    };
    if chunks.iter().any(|c| c.len == 0 || c.len > CHUNK_MAX) {
        return Err(TreeError::BadManifest(format!("{path}: bad chunk length")));
    }
    let sum: u64 = chunks.iter().map(|c| c.len as u64).sum();
    if sum != *size {
        return Err(TreeError::BadManifest(format!(
            "{path}: chunks add up to {sum}, size says {size}"
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
                executable: false,
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
                    executable: false,
                    hash: ContentHash::of(b""),
                    chunks: vec![],
                },
            }]),
        ];
        for c in cases {
            assert!(Manifest::try_from(c.clone()).is_err(), "{c:?} accepted");
        }
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 17 + len) as u8).collect();
            let _ = Manifest::decode(&bytes);
        }
    }
}
