//! The one event loop that owns the libp2p swarm: connections, sessions, bans, stream routing.
//!
//! `select! { biased; cancel, commands, swarm events }`; per-peer work runs in child tasks in a
//! `JoinSet` under a child cancellation token, and is joined (with a grace period) on shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::streams::Stream;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::chunks;
use super::control::{self, SessionCtx};
use super::error::NodeError;
use super::events::{self, EventSender, PeerEvent};
use super::handle::Started;
use super::peer_book::PeerBook;
use super::serve::Content;
use super::status::Stats;
use super::swarm_handle::{LocalInfo, NetCommand, NetHandle, NetReport, PeerSummary};
use crate::config::{
    NodeConfig, MAX_INBOUND_CHUNK_STREAMS, MAX_PEERS, PEX_RELAYS_PER_DIAL, STARVED_AFTER,
    STREAM_OPEN_TIMEOUT,
};
use crate::net::streams;
use crate::net::{
    build_swarm, is_relayed, Behaviour, BehaviourEvent, NetError, SwarmOptions, KAD_PROTOCOL,
};
use crate::swarm::{
    Answer, AutoNat, Dial, Discovery, DiscoveryAction, DiscoveryConfig, Gone, HeadLookups, Learned,
    Nat, NatConfig, NewHead, Newcomers, Open, Opening, PexDials, Reserve, SeedPolicy, Seen,
    SessionTable, View,
};
use crate::trust::SignedHead;
use crate::wire::{
    ControlMsg, PeerInfo, Role, CHUNKS_PROTOCOL, CONTROL_PROTOCOL, MAX_ADDRS_PER_PEER,
    MAX_PEERS_PER_MSG,
};

fn parse_addrs(raw: &[Vec<u8>]) -> Vec<Multiaddr> {
    let addrs = raw
        .iter()
        .take(MAX_ADDRS_PER_PEER)
        .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
        .collect();
    public_first(addrs)
}

/// Grace period for goodbyes and in-flight replies at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
struct PeerRecord {
    addrs: Vec<Multiaddr>,
    node_id: Option<uuid::Uuid>,
    role: Option<Role>,
    revision: Option<u64>,
    online: bool,
    last_seen: std::time::SystemTime,
    rtt: Option<Duration>,
}

impl PeerRecord {
    fn new() -> Self {
        PeerRecord {
            addrs: Vec::new(),
            node_id: None,
            role: None,
            revision: None,
            online: false,
            last_seen: std::time::SystemTime::now(),
            rtt: None,
        }
    }
}

/// Most peers remembered in the table (offline ones are forgotten first).
const MAX_KNOWN_PEERS: usize = 1024;

/// A swarm peer lost within this long is dialled again through a relay that takes us back.
const REJOIN_WITHIN: Duration = Duration::from_secs(600);

/// Most peers dialled again at once when a relay takes us back.
const REJOIN_MAX: usize = 8;

/// The swarm peers to dial again when a relay takes us back (our reservation there was
/// accepted after we had none): those we had a session with (a role is known) that went
/// offline within `REJOIN_WITHIN` of `now` and are not connected, most recently seen first, at
/// most `room`. Behind NATs that let through nothing but the relay, those peers were reachable
/// only there, and neither side's discovery would look for the other before its next refresh.
fn rejoin_candidates(
    table: &HashMap<PeerId, PeerRecord>,
    now: std::time::SystemTime,
    connected: impl Fn(&PeerId) -> bool,
    room: usize,
) -> Vec<PeerId> {
    let recent = |r: &PeerRecord| {
        now.duration_since(r.last_seen)
            .map_or(true, |d| d < REJOIN_WITHIN)
    };
    let mut lost: Vec<(&PeerId, &PeerRecord)> = table
        .iter()
        .filter(|(p, r)| r.role.is_some() && !r.online && recent(r) && !connected(p))
        .collect();
    lost.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(b.0)));
    lost.into_iter()
        .take(room.min(REJOIN_MAX))
        .map(|(p, _)| *p)
        .collect()
}

/// The swarm task's handle on a running session.
struct Session {
    out: mpsc::Sender<ControlMsg>,
    cancel: CancellationToken,
}

struct NetLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<NetCommand>,
    /// Our own handle, for the tasks we spawn.
    handle: NetHandle,
    /// To the engine: never waits (see [`events`]).
    events: EventSender,
    local: LocalInfo,
    content: Content,
    stats: Arc<Stats>,
    version: u32,
    corrupt: bool,
    cancel: CancellationToken,
    /// The live session of each peer, who holds the session slots (whom a newcomer may push
    /// out), and which sessions the engine heard are up.
    sessions: SessionTable<PeerId, Session>,
    /// Control streams being opened, one per peer at a time (see [`Opening`]).
    opening: Opening<PeerId>,
    /// Bans, dialed addresses and known relays (bounded; swept every `PRUNE_EVERY`).
    book: PeerBook,
    /// The provider records of other nodes in the DHT store.
    providers: crate::net::ProviderBook,
    next_prune: tokio::time::Instant,
    /// Chunk streams a peer has open on each connection (an entry goes with its connection,
    /// or at the next sweep once its count is back to zero).
    inbound_chunk_streams: HashMap<(PeerId, libp2p::swarm::ConnectionId), Arc<AtomicUsize>>,
    tasks: JoinSet<()>,
    table: HashMap<PeerId, PeerRecord>,
    max_peers: usize,
    upload: Option<super::chunks::Limiter>,
    /// The upload budget every chunk stream we serve shares.
    budget: Option<super::chunks::Budget>,
    seed: Option<Arc<std::sync::Mutex<SeedPolicy<PeerId>>>>,
    /// When to look in the DHT, provide, redial bootstrap peers; which found peers to dial.
    discovery: Discovery<PeerId, Multiaddr>,
    /// The swarm's DHT key (None for a DHT-only node).
    swarm_key: Option<libp2p::kad::RecordKey>,
    head_key: Option<libp2p::kad::RecordKey>,
    /// The public DHT (Amino), when on.
    amino: Option<Amino>,
    /// Head lookups under way: who asked (None: our own periodic lookup) and the best found.
    head_lookups:
        HeadLookups<libp2p::kad::QueryId, SignedHead, oneshot::Sender<Option<SignedHead>>>,
    peers_file: std::path::PathBuf,
    next_save: tokio::time::Instant,
    next_exchange: tokio::time::Instant,
    /// When we last dialed each peer ourselves (not the DHT).
    our_dials: HashMap<PeerId, Instant>,
    /// Which peers learned by peer exchange to dial, and at which addresses.
    pex: PexDials<PeerId, Multiaddr>,
    /// New session peers not yet announced to the other sessions.
    newcomers: Newcomers<PeerId>,
    /// Relay reservations, reachability, relayed connections giving way to direct ones (the
    /// relays themselves are in `book`).
    nat: Nat<PeerId, libp2p::core::transport::ListenerId>,
    /// A download is under way and no session fed it for `STARVED_AFTER` (as of the last
    /// discovery tick): discovery redials and looks up as if we had no peer, and our dial
    /// target does not hold (see `SessionTable::starved_room`).
    starved: bool,
}

/// This node in the public DHT (Amino): what it announces and when, and the provider records
/// it holds for others (in server mode).
struct Amino {
    /// The swarm's Amino key (None for a DHT-only node).
    key: Option<libp2p::kad::RecordKey>,
    announcer: crate::net::Announcer,
    providers: crate::net::ProviderBook,
}

/// How often every session is told again who else we are connected to, so a dial that
/// failed once is retried and peers that joined elsewhere are learnt.
const PEER_EXCHANGE_EVERY: Duration = Duration::from_secs(15);
/// New sessions are announced to the others together, at most this often (see `Newcomers`).
const ANNOUNCE_NEWCOMERS_EVERY: Duration = Duration::from_millis(500);
/// How often the peer table is saved for the next start.
const SAVE_PEERS_EVERY: Duration = Duration::from_secs(60);
/// How often per-peer state that ran out is dropped: a ban ends (its peer may connect again)
/// at the first sweep after `BAN_DURATION`.
const PRUNE_EVERY: Duration = Duration::from_secs(5);
/// Most peers saved.
const MAX_SAVED_PEERS: usize = 64;

/// Least time between two dials of ours to one peer (see `may_try`).
const REDIAL_MIN: Duration = Duration::from_secs(2);

