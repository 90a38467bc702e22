//! Chunk streams: the server side (answer requests in order) and the fetch side (pipelined
//! lanes to each peer, driven by the sans-IO [`Picker`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::streams::Stream;
use futures::AsyncReadExt;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::serve::Content;
use super::status::Stats;
use super::swarm_handle::NetHandle;
use crate::config::{
    CHUNK_STREAMS_PER_PEER, CHUNK_TIMEOUT, DEFAULT_IN_FLIGHT, ENDGAME_AFTER, HAVE_INTERVAL,
    MAX_CHUNK_FRAME, MAX_IN_FLIGHT, REQUESTS_PER_STREAM, STREAM_OPEN_TIMEOUT,
};
use crate::store::StoreError;
use crate::swarm::{Picker, PickerConfig, SeedPolicy};
use crate::tree::ContentHash;
use crate::wire::{self, ChunkRequest, ControlMsg, WireError, CHUNKS_PROTOCOL};

/// How often each peer's request limit follows its measured rate. Until the first measurement
/// a peer has only its default limit (the publisher, 4 requests), so this is also how long a
/// download runs at that limit.
const RATE_INTERVAL: Duration = Duration::from_millis(100);
/// Largest chunk request frame.
const MAX_REQUEST_FRAME: usize = 256;
/// Lanes to one peer reopened at once within `REOPEN_WINDOW`; more wait `REOPEN_DELAY`.
const MAX_LANE_REOPENS: u32 = 8;
const REOPEN_WINDOW: Duration = Duration::from_secs(10);
const REOPEN_DELAY: Duration = Duration::from_secs(3);

/// What a chunk server needs.
pub(crate) struct ServerCtx {
    pub peer: PeerId,
    pub content: Content,
    pub stats: Arc<Stats>,
    pub net: NetHandle,
    pub corrupt: bool,
    /// Global upload limit, shared by every chunk stream.
    pub upload: Option<Limiter>,
    /// The publisher's seeding policy (None on subscribers).
    pub seed: Option<Arc<std::sync::Mutex<SeedPolicy<PeerId>>>>,
}

/// Why a chunk stream stopped answering.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Our read of a chunk failed (its task panicked): not the peer's doing, and not "not
    /// found" either, which would tell the peer we lack the chunk.
    #[error("reading chunk {hash} failed: {source}")]
    Read {
        hash: ContentHash,
        source: tokio::task::JoinError,
    },
}

/// Answer chunk requests on one stream until it closes.
pub(crate) async fn serve(stream: Stream, ctx: ServerCtx) {
    let peer = ctx.peer;
    let (mut r, mut w) = stream.split();
    match serve_loop(&mut r, &mut w, &ctx).await {
        Ok(()) => {}
        Err(e @ ServeError::Read { .. }) => {
            tracing::error!(%peer, error = %e, "closing the chunk stream");
        }
        Err(ServeError::Wire(e)) if e.is_hostile() => {
            warn!(%peer, error = %e, "hostile chunk request: banning");
            Stats::add(&ctx.stats.hostile_frames, 1);
            ctx.net.ban(peer, e.to_string()).await;
        }
        Err(ServeError::Wire(e)) => debug!(%peer, error = %e, "chunk stream closed"),
    }
}

