//! [`WireError`], the errors of reading or writing the wire. A leaf.

use thiserror::Error;

/// Errors reading or writing the wire.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is over the cap of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("not a treecast peer (bad magic)")]
    BadMagic,
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("flooding: {0}")]
    Flood(&'static str),
}

impl WireError {
    /// True if the error shows the peer misbehaving (as opposed to a lost connection).
    pub fn is_hostile(&self) -> bool {
        matches!(
            self,
            WireError::FrameTooLarge { .. }
                | WireError::Decode(_)
                | WireError::BadMagic
                | WireError::Flood(_)
        )
    }
}
