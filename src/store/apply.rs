//! Applying a fully staged revision to the mirror, and verifying a tree against a manifest.
//!
//! Every file appears under its final name by one `rename` of a complete, verified, fsynced
//! staged file, so a reader (or a crash) sees either the old or the new content of a file,
//! never a mix. A directory the mirror does not have yet appears whole, by one rename of the
//! directory built in the staging area's tree (see [`NewDirs`]). Anything in the way that the
//! old revision did not put there (a user's file, a symlink) is moved to
//! `.treecast/conflicts/`, never deleted.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{io_err, StoreError};
use super::staging::Stamp;
use super::{move_to_conflicts, StagingArea};
use crate::tree::{ChunkRef, ContentHash, EntryKind, FileRecord, Manifest, RelPath};

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub installed: u64,
    pub kept: u64,
    pub removed: u64,
    pub moved_aside: u64,
}

/// The directories of a revision that the mirror does not have: nothing is at their path.
/// Each of the outermost ones ([`NewDirs::roots`]) is built whole in the staging area's tree
/// and put in place by one rename, where each file of it would cost one.
#[derive(Debug, Default)]
pub struct NewDirs {
    /// The outermost new directories: their parents are in the mirror.
    roots: Vec<String>,
    /// Every new directory, the outermost and those below them.
    all: HashSet<String>,
}

