//! Directories only their owner may read: the state directory and the staging area.

use super::error::{io_err, StoreError};

/// Mode of the state directory and the staging area: its owner's alone.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Create the directory `path` (and its parents) if it is not there, and make it 0700 if it
/// is wider: the state directory holds the node's keys, the state database and staged files,
/// which other users of the machine have no business reading.
pub fn private_dir(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match std::fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(path)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_err(path)(e)),
        _ => {}
    }
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() {
        return Err(io_err(path)(std::io::ErrorKind::NotADirectory.into()));
    }
    if meta.permissions().mode() & 0o777 == PRIVATE_DIR_MODE {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        .map_err(io_err(path))
}
