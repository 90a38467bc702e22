//! treecast publishes a directory tree from one publisher to many subscribers over a
//! peer-to-peer QUIC swarm (libp2p). Subscribers keep an exact, read-only, verified mirror.
//!
//! A tour, from the bottom up; a layer imports only the layers listed before it, and no module
//! imports another in a circle (`tests/layout.rs` checks the circles):
//! - [`tree`]: validated paths, FastCDC chunking, BLAKE3, scanning, the manifest, opening a
//!   tree's files without following links (pure apart from reading files).
//! - [`trust`]: publisher and node keys, signed heads, handovers, tickets.
//! - [`wire`]: the protocol specification and message types, framing with hard caps.
//! - [`config`]: every limit, timeout and default in one place (the limits `tree` and `trust`
//!   check are defined there and re-exported), and a node's runtime configuration.
//! - [`store`]: the redb state database, the staging area, applying a revision atomically per
//!   file, verifying a tree.
//! - [`swarm`]: the node's decisions as sans-IO state machines, tested without sockets, with
//!   time passed in: the piece picker and fetch scheduling (what to request from whom), the
//!   seeding policy, session slots, which peers learned by peer exchange to dial, discovery
//!   (DHT lookups, provider announcements, redials) and NAT traversal (relay reservations,
//!   reachability).
//! - [`net`]: the libp2p swarm on QUIC (TCP and DNS beside it for the public DHT) and our small
//!   stream behaviour; the DHT's keys, which head records it stores and which provider records
//!   it keeps (spread over networks); the public IPFS DHT (Amino): its key, bootstrap peers and
//!   when to announce there.
//! - [`node`]: the pump that carries those decisions out: one task owns the libp2p swarm and
//!   never waits on anyone (`node::net_loop`, reached through `node::swarm_handle`, handing
//!   events on through `node::events`), control sessions, chunk streams, the publisher and
//!   subscriber engines (blocking work on the blocking pool), what a node says of itself
//!   (`treecast status`, `/metrics`, and the web dashboard `--http` serves, with
//!   `/api/status`), and the [`node::NodeHandle`] that the CLI and tests drive.
//! - [`settings`]: the TOML config file, folded into the command line's defaults.
//! - [`cli`]: the command line (`main.rs` only parses, sets up tracing and runs it).
//! - `src/bin/swarm-sim/` (a binary beside the library): the swarm simulator, which drives
//!   [`swarm`]'s state machines in simulated time over modelled links.

pub mod cli;
pub mod config;
pub mod demo;
pub mod net;
pub mod node;
pub mod settings;
pub mod store;
pub mod swarm;
pub mod tree;
pub mod trust;
pub mod wire;

pub use config::NodeConfig;
pub use node::{Node, NodeHandle, Status};
pub use trust::{PublisherKey, Ticket};
