//! Chunk streams: the server side (answer requests in order) and the fetch side (pipelined
//! lanes to each peer: their streams and tasks, carrying out what the sans-IO [`Scheduler`]
//! decides).

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
use crate::config::{CHUNK_TIMEOUT, MAX_CHUNK_FRAME, REQUESTS_PER_STREAM, STREAM_OPEN_TIMEOUT};
use crate::store::StoreError;
use crate::swarm::{Action, LaneId, ScheduleConfig, Scheduler, SeedPolicy};
use crate::tree::ContentHash;
use crate::wire::{self, ChunkRequest, ControlMsg, WireError, CHUNKS_PROTOCOL};

/// Largest chunk request frame.
const MAX_REQUEST_FRAME: usize = 256;

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
pub(crate) use crate::swarm::FeedPeer;

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

/// The chunk order of a revision, which availability bitfields index into, and this node's
/// own bitfield over it.
pub(crate) use crate::swarm::OwnAvailability as Availability;

enum LaneEvent {
    Verified {
        lane: LaneId,
        hash: ContentHash,
        len: usize,
        /// From sending the request to having the whole reply.
        latency: Duration,
    },
    NotFound {
        lane: LaneId,
        hash: ContentHash,
    },
    Bad {
        lane: LaneId,
        reason: String,
    },
    Closed {
        lane: LaneId,
    },
    Failed(StoreError),
}

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
    mut avail: Option<&mut Availability>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), FetchError> {
    let config = ScheduleConfig::with_salt(ctx.salt);
    let own = avail.as_deref_mut().map(std::mem::take);
    let hashes = wanted.iter().map(|w| w.0);
    let sched = Scheduler::new(config, hashes, present, own, Instant::now());
    let (events, ev_rx) = mpsc::channel(256);
    let mut f = Fetch {
        ctx,
        sched,
        lanes: HashMap::new(),
        sink,
        events,
        reported: 0,
    };
    let result = if f.sched.is_done() {
        Ok(())
    } else {
        f.run(feed, ev_rx, progress).await
    };
    if let (Some(avail), Some(own)) = (avail, f.sched.into_own()) {
        *avail = own;
    }
    result
}

/// The I/O of one download: the lanes the [`Scheduler`] opened, and the events that come back
/// from them and from the peer feed.
struct Fetch<'a> {
    ctx: &'a FetchCtx,
    sched: Scheduler<PeerId>,
    lanes: HashMap<LaneId, mpsc::Sender<ContentHash>>,
    sink: Arc<dyn ChunkSink>,
    events: mpsc::Sender<LaneEvent>,
    /// Verified bytes last told to `progress`.
    reported: u64,
}