async fn serve_loop<R, W>(r: &mut R, w: &mut W, ctx: &ServerCtx) -> Result<(), ServeError>
where
    R: futures::AsyncRead + Unpin,
    W: futures::AsyncWrite + Unpin,
{
    while let Some(frame) = wire::read_frame(r, MAX_REQUEST_FRAME).await? {
        let req: ChunkRequest = wire::decode(&frame)?;
        let content = ctx.content.clone();
        let hash = req.hash;
        // Manifest blobs are exempt from the seeding policy: every subscriber needs them before
        // it can fetch anything, and no subscriber serves them before it has applied them.
        let metadata = ctx.content.is_manifest_blob(&hash);
        let refuse = !metadata
            && ctx.seed.as_ref().is_some_and(|seed| {
                let mut seed = seed.lock().unwrap_or_else(|p| p.into_inner());
                !seed.should_serve(&ctx.peer, hash, Instant::now())
            });
        let mut data = if refuse {
            None
        } else {
            read_chunk(content, hash)
                .await
                .map_err(|source| ServeError::Read { hash, source })?
        };
        if ctx.corrupt {
            data = data.filter(|d| !d.is_empty()).map(|d| {
                let mut bad = d.to_vec();
                bad[0] ^= 0xff;
                bytes::Bytes::from(bad)
            });
        }
        if let (Some(d), Some(bucket)) = (&data, &ctx.upload) {
            pace(bucket, d.len()).await;
        }
        if let Some(d) = &data {
            Stats::add(&ctx.stats.chunks_sent, 1);
            Stats::add(&ctx.stats.chunk_bytes_sent, d.len() as u64);
            ctx.stats.traffic.sent(ctx.peer, d.len() as u64);
        }
        let header = wire::encode_reply_header(req.id, data.is_some());
        let body = data.as_deref().unwrap_or_default();
        tokio::time::timeout(CHUNK_TIMEOUT, wire::write_frame_parts(w, &[&header, body]))
            .await
            .map_err(|_| WireError::Timeout("chunk reply write"))??;
    }
    Ok(())
}

/// The bytes of `hash` for a peer: at once when that needs no disk I/O, else read on a
/// blocking thread.
async fn read_chunk(
    content: Content,
    hash: ContentHash,
) -> Result<Option<bytes::Bytes>, tokio::task::JoinError> {
    #[cfg(test)]
    if tests::read_fails(&hash) {
        return tokio::task::spawn_blocking(|| panic!("a chunk read fails (test)")).await;
    }
    match content.read_now(&hash) {
        Ok(data) => Ok(data),
        Err(_would_block) => tokio::task::spawn_blocking(move || content.read(&hash)).await,
    }
}

/// A global bandwidth limit, shared by every chunk stream it applies to.
pub(crate) type Limiter = Arc<tokio::sync::Mutex<crate::swarm::TokenBucket>>;

/// A limiter allowing `rate` bytes per second. The burst is small (an eighth of a second,
/// at most 256 KiB) so that measured rates follow the limit closely; a chunk larger than the
/// burst is paced by the debt it leaves.
pub(crate) fn limiter(rate: u64) -> Limiter {
    let burst = (rate / 8).clamp(1, 256 * 1024);
    let bucket = crate::swarm::TokenBucket::new(rate, burst, Instant::now());
    Arc::new(tokio::sync::Mutex::new(bucket))
}

/// Wait until `n` bytes may pass `limit`.
async fn pace(limit: &Limiter, n: usize) {
    let wait = limit.lock().await.take(n as u64, Instant::now());
    tokio::time::sleep(wait).await;
}

/// Where verified chunks go.
pub(crate) trait ChunkSink: Send + Sync + 'static {
    /// Store `data`, already verified against `hash`. Blocking.
    fn accept(&self, hash: ContentHash, data: bytes::Bytes) -> Result<(), StoreError>;

    /// Whether any peer in session may still ask us for chunks (one that does not hold the
    /// target completely). A sink may keep verified chunks in memory for them, and need not
    /// when there is none.
    fn peers_may_ask(&self, _yes: bool) {}
}

/// Why a fetch stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("cancelled")]
    Cancelled,
    #[error("storing a chunk: {0}")]
    Store(#[from] StoreError),
}

/// What the download knows about one peer.
#[derive(Debug, Clone, Default)]
pub(crate) struct FeedPeer {
    /// The peer holds the target revision completely.
    pub complete: bool,
    /// The publisher: asked only for chunks no other peer has.
    pub last_resort: bool,
    /// Its latest availability bitfield, with the revision it is for.
    pub have: Option<(u64, Vec<u8>)>,
}

/// Peers that can serve the target, and changes to that set.
///
/// Joins and leaves come on their own unbounded queue so none is ever lost (one entry per
/// session event, so their number is bounded by session churn); availability updates come on a
/// bounded queue and may be dropped when it is full, since each one is a whole bitfield that
/// the next one supersedes.
pub(crate) struct PeerFeed {
    pub peers: HashMap<PeerId, FeedPeer>,
    pub members: mpsc::UnboundedReceiver<PeerChange>,
    pub changes: mpsc::Receiver<PeerChange>,
}

