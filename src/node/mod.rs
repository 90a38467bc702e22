//! A running node: one event loop owning the libp2p swarm, plus the publisher or subscriber
//! engine that decides what to publish or fetch.
//!
//! `Node::publish` / `Node::subscribe` start everything and return a [`NodeHandle`]. The handle
//! talks to the tasks over bounded channels; dropping it or calling `shutdown` cancels one
//! `CancellationToken` tree, peers get a goodbye, and the tasks are joined in order.

mod chunks;
mod control;
mod metrics;
mod net_loop;
mod peer_book;
mod publisher;
pub mod report;
mod serve;
mod subscriber;
mod traffic;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::net::streams::Stream;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::store::StoreError;
use crate::tree::TreeError;
use crate::trust::{PublisherKey, Ticket, TrustError};
use crate::wire::Role;

pub(crate) use net_loop::NetCommand;
pub use net_loop::PeerSummary;

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

/// Where a node stands, published on a watch channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Revision applied (subscriber) or published (publisher).
    pub revision: Option<u64>,
    /// Newest verified revision heard of.
    pub newest_known: Option<u64>,
    /// Peers with a live control session.
    pub peers: usize,
    /// Peers that ever completed a hello.
    pub peers_seen: u64,
    /// Bytes verified and total for the download under way.
    pub progress: Option<(u64, u64)>,
    /// Subscriber: the mirror equals the newest revision known, and some peer was heard.
    pub synced: bool,
    /// The last error that stops progress, if any (for `--once`).
    pub error: Option<String>,
}

/// Counters, updated as the node works.
#[derive(Debug, Default)]
pub struct Stats {
    pub chunks_sent: AtomicU64,
    pub chunk_bytes_sent: AtomicU64,
    pub chunks_fetched: AtomicU64,
    pub chunk_bytes_fetched: AtomicU64,
    pub chunks_local: AtomicU64,
    pub bad_chunks: AtomicU64,
    pub peers_banned: AtomicU64,
    pub heads_rejected: AtomicU64,
    pub heads_stale: AtomicU64,
    pub files_hashed: AtomicU64,
    pub hostile_frames: AtomicU64,
    pub dht_lookups: AtomicU64,
    /// DCUtR hole punches that gave a direct connection, and ones that failed.
    pub hole_punches_ok: AtomicU64,
    pub hole_punches_failed: AtomicU64,
    /// Local changes found in a subscriber's mirror (edited, deleted, added paths).
    pub local_changes: AtomicU64,
    /// Looks for local changes in a subscriber's mirror that are over: done, or passed over
    /// because the node stopped while it put a revision in place.
    pub local_checks: AtomicU64,
    /// Valid DHT records not stored: their sender is over its share of the store, or the
    /// store is full (see `net::make_room`).
    pub dht_records_refused: AtomicU64,
    /// Dials started to peers learned by peer exchange.
    pub pex_dials: AtomicU64,
    /// Peers learned by peer exchange and refused a dial: their source, or all sources
    /// together, had spent the dial budget (`swarm::dials`).
    pub pex_dials_refused: AtomicU64,
    /// Connections refused at the handshake: the peer is banned, or over a connection limit.
    pub connections_refused: AtomicU64,
    /// Chunk bytes per peer and source, and rates.
    pub traffic: traffic::Traffic,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub chunks_sent: u64,
    pub chunk_bytes_sent: u64,
    pub chunks_fetched: u64,
    pub chunk_bytes_fetched: u64,
    pub chunks_local: u64,
    pub bad_chunks: u64,
    pub peers_banned: u64,
    pub heads_rejected: u64,
    pub heads_stale: u64,
    pub files_hashed: u64,
    pub hostile_frames: u64,
    pub dht_lookups: u64,
    pub hole_punches_ok: u64,
    pub hole_punches_failed: u64,
    pub local_changes: u64,
    pub local_checks: u64,
    pub dht_records_refused: u64,
    pub pex_dials: u64,
    pub pex_dials_refused: u64,
    #[serde(default)]
    pub connections_refused: u64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            chunks_sent: r(&self.chunks_sent),
            chunk_bytes_sent: r(&self.chunk_bytes_sent),
            chunks_fetched: r(&self.chunks_fetched),
            chunk_bytes_fetched: r(&self.chunk_bytes_fetched),
            chunks_local: r(&self.chunks_local),
            bad_chunks: r(&self.bad_chunks),
            peers_banned: r(&self.peers_banned),
            heads_rejected: r(&self.heads_rejected),
            heads_stale: r(&self.heads_stale),
            files_hashed: r(&self.files_hashed),
            hostile_frames: r(&self.hostile_frames),
            dht_lookups: r(&self.dht_lookups),
            hole_punches_ok: r(&self.hole_punches_ok),
            hole_punches_failed: r(&self.hole_punches_failed),
            local_changes: r(&self.local_changes),
            local_checks: r(&self.local_checks),
            dht_records_refused: r(&self.dht_records_refused),
            pex_dials: r(&self.pex_dials),
            pex_dials_refused: r(&self.pex_dials_refused),
            connections_refused: r(&self.connections_refused),
        }
    }
}

