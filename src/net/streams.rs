//! A small `NetworkBehaviour` that hands our protocols' streams to the application.
//!
//! Replaces libp2p-stream, which silently drops inbound streams when its one-slot queue is
//! full. Here every negotiated inbound stream becomes a swarm event (the swarm's event queue is
//! polled by our one loop, so nothing is dropped), and outbound streams are requested with a
//! oneshot for the result. Pending outbound requests per connection are bounded.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use futures::future::{ready, Ready};
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{transport::PortUse, Endpoint};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

/// Most outbound stream requests queued on one connection.
const MAX_PENDING_OPENS: usize = 32;

/// Why an outbound stream could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    #[error("not connected to the peer")]
    NotConnected,
    #[error("the peer does not support {0}")]
    Unsupported(StreamProtocol),
    #[error("too many stream requests pending")]
    Busy,
    #[error("stream negotiation failed: {0}")]
    Failed(String),
}

/// Events to the swarm owner.
#[derive(Debug)]
pub enum Event {
    /// A peer opened one of our protocols.
    Inbound {
        peer: PeerId,
        /// The connection the stream arrived on.
        connection: ConnectionId,
        protocol: StreamProtocol,
        stream: Stream,
    },
}

/// A request to open a stream, carrying where to send the result.
pub struct OpenRequest {
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, OpenError>>,
}

impl fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenRequest({})", self.protocol)
    }
}

/// The behaviour.
pub struct Behaviour {
    protocols: Vec<StreamProtocol>,
    /// Open connections per peer, whether each goes through a relay, and its remote address.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool, Multiaddr)>>,
    events: VecDeque<ToSwarm<Event, OpenRequest>>,
}

impl Behaviour {
    pub fn new(protocols: Vec<StreamProtocol>) -> Self {
        Behaviour {
            protocols,
            connections: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Open a stream of `protocol` to `peer` on an existing connection.
    pub fn open_stream(
        &mut self,
        peer: PeerId,
        protocol: StreamProtocol,
        reply: oneshot::Sender<Result<Stream, OpenError>>,
    ) {
        // Direct connections first: a relay carries our streams only when there is no other
        // path.
        let conns = self.connections.get(&peer);
        let best = conns.and_then(|c| c.iter().find(|(_, relayed, _)| !relayed).or(c.first()));
        let Some((conn, _, _)) = best else {
            let _ = reply.send(Err(OpenError::NotConnected));
            return;
        };
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(*conn),
            event: OpenRequest { protocol, reply },
        });
    }

    /// The relayed connections open to `peer`.
    pub fn relayed_connections(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.connections
            .get(peer)
            .map(|c| {
                c.iter()
                    .filter(|(_, r, _)| *r)
                    .map(|(id, _, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The connection our streams to `peer` use (a direct one if there is one): whether it is
    /// relayed, and its remote address. None when not connected.
    pub fn link(&self, peer: &PeerId) -> Option<(bool, &Multiaddr)> {
        let conns = self.connections.get(peer)?;
        let best = conns.iter().find(|(_, r, _)| !r).or(conns.first())?;
        Some((best.1, &best.2))
    }

    fn handler(&self) -> Handler {
        Handler {
            protocols: self.protocols.clone(),
            pending: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let relayed = crate::net::is_relayed_endpoint(e.endpoint);
                self.connections.entry(e.peer_id).or_default().push((
                    e.connection_id,
                    relayed,
                    e.endpoint.get_remote_address().clone(),
                ));
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(list) = self.connections.get_mut(&e.peer_id) {
                    list.retain(|(c, _, _)| *c != e.connection_id);
                    if list.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let (protocol, stream) = event;
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::Inbound {
                peer,
                connection,
                protocol,
                stream,
            }));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        }
    }
}

/// The per-connection handler.
pub struct Handler {
    protocols: Vec<StreamProtocol>,
    pending: VecDeque<OpenRequest>,
    events: VecDeque<(StreamProtocol, Stream)>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenRequest;
    type ToBehaviour = (StreamProtocol, Stream);
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = oneshot::Sender<Result<Stream, OpenError>>;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade(self.protocols.clone()), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.pending.is_empty()
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Self::OutboundOpenInfo, Self::ToBehaviour>> {
        if let Some(ev) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(ev));
        }
        if let Some(req) = self.pending.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(Upgrade(vec![req.protocol]), req.reply),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, req: OpenRequest) {
        if self.pending.len() >= MAX_PENDING_OPENS {
            let _ = req.reply.send(Err(OpenError::Busy));
            return;
        }
        self.pending.push_back(req);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Upgrade, Upgrade, (), Self::OutboundOpenInfo>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, proto),
                ..
            }) => self.events.push_back((proto, stream)),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info,
            }) => {
                let _ = info.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                let err = match error {
                    libp2p::swarm::StreamUpgradeError::NegotiationFailed => {
                        OpenError::Unsupported(StreamProtocol::new("/treecast/?"))
                    }
                    other => OpenError::Failed(other.to_string()),
                };
                let _ = info.send(Err(err));
            }
            _ => {}
        }
    }
}

/// Accepts any of our protocols and yields the raw stream with the protocol chosen.
#[derive(Debug, Clone)]
pub struct Upgrade(Vec<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = Vec<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, info)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, info)))
    }
}
