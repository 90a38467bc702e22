//! Local changes in a mirror: files a user edited, deleted or added since treecast wrote it.
//!
//! A mirror is read-only. The subscriber looks for changes at start and every few seconds
//! while it runs; edited and added files are moved to `.treecast/conflicts/` and the mirror is
//! repaired from peers (see the subscriber engine). Before a first revision, [`user_entries`]
//! says what a directory a subscriber is pointed at already holds.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{io_err, StoreError};
use crate::tree::{chunk_reader, FileRecord, Manifest, RelPath};

/// What differs between a mirror and the revision it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalChanges {
    /// Files of the revision whose content changed (or that became something else).
    pub edited: Vec<String>,
    /// Files and directories of the revision that are gone.
    pub deleted: Vec<String>,
    /// Paths the revision does not have (outside `.treecast/`): top-most only.
    pub added: Vec<String>,
}

impl LocalChanges {
    pub fn is_empty(&self) -> bool {
        self.edited.is_empty() && self.deleted.is_empty() && self.added.is_empty()
    }

    pub fn count(&self) -> usize {
        self.edited.len() + self.deleted.len() + self.added.len()
    }
}

/// Compare `root` with `manifest`. Files `indexed` says are as the file index holds them
/// (size, mtime and inode match their record, given the file's `lstat`) are taken as
/// unchanged; others are rehashed, so a touched but unchanged file is not an edit. `None` if
/// `stop` was set before the look ended (the node is stopping: a look over a million files
/// takes tens of seconds, and its process would wait for it to exit).
pub fn local_changes(
    root: &Path,
    indexed: impl Fn(&RelPath, &std::fs::Metadata) -> bool,
    manifest: &Manifest,
    stop: &AtomicBool,
) -> Option<LocalChanges> {
    const STOP_CHECK_EVERY: usize = 1024;
    let stopped = || stop.load(Ordering::Relaxed);
    let mut changes = LocalChanges::default();
    let mut known: HashSet<&str> = HashSet::new();
    for (i, entry) in manifest.entries().iter().enumerate() {
        if i.is_multiple_of(STOP_CHECK_EVERY) && stopped() {
            return None;
        }
        known.insert(entry.path.as_str());
        let full = entry.path.under(root);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(_) => {
                changes.deleted.push(entry.path.to_string());
                continue;
            }
        };
        match &entry.kind {
            crate::tree::EntryKind::Dir => {
                if !meta.is_dir() {
                    changes.edited.push(entry.path.to_string());
                }
            }
            crate::tree::EntryKind::File { hash, .. } => {
                if !meta.is_file() {
                    changes.edited.push(entry.path.to_string());
                    continue;
                }
                if indexed(&entry.path, &meta) {
                    continue;
                }
                let same = std::fs::File::open(&full)
                    .ok()
                    .and_then(|f| chunk_reader(std::io::BufReader::new(f)).ok())
                    .is_some_and(|c| c.hash == *hash);
                if !same {
                    changes.edited.push(entry.path.to_string());
                }
            }
        }
    }
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == crate::config::STATE_DIR));
    let mut it = walker;
    let mut seen = 0usize;
    while let Some(next) = it.next() {
        seen += 1;
        if seen.is_multiple_of(STOP_CHECK_EVERY) && stopped() {
            return None;
        }
        let Ok(e) = next else { continue };
        let Ok(rel) = e.path().strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy();
        if !known.contains(rel.as_ref()) {
            changes.added.push(rel.into_owned());
            if e.file_type().is_dir() {
                it.skip_current_dir();
            }
        }
    }
    Some(changes)
}

/// What `index` (the file index, by path) says of a file `local_changes` looks at.
pub fn indexed_in(
    index: &HashMap<RelPath, FileRecord>,
) -> impl Fn(&RelPath, &std::fs::Metadata) -> bool + '_ {
    |path, meta| index.get(path).is_some_and(|r| r.unchanged(meta))
}

/// The names at the top of `root` besides the state directory, sorted: what a directory holds
/// that is not treecast's. A `root` that does not exist holds nothing.
pub fn user_entries(root: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry.map_err(io_err(root))?.file_name();
        if name != crate::config::STATE_DIR {
            names.push(name.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_entries_leave_out_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(user_entries(&dir.path().join("new")).unwrap().is_empty());
        std::fs::create_dir(dir.path().join(crate::config::STATE_DIR)).unwrap();
        assert!(user_entries(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join("thesis.txt"), b"mine").unwrap();
        std::fs::create_dir(dir.path().join("notes")).unwrap();
        assert_eq!(user_entries(dir.path()).unwrap(), ["notes", "thesis.txt"]);
    }

    /// A look told to stop gives no result (not a partial one taken for the whole); one not
    /// told finds what changed.
    #[test]
    fn a_look_for_local_changes_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.txt"), b"a").unwrap();
        let scanned =
            crate::tree::scan(root, &HashMap::new(), &crate::tree::IgnoreRules::none()).unwrap();
        let index: HashMap<_, _> = scanned.records.into_iter().collect();
        std::fs::write(root.join("b.txt"), b"mine").unwrap();
        let go = AtomicBool::new(false);
        let found = local_changes(root, indexed_in(&index), &scanned.manifest, &go).unwrap();
        assert_eq!(found.added, ["b.txt"]);
        let stop = AtomicBool::new(true);
        assert!(local_changes(root, indexed_in(&index), &scanned.manifest, &stop).is_none());
    }
}