/// Build the swarm, listen, dial bootstrap peers and spawn the loop.
pub(crate) async fn start(
    config: &NodeConfig,
    key: libp2p::identity::Keypair,
    local: LocalInfo,
    content: Content,
    stats: Arc<Stats>,
) -> Result<Started, NodeError> {
    let wire = crate::net::WireCounter::default();
    let opts = SwarmOptions {
        mdns: config.mdns,
        upnp: config.upnp,
        relay_circuit_bytes: config.relay_circuit_bytes,
        public_dht: config.public_dht.is_some(),
        wire: wire.clone(),
    };
    let mut swarm = build_swarm(key, opts)?;
    let peer_id = *swarm.local_peer_id();
    for addr in &config.listen {
        listen(&mut swarm, addr).await?;
    }
    // Only a listener on an unspecified address (0.0.0.0, ::) reports several addresses.
    let unspecified = config
        .listen
        .iter()
        .any(|a| crate::net::ip_of(a).is_some_and(|ip| ip.is_unspecified()));
    let (listen_addrs, early_events) =
        wait_listening(&mut swarm, config.listen.len(), unspecified).await?;
    grow_socket_buffers(&listen_addrs);
    for addr in &config.external {
        swarm.add_external_address(addr.clone());
    }
    let mut local = local;
    local.addrs = public_first(
        config
            .external
            .iter()
            .chain(listen_addrs.iter())
            .cloned()
            .collect(),
    );
    let is_publisher = local.role == Role::Publisher;
    let swarm_id = local.swarm_id;
    let publisher = local.publisher;
    if let Some(bootstrap) = &config.public_dht {
        join_public_dht(&mut swarm, &config.listen, bootstrap)?;
    }
    dial_saved_peers(&mut swarm, &config.state_dir().join("peers"));
    for addr in &config.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap address");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = events::queue();
    let cancel = CancellationToken::new();
    let net = NetLoop {
        swarm,
        commands: cmd_rx,
        handle: NetHandle::new(cmd_tx.clone()),
        events: ev_tx,
        local,
        content,
        stats,
        version: config.protocol_version,
        corrupt: config.danger_corrupt_served_chunks,
        cancel: cancel.child_token(),
        sessions: SessionTable::new(
            peer_id,
            config.max_peers.clamp(1, MAX_PEERS),
            config.session_idle,
        ),
        opening: Opening::new(STREAM_OPEN_TIMEOUT),
        book: PeerBook::default(),
        providers: crate::net::ProviderBook::default(),
        next_prune: tokio::time::Instant::now() + PRUNE_EVERY,
        inbound_chunk_streams: HashMap::new(),
        tasks: JoinSet::new(),
        table: HashMap::new(),
        max_peers: config.max_peers.clamp(1, MAX_PEERS),
        upload: config.max_upload.map(super::chunks::limiter),
        budget: super::chunks::budget(config.upload_budget, wire),
        seed: (is_publisher).then(|| {
            Arc::new(std::sync::Mutex::new(SeedPolicy::new(
                crate::config::SEED_HOLD,
                crate::config::SEED_HOLD_UNLISTED,
            )))
        }),
        discovery: Discovery::new(
            DiscoveryConfig {
                local: peer_id,
                bootstrap: config.bootstrap.clone(),
                swarm_key: !swarm_id.is_nil(),
                head_key: publisher.is_some(),
                timings: Default::default(),
            },
            Instant::now(),
        ),
        swarm_key: (!swarm_id.is_nil()).then(|| crate::net::swarm_key(&swarm_id)),
        head_key: publisher.map(|k| crate::net::head_key(&swarm_id, &k)),
        amino: config.public_dht.as_ref().map(|_| Amino {
            key: (!swarm_id.is_nil()).then(|| crate::net::amino_key(&swarm_id)),
            announcer: Default::default(),
            providers: Default::default(),
        }),
        head_lookups: HeadLookups::default(),
        peers_file: config.state_dir().join("peers"),
        next_save: tokio::time::Instant::now() + SAVE_PEERS_EVERY,
        next_exchange: tokio::time::Instant::now() + PEER_EXCHANGE_EVERY,
        our_dials: HashMap::new(),
        pex: PexDials::new(Default::default(), Instant::now()),
        newcomers: Newcomers::new(ANNOUNCE_NEWCOMERS_EVERY),
        starved: false,
        nat: Nat::new(
            NatConfig {
                relay_server: config.relay_circuit_bytes.is_some(),
                ..Default::default()
            },
            Instant::now(),
        ),
    };
    let mut tasks = JoinSet::new();
    tasks.spawn(net.run(early_events));
    Ok(Started {
        net: NetHandle::new(cmd_tx),
        events: ev_rx,
        peer_id,
        listen_addrs: listen_addrs
            .into_iter()
            .map(|a| a.with_p2p(peer_id).expect("no peer id yet"))
            .collect(),
        cancel,
        tasks,
    })
}

/// Listen on `addr`, retrying for a few seconds while the port is still held (a restart on the
/// same port: the old QUIC endpoint drains its connections before it lets the socket go).
async fn listen(swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) -> Result<(), NodeError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                debug!(%addr, error = ?e, "cannot listen yet; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(NetError::Listen {
                    addr: addr.clone(),
                    reason: format!("{e:?}"),
                }
                .into());
            }
        }
    }
}

/// Join the public DHT: listen on TCP beside each QUIC address (its nodes may speak only TCP;
/// the same port when one was given), and bootstrap from `bootstrap`.
fn join_public_dht(
    swarm: &mut Swarm<Behaviour>,
    listen: &[Multiaddr],
    bootstrap: &[Multiaddr],
) -> Result<(), NodeError> {
    for addr in listen {
        let Some(tcp) = tcp_beside(addr) else {
            continue;
        };
        let any_port = tcp.replace(1, |_| Some(Protocol::Tcp(0)));
        if let Err(e) = swarm.listen_on(tcp.clone()) {
            debug!(%tcp, error = ?e, "TCP port taken; listening on another");
            if let Some(any) = any_port {
                let _ = swarm
                    .listen_on(any)
                    .map_err(|e| warn!(error = ?e, "cannot listen on TCP"));
            }
        }
    }
    let Some(amino) = swarm.behaviour_mut().amino.as_mut() else {
        return Ok(());
    };
    for addr in bootstrap {
        let (peer, addr) = crate::net::bootstrap_peer(addr)?;
        amino.add_address(&peer, addr);
    }
    if let Err(e) = amino.bootstrap() {
        warn!(error = %e, "public DHT: no bootstrap peer");
    }
    Ok(())
}

/// The TCP address on the IP and port of a QUIC listen address.
fn tcp_beside(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut it = addr.iter();
    let ip = it.next()?;
    let Some(Protocol::Udp(port)) = it.next() else {
        return None;
    };
    matches!(ip, Protocol::Ip4(_) | Protocol::Ip6(_))
        .then(|| Multiaddr::empty().with(ip).with(Protocol::Tcp(port)))
}

/// Dial the peers saved by the last run, and seed the DHT routing table with them.
fn dial_saved_peers(swarm: &mut Swarm<Behaviour>, path: &std::path::Path) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let Ok(list) = postcard::from_bytes::<Vec<PeerInfo>>(&bytes) else {
        warn!(path = %path.display(), "saved peer table is unreadable; ignoring it");
        return;
    };
    for info in list.into_iter().take(MAX_SAVED_PEERS) {
        let Ok(peer) = PeerId::from_bytes(&info.peer_id) else {
            continue;
        };
        let addrs = parse_addrs(&info.addrs);
        for a in &addrs {
            swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        let _ = swarm.dial(opts);
    }
}

/// Wait until every listener has reported its addresses. Other events that arrive meanwhile
/// (a fast peer may already connect and open streams) are returned to be handled in order.
async fn wait_listening(
    swarm: &mut Swarm<Behaviour>,
    wanted: usize,
    unspecified: bool,
) -> Result<(Vec<Multiaddr>, Vec<SwarmEvent<BehaviourEvent>>), NodeError> {
    let mut early = Vec::new();
    let mut addrs = Vec::new();
    let mut listeners = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // One listener on 0.0.0.0 reports an address per interface: once every listener has
    // reported one, keep collecting briefly for the rest (not at all without such a listener).
    let settle_for = if unspecified {
        Duration::from_millis(200)
    } else {
        Duration::ZERO
    };
    let mut settle: Option<tokio::time::Instant> = None;
    loop {
        let until = settle.unwrap_or(deadline);
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    listeners.insert(listener_id);
                    addrs.push(address);
                    if listeners.len() >= wanted && settle.is_none() {
                        settle = Some(tokio::time::Instant::now() + settle_for);
                    }
                }
                other => match start_failed(&other) {
                    Some(error) => return Err(NodeError::Refused(format!("listening failed: {error}"))),
                    None => early.push(other),
                },
            },
            _ = tokio::time::sleep_until(until) => {
                if settle.is_some() {
                    return Ok((public_first(addrs), early));
                }
                return Err(NodeError::Timeout("listening".into()));
            }
        }
    }
}

/// Why `ev`, seen while the listeners start, ends the start: a listener closed by an error.
/// A listener's error does not: libp2p-quic reports an incoming connection it could not accept
/// that way and goes on listening. A subscriber restarted on its port after SIGKILL got such a
/// connection from a peer of its previous run, and exited ("authentication failed").
fn start_failed(ev: &SwarmEvent<BehaviourEvent>) -> Option<String> {
    match ev {
        SwarmEvent::ListenerClosed {
            reason: Err(error), ..
        } => Some(error.to_string()),
        SwarmEvent::ListenerError { error, .. } => {
            warn!(%error, "an incoming connection failed while listening started");
            None
        }
        _ => None,
    }
}

