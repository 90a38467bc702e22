//! Errors that stop a node from starting or running. A leaf.

use thiserror::Error;

use crate::store::StoreError;
use crate::tree::TreeError;
use crate::trust::TrustError;

/// Errors that stop a node from starting or running.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("{0}")]
    Refused(String),
    #[error(
        "{} holds files ({found}) and no treecast mirror: refusing to subscribe into it. A \
         mirror holds the published files only, so everything else in it would be moved to \
         .treecast/conflicts/. Subscribe into a new or empty directory, or pass --adopt to \
         mirror into this one anyway (nothing is deleted: files and directories the revision \
         does not have, and files it has with other content, are moved to {}/.treecast/conflicts/)",
        .dir.display(),
        .dir.display()
    )]
    NotAMirror {
        dir: std::path::PathBuf,
        /// The first few names found, for the message.
        found: String,
    },
    #[error("the node has shut down")]
    Closed,
    #[error("timed out waiting: {0}")]
    Timeout(String),
}
