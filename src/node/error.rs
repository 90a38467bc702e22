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
    #[error("the node has shut down")]
    Closed,
    #[error("timed out waiting: {0}")]
    Timeout(String),
}