/// Give the QUIC sockets behind `addrs` larger kernel buffers (see [`crate::net::udp`]).
fn grow_socket_buffers(addrs: &[Multiaddr]) {
    let grown = crate::net::udp::grow_for(addrs);
    for g in &grown {
        debug!(port = g.port, receive_buffer = g.recv, "UDP buffers raised");
    }
    if let Some(g) = grown.iter().find(|g| g.capped) {
        warn!(
            receive_buffer = g.recv,
            "the system caps UDP buffers below what fast transfers need; raise \
             net.core.rmem_max and net.core.wmem_max (e.g. to 8388608) for full speed"
        );
    }
}

/// Sleep until `deadline` (a `std` instant, as the sans-IO machines use).
/// Sleep until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await
}

/// What AutoNAT says, for NAT traversal.
fn auto_nat(status: &libp2p::autonat::NatStatus) -> AutoNat {
    match status {
        libp2p::autonat::NatStatus::Public(_) => AutoNat::Public,
        libp2p::autonat::NatStatus::Private => AutoNat::Private,
        libp2p::autonat::NatStatus::Unknown => AutoNat::Unknown,
    }
}

/// The address of a circuit through `relay`, reached at `addr`.
fn circuit_addr(addr: &Multiaddr, relay: PeerId) -> Multiaddr {
    let mut circuit: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    circuit.push(Protocol::P2p(relay));
    circuit.push(Protocol::P2pCircuit);
    circuit
}

/// Order addresses for others to dial: drop loopback ones when there is anything else (they
/// only reach the dialer itself), and keep the rest in a stable order.
fn public_first(mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let is_loopback = |a: &Multiaddr| crate::net::ip_of(a).is_some_and(|ip| ip.is_loopback());
    if addrs.iter().any(|a| !is_loopback(a)) {
        addrs.retain(|a| !is_loopback(a));
    }
    addrs.sort_by_key(|a| a.to_string());
    addrs.dedup();
    addrs
}

impl NetLoop {
    async fn run(mut self, early_events: Vec<SwarmEvent<BehaviourEvent>>) {
        for ev in early_events {
            self.on_swarm_event(ev);
        }
        loop {
            let amino_due = self.amino_due();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(NetCommand::Peer(ev)) => self.on_peer_event(ev),
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = sleep_until(self.discovery.poll_timeout()) => self.discovery_tick(),
                _ = sleep_until_some(amino_due) => self.amino_tick(),
                _ = sleep_until_some(self.newcomers.due()) => self.announce_newcomers(),
                _ = tokio::time::sleep_until(self.next_save) => {
                    self.save_peers();
                    self.next_save = tokio::time::Instant::now() + SAVE_PEERS_EVERY;
                }
                _ = sleep_until(self.nat.poll_timeout()) => self.nat_tick(),
                _ = tokio::time::sleep_until(self.next_prune) => {
                    self.prune();
                    self.next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
                }
                _ = tokio::time::sleep_until(self.next_exchange) => {
                    self.observe_slots(&self.stats.traffic.snapshot());
                    self.exchange_all();
                    self.next_exchange = tokio::time::Instant::now() + PEER_EXCHANGE_EVERY;
                }
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(mut self) {
        self.save_peers();
        for s in self.sessions.values() {
            s.cancel.cancel();
        }
        let grace = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(grace);
        while !self.tasks.is_empty() {
            tokio::select! {
                _ = self.tasks.join_next() => {}
                _ = self.swarm.select_next_some() => {}
                _ = &mut grace => {
                    debug!("grace period over: aborting remaining peer tasks");
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                }
            }
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    fn on_command(&mut self, cmd: NetCommand) {
        match cmd {
            NetCommand::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    warn!(%addr, error = %e, "dial failed");
                }
            }
            NetCommand::OpenStream {
                peer,
                protocol,
                reply,
            } => self
                .swarm
                .behaviour_mut()
                .streams
                .open_stream(peer, protocol, reply),
            NetCommand::Broadcast(msg) => {
                for (peer, s) in &self.sessions {
                    if s.out.try_send(msg.clone()).is_err() {
                        warn!(%peer, "control queue full: announcement dropped for this peer");
                    }
                }
            }
            NetCommand::SendTo { peer, msg } => {
                let dropped = self
                    .sessions
                    .get(&peer)
                    .is_some_and(|s| s.out.try_send(msg).is_err());
                if dropped {
                    warn!(%peer, "control queue full: message dropped for this peer");
                }
            }
            NetCommand::Ban { peer, reason } => self.ban(peer, &reason),
            NetCommand::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            NetCommand::Banned(reply) => {
                let _ = reply.send(self.book.banned(Instant::now()).collect());
            }
            NetCommand::PeerTable(reply) => {
                let _ = reply.send(self.peer_table());
            }
            NetCommand::Report(reply) => {
                let _ = reply.send(NetReport {
                    peers: self.peer_table(),
                    reachability: self.reachability(),
                    addrs: self.local.addrs.iter().map(|a| a.to_string()).collect(),
                    public_dht: self.public_dht_report(),
                });
            }
            NetCommand::Peer(_) => unreachable!("handled in run"),
            NetCommand::PutHead(head) => {
                let Some(key) = self.head_key.clone() else {
                    return;
                };
                let record = libp2p::kad::Record::new(key, head.encode());
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, libp2p::kad::Quorum::One)
                {
                    warn!(error = %e, "cannot store the head in the DHT");
                }
            }
            NetCommand::GetHead(reply) => self.lookup_head(Some(reply)),
            NetCommand::DangerPutRecord { key, value } => {
                let record = libp2p::kad::Record::new(key, value);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .put_record(record, libp2p::kad::Quorum::One);
            }
            NetCommand::ControlStream { peer, stream, ours } => {
                if ours {
                    self.opening.opened(&peer);
                }
                self.register_session(peer, stream, ours)
            }
            NetCommand::ControlOpenFailed { peer } => {
                if self.opening.failed(&peer)
                    && self.swarm.is_connected(&peer)
                    && !self.sessions.contains_key(&peer)
                {
                    debug!(%peer, "opening the control stream again on the connection left");
                    self.open_control(peer);
                }
            }
            NetCommand::SessionEnded { peer, session } => {
                if let Some(gone) = self.sessions.ended(&peer, session) {
                    self.session_gone(gone);
                }
                if !self.sessions.contains_key(&peer)
                    && self.nat.handle_session_ended(&peer)
                    && self.swarm.is_connected(&peer)
                {
                    debug!(%peer, "reopening the session on the direct connection");
                    self.open_control(peer);
                }
            }
        }
    }

    /// Update the peer table from a session's event, run peer exchange, and pass the event on
    /// to the engine.
    fn on_peer_event(&mut self, ev: PeerEvent) {
        // A session replaced, evicted or banned was told Down when it left the table (if its
        // Up was told): its own late Up or Down must not reach the engine (see
        // `SessionTable`).
        if let PeerEvent::Down { peer, session } = ev {
            return self.peer_down(peer, session);
        }
        if let PeerEvent::Up { peer, session, .. } = &ev {
            if !self.sessions.up(peer, *session) {
                debug!(%peer, session, "up of a session no longer live ignored");
                return;
            }
        }
        match &ev {
            PeerEvent::Up { peer, hello, .. } => {
                let publisher = hello.role == Role::Publisher;
                self.stats.traffic.set_link(*peer, None, Some(publisher));
                let addrs = parse_addrs(&hello.addrs);
                let rec = self.record(*peer);
                rec.online = true;
                rec.last_seen = std::time::SystemTime::now();
                rec.node_id = Some(hello.node_id);
                rec.role = Some(hello.role);
                rec.revision = hello.head.as_ref().map(|h| h.body.revision);
                if !addrs.is_empty() {
                    rec.addrs = addrs;
                }
                self.exchange_peers(*peer);
            }
            PeerEvent::Head { peer, .. } => {
                self.record(*peer).last_seen = std::time::SystemTime::now();
            }
            PeerEvent::Peers { peer, list } => {
                debug!(from = %peer, count = list.len(), "peer exchange");
                let list = list.clone();
                return self.learn_peers(*peer, list);
            }
            PeerEvent::Complete { peer, revision } => {
                let rec = self.record(*peer);
                rec.revision = Some((*revision).max(rec.revision.unwrap_or(0)));
                rec.last_seen = std::time::SystemTime::now();
            }
            PeerEvent::Have { peer, have } => self.seed_evidence(peer, have),
            PeerEvent::HaveSync { .. }
            | PeerEvent::Incompatible { .. }
            | PeerEvent::Down { .. } => {}
        }
        self.tell_engine(ev);
    }

    /// A publisher's seeding policy learns from `peer`'s `Have` which chunks spread. (A
    /// malformed one is only ignored here: the engine bans its sender.)
    fn seed_evidence(&self, peer: &PeerId, have: &crate::wire::Have) {
        let Some(seed) = &self.seed else {
            return;
        };
        let current = self.content.current();
        if current.head.as_ref().map(|h| h.body.revision) != Some(have.revision) {
            return;
        }
        let order = current.chunk_order();
        let Ok(indices) = have.chunks.indices(order.len()) else {
            return;
        };
        let mut seed = seed.lock().unwrap_or_else(|p| p.into_inner());
        seed.have(peer, have.revision, order, &indices, Instant::now());
    }

    fn tell_engine(&self, ev: PeerEvent) {
        if !self.events.push(ev) {
            warn!("the engine is far behind: a peer event was dropped");
        }
    }

    /// Session `session` of `peer` says it is down: passed on if the engine heard it was up
    /// and has not heard it is down.
    fn peer_down(&mut self, peer: PeerId, session: u64) {
        if !self.sessions.down(&peer, session) {
            debug!(%peer, session, "down of a session the engine heard is down, or never up");
            return;
        }
        self.went_down(peer, session);
    }

    /// A session left the table (replaced, evicted, banned or over): end it, and tell the
    /// engine it is down if the engine heard it was up.
    fn session_gone(&mut self, gone: Gone<PeerId, Session>) {
        gone.handle.cancel.cancel();
        if gone.tell_down {
            self.went_down(gone.peer, gone.id);
        }
    }

    /// The peer is offline, and the engine hears that session `session` is down.
    fn went_down(&mut self, peer: PeerId, session: u64) {
        if let Some(seed) = &self.seed {
            seed.lock()
                .unwrap_or_else(|p| p.into_inner())
                .peer_left(&peer);
        }
        let rec = self.record(peer);
        rec.online = false;
        rec.last_seen = std::time::SystemTime::now();
        self.tell_engine(PeerEvent::Down { peer, session });
    }

    fn record(&mut self, peer: PeerId) -> &mut PeerRecord {
        if !self.table.contains_key(&peer) && self.table.len() >= MAX_KNOWN_PEERS {
            let oldest = self
                .table
                .iter()
                .filter(|(_, r)| !r.online)
                .min_by_key(|(_, r)| r.last_seen)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.table.remove(&p);
            }
        }
        self.table.entry(peer).or_insert_with(PeerRecord::new)
    }