impl PeerFeed {
    /// The next change, joins and leaves first; `None` once the engine has gone.
    async fn next_change(&mut self) -> Option<PeerChange> {
        tokio::select! {
            biased;
            m = self.members.recv() => m,
            c = self.changes.recv() => c,
        }
    }
}

/// A change to the set of peers to fetch from.
#[derive(Debug, Clone)]
pub(crate) enum PeerChange {
    Up(PeerId, FeedPeer),
    Have {
        peer: PeerId,
        revision: u64,
        bitfield: Vec<u8>,
    },
    Down(PeerId),
}

/// The chunk order of a revision (sorted, de-duplicated chunk hashes of its files), which
/// availability bitfields index into, and this node's own bitfield over it.
pub(crate) struct Availability {
    pub revision: u64,
    order: Vec<ContentHash>,
    index: HashMap<ContentHash, usize>,
    bits: Vec<u8>,
    dirty: bool,
}

impl Availability {
    pub fn new(revision: u64, chunks: impl IntoIterator<Item = ContentHash>) -> Self {
        let mut order: Vec<ContentHash> = chunks.into_iter().collect();
        order.sort();
        order.dedup();
        let index = order.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        let bits = vec![0u8; order.len().div_ceil(8)];
        Availability {
            revision,
            order,
            index,
            bits,
            dirty: true,
        }
    }

    fn mark(&mut self, hash: &ContentHash) {
        if let Some(i) = self.index.get(hash) {
            self.bits[i / 8] |= 1 << (i % 8);
            self.dirty = true;
        }
    }

    fn decode(&self, bitfield: &[u8]) -> HashSet<ContentHash> {
        self.order
            .iter()
            .enumerate()
            .filter(|(i, _)| bitfield.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
            .map(|(_, h)| *h)
            .collect()
    }
}

enum LaneEvent {
    Verified {
        lane: LaneKey,
        hash: ContentHash,
        len: usize,
        /// From sending the request to having the whole reply.
        latency: Duration,
    },
    NotFound {
        lane: LaneKey,
        hash: ContentHash,
    },
    Bad {
        lane: LaneKey,
        reason: String,
    },
    Closed {
        lane: LaneKey,
    },
    Failed(StoreError),
}

type LaneKey = (PeerId, usize);

/// Everything a fetch needs from the node.
pub(crate) struct FetchCtx {
    pub net: NetHandle,
    pub stats: Arc<Stats>,
    pub cancel: CancellationToken,
    /// This node's own tie-breaking salt for the picker.
    pub salt: u64,
    /// Global download limit on chunk replies.
    pub download: Option<Limiter>,
}

/// Measured download rate of one peer, and its quickest reply since its lanes were opened.
#[derive(Default)]
struct Rate {
    bytes: u64,
    ewma: Option<f64>,
    min_latency: Option<Duration>,
}

/// How many requests to keep in flight to a peer that delivers `rate` bytes per second and
/// whose quickest reply took `min_latency`: enough for four times that latency at that rate
/// (the path's round trip, with room for the rate to grow and for jitter), but at least 10 ms
/// and at most 0.5 s of it, and 0.5 s while no reply has come. More than needed only queues
/// chunks in buffers: on a fast, short link that costs both ends CPU (cold caches), and it is
/// what a dying peer takes with it.
fn in_flight_target(rate: f64, min_latency: Option<Duration>) -> usize {
    const MIN_QUEUE: f64 = 0.01;
    const MAX_QUEUE: f64 = 0.5;
    const CHUNK: f64 = crate::config::CHUNK_AVG as f64;
    let queue = min_latency.map_or(MAX_QUEUE, |l| {
        (4.0 * l.as_secs_f64()).clamp(MIN_QUEUE, MAX_QUEUE)
    });
    ((rate * queue / CHUNK).ceil() as usize).clamp(4, MAX_IN_FLIGHT)
}

struct Fetch<'a> {
    ctx: &'a FetchCtx,
    picker: Picker<PeerId>,
    lanes: HashMap<LaneKey, mpsc::Sender<ContentHash>>,
    /// The lane each request went to; a chunk may be out to two peers in the end game.
    assigned: HashMap<(ContentHash, PeerId), LaneKey>,
    rates: HashMap<PeerId, Rate>,
    /// Lanes reopened per peer since the instant given.
    reopens: HashMap<PeerId, (u32, Instant)>,
    /// Lanes to reopen later (a peer whose lanes keep closing is retried, never given up
    /// while it is in the feed).
    reopen_later: Vec<(Instant, LaneKey)>,
    avail: Option<&'a mut Availability>,
    sink: Arc<dyn ChunkSink>,
    events: mpsc::Sender<LaneEvent>,
}

