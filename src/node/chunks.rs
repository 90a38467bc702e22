//! Chunk streams: the server side (answer requests in order) and the fetch side (pipelined
//! lanes to each peer: their streams and tasks, carrying out what the sans-IO [`Scheduler`]
//! decides).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::streams::Stream;
use crate::net::WireCounter;
use futures::AsyncReadExt;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::serve::Content;
use super::status::Stats;
use super::swarm_handle::NetHandle;
use crate::config::{CHUNK_TIMEOUT, MAX_CHUNK_FRAME, REQUESTS_PER_STREAM, STREAM_OPEN_TIMEOUT};

/// Reply frames of one lane verified and stored at once: storing a frame of small chunks (a
/// file created per chunk) took longer than reading the next, and a lane that stored one
/// frame at a time was a first sync's limit.
const STORES_PER_LANE: usize = 4;
use crate::store::StoreError;
use crate::swarm::{Action, LaneId, ScheduleConfig, Scheduler, SeedPolicy, UploadBudget};
use crate::tree::ContentHash;
use crate::wire::{
    self, Answer, ControlMsg, Have, LaneMsg, WireError, CHUNKS_PROTOCOL, MAX_CHUNKS_PER_FRAME,
    MAX_REQUEST_FRAME, REPLY_PACK_BYTES,
};

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
    /// The node's upload budget, shared by every chunk stream it serves (None: no budget).
    pub budget: Option<Budget>,
}

/// A node's upload budget (see [`UploadBudget`]) and the count of bytes its connections sent.
#[derive(Clone)]
pub(crate) struct Budget {
    inner: Arc<std::sync::Mutex<UploadBudget<PeerId>>>,
    wire: WireCounter,
}

/// A budget of `bytes` in flight (0: none, and nothing is counted), frames leaving as `wire`
/// counts; a refused peer waits `LACK_RETRY` before it asks again, so it counts as waiting that
/// long.
pub(crate) fn budget(bytes: u64, wire: WireCounter) -> Option<Budget> {
    (bytes > 0).then(|| Budget {
        inner: Arc::new(std::sync::Mutex::new(UploadBudget::new(
            bytes,
            crate::config::LACK_RETRY,
            CHUNK_TIMEOUT,
        ))),
        wire,
    })
}

/// One served stream's place in the budget; its bytes stop counting when it is dropped.
struct BudgetLane<'a> {
    budget: &'a Budget,
    id: u64,
}

impl<'a> BudgetLane<'a> {
    fn open(budget: &'a Budget, peer: PeerId) -> Self {
        let id = lock(&budget.inner).open(peer);
        BudgetLane { budget, id }
    }

    fn may_send(&self, now: Instant) -> bool {
        let wire = self.budget.wire.get();
        lock(&self.budget.inner).may_send(self.id, now, wire)
    }

    fn sent(&self, last_id: u32, bytes: u64) {
        let wire = self.budget.wire.get();
        lock(&self.budget.inner).sent(self.id, last_id, bytes, Instant::now(), wire);
    }

    fn received(&self, through: u32) {
        lock(&self.budget.inner).received(self.id, through);
    }
}

impl Drop for BudgetLane<'_> {
    fn drop(&mut self) {
        lock(&self.budget.inner).closed(self.id);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a chunk stream stopped answering.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Our read of a batch of chunks failed (its task panicked): not the peer's doing, and not
    /// "not found" either, which would tell the peer we lack the chunks.
    #[error("reading chunk {hash} or another of its batch failed: {source}")]
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
    let lane = ctx.budget.as_ref().map(|b| BudgetLane::open(b, ctx.peer));
    let lane = lane.as_ref();
    let mut frame = Vec::new();
    while wire::read_frame_into(r, MAX_REQUEST_FRAME, &mut frame).await? {
        let batch = match wire::decode_lane_msg(&frame)? {
            LaneMsg::Ask(batch) => batch,
            LaneMsg::Received { through } => {
                if let Some(lane) = lane {
                    lane.received(through);
                }
                continue;
            }
        };
        // A batch is answered a reply frame's worth at a time: what a stream holds in memory
        // is one frame's chunks, however large the chunks a batch asks for.
        let mut start = 0;
        while start < batch.hashes.len() {
            let end = start + group_len(&ctx.content, &batch.hashes[start..]);
            let hashes = &batch.hashes[start..end];
            let replies = answer(ctx, lane, hashes).await?;
            let first_id = batch.first_id.wrapping_add(start as u32);
            if let Err(e) = send_replies(w, ctx, lane, first_id, &replies).await {
                unsent(ctx, hashes, &replies);
                return Err(e);
            }
            start = end;
        }
    }
    Ok(())
}

