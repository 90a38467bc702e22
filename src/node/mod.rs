//! A running node: one event loop owning the libp2p swarm, plus the publisher or subscriber
//! engine that decides what to publish or fetch.
//!
//! `Node::publish` / `Node::subscribe` start everything and return a [`NodeHandle`]. The handle
//! talks to the tasks over bounded channels; dropping it or calling `shutdown` cancels one
//! `CancellationToken` tree, peers get a goodbye, and the tasks are joined in order.

//! Modules, each owning one job; none imports `mod.rs`, and none imports in a circle:
//! - [`Node`] (here): the entry points that start a node.
//! - `handle`: [`NodeHandle`] and [`DhtNodeHandle`], what a caller holds on a running node.
//! - `net_loop`: the one task that owns the libp2p swarm; `swarm_handle`: the typed handle the
//!   rest reaches it through; `events`: the never-blocking queue it hands peer events on with.
//! - `control`: one control session per peer; `chunks`: serving chunks and the fetch of a
//!   revision's chunks from many peers; `serve`: what this node can serve.
//! - `publisher`, `subscriber`: the engines that decide what to publish or fetch.
//! - `peer_book`: bans, dialed addresses and relays; `traffic`: bytes and rates per peer.
//! - `status`, `report`, `metrics`: what a node says of itself (`status`, `/metrics`);
//!   `rollout`, `throughput`: what it remembers for that (a publisher's rollouts, the last ten
//!   minutes of throughput), sans-IO; `http`: the HTTP server of `--http` (the web dashboard,
//!   `/api/status`, `/metrics`) and `--metrics`; `dashboard`: the page, embedded.
//! - `applied`: the revision a node holds, reloaded and checked from its state database.
//! - `error`: [`NodeError`].

mod applied;
mod chunks;
mod control;
mod dashboard;
mod error;
mod events;
mod handle;
pub mod http;
mod metrics;
mod net_loop;
mod peer_book;
mod publisher;
pub mod report;
mod rollout;
mod serve;
mod status;
mod subscriber;
mod swarm_handle;
mod throughput;
mod traffic;

use std::sync::Arc;

use crate::config::NodeConfig;
use crate::trust::{PublisherKey, Ticket};
use crate::wire::Role;

pub use applied::verify_dir;
pub use error::NodeError;
pub use handle::{DhtNodeHandle, NodeHandle};
pub use status::{Stats, StatsSnapshot, Status};
pub use swarm_handle::PeerSummary;
pub use throughput::ThroughputSample;

use swarm_handle::LocalInfo;

/// Entry points.
pub struct Node;

impl Node {
    /// Start publishing `config.dir` with `key`.
    pub async fn publish(config: NodeConfig, key: PublisherKey) -> Result<NodeHandle, NodeError> {
        publisher::start(config, key).await
    }

    /// Rebuild a publisher's lost tree from the swarm (`treecast publish --restore`): mirror the
    /// newest revision signed by `key` into `config.dir`, then make it writable. The swarm is
    /// the one recorded in the tree's state, else `config.swarm_id`. Returns the revision.
    pub async fn restore(config: NodeConfig, key: &PublisherKey) -> Result<u64, NodeError> {
        publisher::restore(config, key).await
    }

    /// Hand the swarm of the (stopped) publisher tree at `dir` over to the key `to` from
    /// `from_revision` (default: the next revision). Returns the handover records the new
    /// publisher needs (`NodeConfig::succession`, `--succession`).
    pub fn handover(
        dir: &std::path::Path,
        key: &PublisherKey,
        to: crate::trust::PublisherPublicKey,
        from_revision: Option<u64>,
    ) -> Result<Vec<crate::trust::Succession>, NodeError> {
        publisher::handover(dir, key, to, from_revision)
    }

    /// Start mirroring the swarm named by `ticket` into `config.dir`.
    pub async fn subscribe(config: NodeConfig, ticket: Ticket) -> Result<NodeHandle, NodeError> {
        subscriber::start(config, ticket).await
    }

    /// Start a node that serves the DHT without joining a swarm (a bootstrap host). Its node
    /// key lives in `config.dir`.
    pub async fn dht_node(config: NodeConfig) -> Result<DhtNodeHandle, NodeError> {
        let state = config.state_dir();
        crate::store::private_dir(&state)?;
        let key = crate::trust::load_or_create_node_key(&state.join("node.key"))?;
        let local = LocalInfo {
            node_id: uuid::Uuid::new_v4(),
            swarm_id: uuid::Uuid::nil(),
            role: Role::DhtNode,
            addrs: Vec::new(),
            publisher: None,
        };
        let stats = Arc::new(Stats::default());
        let started =
            net_loop::start(&config, key, local, serve::Content::default(), stats).await?;
        let mut tasks = started.tasks;
        let mut events = started.events;
        tasks.spawn(async move { while events.recv().await.is_some() {} });
        Ok(DhtNodeHandle {
            cancel: started.cancel,
            tasks,
            peer_id: started.peer_id,
            listen_addrs: started.listen_addrs,
        })
    }
}
