//! The staging area: partial files of the revision being downloaded, in `.treecast/staging/`.
//!
//! Each staged file is named by its file hash, in the subdirectory named by the hash's first two
//! hex digits (256 of them, made as first needed): a million files in one directory made every
//! create, `chmod` and rename search a directory index of 100 MB, most of a first sync's time
//! (the flat layout of earlier versions is salvaged as any stale staging is). A staged file of
//! several chunks has a sidecar `<hash>.chunks` beside it listing its
//! chunks, so that after a crash or a retarget every verified chunk already on disk is found
//! again by rehashing (no separate journal to keep consistent). A file of one chunk (most small
//! files) has none: its bytes are its one chunk, found again by hashing them, and a sidecar
//! would cost a file written, synced and deleted for each of them. Only verified chunks are
//! written here, and a file's hash is the hash of its chunk list (`tree::file_hash`), so a
//! file whose every chunk was written is verified: finishing it reads none of its bytes again.
//! A staged file is created when
//! its first chunk arrives (or when it is finished, if it has none), and at most
//! [`OPEN_STAGED_FILES`] are open at a time, whatever the number of files. Nothing here is
//! visible in the mirror until `apply_revision` renames it into place.
//!
//! A file whose directory the mirror does not have yet (all of them in a first sync) is staged
//! at its own path under `tree/` instead (see [`TreeFiles`]): `apply_revision` then puts each
//! new directory in place whole, by one rename, not one rename per file, and a reader sees it
//! appear complete. Its sidecar, if any, stays in the shards by hash.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{io_err, StoreError};
use super::open_files::OpenFiles;
use super::private::private_dir;
use crate::tree::{read_check, ChunkRef, ContentHash, RelPath};

/// Where each needed chunk goes: (file hash, offset, length), possibly several places. Most
/// chunks have one place, kept inline: a million small files made a million one-place lists
/// on the heap, and the map is looked up for every chunk that arrives.
pub type ChunkPositions = ByHash<Places>;

/// A map keyed by content hash, with foldhash: the staging maps hold an entry per file or chunk
/// and are looked up for each (at a million files std's SipHash was a tenth of putting them in
/// place). Seeded per process, like std's.
pub type ByHash<V> = HashMap<ContentHash, V, foldhash::fast::RandomState>;

/// The places of one chunk (see [`ChunkPositions`]).
pub type Places = smallvec::SmallVec<[(ContentHash, u64, u32); 1]>;

/// Files staged at their own path under [`TREE_DIR`], each in a directory the mirror does not
/// have yet: file hash to its path in the revision (the first path that holds it) and that
/// path's mode.
pub type TreeFiles = ByHash<(RelPath, u32)>;

/// Subdirectory of the staging area where new directories of the revision are built.
pub const TREE_DIR: &str = "tree";

/// Mode of a staged file: its owner's alone, and writable until `install` sets the mirror's.
const STAGED_MODE: u32 = 0o600;
/// Names of copies of a staged file, made by the apply for paths that share it, start with this.
pub(super) const COPY_PREFIX: &str = "tmp-";

/// Bytes written to staged files after which their writeback is started in the background
/// (the file's, or after files written whole, the file system's), so that the final sync has
/// little left to do.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Staged files kept open at most (a file closed here is opened again when next written): a
/// revision of a million files must not need a million descriptors, and the node's limit is
/// often 1024.
pub const OPEN_STAGED_FILES: usize = 64;

/// The staged files of one target revision.
pub struct StagingArea {
    dir: PathBuf,
    /// Every file of the target: its size and chunks, to create it when it is first written.
    wanted: ByHash<(u64, Vec<ChunkRef>)>,
    open: OpenFiles<ContentHash>,
    unflushed: AtomicU64,
    /// Writeback to start, for a thread of their own: starting writeback can block while the
    /// disk's queue is full, and chunk writes should not wait for that.
    writeback: std::sync::mpsc::SyncSender<Writeback>,
    /// The staging directory, opened before anything was written here: `finish` syncs the file
    /// system through it, so that a writeback error since then is reported to it (Linux tells
    /// each open file of a file system's errors since its open), even one that the
    /// writeback thread's own syncs saw first.
    sync_dir: File,
    /// The [`read_check`] of every verified chunk staged, to index the files with. A chunk is
    /// here only once it is written at every place it belongs.
    checks: Mutex<ByHash<u64>>,
    /// Which of the [`SHARDS`] subdirectories are known to exist.
    shards: [std::sync::OnceLock<()>; SHARDS],
    /// Files staged in the tree, not in the shards.
    tree: TreeFiles,
    /// [`TREE_DIR`] in the staging directory: joined once, not for each chunk staged.
    tree_dir: PathBuf,
    /// Directories under the tree known to exist.
    tree_dirs: Mutex<HashSet<PathBuf>>,
    /// What the descriptor that wrote a file of [`TreeFiles`] whole saw of it after the write
    /// (see [`Stamp`]): its record, once in place, without a lookup of its path.
    written: Mutex<ByHash<Stamp>>,
}

/// What a file's record in the file index keeps of it (a rename of its directory, or a mode
/// change, leaves these as they are), and its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Modification time in nanoseconds.
    pub mtime_ns: i128,
    pub inode: u64,
    pub dev: u64,
    /// Permission bits.
    pub mode: u32,
}

impl Stamp {
    /// Of the file at `path` (not following a final symlink).
    pub fn of_path(path: &Path) -> Result<Self, StoreError> {
        Ok(Self::of(
            &std::fs::symlink_metadata(path).map_err(io_err(path))?,
        ))
    }

