//! The protocol's names and version: what two nodes check before they exchange a message. A
//! leaf.

/// Protocol version spoken by this build. 3: manifests carry each file's mode (format 2), which
/// a node of version 2 cannot read. 4: chunk requests and replies travel in batches (several
/// per frame), which a node of version 3 cannot read. 5: availability travels as a full map once
/// and then as what changed (`Have` with sequence numbers, `HaveSync`), and a file's hash in a
/// manifest is the hash of its chunk list (format 3); a node of version 4 can read neither.
/// 6: requesters acknowledge reply frames on chunk streams (`/treecast/chunks/2`).
/// 7: a server whose upload budget is full answers "busy", not "not found" (`/treecast/chunks/3`).
pub const PROTOCOL_VERSION: u32 = 7;
/// Magic bytes at the start of every control stream.
pub const MAGIC: &[u8; 8] = b"treecast";
/// Protocol name of the control stream.
pub const CONTROL_PROTOCOL: &str = "/treecast/control/1";
/// Protocol name of chunk streams.
pub const CHUNKS_PROTOCOL: &str = "/treecast/chunks/3";