impl NewDirs {
    /// The new directories of `manifest` in `root`: one look at each directory whose parent
    /// is there, none below a new one.
    pub fn find(root: &Path, manifest: &Manifest) -> Self {
        let mut dirs = NewDirs::default();
        let mut seen: HashSet<&str> = HashSet::new();
        for entry in manifest.entries() {
            let own = matches!(entry.kind, EntryKind::Dir).then_some(entry.path.as_str());
            // Outermost first: a directory's parent is decided before it.
            for d in entry.path.ancestors().chain(own) {
                if !seen.insert(d) {
                    continue;
                }
                let under_new = d.rfind('/').is_some_and(|i| dirs.all.contains(&d[..i]));
                if under_new {
                    dirs.all.insert(d.to_owned());
                } else if matches!(std::fs::symlink_metadata(root.join(d)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound)
                {
                    dirs.all.insert(d.to_owned());
                    dirs.roots.push(d.to_owned());
                }
            }
        }
        dirs
    }

    /// True if the file or directory at `path` is in a new directory.
    pub fn holds(&self, path: &RelPath) -> bool {
        path.ancestors()
            .last()
            .is_some_and(|p| self.all.contains(p))
    }

    fn is_new(&self, dir: &str) -> bool {
        self.all.contains(dir)
    }
}

/// Install `new` over `old` in `root`. `unchanged` lists paths that already hold their new
/// content; `edited` lists paths a user changed locally (moved aside, not overwritten).
/// Gives the file index of the new revision to `record`, a file's record as soon as it is made
/// (the files are not all in place and synced until this returns `Ok`); an error `record`
/// returns stops the apply with it. The records of `unchanged` files have no read checks (the
/// caller has them in the old index).
pub fn apply_revision(
    root: &Path,
    staging: &StagingArea,
    (old, new): (&Manifest, &Manifest),
    unchanged: &HashSet<RelPath>,
    edited: &HashSet<RelPath>,
    conflicts: &Path,
    record: &mut dyn FnMut(RelPath, FileRecord) -> Result<(), StoreError>,
) -> Result<ApplyStats, StoreError> {
    let mut stats = ApplyStats::default();
    let old_paths: HashSet<&RelPath> = old.entries().iter().map(|e| &e.path).collect();
    let mut aside = Aside {
        conflicts,
        old_paths: &old_paths,
        moved: 0,
    };
    let mut uses: HashMap<ContentHash, usize> = HashMap::new();
    for (path, _, _, hash, _) in new.files() {
        if !unchanged.contains(path) {
            *uses.entry(hash).or_default() += 1;
        }
    }
    let mut parents: HashSet<PathBuf> = HashSet::new();
    // Looked at again now: a directory the plan found missing may have been made since (its
    // files then go in one by one), or one removed (its files are moved into the tree).
    let new_dirs = NewDirs::find(root, new);
    let copies = make_copies(staging, new, unchanged, &uses, &new_dirs)?;
    let tree = staging.tree_dir();
    // Directories made sure of in this apply: each is looked at once, not once per file in it.
    let mut dirs: HashSet<&str> = HashSet::new();
    // The directories of the files, as they are in the revision.
    let mut file_dirs: HashSet<&str> = HashSet::new();
    for entry in new.entries() {
        for a in entry.path.ancestors() {
            if dirs.insert(a) && !new_dirs.is_new(a) {
                ensure_dir(root, a, &mut aside)?;
            }
        }
        match &entry.kind {
            EntryKind::Dir => {
                let path = entry.path.as_str();
                if dirs.insert(path) {
                    if new_dirs.is_new(path) {
                        staging.make_tree_dir(&entry.path.under(tree))?;
                    } else {
                        ensure_dir(root, path, &mut aside)?;
                    }
                }
            }
            EntryKind::File {
                mode,
                hash,
                chunks,
                size,
            } => {
                let in_new = new_dirs.holds(&entry.path);
                let target = entry.path.under(if in_new { tree } else { root });
                let mode = *mode;
                let kept = unchanged.contains(&entry.path);
                // Looked at once, for its record and (in the tree) its mode.
                let mut looked = None;
                if kept {
                    set_mode(&target, mode)?;
                    stats.kept += 1;
                } else {
                    if !in_new && edited.contains(&entry.path) && target.exists() {
                        aside.move_aside(root, entry.path.as_str())?;
                    }
                    let left = uses.get_mut(hash).expect("counted above");
                    *left -= 1;
                    // A file staged in the tree stays there for its own path: the other paths
                    // that hold it get copies.
                    let last_use = *left == 0 && staging.in_tree(hash).is_none();
                    let copy = copies.get(&entry.path).map(PathBuf::as_path);
                    if in_new {
                        looked = Some(place_in_tree(staging, hash, last_use, copy, &target, mode)?);
                    } else {
                        let to = Install {
                            root,
                            rel: &entry.path,
                            mode,
                        };
                        install(staging, hash, last_use, copy, to, &mut aside)?;
                    }
                    stats.installed += 1;
                }
                // Its directory in the mirror, where a new one ends up (a path made once per
                // directory, not per file).
                let dir = entry.path.parent_str();
                if file_dirs.insert(dir) {
                    parents.insert(if dir.is_empty() {
                        root.to_owned()
                    } else {
                        root.join(dir)
                    });
                }
                let meta = match looked {
                    Some(meta) => meta,
                    None => Stamp::of_path(&target)?,
                };
                record(
                    entry.path.clone(),
                    FileRecord {
                        size: *size,
                        mtime_ns: meta.mtime_ns,
                        inode: meta.inode,
                        executable: mode & 0o111 != 0,
                        hash: *hash,
                        chunks: chunks.clone(),
                        // A kept file's are in the old index, which the caller has.
                        checks: if kept {
                            Vec::new()
                        } else {
                            staging.staged_checks(chunks)
                        },
                        dev: meta.dev,
                    },
                )?;
            }
        }
    }
    for dir in &new_dirs.roots {
        move_in(root, tree, dir, &mut aside)?;
        if let Some(p) = root.join(dir).parent() {
            parents.insert(p.to_owned());
        }
    }
    stats.removed = remove_gone(root, old, new)?;
    // An error fails the apply: the revision must not be committed as applied while a crash
    // could still lose its renames.
    sync_each(root, parents.iter().map(PathBuf::as_path).chain([root]))?;
    stats.moved_aside = aside.moved;
    Ok(stats)
}

struct Aside<'a> {
    conflicts: &'a Path,
    old_paths: &'a HashSet<&'a RelPath>,
    moved: u64,
}

impl Aside<'_> {
    /// Clear `path` (which is in the way): delete it if the old revision put it there, else
    /// move it to the conflicts directory.
    fn clear(&mut self, root: &Path, rel: &str) -> Result<(), StoreError> {
        let path = root.join(rel);
        let ours = RelPath::new(rel).is_ok_and(|r| self.old_paths.contains(&r));
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if ours && !meta.is_dir() {
            return std::fs::remove_file(&path).map_err(io_err(&path));
        }
        self.move_aside(root, rel)
    }

    /// Move `rel` to the conflicts directory.
    fn move_aside(&mut self, root: &Path, rel: &str) -> Result<(), StoreError> {
        move_to_conflicts(root, rel, self.conflicts)?;
        self.moved += 1;
        Ok(())
    }
}

