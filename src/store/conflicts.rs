//! The conflicts directory, `.treecast/conflicts/`: where local changes to a mirror (a user's
//! edit or addition, anything in the way of a revision) are moved, never deleted.
//!
//! Owns the names things get there. Does not decide what is a local change.

use std::path::{Path, PathBuf};

use super::{io_err, StoreError};

/// Move `root/rel` to `conflicts/`, named by the time (ms since the epoch) and the path with
/// `/` as `%2F`, so that nothing a user put in the mirror is ever deleted. Returns where it went.
pub fn move_to_conflicts(root: &Path, rel: &str, conflicts: &Path) -> Result<PathBuf, StoreError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    move_at(root, rel, conflicts, stamp)
}

/// [`move_to_conflicts`] at `stamp`.
fn move_at(root: &Path, rel: &str, conflicts: &Path, stamp: u128) -> Result<PathBuf, StoreError> {
    let path = root.join(rel);
    std::fs::create_dir_all(conflicts).map_err(io_err(conflicts))?;
    let dest = conflicts.join(format!("{stamp}-{}", rel.replace('/', "%2F")));
    tracing::warn!(path = rel, moved_to = %dest.display(), "mirror is read-only: moved a local change aside");
    std::fs::rename(&path, &dest).map_err(io_err(&path))?;
    Ok(dest)
}