/// Fetch every hash in `wanted` not in `present` from the peers in `feed`, handing verified
/// bytes to `sink`. With `avail`, peers' bitfields say what they hold and this node's own
/// availability is announced as chunks verify; without it only complete peers are asked.
/// `progress` is told the verified byte count as it grows.
pub(crate) async fn fetch_all(
    ctx: &FetchCtx,
    wanted: Vec<(ContentHash, u32)>,
    present: &HashSet<ContentHash>,
    sink: Arc<dyn ChunkSink>,
    feed: &mut PeerFeed,
    avail: Option<&mut Availability>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), FetchError> {
    let config = PickerConfig {
        default_in_flight: DEFAULT_IN_FLIGHT,
        seed_in_flight: 4,
        stall_timeout: CHUNK_TIMEOUT,
        lack_retry: Duration::from_secs(1),
        endgame_after: ENDGAME_AFTER,
        local_salt: ctx.salt,
    };
    let picker = Picker::new(config, wanted.iter().map(|w| w.0), present);
    if picker.is_done() {
        return Ok(());
    }
    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    let mut f = Fetch {
        ctx,
        picker,
        lanes: HashMap::new(),
        assigned: HashMap::new(),
        rates: HashMap::new(),
        reopens: HashMap::new(),
        reopen_later: Vec::new(),
        avail,
        sink,
        events: ev_tx,
    };
    if let Some(a) = f.avail.as_deref_mut() {
        present.iter().for_each(|h| a.mark(h));
    }
    for (peer, info) in feed.peers.clone() {
        f.add_peer(peer, &info);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut have_tick = tokio::time::interval(HAVE_INTERVAL);
    let mut rate_tick = tokio::time::interval(RATE_INTERVAL);
    rate_tick.tick().await;
    let mut measured_at = Instant::now();
    let mut done_bytes: u64 = 0;
    loop {
        f.tell_sink(feed);
        f.assign();
        if f.picker.is_done() {
            f.announce();
            return Ok(());
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(FetchError::Cancelled),
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { return Err(FetchError::Cancelled) };
                if let Some(len) = f.on_lane_event(ev, feed).await? {
                    done_bytes += len;
                    progress(done_bytes);
                }
            }
            change = feed.next_change() => match change {
                Some(PeerChange::Up(peer, info)) => {
                    feed.peers.insert(peer, info.clone());
                    f.add_peer(peer, &info);
                }
                Some(PeerChange::Have { peer, revision, bitfield }) => {
                    // Joins come first (see `PeerFeed`), so an unknown peer has left.
                    let Some(entry) = feed.peers.get_mut(&peer) else { continue };
                    entry.have = Some((revision, bitfield));
                    let info = entry.clone();
                    f.add_peer(peer, &info);
                }
                Some(PeerChange::Down(peer)) => {
                    feed.peers.remove(&peer);
                    f.drop_peer(peer);
                }
                None => return Err(FetchError::Cancelled),
            },
            _ = have_tick.tick() => f.announce(),
            _ = rate_tick.tick() => {
                let now = Instant::now();
                f.measure(now.duration_since(measured_at));
                measured_at = now;
            }
            _ = tick.tick() => {
                f.reopen_due(feed);
                for (peer, hash) in f.picker.poll_stalled(Instant::now()) {
                    debug!(%peer, %hash, "chunk request stalled: re-issuing elsewhere");
                    f.assigned.remove(&(hash, peer));
                }
            }
        }
    }
}