/// Commands to a publisher engine.
pub(crate) enum PublisherCommand {
    Rescan(oneshot::Sender<Result<Option<u64>, NodeError>>),
    DangerPublish {
        manifest: Vec<u8>,
        reply: oneshot::Sender<Result<u64, NodeError>>,
    },
}

/// Handle to a running node.
pub struct NodeHandle {
    net: mpsc::Sender<NetCommand>,
    publisher: Option<mpsc::Sender<PublisherCommand>>,
    status: watch::Receiver<Status>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    ticket: Ticket,
    db: Arc<crate::store::Db>,
    dir: std::path::PathBuf,
    reporter: report::Reporter,
    metrics_addr: Option<std::net::SocketAddr>,
}

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

/// Handle to a DHT-only node.
pub struct DhtNodeHandle {
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
}

impl DhtNodeHandle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Addresses this node listens on, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Stop and wait for the tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for DhtNodeHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl NodeHandle {
    /// The ticket for this swarm, with this node's addresses.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Addresses this node listens on, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Watch the node's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Wait until `pred` holds for the status, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl FnMut(&Status) -> bool,
    ) -> Result<Status, NodeError> {
        let mut rx = self.status.clone();
        let outcome = match tokio::time::timeout(timeout, rx.wait_for(pred)).await {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Err(NodeError::Closed),
            Err(_) => Err(NodeError::Timeout(format!(
                "{what}; last status: {:?}",
                *self.status.borrow()
            ))),
        };
        outcome
    }

    /// Wait until the node holds `revision` (or newer).
    pub async fn wait_revision(&self, revision: u64, timeout: Duration) -> Result<(), NodeError> {
        self.wait_for(timeout, &format!("revision {revision}"), |s| {
            s.revision.is_some_and(|r| r >= revision)
        })
        .await
        .map(|_| ())
    }

    /// Publisher: rescan now; returns the new revision if the tree changed.
    pub async fn rescan(&self) -> Result<Option<u64>, NodeError> {
        let tx = self
            .publisher
            .as_ref()
            .ok_or(NodeError::Refused("only a publisher rescans".into()))?;
        request(tx, PublisherCommand::Rescan).await?
    }

    /// Publisher: sign and publish an arbitrary manifest encoding, bypassing the scanner.
    /// Exists so tests can play a compromised publisher; never used by the CLI.
    pub async fn danger_publish_manifest(&self, manifest: Vec<u8>) -> Result<u64, NodeError> {
        let tx = self
            .publisher
            .as_ref()
            .ok_or(NodeError::Refused("only a publisher publishes".into()))?;
        request(tx, |reply| PublisherCommand::DangerPublish {
            manifest,
            reply,
        })
        .await?
    }

    /// Rehash this node's tree against the revision it holds.
    pub async fn verify(&self) -> Result<(u64, crate::store::VerifyReport), NodeError> {
        let (db, dir) = (self.db.clone(), self.dir.clone());
        tokio::task::spawn_blocking(move || verify_with(&db, &dir))
            .await
            .map_err(|e| NodeError::Refused(format!("verify task failed: {e}")))?
    }

    /// Dial `addr`.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.net
            .send(NetCommand::Dial(addr))
            .await
            .map_err(|_| NodeError::Closed)
    }

    /// Open a raw stream of `protocol` to a connected peer, bypassing our protocol code.
    /// Exists so tests can play a hostile peer.
    pub async fn danger_open_stream(
        &self,
        peer: PeerId,
        protocol: &'static str,
    ) -> Result<Stream, NodeError> {
        let opened = request(&self.net, |reply| NetCommand::OpenStream {
            peer,
            protocol: StreamProtocol::new(protocol),
            reply,
        })
        .await?;
        opened.map_err(|e| NodeError::Refused(e.to_string()))
    }

    /// Store a raw record in the DHT, unchecked. Exists so tests can try to plant forged or
    /// stale head records.
    pub async fn danger_put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NodeError> {
        self.net
            .send(NetCommand::DangerPutRecord { key, value })
            .await
            .map_err(|_| NodeError::Closed)
    }

    /// Look up this swarm's head record in the DHT; the newest valid one found, if any.
    pub async fn dht_head(&self) -> Result<Option<crate::trust::SignedHead>, NodeError> {
        request(&self.net, NetCommand::GetHead).await
    }

    /// Peers this node has banned and still remembers.
    pub async fn banned_peers(&self) -> Result<Vec<PeerId>, NodeError> {
        request(&self.net, NetCommand::Banned).await
    }

    /// The peer table: every peer this node has known, online or not.
    pub async fn peers(&self) -> Result<Vec<PeerSummary>, NodeError> {
        request(&self.net, NetCommand::PeerTable).await
    }

    /// Everything `treecast status` shows about this node.
    pub async fn report(&self) -> Result<report::StatusReport, NodeError> {
        self.reporter.report().await
    }

    /// Where Prometheus metrics are served (with `NodeConfig::metrics`).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Say goodbye to peers, stop every task and wait for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Send a command carrying a reply channel and wait for the reply; a closed channel on either
