//! Local state: the redb database in `.treecast/`, the staging area and applying a revision to
//! the mirror.
//!
//! Owns every write under a tree's root. Knows nothing of peers or the network.
//!
//! Modules, from the bottom up; none imports this `mod.rs`, and none imports in a circle:
//! - `error`: [`StoreError`]; `private`: directories only their owner may read.
//! - `db`: the state database; `conflicts`: local edits moved aside; `local`: finding them.
//! - `open_files`: a bounded set of open files, least recently used closed first.
//! - `staging`: partial files being fetched; `apply`: switching the mirror to a revision, and
//!   verifying a tree.

mod apply;
mod conflicts;
mod db;
mod error;
mod local;
mod open_files;
mod private;
mod staging;

pub use apply::{apply_revision, verify_tree, ApplyStats, NewDirs, VerifyReport};
pub use conflicts::move_to_conflicts;
pub use db::{Applying, Db, StoredState, STATE_FORMAT};
pub(crate) use error::io_err;
pub use error::StoreError;
pub use local::{indexed_in, local_changes, user_entries, LocalChanges};
pub use private::private_dir;
pub use staging::{ByHash, ChunkPositions, StagingArea, TreeFiles, OPEN_STAGED_FILES, TREE_DIR};