impl Fetch<'_> {
    /// Tell the sink whether any peer in `feed` may ask us for chunks.
    fn tell_sink(&self, feed: &PeerFeed) {
        self.sink
            .peers_may_ask(feed.peers.values().any(|p| !p.complete));
    }

    /// Tell the picker what `peer` has, opening lanes to it the first time.
    fn add_peer(&mut self, peer: PeerId, info: &FeedPeer) {
        let have = if info.complete {
            crate::swarm::Availability::All
        } else {
            match (&self.avail, &info.have) {
                (Some(a), Some((rev, bits))) if *rev == a.revision => {
                    crate::swarm::Availability::Some(a.decode(bits))
                }
                _ => crate::swarm::Availability::Some(HashSet::new()),
            }
        };
        self.picker.set_peer(peer, have, info.last_resort);
        if !self.lanes.keys().any(|(p, _)| *p == peer) {
            self.open_lanes(peer);
        }
    }

    fn open_lanes(&mut self, peer: PeerId) {
        for l in 0..CHUNK_STREAMS_PER_PEER {
            self.open_lane((peer, l));
        }
    }

    fn open_lane(&mut self, key: LaneKey) {
        // A new stream may take a new path (a direct connection instead of a relay): learn
        // the peer's latency again.
        self.rates.entry(key.0).or_default().min_latency = None;
        let (tx, rx) = mpsc::channel(REQUESTS_PER_STREAM);
        self.lanes.insert(key, tx);
        let lane = Lane {
            key,
            net: self.ctx.net.clone(),
            sink: self.sink.clone(),
            events: self.events.clone(),
            stats: self.ctx.stats.clone(),
            download: self.ctx.download.clone(),
        };
        let cancel = self.ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = lane.run(rx) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    fn drop_peer(&mut self, peer: PeerId) {
        self.picker.on_peer_gone(&peer);
        self.lanes.retain(|(p, _), _| *p != peer);
        self.assigned.retain(|(_, p), _| *p != peer);
    }

    /// Hand out requests: each peer's picks go to its least busy lane.
    fn assign(&mut self) {
        let now = Instant::now();
        let peers: HashSet<PeerId> = self.lanes.keys().map(|(p, _)| *p).collect();
        for peer in peers {
            while let Some(lane) = self.freest_lane(peer) {
                let Some(hash) = self.picker.next_for(&peer, now) else {
                    break;
                };
                match self.lanes.get(&lane).map(|tx| tx.try_send(hash)) {
                    Some(Ok(())) => {
                        self.assigned.insert((hash, peer), lane);
                    }
                    _ => {
                        self.picker.on_failed(&peer, hash);
                        break;
                    }
                }
            }
        }
    }

    fn freest_lane(&self, peer: PeerId) -> Option<LaneKey> {
        self.lanes
            .iter()
            .filter(|((p, _), tx)| *p == peer && tx.capacity() > 0)
            .max_by_key(|(_, tx)| tx.capacity())
            .map(|(k, _)| *k)
    }

    /// Handle a lane event; returns the bytes newly verified, if any.
    async fn on_lane_event(
        &mut self,
        ev: LaneEvent,
        feed: &mut PeerFeed,
    ) -> Result<Option<u64>, FetchError> {
        match ev {
            LaneEvent::Verified {
                lane,
                hash,
                len,
                latency,
            } => {
                self.assigned.retain(|(h, _), _| *h != hash);
                let rate = self.rates.entry(lane.0).or_default();
                rate.bytes += len as u64;
                rate.min_latency = Some(rate.min_latency.map_or(latency, |m| m.min(latency)));
                let new = !self.picker.is_verified(&hash);
                self.picker.on_verified(hash);
                if let Some(a) = self.avail.as_deref_mut() {
                    a.mark(&hash);
                }
                return Ok(new.then_some(len as u64));
            }
            LaneEvent::NotFound { lane, hash } => {
                self.assigned.remove(&(hash, lane.0));
                self.picker.on_not_found(&lane.0, hash, Instant::now());
            }
            LaneEvent::Bad { lane, reason } => {
                Stats::add(&self.ctx.stats.bad_chunks, 1);
                self.drop_peer(lane.0);
                feed.peers.remove(&lane.0);
                self.ctx.net.ban(lane.0, reason).await;
            }
            LaneEvent::Closed { lane } => {
                let lost: Vec<ContentHash> = self
                    .assigned
                    .iter()
                    .filter(|(_, l)| **l == lane)
                    .map(|((h, _), _)| *h)
                    .collect();
                for h in lost {
                    self.assigned.remove(&(h, lane.0));
                    self.picker.on_failed(&lane.0, h);
                }
                // A lane whose connection closed while its peer is still in session (the
                // session moved to another connection, e.g. from a relay to a direct path)
                // is opened again, a bounded number of times.
                let ours = self.lanes.remove(&lane).is_some();
                if ours && feed.peers.contains_key(&lane.0) {
                    let now = Instant::now();
                    let (count, since) = self.reopens.entry(lane.0).or_insert((0, now));
                    if now.duration_since(*since) > REOPEN_WINDOW {
                        (*count, *since) = (0, now);
                    }
                    if *count < MAX_LANE_REOPENS {
                        *count += 1;
                        debug!(peer = %lane.0, "reopening a chunk lane");
                        self.open_lane(lane);
                    } else {
                        debug!(peer = %lane.0, "chunk lanes keep closing: retrying later");
                        self.reopen_later.push((now + REOPEN_DELAY, lane));
                    }
                }
            }
            LaneEvent::Failed(e) => return Err(e.into()),
        }
        Ok(None)
    }

    /// Reopen lanes whose retry time has come, if their peer is still in the feed.
    fn reopen_due(&mut self, feed: &PeerFeed) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.reopen_later.drain(..).partition(|(at, _)| *at <= now);
        self.reopen_later = later;
        for (_, lane) in due {
            if feed.peers.contains_key(&lane.0) && !self.lanes.contains_key(&lane) {
                self.open_lane(lane);
            }
        }
    }

    /// Update each peer's request limit from its rate over the `elapsed` since the last call
    /// (see [`in_flight_target`]).
    fn measure(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(0.001);
        for (peer, rate) in &mut self.rates {
            let now = std::mem::take(&mut rate.bytes) as f64 / secs;
            // Old rates keep 70% of their weight per second, however often this runs.
            let keep = 0.7f64.powf(secs);
            let ewma = rate.ewma.map_or(now, |e| keep * e + (1.0 - keep) * now);
            rate.ewma = Some(ewma);
            let target = in_flight_target(ewma, rate.min_latency);
            // Up at most twofold per measurement (down at once): requests in flight when a node
            // dies are lost, and a limit that grows with what the peer proved it delivers
            // keeps that small for downloads cut short.
            let limit = self
                .picker
                .limit(peer)
                .map_or(target, |l| target.min(l * 2));
            self.picker.set_limit(peer, limit);
        }
    }

    /// Broadcast our availability bitfield if it changed.
    fn announce(&mut self) {
        let Some(a) = self.avail.as_deref_mut() else {
            return;
        };
        if !a.dirty {
            return;
        }
        let msg = ControlMsg::Have {
            revision: a.revision,
            bitfield: a.bits.clone(),
        };
        if self.ctx.net.broadcast(msg) {
            a.dirty = false;
        }
    }
}