/// How many of `hashes` (at least one) to answer together: those whose chunks fit in
/// `REPLY_PACK_BYTES` together, by the lengths this node knows (a chunk it lacks costs nothing).
fn group_len(content: &Content, hashes: &[ContentHash]) -> usize {
    let mut bytes = 0usize;
    for (i, hash) in hashes.iter().enumerate() {
        bytes += content.len_of(hash).unwrap_or(0) as usize;
        if i > 0 && bytes > REPLY_PACK_BYTES {
            return i;
        }
    }
    hashes.len()
}

/// The answer to each of `hashes` for this peer: the bytes we serve, "not found" for those we
/// lack or hold back, "busy" while the upload budget is full. Reads that need the disk are
/// done together, on one blocking thread.
async fn answer(
    ctx: &ServerCtx,
    lane: Option<&BudgetLane<'_>>,
    hashes: &[ContentHash],
) -> Result<Vec<Answer<bytes::Bytes>>, ServeError> {
    let now = Instant::now();
    let busy = busy(ctx, lane, hashes, now);
    let mut replies = Vec::with_capacity(hashes.len());
    let mut from_disk = Vec::new();
    for (i, hash) in hashes.iter().enumerate() {
        if busy && !ctx.content.is_manifest_blob(hash) {
            Stats::add(&ctx.stats.chunks_refused_busy, 1);
            replies.push(Answer::Busy);
            continue;
        }
        if refused(ctx, hash, now) {
            replies.push(Answer::NotFound);
            continue;
        }
        match read_now(&ctx.content, hash) {
            Ok(data) => replies.push(found(data)),
            Err(_would_block) => {
                from_disk.push(i);
                replies.push(Answer::NotFound);
            }
        }
    }
    if !from_disk.is_empty() {
        let wanted: Vec<ContentHash> = from_disk.iter().map(|&i| hashes[i]).collect();
        let read = read_blocking(ctx.content.clone(), wanted).await?;
        for (i, data) in from_disk.into_iter().zip(read) {
            replies[i] = found(data);
        }
    }
    if ctx.corrupt {
        for answer in replies.iter_mut() {
            if let Answer::Chunk(data) = answer {
                *data = corrupted(std::mem::take(data));
            }
        }
    }
    Ok(replies)
}

/// The answer for a chunk read as `data` (`None`: we do not hold it).
fn found(data: Option<bytes::Bytes>) -> Answer<bytes::Bytes> {
    data.map_or(Answer::NotFound, Answer::Chunk)
}

/// Whether the upload budget refuses this group of requests: asked only if we hold a chunk of
/// it other than a manifest blob (every subscriber needs those first), so that a peer asking
/// for what we lack does not count as waiting.
fn busy(
    ctx: &ServerCtx,
    lane: Option<&BudgetLane<'_>>,
    hashes: &[ContentHash],
    now: Instant,
) -> bool {
    let Some(lane) = lane else {
        return false;
    };
    let held = hashes
        .iter()
        .any(|h| ctx.content.len_of(h).is_some() && !ctx.content.is_manifest_blob(h));
    held && !lane.may_send(now)
}

/// Whether the seeding policy holds `hash` back from this peer now. Manifest blobs are exempt:
/// every subscriber needs them before it can fetch anything, and serves them only once it has
/// verified them.
fn refused(ctx: &ServerCtx, hash: &ContentHash, now: Instant) -> bool {
    let Some(seed) = &ctx.seed else {
        return false;
    };
    if ctx.content.is_manifest_blob(hash) {
        return false;
    }
    let mut seed = lock(seed);
    let serve = seed.should_serve(&ctx.peer, *hash, now);
    tracing::trace!(peer = %ctx.peer, %hash, serve, "seed decision");
    !serve
}

/// The replies to `hashes` could not be sent: the seeding policy may give them to others.
fn unsent(ctx: &ServerCtx, hashes: &[ContentHash], replies: &[Answer<bytes::Bytes>]) {
    let Some(seed) = &ctx.seed else {
        return;
    };
    let mut seed = lock(seed);
    for (hash, _) in hashes
        .iter()
        .zip(replies)
        .filter(|(_, r)| r.chunk().is_some())
    {
        seed.unsent(&ctx.peer, hash);
    }
}

/// `data` with its first byte flipped (the danger_ option that serves corrupt chunks).
fn corrupted(data: bytes::Bytes) -> bytes::Bytes {
    if data.is_empty() {
        return data;
    }
    let mut bad = data.to_vec();
    bad[0] ^= 0xff;
    bytes::Bytes::from(bad)
}

