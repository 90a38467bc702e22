//! Local state: the redb database in `.treecast/`, the staging area and applying a revision to
//! the mirror.
//!
//! Owns every write under a tree's root. Knows nothing of peers or the network.

mod apply;
mod conflicts;
mod db;
mod local;
mod staging;

pub use apply::{apply_revision, verify_tree, ApplyStats, VerifyReport};
pub use conflicts::move_to_conflicts;
pub use db::{Db, StoredState};
pub use local::{local_changes, LocalChanges};
pub use staging::{ChunkPositions, StagingArea};

use thiserror::Error;

/// Errors of the storage layer.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Db(Box<redb::Error>),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    #[error("staged file {0} does not match its hash after download")]
    StagedMismatch(crate::tree::ContentHash),
}

macro_rules! impl_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
impl_from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Map an `io::Error` on `path` into a `StoreError`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

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
