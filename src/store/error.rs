//! [`StoreError`], the errors of the storage layer, and `io_err` to make one from an
//! `io::Error`. A leaf.

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
    #[error(
        "{path} was written by a newer treecast (state format {format}; this one reads formats \
         up to {reads}): run that newer treecast on this tree"
    )]
    NewerState {
        path: std::path::PathBuf,
        format: u32,
        reads: u32,
    },
    /// One side of an apply stopped because the other failed (whose error is the cause).
    #[error("the apply stopped: {0}")]
    ApplyStopped(&'static str),
    #[error("staged file {file} lacks its verified chunk {chunk}")]
    StagedIncomplete {
        file: crate::tree::ContentHash,
        chunk: crate::tree::ContentHash,
    },
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