fn ensure_dir(root: &Path, rel: &str, aside: &mut Aside) -> Result<(), StoreError> {
    let path = root.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => aside.clear(root, rel)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    std::fs::create_dir(&path).map_err(io_err(&path))
}

/// Where [`install`] puts a file: `rel` in the mirror at `root`, with `mode`.
struct Install<'a> {
    root: &'a Path,
    rel: &'a RelPath,
    mode: u32,
}

/// Put the staged file of `hash` at its path in the mirror: its `copy` if it has one (made and
/// synced by [`make_copies`]), else the staged file itself (the one path that gets it).
fn install(
    staging: &StagingArea,
    hash: &ContentHash,
    last_use: bool,
    copy: Option<&Path>,
    to: Install,
    aside: &mut Aside,
) -> Result<(), StoreError> {
    let target = to.rel.under(to.root);
    let source = match copy {
        Some(copy) => copy.to_owned(),
        None => staging.staged_path(hash),
    };
    set_mode(&source, to.mode)?;
    // Renamed first, looked at only if that fails: a directory in the way (`EISDIR`) is
    // cleared and the rename tried again. No lookup of the target per file otherwise.
    if let Err(e) = std::fs::rename(&source, &target) {
        if !std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            return Err(io_err(&target)(e));
        }
        aside.clear(to.root, to.rel.as_str())?;
        std::fs::rename(&source, &target).map_err(io_err(&target))?;
    }
    if last_use {
        staging.remove_sidecar(hash);
    }
    Ok(())
}

/// Put the staged file of `hash` at `target` in the tree, with `mode`: there already if it was
/// staged at its own path; else its `copy` renamed there if it has one, the staged file if
/// not (the one path that gets it). Returns what it is there. Its mode is set only if it has
/// another (a file of one chunk is staged with its mode: no `chmod` per file).
fn place_in_tree(
    staging: &StagingArea,
    hash: &ContentHash,
    last_use: bool,
    copy: Option<&Path>,
    target: &Path,
    mode: u32,
) -> Result<Stamp, StoreError> {
    let staged = staging.staged_path(hash);
    // Made at its own path by one write, which saw what the record keeps.
    let written = (staged == target)
        .then(|| staging.written_in_tree(hash))
        .flatten();
    if staged != target {
        staging.make_tree_dir(target.parent().expect("a path under the tree has a parent"))?;
        let source = copy.unwrap_or(&staged);
        std::fs::rename(source, target).map_err(io_err(target))?;
    }
    let meta = match written {
        Some(written) => written,
        None => Stamp::of_path(target)?,
    };
    if meta.mode != mode {
        set_mode(target, mode)?;
    }
    if last_use || staging.in_tree(hash).is_some() {
        staging.remove_sidecar(hash);
    }
    // What a record keeps of it (size, mtime, inode) a mode change leaves as it was.
    Ok(meta)
}

/// Copies of staged files for the paths that share one with another path: each such path
/// gets one, but the one that gets the staged file itself (its own path in the tree, if it was
/// staged there and that directory is still new, else the last). They are all made before
/// any file is renamed into view, then synced (one `syncfs` on Linux), so that a copy reaches
/// a mirror's name only with its bytes on disk, as every staged file does: a crash must not
/// leave an empty or partial file there. A tree where no two paths share content (most
/// trees: a million small files) costs one look at each distinct content, nothing more.
fn make_copies<'a>(
    staging: &StagingArea,
    new: &'a Manifest,
    unchanged: &HashSet<RelPath>,
    uses: &HashMap<ContentHash, usize>,
    new_dirs: &NewDirs,
) -> Result<HashMap<&'a RelPath, PathBuf>, StoreError> {
    let mut left: HashMap<ContentHash, usize> = uses
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(hash, &n)| (*hash, n))
        .collect();
    let mut copies = HashMap::new();
    if left.is_empty() {
        return Ok(copies);
    }
    for (path, _, _, hash, _) in new.files() {
        if unchanged.contains(path) {
            continue;
        }
        let Some(left) = left.get_mut(&hash) else {
            continue;
        };
        *left -= 1;
        let staged_itself = match staging.in_tree(&hash) {
            Some(own) if new_dirs.holds(own) => own == path,
            _ => *left == 0,
        };
        if staged_itself {
            continue;
        }
        // `left` counts down: each copy of one file gets its own name.
        let copy = staging.copy_path(&hash, *left)?;
        std::fs::copy(staging.staged_path(&hash), &copy).map_err(io_err(&copy))?;
        copies.insert(path, copy);
    }
    if let Some(copy) = copies.values().next() {
        let shard = copy.parent().expect("a copy is in a shard");
        sync_each(shard, copies.values().map(PathBuf::as_path))?;
    }
    Ok(copies)
}

