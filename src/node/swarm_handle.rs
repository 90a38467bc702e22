//! The typed handle through which engines, sessions and chunk tasks reach the swarm task, and
//! what the swarm task answers with (the peer table, the report for `status`).
//!
//! The swarm task never waits on anyone who holds this handle (it hands events on through
//! [`super::events`], which never blocks), so awaiting a command here cannot close a cycle of
//! full channels. Commands that only inform (`broadcast`, `send_to`, `put_head`) never wait: when the
//! swarm task is that far behind they are dropped, and the caller says so in its log.
//!
//! A leaf: it imports nothing from the node's other modules but [`super::events`] and
//! [`super::error`].

use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use super::error::NodeError;
use super::events::PeerEvent;
use crate::net::streams::{OpenError, Stream};
use crate::trust::SignedHead;
use crate::wire::{ControlMsg, Role};

/// Commands to the swarm task.
pub(crate) enum NetCommand {
    Dial(Multiaddr),
    OpenStream {
        peer: PeerId,
        protocol: StreamProtocol,
        reply: oneshot::Sender<Result<Stream, OpenError>>,
    },
    Broadcast(ControlMsg),
    /// Tell one session's peer `msg`.
    SendTo {
        peer: PeerId,
        msg: ControlMsg,
    },
    Ban {
        peer: PeerId,
        reason: String,
    },
    Disconnect(PeerId),
    Banned(oneshot::Sender<Vec<PeerId>>),
    PeerTable(oneshot::Sender<Vec<PeerSummary>>),
    /// Peer table, reachability and addresses for `status`.
    Report(oneshot::Sender<NetReport>),
    /// Store the head in the DHT.
    PutHead(SignedHead),
    /// Look up the swarm's head record.
    GetHead(oneshot::Sender<Option<SignedHead>>),
    DangerPutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// From a session: what its peer said.
    Peer(PeerEvent),
    /// A control stream opened (by us or the peer) to run a session on.
    ControlStream {
        peer: PeerId,
        stream: Stream,
        ours: bool,
    },
    SessionEnded {
        peer: PeerId,
        session: u64,
    },
    /// Opening a control stream of ours to `peer` failed (see `Opening`).
    ControlOpenFailed {
        peer: PeerId,
    },
}

/// One row of the peer table, as `NodeHandle::peers` reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerSummary {
    pub peer: String,
    pub node_id: Option<uuid::Uuid>,
    pub role: Option<String>,
    pub addrs: Vec<String>,
    /// Newest revision the peer said it holds (as told; heads are verified by the engine).
    pub revision: Option<u64>,
    pub online: bool,
    pub banned: bool,
    pub last_seen_unix_ms: u64,
    pub rtt_ms: Option<f64>,
    /// The connection chunk streams use, when connected: its remote address and whether it
    /// goes through a relay.
    pub address: Option<String>,
    pub relayed: Option<bool>,
}

/// What the swarm task reports for `status`.
#[derive(Debug, Clone)]
pub(crate) struct NetReport {
    pub peers: Vec<PeerSummary>,
    /// public, nated, relayed or unknown.
    pub reachability: &'static str,
    /// Addresses told to peers (listen, external, relayed).
    pub addrs: Vec<String>,
    /// The public DHT (Amino), when on.
    pub public_dht: Option<PublicDhtReport>,
}

/// What the swarm task knows of the public DHT (Amino).
#[derive(Debug, Clone)]
pub(crate) struct PublicDhtReport {
    /// Peers in its routing table.
    pub routing_peers: usize,
    /// Serving it (AutoNAT says public) rather than a client.
    pub server: bool,
    /// When an announcement of the swarm last reached a node of it.
    pub last_announce: Option<std::time::SystemTime>,
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

/// A cloneable handle to the swarm task. A closed channel means the node shut down.
#[derive(Clone)]
pub(crate) struct NetHandle(mpsc::Sender<NetCommand>);

impl NetHandle {
    pub fn new(tx: mpsc::Sender<NetCommand>) -> Self {
        NetHandle(tx)
    }

