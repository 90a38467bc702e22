//! Keys, signatures, heads and tickets: everything that decides what a subscriber may trust.
//!
//! Owns the publisher key (signs heads), the node key file (libp2p identity), the ticket
//! format and head verification. Must not do I/O beyond reading and writing key files.
//!
//! Modules, from the bottom up; none imports this `mod.rs`, and none imports in a circle:
//! - `error`: [`TrustError`]; `keys`: [`PublisherKey`] and the node key file.
//! - `export`: a publisher key encrypted under a passphrase; `ticket`: the [`Ticket`] format.
//! - `succession`: handover records; `head`: [`SignedHead`], which carries them.
//! - `lineage`: the pinned key and the handovers followed from it, which verifies heads.

mod error;
mod export;
mod head;
mod keys;
mod lineage;
mod succession;
mod ticket;

pub use error::TrustError;
pub use export::{export_key, import_key, KeyFileError, MIN_PASSPHRASE};
pub use head::{HeadBody, SignedHead, VerifiedHead};
pub use keys::{load_or_create_node_key, PublisherKey, PublisherPublicKey};
pub use lineage::Lineage;
pub use succession::{Succession, SuccessionBody, MAX_SUCCESSION};
pub use ticket::Ticket;
