//! [`TrustError`], the errors of the trust layer. A leaf.

use thiserror::Error;

/// Errors of the trust layer.
#[derive(Debug, Error)]
pub enum TrustError {
    #[error("key file {path}: {source}")]
    KeyIo {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} is not a valid ed25519 key")]
    BadKeyFile(std::path::PathBuf),
    #[error("not a valid publisher public key")]
    BadPublicKey,
    #[error("a ticket starts with `{expected}`, and this one starts with `{got}`")]
    TicketPrefix { expected: &'static str, got: String },
    #[error("after `tc1` a ticket holds only the letters a-z and the digits 2-7, and this one has others or is cut short")]
    TicketEncoding,
    #[error("ticket checksum does not match: the ticket was mistyped or truncated")]
    TicketChecksum,
    #[error("ticket body is malformed: {0}")]
    TicketBody(String),
    #[error("head signature does not verify against the pinned publisher key")]
    BadSignature,
    #[error("head is signed by {got}, but the pinned publisher key is {pinned}")]
    WrongSigner { pinned: String, got: String },
    #[error("head is for swarm {got}, expected swarm {expected}")]
    WrongSwarm {
        expected: uuid::Uuid,
        got: uuid::Uuid,
    },
    #[error("head could not be decoded: {0}")]
    HeadDecode(String),
    #[error("handover: {0}")]
    Succession(String),
    #[error("head carries {len} handover records, over the cap of {max}")]
    SuccessionTooLong { len: usize, max: usize },
    #[error("handover record from key {from} does not verify")]
    ForgedSuccession { from: String },
}