impl Fetch<'_> {
    async fn run(
        &mut self,
        feed: &mut PeerFeed,
        mut ev_rx: mpsc::Receiver<LaneEvent>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), FetchError> {
        let ctx = self.ctx;
        for (peer, info) in &feed.peers {
            self.sched.handle_peer_up(*peer, info);
        }
        let timer = tokio::time::sleep_until(self.sched.poll_timeout().into());
        tokio::pin!(timer);
        loop {
            if self.carry_out(feed).await {
                return Ok(());
            }
            let deadline = self.sched.poll_timeout().into();
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(FetchError::Cancelled),
                ev = ev_rx.recv() => {
                    let Some(ev) = ev else { return Err(FetchError::Cancelled) };
                    self.on_lane_event(ev)?;
                    self.report(progress);
                }
                change = feed.next_change() => {
                    let Some(change) = change else { return Err(FetchError::Cancelled) };
                    self.on_change(change, feed);
                }
                () = &mut timer => self.sched.handle_timeout(Instant::now()),
            }
        }
    }

    /// Do what the scheduler decided; true once the download is done.
    async fn carry_out(&mut self, feed: &mut PeerFeed) -> bool {
        let now = Instant::now();
        while let Some(action) = self.sched.poll(now) {
            match action {
                Action::OpenLane { lane, peer } => self.open_lane(lane, peer),
                Action::CloseLane(lane) => {
                    self.lanes.remove(&lane);
                }
                Action::Request { lane, hash } => self.request(lane, hash),
                Action::PeersMayAsk(yes) => self.sink.peers_may_ask(yes),
                Action::Announce { revision, bitfield } => {
                    let msg = ControlMsg::Have { revision, bitfield };
                    if !self.ctx.net.broadcast(msg) {
                        self.sched.handle_announce_dropped();
                    }
                }
                Action::Ban { peer, reason } => {
                    feed.peers.remove(&peer);
                    self.ctx.net.ban(peer, reason).await;
                }
                Action::Done => return true,
            }
        }
        false
    }

    fn open_lane(&mut self, lane: LaneId, peer: PeerId) {
        let (tx, rx) = mpsc::channel(REQUESTS_PER_STREAM);
        self.lanes.insert(lane, tx);
        let task = Lane {
            lane,
            peer,
            net: self.ctx.net.clone(),
            sink: self.sink.clone(),
            events: self.events.clone(),
            stats: self.ctx.stats.clone(),
            download: self.ctx.download.clone(),
        };
        let cancel = self.ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = task.run(rx) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    fn request(&mut self, lane: LaneId, hash: ContentHash) {
        let queued = self
            .lanes
            .get(&lane)
            .is_some_and(|tx| tx.try_send(hash).is_ok());
        if !queued {
            self.sched.handle_unsent(lane, hash);
        }
    }

    fn on_lane_event(&mut self, ev: LaneEvent) -> Result<(), FetchError> {
        let now = Instant::now();
        match ev {
            LaneEvent::Verified {
                lane,
                hash,
                len,
                latency,
            } => self.sched.handle_reply(lane, hash, len, latency),
            LaneEvent::NotFound { lane, hash } => self.sched.handle_not_found(lane, hash, now),
            LaneEvent::Bad { lane, reason } => {
                Stats::add(&self.ctx.stats.bad_chunks, 1);
                self.sched.handle_bad(lane, reason);
            }
            LaneEvent::Closed { lane } => self.sched.handle_closed(lane, now),
            LaneEvent::Failed(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn on_change(&mut self, change: PeerChange, feed: &mut PeerFeed) {
        match change {
            PeerChange::Up(peer, info) => {
                self.sched.handle_peer_up(peer, &info);
                feed.peers.insert(peer, info);
            }
            PeerChange::Have {
                peer,
                revision,
                bitfield,
            } => {
                // Joins come first (see `PeerFeed`), so an unknown peer has left.
                let Some(entry) = feed.peers.get_mut(&peer) else {
                    return;
                };
                self.sched.handle_have(peer, revision, &bitfield);
                entry.have = Some((revision, bitfield));
            }
            PeerChange::Down(peer) => {
                feed.peers.remove(&peer);
                self.sched.handle_peer_down(&peer);
            }
        }
    }

    /// Tell `progress` the verified byte count if it grew.
    fn report(&mut self, progress: &(dyn Fn(u64) + Send + Sync)) {
        let fetched = self.sched.fetched_bytes();
        if fetched != self.reported {
            self.reported = fetched;
            progress(fetched);
        }
    }
}

/// One lane's task: a chunk stream to `peer`, requests written as they come, replies read,
/// verified and stored in order.
struct Lane {
    lane: LaneId,
    peer: PeerId,
    net: NetHandle,
    sink: Arc<dyn ChunkSink>,
    events: mpsc::Sender<LaneEvent>,
    stats: Arc<Stats>,
    download: Option<Limiter>,
}

impl Lane {
    async fn run(self, requests: mpsc::Receiver<ContentHash>) {
        let peer = self.peer;
        match self.open().await {
            Ok(stream) => {
                if let Err(e) = self.pump(stream, requests).await {
                    debug!(%peer, error = %e, "chunk lane closed");
                }
            }
            Err(e) => debug!(%peer, error = %e, "cannot open chunk stream"),
        }
        let _ = self
            .events
            .send(LaneEvent::Closed { lane: self.lane })
            .await;
    }

    async fn open(&self) -> Result<Stream, String> {
        let rx = self
            .net
            .open_stream(self.peer, StreamProtocol::new(CHUNKS_PROTOCOL))
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
                        lane: self.lane,
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
        let lane = self.lane;
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
                tracing::error!(peer = %self.peer, %hash, error = %e, "checking a chunk failed: closing the lane");
                return (false, Vec::new());
            }
        };
        let keep_going = match verdict {
            Ok(Some(len)) => {
                Stats::add(&self.stats.chunks_fetched, 1);
                Stats::add(&self.stats.chunk_bytes_fetched, len as u64);
                self.stats.traffic.received(self.peer, len as u64);
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
                warn!(peer = %self.peer, %hash, "chunk failed verification: dropping the peer");
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
                lane: self.lane,
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
}