struct Lane {
    key: LaneKey,
    net: NetHandle,
    sink: Arc<dyn ChunkSink>,
    events: mpsc::Sender<LaneEvent>,
    stats: Arc<Stats>,
    download: Option<Limiter>,
}

impl Lane {
    async fn run(self, requests: mpsc::Receiver<ContentHash>) {
        let peer = self.key.0;
        match self.open().await {
            Ok(stream) => {
                if let Err(e) = self.pump(stream, requests).await {
                    debug!(%peer, error = %e, "chunk lane closed");
                }
            }
            Err(e) => debug!(%peer, error = %e, "cannot open chunk stream"),
        }
        let _ = self.events.send(LaneEvent::Closed { lane: self.key }).await;
    }

    async fn open(&self) -> Result<Stream, String> {
        let rx = self
            .net
            .open_stream(self.key.0, StreamProtocol::new(CHUNKS_PROTOCOL))
            .await
            .map_err(|_| "node shut down".to_string())?;
        match tokio::time::timeout(STREAM_OPEN_TIMEOUT, rx).await {
            Ok(Ok(Ok(s))) => Ok(s),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(_)) => Err("node shut down".into()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Send requests as they come and read replies in order, concurrently.
    async fn pump(
        &self,
        stream: Stream,
        mut requests: mpsc::Receiver<ContentHash>,
    ) -> Result<(), WireError> {
        let (mut r, mut w) = stream.split();
        let (exp_tx, mut exp_rx) =
            mpsc::channel::<(u32, ContentHash, Instant)>(REQUESTS_PER_STREAM * 2);
        let writer = async move {
            let mut id = 0u32;
            while let Some(hash) = requests.recv().await {
                id = id.wrapping_add(1);
                if exp_tx.send((id, hash, Instant::now())).await.is_err() {
                    break;
                }
                wire::write_frame(&mut w, &wire::encode(&ChunkRequest { id, hash })).await?;
            }
            Ok::<(), WireError>(())
        };
        let reader = async {
            // One buffer for every reply on this lane: no fresh memory to fault in per chunk.
            let mut frame = Vec::new();
            while let Some((id, hash, sent)) = exp_rx.recv().await {
                let more = tokio::time::timeout(
                    CHUNK_TIMEOUT,
                    wire::read_frame_into(&mut r, MAX_CHUNK_FRAME, &mut frame),
                )
                .await
                .map_err(|_| WireError::Timeout("chunk reply"))??;
                let latency = sent.elapsed();
                if !more {
                    // A stream ending with requests outstanding is a closed connection (a peer
                    // leaving, a relayed path replaced by a direct one), not abuse.
                    return Err(WireError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stream ended with requests outstanding",
                    )));
                }
                // Holding the next read back slows the sender through QUIC flow control.
                if let Some(limit) = &self.download {
                    pace(limit, frame.len()).await;
                }
                let (keep_going, buf) = self
                    .on_reply(id, hash, latency, std::mem::take(&mut frame))
                    .await;
                frame = buf;
                if !keep_going {
                    return Ok(());
                }
            }
            Ok(())
        };
        let result = tokio::select! {
            r = writer => r,
            r = reader => r,
        };
        if let Err(e) = &result {
            if e.is_hostile() {
                let _ = self
                    .events
                    .send(LaneEvent::Bad {
                        lane: self.key,
                        reason: e.to_string(),
                    })
                    .await;
            }
        }
        result
    }