    async fn send(&self, cmd: NetCommand) -> Result<(), NodeError> {
        self.0.send(cmd).await.map_err(|_| NodeError::Closed)
    }

    /// Queue `cmd` unless the swarm task is far behind; false if it was dropped.
    fn offer(&self, cmd: NetCommand) -> bool {
        self.0.try_send(cmd).is_ok()
    }

    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.send(NetCommand::Dial(addr)).await
    }

    /// Open a stream of `protocol` to a connected peer.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<oneshot::Receiver<Result<Stream, OpenError>>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(NetCommand::OpenStream {
            peer,
            protocol,
            reply,
        })
        .await?;
        Ok(rx)
    }

    /// Ban `peer`: close its connections and refuse it for `BAN_DURATION`.
    pub async fn ban(&self, peer: PeerId, reason: impl Into<String>) {
        let reason = reason.into();
        let _ = self.send(NetCommand::Ban { peer, reason }).await;
    }

    /// [`Self::ban`] from code that cannot wait; false if the swarm task was too far behind.
    pub fn try_ban(&self, peer: PeerId, reason: impl Into<String>) -> bool {
        let reason = reason.into();
        self.offer(NetCommand::Ban { peer, reason })
    }

    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.send(NetCommand::Disconnect(peer)).await;
    }

    /// Tell every session's peer `msg`; false if it was dropped.
    pub fn broadcast(&self, msg: ControlMsg) -> bool {
        self.offer(NetCommand::Broadcast(msg))
    }

    /// Tell `peer` `msg`, if it is in session; false if it was dropped.
    pub fn send_to(&self, peer: PeerId, msg: ControlMsg) -> bool {
        self.offer(NetCommand::SendTo { peer, msg })
    }

    /// Store `head` in the DHT; false if it was dropped.
    pub fn put_head(&self, head: SignedHead) -> bool {
        self.offer(NetCommand::PutHead(head))
    }

    pub async fn danger_put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NodeError> {
        self.send(NetCommand::DangerPutRecord { key, value }).await
    }

    /// The newest valid head record the DHT holds for this swarm.
    pub async fn head(&self) -> Result<Option<SignedHead>, NodeError> {
        self.request(NetCommand::GetHead).await
    }

    pub async fn banned(&self) -> Result<Vec<PeerId>, NodeError> {
        self.request(NetCommand::Banned).await
    }

    pub async fn peer_table(&self) -> Result<Vec<PeerSummary>, NodeError> {
        self.request(NetCommand::PeerTable).await
    }

    pub async fn report(&self) -> Result<NetReport, NodeError> {
        self.request(NetCommand::Report).await
    }

    /// From a session: what its peer said. False once the node shuts down.
    pub async fn peer_event(&self, ev: PeerEvent) -> bool {
        self.send(NetCommand::Peer(ev)).await.is_ok()
    }

    pub async fn control_stream(&self, peer: PeerId, stream: Stream, ours: bool) {
        let _ = self
            .send(NetCommand::ControlStream { peer, stream, ours })
            .await;
    }

    pub async fn control_open_failed(&self, peer: PeerId) {
        let _ = self.send(NetCommand::ControlOpenFailed { peer }).await;
    }

    pub async fn session_ended(&self, peer: PeerId, session: u64) {
        let _ = self.send(NetCommand::SessionEnded { peer, session }).await;
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> NetCommand,
    ) -> Result<T, NodeError> {
        request(&self.0, command).await
    }
}

/// Send a command carrying a reply channel and wait for the reply; a closed channel on either
/// side means the node has shut down.
pub(crate) async fn request<C, T>(
    tx: &mpsc::Sender<C>,
    command: impl FnOnce(oneshot::Sender<T>) -> C,
) -> Result<T, NodeError> {
    let (reply, rx) = oneshot::channel();
    tx.send(command(reply))
        .await
        .map_err(|_| NodeError::Closed)?;
    rx.await.map_err(|_| NodeError::Closed)
}