/// side means the node has shut down.
async fn request<C, T>(
    tx: &mpsc::Sender<C>,
    command: impl FnOnce(oneshot::Sender<T>) -> C,
) -> Result<T, NodeError> {
    let (reply, rx) = oneshot::channel();
    tx.send(command(reply))
        .await
        .map_err(|_| NodeError::Closed)?;
    rx.await.map_err(|_| NodeError::Closed)
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Pieces shared by publisher and subscriber start-up.
pub(crate) struct Started {
    pub net: mpsc::Sender<NetCommand>,
    pub events: mpsc::Receiver<control::PeerEvent>,
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub cancel: CancellationToken,
    pub tasks: tokio::task::JoinSet<()>,
}

/// Start what every publisher and subscriber runs beside its engine: the control socket,
/// rate sampling, and metrics when asked for. Returns the metrics address.
pub(crate) async fn start_services(
    config: &NodeConfig,
    reporter: &report::Reporter,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<Option<std::net::SocketAddr>, NodeError> {
    let mut addr = None;
    if let Some(want) = config.metrics {
        let listener = metrics::bind(want).await?;
        addr = listener.local_addr().ok();
        metrics::spawn(tasks, listener, reporter.clone(), cancel.child_token());
    }
    report::spawn(tasks, reporter.clone(), cancel.child_token());
    Ok(addr)
}

/// What a node says about itself in hellos.
#[derive(Clone)]
pub(crate) struct LocalInfo {
    pub node_id: uuid::Uuid,
    pub swarm_id: uuid::Uuid,
    pub role: Role,
    /// Addresses we listen on, told to peers in the hello (filled in once listening).
    pub addrs: Vec<Multiaddr>,
    /// The swarm's publisher key, naming its head record in the DHT.
    pub publisher: Option<[u8; 32]>,
}

/// The revision a node holds: its verified head, manifest and manifest blobs, and the read
/// checks of its files' chunks.
#[derive(Clone)]
pub(crate) struct Applied {
    pub head: crate::trust::VerifiedHead,
    pub manifest: crate::tree::Manifest,
    pub blobs: Vec<(crate::tree::ContentHash, Vec<u8>)>,
    pub checks: std::sync::Arc<serve::FileChecks>,
}

impl Applied {
    pub fn serve_index(&self, dir: &std::path::Path) -> serve::ServeIndex {
        serve::ServeIndex::build(
            dir.to_owned(),
            self.head.signed().clone(),
            &self.manifest,
            self.blobs.clone(),
            &self.checks,
        )
    }
}

/// Rebuild the applied revision from the state database, checking signature and hashes again.
/// A stored revision that cannot be read is an error naming the database file, so the node
/// refuses to start rather than guess. `checks` are the read checks of its files, from the
/// file index (the caller holds it, or passes none when it will not serve the revision).
pub(crate) fn load_applied(
    db: &crate::store::Db,
    stored: &crate::store::StoredState,
    lineage: &crate::trust::Lineage,
    swarm_id: uuid::Uuid,
    checks: serve::FileChecks,
) -> Result<Option<Applied>, NodeError> {
    let Some(bytes) = &stored.head else {
        return Ok(None);
    };
    let head = lineage.verify(crate::trust::SignedHead::decode(bytes)?, swarm_id)?;
    let (file, revision) = (db.path().display(), head.revision());
    let corrupt = |what: &str| StoreError::Corrupt(format!("{file}: revision {revision}: {what}"));
    let body = head.body();
    let index_bytes = db
        .blob(&body.manifest_index_hash)?
        .ok_or_else(|| corrupt("manifest index missing"))?;
    let index: Vec<crate::tree::ChunkRef> =
        postcard::from_bytes(&index_bytes).map_err(|_| corrupt("manifest index unreadable"))?;
    let mut bytes = Vec::with_capacity(body.manifest_size as usize);
    let mut blobs = vec![(body.manifest_index_hash, index_bytes)];
    for c in &index {
        let b = db
            .blob(&c.hash)?
            .ok_or_else(|| corrupt("manifest chunk missing"))?;
        bytes.extend_from_slice(&b);
        blobs.push((c.hash, b));
    }
    if crate::tree::ContentHash::of(&bytes) != body.manifest_hash {
        return Err(corrupt("manifest hash mismatch").into());
    }
    // Signed, and the bytes the signature names, yet unreadable: written by a newer treecast
    // (another manifest format) or by a test playing a compromised publisher. Never taken for
    // an empty tree: the publisher's guard against publishing a much smaller one compares with
    // it, and a subscriber applies the next revision over it.
    let manifest = crate::tree::Manifest::decode(&bytes)
        .map_err(|e| corrupt(&format!("its manifest cannot be read ({e})")))?;
    Ok(Some(Applied {
        head,
        manifest,
        blobs,
        checks: std::sync::Arc::new(checks),
    }))
}

/// Open the state database of the tree at `dir`, saying so clearly when a node holds it.
pub(crate) fn open_db(dir: &std::path::Path) -> Result<crate::store::Db, NodeError> {
    let db_path = dir.join(crate::config::STATE_DIR).join("state.redb");
    if !db_path.exists() {
        return Err(NodeError::Refused(format!(
            "{} has no treecast state (no {})",
            dir.display(),
            db_path.display()
        )));
    }
    crate::store::Db::open(&db_path).map_err(|e| match e {
        StoreError::Db(e) if matches!(*e, redb::Error::DatabaseAlreadyOpen) => {
            NodeError::Refused(format!(
                "a treecast node is running on {}: its state database is locked (stop it first)",
                dir.display()
            ))
        }
        other => other.into(),
    })
}

/// Rehash `dir` against the revision its state database says it holds.
pub fn verify_dir(dir: &std::path::Path) -> Result<(u64, crate::store::VerifyReport), NodeError> {
    let db = open_db(dir)?;
    verify_with(&db, dir)
}

fn verify_with(
    db: &crate::store::Db,
    dir: &std::path::Path,
) -> Result<(u64, crate::store::VerifyReport), NodeError> {
    let stored = db.state()?;
    if let Some(revision) = stored.applying {
        return Err(NodeError::Refused(format!(
            "the node stopped while it put revision {revision} in place: the mirror holds whole \
             files of it beside older ones, and the node finishes the switch when it runs again"
        )));
    }
    let Some((swarm, lineage)) = stored.lineage() else {
        return Err(NodeError::Refused(
            "no swarm recorded in the state database".into(),
        ));
    };
    let applied = load_applied(db, &stored, &lineage, swarm, Default::default())?
        .ok_or_else(|| NodeError::Refused("no revision has been applied yet".into()))?;
    let report = crate::store::verify_tree(dir, &applied.manifest)?;
    Ok((applied.head.revision(), report))
}