    /// Handle one reply; false ends the lane. The frame's buffer comes back for the next one.
    async fn on_reply(
        &self,
        id: u32,
        hash: ContentHash,
        latency: Duration,
        frame: Vec<u8>,
    ) -> (bool, Vec<u8>) {
        let lane = self.key;
        let (header, _) = match wire::decode_reply(&frame) {
            Ok(x) => x,
            Err(e) => return (self.bad(e.to_string()).await, frame),
        };
        if header.id != id {
            let reason = format!("reply {} to request {id}", header.id);
            return (self.bad(reason).await, frame);
        }
        if !header.found {
            let _ = self.events.send(LaneEvent::NotFound { lane, hash }).await;
            return (true, frame);
        }
        let sink = self.sink.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let (_, data) = wire::decode_reply(&frame).expect("decoded above");
            let start = frame.len() - data.len();
            if !hash.matches(data) {
                return (Ok(None), frame);
            }
            // The verified bytes go to the sink as they are, not copied. If it kept them (to
            // serve), the lane reads its next reply into fresh memory; if not, into this again.
            let len = data.len();
            let whole = bytes::Bytes::from(frame);
            let verdict = sink.accept(hash, whole.slice(start..)).map(|()| Some(len));
            let frame = whole
                .try_into_mut()
                .map(Vec::from)
                .unwrap_or_else(|_| Vec::with_capacity(len + start));
            (verdict, frame)
        })
        .await;
        let (verdict, frame) = match joined {
            Ok(checked) => checked,
            Err(e) => {
                tracing::error!(peer = %lane.0, %hash, error = %e, "checking a chunk failed: closing the lane");
                return (false, Vec::new());
            }
        };
        let keep_going = match verdict {
            Ok(Some(len)) => {
                Stats::add(&self.stats.chunks_fetched, 1);
                Stats::add(&self.stats.chunk_bytes_fetched, len as u64);
                self.stats.traffic.received(lane.0, len as u64);
                let _ = self
                    .events
                    .send(LaneEvent::Verified {
                        lane,
                        hash,
                        len,
                        latency,
                    })
                    .await;
                true
            }
            Ok(None) => {
                warn!(peer = %lane.0, %hash, "chunk failed verification: dropping the peer");
                self.bad(format!("chunk {hash} does not match its hash"))
                    .await
            }
            Err(e) => {
                let _ = self.events.send(LaneEvent::Failed(e)).await;
                false
            }
        };
        (keep_going, frame)
    }

    async fn bad(&self, reason: String) -> bool {
        let _ = self
            .events
            .send(LaneEvent::Bad {
                lane: self.key,
                reason,
            })
            .await;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks whose read on a blocking thread panics: the seam for a failed read, which the
    /// disk cannot be made to give on demand.
    static READ_FAILS: std::sync::Mutex<Vec<ContentHash>> = std::sync::Mutex::new(Vec::new());

    pub(super) fn read_fails(hash: &ContentHash) -> bool {
        READ_FAILS.lock().unwrap().contains(hash)
    }

    /// A read that failed on this node is not told to the peer as "not found" (it would take
    /// the chunk for one we lack): the stream ends with the error, nothing written.
    #[tokio::test]
    async fn a_failed_chunk_read_ends_the_stream_instead_of_answering_not_found() {
        let hash = ContentHash::of(b"a chunk whose read fails");
        READ_FAILS.lock().unwrap().push(hash);
        let (net, _net_rx) = mpsc::channel(1);
        let ctx = ServerCtx {
            peer: PeerId::random(),
            content: Content::default(),
            stats: Arc::default(),
            net: NetHandle::new(net),
            corrupt: false,
            upload: None,
            seed: None,
        };
        let mut request = Vec::new();
        wire::write_frame(&mut request, &wire::encode(&ChunkRequest { id: 7, hash }))
            .await
            .unwrap();
        let mut r = futures::io::Cursor::new(request);
        let mut w: Vec<u8> = Vec::new();
        let served = serve_loop(&mut r, &mut w, &ctx).await;
        assert!(w.is_empty(), "answered {} bytes: {served:?}", w.len());
        assert!(served.is_err(), "the stream ended cleanly");
    }

    #[test]
    fn requests_in_flight_follow_rate_and_latency() {
        let ms = Duration::from_millis;
        let chunks = |bytes: f64| (bytes / crate::config::CHUNK_AVG as f64).ceil() as usize;
        // No reply yet: half a second of the rate, as far as the cap allows.
        assert_eq!(in_flight_target(10e6, None), chunks(5e6));
        assert_eq!(in_flight_target(500e6, None), MAX_IN_FLIGHT);
        // A long path: four round trips of data, enough to keep it full as the rate grows.
        assert_eq!(in_flight_target(10e6, Some(ms(100))), chunks(4e6));
        // A short, fast path (loopback, LAN): 10 ms of data, not half a second of it.
        assert_eq!(in_flight_target(500e6, Some(ms(1))), chunks(5e6));
        assert!(in_flight_target(500e6, Some(ms(1))) < MAX_IN_FLIGHT);
        // A slow reply never asks for more than half a second; a trickle keeps a few.
        assert_eq!(in_flight_target(10e6, Some(ms(900))), chunks(5e6));
        assert_eq!(in_flight_target(1e3, Some(ms(5))), 4);
    }
}
