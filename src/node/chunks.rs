//! Chunk streams: the server side (answer requests in order) and the fetch side (pipelined
//! lanes to each peer, driven by the sans-IO [`Picker`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncReadExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::net_loop::NetCommand;
use super::serve::Content;
use super::Stats;
use crate::config::{
    CHUNK_STREAMS_PER_PEER, CHUNK_TIMEOUT, MAX_CHUNK_FRAME, REQUESTS_PER_STREAM,
    STREAM_OPEN_TIMEOUT,
};
use crate::store::StoreError;
use crate::swarm::{Picker, PickerConfig};
use crate::tree::ContentHash;
use crate::wire::{self, ChunkRequest, WireError, CHUNKS_PROTOCOL};

/// Largest chunk request frame.
const MAX_REQUEST_FRAME: usize = 256;

/// What a chunk server needs.
pub(crate) struct ServerCtx {
    pub peer: PeerId,
    pub content: Content,
    pub stats: Arc<Stats>,
    pub net: mpsc::Sender<NetCommand>,
    pub corrupt: bool,
}

/// Answer chunk requests on one stream until it closes.
pub(crate) async fn serve(stream: Stream, ctx: ServerCtx) {
    let peer = ctx.peer;
    let (mut r, mut w) = stream.split();
    if let Err(e) = serve_loop(&mut r, &mut w, &ctx).await {
        if e.is_hostile() {
            warn!(%peer, error = %e, "hostile chunk request: banning");
            Stats::add(&ctx.stats.hostile_frames, 1);
            let _ = ctx
                .net
                .send(NetCommand::Ban {
                    peer,
                    reason: e.to_string(),
                })
                .await;
        } else {
            debug!(%peer, error = %e, "chunk stream closed");
        }
    }
}

async fn serve_loop<R, W>(r: &mut R, w: &mut W, ctx: &ServerCtx) -> Result<(), WireError>
where
    R: futures::AsyncRead + Unpin,
    W: futures::AsyncWrite + Unpin,
{
    while let Some(frame) = wire::read_frame(r, MAX_REQUEST_FRAME).await? {
        let req: ChunkRequest = wire::decode(&frame)?;
        let index = ctx.content.current();
        let hash = req.hash;
        let mut data = tokio::task::spawn_blocking(move || index.read(&hash))
            .await
            .ok()
            .flatten();
        if ctx.corrupt {
            if let Some(d) = data.as_mut().filter(|d| !d.is_empty()) {
                d[0] ^= 0xff;
            }
        }
        if let Some(d) = &data {
            Stats::add(&ctx.stats.chunks_sent, 1);
            Stats::add(&ctx.stats.chunk_bytes_sent, d.len() as u64);
        }
        let reply = wire::encode_reply(req.id, data.as_deref());
        tokio::time::timeout(CHUNK_TIMEOUT, wire::write_frame(w, &reply))
            .await
            .map_err(|_| WireError::Timeout("chunk reply write"))??;
    }
    Ok(())
}

/// Where verified chunks go.
pub(crate) trait ChunkSink: Send + Sync + 'static {
    /// Store `data`, already verified against `hash`. Blocking.
    fn accept(&self, hash: ContentHash, data: &[u8]) -> Result<(), StoreError>;
}

/// Why a fetch stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("cancelled")]
    Cancelled,
    #[error("storing a chunk: {0}")]
    Store(#[from] StoreError),
}

/// Peers that can serve the target, and changes to that set.
pub(crate) struct PeerFeed {
    pub peers: HashSet<PeerId>,
    pub changes: mpsc::Receiver<PeerChange>,
}

/// A change to the set of peers to fetch from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PeerChange {
    Up(PeerId),
    Down(PeerId),
}

