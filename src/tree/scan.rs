//! Scanning a directory into a manifest, reusing hashes of files whose size, mtime and inode are
//! unchanged since the last scan.
//!
//! Policy: regular files and directories (including empty ones) are published, with the exec
//! bit. Symlinks are never followed and never published (a warning names each one), and neither
//! are sockets, FIFOs, devices or names that are not UTF-8. The state directory is skipped.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    chunk_reader, ChunkRef, ContentHash, Entry, EntryKind, IgnoreRules, Manifest, RelPath,
    TreeError,
};
use crate::config::STATE_DIR;

/// What the file index remembers of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
    pub executable: bool,
    pub hash: ContentHash,
    pub chunks: Vec<ChunkRef>,
    /// The [`read_check`](super::read_check) of each chunk, in the same order; empty if not
    /// known, and then reads of this file are checked against the chunk hashes instead.
    pub checks: Vec<u64>,
}

impl FileRecord {
    /// True if `meta` shows the same size, mtime and inode, so the hash can be reused.
    pub fn unchanged(&self, meta: &std::fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta) && self.inode == meta.ino()
    }

    /// True if the record has a read check for each of its chunks.
    pub fn has_checks(&self) -> bool {
        self.checks.len() == self.chunks.len()
    }
}

/// Counters from one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    pub skipped: u64,
}

/// Nanoseconds since the epoch of `meta`'s mtime.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// The result of one scan.
#[derive(Debug, Clone)]
pub struct Scan {
    pub manifest: Manifest,
    /// The file index of the tree as scanned.
    pub records: Vec<(RelPath, FileRecord)>,
    pub stats: ScanStats,
}

/// A scan's progress as it runs, for progress bars: files seen and bytes hashed so far.
#[derive(Debug, Default)]
pub struct ScanProgress {
    pub files: std::sync::atomic::AtomicU64,
    pub bytes_hashed: std::sync::atomic::AtomicU64,
}

/// Counts bytes read into a [`ScanProgress`].
struct Counting<'a, R> {
    inner: R,
    progress: Option<&'a ScanProgress>,
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = self.progress {
            p.bytes_hashed
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// Scan `root`, leaving out what `ignore` names. `known` is the file index from the last scan.
pub fn scan(
    root: &Path,
    known: &HashMap<RelPath, FileRecord>,
    ignore: &IgnoreRules,
) -> Result<Scan, TreeError> {
    scan_with_progress(root, known, ignore, None)
}

/// [`scan`], telling `progress` how far it got.
pub fn scan_with_progress(
    root: &Path,
    known: &HashMap<RelPath, FileRecord>,
    ignore: &IgnoreRules,
    progress: Option<&ScanProgress>,
) -> Result<Scan, TreeError> {
    let mut stats = ScanStats::default();
    let mut entries = Vec::new();
    let mut records = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            if e.depth() == 0 {
                return true;
            }
            if e.depth() == 1 && e.file_name() == STATE_DIR {
                return false;
            }
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            !ignore.is_ignored(rel, e.file_type().is_dir())
        });
    for item in walker {
        let item = item?;
        let rel = item
            .path()
            .strip_prefix(root)
            .expect("walkdir stays below root");
        let path = match RelPath::from_path(rel) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(path = %rel.display(), error = %e, "not published");
                stats.skipped += 1;
                continue;
            }
        };
        let ft = item.file_type();
        if ft.is_dir() {
            stats.dirs += 1;
            entries.push(Entry {
                path,
                kind: EntryKind::Dir,
            });
        } else if ft.is_file() {
            let record = scan_file(item.path(), known.get(&path), &mut stats, progress)?;
            if let Some(p) = progress {
                p.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            entries.push(Entry {
                path: path.clone(),
                kind: EntryKind::File {
                    size: record.size,
                    executable: record.executable,
                    hash: record.hash,
                    chunks: record.chunks.clone(),
                },
            });
            records.push((path, record));
        } else {
            tracing::warn!(%path, "symlink or special file: not published");
            stats.skipped += 1;
        }
    }
    Ok(Scan {
        manifest: Manifest::from_entries(entries)?,
        records,
        stats,
    })
}

fn scan_file(
    path: &Path,
    known: Option<&FileRecord>,
    stats: &mut ScanStats,
    progress: Option<&ScanProgress>,
) -> Result<FileRecord, TreeError> {
    let io = |source| TreeError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    stats.files += 1;
    stats.bytes += meta.len();
    let executable = meta.mode() & 0o111 != 0;
    // A record from before read checks is hashed again, once, to get them.
    if let Some(rec) = known.filter(|r| r.unchanged(&meta) && r.has_checks()) {
        return Ok(FileRecord {
            executable,
            ..rec.clone()
        });
    }
    let file = File::open(path).map_err(io)?;
    let counted = Counting {
        inner: file,
        progress,
    };
    let chunked = chunk_reader(BufReader::with_capacity(1 << 20, counted)).map_err(io)?;
    stats.files_hashed += 1;
    stats.bytes_hashed += chunked.size;
    // Re-read metadata after hashing: if the file changed meanwhile, the next scan sees it.
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    Ok(FileRecord {
        size: chunked.size,
        mtime_ns: mtime_ns(&meta),
        inode: meta.ino(),
        executable,
        hash: chunked.hash,
        chunks: chunked.chunks,
        checks: chunked.checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn scan_covers_policy_and_reuses_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(STATE_DIR)).unwrap();
        std::fs::write(root.join(STATE_DIR).join("secret"), b"no").unwrap();
        std::fs::write(root.join("a/b/file"), b"hello").unwrap();
        std::fs::write(root.join("run.sh"), b"#!/bin/sh").unwrap();
        std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();

        let Scan {
            manifest: m,
            records,
            stats,
        } = scan(root, &HashMap::new(), &IgnoreRules::none()).unwrap();
        let paths: Vec<_> = m.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["a", "a/b", "a/b/file", "empty", "run.sh"]);
        assert_eq!(stats.skipped, 1);
        assert_eq!(stats.files_hashed, 2);
        let exec: Vec<_> = m.files().map(|f| (f.0.as_str(), f.2)).collect();
        assert_eq!(exec, vec![("a/b/file", false), ("run.sh", true)]);

        let known: HashMap<_, _> = records.into_iter().collect();
        let again = scan(root, &known, &IgnoreRules::none()).unwrap();
        assert_eq!(again.manifest, m);
        assert_eq!(
            again.stats.files_hashed, 0,
            "unchanged files are not rehashed"
        );
        // Indexed before read checks: hashed once more, to get them.
        let mut old = known.clone();
        old.values_mut().for_each(|r| r.checks.clear());
        let upgraded = scan(root, &old, &IgnoreRules::none()).unwrap();
        assert_eq!(upgraded.manifest, m);
        assert_eq!(upgraded.stats.files_hashed, 2);
        assert!(upgraded.records.iter().all(|(_, r)| r.has_checks()));
    }
}