/// Write `replies` to the requests from `first_id` on, consecutive small ones packed into one
/// frame up to `REPLY_PACK_BYTES` of chunk bytes, each frame paced by the upload limit.
async fn send_replies<W>(
    w: &mut W,
    ctx: &ServerCtx,
    lane: Option<&BudgetLane<'_>>,
    first_id: u32,
    replies: &[Answer<bytes::Bytes>],
) -> Result<(), ServeError>
where
    W: futures::AsyncWrite + Unpin,
{
    let mut start = 0;
    while start < replies.len() {
        let end = pack_end(replies, start);
        let frame = &replies[start..end];
        let chunks = || frame.iter().filter_map(Answer::chunk);
        let bytes: usize = chunks().map(|d| d.len()).sum();
        if let Some(bucket) = &ctx.upload {
            pace(bucket, bytes).await;
        }
        for d in chunks() {
            Stats::add(&ctx.stats.chunks_sent, 1);
            Stats::add(&ctx.stats.chunk_bytes_sent, d.len() as u64);
            ctx.stats.traffic.sent(ctx.peer, d.len() as u64);
        }
        let lens = frame
            .iter()
            .map(|a| a.as_ref().map(|d| d.len() as u32))
            .collect();
        let header = wire::encode_replies_header(first_id.wrapping_add(start as u32), lens);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(frame.len() + 1);
        parts.push(&header);
        parts.extend(chunks().map(|d| &d[..]));
        tokio::time::timeout(CHUNK_TIMEOUT, wire::write_frame_parts(w, &parts))
            .await
            .map_err(|_| WireError::Timeout("chunk reply write"))??;
        if let Some(lane) = lane {
            lane.sent(first_id.wrapping_add(end as u32 - 1), bytes as u64);
        }
        start = end;
    }
    Ok(())
}

/// The end of the reply frame that starts at `start`: replies follow while their chunk bytes
/// stay within `REPLY_PACK_BYTES`; the first always goes, however large.
fn pack_end(replies: &[Answer<bytes::Bytes>], start: usize) -> usize {
    let mut bytes = 0;
    let mut end = start;
    for data in &replies[start..] {
        let len = data.chunk().map_or(0, |d| d.len());
        if end > start && bytes + len > REPLY_PACK_BYTES {
            break;
        }
        bytes += len;
        end += 1;
    }
    end
}

/// The bytes of `hash` for a peer if that needs no disk I/O (see [`Content::read_now`]).
fn read_now(
    content: &Content,
    hash: &ContentHash,
) -> Result<Option<bytes::Bytes>, super::serve::WouldBlock> {
    #[cfg(test)]
    if tests::read_fails(hash) {
        return Err(super::serve::WouldBlock);
    }
    content.read_now(hash)
}

/// The bytes of each of `hashes`, read on one blocking thread.
async fn read_blocking(
    content: Content,
    hashes: Vec<ContentHash>,
) -> Result<Vec<Option<bytes::Bytes>>, ServeError> {
    let first = hashes[0];
    tokio::task::spawn_blocking(move || {
        #[cfg(test)]
        if hashes.iter().any(tests::read_fails) {
            panic!("a chunk read fails (test)");
        }
        hashes.iter().map(|h| content.read(h)).collect()
    })
    .await
    .map_err(|source| ServeError::Read {
        hash: first,
        source,
    })
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
/// Joins, leaves and requests for our full map come on their own unbounded queue so none is
/// ever lost (one entry per session event or control message, so their number is bounded by
/// session churn and the control flood limit); availability updates come on a bounded queue.
/// Each `Have` only adds to the last, so none may be lost unnoticed: the engine that cannot
/// queue one asks its sender for a full map, and the scheduler notices the gap in the
/// numbering too.
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
        have: Have,
    },
    /// `peer` asked for our full map of `revision`.
    SyncWanted {
        peer: PeerId,
        revision: u64,
    },
    Down(PeerId),
}

/// The chunk order of a revision, which `Have`s index into, and this node's own bits over it.
pub(crate) use crate::swarm::OwnAvailability as Availability;