/// Move the new directory `dir`, built in `tree`, into the mirror at `root`. Something put in
/// its way since the plan (a user's file or directory) is cleared first, as for a file.
fn move_in(root: &Path, tree: &Path, dir: &str, aside: &mut Aside) -> Result<(), StoreError> {
    let (from, to) = (tree.join(dir), root.join(dir));
    if std::fs::rename(&from, &to).is_ok() {
        return Ok(());
    }
    if std::fs::symlink_metadata(&to).is_ok() {
        aside.clear(root, dir)?;
    }
    std::fs::rename(&from, &to).map_err(io_err(&to))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Remove files and directories of `old` that `new` does not have. Directories that still hold
/// something (a user's file) are left and reported.
fn remove_gone(root: &Path, old: &Manifest, new: &Manifest) -> Result<u64, StoreError> {
    let keep: HashSet<&RelPath> = new.entries().iter().map(|e| &e.path).collect();
    let mut removed = 0;
    for entry in old.entries().iter().rev() {
        if keep.contains(&entry.path) {
            continue;
        }
        let path = entry.path.under(root);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let result = match (&entry.kind, meta.is_dir()) {
            (EntryKind::Dir, true) => std::fs::remove_dir(&path),
            (EntryKind::File { .. }, false) => std::fs::remove_file(&path),
            _ => continue,
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(path = %entry.path, error = %e, "could not remove"),
        }
    }
    Ok(removed)
}

/// Make durable each of `paths` (a file's bytes, a directory's names: renames, removals). On
/// Linux one `syncfs` of the file system `on` is on does it for all at once: a journaling file
/// system (ext4, XFS) commits its journal for each fsync, and a hundred directories were a
/// hundred commits waited for one after the other. Elsewhere, an fsync of each.
fn sync_each<'p>(on: &'p Path, paths: impl Iterator<Item = &'p Path>) -> Result<(), StoreError> {
    #[cfg(target_os = "linux")]
    {
        let file = std::fs::File::open(on).map_err(io_err(on))?;
        rustix::fs::syncfs(&file).map_err(|e| io_err(on)(e.into()))?;
        #[cfg(test)]
        for p in std::iter::once(on).chain(paths) {
            tests::injected_sync_failure(p).map_err(io_err(p))?;
        }
        #[cfg(not(test))]
        let _ = paths;
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = on;
        for p in paths {
            std::fs::File::open(p)
                .and_then(|f| f.sync_all())
                .map_err(io_err(p))?;
        }
        Ok(())
    }
}

/// Result of checking a tree against a manifest.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Where the bytes of `file` first stop matching `chunks` (a file of `size` bytes): the offset
/// of the first chunk whose bytes do not hash to it, or of the end of the shorter of the two.
/// `None` if every chunk matches and nothing follows, which makes the file the manifest's: a
/// file's hash is the hash of its chunk list.
fn first_difference(
    file: &std::fs::File,
    size: u64,
    chunks: &[ChunkRef],
) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut buf = Vec::new();
    let mut off = 0u64;
    for c in chunks {
        buf.resize(c.len as usize, 0);
        if off + c.len as u64 > len {
            return Ok(Some(off));
        }
        file.read_exact_at(&mut buf, off)?;
        if !c.hash.matches(&buf) {
            return Ok(Some(off));
        }
        off += c.len as u64;
    }
    Ok((len != size).then_some(off.min(len)))
}

