//! What a node reports of itself as it works: its [`Status`] (published on a watch channel)
//! and its counters ([`Stats`]). A leaf but for the traffic counters it holds.

use std::sync::atomic::{AtomicU64, Ordering};

use super::traffic;

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
    /// Providers of the swarm's key the public DHT (Amino) named (this node left out).
    pub public_dht_providers_found: AtomicU64,
    /// Announcements of the swarm that reached at least one public-DHT node.
    pub public_dht_announces: AtomicU64,
    /// Chunk requests answered "busy" because the upload budget was full and another
    /// peer had bytes out or was waiting (`swarm::UploadBudget`).
    pub chunks_refused_busy: AtomicU64,
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
    #[serde(default)]
    pub public_dht_providers_found: u64,
    #[serde(default)]
    pub public_dht_announces: u64,
    #[serde(default)]
    pub chunks_refused_busy: u64,
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
            public_dht_providers_found: r(&self.public_dht_providers_found),
            public_dht_announces: r(&self.public_dht_announces),
            chunks_refused_busy: r(&self.chunks_refused_busy),
        }
    }
}