    fn info_of(&self, peer: &PeerId) -> Option<PeerInfo> {
        let rec = self
            .table
            .get(peer)
            .filter(|r| r.online && !r.addrs.is_empty())?;
        Some(PeerInfo {
            peer_id: peer.to_bytes(),
            addrs: rec
                .addrs
                .iter()
                .take(MAX_ADDRS_PER_PEER)
                .map(|a| a.to_vec())
                .collect(),
        })
    }

    /// Tell `newcomer` who else we are connected to now, and everyone else about `newcomer`
    /// with the next batch of newcomers.
    fn exchange_peers(&mut self, newcomer: PeerId) {
        let others: Vec<PeerInfo> = self
            .sessions
            .keys()
            .filter(|p| **p != newcomer)
            .filter_map(|p| self.info_of(p))
            .take(MAX_PEERS_PER_MSG)
            .collect();
        if let (false, Some(s)) = (others.is_empty(), self.sessions.get(&newcomer)) {
            let _ = s.out.try_send(ControlMsg::Peers(others));
        }
        self.newcomers.push(newcomer, Instant::now());
    }

    /// Tell every session about the newcomers since the last batch (but itself), in one
    /// message. A newcomer whose session or address is gone by now is left out.
    fn announce_newcomers(&mut self) {
        let Some(batch) = self.newcomers.take_due(Instant::now()) else {
            return;
        };
        let infos: Vec<(PeerId, PeerInfo)> = batch
            .into_iter()
            .filter(|p| self.sessions.contains_key(p))
            .filter_map(|p| Some((p, self.info_of(&p)?)))
            .collect();
        self.send_peers(&infos);
    }

    /// Periodic peer exchange: each session gets the others we are connected to.
    fn exchange_all(&mut self) {
        let infos: Vec<(PeerId, PeerInfo)> = self
            .sessions
            .keys()
            .filter_map(|p| Some((*p, self.info_of(p)?)))
            .collect();
        self.send_peers(&infos);
    }

    /// Send every session the peers of `infos` but itself, in one message.
    fn send_peers(&self, infos: &[(PeerId, PeerInfo)]) {
        for (peer, s) in &self.sessions {
            let others: Vec<PeerInfo> = infos
                .iter()
                .filter(|(p, _)| p != peer)
                .map(|(_, i)| i.clone())
                .take(MAX_PEERS_PER_MSG)
                .collect();
            if !others.is_empty() {
                let _ = s.out.try_send(ControlMsg::Peers(others));
            }
        }
    }