/// Rehash every chunk of every file of `root` against `manifest` and look for anything extra.
pub fn verify_tree(root: &Path, manifest: &Manifest) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut expected: HashSet<PathBuf> = HashSet::new();
    for entry in manifest.entries() {
        let path = entry.path.under(root);
        expected.insert(path.clone());
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => {
                report.problems.push(format!("missing: {}", entry.path));
                continue;
            }
        };
        match &entry.kind {
            EntryKind::Dir if !meta.is_dir() => report
                .problems
                .push(format!("not a directory: {}", entry.path)),
            EntryKind::Dir => {}
            EntryKind::File { .. } if !meta.is_file() => {
                report.problems.push(format!("not a file: {}", entry.path))
            }
            EntryKind::File {
                mode, size, chunks, ..
            } => {
                let f = std::fs::File::open(&path).map_err(io_err(&path))?;
                let differs = first_difference(&f, *size, chunks).map_err(io_err(&path))?;
                report.files_checked += 1;
                report.bytes_checked += meta.len();
                if let Some(at) = differs {
                    report
                        .problems
                        .push(format!("content differs: {} (from byte {at})", entry.path));
                }
                // What the publisher's own tree would publish (it keeps its write bits).
                let published = crate::tree::published_mode(meta.mode());
                if published != *mode {
                    report.problems.push(format!(
                        "mode differs: {} is {:o}, the revision says {mode:o}",
                        entry.path,
                        meta.mode() & 0o7777
                    ));
                }
            }
        }
    }
    for item in walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == crate::config::STATE_DIR))
        .flatten()
    {
        if !expected.contains(item.path()) {
            report
                .problems
                .push(format!("not in the revision: {}", item.path().display()));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// A directory whose fsync fails, for applies on this thread.
        static SYNC_FAILS: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }

    /// The seam: an fsync error for the directory the test named (the disk cannot be made to
    /// fail one on demand).
    pub(super) fn injected_sync_failure(path: &Path) -> std::io::Result<()> {
        if SYNC_FAILS.with(|f| f.borrow().as_deref() == Some(path)) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// A manifest of `src` after writing `files` there, and a staging area in `root` holding
    /// every file of it, verified and synced.
    fn staged(src: &Path, root: &Path, files: &[(&str, &[u8])]) -> (Manifest, StagingArea) {
        staged_for(src, root, None, files)
    }

    /// [`apply_revision`], its records collected.
    fn apply_collect(
        root: &Path,
        area: &StagingArea,
        (old, new): (&Manifest, &Manifest),
        unchanged: &HashSet<RelPath>,
        edited: &HashSet<RelPath>,
        conflicts: &Path,
    ) -> Result<(Vec<(RelPath, FileRecord)>, ApplyStats), StoreError> {
        let mut records = Vec::new();
        let mut record = |path, rec| {
            records.push((path, rec));
            Ok(())
        };
        let stats = apply_revision(
            root,
            area,
            (old, new),
            unchanged,
            edited,
            conflicts,
            &mut record,
        )?;
        Ok((records, stats))
    }

    /// Apply `new` to `root` where no revision was before, nothing unchanged or edited.
    fn apply_first(
        root: &Path,
        area: &StagingArea,
        new: &Manifest,
        conflicts: &Path,
    ) -> Result<(Vec<(RelPath, FileRecord)>, ApplyStats), StoreError> {
        let none = HashSet::new();
        apply_collect(
            root,
            area,
            (&Manifest::default(), new),
            &none,
            &none,
            conflicts,
        )
    }

    /// [`staged`], with the files in directories `mirror` does not have staged in the tree, as
    /// the subscriber's plan does.
    fn staged_for(
        src: &Path,
        root: &Path,
        mirror: Option<&Path>,
        files: &[(&str, &[u8])],
    ) -> (Manifest, StagingArea) {
        for (rel, data) in files {
            let path = src.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        let rules = crate::tree::IgnoreRules::load(src, &[]).unwrap();
        let manifest = crate::tree::scan(src, &HashMap::new(), &rules)
            .unwrap()
            .manifest;
        let wanted: Vec<_> = manifest
            .files()
            .map(|(_, size, _, hash, chunks)| (hash, size, chunks.to_vec()))
            .collect();
        let mut tree = crate::store::TreeFiles::default();
        if let Some(mirror) = mirror {
            let new_dirs = NewDirs::find(mirror, &manifest);
            for (path, _, mode, hash, _) in manifest.files() {
                if new_dirs.holds(path) && !tree.contains_key(&hash) {
                    tree.insert(hash, (path.clone(), mode));
                }
            }
        }
        let (area, positions, _) =
            StagingArea::open_with_tree(&root.join("staging"), wanted.clone(), tree).unwrap();
        for (rel, data) in files {
            let chunked = crate::tree::chunk_reader(*data).unwrap();
            let mut off = 0;
            for c in &chunked.chunks {
                let bytes = &data[off..off + c.len as usize];
                area.write_chunk(&c.hash, &positions[&c.hash], bytes)
                    .unwrap();
                off += c.len as usize;
            }
            area.finish(&[chunked.hash])
                .unwrap_or_else(|e| panic!("{rel}: {e}"));
        }
        (manifest, area)
    }

    /// A directory where the revision puts a file (one of the user's, holding a file of
    /// theirs) is moved to the conflicts directory, whole, and the file renamed into place: the
    /// rename is tried first, and the way cleared when it fails.
    #[test]
    fn a_directory_in_the_way_of_a_file_is_moved_aside() {
        let (src, state, root) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (new, area) = staged(src.path(), state.path(), &[("d/f", b"hello")]);
        std::fs::create_dir_all(root.path().join("d/f")).unwrap();
        std::fs::write(root.path().join("d/f/mine"), b"the user's").unwrap();
        let conflicts = state.path().join("conflicts");
        let (_, stats) = apply_first(root.path(), &area, &new, &conflicts).unwrap();
        assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), b"hello");
        assert_eq!((stats.installed, stats.moved_aside), (1, 1));
        let kept: Vec<Vec<u8>> = walkdir::WalkDir::new(&conflicts)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| std::fs::read(e.path()).unwrap())
            .collect();
        assert_eq!(
            kept,
            vec![b"the user's".to_vec()],
            "nothing of the user's lost"
        );
    }

    /// A directory the mirror does not have is built in the staging area's tree and put in
    /// place by one rename: the directory in the mirror is the one built there (same inode),
    /// its files have their modes, a file of the same content elsewhere is a copy, and nothing
    /// is left in the tree.
    #[test]
    fn a_new_directory_is_put_in_place_whole() {
        let (src, state, root) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let files: &[(&str, &[u8])] = &[
            ("d/e/deep", b"deep"),
            ("d/f", b"same"),
            ("top", b"same"),
            ("x/y", b"why"),
        ];
        std::fs::create_dir(root.path().join("x")).unwrap();
        let (new, area) = staged_for(src.path(), state.path(), Some(root.path()), files);
        let built = std::fs::metadata(area.tree_dir().join("d")).unwrap().ino();
        assert!(
            !area.tree_dir().join("x").exists(),
            "x is in the mirror already: its file is staged by hash"
        );
        let (records, stats) =
            apply_first(root.path(), &area, &new, &state.path().join("conflicts")).unwrap();
        assert_eq!(stats.installed, 4);
        for (rel, data) in files {
            let path = root.path().join(rel);
            assert_eq!(&std::fs::read(&path).unwrap()[..], *data, "{rel}");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o444, "{rel}");
        }
        let d = std::fs::metadata(root.path().join("d")).unwrap();
        assert_eq!(d.ino(), built, "d was moved in whole");
        let left: Vec<_> = walkdir::WalkDir::new(area.tree_dir())
            .min_depth(1)
            .into_iter()
            .flatten()
            .map(|e| e.path().to_owned())
            .collect();
        assert!(left.is_empty(), "left in the tree: {left:?}");
        // The records of the files written whole in the tree come from what their write saw
        // (no lookup at apply), and say what the mirror holds, as the others' do.
        let deep = new
            .files()
            .find(|f| f.0.as_str() == "d/e/deep")
            .map(|f| f.3)
            .unwrap();
        assert!(area.written_in_tree(&deep).is_some());
        for (path, rec) in &records {
            let meta = std::fs::symlink_metadata(path.under(root.path())).unwrap();
            assert_eq!(
                (rec.inode, rec.size, rec.mtime_ns, rec.dev),
                (
                    meta.ino(),
                    meta.len(),
                    crate::tree::mtime_ns(&meta),
                    meta.dev()
                ),
                "{path}"
            );
        }
    }

    /// A directory the plan found missing and a user made before the apply: its files go in
    /// one by one from the tree, and the user's file in it stays.
    #[test]
    fn a_directory_made_since_the_plan_gets_the_files_one_by_one() {
        let (src, state, root) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (new, area) = staged_for(
            src.path(),
            state.path(),
            Some(root.path()),
            &[("d/f", b"hello")],
        );
        assert!(area.tree_dir().join("d/f").exists(), "staged in the tree");
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/mine"), b"the user's").unwrap();
        let (_, stats) =
            apply_first(root.path(), &area, &new, &state.path().join("conflicts")).unwrap();
        assert_eq!(stats.installed, 1);
        assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), b"hello");
        assert_eq!(
            std::fs::read(root.path().join("d/mine")).unwrap(),
            b"the user's"
        );
    }

    #[test]
    fn a_directory_fsync_error_fails_the_apply() {
        let (src, state, root) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (new, area) = staged(src.path(), state.path(), &[("d/f", b"hello")]);
        let failing = root.path().join("d");
        SYNC_FAILS.with(|f| *f.borrow_mut() = Some(failing.clone()));
        let conflicts = state.path().join("conflicts");
        let applied = apply_first(root.path(), &area, &new, &conflicts);
        SYNC_FAILS.with(|f| *f.borrow_mut() = None);
        match applied {
            Err(StoreError::Io { path, source }) => {
                assert_eq!(path, failing);
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!(
                "the apply succeeded though {} was not synced",
                failing.display()
            ),
        }
        // The file is in place (renames are not undone); the subscriber's retry plans again,
        // finds it holding its new content, and the apply succeeds.
        assert_eq!(std::fs::read(failing.join("f")).unwrap(), b"hello");
        let unchanged = HashSet::from([RelPath::new("d/f").unwrap()]);
        let (old, none) = (Manifest::default(), HashSet::new());
        let again = apply_collect(
            root.path(),
            &area,
            (&old, &new),
            &unchanged,
            &none,
            &conflicts,
        );
        assert_eq!(again.unwrap().1.kept, 1);
    }

    /// Paths that share a staged file get copies, all made and synced before any file of the
    /// revision is renamed into the mirror: when that sync fails, the apply fails with nothing
    /// of the revision in view, and a retry puts every path in place with its bytes.
    #[test]
    fn copies_are_synced_before_any_file_is_in_view() {
        let (src, state, root) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let same: &[u8] = b"the same bytes at three paths";
        let files = [("a", same), ("b", same), ("d/c", same), ("e", b"alone")];
        let (new, area) = staged(src.path(), state.path(), &files);
        let hash = new.files().next().unwrap().3;
        let shard = area.copy_path(&hash, 0).unwrap();
        let shard = shard.parent().unwrap().to_owned();
        SYNC_FAILS.with(|f| *f.borrow_mut() = Some(shard.clone()));
        let conflicts = state.path().join("conflicts");
        let applied = apply_first(root.path(), &area, &new, &conflicts);
        SYNC_FAILS.with(|f| *f.borrow_mut() = None);
        match applied {
            Err(StoreError::Io { path, .. }) => assert_eq!(path, shard),
            other => panic!("the copies were not synced, yet: {other:?}"),
        }
        for rel in ["a", "b", "d", "e"] {
            assert!(
                !root.path().join(rel).exists(),
                "{rel} is in view before the copies were synced"
            );
        }
        let (records, stats) = apply_first(root.path(), &area, &new, &conflicts).unwrap();
        assert_eq!((stats.installed, records.len()), (4, 4));
        for (rel, data) in files {
            assert_eq!(std::fs::read(root.path().join(rel)).unwrap(), data, "{rel}");
        }
        let left: Vec<_> = std::fs::read_dir(&shard)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| {
                n.to_string_lossy()
                    .starts_with(super::super::staging::COPY_PREFIX)
            })
            .collect();
        assert!(left.is_empty(), "copies left behind: {left:?}");
    }
}