enum LaneEvent {
    Verified {
        lane: LaneKey,
        hash: ContentHash,
        len: usize,
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
    pub net: mpsc::Sender<NetCommand>,
    pub stats: Arc<Stats>,
    pub cancel: CancellationToken,
}

/// Fetch every hash in `wanted` not in `present` from the peers in `feed`, handing verified
/// bytes to `sink`. `progress` is told the verified byte count as it grows.
pub(crate) async fn fetch_all(
    ctx: &FetchCtx,
    wanted: Vec<(ContentHash, u32)>,
    present: &HashSet<ContentHash>,
    sink: Arc<dyn ChunkSink>,
    feed: &mut PeerFeed,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), FetchError> {
    let config = PickerConfig {
        max_in_flight: REQUESTS_PER_STREAM,
        stall_timeout: CHUNK_TIMEOUT,
    };
    let mut picker: Picker<LaneKey> = Picker::new(config, wanted.iter().map(|w| w.0), present);
    if picker.is_done() {
        return Ok(());
    }
    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    let mut lanes: HashMap<LaneKey, mpsc::Sender<ContentHash>> = HashMap::new();
    for peer in feed.peers.clone() {
        open_lanes(ctx, peer, &sink, &ev_tx, &mut lanes);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut done_bytes: u64 = 0;
    loop {
        let now = Instant::now();
        for (key, tx) in &lanes {
            while let Some(h) = picker.next_for(key, now) {
                if tx.try_send(h).is_err() {
                    picker.on_failed(key, h);
                    break;
                }
            }
        }
        if picker.is_done() {
            return Ok(());
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(FetchError::Cancelled),
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { return Err(FetchError::Cancelled) };
                match ev {
                    LaneEvent::Verified { lane, hash, len } => {
                        if !picker.is_verified(&hash) {
                            done_bytes += len as u64;
                            progress(done_bytes);
                        }
                        picker.on_verified(&lane, hash);
                    }
                    LaneEvent::NotFound { lane, hash } => {
                        for l in 0..CHUNK_STREAMS_PER_PEER {
                            picker.on_not_found(&(lane.0, l), hash);
                        }
                    }
                    LaneEvent::Bad { lane, reason } => {
                        Stats::add(&ctx.stats.bad_chunks, 1);
                        drop_peer(&mut picker, &mut lanes, lane.0);
                        feed.peers.remove(&lane.0);
                        let _ = ctx.net.send(NetCommand::Ban { peer: lane.0, reason }).await;
                    }
                    LaneEvent::Closed { lane } => {
                        picker.on_peer_gone(&lane);
                        lanes.remove(&lane);
                    }
                    LaneEvent::Failed(e) => return Err(e.into()),
                }
            }
            change = feed.changes.recv() => match change {
                Some(PeerChange::Up(peer)) => {
                    if feed.peers.insert(peer) {
                        open_lanes(ctx, peer, &sink, &ev_tx, &mut lanes);
                    }
                }
                Some(PeerChange::Down(peer)) => {
                    feed.peers.remove(&peer);
                    drop_peer(&mut picker, &mut lanes, peer);
                }
                None => return Err(FetchError::Cancelled),
            },
            _ = tick.tick() => {
                for (lane, hash) in picker.poll_stalled(Instant::now()) {
                    debug!(peer = %lane.0, %hash, "chunk request stalled: re-issuing elsewhere");
                }
            }
        }
    }
}

fn drop_peer(
    picker: &mut Picker<LaneKey>,
    lanes: &mut HashMap<LaneKey, mpsc::Sender<ContentHash>>,
    peer: PeerId,
) {
    for l in 0..CHUNK_STREAMS_PER_PEER {
        picker.on_peer_gone(&(peer, l));
        lanes.remove(&(peer, l));
    }
}

fn open_lanes(
    ctx: &FetchCtx,
    peer: PeerId,
    sink: &Arc<dyn ChunkSink>,
    events: &mpsc::Sender<LaneEvent>,
    lanes: &mut HashMap<LaneKey, mpsc::Sender<ContentHash>>,
) {
    for l in 0..CHUNK_STREAMS_PER_PEER {
        let (tx, rx) = mpsc::channel(REQUESTS_PER_STREAM);
        lanes.insert((peer, l), tx);
        let lane = Lane {
            key: (peer, l),
            net: ctx.net.clone(),
            sink: sink.clone(),
            events: events.clone(),
            stats: ctx.stats.clone(),
        };
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = lane.run(rx) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

struct Lane {
    key: LaneKey,
    net: mpsc::Sender<NetCommand>,
    sink: Arc<dyn ChunkSink>,
    events: mpsc::Sender<LaneEvent>,
    stats: Arc<Stats>,
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
        let (reply, rx) = oneshot::channel();
        self.net
            .send(NetCommand::OpenStream {
                peer: self.key.0,
                protocol: StreamProtocol::new(CHUNKS_PROTOCOL),
                reply,
            })
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
        let (exp_tx, mut exp_rx) = mpsc::channel::<(u32, ContentHash)>(REQUESTS_PER_STREAM * 2);
        let writer = async move {
            let mut id = 0u32;
            while let Some(hash) = requests.recv().await {
                id = id.wrapping_add(1);
                if exp_tx.send((id, hash)).await.is_err() {
                    break;
                }
                wire::write_frame(&mut w, &wire::encode(&ChunkRequest { id, hash })).await?;
            }
            Ok::<(), WireError>(())
        };
        let reader = async {
            while let Some((id, hash)) = exp_rx.recv().await {
                let frame =
                    tokio::time::timeout(CHUNK_TIMEOUT, wire::read_frame(&mut r, MAX_CHUNK_FRAME))
                        .await
                        .map_err(|_| WireError::Timeout("chunk reply"))??
                        .ok_or(WireError::Decode("stream ended mid-request".into()))?;
                if !self.on_reply(id, hash, frame).await {
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

    /// Handle one reply; false ends the lane.
    async fn on_reply(&self, id: u32, hash: ContentHash, frame: Vec<u8>) -> bool {
        let lane = self.key;
        let (header, _) = match wire::decode_reply(&frame) {
            Ok(x) => x,
            Err(e) => return self.bad(e.to_string()).await,
        };
        if header.id != id {
            return self
                .bad(format!("reply {} to request {id}", header.id))
                .await;
        }
        if !header.found {
            let _ = self.events.send(LaneEvent::NotFound { lane, hash }).await;
            return true;
        }
        let sink = self.sink.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let (_, data) = wire::decode_reply(&frame).expect("decoded above");
            if !hash.matches(data) {
                return Ok(None);
            }
            sink.accept(hash, data).map(|()| Some(data.len()))
        })
        .await;
        match verdict {
            Ok(Ok(Some(len))) => {
                Stats::add(&self.stats.chunks_fetched, 1);
                Stats::add(&self.stats.chunk_bytes_fetched, len as u64);
                let _ = self
                    .events
                    .send(LaneEvent::Verified { lane, hash, len })
                    .await;
                true
            }
            Ok(Ok(None)) => {
                warn!(peer = %lane.0, %hash, "chunk failed verification: dropping the peer");
                self.bad(format!("chunk {hash} does not match its hash"))
                    .await
            }
            Ok(Err(e)) => {
                let _ = self.events.send(LaneEvent::Failed(e)).await;
                false
            }
            Err(_) => false,
        }
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
