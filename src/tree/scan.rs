//! Scanning a directory into a manifest, reusing hashes of files whose size, mtime and inode are
//! unchanged since the last scan.
//!
//! Policy: regular files and directories (including empty ones) are published, with the exec
//! bit. Symlinks are never followed and never published (a warning names each one), and neither
//! are sockets, FIFOs, devices or names that are not UTF-8. State directories (`.treecast`, in
//! any case) are skipped at every depth: a nested one holds another node's keys.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::BufReader;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Dir, FileType};

use serde::{Deserialize, Serialize};

use super::error::TreeError;
use super::manifest::published_mode;
use super::open::{mtime_ns, open_entry};
use super::path::is_state_dir;
use super::{
    chunk_reader, ChunkRef, ContentHash, Entry, EntryKind, FileId, IgnoreRules, Manifest, RelPath,
};

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
    /// The device the file is on; 0 if not known (indexed by an older treecast).
    pub dev: u64,
}

impl FileRecord {
    /// True if `meta` shows the same size, mtime and inode, so the hash can be reused.
    pub fn unchanged(&self, meta: &std::fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta) && self.inode == meta.ino()
    }

    /// True if `stat` (of a path, not followed) shows a regular file of the same size, mtime
    /// and inode, so the record stands without opening the file.
    pub fn unchanged_stat(&self, stat: &rustix::fs::Stat) -> bool {
        let now = stat_id(stat);
        FileType::from_raw_mode(stat_mode(stat)) == FileType::RegularFile
            && (self.size, self.mtime_ns, self.inode) == (now.size, now.mtime_ns, now.ino)
    }

    /// Who the file is on disk: only a file with this identity is read to serve its chunks.
    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.inode,
            size: self.size,
            mtime_ns: self.mtime_ns,
        }
    }

    /// True if the record has a read check for each of its chunks.
    pub fn has_checks(&self) -> bool {
        self.checks.len() == self.chunks.len()
    }
}

/// The identity a `stat` shows (its fields' types differ between architectures).
#[allow(clippy::unnecessary_cast)]
fn stat_id(stat: &rustix::fs::Stat) -> FileId {
    FileId {
        dev: stat.st_dev as u64,
        ino: stat.st_ino as u64,
        size: stat.st_size as u64,
        mtime_ns: stat.st_mtime as i128 * 1_000_000_000 + stat.st_mtime_nsec as i128,
    }
}

/// The mode bits a `stat` shows.
#[allow(clippy::unnecessary_cast)]
fn stat_mode(stat: &rustix::fs::Stat) -> u32 {
    stat.st_mode as u32
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
    /// Files whose record is the one the file index passed in held, unchanged.
    pub unchanged_records: u64,
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
    /// A test hook: told, on the scan's thread, each directory's path (relative; empty for the
    /// root) once it is listed and before any of its entries is opened. The scan goes on when
    /// it returns, so a test can change the tree at a known point of a scan.
    pub danger_listed: Option<ListedHook>,
}

/// The hook [`ScanProgress::danger_listed`] holds.
pub struct ListedHook(pub Box<dyn Fn(&Path) + Send + Sync>);

impl std::fmt::Debug for ListedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListedHook")
    }
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
    let io = |source| TreeError::Io {
        path: root.to_owned(),
        source,
    };
    let dir = File::open(root).map_err(io)?;
    let mut walk = Walk {
        known,
        ignore,
        progress,
        root,
        stats: ScanStats::default(),
        entries: Vec::new(),
        records: Vec::new(),
    };
    walk.dir(dir, &mut PathBuf::new(), 1)?;
    Ok(Scan {
        manifest: Manifest::from_entries(walk.entries)?,
        records: walk.records,
        stats: walk.stats,
    })
}