    /// Dial `peer` (a provider found in the DHT) at `addrs`, at what the DHT knows of it, and
    /// through every relay we know: a peer behind a NAT is reachable only there (DCUtR then
    /// makes a direct connection if the NATs allow it).
    /// The DHT may be dialing the same peer at an address that cannot work (a LAN address
    /// behind a NAT); ours goes ahead anyway, at most once per `REDIAL_MIN` per peer.
    fn dial_peer(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>) {
        if !self.may_try(peer) {
            return;
        }
        addrs.extend(
            self.book
                .relays()
                .filter(|(relay, _)| **relay != peer)
                .map(|(relay, addr)| circuit_addr(addr, *relay).with(Protocol::P2p(peer))),
        );
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, error = %e, "dial failed");
        }
    }

    /// True (and noted) unless we dialed `peer` or opened a session to it in the last
    /// `REDIAL_MIN`.
    fn may_try(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        if self
            .our_dials
            .get(&peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < REDIAL_MIN)
        {
            return false;
        }
        if self.our_dials.len() > MAX_KNOWN_PEERS {
            self.our_dials
                .retain(|_, at| now.saturating_duration_since(*at) < REDIAL_MIN);
        }
        self.our_dials.insert(peer, now);
        true
    }

    /// Peers `source` told us of in peer exchange: remember them and, while we have room to
    /// dial (`SessionTable::dial_room`), hand them to the dial policy (`swarm::dials`: budgets
    /// per source and in total, a few dials in flight, a few addresses each); then start the
    /// dials it allows.
    fn learn_peers(&mut self, source: PeerId, list: Vec<PeerInfo>) {
        let me = *self.swarm.local_peer_id();
        let now = Instant::now();
        for info in list {
            let Ok(peer) = PeerId::from_bytes(&info.peer_id) else {
                continue;
            };
            let addrs = parse_addrs(&info.addrs);
            if peer == me || addrs.is_empty() || self.is_banned(&peer) {
                continue;
            }
            let rec = self.record(peer);
            if rec.online {
                continue;
            }
            rec.addrs = addrs.clone();
            if self.dial_room() == 0 {
                continue;
            }
            if self.swarm.is_connected(&peer) {
                // Connected but no session (opening it timed out, or it ended while the
                // connection stayed): periodic peer exchange brings us here again, so this
                // repairs it.
                if !self.sessions.contains_key(&peer) && self.may_try(peer) {
                    debug!(%peer, "connected without a session: opening one");
                    self.open_control(peer);
                }
                continue;
            }
            let addrs = crate::net::dial_order(peer, addrs);
            if self.pex.handle_learned(source, peer, addrs, now) == Learned::Refused {
                debug!(%source, %peer, "peer exchange: over the dial budget; not dialing");
                Stats::add(&self.stats.pex_dials_refused, 1);
            }
        }
        self.dial_learned();
    }

    /// Start the dials to peers learned by peer exchange that the dial policy allows now: at
    /// the few addresses it picked, and through a few relays we know (a peer behind a NAT may
    /// be reachable only there).
    fn dial_learned(&mut self) {
        let now = Instant::now();
        let room = self.dial_room();
        while let Some(Dial { peer, mut addrs }) = self.pex.poll_dial(room, now) {
            if !self.may_try(peer) {
                self.pex.handle_dial_failed(&peer);
                continue;
            }
            addrs.extend(
                self.book
                    .relays()
                    .filter(|(relay, _)| **relay != peer)
                    .take(PEX_RELAYS_PER_DIAL)
                    .map(|(relay, addr)| circuit_addr(addr, *relay).with(Protocol::P2p(peer))),
            );
            debug!(%peer, ?addrs, "dialing a peer learned by peer exchange");
            Stats::add(&self.stats.pex_dials, 1);
            // Always: the DHT may be dialing the same peer at an address that cannot work.
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "dial failed");
                self.pex.handle_dial_failed(&peer);
            }
        }
    }

    /// A relay took us back: dial the swarm peers we lost (see [`rejoin_candidates`]) at
    /// their addresses and through it.
    fn rejoin_through(&mut self, relay: PeerId) {
        let Some(relay_addr) = self
            .book
            .relays()
            .find(|(r, _)| **r == relay)
            .map(|(_, a)| a.clone())
        else {
            return;
        };
        let swarm = &self.swarm;
        let lost = rejoin_candidates(
            &self.table,
            std::time::SystemTime::now(),
            |p| *p == relay || swarm.is_connected(p) || self.book.is_banned(p, Instant::now()),
            self.dial_room(),
        );
        for peer in lost {
            let mut addrs = self.table[&peer].addrs.clone();
            addrs.push(circuit_addr(&relay_addr, relay).with(Protocol::P2p(peer)));
            debug!(%peer, %relay, "dialing a peer lost while the relay was gone");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, error = %e, "dial failed");
            }
        }
    }

    fn peer_table(&self) -> Vec<PeerSummary> {
        let now = Instant::now();
        let streams = &self.swarm.behaviour().streams;
        let link = |p: &PeerId| streams.link(p);
        let mut rows: Vec<PeerSummary> = self
            .table
            .iter()
            .map(|(peer, r)| PeerSummary {
                peer: peer.to_string(),
                node_id: r.node_id,
                role: r.role.map(|role| format!("{role:?}").to_lowercase()),
                addrs: r.addrs.iter().map(|a| a.to_string()).collect(),
                revision: r.revision,
                online: r.online,
                banned: self.book.is_banned(peer, now),
                last_seen_unix_ms: r
                    .last_seen
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                rtt_ms: r.rtt.map(|d| d.as_secs_f64() * 1000.0),
                address: link(peer).map(|(_, a)| a.to_string()),
                relayed: link(peer).map(|(r, _)| r),
            })
            .collect();
        rows.sort_by(|a, b| a.peer.cmp(&b.peer));
        rows
    }

    /// What discovery needs to know of the swarm around it.
    fn discovery_view(&mut self) -> View {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let own = kad.kbuckets().any(|b| b.num_entries() > 0);
        let routable = own || self.amino_routing_peers() > 0;
        // Usefulness as of now, not of the last peer exchange.
        self.observe_slots(&self.stats.traffic.snapshot());
        let idle = self.sessions.idle_for(Instant::now(), STARVED_AFTER);
        self.starved = idle && self.behind();
        View {
            routable,
            sessions: self.sessions.len(),
            connected: self.swarm.network_info().num_peers(),
            starved: self.starved,
        }
    }

    /// True if a peer told us of a newer revision than the one we hold: a download is under
    /// way (or due).
    fn behind(&self) -> bool {
        let newest = self.table.values().filter_map(|r| r.revision).max();
        newest.is_some_and(|n| self.our_revision().is_none_or(|o| n > o))
    }

    /// How many more sessions we may open ourselves: up to the dial target, or while starved
    /// up to the slots (the sessions we opened feed nothing).
    fn dial_room(&self) -> usize {
        if self.starved {
            self.sessions.starved_room()
        } else {
            self.sessions.dial_room()
        }
    }

    fn discovery_tick(&mut self) {
        let view = self.discovery_view();
        for action in self.discovery.handle_timeout(Instant::now(), view) {
            self.discover(action);
        }
    }

    /// Carry out what discovery decided.
    fn discover(&mut self, action: DiscoveryAction<PeerId, Multiaddr>) {
        match action {
            DiscoveryAction::Provide => self.provide(),
            DiscoveryAction::FindProviders { retry_in } => self.find_providers(retry_in),
            DiscoveryAction::LookupHead => self.lookup_head(None),
            DiscoveryAction::Redial { addrs, retry_in } => self.redial(addrs, retry_in),
            DiscoveryAction::DialProvider(peer) => {
                info!(%peer, "found a swarm peer in the DHT");
                self.dial_peer(peer, Vec::new());
            }
            DiscoveryAction::DialNeighbour(peer, addr) => {
                info!(%peer, %addr, "found a peer on the local network (mDNS)");
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
    }

    /// Announce this node as a provider of the swarm key, and keep the newest head we hold in
    /// the DHT too (records are self-certifying).
    fn provide(&mut self) {
        let Some(key) = self.swarm_key.clone() else {
            return;
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        match kad.start_providing(key) {
            Ok(_) => self.discovery.handle_provided(Instant::now()),
            Err(e) => warn!(error = %e, "cannot provide the swarm key"),
        }
        if let (Some(head_key), Some(head)) =
            (self.head_key.clone(), self.content.current().head.clone())
        {
            let record = libp2p::kad::Record::new(head_key, head.encode());
            let _ = kad.put_record(record, libp2p::kad::Quorum::One);
        }
    }

    fn find_providers(&mut self, retry_in: Duration) {
        let Some(key) = self.swarm_key.clone() else {
            return;
        };
        let n = self.stats.dht_lookups.load(Ordering::Relaxed);
        if n > 0 && n.is_power_of_two() {
            info!(
                lookups = n,
                ?retry_in,
                "no peer of this swarm found in the DHT yet; still looking"
            );
        }
        Stats::add(&self.stats.dht_lookups, 1);
        self.swarm.behaviour_mut().kad.get_providers(key);
        let amino_key = self.amino.as_ref().and_then(|a| a.key.clone());
        if let (Some(amino), Some(key)) = (self.swarm.behaviour_mut().amino.as_mut(), amino_key) {
            amino.get_providers(key);
        }
    }

    /// Look the swarm's head record up in the DHT, for `asker` or (`None`) for the engine.
    fn lookup_head(&mut self, asker: Option<oneshot::Sender<Option<SignedHead>>>) {
        let Some(key) = self.head_key.clone() else {
            if let Some(reply) = asker {
                let _ = reply.send(None);
            }
            return;
        };
        let id = self.swarm.behaviour_mut().kad.get_record(key);
        self.head_lookups.handle_started(id, asker);
    }

    /// What discovery needs to know of a peer it found.
    fn seen(&self, peer: &PeerId) -> Seen {
        Seen {
            connected: self.swarm.is_connected(peer),
            banned: self.is_banned(peer),
        }
    }

    fn on_kad_event(&mut self, ev: libp2p::kad::Event) {
        use libp2p::kad::{Event, GetProvidersOk, QueryResult};
        match ev {
            Event::OutboundQueryProgressed {
                result:
                    QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })),
                ..
            } => {
                for peer in providers {
                    let (seen, room) = (self.seen(&peer), self.dial_room());
                    if let Some(dial) = self.discovery.handle_provider(peer, seen, room) {
                        self.discover(dial);
                    }
                }
            }
            Event::InboundRequest {
                request:
                    libp2p::kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                // Records are filtered: heads are validated before they are stored, and
                // provider records are kept only while the sender's network holds no more
                // than its share (see `net::providers`).
                self.on_add_provider(record);
            }
            Event::InboundRequest {
                request:
                    libp2p::kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => self.on_put_record(source, record),
            Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
                let QueryResult::GetRecord(result) = result else {
                    return;
                };
                self.on_head_record(id, result, step.last);
            }
            Event::RoutingUpdated {
                is_new_peer: true, ..
            } => self.discovery.handle_routing_updated(Instant::now()),
            _ => {}
        }
    }

    /// When the public DHT's announcer has something to do.
    fn amino_due(&self) -> Option<Instant> {
        self.amino.as_ref()?.announcer.poll_timeout()
    }

    /// Announce this node as a provider of the swarm's Amino key, if it is time.
    fn amino_tick(&mut self) {
        let Some(amino) = self.amino.as_mut() else {
            return;
        };
        if !amino.announcer.handle_timeout(Instant::now()) {
            return;
        }
        let (Some(key), Some(kad)) = (amino.key.clone(), self.swarm.behaviour_mut().amino.as_mut())
        else {
            return;
        };
        if let Err(e) = kad.start_providing(key) {
            warn!(error = %e, "public DHT: cannot announce the swarm");
            amino.announcer.handle_done(Instant::now(), false);
        }
    }

    /// Peers in the public DHT's routing table (0 when it is off).
    fn amino_routing_peers(&mut self) -> usize {
        let Some(kad) = self.swarm.behaviour_mut().amino.as_mut() else {
            return 0;
        };
        kad.kbuckets().map(|b| b.num_entries()).sum()
    }

    /// Amino expects servers to be reachable: serve its DHT only while AutoNAT says public.
    fn set_amino_mode(&mut self, nat: AutoNat) {
        let Some(kad) = self.swarm.behaviour_mut().amino.as_mut() else {
            return;
        };
        let mode = match nat {
            AutoNat::Public => libp2p::kad::Mode::Server,
            AutoNat::Private | AutoNat::Unknown => libp2p::kad::Mode::Client,
        };
        if kad.mode() != mode {
            info!(?mode, "public DHT mode");
            kad.set_mode(Some(mode));
        }
    }

    /// What `status` shows of the public DHT.
    fn public_dht_report(&mut self) -> Option<super::swarm_handle::PublicDhtReport> {
        let routing_peers = self.amino_routing_peers();
        let server = self
            .swarm
            .behaviour_mut()
            .amino
            .as_mut()
            .is_some_and(|k| k.mode() == libp2p::kad::Mode::Server);
        let amino = self.amino.as_ref()?;
        let since = |at: Instant| std::time::SystemTime::now() - at.elapsed();
        Some(super::swarm_handle::PublicDhtReport {
            routing_peers,
            server,
            last_announce: amino.announcer.last().map(since),
        })
    }

    fn on_amino_event(&mut self, ev: libp2p::kad::Event) {
        use libp2p::kad::{Event, GetProvidersOk, InboundRequest, QueryResult};
        match ev {
            Event::OutboundQueryProgressed {
                result:
                    QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })),
                ..
            } => {
                let me = *self.swarm.local_peer_id();
                for peer in providers.into_iter().filter(|p| *p != me) {
                    Stats::add(&self.stats.public_dht_providers_found, 1);
                    let (seen, room) = (self.seen(&peer), self.dial_room());
                    if let Some(dial) = self.discovery.handle_provider(peer, seen, room) {
                        info!(%peer, "found a swarm peer in the public DHT");
                        self.discover(dial);
                    }
                }
            }
            Event::OutboundQueryProgressed {
                result: QueryResult::StartProviding(result),
                stats,
                ..
            } => {
                let stored = result.is_ok() && stats.num_successes() > 0;
                info!(
                    stored,
                    nodes = stats.num_successes(),
                    "public DHT: announced the swarm"
                );
                if stored {
                    Stats::add(&self.stats.public_dht_announces, 1);
                }
                if let Some(amino) = self.amino.as_mut() {
                    amino.announcer.handle_done(Instant::now(), stored);
                }
            }
            Event::InboundRequest {
                request:
                    InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => self.on_amino_add_provider(record),
            Event::RoutingUpdated {
                is_new_peer: true, ..
            } => {
                let now = Instant::now();
                if let Some(amino) = self.amino.as_mut() {
                    amino.announcer.handle_routing_updated(now);
                }
                self.discovery.handle_routing_updated(now);
            }
            _ => {}
        }
    }

    /// In server mode, a public-DHT node asks us to keep its provider record: kept within the
    /// same per-network and per-key bounds as our own DHT's (`net::providers`), none of them
    /// our swarm's.
    fn on_amino_add_provider(&mut self, record: libp2p::kad::ProviderRecord) {
        use crate::net::{Network, Offer};
        let network = Network::of(self.book.remote_ip(&record.provider));
        let (Some(amino), Some(kad)) = (
            self.amino.as_mut(),
            self.swarm.behaviour_mut().amino.as_mut(),
        ) else {
            return;
        };
        let (key, provider) = (record.key.clone(), record.provider);
        let offer = Offer {
            key: &key,
            provider,
            network,
            expires: record.expires,
        };
        let admit = amino
            .providers
            .admit(offer, Instant::now(), None, |_| false);
        store_admitted(kad.store_mut(), admit, record, &self.stats, "public DHT");
    }

    /// Peers on the LAN: add them to the DHT and dial them while we have room.
    fn on_mdns(&mut self, list: Vec<(PeerId, Multiaddr)>) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in list {
            by_peer.entry(peer).or_default().push(addr);
        }
        let list = by_peer
            .into_iter()
            .flat_map(|(p, addrs)| public_first(addrs).into_iter().map(move |a| (p, a)));
        for (peer, addr) in list {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
            let (seen, room) = (self.seen(&peer), self.dial_room());
            if let Some(dial) = self.discovery.handle_neighbour(peer, addr, seen, room) {
                self.discover(dial);
            }
        }
    }

    /// A peer asks us to store its provider record (kad checked that it names the sender).
    fn on_add_provider(&mut self, record: libp2p::kad::ProviderRecord) {
        use crate::net::{Network, Offer};
        use libp2p::kad::store::RecordStore;
        let network = Network::of(self.book.remote_ip(&record.provider));
        let useful: HashSet<PeerId> = self
            .sessions
            .keys()
            .filter(|p| self.is_useful(p))
            .copied()
            .collect();
        let me = *self.swarm.local_peer_id();
        let own = self.swarm_key.clone();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let own_held = own
            .as_ref()
            .is_some_and(|k| store.providers(k).iter().any(|p| p.provider == me));
        let (key, provider) = (record.key.clone(), record.provider);
        let offer = Offer {
            key: &key,
            provider,
            network,
            expires: record.expires,
        };
        let own = own.as_ref().map(|k| (k, own_held));
        let useful = |p: &PeerId| useful.contains(p);
        let admit = self.providers.admit(offer, Instant::now(), own, useful);
        store_admitted(store, admit, record, &self.stats, "swarm DHT");
    }

    /// The revision this node holds and serves, if any.
    fn our_revision(&self) -> Option<u64> {
        self.content
            .current()
            .head
            .as_ref()
            .map(|h| h.body.revision)
    }

    /// `peer` has proven useful to this node: a live session that sent us verified chunks or
    /// holds the revision we hold.
    fn is_useful(&self, peer: &PeerId) -> bool {
        if !self.sessions.contains_key(peer) {
            return false;
        }
        let ours = self.our_revision();
        let theirs = self.table.get(peer).and_then(|r| r.revision);
        self.stats.traffic.moved_with(peer).down > 0 || ours.is_some_and(|o| theirs >= Some(o))
    }

    /// A peer asks us to store a record: only valid, newer head records are kept.
    fn on_put_record(&mut self, source: PeerId, mut record: libp2p::kad::Record) {
        use libp2p::kad::store::RecordStore;
        let own = self
            .local
            .publisher
            .map(|key| crate::net::head_key(&self.local.swarm_id, &key));
        let kad = &mut self.swarm.behaviour_mut().kad;
        let existing = kad.store_mut().get(&record.key).map(|r| r.into_owned());
        match crate::net::validate_head_record(&record, existing.as_ref()) {
            Ok(head) => {
                // Counted against the peer that sent it, whoever first published it.
                record.publisher = Some(source);
                let store = kad.store_mut();
                let capacity = libp2p::kad::store::MemoryStoreConfig::default().max_records;
                let room = crate::net::make_room(
                    store.records(),
                    capacity,
                    &record,
                    &source,
                    own.as_ref(),
                );
                match room {
                    crate::net::Room::Store => {}
                    crate::net::Room::Evict(key) => store.remove(&key),
                    crate::net::Room::Refuse(why) => {
                        Stats::add(&self.stats.dht_records_refused, 1);
                        debug!(%source, why, "head record not stored");
                        return;
                    }
                }
                debug!(%source, revision = head.body.revision, "stored a head record");
                if let Err(e) = store.put(record) {
                    warn!(error = %e, "DHT store full");
                }
            }
            Err(reason @ crate::net::HeadRecordError::NotNewer { .. }) => {
                Stats::add(&self.stats.heads_stale, 1);
                debug!(%source, %reason, "head record not stored");
            }
            Err(reason) => {
                Stats::add(&self.stats.heads_rejected, 1);
                info!(%source, %reason, "refused a head record");
            }
        }
    }

    /// A head record arrived from a lookup: keep the newest valid one, tell the engine.
    fn on_head_record(
        &mut self,
        id: libp2p::kad::QueryId,
        result: libp2p::kad::GetRecordResult,
        last: bool,
    ) {
        if !self.head_lookups.is_running(&id) {
            return;
        }
        if let Ok(libp2p::kad::GetRecordOk::FoundRecord(found)) = result {
            match crate::net::validate_head_record(&found.record, None) {
                Ok(head) => self.on_valid_head(id, found.peer, head),
                Err(reason) => {
                    let peer = found.peer;
                    info!(?peer, %reason, "ignoring an invalid head record from the DHT");
                }
            }
        }
        if !last {
            return;
        }
        if let Some(Answer { asker, head }) = self.head_lookups.handle_finished(&id) {
            let _ = asker.send(head);
        }
    }

    fn on_valid_head(&mut self, id: libp2p::kad::QueryId, from: Option<PeerId>, head: SignedHead) {
        let revision = head.body.revision;
        let Some(NewHead { peer, head }) =
            self.head_lookups.handle_found(&id, from, revision, head)
        else {
            return;
        };
        if !self.events.push(PeerEvent::Head { peer, head }) {
            warn!("the engine is far behind: a head record was dropped");
        }
    }

    /// Save known peers with addresses, online ones first, for the next start; the file is
    /// written on the blocking pool (joined at shutdown).
    fn save_peers(&mut self) {
        let mut rows: Vec<(&PeerId, &PeerRecord)> = self
            .table
            .iter()
            .filter(|(_, r)| !r.addrs.is_empty())
            .collect();
        rows.sort_by_key(|(_, r)| (!r.online, std::cmp::Reverse(r.last_seen)));
        let list: Vec<PeerInfo> = rows
            .into_iter()
            .take(MAX_SAVED_PEERS)
            .map(|(p, r)| PeerInfo {
                peer_id: p.to_bytes(),
                addrs: r
                    .addrs
                    .iter()
                    .take(MAX_ADDRS_PER_PEER)
                    .map(|a| a.to_vec())
                    .collect(),
            })
            .collect();
        if list.is_empty() {
            return;
        }
        let path = self.peers_file.clone();
        let bytes = postcard::to_stdvec(&list).expect("peer list encodes");
        self.tasks.spawn_blocking(move || {
            let tmp = path.with_extension("tmp");
            let saved = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = saved {
                debug!(error = %e, "cannot save the peer table");
            }
        });
    }

    /// No peer connected, or starved: dial the bootstrap peers again (discovery backs off).
    fn redial(&mut self, addrs: Vec<Multiaddr>, retry_in: Duration) {
        info!(
            peers = addrs.len(),
            ?retry_in,
            starved = self.starved,
            "no peer connected, or none feeds the download: dialing bootstrap peers again"
        );
        for addr in addrs {
            // Starved with a session to a bootstrap peer: it has nothing for us either.
            if crate::net::peer_of(&addr).is_some_and(|p| self.sessions.contains_key(&p)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                debug!(%addr, error = %e, "redial failed");
            }
        }
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        self.book.is_banned(peer, Instant::now())
    }

    /// Ban `peer`: its session ends, its connections close, and until the ban ends the swarm
    /// refuses its connections at the handshake (and does not dial it).
    fn ban(&mut self, peer: PeerId, reason: &str) {
        let Some(ban) = self.book.ban(peer, Instant::now()) else {
            return;
        };
        warn!(%peer, %reason, "banning peer");
        Stats::add(&self.stats.peers_banned, 1);
        let blocked = &mut self.swarm.behaviour_mut().blocked;
        if let Some(old) = ban.evicted {
            debug!(peer = %old, "too many bans: the one ending first is lifted");
            blocked.unblock_peer(old);
        }
        // Also closes every connection to it.
        blocked.block_peer(peer);
        if let Some(gone) = self.sessions.remove(&peer) {
            self.session_gone(gone);
        }
    }

    /// Drop per-peer state that ran out: ended bans (the swarm lets those peers in again),
    /// relays gone a while, expired provider records, chunk stream counts back at zero, dial
    /// times past `REDIAL_MIN`.
    fn prune(&mut self) {
        let now = Instant::now();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        for (key, provider) in self.providers.expire(now) {
            libp2p::kad::store::RecordStore::remove_provider(store, &key, &provider);
        }
        if let (Some(amino), Some(kad)) = (
            self.amino.as_mut(),
            self.swarm.behaviour_mut().amino.as_mut(),
        ) {
            for (key, provider) in amino.providers.expire(now) {
                libp2p::kad::store::RecordStore::remove_provider(kad.store_mut(), &key, &provider);
            }
        }
        for peer in self.book.sweep(now) {
            debug!(%peer, "ban over");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        self.inbound_chunk_streams
            .retain(|_, n| n.load(Ordering::Relaxed) > 0);
        self.our_dials
            .retain(|_, at| now.saturating_duration_since(*at) < REDIAL_MIN);
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                self.pex.handle_connected(&peer_id);
                if self.is_banned(&peer_id) {
                    let _ = self.swarm.close_connection(connection_id);
                    return;
                }
                let relayed = crate::net::is_relayed_endpoint(&endpoint);
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed, "connected");
                let remote = crate::net::ip_of(endpoint.get_remote_address());
                self.book.connected(&peer_id, remote);
                if !relayed {
                    if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint {
                        self.book.dialed(peer_id, address.clone());
                    }
                    self.drop_relayed(peer_id);
                    // Back in touch with a relay we lost (its connection timed out when our
                    // NAT mapping changed, say): ask for a reservation now, not at the next
                    // retry tick.
                    if self.book.is_relay(&peer_id) {
                        let relays = self.connected_relays();
                        let reserves = self.nat.handle_relay_up(&peer_id, &relays);
                        self.reserve(reserves);
                    }
                }
                // A connection we dialled carries a session of ours while we have room to
                // dial (the DHT's own dials included); peers with room open theirs.
                if endpoint.is_dialer()
                    && !self.sessions.contains_key(&peer_id)
                    && self.dial_room() > 0
                {
                    self.open_control(peer_id);
                }
                self.note_link(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established: 0,
                cause,
                ..
            } => {
                debug!(peer = %peer_id, ?cause, "disconnected");
                self.inbound_chunk_streams.remove(&(peer_id, connection_id));
                self.book.disconnected(&peer_id, Instant::now());
                self.stats.traffic.gone(peer_id, Instant::now());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                self.inbound_chunk_streams.remove(&(peer_id, connection_id));
                self.note_link(peer_id);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, relayed = is_relayed(&address), "reachable at");
                let mut addrs = self.local.addrs.clone();
                addrs.push(address);
                self.local.addrs = public_first(addrs);
                // Provide again, so that the DHT hands out the new address.
                self.discovery.handle_new_address(Instant::now());
                if let Some(amino) = self.amino.as_mut() {
                    amino.announcer.handle_new_address(Instant::now());
                }
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                self.local.addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                for relay in self.nat.handle_listener_closed(&listener_id) {
                    info!(%relay, ?reason, "relay reservation ended; will retry");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(
                libp2p::autonat::Event::StatusChanged { old, new },
            )) => {
                info!(from = ?old, to = ?new, "reachability (AutoNAT)");
                self.set_amino_mode(auto_nat(&new));
                let reserves = self
                    .nat
                    .handle_status(auto_nat(&new), &self.connected_relays());
                self.reserve(reserves);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Upnp(ev)) => {
                use libp2p::upnp::Event;
                match ev {
                    Event::NewExternalAddr { external_addr, .. } => {
                        info!(address = %external_addr, "UPnP: the router forwards our port")
                    }
                    Event::ExpiredExternalAddr { external_addr, .. } => {
                        info!(address = %external_addr, "UPnP: port forward expired")
                    }
                    Event::GatewayNotFound => debug!("UPnP: no gateway on the LAN"),
                    Event::NonRoutableGateway => {
                        debug!("UPnP: the gateway is itself behind a NAT; not used")
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(ev)) => match ev.result {
                Ok(conn) => {
                    info!(peer = %ev.remote_peer_id, ?conn, "hole punch: direct connection");
                    Stats::add(&self.stats.hole_punches_ok, 1);
                }
                Err(e) => {
                    info!(peer = %ev.remote_peer_id, error = %e, "hole punch failed: staying relayed");
                    Stats::add(&self.stats.hole_punches_failed, 1);
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                libp2p::relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal: false,
                    ..
                },
            )) => {
                info!(relay = %relay_peer_id, "relay reservation accepted");
                self.rejoin_through(relay_peer_id);
            }
            SwarmEvent::IncomingConnectionError {
                peer_id,
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } => {
                Stats::add(&self.stats.connections_refused, 1);
                debug!(peer = ?peer_id, %cause, "connection refused at the handshake");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                info!(peer = ?peer_id, error = %error, "could not connect");
                if let Some(peer) = peer_id {
                    self.pex.handle_dial_failed(&peer);
                    self.dial_learned();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Amino(ev)) => self.on_amino_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(list))) => {
                self.on_mdns(list)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(
                libp2p::identify::Event::Received { peer_id, info, .. },
            )) => {
                let addrs = public_first(info.listen_addrs);
                let speaks = |name: &str| info.protocols.iter().any(|p| p.as_ref() == name);
                let (amino, own) = (speaks(crate::net::AMINO_PROTOCOL), speaks(KAD_PROTOCOL));
                for addr in addrs.into_iter().take(MAX_ADDRS_PER_PEER) {
                    if is_relayed(&addr) {
                        continue;
                    }
                    let behaviour = self.swarm.behaviour_mut();
                    if let Some(kad) = behaviour.amino.as_mut().filter(|_| amino) {
                        kad.add_address(&peer_id, addr.clone());
                    }
                    if own {
                        behaviour.kad.add_address(&peer_id, addr);
                    }
                }
                let hop = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == crate::net::RELAY_HOP_PROTOCOL);
                if hop && !self.book.is_relay(&peer_id) {
                    let direct = self.direct_addr_of(&peer_id);
                    if let Some(addr) = direct {
                        debug!(relay = %peer_id, %addr, "peer serves as a relay");
                        if self.book.add_relay(peer_id, addr) {
                            let relays = self.connected_relays();
                            let reserves = self.nat.handle_relay_up(&peer_id, &relays);
                            self.reserve(reserves);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                if let Some(rec) = self.table.get_mut(&peer) {
                    rec.rtt = Some(rtt);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Streams(streams::Event::Inbound {
                peer,
                connection,
                protocol,
                stream,
            })) => self.on_inbound(peer, connection, protocol, stream),
            _ => {}
        }
    }

    /// The address of a direct connection we dialed to `peer`, if any.
    fn direct_addr_of(&self, peer: &PeerId) -> Option<Multiaddr> {
        self.book.direct_addr(peer).cloned()
    }

    fn nat_tick(&mut self) {
        let reserves = self
            .nat
            .handle_timeout(Instant::now(), &self.connected_relays());
        self.reserve(reserves);
    }

    /// The relays we know that are connected now, and the address each is reached at.
    fn connected_relays(&self) -> Vec<(PeerId, Multiaddr)> {
        self.book
            .relays()
            .filter(|(p, _)| self.swarm.is_connected(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect()
    }

    /// Ask relays for the reservations NAT traversal decided on, so that peers can reach us
    /// through them (DCUtR then upgrades to a direct connection).
    fn reserve(&mut self, reserves: Vec<Reserve<PeerId, Multiaddr>>) {
        for Reserve { relay, addr } in reserves {
            let circuit = circuit_addr(&addr, relay);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    debug!(%relay, %circuit, "asking for a relay reservation");
                    self.nat.handle_reserving(relay, id);
                }
                Err(e) => debug!(%relay, error = %e, "cannot ask for a relay reservation"),
            }
        }
    }

    /// Tell the byte accounting whether `peer`'s streams now go through a relay.
    fn note_link(&self, peer: PeerId) {
        if let Some((relayed, _)) = self.swarm.behaviour().streams.link(&peer) {
            self.stats.traffic.set_link(peer, Some(relayed), None);
        }
    }

    /// How others reach this node (see [`Nat::reachability`]).
    fn reachability(&self) -> &'static str {
        let external = self.swarm.external_addresses().any(|a| !is_relayed(a));
        self.nat.reachability(external).as_str()
    }

    /// A direct connection to `peer` is up: close relayed ones, so that sessions and chunk
    /// streams move to the direct path (the session is reopened there).
    fn drop_relayed(&mut self, peer: PeerId) {
        // The stream behaviour tracks connections (it has seen this one already: behaviours
        // learn of a connection before the swarm reports it).
        let relayed = self.swarm.behaviour().streams.relayed_connections(&peer);
        let in_session = self.sessions.contains_key(&peer);
        if !self.nat.handle_direct(peer, relayed.len(), in_session) {
            return;
        }
        info!(%peer, "direct connection up: closing the relayed one");
        for id in relayed {
            self.swarm.close_connection(id);
        }
    }

    fn open_control(&mut self, peer: PeerId) {
        if !self.opening.begin(&peer, Instant::now()) {
            debug!(%peer, "a control stream to this peer is being opened already");
            return;
        }
        let (reply, rx) = oneshot::channel();
        self.swarm.behaviour_mut().streams.open_stream(
            peer,
            StreamProtocol::new(CONTROL_PROTOCOL),
            reply,
        );
        let net = self.handle.clone();
        self.tasks.spawn(async move {
            match tokio::time::timeout(STREAM_OPEN_TIMEOUT, rx).await {
                Ok(Ok(Ok(stream))) => {
                    net.control_stream(peer, stream, true).await;
                    return;
                }
                // A public-DHT node, not a treecast peer.
                Ok(Ok(Err(e @ streams::OpenError::Unsupported(_)))) => {
                    debug!(%peer, error = %e, "no control stream")
                }
                Ok(Ok(Err(e))) => warn!(%peer, error = %e, "cannot open control stream"),
                _ => warn!(%peer, "opening the control stream timed out"),
            }
            net.control_open_failed(peer).await;
        });
    }

    fn on_inbound(
        &mut self,
        peer: PeerId,
        connection: libp2p::swarm::ConnectionId,
        protocol: StreamProtocol,
        stream: Stream,
    ) {
        if self.is_banned(&peer) {
            return;
        }
        if protocol.as_ref() == CONTROL_PROTOCOL {
            return self.register_session(peer, stream, false);
        }
        if protocol.as_ref() != CHUNKS_PROTOCOL {
            return;
        }
        // Counted per connection: streams of a connection that died without closing (a
        // crashed peer) must not block the peer's next connection until they time out.
        let count = self
            .inbound_chunk_streams
            .entry((peer, connection))
            .or_default()
            .clone();
        if count.load(Ordering::Relaxed) >= MAX_INBOUND_CHUNK_STREAMS {
            warn!(%peer, "too many chunk streams from one peer: refusing another");
            return;
        }
        count.fetch_add(1, Ordering::Relaxed);
        let ctx = chunks::ServerCtx {
            peer,
            content: self.content.clone(),
            stats: self.stats.clone(),
            net: self.handle.clone(),
            corrupt: self.corrupt,
            upload: self.upload.clone(),
            seed: self.seed.clone(),
            budget: self.budget.clone(),
        };
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = chunks::serve(stream, ctx) => {}
                _ = cancel.cancelled() => {}
            }
            count.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Chunk bytes moved between `peer` and us so far, both ways.
    fn bytes_with(traffic: &super::traffic::TrafficSnapshot, peer: &PeerId) -> u64 {
        traffic
            .peers
            .get(peer)
            .map_or(0, |(b, _)| b.up.saturating_add(b.down))
    }

    /// Tell the slots what each session's peer did since the last look: chunk bytes moved, and
    /// whether it holds the revision we hold.
    fn observe_slots(&mut self, traffic: &super::traffic::TrafficSnapshot) {
        let now = Instant::now();
        let ours = self.our_revision();
        let seen: Vec<(PeerId, u64, bool)> = self
            .sessions
            .keys()
            .map(|peer| {
                let theirs = self.table.get(peer).and_then(|r| r.revision);
                let current = ours.is_some_and(|ours| theirs >= Some(ours));
                (*peer, Self::bytes_with(traffic, peer), current)
            })
            .collect();
        for (peer, bytes, current) in seen {
            self.sessions.observe(&peer, bytes, current, now);
        }
    }

    /// A control stream with `peer` opened (by us if `ours`): run a session on it, unless the
    /// tie-break keeps the running one or no slot may be had (see [`SessionTable`]). A new
    /// session replaces the peer's running one and takes over its slot; at the limit, a
    /// newcomer pushes out the session idle the longest.
    fn register_session(&mut self, peer: PeerId, stream: Stream, ours: bool) {
        let opener = if ours {
            *self.swarm.local_peer_id()
        } else {
            peer
        };
        let traffic = self.stats.traffic.snapshot();
        if self.sessions.len() >= self.max_peers {
            self.observe_slots(&traffic);
        }
        let (out_tx, out_rx) = mpsc::channel(32);
        let cancel = self.cancel.child_token();
        let handle = Session {
            out: out_tx,
            cancel: cancel.clone(),
        };
        let bytes = Self::bytes_with(&traffic, &peer);
        let id = match self
            .sessions
            .open(peer, opener, handle, bytes, Instant::now())
        {
            Open::Start {
                id,
                replaced,
                evicted,
            } => {
                if let Some(old) = replaced {
                    debug!(%peer, "control session replaced");
                    self.session_gone(old);
                }
                if let Some(idle) = evicted {
                    info!(idle = %idle.peer, newcomer = %peer, "peer limit reached: ending the session idle the longest");
                    self.session_gone(idle);
                }
                id
            }
            Open::Kept => return,
            Open::Full => {
                warn!(%peer, "peer limit reached, no session idle long enough: refusing a control session");
                return;
            }
        };
        let ctx = SessionCtx {
            peer,
            session: id,
            local: self.local.clone(),
            version: self.version,
            content: self.content.clone(),
            net: self.handle.clone(),
            out: out_rx,
            cancel,
        };
        self.tasks.spawn(control::run(stream, ctx));
    }
}