enum LaneEvent {
    /// The replies of one frame, in order.
    Replies {
        lane: LaneId,
        replies: Vec<Reply>,
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

/// One reply of a frame.
struct Reply {
    hash: ContentHash,
    /// The verified and stored chunk's length, or what the peer said instead.
    answer: Answer<usize>,
    /// From sending the request to having the whole reply.
    latency: Duration,
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
    let started = Instant::now();
    let chunks = wanted.len() - present.len().min(wanted.len());
    debug!(chunks, "fetching chunks");
    let result = if f.sched.is_done() {
        Ok(())
    } else {
        f.run(feed, ev_rx, progress).await
    };
    let secs = started.elapsed().as_secs_f64();
    debug!(
        chunks,
        secs,
        per_sec = chunks as f64 / secs,
        ok = result.is_ok(),
        "fetch ended"
    );
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
        let mut carried = 0u32;
        while let Some(action) = self.sched.poll(now) {
            // Let the node's other tasks run between long runs of actions: a loop here once
            // froze whole nodes (see `Scheduler::poll`).
            carried += 1;
            if carried.is_multiple_of(256) {
                tokio::task::yield_now().await;
            }
            match action {
                Action::OpenLane { lane, peer } => self.open_lane(lane, peer),
                Action::CloseLane(lane) => {
                    self.lanes.remove(&lane);
                }
                Action::Request { lane, hash } => self.request(lane, hash),
                Action::PeersMayAsk(yes) => self.sink.peers_may_ask(yes),
                Action::Announce(msgs) => {
                    let sent = msgs
                        .into_iter()
                        .all(|m| self.ctx.net.broadcast(ControlMsg::Have(m)));
                    if !sent {
                        self.sched.handle_announce_dropped();
                    }
                }
                Action::SendHave { peer, msgs } => {
                    // One lost is asked for again (the peer sees no full map come).
                    for m in msgs {
                        if !self.ctx.net.send_to(peer, ControlMsg::Have(m)) {
                            break;
                        }
                    }
                }
                Action::AskSync { peer, revision } => {
                    self.ctx
                        .net
                        .send_to(peer, ControlMsg::HaveSync { revision });
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
            LaneEvent::Replies { lane, replies } => {
                for r in replies {
                    match r.answer {
                        Answer::Chunk(len) => self.sched.handle_reply(lane, r.hash, len, r.latency),
                        Answer::NotFound => self.sched.handle_not_found(lane, r.hash, now),
                        Answer::Busy => self.sched.handle_busy(lane, r.hash, now),
                    }
                }
            }
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
            PeerChange::Have { peer, have } => {
                // Joins come first (see `PeerFeed`), so an unknown peer has left.
                if feed.peers.contains_key(&peer) {
                    self.sched.handle_have(peer, &have, Instant::now());
                }
            }
            PeerChange::SyncWanted { peer, revision } => {
                self.sched.handle_sync_wanted(peer, revision);
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

    /// Send requests as they come, as many to a frame as are waiting, and read replies in
    /// order, concurrently. The replies of up to [`STORES_PER_LANE`] frames are verified and
    /// stored at once, on the blocking pool, while the next frame is read; they are reported
    /// in order.
    async fn pump<S>(
        &self,
        stream: S,
        mut requests: mpsc::Receiver<ContentHash>,
    ) -> Result<(), WireError>
    where
        S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin,
    {
        let (mut r, mut w) = stream.split();
        let (exp_tx, mut exp_rx) =
            mpsc::channel::<(u32, ContentHash, Instant)>(REQUESTS_PER_STREAM);
        // The last request id whose reply frame the reader has read, for the writer to
        // acknowledge (the server's upload budget): only the newest matters.
        let (ack_tx, mut ack_rx) = tokio::sync::watch::channel(None::<u32>);
        let writer = async move {
            let mut next_id = 0u32;
            let mut batch = Vec::with_capacity(MAX_CHUNKS_PER_FRAME);
            let mut acks = true;
            loop {
                let hash = tokio::select! {
                    hash = requests.recv() => hash,
                    changed = ack_rx.changed(), if acks => {
                        acks = changed.is_ok();
                        let through = *ack_rx.borrow_and_update();
                        if let Some(through) = through {
                            wire::write_frame(&mut w, &wire::encode_received(through)).await?;
                        }
                        continue;
                    }
                };
                let Some(hash) = hash else { break };
                batch.push(hash);
                while batch.len() < MAX_CHUNKS_PER_FRAME {
                    let Ok(hash) = requests.try_recv() else { break };
                    batch.push(hash);
                }
                let first_id = next_id;
                let sent = Instant::now();
                for (i, hash) in batch.iter().enumerate() {
                    let id = first_id.wrapping_add(i as u32);
                    if exp_tx.send((id, *hash, sent)).await.is_err() {
                        return Ok(());
                    }
                }
                next_id = first_id.wrapping_add(batch.len() as u32);
                wire::write_frame(&mut w, &wire::encode_requests(first_id, &batch)).await?;
                batch.clear();
            }
            Ok::<(), WireError>(())
        };
        // Frames being stored, in order, to the reporter; and their buffers back, for reuse.
        let (stored_tx, mut stored_rx) = mpsc::channel(STORES_PER_LANE - 1);
        let (spare_tx, mut spare_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let reader = async move {
            // Read only while a reply is awaited: an idle lane waits for its next request.
            while let Some(first) = exp_rx.recv().await {
                // A buffer a stored frame gave back: no fresh memory to fault in per frame.
                let mut frame = spare_rx.try_recv().unwrap_or_default();
                let more = tokio::time::timeout(
                    CHUNK_TIMEOUT,
                    wire::read_frame_into(&mut r, MAX_CHUNK_FRAME, &mut frame),
                )
                .await
                .map_err(|_| WireError::Timeout("chunk reply"))??;
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
                let first_id = first.0;
                let asked = match match_replies(&frame, first, &mut exp_rx) {
                    Ok(asked) => asked,
                    Err(reason) => {
                        // Reported after the frames before it.
                        let _ = stored_tx.send(Stored::Bad(reason)).await;
                        return Ok(());
                    }
                };
                ack_tx.send_replace(Some(first_id.wrapping_add(asked.len() as u32 - 1)));
                let received = Instant::now();
                let sink = self.sink.clone();
                let storing =
                    tokio::task::spawn_blocking(move || check_and_store(&*sink, &asked, frame));
                if stored_tx
                    .send(Stored::Frame(storing, received))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(())
        };
        let reporter = async move {
            while let Some(stored) = stored_rx.recv().await {
                let (storing, received) = match stored {
                    Stored::Frame(storing, received) => (storing, received),
                    Stored::Bad(reason) => {
                        self.bad(reason).await;
                        return Ok(());
                    }
                };
                let (keep_going, buf) = self.on_replies(storing.await, received).await;
                let _ = spare_tx.send(buf);
                if !keep_going {
                    return Ok(());
                }
            }
            Ok(())
        };
        // The reader ending (no more requests) lets the reporter report what is being stored;
        // the reporter ending (a bad reply, a store error) ends the lane.
        let replies = async {
            tokio::pin!(reader, reporter);
            tokio::select! {
                r = &mut reporter => r,
                // The frames read before a read failed are reported before it.
                r = &mut reader => {
                    let reported = reporter.await;
                    r.and(reported)
                }
            }
        };
        let result = tokio::select! {
            r = writer => r,
            r = replies => r,
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

    /// Report the replies of one frame, `received` then and verified and stored by `joined`;
    /// false ends the lane. The frame's buffer comes back for the next one.
    async fn on_replies(
        &self,
        joined: Result<(Checked, Vec<u8>), tokio::task::JoinError>,
        received: Instant,
    ) -> (bool, Vec<u8>) {
        let lane = self.lane;
        let (checked, frame) = match joined {
            Ok(checked) => checked,
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "checking chunks failed: closing the lane");
                return (false, Vec::new());
            }
        };
        let replies: Vec<Reply> = checked
            .good
            .into_iter()
            .map(|(hash, answer, sent)| Reply {
                hash,
                answer,
                latency: received.saturating_duration_since(sent),
            })
            .collect();
        for r in &replies {
            let Answer::Chunk(len) = r.answer else {
                continue;
            };
            Stats::add(&self.stats.chunks_fetched, 1);
            Stats::add(&self.stats.chunk_bytes_fetched, len as u64);
            self.stats.traffic.received(self.peer, len as u64);
        }
        if !replies.is_empty() {
            let _ = self.events.send(LaneEvent::Replies { lane, replies }).await;
        }
        let keep_going = match checked.end {
            None => true,
            Some(Stop::Mismatch(hash)) => {
                warn!(peer = %self.peer, %hash, "chunk failed verification: dropping the peer");
                self.bad(format!("chunk {hash} does not match its hash"))
                    .await
            }
            Some(Stop::Store(e)) => {
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

/// The request each reply of `frame` answers (hash and when it was sent), checked against
/// those outstanding, `first` and then the rest: a malformed frame, or a reply to a request
/// not made or not next in line, is an error naming it.
fn match_replies(
    frame: &[u8],
    first: (u32, ContentHash, Instant),
    outstanding: &mut mpsc::Receiver<(u32, ContentHash, Instant)>,
) -> Result<Vec<Asked>, String> {
    let replies = wire::decode_replies(frame).map_err(|e| e.to_string())?;
    let base = frame.as_ptr() as usize;
    let mut asked = Vec::with_capacity(replies.chunks.len());
    let mut next = Some(first);
    for (i, chunk) in replies.chunks.iter().enumerate() {
        let got = replies.first_id.wrapping_add(i as u32);
        let Some((id, hash, sent)) = next.take().or_else(|| outstanding.try_recv().ok()) else {
            return Err(format!("reply {got} to no request"));
        };
        if got != id {
            return Err(format!("reply {got} to request {id}"));
        }
        let span = chunk.map(|c| (c.as_ptr() as usize - base, c.len()));
        asked.push(Asked { hash, sent, span });
    }
    Ok(asked)
}

/// A reply frame of a lane, to report in order: being verified and stored (since it was
/// received then), or not matching the requests (why).
enum Stored {
    Frame(tokio::task::JoinHandle<(Checked, Vec<u8>)>, Instant),
    Bad(String),
}

/// A request a reply of a frame answers, and where its chunk's bytes are in the frame
/// (or what the peer said instead).
struct Asked {
    hash: ContentHash,
    sent: Instant,
    span: Answer<(usize, usize)>,
}

/// What checking a reply frame found: the replies verified and stored (or not found), in
/// order, and what stopped it early, if anything.
struct Checked {
    /// Each reply's hash, its chunk's length (or what the peer said instead), and when asked.
    good: Vec<(ContentHash, Answer<usize>, Instant)>,
    end: Option<Stop>,
}

enum Stop {
    /// A chunk that does not match its hash: nothing after it is kept.
    Mismatch(ContentHash),
    Store(StoreError),
}

/// Verify each chunk of a reply frame (already matched to `asked`) against its hash and hand
/// it to `sink`, in order, until one fails. Blocking. The verified bytes go to the sink as they
/// are, not copied; if it kept none of them, the frame's buffer comes back for the next read,
/// else a fresh one does.
fn check_and_store(sink: &dyn ChunkSink, asked: &[Asked], frame: Vec<u8>) -> (Checked, Vec<u8>) {
    let capacity = frame.len();
    let whole = bytes::Bytes::from(frame);
    let mut checked = Checked {
        good: Vec::with_capacity(asked.len()),
        end: None,
    };
    for a in asked {
        let (start, len) = match a.span.into_chunk() {
            Ok(span) => span,
            Err(none) => {
                checked.good.push((a.hash, none, a.sent));
                continue;
            }
        };
        let data = whole.slice(start..start + len);
        if !a.hash.matches(&data) {
            checked.end = Some(Stop::Mismatch(a.hash));
            break;
        }
        if let Err(e) = sink.accept(a.hash, data) {
            checked.end = Some(Stop::Store(e));
            break;
        }
        checked.good.push((a.hash, Answer::Chunk(len), a.sent));
    }
    let frame = whole
        .try_into_mut()
        .map(Vec::from)
        .unwrap_or_else(|_| Vec::with_capacity(capacity));
    (checked, frame)
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
        let ctx = server();
        let other = ContentHash::of(b"a chunk held in memory");
        ctx.content
            .remember(other, bytes::Bytes::from_static(b"a chunk held in memory"));
        let mut request = Vec::new();
        wire::write_frame(&mut request, &wire::encode_requests(7, &[other, hash]))
            .await
            .unwrap();
        let mut r = futures::io::Cursor::new(request);
        let mut w: Vec<u8> = Vec::new();
        let served = serve_loop(&mut r, &mut w, &ctx).await;
        assert!(w.is_empty(), "answered {} bytes: {served:?}", w.len());
        assert!(served.is_err(), "the stream ended cleanly");
    }

    fn server() -> ServerCtx {
        let (net, _net_rx) = mpsc::channel(1);
        ServerCtx {
            peer: PeerId::random(),
            content: Content::default(),
            stats: Arc::default(),
            net: NetHandle::new(net),
            corrupt: false,
            upload: None,
            seed: None,
            budget: None,
        }
    }

    /// The replies `serve_loop` wrote to `w`, one entry per request.
    async fn replies_in(w: &[u8]) -> Vec<Answer<Vec<u8>>> {
        let mut r = w;
        let mut out = Vec::new();
        while let Some(f) = wire::read_frame(&mut r, MAX_CHUNK_FRAME).await.unwrap() {
            let replies = wire::decode_replies(&f).unwrap();
            out.extend(replies.chunks.into_iter().map(|c| c.map(<[u8]>::to_vec)));
        }
        out
    }

    /// Two peers' streams share one upload budget: while one peer's chunk fills it and is not
    /// acknowledged, the other is told "busy"; once the first stream
    /// says the reply arrived, the other is served.
    #[tokio::test]
    async fn a_full_upload_budget_refuses_a_second_peer_until_the_first_acknowledges() {
        let shared = budget(1000, WireCounter::default()).unwrap();
        let big = bytes::Bytes::from(vec![7u8; 2000]);
        let small = bytes::Bytes::from(vec![8u8; 10]);
        let (first, second) = (server(), server());
        for ctx in [&first, &second] {
            ctx.content.remember(ContentHash::of(&big), big.clone());
            ctx.content.remember(ContentHash::of(&small), small.clone());
        }
        let first = ServerCtx {
            budget: Some(shared.clone()),
            ..first
        };
        let second = ServerCtx {
            budget: Some(shared.clone()),
            ..second
        };
        let in_flight = || lock(&shared.inner).in_flight();

        // The first peer's stream stays open, fed frame by frame.
        let (feed, frames) = futures::channel::mpsc::unbounded::<Vec<u8>>();
        let mut reader = futures::TryStreamExt::into_async_read(futures::StreamExt::map(
            frames,
            Ok::<_, std::io::Error>,
        ));
        let first_task = tokio::spawn(async move {
            let mut w: Vec<u8> = Vec::new();
            serve_loop(&mut reader, &mut w, &first).await.map(|()| w)
        });
        let frame = |body: Vec<u8>| {
            let mut f = Vec::new();
            futures::executor::block_on(wire::write_frame(&mut f, &body)).unwrap();
            f
        };
        feed.unbounded_send(frame(wire::encode_requests(5, &[ContentHash::of(&big)])))
            .unwrap();
        while in_flight() < 2000 {
            tokio::task::yield_now().await;
        }

        let ask_small = frame(wire::encode_requests(0, &[ContentHash::of(&small)]));
        let mut w = Vec::new();
        serve_loop(
            &mut futures::io::Cursor::new(ask_small.clone()),
            &mut w,
            &second,
        )
        .await
        .unwrap();
        assert_eq!(replies_in(&w).await, [Answer::Busy], "the budget is full");
        assert_eq!(second.stats.snapshot().chunks_refused_busy, 1);

        feed.unbounded_send(frame(wire::encode_received(5)))
            .unwrap();
        while in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        let mut w = Vec::new();
        serve_loop(&mut futures::io::Cursor::new(ask_small), &mut w, &second)
            .await
            .unwrap();
        assert_eq!(replies_in(&w).await, [Answer::Chunk(small.to_vec())]);

        drop(feed);
        let w = first_task.await.unwrap().unwrap();
        assert_eq!(
            replies_in(&w).await,
            [Answer::Chunk(big.to_vec())],
            "the lone asker was served"
        );
    }

    /// A batch of requests is answered in order; small chunks share a frame, a chunk over
    /// `REPLY_PACK_BYTES` travels alone, and "not found" rides along with the others.
    #[tokio::test]
    async fn a_batch_is_answered_in_order_with_small_chunks_packed_and_large_ones_alone() {
        let ctx = server();
        let chunk = |n: usize, b: u8| bytes::Bytes::from(vec![b; n]);
        let held = [
            chunk(300, 1),
            chunk(2000, 2),
            chunk(REPLY_PACK_BYTES + 1, 3),
            chunk(300, 4),
        ];
        for d in &held {
            ctx.content.remember(ContentHash::of(d), d.clone());
        }
        let missing = ContentHash::of(b"not held");
        let h = |i: usize| ContentHash::of(&held[i]);
        let asked = [h(0), missing, h(1), h(2), h(3)];
        let mut request = Vec::new();
        wire::write_frame(&mut request, &wire::encode_requests(u32::MAX, &asked))
            .await
            .unwrap();
        let mut w: Vec<u8> = Vec::new();
        serve_loop(&mut futures::io::Cursor::new(request), &mut w, &ctx)
            .await
            .unwrap();
        let mut r = &w[..];
        let mut frames = Vec::new();
        while let Some(f) = wire::read_frame(&mut r, MAX_CHUNK_FRAME).await.unwrap() {
            frames.push(f);
        }
        let replies: Vec<_> = frames
            .iter()
            .map(|f| wire::decode_replies(f).unwrap())
            .collect();
        let shape: Vec<(u32, usize)> = replies
            .iter()
            .map(|r| (r.first_id, r.chunks.len()))
            .collect();
        assert_eq!(shape, [(u32::MAX, 3), (2, 1), (3, 1)]);
        let got: Vec<Option<&[u8]>> = replies
            .iter()
            .flat_map(|r| r.chunks.iter().map(|a| a.chunk().copied()))
            .collect();
        let want = [
            Some(&held[0][..]),
            None,
            Some(&held[1]),
            Some(&held[2]),
            Some(&held[3]),
        ];
        assert_eq!(got, want);
        assert_eq!(
            ctx.stats
                .chunks_sent
                .load(std::sync::atomic::Ordering::Relaxed),
            4
        );
    }

    /// A tokio byte stream as a futures one (what a libp2p stream is).
    struct Compat(tokio::io::DuplexStream);

    impl futures::AsyncRead for Compat {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut read = tokio::io::ReadBuf::new(buf);
            match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.0), cx, &mut read) {
                std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(read.filled().len())),
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        }
    }

    impl futures::AsyncWrite for Compat {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            tokio::io::AsyncWrite::poll_write(std::pin::Pin::new(&mut self.0), cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_flush(std::pin::Pin::new(&mut self.0), cx)
        }
        fn poll_close(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            tokio::io::AsyncWrite::poll_shutdown(std::pin::Pin::new(&mut self.0), cx)
        }
    }

    /// A sink whose stores of `first` and `second` each wait (up to 5 s) for the other to have
    /// begun: both are stored only if they are stored at once. Records the chunks stored.
    struct MeetingSink {
        first: ContentHash,
        second: ContentHash,
        begun: std::sync::Mutex<HashSet<ContentHash>>,
        met: std::sync::Condvar,
        stored: std::sync::Mutex<Vec<ContentHash>>,
    }

    impl ChunkSink for MeetingSink {
        fn accept(&self, hash: ContentHash, _data: bytes::Bytes) -> Result<(), StoreError> {
            let other = if hash == self.first {
                self.second
            } else {
                self.first
            };
            let mut begun = self.begun.lock().unwrap();
            begun.insert(hash);
            self.met.notify_all();
            let (begun, waited) = self
                .met
                .wait_timeout_while(begun, Duration::from_secs(5), |b| !b.contains(&other))
                .unwrap();
            drop(begun);
            if waited.timed_out() {
                return Err(StoreError::Corrupt(format!(
                    "{hash} was stored alone: {other} did not begin meanwhile"
                )));
            }
            self.stored.lock().unwrap().push(hash);
            Ok(())
        }
        fn peers_may_ask(&self, _yes: bool) {}
    }

    /// A lane verifies and stores the next reply frame while one is being stored (a frame of
    /// small chunks, a file each, took longer to store than the next took to read), and
    /// reports the frames in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_stores_the_next_reply_frame_while_one_is_being_stored() {
        // Two chunks too big to share a reply frame.
        let chunk = |b: u8| bytes::Bytes::from(vec![b; REPLY_PACK_BYTES / 2 + 1]);
        let (a, b) = (chunk(1), chunk(2));
        let (ha, hb) = (ContentHash::of(&a), ContentHash::of(&b));
        let ctx = server();
        ctx.content.remember(ha, a);
        ctx.content.remember(hb, b);
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(async move {
            let (mut r, mut w) = Compat(theirs).split();
            serve_loop(&mut r, &mut w, &ctx).await
        });
        let sink = Arc::new(MeetingSink {
            first: ha,
            second: hb,
            begun: Default::default(),
            met: Default::default(),
            stored: Default::default(),
        });
        let (events, mut events_rx) = mpsc::channel(16);
        let (net, _net_rx) = mpsc::channel(1);
        let lane = Lane {
            lane: LaneId::for_test(7),
            peer: PeerId::random(),
            net: NetHandle::new(net),
            sink: sink.clone(),
            events,
            stats: Arc::default(),
            download: None,
        };
        let (requests, requests_rx) = mpsc::channel(4);
        requests.send(ha).await.unwrap();
        requests.send(hb).await.unwrap();
        let pumped = tokio::spawn(async move { lane.pump(Compat(ours), requests_rx).await });
        let mut reported = Vec::new();
        while reported.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(20), events_rx.recv())
                .await
                .expect("the lane reports")
            {
                Some(LaneEvent::Replies { lane, replies }) => {
                    assert_eq!(lane, LaneId::for_test(7));
                    reported.extend(replies.iter().map(|r| (r.hash, r.answer.chunk().copied())));
                }
                Some(LaneEvent::Failed(e)) => panic!("a store failed: {e}"),
                Some(LaneEvent::Bad { reason, .. }) => panic!("taken for a bad peer: {reason}"),
                Some(LaneEvent::Closed { .. }) | None => panic!("the lane ended"),
            }
        }
        let len = Some(REPLY_PACK_BYTES / 2 + 1);
        assert_eq!(reported, [(ha, len), (hb, len)], "reported in order");
        let mut stored = sink.stored.lock().unwrap().clone();
        stored.sort();
        let mut want = vec![ha, hb];
        want.sort();
        assert_eq!(stored, want);
        drop(requests);
        pumped.await.unwrap().unwrap();
        served.abort();
    }

    /// Each reply must answer the next request outstanding: a reply to a request not made, or
    /// out of order, is refused, as is a malformed frame.
    #[test]
    fn replies_must_answer_the_requests_outstanding_in_order() {
        let (a, b) = (ContentHash::of(b"a"), ContentHash::of(b"b"));
        let frame = |first, lens: Vec<Option<u32>>| {
            let lens = lens
                .into_iter()
                .map(|l| l.map_or(Answer::NotFound, Answer::Chunk))
                .collect();
            let mut f = wire::encode_replies_header(first, lens);
            f.extend_from_slice(b"ab");
            f
        };
        // Requests `ids` (for `a`, then `b`) outstanding: the first, and a queue of the rest.
        let matched = |f: Vec<u8>, ids: &[u32]| {
            let (tx, mut rx) = mpsc::channel(8);
            for (&id, hash) in ids[1..].iter().zip([b]) {
                tx.try_send((id, hash, Instant::now())).unwrap();
            }
            match_replies(&f, (ids[0], a, Instant::now()), &mut rx)
        };
        let asked = matched(frame(4, vec![Some(1), Some(1)]), &[4, 5]).unwrap();
        let spans: Vec<_> = asked
            .iter()
            .map(|x| (x.hash, x.span.chunk().copied()))
            .collect();
        let header = frame(4, vec![Some(1), Some(1)]).len() - 2;
        assert_eq!(spans, [(a, Some((header, 1))), (b, Some((header + 1, 1)))]);
        let two = vec![Some(1), Some(1)];
        assert!(
            matched(frame(4, two.clone()), &[4]).is_err(),
            "one too many"
        );
        assert!(matched(frame(5, two), &[4, 5]).is_err(), "out of order");
        let bad = frame(4, vec![Some(2), Some(1)]);
        assert!(matched(bad, &[4, 5]).is_err(), "lengths over the body");
    }
}