/// One scan's walk. Every directory and file is opened through its parent's descriptor without
/// following links ([`open_entry`]), so what is read is what was listed, even while a local
/// user swaps symlinks into the tree.
struct Walk<'a> {
    known: &'a HashMap<RelPath, FileRecord>,
    ignore: &'a IgnoreRules,
    progress: Option<&'a ScanProgress>,
    root: &'a Path,
    stats: ScanStats,
    entries: Vec<Entry>,
    records: Vec<(RelPath, FileRecord)>,
}

impl Walk<'_> {
    /// Walk the open directory `dir`, at `rel` below the root and `depth` levels down.
    fn dir(&mut self, dir: File, rel: &mut PathBuf, depth: usize) -> Result<(), TreeError> {
        let mut names: Vec<(OsString, FileType)> = Vec::new();
        let listing = Dir::read_from(&dir).map_err(|e| self.io(rel, e.into()))?;
        for entry in listing {
            let entry = entry.map_err(|e| self.io(rel, e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push((name.to_owned(), entry.file_type()));
            }
        }
        if let Some(hook) = self.progress.and_then(|p| p.danger_listed.as_ref()) {
            (hook.0)(rel);
        }
        for (name, kind) in names {
            rel.push(&name);
            let done = self.entry(&dir, &name, kind, rel, depth);
            rel.pop();
            done?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        dir: &File,
        name: &OsStr,
        kind: FileType,
        rel: &mut PathBuf,
        depth: usize,
    ) -> Result<(), TreeError> {
        if name.to_str().is_some_and(is_state_dir) {
            if depth > 1 {
                tracing::warn!(path = %rel.display(), "a nested treecast state directory: not published");
            }
            return Ok(());
        }
        if kind == FileType::Symlink {
            self.skip(rel, false, "symlink: not published");
            return Ok(());
        }
        if kind == FileType::RegularFile && self.unchanged_file(dir, name, rel) {
            return Ok(());
        }
        let file = match open_entry(dir, name) {
            Ok(f) => f,
            // Swapped for a symlink since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.skip(rel, false, "symlink: not published");
                return Ok(());
            }
            // Deleted since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io(rel, e)),
        };
        let meta = file.metadata().map_err(|e| self.io(rel, e))?;
        if self.ignore.is_ignored(rel, meta.is_dir()) {
            return Ok(());
        }
        let path = match RelPath::from_path(rel) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(path = %rel.display(), error = %e, "not published");
                self.stats.skipped += 1;
                return Ok(());
            }
        };
        if meta.is_dir() {
            self.stats.dirs += 1;
            self.entries.push(Entry {
                path,
                kind: EntryKind::Dir,
            });
            return self.dir(file, rel, depth + 1);
        }
        if !meta.is_file() {
            self.skip(rel, true, "special file: not published");
            return Ok(());
        }
        let record = self.file(file, &meta, &path)?;
        self.push_file(path, meta.mode(), record);
        Ok(())
    }

    /// Publish the file at `path` with `mode` (as on disk) and its `record`.
    fn push_file(&mut self, path: RelPath, mode: u32, record: FileRecord) {
        if self.known.get(&path) == Some(&record) {
            self.stats.unchanged_records += 1;
        }
        if let Some(p) = self.progress {
            p.files.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.entries.push(Entry {
            path: path.clone(),
            kind: EntryKind::File {
                size: record.size,
                mode: published_mode(mode),
                hash: record.hash,
                chunks: record.chunks.clone(),
            },
        });
        self.records.push((path, record));
    }

    /// The cheap way for a file the listing says is regular: one `stat` of the name (not
    /// followed), and if the index has a record (with read checks) of this very file,
    /// unchanged, that record is published without the file being opened. True if the entry
    /// is done (published, or ignored); false sends it the long way (open, fstat, hash if
    /// needed), which also handles whatever the stat could not settle (gone, a link now, a
    /// name that is not a publishable path).
    fn unchanged_file(&mut self, dir: &File, name: &OsStr, rel: &Path) -> bool {
        let Ok(stat) = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else {
            return false;
        };
        if FileType::from_raw_mode(stat_mode(&stat)) != FileType::RegularFile {
            return false;
        }
        if self.ignore.is_ignored(rel, false) {
            return true;
        }
        let Ok(path) = RelPath::from_path(rel) else {
            return false;
        };
        let Some(known) = self.known.get(&path) else {
            return false;
        };
        if !known.unchanged_stat(&stat) || !known.has_checks() {
            return false;
        }
        let id = stat_id(&stat);
        let mode = stat_mode(&stat);
        let record = FileRecord {
            executable: mode & 0o111 != 0,
            dev: id.dev,
            ..known.clone()
        };
        self.stats.files += 1;
        self.stats.bytes += record.size;
        self.push_file(path, mode, record);
        true
    }

    fn io(&self, rel: &Path, source: std::io::Error) -> TreeError {
        TreeError::Io {
            path: self.root.join(rel),
            source,
        }
    }

    /// Count `rel` as skipped, with a warning unless it is ignored anyway.
    fn skip(&mut self, rel: &Path, ignore_checked: bool, why: &'static str) {
        if ignore_checked || !self.ignore.is_ignored(rel, false) {
            tracing::warn!(path = %rel.display(), "{why}");
            self.stats.skipped += 1;
        }
    }

    /// The record of the open regular `file` at `path`, hashed unless the index has it.
    fn file(
        &mut self,
        file: File,
        meta: &std::fs::Metadata,
        path: &RelPath,
    ) -> Result<FileRecord, TreeError> {
        let io = |source| TreeError::Io {
            path: path.under(self.root),
            source,
        };
        self.stats.files += 1;
        self.stats.bytes += meta.len();
        let executable = meta.mode() & 0o111 != 0;
        // A record from before read checks is hashed again, once, to get them.
        let known = self.known.get(path);
        if let Some(rec) = known.filter(|r| r.unchanged(meta) && r.has_checks()) {
            return Ok(FileRecord {
                executable,
                dev: meta.dev(),
                ..rec.clone()
            });
        }
        let counted = Counting {
            inner: &file,
            progress: self.progress,
        };
        let chunked = chunk_reader(BufReader::with_capacity(1 << 20, counted)).map_err(io)?;
        self.stats.files_hashed += 1;
        self.stats.bytes_hashed += chunked.size;
        // Metadata again after hashing: if the file changed meanwhile, the next scan sees it.
        let meta = file.metadata().map_err(io)?;
        Ok(FileRecord {
            size: chunked.size,
            mtime_ns: mtime_ns(&meta),
            inode: meta.ino(),
            executable,
            hash: chunked.hash,
            chunks: chunked.chunks,
            checks: chunked.checks,
            dev: meta.dev(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::STATE_DIR;
    use std::os::unix::fs::PermissionsExt;

    /// The paths of `m`'s entries, in order.
    fn paths(m: &Manifest) -> Vec<&str> {
        m.entries().iter().map(|e| e.path.as_str()).collect()
    }

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
        let paths = paths(&m);
        assert_eq!(paths, vec!["a", "a/b", "a/b/file", "empty", "run.sh"]);
        assert_eq!(stats.skipped, 1);
        assert_eq!(stats.files_hashed, 2);
        let modes: Vec<_> = m.files().map(|f| (f.0.as_str(), f.2)).collect();
        assert_eq!(modes, vec![("a/b/file", 0o444), ("run.sh", 0o555)]);

        let known: HashMap<_, _> = records.into_iter().collect();
        let again = scan(root, &known, &IgnoreRules::none()).unwrap();
        assert_eq!(again.manifest, m);
        assert_eq!(
            again.stats.files_hashed, 0,
            "unchanged files are not rehashed"
        );
        assert_eq!(
            again.stats.unchanged_records, 2,
            "every record as the index held it"
        );
        // Indexed before read checks: hashed once more, to get them.
        let mut old = known.clone();
        old.values_mut().for_each(|r| r.checks.clear());
        let upgraded = scan(root, &old, &IgnoreRules::none()).unwrap();
        assert_eq!(upgraded.manifest, m);
        assert_eq!(upgraded.stats.files_hashed, 2);
        assert!(upgraded.records.iter().all(|(_, r)| r.has_checks()));
        assert_eq!(
            upgraded.stats.unchanged_records, 0,
            "records with checks are new"
        );
        std::fs::write(root.join("a/b/file"), b"changed").unwrap();
        let edited = scan(root, &known, &IgnoreRules::none()).unwrap();
        assert_eq!(
            edited.stats.unchanged_records, 1,
            "the edited file's record is new"
        );
    }

    /// The publisher's read and execute bits are published, never write or setuid bits; the
    /// owner always reads.
    #[test]
    fn modes_keep_read_and_execute_bits_only() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("group", 0o640, 0o440),
            ("private", 0o600, 0o400),
            ("odd", 0o044, 0o444),
            ("setuid", 0o4775, 0o555),
            ("owner-exec", 0o700, 0o500),
        ];
        for (name, mode, _) in cases {
            std::fs::write(dir.path().join(name), b"x").unwrap();
            std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let m = scan(dir.path(), &HashMap::new(), &IgnoreRules::none())
            .unwrap()
            .manifest;
        for (name, _, published) in cases {
            let (_, _, mode, _, _) = m.files().find(|f| f.0.as_str() == name).unwrap();
            assert_eq!(mode, published, "{name}: {mode:o}");
        }
    }

    /// A tree holding a mirror or another published tree: their state (keys, database) stays
    /// out, in any case of the name.
    #[test]
    fn nested_state_directories_are_never_published() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for state in ["inner/.treecast", "x/y/.TREECAST", "z/.TreeCast"] {
            std::fs::create_dir_all(root.join(state)).unwrap();
            std::fs::write(root.join(state).join("publisher.key"), b"secret").unwrap();
        }
        std::fs::write(root.join("inner/data"), b"data").unwrap();
        std::fs::write(root.join("z/.treecast.txt"), b"fine").unwrap();
        let scan = scan(root, &HashMap::new(), &IgnoreRules::none()).unwrap();
        let paths = paths(&scan.manifest);
        assert_eq!(
            paths,
            vec!["inner", "inner/data", "x", "x/y", "z", "z/.treecast.txt"]
        );
    }

    /// Links are listed as links and never read; a directory reached only through a link is
    /// never walked.
    #[test]
    fn links_to_files_and_directories_outside_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("private")).unwrap();
        std::fs::write(outside.path().join("private/secret"), b"secret").unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"mine").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("d/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("private/secret"), root.join("s")).unwrap();
        let scan = scan(root, &HashMap::new(), &IgnoreRules::none()).unwrap();
        let paths = paths(&scan.manifest);
        assert_eq!(paths, vec!["d", "d/f"]);
        assert_eq!(scan.stats.skipped, 2);
    }

    /// A file of the listing swapped for a symlink before it is opened (the race the walk
    /// closes): `open_entry` refuses it, so the scan skips it instead of reading the target.
    #[test]
    fn an_entry_swapped_for_a_link_after_listing_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::fs::write(dir.path().join("f"), b"mine").unwrap();
        let mut walk = Walk {
            known: &HashMap::new(),
            ignore: &IgnoreRules::none(),
            progress: None,
            root: dir.path(),
            stats: ScanStats::default(),
            entries: Vec::new(),
            records: Vec::new(),
        };
        let root = File::open(dir.path()).unwrap();
        // Listed as a regular file, then swapped.
        std::fs::remove_file(dir.path().join("f")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("f")).unwrap();
        let mut rel = PathBuf::from("f");
        walk.entry(&root, OsStr::new("f"), FileType::RegularFile, &mut rel, 1)
            .unwrap();
        assert!(walk.records.is_empty() && walk.entries.is_empty());
        assert_eq!(walk.stats.skipped, 1);
    }

    /// An unchanged file is published from its record after one `stat` of its name, which
    /// follows no link: a file swapped for a link to a file the index describes exactly
    /// (size, mtime, inode of the link's target) is still skipped, never published or read.
    /// A record the stat does not match is hashed again; the counters are a full scan's.
    #[test]
    fn the_stat_of_an_unchanged_file_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::fs::write(root.join("f"), b"mine").unwrap();
        std::fs::write(root.join("g"), b"other").unwrap();
        let first = scan(root, &HashMap::new(), &IgnoreRules::none()).unwrap();
        let again = scan(
            root,
            &first.records.iter().cloned().collect(),
            &IgnoreRules::none(),
        )
        .unwrap();
        assert_eq!(again.manifest, first.manifest);
        assert_eq!((again.stats.files, again.stats.bytes), (2, 9));
        assert_eq!(again.stats.files_hashed, 0);

        // The index describes the link's target as "f"; "g" was touched.
        let target = std::fs::metadata(outside.path().join("secret")).unwrap();
        let mut known: HashMap<_, _> = first.records.iter().cloned().collect();
        let f = RelPath::new("f").unwrap();
        let rec = known.get_mut(&f).unwrap();
        (rec.size, rec.mtime_ns, rec.inode) = (target.len(), mtime_ns(&target), target.ino());
        known.get_mut(&RelPath::new("g").unwrap()).unwrap().mtime_ns += 1;
        std::fs::remove_file(root.join("f")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("f")).unwrap();
        let mut walk = Walk {
            known: &known,
            ignore: &IgnoreRules::none(),
            progress: None,
            root,
            stats: ScanStats::default(),
            entries: Vec::new(),
            records: Vec::new(),
        };
        let root_dir = File::open(root).unwrap();
        for name in ["f", "g"] {
            // Listed as regular files, as before the swap.
            let mut rel = PathBuf::from(name);
            walk.entry(
                &root_dir,
                OsStr::new(name),
                FileType::RegularFile,
                &mut rel,
                1,
            )
            .unwrap();
        }
        let paths: Vec<_> = walk.records.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["g"]);
        assert_eq!((walk.stats.skipped, walk.stats.files_hashed), (1, 1));
    }

    /// Entries of a listing that vanish before they are opened, or a directory removed once
    /// opened: skipped, never an error that ends the scan (the next scan sees the tree as it
    /// is then).
    #[test]
    fn entries_that_vanish_after_listing_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("z/gone-dir")).unwrap();
        std::fs::write(root.join("z/x"), b"x").unwrap();
        std::fs::write(root.join("z/y"), b"y").unwrap();
        let (progress, rel) = (ScanProgress::default(), PathBuf::from("z"));
        let mut walk = Walk {
            known: &HashMap::new(),
            ignore: &IgnoreRules::none(),
            progress: Some(&progress),
            root,
            stats: ScanStats::default(),
            entries: Vec::new(),
            records: Vec::new(),
        };
        let z = File::open(root.join("z")).unwrap();
        // Listed, then gone: a file, and a directory (which vanishes with its parent).
        std::fs::remove_file(root.join("z/x")).unwrap();
        let mut at = rel.join("x");
        walk.entry(&z, OsStr::new("x"), FileType::RegularFile, &mut at, 2)
            .unwrap();
        let gone = File::open(root.join("z/gone-dir")).unwrap();
        std::fs::rename(root.join("z"), root.join("z.old")).unwrap();
        std::fs::remove_dir(root.join("z.old/gone-dir")).unwrap();
        walk.dir(gone, &mut rel.join("gone-dir"), 3).unwrap();
        let mut at = rel.join("y");
        walk.entry(&z, OsStr::new("y"), FileType::RegularFile, &mut at, 2)
            .unwrap();
        let paths: Vec<_> = walk.records.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["z/y"]);
        assert_eq!(walk.stats.skipped, 0);
    }
}