/// Carry out the provider book's decision on `record` in the `dht`'s (named in logs) store.
fn store_admitted(
    store: &mut libp2p::kad::store::MemoryStore,
    admit: crate::net::Admit,
    record: libp2p::kad::ProviderRecord,
    stats: &Stats,
    dht: &str,
) {
    use crate::net::Admit;
    use libp2p::kad::store::RecordStore;
    let provider = record.provider;
    let stored = match admit {
        Admit::Store => store.add_provider(record),
        Admit::Replace { evict } => {
            debug!(%evict, for_ = %provider, dht, "provider record replaced");
            store.remove_provider(&record.key, &evict);
            store.add_provider(record)
        }
        Admit::Refuse(why) => {
            Stats::add(&stats.dht_records_refused, 1);
            debug!(%provider, why, dht, "provider record not stored");
            return;
        }
    };
    if let Err(e) = stored {
        warn!(error = %e, dht, "provider record not stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::transport::ListenerId;

    /// Peers lost within the window, most recent first, bounded by the room; never one we
    /// never had a session with, one still online or connected.
    #[test]
    fn a_relay_that_takes_us_back_is_used_to_dial_the_peers_lost_most_recently() {
        let now = std::time::SystemTime::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let record = |role: Option<Role>, online: bool, seen: u64| PeerRecord {
            role,
            online,
            last_seen: ago(seen),
            ..PeerRecord::new()
        };
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let table: HashMap<PeerId, PeerRecord> = [
            record(Some(Role::Publisher), false, 40),
            record(Some(Role::Subscriber), false, 10),
            record(None, false, 5),
            record(Some(Role::Subscriber), true, 5),
            record(Some(Role::Subscriber), false, 700),
            record(Some(Role::Subscriber), false, 20),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, r)| (peers[i], r))
        .collect();
        let nobody = |_: &PeerId| false;
        assert_eq!(
            rejoin_candidates(&table, now, nobody, 32),
            [peers[1], peers[5], peers[0]]
        );
        assert_eq!(
            rejoin_candidates(&table, now, nobody, 2),
            [peers[1], peers[5]]
        );
        let connected = |p: &PeerId| *p == peers[5];
        assert_eq!(
            rejoin_candidates(&table, now, connected, 32),
            [peers[1], peers[0]]
        );
        assert!(rejoin_candidates(&table, now, nobody, 0).is_empty());
    }

    /// An incoming connection that failed is no reason to stop the node; a listener that
    /// closed with an error is.
    #[test]
    fn a_listener_error_does_not_end_the_start_a_closed_listener_does() {
        let failed = std::io::Error::other("authentication failed");
        let error = SwarmEvent::<BehaviourEvent>::ListenerError {
            listener_id: ListenerId::next(),
            error: failed,
        };
        assert_eq!(start_failed(&error), None);
        let closed = SwarmEvent::<BehaviourEvent>::ListenerClosed {
            listener_id: ListenerId::next(),
            addresses: Vec::new(),
            reason: Err(std::io::Error::other("socket gone")),
        };
        assert_eq!(start_failed(&closed).as_deref(), Some("socket gone"));
    }
}
