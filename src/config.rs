//! Every limit, timeout and tunable in one place, plus the runtime configuration of a node.
//!
//! Precedence for user-facing settings is flag > env (`TREECAST_*`, handled by clap) > default.
//! Constants here are protocol limits: changing them changes what peers accept.
//!
//! A limit that a lower layer checks itself is defined in that layer and re-exported here, so
//! this stays the one place to read them all: chunk sizes, path limits, manifest entries and
//! the state directory's name in `tree`, the handover cap in `trust`. This module sits above
//! `tree`, `trust` and `wire` ([`NodeConfig`] names their types) and below the layers that
//! read it (`store`, `swarm`, `net`, `node`).

use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

// Limits that `tree` and `trust` check themselves, defined there.
pub use crate::tree::{
    CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, MAX_COMPONENT_LEN, MAX_ENTRIES, MAX_PATH_DEPTH, MAX_PATH_LEN,
    STATE_DIR,
};
pub use crate::trust::MAX_SUCCESSION;

/// Largest frame on the control stream (heads, hellos, goodbyes are small).
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;
/// Largest frame on a chunk stream: one chunk plus its header, or small chunks packed together
/// (at most `wire::REPLY_PACK_BYTES` of them, with a header of at most
/// `wire::MAX_CHUNKS_PER_FRAME` lengths).
pub const MAX_CHUNK_FRAME: usize = CHUNK_MAX as usize + 1024;
/// Largest manifest we are willing to fetch and decode.
pub const MAX_MANIFEST_SIZE: u64 = 512 * 1024 * 1024;

/// Chunk streams opened to each peer we download from.
pub const CHUNK_STREAMS_PER_PEER: usize = 2;
/// Most chunk requests queued or outstanding on one chunk stream.
pub const REQUESTS_PER_STREAM: usize = 512;
/// Chunk requests in flight per peer before its throughput is measured.
pub const DEFAULT_IN_FLIGHT: usize = 16;
/// Most chunk requests in flight per peer, however fast it is and however small its chunks.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Most chunk bytes in flight per peer (as requests of the peer's mean chunk): 64 chunks of the
/// average size. What a peer that dies takes with it, whatever the size of the chunks.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 * CHUNK_AVG as usize;
/// Interval between availability (`Have`) updates while downloading.
pub const HAVE_INTERVAL: Duration = Duration::from_millis(250);
/// Inbound chunk streams one peer may hold open against us at once.
pub const MAX_INBOUND_CHUNK_STREAMS: usize = 8;
/// Peers we hold control sessions with at once.
pub const MAX_PEERS: usize = 64;
/// A session that moved no chunk bytes for this long may be ended to make room for a newcomer
/// when every slot is taken (see `swarm::Slots`).
pub const SESSION_IDLE: Duration = Duration::from_secs(60);
/// A download whose sessions all moved no chunk bytes for this long is starved: the peers it
/// has hold nothing it lacks (or refuse it), so it looks for others as a node with no peer
/// does — the publisher from the ticket, the DHT's providers (see `swarm::Discovery`).
pub const STARVED_AFTER: Duration = Duration::from_secs(10);

/// Control messages a peer may send per second on average, and in one burst; more is a flood
/// (an honest peer sends a few per second: availability every 250 ms, heartbeats, heads).
pub const CONTROL_MSGS_PER_SEC: u64 = 50;
pub const CONTROL_MSGS_BURST: u64 = 200;
/// Peer exchange (`swarm::dials`): learned peers one source may get admitted for a dial per
/// minute, as a bucket of this many that refills at this rate. An honest peer tells of the peers
/// it is connected to (at most `MAX_PEERS`), and mostly the same ones every 15 s.
pub const PEX_DIALS_PER_SOURCE: u32 = 16;
/// Learned peers admitted for a dial per minute from all sources together (same bucket shape).
pub const PEX_DIALS_PER_MINUTE: u32 = 64;
/// Dials to learned peers pending at once (until connected or failed).
pub const PEX_DIALS_IN_FLIGHT: usize = 8;
/// Addresses of a learned peer one dial tries (public ones first; an address another pending
/// dial is trying is left out).
pub const PEX_ADDRS_PER_DIAL: usize = 3;
/// Relays this node knows through which a dial of a learned peer also tries to reach it.
pub const PEX_RELAYS_PER_DIAL: usize = 2;
/// A learned peer admitted but not dialled within this long is forgotten.
pub const PEX_CANDIDATE_TTL: Duration = Duration::from_secs(60);
/// A dial to a learned peer whose outcome was never reported stops counting as pending after
/// this long (libp2p reports every outcome; this only keeps a lost report from holding a slot).
pub const PEX_DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the version handshake and hello exchange.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one chunk reply once it was requested.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between heartbeats on the control stream.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence on a control stream after which the peer is considered gone.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);
/// Time to open a stream on an existing connection.
pub const STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet period after a file-system event before the publisher rescans.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a stream of file-system events (a file rewritten faster than [`WATCH_DEBOUNCE`]) can
/// put off a rescan: a tree that never stops changing is still published this often.
pub const WATCH_DEBOUNCE_MAX: Duration = Duration::from_secs(3);
/// How long an idle connection is kept.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Most DHT records one peer may have stored on this node (a node keeps 1,024 in all, kad's
/// default): many of them from invented swarms cannot crowd out everyone else's.
pub const MAX_RECORDS_PER_PEER: usize = 64;
/// How long a banned peer stays banned.
pub const BAN_DURATION: Duration = Duration::from_secs(600);