    /// What `meta` says.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            mtime_ns: crate::tree::mtime_ns(meta),
            inode: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Subdirectories of the staging directory: a staged file is in the one of its hash's first
/// byte.
const SHARDS: usize = 256;

/// The subdirectory name of the staged files whose hash starts with `byte`.
fn shard_name(byte: u8) -> String {
    format!("{byte:02x}")
}

/// The shard a staging directory entry named `name` is, if it is one.
fn is_shard_name(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl StagingArea {
    /// Open the staging area for `wanted` files (file hash, size, chunks). Returns the area,
    /// where every needed chunk goes, and which chunks are already present and verified.
    /// Staged files of older targets are used as a chunk source, then removed.
    pub fn open(
        dir: &Path,
        wanted: &[(ContentHash, u64, Vec<ChunkRef>)],
    ) -> Result<(Self, ChunkPositions, HashSet<ContentHash>), StoreError> {
        Self::open_with_tree(dir, wanted.to_vec(), TreeFiles::default())
    }

    /// [`Self::open`], staging the files of `tree` at their own path under [`TREE_DIR`].
    /// Whatever else is in the tree (from an older target) is removed first.
    /// `wanted` is taken, not copied: at a million files a copy of its chunk lists was a
    /// second's work and a hundred MiB.
    pub fn open_with_tree(
        dir: &Path,
        wanted: Vec<(ContentHash, u64, Vec<ChunkRef>)>,
        tree: TreeFiles,
    ) -> Result<(Self, ChunkPositions, HashSet<ContentHash>), StoreError> {
        private_dir(dir)?;
        let mut positions =
            ChunkPositions::with_capacity_and_hasher(wanted.len(), Default::default());
        for (file, _, chunks) in &wanted {
            let mut off = 0u64;
            for c in chunks {
                positions
                    .entry(c.hash)
                    .or_default()
                    .push((*file, off, c.len));
                off += c.len as u64;
            }
        }
        let sync_dir = File::open(dir).map_err(io_err(dir))?;
        let background = File::open(dir).map_err(io_err(dir))?;
        let (writeback, queue) = std::sync::mpsc::sync_channel::<Writeback>(2);
        std::thread::Builder::new()
            .name("treecast-writeback".into())
            .spawn(move || {
                // Ends when the area, and with it the sender, is dropped.
                while let Ok(what) = queue.recv() {
                    match what {
                        Writeback::File(file) => start_writeback(&file),
                        Writeback::Written => write_out(&background),
                    }
                }
            })
            .map_err(io_err(dir))?;
        let area = StagingArea {
            dir: dir.to_owned(),
            wanted: wanted
                .into_iter()
                .map(|(h, size, chunks)| (h, (size, chunks)))
                .collect(),
            open: OpenFiles::new(OPEN_STAGED_FILES),
            unflushed: AtomicU64::new(0),
            writeback,
            sync_dir,
            checks: Mutex::default(),
            shards: std::array::from_fn(|_| std::sync::OnceLock::new()),
            tree,
            tree_dir: dir.join(TREE_DIR),
            tree_dirs: Mutex::default(),
            written: Mutex::default(),
        };
        area.clean_tree()?;
        let mut present = area.find_verified()?;
        area.salvage_stale(&positions, &mut present)?;
        Ok((area, positions, present))
    }

    /// The chunks of `wanted` already verified in place, every place they belong (a kill
    /// between the writes of one chunk to two places leaves it in one: it is fetched again),
    /// with their read checks recorded.
    fn find_verified(&self) -> Result<HashSet<ContentHash>, StoreError> {
        let mut valid: HashMap<ContentHash, u64> = HashMap::new();
        let mut invalid: HashSet<ContentHash> = HashSet::new();
        // Files not there: their chunks are not verified in every place, if found in another.
        let mut absent = Vec::new();
        // One listing of the directory, not a lookup per wanted file (most are not there).
        let staged = self.names()?;
        let tree_there = self.tree_dir.is_dir();
        for (hash, (_, chunks)) in &self.wanted {
            let there = match self.tree.get(hash) {
                Some((rel, _)) => {
                    tree_there
                        && std::fs::symlink_metadata(rel.under(&self.tree_dir))
                            .is_ok_and(|m| m.is_file())
                }
                None => staged.contains(&hash.to_hex()),
            };
            if !there {
                absent.push(chunks);
                continue;
            }
            let path = self.path_of(hash);
            make_writable(&path)?;
            let file = self.file(hash)?;
            let (good, bad) = valid_chunks(&file, chunks);
            valid.extend(good);
            invalid.extend(bad);
        }
        // A first sync finds nothing: no set of every chunk to build.
        if !valid.is_empty() {
            invalid.extend(absent.into_iter().flatten().map(|c| c.hash));
        }
        valid.retain(|h, _| !invalid.contains(h));
        let present = valid.keys().copied().collect();
        self.checks_mut().extend(valid);
        Ok(present)
    }

    /// The names of the staged files (in every shard).
    fn names(&self) -> Result<HashSet<String>, StoreError> {
        let mut names = HashSet::new();
        for shard in self.shard_dirs()? {
            let entries = std::fs::read_dir(&shard).map_err(io_err(&shard))?;
            for entry in entries {
                let entry = entry.map_err(io_err(&shard))?;
                if let Ok(name) = entry.file_name().into_string() {
                    names.insert(name);
                }
            }
        }
        Ok(names)
    }

    /// The shard subdirectories that exist (marked known to exist).
    fn shard_dirs(&self) -> Result<Vec<PathBuf>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        let mut shards = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| is_shard_name(n)) else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let byte = u8::from_str_radix(name, 16).expect("a shard name is hex");
                let _ = self.shards[byte as usize].set(());
                shards.push(entry.path());
            }
        }
        Ok(shards)
    }

    /// The shard directory of `hash`, made if it is not known to exist.
    fn shard_of(&self, hash: &ContentHash) -> Result<PathBuf, StoreError> {
        let byte = hash.0[0];
        let dir = self.dir.join(shard_name(byte));
        if self.shards[byte as usize].get().is_none() {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
            let _ = self.shards[byte as usize].set(());
        }
        Ok(dir)
    }

    fn path_of(&self, hash: &ContentHash) -> PathBuf {
        match self.tree.get(hash) {
            Some((rel, _)) => rel.under(&self.tree_dir),
            None => self.dir.join(shard_name(hash.0[0])).join(hash.to_hex()),
        }
    }

    /// The sidecar of the staged file of `hash`: in its shard, wherever the file is.
    fn sidecar_of(&self, hash: &ContentHash) -> PathBuf {
        self.dir
            .join(shard_name(hash.0[0]))
            .join(format!("{}.chunks", hash.to_hex()))
    }

    /// The staged file of `hash`, to create: its shard, or its directory in the tree, made if
    /// need be.
    fn new_path(&self, hash: &ContentHash) -> Result<PathBuf, StoreError> {
        let Some((rel, _)) = self.tree.get(hash) else {
            return Ok(self.shard_of(hash)?.join(hash.to_hex()));
        };
        let path = rel.under(&self.tree_dir);
        self.make_tree_dir(path.parent().expect("a path under the tree has a parent"))?;
        Ok(path)
    }

    /// Make `dir` under the tree, and its parents, unless known to exist.
    pub fn make_tree_dir(&self, dir: &Path) -> Result<(), StoreError> {
        let mut known = self.tree_dirs.lock().unwrap_or_else(|p| p.into_inner());
        if known.contains(dir) {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        known.insert(dir.to_owned());
        Ok(())
    }

    /// Where new directories of the revision are built.
    pub fn tree_dir(&self) -> &Path {
        &self.tree_dir
    }

    /// The path in the revision at which the file of `hash` is staged, if in the tree.
    pub fn in_tree(&self, hash: &ContentHash) -> Option<&RelPath> {
        self.tree.get(hash).map(|(rel, _)| rel)
    }

    /// Remove from the tree everything that is not a file of [`TreeFiles`] at its path or a
    /// directory above one: what an older target left, which must not be put in place with
    /// this one's directories.
    fn clean_tree(&self) -> Result<(), StoreError> {
        // No tree yet (a first sync, or the last target put all of it in place): nothing to
        // look at, and no sets of a million paths to build for it.
        match std::fs::symlink_metadata(&self.tree_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.tree_dir)(e)),
            Ok(_) => {}
        }
        let files: HashSet<&str> = self.tree.values().map(|(p, _)| p.as_str()).collect();
        let dirs: HashSet<&str> = self
            .tree
            .values()
            .flat_map(|(p, _)| p.ancestors())
            .collect();
        clean_dir(&self.tree_dir, "", &files, &dirs)
    }

    /// The staged file for `hash`.
    pub fn staged_path(&self, hash: &ContentHash) -> PathBuf {
        self.path_of(hash)
    }

    /// The staged file of `hash`, open for reading and writing: from the open files, else
    /// opened again, else created.
    fn file(&self, hash: &ContentHash) -> Result<Arc<File>, StoreError> {
        self.open.get(*hash, || {
            let path = self.path_of(hash);
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => Ok(file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create(hash),
                Err(e) => Err(io_err(&path)(e)),
            }
        })
    }

    /// Create the staged file of `hash` at its full size (sparse), its sidecar first.
    fn create(&self, hash: &ContentHash) -> Result<File, StoreError> {
        let (size, chunks) = self
            .wanted
            .get(hash)
            .ok_or_else(|| StoreError::Corrupt(format!("no staged file {hash}")))?;
        let path = self.new_path(hash)?;
        if !is_one_chunk(chunks) {
            self.shard_of(hash)?;
            let sidecar = self.sidecar_of(hash);
            std::fs::write(
                &sidecar,
                postcard::to_stdvec(chunks).expect("chunks encode"),
            )
            .map_err(io_err(&sidecar))?;
        }
        let file = staged_options()
            .read(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(*size).map_err(io_err(&path))?;
        Ok(file)
    }

    /// Where the apply copies the staged file of `hash` for one of several paths that hold it,
    /// the `n`th copy (its shard made if need be: a file staged in the tree has none yet).
    pub fn copy_path(&self, hash: &ContentHash, n: usize) -> Result<PathBuf, StoreError> {
        Ok(self
            .shard_of(hash)?
            .join(format!("{COPY_PREFIX}{}-{n}", hash.to_hex())))
    }

    /// Copy still-needed chunks out of staged files of an older target, then delete them, and
    /// delete copies a killed apply left behind: in every shard, and in the staging
    /// directory itself (the flat layout of earlier versions, all of it stale). One pass over
    /// each directory, each name looked up once.
    fn salvage_stale(
        &self,
        positions: &ChunkPositions,
        present: &mut HashSet<ContentHash>,
    ) -> Result<(), StoreError> {
        // A file staged in the tree that a shard holds from an older target is salvaged too.
        let wanted: HashSet<String> = self
            .wanted
            .keys()
            .filter(|h| !self.tree.contains_key(h))
            .map(ContentHash::to_hex)
            .collect();
        let none = HashSet::new();
        self.salvage_dir(&self.dir, &none, positions, present)?;
        for shard in self.shard_dirs()? {
            self.salvage_dir(&shard, &wanted, positions, present)?;
        }
        Ok(())
    }

    /// [`Self::salvage_stale`] in one directory: its files not named in `wanted` are stale.
    fn salvage_dir(
        &self,
        dir: &Path,
        wanted: &HashSet<String>,
        positions: &ChunkPositions,
        present: &mut HashSet<ContentHash>,
    ) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if name.starts_with(COPY_PREFIX) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            if name.ends_with(".chunks") || wanted.contains(name) {
                continue;
            }
            let path = entry.path();
            let sidecar = path.with_extension("chunks");
            if let Ok(file) = File::open(&path) {
                if let Some(chunks) = stale_chunks(&sidecar, &file) {
                    self.copy_needed(&file, &chunks, positions, present);
                }
            }
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&sidecar);
        }
        Ok(())
    }

    fn copy_needed(
        &self,
        src: &File,
        chunks: &[ChunkRef],
        positions: &ChunkPositions,
        present: &mut HashSet<ContentHash>,
    ) {
        let mut off = 0u64;
        for c in chunks {
            let at = off;
            off += c.len as u64;
            if present.contains(&c.hash) {
                continue;
            }
            let Some(places) = positions.get(&c.hash) else {
                continue;
            };
            let mut buf = vec![0u8; c.len as usize];
            if src.read_exact_at(&mut buf, at).is_err() || !c.hash.matches(&buf) {
                continue;
            }
            if self.write_chunk(&c.hash, places, &buf).is_ok() {
                present.insert(c.hash);
            }
        }
    }

    fn checks_mut(&self) -> std::sync::MutexGuard<'_, ByHash<u64>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read check of a verified chunk staged here, if known.
    pub fn check_of(&self, hash: &ContentHash) -> Option<u64> {
        self.checks_mut().get(hash).copied()
    }

    /// The read checks of a file's `chunks`, all staged here; empty if one is not known.
    pub fn staged_checks(&self, chunks: &[ChunkRef]) -> Vec<u64> {
        let checks = self.checks_mut();
        chunks
            .iter()
            .map(|c| checks.get(&c.hash).copied())
            .collect::<Option<Vec<u64>>>()
            .unwrap_or_default()
    }

    /// Write `data`, verified against `hash`, to every place it belongs. Returns its read
    /// check.
    pub fn write_chunk(
        &self,
        hash: &ContentHash,
        places: &[(ContentHash, u64, u32)],
        data: &[u8],
    ) -> Result<u64, StoreError> {
        for (file, off, _) in places {
            if self.is_whole(file, data) {
                self.write_whole(file, data)?;
                if self.written(data.len()) {
                    // Closed already: what to write out is every file written since the last
                    // time. If the queue is full, writeback is behind anyway.
                    let _ = self.writeback.try_send(Writeback::Written);
                }
                continue;
            }
            let f = self.file(file)?;
            f.write_all_at(data, *off)
                .map_err(io_err(&self.path_of(file)))?;
            if self.written(data.len()) {
                // If the queue is full, writeback is behind anyway; `finish` starts this
                // file's before the sync.
                let _ = self.writeback.try_send(Writeback::File(f));
            }
        }
        let check = read_check(data);
        self.checks_mut().insert(*hash, check);
        Ok(check)
    }

    /// Count `len` bytes written; true when a writeback is due.
    fn written(&self, len: usize) -> bool {
        let before = self.unflushed.fetch_add(len as u64, Ordering::Relaxed);
        if before + (len as u64) < WRITEBACK_EVERY {
            return false;
        }
        self.unflushed.store(0, Ordering::Relaxed);
        true
    }

    /// True if `data` is the whole of staged file `file`: a file of one chunk.
    fn is_whole(&self, file: &ContentHash, data: &[u8]) -> bool {
        self.wanted
            .get(file)
            .is_some_and(|(size, chunks)| is_one_chunk(chunks) && *size == data.len() as u64)
    }

    /// Write staged file `file` whole, in one go: created if need be and written through
    /// a descriptor of its own, closed at once, never kept among the open files. Three system
    /// calls for a small file, where opening it first, creating it at its size and writing
    /// into it took six. A kill midway leaves a short or empty file, whose chunk a restart
    /// does not find verified (`find_verified` hashes it) and fetches again. A file staged in
    /// the tree is created with its mode in the revision (read-only: the descriptor that
    /// creates it may still write), so that `apply_revision` need not set it; written again
    /// (a chunk that arrived twice), it is made writable first.
    fn write_whole(&self, file: &ContentHash, data: &[u8]) -> Result<(), StoreError> {
        let path = self.new_path(file)?;
        // Not kept open: a descriptor of it left among the open files (one `find_verified`
        // opened) would only be closed later.
        self.open.close(file);
        // Not truncated (see `staged_options`): a file of this name was created at this size,
        // and a peer may be reading it (a chunk that arrived twice is written twice, the same
        // bytes).
        let mut options = staged_options();
        if let Some((_, mode)) = self.tree.get(file) {
            options.mode(*mode);
        }
        let mut f = match options.open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                make_writable(&path)?;
                staged_options().open(&path)
            }
            opened => opened,
        }
        .map_err(io_err(&path))?;
        std::io::Write::write_all(&mut f, data).map_err(io_err(&path))?;
        if self.tree.contains_key(file) {
            // Through the descriptor: no lookup of the path, as `lstat` at apply took (a
            // third of putting a million new files in place).
            let meta = f.metadata().map_err(io_err(&path))?;
            self.written_mut().insert(*file, Stamp::of(&meta));
        }
        Ok(())
    }

    fn written_mut(&self) -> std::sync::MutexGuard<'_, ByHash<Stamp>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How the write that made the file of `hash` in the tree left it, if this area wrote it
    /// whole (not a file staged before a restart, nor one of several chunks).
    pub fn written_in_tree(&self, hash: &ContentHash) -> Option<Stamp> {
        self.written_mut().get(hash).copied()
    }

    /// Remove the sidecar of staged file `hash` once it is in place (a file of one chunk has
    /// none: nothing to remove, no system call).
    pub fn remove_sidecar(&self, hash: &ContentHash) {
        if self.wanted.get(hash).is_some_and(|(_, c)| is_one_chunk(c)) {
            return;
        }
        let _ = std::fs::remove_file(self.sidecar_of(hash));
    }

    /// Check that every chunk of each staged file was verified and written (which verifies the
    /// file: its hash is that of its chunk list), then make them all durable at once: each
    /// file's writeback is started as it is checked, and one sync of the file system
    /// (`syncfs`; elsewhere an fsync of each) waits for all of them, rather than one disk flush
    /// per file. No byte is read again. Nothing is renamed here: `apply_revision` does that once
    /// this returned.
    pub fn finish(&self, hashes: &[ContentHash]) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        for hash in hashes {
            self.check_complete(hash)?;
        }
        let checked = started.elapsed();
        self.sync(hashes)?;
        tracing::debug!(files = hashes.len(), ?checked, synced = ?(started.elapsed() - checked), "staged files finished");
        Ok(())
    }

    /// Check that every chunk of the staged file of `hash` is verified in it, and start its
    /// writeback if it has several (a file of one chunk was written whole and closed: the
    /// `syncfs` after this writes it, and opening it again here cost a system call or three
    /// per small file).
    fn check_complete(&self, hash: &ContentHash) -> Result<(), StoreError> {
        let (_, chunks) = self
            .wanted
            .get(hash)
            .ok_or_else(|| StoreError::Corrupt(format!("no staged file {hash}")))?;
        if let Some(c) = chunks.iter().find(|c| self.check_of(&c.hash).is_none()) {
            return Err(StoreError::StagedIncomplete {
                file: *hash,
                chunk: c.hash,
            });
        }
        if is_one_chunk(chunks) {
            self.open.close(hash);
            return Ok(());
        }
        // Created here if it has no chunks (an empty file).
        let f = self.file(hash)?;
        // The disk writes what is still dirty while the rest is checked, so the sync has less
        // to wait for.
        start_writeback(&f);
        // Written for good: its descriptor can go.
        self.open.close(hash);
        Ok(())
    }

    /// Wait until the staged files of `hashes` are on disk.
    #[cfg(target_os = "linux")]
    fn sync(&self, _hashes: &[ContentHash]) -> Result<(), StoreError> {
        rustix::fs::syncfs(&self.sync_dir).map_err(|e| io_err(&self.dir)(e.into()))?;
        Ok(())
    }

    /// Wait until the staged files of `hashes` are on disk.
    #[cfg(not(target_os = "linux"))]
    fn sync(&self, hashes: &[ContentHash]) -> Result<(), StoreError> {
        for hash in hashes {
            let path = self.path_of(hash);
            let f = File::open(&path).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// How many staged files are open now.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }
}

/// [`StagingArea::clean_tree`] in `dir`, the tree's `prefix`.
fn clean_dir(
    dir: &Path,
    prefix: &str,
    files: &HashSet<&str>,
    dirs: &HashSet<&str>,
) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        let rel = match entry.file_name().to_str() {
            Some(name) if prefix.is_empty() => name.to_owned(),
            Some(name) => format!("{prefix}/{name}"),
            None => String::new(),
        };
        if kind.is_dir() && dirs.contains(rel.as_str()) {
            clean_dir(&path, &rel, files, dirs)?;
        } else if kind.is_file() && files.contains(rel.as_str()) {
            continue;
        } else if kind.is_dir() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// True if a file of `chunks` is its one chunk: then it has no sidecar.
fn is_one_chunk(chunks: &[ChunkRef]) -> bool {
    chunks.len() == 1
}

/// The chunks of a stale staged file: from its sidecar, else (a file of one chunk) the file
/// itself, hashed. (Staging written before file hashes came from chunk lists named a file of
/// one chunk by that chunk's hash; hashing the bytes finds its chunk all the same.) Whatever
/// a sidecar says is checked against the hashes before use.
fn stale_chunks(sidecar: &Path, file: &File) -> Option<Vec<ChunkRef>> {
    if let Ok(bytes) = std::fs::read(sidecar) {
        return postcard::from_bytes(&bytes).ok();
    }
    let len = u32::try_from(file.metadata().ok()?.len()).ok()?;
    if len == 0 || len > crate::tree::CHUNK_MAX {
        return None;
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(vec![ChunkRef {
        hash: ContentHash::of(&buf),
        len,
    }])
}

/// Make the staged file at `path`, if there is one, owner-writable again: `install` makes it
/// read-only just before renaming it into the mirror, and a kill in between leaves it so. Its
/// verified chunks are still good, and opening it for writing would fail (`EACCES`) for ever.
fn make_writable(path: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o777 != STAGED_MODE => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(STAGED_MODE))
                .map_err(io_err(path))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// What the writeback thread is to start writing out.
enum Writeback {
    /// This file's dirty pages.
    File(Arc<File>),
    /// The files written whole and closed since the last time: the file system's dirty data,
    /// synced (on this thread, which waits for it; chunk writes go on meanwhile), so that
    /// `finish`'s sync has only the last of them left to wait for. Its errors are reported to
    /// `finish`'s sync (see `StagingArea::sync_dir`), not here.
    Written,
}

/// Write out the dirty data of `dir`'s file system (elsewhere than Linux: nothing).
fn write_out(dir: &File) {
    #[cfg(target_os = "linux")]
    let _ = rustix::fs::syncfs(dir);
    #[cfg(not(target_os = "linux"))]
    let _ = dir;
}

/// Ask the kernel to start writing `file`'s dirty pages out now, without waiting for it.
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `file`; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Chunks of `file` whose bytes match their hash, with their read checks, and those that do
/// not (at one of their places in it, if at several).
fn valid_chunks(
    file: &File,
    chunks: &[ChunkRef],
) -> (HashMap<ContentHash, u64>, HashSet<ContentHash>) {
    let mut good = HashMap::new();
    let mut bad = HashSet::new();
    let mut off = 0u64;
    let mut buf = Vec::new();
    for c in chunks {
        let end = off + c.len as u64;
        // A chunk that lies wholly in a hole of the sparse staged file was never written:
        // skip reading and hashing it, so a restart costs what was fetched, not the file size.
        let written = match next_data(file, off) {
            Data::At(start) => start < end,
            Data::None => false,
            Data::Unknown => true,
        };
        buf.resize(c.len as usize, 0);
        if written && file.read_exact_at(&mut buf, off).is_ok() && c.hash.matches(&buf) {
            good.insert(c.hash, read_check(&buf));
        } else {
            bad.insert(c.hash);
        }
        off = end;
    }
    (good, bad)
}

enum Data {
    /// The first byte of data at or after the offset.
    At(u64),
    /// Nothing but holes from the offset to the end.
    None,
    /// The file system cannot say.
    Unknown,
}

fn next_data(file: &File, off: u64) -> Data {
    use std::os::fd::AsRawFd;
    let Ok(off) = libc::off_t::try_from(off) else {
        return Data::Unknown;
    };
    // SAFETY: lseek on a file descriptor we own; it only moves the file offset, which
    // positional reads (read_exact_at) do not use.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if r >= 0 {
        return Data::At(r as u64);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => Data::None,
        _ => Data::Unknown,
    }
}

/// How a staged file is opened for writing: created (owner-only) if missing, never truncated
/// (one that exists may be partly written, and peers may be reading it).
fn staged_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(false)
        .mode(STAGED_MODE);
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::chunk_reader;

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut out);
        out
    }

    #[test]
    fn resume_finds_verified_chunks_and_retarget_salvages() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 1);
        let c = chunk_reader(&data[..]).unwrap();
        let wanted = vec![(c.hash, c.size, c.chunks.clone())];
        let staged = {
            let (area, pos, present) = StagingArea::open(dir.path(), &wanted).unwrap();
            assert!(present.is_empty());
            let first = c.chunks[0];
            area.write_chunk(&first.hash, &pos[&first.hash], &data[..first.len as usize])
                .unwrap();
            area.staged_path(&c.hash)
        };
        assert!(staged.exists());
        let (area, _, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        assert_eq!(present.len(), 1, "the one written chunk survives a restart");
        assert_eq!(
            area.check_of(&c.chunks[0].hash),
            Some(c.checks[0]),
            "and its read check is known again"
        );
        assert!(area.staged_checks(&c.chunks).is_empty(), "not all known");
        drop(area);

        // Retarget: a new file sharing all but the last chunk.
        let mut data2 = data.clone();
        let n = data2.len();
        data2[n - 10] ^= 1;
        let c2 = chunk_reader(&data2[..]).unwrap();
        let (_, _, present) =
            StagingArea::open(dir.path(), &[(c2.hash, c2.size, c2.chunks.clone())]).unwrap();
        assert_eq!(
            present.len(),
            1,
            "verified chunk moved over from the stale file"
        );
        assert!(!staged.exists(), "stale file removed");
        assert!(!staged.with_extension("chunks").exists(), "and its sidecar");
    }

    #[test]
    fn a_staged_file_left_read_only_is_reused_and_leftover_copies_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 3);
        let c = chunk_reader(&data[..]).unwrap();
        let wanted = vec![(c.hash, c.size, c.chunks.clone())];
        let (staged, copy) = {
            let (area, pos, _) = StagingArea::open(dir.path(), &wanted).unwrap();
            let mut off = 0;
            for ch in &c.chunks {
                let bytes = &data[off..off + ch.len as usize];
                area.write_chunk(&ch.hash, &pos[&ch.hash], bytes).unwrap();
                off += ch.len as usize;
            }
            (
                area.staged_path(&c.hash),
                area.copy_path(&c.hash, 0).unwrap(),
            )
        };
        // Killed in `install` after the chmod, before the rename: the staged file is
        // read-only, and so is a copy made for a second path.
        std::fs::copy(&staged, &copy).unwrap();
        for p in [&staged, &copy] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }

        let (area, _, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        let mode = std::fs::metadata(&staged).unwrap().permissions().mode();
        assert_ne!(
            mode & 0o200,
            0,
            "staged file is owner-writable again: {mode:o}"
        );
        let all: HashSet<_> = c.chunks.iter().map(|ch| ch.hash).collect();
        assert_eq!(present, all, "every verified chunk is found again");
        assert_eq!(area.staged_checks(&c.chunks), c.checks);
        assert!(!copy.exists(), "the leftover copy is removed");
    }

    #[test]
    fn many_files_are_staged_and_finished_with_a_few_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        // A large file written a chunk at a time between the small ones, so that its
        // descriptor is closed and it is opened again between its chunks.
        let big = noise(3 << 20, 200);
        let smalls: Vec<Vec<u8>> = (0..OPEN_STAGED_FILES * 3)
            .map(|i| noise(200 + i, i as u8))
            .collect();
        let chunked: Vec<_> = std::iter::once(&big)
            .chain(&smalls)
            .map(|d| chunk_reader(&d[..]).unwrap())
            .collect();
        let wanted: Vec<_> = chunked
            .iter()
            .map(|c| (c.hash, c.size, c.chunks.clone()))
            .collect();
        let (area, pos, _) = StagingArea::open(dir.path(), &wanted).unwrap();
        let big_chunks = &chunked[0].chunks;
        assert!(big_chunks.len() > 1, "the large file has several chunks");
        let mut big_at = 0;
        for (i, small) in smalls.iter().enumerate() {
            if let Some(c) = big_chunks.get(i) {
                let bytes = &big[big_at..big_at + c.len as usize];
                area.write_chunk(&c.hash, &pos[&c.hash], bytes).unwrap();
                big_at += c.len as usize;
            }
            let c = &chunked[i + 1].chunks[0];
            area.write_chunk(&c.hash, &pos[&c.hash], small).unwrap();
            assert!(area.open_files() <= OPEN_STAGED_FILES);
        }
        let hashes: Vec<_> = chunked.iter().map(|c| c.hash).collect();
        area.finish(&hashes).unwrap();
        assert_eq!(
            std::fs::read(area.staged_path(&chunked[0].hash)).unwrap(),
            big
        );
        for (c, small) in chunked[1..].iter().zip(&smalls) {
            assert_eq!(&std::fs::read(area.staged_path(&c.hash)).unwrap(), small);
        }
    }

    #[test]
    fn a_file_of_one_chunk_has_no_sidecar_and_is_salvaged_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(1500, 9);
        let c = chunk_reader(&data[..]).unwrap();
        assert_eq!(c.chunks.len(), 1);
        {
            let wanted = vec![(c.hash, c.size, c.chunks.clone())];
            let (area, pos, _) = StagingArea::open(dir.path(), &wanted).unwrap();
            let chunk = c.chunks[0].hash;
            area.write_chunk(&chunk, &pos[&chunk], &data).unwrap();
            assert!(area.staged_path(&c.hash).exists());
            assert!(!area.staged_path(&c.hash).with_extension("chunks").exists());
        }
        // Retarget: a larger file whose first chunk is that file.
        let other = noise(2 << 20, 10);
        let o = chunk_reader(&other[..]).unwrap();
        let chunks: Vec<_> = std::iter::once(c.chunks[0])
            .chain(o.chunks.clone())
            .collect();
        let bigger = ContentHash::of(b"a file made of both");
        let size = chunks.iter().map(|ch| ch.len as u64).sum();
        let (area, _, present) = StagingArea::open(dir.path(), &[(bigger, size, chunks)]).unwrap();
        assert!(
            present.contains(&c.chunks[0].hash),
            "the stale file's chunk is kept"
        );
        assert!(
            !area.staged_path(&c.hash).exists(),
            "the stale file is removed"
        );
    }

    #[test]
    fn finish_refuses_a_file_not_wholly_verified_and_reads_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 2);
        let c = chunk_reader(&data[..]).unwrap();
        let (area, pos, _) =
            StagingArea::open(dir.path(), &[(c.hash, c.size, c.chunks.clone())]).unwrap();
        let mut off = 0;
        for ch in &c.chunks[..c.chunks.len() - 1] {
            let bytes = &data[off..off + ch.len as usize];
            area.write_chunk(&ch.hash, &pos[&ch.hash], bytes).unwrap();
            off += ch.len as usize;
        }
        let last = c.chunks.last().unwrap();
        match area.finish(&[c.hash]) {
            Err(StoreError::StagedIncomplete { file, chunk }) => {
                assert_eq!((file, chunk), (c.hash, last.hash))
            }
            other => panic!("finished a file lacking a chunk: {other:?}"),
        }
        area.write_chunk(&last.hash, &pos[&last.hash], &data[off..])
            .unwrap();
        area.finish(&[c.hash]).unwrap();
        assert_eq!(area.staged_checks(&c.chunks), c.checks);
        assert_eq!(std::fs::read(area.staged_path(&c.hash)).unwrap(), data);
    }

    /// A file of one chunk is written whole through a descriptor of its own, never kept among
    /// the open files, and finished without being opened again; a kill midway leaves it short,
    /// and a restart does not take its chunk as present.
    #[test]
    fn a_file_of_one_chunk_is_written_whole_and_never_kept_open() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (noise(1500, 20), noise(2500, 21));
        let (ca, cb) = (chunk_reader(&a[..]).unwrap(), chunk_reader(&b[..]).unwrap());
        let wanted = vec![
            (ca.hash, ca.size, ca.chunks.clone()),
            (cb.hash, cb.size, cb.chunks.clone()),
        ];
        {
            let (area, pos, _) = StagingArea::open(dir.path(), &wanted).unwrap();
            let chunk = ca.chunks[0].hash;
            area.write_chunk(&chunk, &pos[&chunk], &a).unwrap();
            assert_eq!(area.open_files(), 0, "written and closed");
            area.finish(&[ca.hash]).unwrap();
            assert_eq!(area.open_files(), 0, "finished without opening it again");
            assert_eq!(std::fs::read(area.staged_path(&ca.hash)).unwrap(), a);
            // b: killed when the first 1000 of its bytes were written.
            let cut = area.staged_path(&cb.hash);
            std::fs::create_dir_all(cut.parent().unwrap()).unwrap();
            std::fs::write(&cut, &b[..1000]).unwrap();
        }
        let (area, pos, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        assert!(present.contains(&ca.chunks[0].hash), "a whole file is kept");
        assert!(
            !present.contains(&cb.chunks[0].hash),
            "a file cut short is fetched again"
        );
        let chunk = cb.chunks[0].hash;
        area.write_chunk(&chunk, &pos[&chunk], &b).unwrap();
        area.finish(&[ca.hash, cb.hash]).unwrap();
        assert_eq!(std::fs::read(area.staged_path(&cb.hash)).unwrap(), b);
        assert_eq!(area.open_files(), 0);
    }

    /// Files in new directories are staged at their own path in the tree, a small one with its
    /// mode in the revision (and written again all the same when its chunk comes twice).
    /// Reopened for the same target, what is there is found verified; for another target,
    /// what that one does not stage there is removed, a file and a directory alike.
    #[test]
    fn files_staged_in_the_tree_are_kept_for_their_target_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (noise(1500, 30), noise(3 << 20, 31));
        let (ca, cb) = (chunk_reader(&a[..]).unwrap(), chunk_reader(&b[..]).unwrap());
        let wanted = vec![
            (ca.hash, ca.size, ca.chunks.clone()),
            (cb.hash, cb.size, cb.chunks.clone()),
        ];
        let rel = |p: &str| RelPath::new(p).unwrap();
        let tree: TreeFiles = [
            (ca.hash, (rel("new/a"), 0o444)),
            (cb.hash, (rel("new/sub/b"), 0o444)),
        ]
        .into_iter()
        .collect();
        {
            let (area, pos, _) =
                StagingArea::open_with_tree(dir.path(), wanted.clone(), tree.clone()).unwrap();
            let chunk = ca.chunks[0].hash;
            area.write_chunk(&chunk, &pos[&chunk], &a).unwrap();
            area.write_chunk(&chunk, &pos[&chunk], &a).unwrap();
            let first = cb.chunks[0];
            area.write_chunk(&first.hash, &pos[&first.hash], &b[..first.len as usize])
                .unwrap();
            let staged = area.staged_path(&ca.hash);
            assert_eq!(staged, dir.path().join("tree/new/a"));
            assert_eq!(std::fs::read(&staged).unwrap(), a);
            let mode = std::fs::metadata(&staged).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o444, "staged with its mode in the revision");
            assert_eq!(
                area.staged_path(&cb.hash),
                dir.path().join("tree/new/sub/b")
            );
        }
        let (_, _, present) =
            StagingArea::open_with_tree(dir.path(), wanted.clone(), tree.clone()).unwrap();
        assert!(
            present.contains(&ca.chunks[0].hash),
            "a whole small file is kept"
        );
        assert!(
            present.contains(&cb.chunks[0].hash),
            "a verified chunk is kept"
        );

        // Another target stages only a, elsewhere: b and its directory go, and so does new/a.
        let other: TreeFiles = [(ca.hash, (rel("moved/a"), 0o444))].into_iter().collect();
        let (_, _, present) =
            StagingArea::open_with_tree(dir.path(), wanted[..1].to_vec(), other).unwrap();
        assert!(present.is_empty(), "nothing staged at moved/a yet");
        let left: Vec<_> = walkdir::WalkDir::new(dir.path().join("tree"))
            .min_depth(1)
            .into_iter()
            .flatten()
            .map(|e| e.path().to_owned())
            .collect();
        assert!(left.is_empty(), "left in the tree: {left:?}");
    }

    /// Killed between the writes of one chunk to its two places: the chunk is not taken as
    /// present (the file missing it would be finished with a hole), so it is fetched again.
    #[test]
    fn a_chunk_written_to_one_of_its_places_is_not_present() {
        let dir = tempfile::tempdir().unwrap();
        let shared = noise(2 << 20, 5);
        let (a, b) = ([&shared[..], b"a"].concat(), [&shared[..], b"b"].concat());
        let (ca, cb) = (chunk_reader(&a[..]).unwrap(), chunk_reader(&b[..]).unwrap());
        let one = ca.chunks[0];
        assert_eq!(cb.chunks[0], one, "both files start with the same chunk");
        let wanted = vec![
            (ca.hash, ca.size, ca.chunks.clone()),
            (cb.hash, cb.size, cb.chunks.clone()),
        ];
        {
            let (area, pos, _) = StagingArea::open(dir.path(), &wanted).unwrap();
            let places = &pos[&one.hash];
            assert_eq!(places.len(), 2);
            area.write_chunk(&one.hash, &places[..1], &a[..one.len as usize])
                .unwrap();
        }
        let (area, pos, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        assert!(!present.contains(&one.hash), "held at one place of two");
        assert_eq!(area.check_of(&one.hash), None);
        area.write_chunk(&one.hash, &pos[&one.hash], &a[..one.len as usize])
            .unwrap();
        drop(area);
        let (_, _, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        assert!(present.contains(&one.hash), "held at both places");
    }

    /// Staging written before file hashes came from chunk lists named a file of one chunk by
    /// the chunk's hash; its chunk is still found and kept.
    #[test]
    fn a_file_of_one_chunk_staged_under_its_chunk_hash_is_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(1500, 11);
        let c = chunk_reader(&data[..]).unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        let old_name = dir.path().join(c.chunks[0].hash.to_hex());
        std::fs::write(&old_name, &data).unwrap();
        let wanted = vec![(c.hash, c.size, c.chunks.clone())];
        let (area, _, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        assert!(present.contains(&c.chunks[0].hash));
        assert!(!old_name.exists(), "the file under its old name is gone");
        area.finish(&[c.hash]).unwrap();
        assert_eq!(std::fs::read(area.staged_path(&c.hash)).unwrap(), data);
    }

    #[test]
    fn staging_of_the_flat_layout_is_salvaged_into_shards() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise(3 << 20, 12);
        let c = chunk_reader(&data[..]).unwrap();
        assert!(c.chunks.len() > 2);
        // An earlier version's staging, killed midway: the file under its hash in the staging
        // directory itself, its sidecar beside it, its first two chunks written; and a copy
        // `install` left there.
        let old = dir.path().join(c.hash.to_hex());
        let head = (c.chunks[0].len + c.chunks[1].len) as usize;
        std::fs::write(&old, &data[..head]).unwrap();
        std::fs::write(
            old.with_extension("chunks"),
            postcard::to_stdvec(&c.chunks).unwrap(),
        )
        .unwrap();
        let copy = dir.path().join(format!("{COPY_PREFIX}{}", c.hash.to_hex()));
        std::fs::write(&copy, b"x").unwrap();

        let wanted = vec![(c.hash, c.size, c.chunks.clone())];
        let (area, pos, present) = StagingArea::open(dir.path(), &wanted).unwrap();
        let kept: HashSet<_> = c.chunks[..2].iter().map(|ch| ch.hash).collect();
        assert_eq!(present, kept, "the two written chunks are kept");
        for p in [&old, &old.with_extension("chunks"), &copy] {
            assert!(!p.exists(), "{} is gone", p.display());
        }
        let staged = area.staged_path(&c.hash);
        assert_eq!(
            staged.parent().unwrap(),
            dir.path().join(format!("{:02x}", c.hash.0[0])),
            "staged in the shard of its hash"
        );
        let mut off = head;
        for ch in &c.chunks[2..] {
            let bytes = &data[off..off + ch.len as usize];
            area.write_chunk(&ch.hash, &pos[&ch.hash], bytes).unwrap();
            off += ch.len as usize;
        }
        area.finish(&[c.hash]).unwrap();
        assert_eq!(std::fs::read(&staged).unwrap(), data);
    }
}
