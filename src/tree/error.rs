//! [`TreeError`], the errors of the tree layer. A leaf.

use thiserror::Error;

/// Errors of the tree layer.
#[derive(Debug, Error)]
pub enum TreeError {
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("bad ignore rules in {0}")]
    BadIgnore(String),
    #[error("manifest rejected: {0}")]
    BadManifest(String),
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("scanning: {0}")]
    Walk(#[from] walkdir::Error),
}