/// QUIC receive window per stream (libp2p's default of 10 MB is too small for fat links).
pub const QUIC_STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// QUIC receive window per connection.
pub const QUIC_CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// Runtime configuration of one node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The tree this node publishes or mirrors.
    pub dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Publisher only: full rescan interval (backstop for the file watcher).
    pub rescan_interval: Duration,
    /// Publisher only: watch the tree for changes.
    pub watch: bool,
    /// Subscriber only: how long to wait for a first peer before giving up (with `--once`).
    pub connect_timeout: Duration,
    /// Publisher only: how long a starting publisher with peers to ask listens for the newest
    /// revision the swarm holds before it publishes (a fifth of it with only mDNS). Only tests
    /// change it.
    pub learn_window: Duration,
    /// Publisher only: the swarm ID to use for a tree that has none yet (default: a new UUID).
    pub swarm_id: Option<uuid::Uuid>,
    /// Wire protocol version this node speaks. Only tests change it.
    pub protocol_version: u32,
    /// Most chunk bytes per second this node uploads (None: unlimited).
    pub max_upload: Option<u64>,
    /// Most chunk bytes per second this node downloads (None: unlimited).
    pub max_download: Option<u64>,
    /// Chunk bytes this node may have queued and not yet seen leave before it answers further
    /// requests from a second peer "busy" (0: no budget; see `swarm::UploadBudget`).
    pub upload_budget: u64,
    /// Most peers to hold sessions with (peer exchange dials up to this many).
    pub max_peers: usize,
    /// With every session slot taken, a session idle this long (no chunk bytes moved) may be
    /// ended for a newcomer. Only tests change it.
    pub session_idle: Duration,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Ask a UPnP gateway on the LAN to forward our port (the CLI turns it on when listening
    /// on a non-loopback address).
    pub upnp: bool,
    /// Find the swarm in the public IPFS DHT (Amino) too, bootstrapping from these peers (each
    /// address ends in `/p2p/<peer ID>`); `None`: off. Off here (a library caller, a test or
    /// the demo opts in); the CLI turns it on with Amino's public bootstrap list unless told
    /// otherwise.
    pub public_dht: Option<Vec<Multiaddr>>,
    /// Publisher only: gitignore-style patterns never published, after `.treecastignore`.
    pub ignore: Vec<String>,
    /// Serve as a relay for nodes behind NATs; the value caps the bytes of one relayed
    /// connection (None: not a relay).
    pub relay_circuit_bytes: Option<u64>,
    /// Addresses this node is known to be reachable at (a public IP, a port forward); told to
    /// peers at once instead of waiting for AutoNAT. A relay needs one before it accepts
    /// reservations.
    pub external: Vec<Multiaddr>,
    /// Publisher only: publish at start even if the tree looks lost (much smaller than the
    /// last revision, or the swarm holds a newer revision than this node's state).
    pub force: bool,
    /// Subscriber only: mirror into a directory that holds files but no treecast state (else
    /// refused). Nothing is deleted: what the revision does not have, and files it has with
    /// other content, are moved to `.treecast/conflicts/`; identical files are kept.
    pub adopt: bool,
    /// Handover records leading from the swarm's first key to this node's publisher key (a new
    /// publisher taking over), or to follow before any head is seen.
    pub succession: Vec<crate::trust::Succession>,
    /// Publisher only: told how far each scan got (for a progress bar).
    pub scan_progress: Option<std::sync::Arc<crate::tree::ScanProgress>>,
    /// Serve Prometheus metrics over HTTP here (port 0 picks a free port).
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve the web dashboard, `/api/status` and `/metrics` over HTTP here (port 0 picks a
    /// free port). A non-loopback address needs `http_token`.
    pub http: Option<std::net::SocketAddr>,
    /// The token the dashboard's HTTP server asks every client for (`?token=` or
    /// `Authorization: Bearer`); required when `http` is not a loopback address.
    pub http_token: Option<String>,
    /// Serve deliberately corrupted chunks. Only hostile-peer tests set it.
    pub danger_corrupt_served_chunks: bool,
}

impl NodeConfig {
    /// A configuration for `dir` listening on a free loopback port, with defaults elsewhere.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            dir: dir.into(),
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1"
                .parse()
                .expect("valid multiaddr")],
            bootstrap: Vec::new(),
            rescan_interval: Duration::from_secs(30),
            watch: true,
            connect_timeout: Duration::from_secs(30),
            learn_window: Duration::from_secs(5),
            swarm_id: None,
            max_upload: None,
            max_download: None,
            upload_budget: DEFAULT_UPLOAD_BUDGET,
            max_peers: 32,
            session_idle: SESSION_IDLE,
            mdns: true,
            upnp: false,
            public_dht: None,
            ignore: Vec::new(),
            relay_circuit_bytes: None,
            external: Vec::new(),
            protocol_version: crate::wire::PROTOCOL_VERSION,
            metrics: None,
            http: None,
            http_token: None,
            force: false,
            adopt: false,
            scan_progress: None,
            succession: Vec::new(),
            danger_corrupt_served_chunks: false,
        }
    }

    /// The state directory of this node's tree.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE_DIR)
    }
}
/// The longest the publisher holds back a chunk it sent from other subscribers, who should get
/// it from its first receiver, while no other peer lists it (see `swarm::SeedPolicy`): from
/// when the receiver listed it (`SEED_HOLD_UNLISTED`: while it has not).
///
/// 30 s, not 10: in the 40-subscriber lab (64 MiB, 10 Mbit/s links, CPU-bound) a chunk often
/// took more than 10 s to go from its first receiver to anyone else, and the hold ran out: in
/// two runs of 203-223 chunks 59 and 34 holds ran out and their chunks went again (of the 34,
/// 29 on this backstop, 5 never listed), 1.50 and 1.41 copies of chunk bytes; at 30 s 3 ran
/// out, all never listed, and 1.09-1.33 copies. A hold still ends when its receiver leaves or
/// once the chunk spread (`SPREAD_AFTER` other peers list it, or fewer `SPREAD_WAIT` after the
/// first did), so only a receiver that keeps a chunk from everyone (slow, or hostile) makes the
/// others wait this long.
pub const SEED_HOLD: Duration = Duration::from_secs(30);
/// The longest the publisher holds a chunk back from the send while its receiver has not listed
/// it (it may still be on its way; its request times out after `CHUNK_TIMEOUT`).
pub const SEED_HOLD_UNLISTED: Duration = CHUNK_TIMEOUT;
/// The upload budget of a node that sets none: none. In the simulator a budget of 1 MiB has
/// swarms of 20 subscribers and more finish far sooner (README, "Swarm simulator", session
/// 28: links shared max-min, 40 subscribers 1.29x the bound with it and 1.68x without, N=100
/// 1.31x and 2.13x), but in this machine's CPU-bound lab it made the 40-subscriber case slower
/// (CI runs 297 and 356 s with it against 125-226 s without), so it stays off.
pub const DEFAULT_UPLOAD_BUDGET: u64 = 0;
/// A peer that said it lacks a chunk (or would not send it now) is asked for it again after
/// this long (see `swarm::Picker`).
pub const LACK_RETRY: Duration = Duration::from_secs(1);
/// A peer that said it is busy (its upload budget is full) is asked for nothing for this long
/// (see `swarm::Scheduler::handle_busy`).
pub const BUSY_BACKOFF: Duration = Duration::from_millis(100);
/// End game: once every missing chunk is requested, a request outstanding this long may also
/// go to another peer that has the chunk.
pub const ENDGAME_AFTER: Duration = Duration::from_secs(1);
/// Default cap on the bytes one relayed connection may carry, on relays.
pub const RELAY_CIRCUIT_BYTES: u64 = 1 << 30;
/// Relays a node behind a NAT keeps reservations on.
pub const MAX_RELAY_RESERVATIONS: usize = 2;
/// Where `--http` given without an address serves the dashboard: this machine only.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9899";
