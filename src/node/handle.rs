//! The handles a caller holds on a running node ([`NodeHandle`], [`DhtNodeHandle`]), and the
//! start-up pieces publisher and subscriber share.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::applied::verify_with;
use super::error::NodeError;
use super::events::EventReceiver;
use super::http::{self, Routes};
use super::report;
use super::status::{Stats, StatsSnapshot, Status};
use super::swarm_handle::{request, NetHandle, PeerSummary};
use crate::config::NodeConfig;
use crate::net::streams::Stream;
use crate::trust::Ticket;

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
    pub(crate) net: NetHandle,
    pub(crate) publisher: Option<mpsc::Sender<PublisherCommand>>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: tokio::task::JoinSet<()>,
    pub(crate) peer_id: PeerId,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    pub(crate) ticket: Ticket,
    pub(crate) db: Arc<crate::store::Db>,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) reporter: report::Reporter,
    pub(crate) served: Served,
}

/// Where a node serves HTTP.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Served {
    pub metrics: Option<std::net::SocketAddr>,
    pub http: Option<std::net::SocketAddr>,
}

/// Handle to a DHT-only node.
pub struct DhtNodeHandle {
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: tokio::task::JoinSet<()>,
    pub(crate) peer_id: PeerId,
    pub(crate) listen_addrs: Vec<Multiaddr>,
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
        self.net.dial(addr).await
    }

    /// Open a raw stream of `protocol` to a connected peer, bypassing our protocol code.
    /// Exists so tests can play a hostile peer.
    pub async fn danger_open_stream(
        &self,
        peer: PeerId,
        protocol: &'static str,
    ) -> Result<Stream, NodeError> {
        let opened = self
            .net
            .open_stream(peer, StreamProtocol::new(protocol))
            .await?;
        let opened = opened.await.map_err(|_| NodeError::Closed)?;
        opened.map_err(|e| NodeError::Refused(e.to_string()))
    }

    /// Store a raw record in the DHT, unchecked. Exists so tests can try to plant forged or
    /// stale head records.
    pub async fn danger_put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NodeError> {
        self.net.danger_put_record(key, value).await
    }

    /// Look up this swarm's head record in the DHT; the newest valid one found, if any.
    pub async fn dht_head(&self) -> Result<Option<crate::trust::SignedHead>, NodeError> {
        self.net.head().await
    }

    /// Peers this node has banned and still remembers.
    pub async fn banned_peers(&self) -> Result<Vec<PeerId>, NodeError> {
        self.net.banned().await
    }

    /// The peer table: every peer this node has known, online or not.
    pub async fn peers(&self) -> Result<Vec<PeerSummary>, NodeError> {
        self.net.peer_table().await
    }

    /// Everything `treecast status` shows about this node.
    pub async fn report(&self) -> Result<report::StatusReport, NodeError> {
        self.reporter.report().await
    }

    /// Where Prometheus metrics are served (with `NodeConfig::metrics`).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.served.metrics
    }

    /// Where the web dashboard, `/api/status` and `/metrics` are served (with
    /// `NodeConfig::http`).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.served.http
    }

    /// Say goodbye to peers, stop every task and wait for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Pieces shared by publisher and subscriber start-up.
pub(crate) struct Started {
    pub net: NetHandle,
    pub events: EventReceiver,
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub cancel: CancellationToken,
    pub tasks: tokio::task::JoinSet<()>,
}

/// Start what every publisher and subscriber runs beside its engine: the control socket,
/// live reports and rate sampling, and metrics and the dashboard when asked for. Returns where
/// they are served.
pub(crate) async fn start_services(
    config: &NodeConfig,
    reporter: &report::Reporter,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) -> Result<Served, NodeError> {
    let mut served = Served::default();
    let mut listeners = Vec::new();
    if let Some(want) = config.http {
        http::check_token(want, config.http_token.as_deref())?;
        let listener = http::bind(want, Routes::Dashboard).await?;
        served.http = listener.local_addr().ok();
        listeners.push((listener, Routes::Dashboard, config.http_token.clone()));
    }
    if let Some(want) = config.metrics {
        let listener = http::bind(want, Routes::MetricsOnly).await?;
        served.metrics = listener.local_addr().ok();
        listeners.push((listener, Routes::MetricsOnly, None));
    }
    for (listener, routes, token) in listeners {
        let cancel = cancel.child_token();
        http::spawn(tasks, listener, routes, token, reporter.clone(), cancel);
    }
    report::spawn(tasks, reporter.clone(), cancel.child_token());
    Ok(served)
}
