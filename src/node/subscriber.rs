//! The subscriber engine: learn heads, verify them against the pinned key, fetch and apply the
//! newest revision, and keep serving what it holds.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libp2p::PeerId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::applied::{load_applied, Applied};
use super::chunks::{
    fetch_all, Availability, ChunkSink, FeedPeer, FetchCtx, FetchError, PeerChange, PeerFeed,
};
use super::error::NodeError;
use super::events::{EventReceiver, PeerEvent};
use super::handle::{start_services, NodeHandle};
use super::net_loop;
use super::serve::{file_checks, Content};
use super::status::{Stats, Status};
use super::swarm_handle::{LocalInfo, NetHandle};
use crate::config::{NodeConfig, MAX_MANIFEST_SIZE};
use crate::store::{apply_revision, ChunkPositions, Db, StagingArea, StoreError};
use crate::store::{local_changes, LocalChanges};
use crate::tree::{chunk_reader, ChunkRef, ContentHash, FileRecord, Manifest, RelPath};
use crate::trust::{load_or_create_node_key, Lineage, SignedHead, Ticket, VerifiedHead};
use crate::wire::{ControlMsg, Role};

/// Why a download did not produce a revision.
#[derive(Debug, thiserror::Error)]
enum DownloadError {
    #[error("cancelled")]
    Cancelled,
    #[error("revision {revision} rejected: {reason}")]
    Rejected { revision: u64, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<FetchError> for DownloadError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Cancelled => DownloadError::Cancelled,
            FetchError::Store(s) => DownloadError::Store(s),
        }
    }
}

struct Download {
    revision: u64,
    cancel: CancellationToken,
    members: mpsc::UnboundedSender<PeerChange>,
    changes: mpsc::Sender<PeerChange>,
    task: JoinHandle<Result<Applied, DownloadError>>,
}

/// What the engine knows of a connected peer.
#[derive(Debug, Clone)]
struct KnownPeer {
    /// Newest verified revision it holds completely.
    revision: u64,
    role: Role,
    /// Its latest availability bitfield and the revision it is for.
    have: Option<(u64, Vec<u8>)>,
}

impl KnownPeer {
    fn feed(&self, target: u64) -> FeedPeer {
        FeedPeer {
            complete: self.revision == target,
            last_resort: self.role == Role::Publisher,
            have: self.have.clone(),
        }
    }
}

struct Subscriber {
    dir: PathBuf,
    db: Arc<Db>,
    /// The pinned key and the handovers followed since.
    lineage: Lineage,
    swarm_id: uuid::Uuid,
    content: Content,
    stats: Arc<Stats>,
    net: NetHandle,
    status: watch::Sender<Status>,
    applied: Option<Applied>,
    best: Option<VerifiedHead>,
    failed: HashSet<u64>,
    peers: HashMap<PeerId, KnownPeer>,
    download: Option<Download>,
    cancel: CancellationToken,
    salt: u64,
    /// `--max-download`, shared by every download.
    download_limit: Option<super::chunks::Limiter>,
    /// The look for local changes under way, and the number of downloads finished when it
    /// began (a result is stale if one finished since).
    local_check: Option<(tokio::task::JoinHandle<LocalChanges>, u64)>,
    next_local_check: Instant,
    downloads_done: u64,
    /// After a local storage error: when to try the download again, and the next wait.
    store_retry_at: Option<Instant>,
    store_backoff: std::time::Duration,
}

/// First and longest wait before retrying a download that failed on local storage.
const STORE_RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(2);
const STORE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a running subscriber looks for local changes in its mirror.
const LOCAL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn start(mut config: NodeConfig, ticket: Ticket) -> Result<NodeHandle, NodeError> {
    let state = config.state_dir();
    crate::store::private_dir(&state)?;
    let db = Arc::new(Db::open(&state.join("state.redb"))?);
    let stored = db.state()?;
    if let Some(swarm) = stored.swarm_id.filter(|s| *s != ticket.swarm_id) {
        return Err(NodeError::Refused(format!(
            "{} already mirrors swarm {swarm}; refusing to mix in swarm {}",
            config.dir.display(),
            ticket.swarm_id
        )));
    }
    if let Some(pin) = stored
        .pinned_key
        .filter(|p| *p != ticket.publisher.to_bytes())
    {
        return Err(NodeError::Refused(format!(
            "the pinned publisher key of this mirror is {}, but the ticket names {}: refusing (a ticket can not change who signs this swarm)",
            data_encoding::HEXLOWER.encode(&pin),
            ticket.publisher
        )));
    }
    let saved_peers = state.join("peers").exists();
    if ticket.addrs.is_empty() && config.bootstrap.is_empty() && !saved_peers && !config.mdns {
        return Err(NodeError::Refused(
            "no way to find peers: the ticket has no addresses, there is no --bootstrap, no \
             peer table saved from an earlier run, and mDNS is off"
                .into(),
        ));
    }
    db.set_identity(ticket.swarm_id, ticket.publisher.to_bytes())?;
    let node_key = load_or_create_node_key(&state.join("node.key"))?;
    let stats = Arc::new(Stats::default());
    let content = Content::default();
    let mut lineage = Lineage::new(ticket.publisher);
    lineage.extend(&stored.lineage, ticket.swarm_id);
    if lineage.extend(&config.succession, ticket.swarm_id) {
        db.set_lineage(lineage.links())?;
    }
    let checks = file_checks(&db.file_index()?);
    let applied = load_applied(&db, &stored, &lineage, ticket.swarm_id, checks)?;
    if let Some(a) = &applied {
        content.replace(a.serve_index(&config.dir));
    }
    let status = Status {
        revision: applied.as_ref().map(|a| a.head.revision()),
        newest_known: applied.as_ref().map(|a| a.head.revision()),
        ..Status::default()
    };
    let (status_tx, status_rx) = watch::channel(status);
    config.bootstrap.extend(ticket.addrs.iter().cloned());
    let local = LocalInfo {
        node_id: uuid::Uuid::new_v4(),
        swarm_id: ticket.swarm_id,
        role: Role::Subscriber,
        addrs: Vec::new(),
        publisher: Some(ticket.publisher.to_bytes()),
    };
    let started = net_loop::start(&config, node_key, local, content.clone(), stats.clone()).await?;
    let engine = Subscriber {
        dir: config.dir.clone(),
        db: db.clone(),
        lineage,
        swarm_id: ticket.swarm_id,
        content,
        stats: stats.clone(),
        net: started.net.clone(),
        status: status_tx,
        best: applied.as_ref().map(|a| a.head.clone()),
        applied,
        failed: HashSet::new(),
        peers: HashMap::new(),
        download: None,
        cancel: started.cancel.child_token(),
        salt: {
            let mut b = [0u8; 8];
            b.copy_from_slice(&ContentHash::of(&started.peer_id.to_bytes()).0[..8]);
            u64::from_le_bytes(b)
        },
        download_limit: config.max_download.map(super::chunks::limiter),
        local_check: None,
        next_local_check: Instant::now(),
        downloads_done: 0,
        store_retry_at: None,
        store_backoff: STORE_RETRY_MIN,
    };
    let own_ticket = Ticket {
        addrs: started.listen_addrs.clone(),
        ..ticket.clone()
    };
    let ticket_path = state.join("ticket");
    std::fs::write(&ticket_path, format!("{own_ticket}\n"))
        .map_err(crate::store::io_err(&ticket_path))?;
    let mut tasks = started.tasks;
    let reporter = super::report::Reporter {
        role: Role::Subscriber,
        dir: config.dir.clone(),
        swarm_id: ticket.swarm_id,
        peer_id: started.peer_id,
        publisher: ticket.publisher,
        net: started.net.clone(),
        status: status_rx.clone(),
        stats: stats.clone(),
        started: std::time::Instant::now(),
    };
    let metrics_addr = start_services(&config, &reporter, &mut tasks, &started.cancel).await?;
    tasks.spawn(engine.run(started.events, config.connect_timeout));
    Ok(NodeHandle {
        net: started.net,
        publisher: None,
        status: status_rx,
        stats,
        cancel: started.cancel,
        tasks,
        peer_id: started.peer_id,
        listen_addrs: started.listen_addrs,
        ticket,
        db,
        dir: config.dir,
        reporter,
        metrics_addr,
    })
}

impl Subscriber {
    async fn run(mut self, mut events: EventReceiver, connect_timeout: std::time::Duration) {
        let began = Instant::now();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                ev = events.recv() => match ev {
                    Some(ev) => self.on_peer_event(ev).await,
                    None => break,
                },
                res = async { (&mut self.download.as_mut().expect("guarded").task).await },
                    if self.download.is_some() => {
                    self.download = None;
                    self.downloads_done += 1;
                    self.on_download_done(res);
                }
                res = async { (&mut self.local_check.as_mut().expect("guarded").0).await },
                    if self.local_check.is_some() => {
                    let (_, began_at) = self.local_check.take().expect("guarded");
                    Stats::add(&self.stats.local_checks, 1);
                    if let Ok(changes) = res {
                        if began_at == self.downloads_done && self.download.is_none() {
                            self.on_local_changes(changes).await;
                        }
                    }
                }
                _ = tick.tick() => {
                    self.maybe_retry_store();
                    self.maybe_check_local();
                    let seen = self.status.borrow().peers_seen;
                    if seen == 0 && began.elapsed() > connect_timeout {
                        let secs = connect_timeout.as_secs();
                        let lookups = self.stats.snapshot().dht_lookups;
                        let msg = if lookups > 0 {
                            format!("no peer reachable after {secs}s: the DHT answered, but {lookups} lookups found no peer of swarm {}", self.swarm_id)
                        } else {
                            format!("no peer reachable after {secs}s")
                        };
                        self.status.send_if_modified(|s| {
                            let changed = s.error.as_deref() != Some(msg.as_str());
                            s.error = Some(msg.clone());
                            changed
                        });
                    }
                }
            }
        }
        if let Some(d) = self.download.take() {
            d.cancel.cancel();
            let _ = d.task.await;
        }
    }

    async fn on_peer_event(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::Up { peer, hello, .. } => {
                info!(%peer, role = ?hello.role, "peer joined");
                // The hello names the revision the peer holds completely; it is verified below
                // before anything is fetched on its word.
                let held = hello
                    .head
                    .clone()
                    .and_then(|h| self.lineage.verify(h, self.swarm_id).ok())
                    .map_or(0, |h| h.revision());
                let known = KnownPeer {
                    revision: held,
                    role: hello.role,
                    have: None,
                };
                self.peers.insert(peer, known);
                self.tell_download(peer);
                self.status.send_modify(|s| {
                    s.peers = self.peers.len();
                    s.peers_seen += 1;
                    if s.error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("no peer") || e.contains("protocol version"))
                    {
                        s.error = None;
                    }
                });
                if let Some(head) = hello.head {
                    self.consider(peer, head).await;
                }
                self.update_synced();
            }
            PeerEvent::Head { peer, head } => self.consider(peer, head).await,
            PeerEvent::Down { peer, .. } => {
                info!(%peer, "peer left");
                self.peers.remove(&peer);
                self.status.send_modify(|s| s.peers = self.peers.len());
                if let Some(d) = &self.download {
                    let _ = d.members.send(PeerChange::Down(peer));
                }
            }
            PeerEvent::Have {
                peer,
                revision,
                bitfield,
            } => {
                // Only from a peer in session: a late bitfield must not bring back one that left.
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                p.have = Some((revision, bitfield.clone()));
                if let Some(d) = &self.download {
                    let change = PeerChange::Have {
                        peer,
                        revision,
                        bitfield,
                    };
                    let _ = d.changes.try_send(change);
                }
            }
            PeerEvent::Complete { peer, revision } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.revision = p.revision.max(revision);
                }
                self.tell_download(peer);
            }
            PeerEvent::Peers { .. } => {}
            PeerEvent::Incompatible { peer, ours, theirs } => {
                if self.peers.is_empty() {
                    self.status.send_modify(|s| {
                        s.error = Some(format!(
                            "peer {peer} speaks protocol version {theirs}, this node speaks {ours}"
                        ))
                    });
                }
            }
        }
    }

    fn applied_revision(&self) -> u64 {
        self.applied.as_ref().map_or(0, |a| a.head.revision())
    }

    /// A head arrived from `peer`: verify it, and retarget if it is the newest.
    async fn consider(&mut self, peer: PeerId, head: SignedHead) {
        match self.lineage.follow(&head.succession, self.swarm_id) {
            Ok(false) => {}
            Ok(true) => {
                info!(
                    to = %super::report::fingerprint(&self.lineage.current()),
                    from_revision = self.lineage.since(),
                    "the publisher handed this swarm over to a new key: following it"
                );
                if let Err(e) = self.db.set_lineage(self.lineage.links()) {
                    error!(error = %e, "could not record the handover");
                }
            }
            Err(e) => return self.reject(peer, e).await,
        }
        let signer = head.body.signer;
        // Verified, the head carries only the handovers from the pinned key to its signer.
        let head = match self.lineage.verify(head, self.swarm_id) {
            Ok(h) => h,
            Err(e) if self.lineage.is_earlier_key(&signer) => {
                // Signed by a key this swarm was handed over from: outdated, not forged (a
                // lagging peer, or the old publisher). Not applied.
                Stats::add(&self.stats.heads_stale, 1);
                tracing::debug!(%peer, error = %e, "ignoring a head signed by a former publisher key");
                return;
            }
            Err(e) => return self.reject(peer, e).await,
        };
        let rev = head.revision();
        if rev < self.applied_revision() {
            Stats::add(&self.stats.heads_stale, 1);
            tracing::debug!(%peer, rev, "ignoring an older revision (replay or lagging peer)");
            return;
        }
        let best = self.best.as_ref().map_or(0, |b| b.revision());
        if rev <= best || self.failed.contains(&rev) {
            return;
        }
        info!(%peer, revision = rev, "new revision announced");
        self.best = Some(head.clone());
        self.status.send_modify(|s| s.newest_known = Some(rev));
        self.net.broadcast(ControlMsg::Head(head.signed().clone()));
        self.start_download(head);
    }

    /// `peer` sent a forged head (or forged handover records with it): count it, ban the peer.
    async fn reject(&self, peer: PeerId, e: crate::trust::TrustError) {
        warn!(%peer, error = %e, "rejected a forged head: banning its sender");
        self.net.ban(peer, format!("forged head: {e}")).await;
        // Counted after the ban is queued: the count never runs ahead of the ban.
        Stats::add(&self.stats.heads_rejected, 1);
    }

    /// Retry a download that stopped on a local storage error, once its wait is over.
    fn maybe_retry_store(&mut self) {
        if self.download.is_some() || self.store_retry_at.is_none_or(|t| Instant::now() < t) {
            return;
        }
        self.store_retry_at = None;
        let target = self
            .best
            .clone()
            .filter(|b| b.revision() > self.applied_revision())
            .or_else(|| self.applied.as_ref().map(|a| a.head.clone()));
        if let Some(head) = target {
            info!(revision = head.revision(), "retrying the download");
            self.start_download(head);
        }
    }

    /// Start a look for local changes when one is due and nothing else touches the mirror.
    fn maybe_check_local(&mut self) {
        let Some(applied) = &self.applied else {
            return;
        };
        if self.download.is_some() || self.local_check.is_some() {
            return;
        }
        if Instant::now() < self.next_local_check {
            return;
        }
        self.next_local_check = Instant::now() + LOCAL_CHECK_EVERY;
        // Stopped while it put a newer revision in place: the files of it already there are
        // not local edits. The download of that revision (or a newer one) finishes the switch.
        if self.db.state().is_ok_and(|s| s.applying.is_some()) {
            Stats::add(&self.stats.local_checks, 1);
            return;
        }
        let (dir, db, manifest) = (self.dir.clone(), self.db.clone(), applied.manifest.clone());
        let task = tokio::task::spawn_blocking(move || {
            let index = db.file_index().unwrap_or_default();
            local_changes(&dir, &index, &manifest)
        });
        self.local_check = Some((task, self.downloads_done));
    }

    /// The mirror was changed locally: warn, move added files aside, and repair it by applying
    /// the held revision again (edited files are moved aside as it is applied).
    async fn on_local_changes(&mut self, changes: LocalChanges) {
        let Some(applied) = &self.applied else {
            return;
        };
        if changes.is_empty() {
            return;
        }
        let show = |v: &[String]| {
            let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(" and {} more", v.len() - 5));
            }
            s
        };
        warn!(
            edited = %show(&changes.edited),
            deleted = %show(&changes.deleted),
            added = %show(&changes.added),
            "the mirror is read-only: local changes found; moving edits and additions to .treecast/conflicts/ and repairing from peers"
        );
        Stats::add(&self.stats.local_changes, changes.count() as u64);
        let conflicts = self.dir.join(crate::config::STATE_DIR).join("conflicts");
        let (dir, added) = (self.dir.clone(), changes.added.clone());
        let moved = tokio::task::spawn_blocking(move || {
            for rel in &added {
                if let Err(e) = crate::store::move_to_conflicts(&dir, rel, &conflicts) {
                    error!(path = %rel, error = %e, "could not move a local addition aside");
                }
            }
        })
        .await;
        if moved.is_err() {
            return;
        }
        if !changes.edited.is_empty() || !changes.deleted.is_empty() {
            let head = applied.head.clone();
            self.start_download(head);
        }
    }

    /// Tell the download under way what we know of `peer`.
    fn tell_download(&self, peer: PeerId) {
        if let (Some(d), Some(p)) = (&self.download, self.peers.get(&peer)) {
            let _ = d.members.send(PeerChange::Up(peer, p.feed(d.revision)));
        }
    }

    fn start_download(&mut self, head: VerifiedHead) {
        if let Some(d) = self.download.take() {
            info!(
                from = d.revision,
                to = head.revision(),
                "retargeting to a newer revision"
            );
            d.cancel.cancel();
        }
        let (changes_tx, changes_rx) = mpsc::channel(64);
        let (members_tx, members_rx) = mpsc::unbounded_channel();
        let peers = self
            .peers
            .iter()
            .map(|(p, k)| (*p, k.feed(head.revision())))
            .collect();
        let cancel = self.cancel.child_token();
        let env = DownloadEnv {
            dir: self.dir.clone(),
            db: self.db.clone(),
            fetch: FetchCtx {
                net: self.net.clone(),
                stats: self.stats.clone(),
                cancel: cancel.clone(),
                salt: self.salt,
                download: self.download_limit.clone(),
            },
            status: self.status.clone(),
            old: self
                .applied
                .as_ref()
                .map(|a| a.manifest.clone())
                .unwrap_or_default(),
            content: self.content.clone(),
        };
        let feed = PeerFeed {
            peers,
            members: members_rx,
            changes: changes_rx,
        };
        let revision = head.revision();
        self.status.send_modify(|s| s.synced = false);
        let task = tokio::spawn(download(env, head, feed));
        self.download = Some(Download {
            revision,
            cancel,
            members: members_tx,
            changes: changes_tx,
            task,
        });
    }

    fn on_download_done(
        &mut self,
        res: Result<Result<Applied, DownloadError>, tokio::task::JoinError>,
    ) {
        match res {
            Ok(Ok(applied)) => {
                let rev = applied.head.revision();
                info!(revision = rev, "revision applied");
                self.store_backoff = STORE_RETRY_MIN;
                self.content.replace(applied.serve_index(&self.dir));
                self.applied = Some(applied);
                let notice = ControlMsg::Complete { revision: rev };
                self.net.broadcast(notice);
                self.status.send_modify(|s| {
                    s.revision = Some(rev);
                    s.progress = None;
                    s.error = None;
                });
            }
            Ok(Err(DownloadError::Cancelled)) => {}
            Ok(Err(DownloadError::Store(e))) => {
                // Local trouble (disk full, permissions): nothing was applied, verified chunks
                // stay staged; try again later rather than give the revision up.
                let wait = self.store_backoff;
                self.store_backoff = (wait * 2).min(STORE_RETRY_MAX);
                error!(error = %e, retry_in = ?wait, "cannot write the new revision to disk; the mirror is unchanged");
                self.store_retry_at = Some(Instant::now() + wait);
                let msg = format!("cannot write to disk: {e} (retrying)");
                self.status.send_modify(|s| s.error = Some(msg));
                return;
            }
            Ok(Err(e)) => {
                error!(error = %e, "download failed");
                if let Some(best) = &self.best {
                    self.failed.insert(best.revision());
                }
                self.best = self.applied.as_ref().map(|a| a.head.clone());
                self.status.send_modify(|s| s.error = Some(e.to_string()));
            }
            Err(e) => error!(error = %e, "download task panicked"),
        }
        if let Some(best) = self
            .best
            .clone()
            .filter(|b| b.revision() > self.applied_revision())
        {
            self.start_download(best);
        }
        self.update_synced();
    }

    fn update_synced(&mut self) {
        let synced = self.download.is_none()
            && self.applied.is_some()
            && self.best.as_ref().map(|b| b.revision()) == Some(self.applied_revision());
        self.status.send_if_modified(|s| {
            let changed = s.synced != (synced && s.peers_seen > 0);
            s.synced = synced && s.peers_seen > 0;
            changed
        });
    }
}

struct DownloadEnv {
    dir: PathBuf,
    db: Arc<Db>,
    fetch: FetchCtx,
    status: watch::Sender<Status>,
    old: Manifest,
    content: Content,
}

#[derive(Default)]
struct MemorySink(Mutex<HashMap<ContentHash, bytes::Bytes>>);

impl ChunkSink for MemorySink {
    fn accept(&self, hash: ContentHash, data: bytes::Bytes) -> Result<(), StoreError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, data);
        Ok(())
    }
}

impl MemorySink {
    fn take(&self, hash: &ContentHash) -> Option<Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash)
            .map(Vec::from)
    }
}

struct StagingSink {
    area: Arc<StagingArea>,
    positions: Arc<ChunkPositions>,
    content: Content,
    /// Keep verified chunks in memory for peers about to ask (see `ChunkSink::peers_may_ask`).
    remember: std::sync::atomic::AtomicBool,
}

impl ChunkSink for StagingSink {
    fn accept(&self, hash: ContentHash, data: bytes::Bytes) -> Result<(), StoreError> {
        let Some(places) = self.positions.get(&hash) else {
            return Ok(());
        };
        let check = self.area.write_chunk(&hash, places, &data)?;
        if self.remember.load(std::sync::atomic::Ordering::Relaxed) {
            self.content.remember(hash, data);
        }
        let (file, off, len) = places[0];
        // Verified and on disk: peers may fetch it from us while we download the rest.
        self.content
            .add_partial(hash, self.area.staged_path(&file), off, len, Some(check));
        Ok(())
    }

    fn peers_may_ask(&self, yes: bool) {
        self.remember
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Corrupt(format!("blocking task failed: {e}")))?
        .map_err(DownloadError::from)
}

/// Fetch, verify, stage and apply one revision.
async fn download(
    env: DownloadEnv,
    head: VerifiedHead,
    mut feed: PeerFeed,
) -> Result<Applied, DownloadError> {
    let revision = head.revision();
    let (manifest, blobs) = fetch_manifest(&env, &head, &mut feed).await?;
    info!(
        revision,
        files = manifest.files().count(),
        bytes = manifest.total_bytes(),
        "manifest verified"
    );
    let root = env.dir.clone();
    let index = env.db.file_index()?;
    let new = manifest.clone();
    let (plan, index) = blocking(move || Ok((plan(&root, &index, &new), index))).await?;
    let staging_dir = env.dir.join(crate::config::STATE_DIR).join("staging");
    let wanted = plan.wanted.clone();
    let (area, positions, mut present) =
        blocking(move || StagingArea::open(&staging_dir, &wanted)).await?;
    let area = Arc::new(area);
    let positions = Arc::new(positions);
    {
        let (a, p, sources) = (area.clone(), positions.clone(), plan.sources.clone());
        let already = present.clone();
        let copied = blocking(move || Ok(copy_local(&a, &p, &sources, &already))).await?;
        Stats::add(&env.fetch.stats.chunks_local, copied.len() as u64);
        present.extend(copied);
    }
    let needed: Vec<(ContentHash, u32)> = positions.iter().map(|(h, p)| (*h, p[0].2)).collect();
    let total: u64 = needed.iter().map(|(_, l)| *l as u64).sum();
    let base: u64 = needed
        .iter()
        .filter(|(h, _)| present.contains(h))
        .map(|(_, l)| *l as u64)
        .sum();
    env.status.send_modify(|s| s.progress = Some((base, total)));
    let status = env.status.clone();
    let progress = move |done: u64| status.send_modify(|s| s.progress = Some((base + done, total)));
    let sink = Arc::new(StagingSink {
        area: area.clone(),
        positions: positions.clone(),
        content: env.content.clone(),
        remember: true.into(),
    });
    for (hash, places) in positions.iter().filter(|(h, _)| present.contains(h)) {
        let (file, off, len) = places[0];
        env.content.add_partial(
            *hash,
            area.staged_path(&file),
            off,
            len,
            area.check_of(hash),
        );
    }
    let mut avail = Availability::new(revision, positions.keys().copied());
    fetch_all(
        &env.fetch,
        needed,
        &present,
        sink,
        &mut feed,
        Some(&mut avail),
        &progress,
    )
    .await?;
    info!(
        revision,
        bytes = total - base,
        "all chunks fetched and verified"
    );
    let hashes: Vec<ContentHash> = plan.wanted.iter().map(|w| w.0).collect();
    let a = area.clone();
    blocking(move || hashes.iter().try_for_each(|h| a.finish(h))).await?;
    info!(
        revision,
        files = plan.wanted.len(),
        "staged files verified and synced"
    );
    let (root, old, new, unchanged) = (
        env.dir.clone(),
        env.old.clone(),
        manifest.clone(),
        plan.unchanged,
    );
    let edited = plan.edited;
    let conflicts = env.dir.join(crate::config::STATE_DIR).join("conflicts");
    let a = area.clone();
    let db = env.db.clone();
    blocking(move || db.begin_apply(revision)).await?;
    let (mut records, stats) =
        blocking(move || apply_revision(&root, &a, &old, &new, &unchanged, &edited, &conflicts))
            .await?;
    keep_checks(&mut records, &index);
    info!(
        revision,
        installed = stats.installed,
        kept = stats.kept,
        removed = stats.removed,
        moved_aside = stats.moved_aside,
        "mirror updated"
    );
    let db = env.db.clone();
    let head_bytes = head.signed().encode();
    let stored_blobs = blobs.clone();
    let checks = Arc::new(file_checks(records.iter().map(|(p, r)| (p, r))));
    blocking(move || db.commit_revision(&head_bytes, &records, &stored_blobs)).await?;
    Ok(Applied {
        head,
        manifest,
        blobs,
        checks,
    })
}

/// Give the records of files an apply kept as they were the read checks `old` has for them.
fn keep_checks(records: &mut [(RelPath, FileRecord)], old: &HashMap<RelPath, FileRecord>) {
    for (path, rec) in records.iter_mut().filter(|(_, r)| r.checks.is_empty()) {
        if let Some(was) = old.get(path).filter(|was| was.hash == rec.hash) {
            rec.checks = was.checks.clone();
        }
    }
}

async fn fetch_manifest(
    env: &DownloadEnv,
    head: &VerifiedHead,
    feed: &mut PeerFeed,
) -> Result<(Manifest, Vec<(ContentHash, Vec<u8>)>), DownloadError> {
    let body = head.body().clone();
    let reject = |reason: String| DownloadError::Rejected {
        revision: body.revision,
        reason,
    };
    if body.manifest_size > MAX_MANIFEST_SIZE {
        return Err(reject(format!(
            "manifest of {} bytes is over the cap",
            body.manifest_size
        )));
    }
    let mem = Arc::new(MemorySink::default());
    let none = HashSet::new();
    let quiet = |_| {};
    fetch_all(
        &env.fetch,
        vec![(body.manifest_index_hash, 0)],
        &none,
        mem.clone(),
        feed,
        None,
        &quiet,
    )
    .await?;
    let index_bytes = mem
        .take(&body.manifest_index_hash)
        .ok_or_else(|| reject("manifest index missing".into()))?;
    let index: Vec<ChunkRef> =
        postcard::from_bytes(&index_bytes).map_err(|e| reject(format!("manifest index: {e}")))?;
    if index.iter().map(|c| c.len as u64).sum::<u64>() != body.manifest_size {
        return Err(reject(
            "manifest index does not add up to the manifest size".into(),
        ));
    }
    let wanted = index.iter().map(|c| (c.hash, c.len)).collect();
    fetch_all(&env.fetch, wanted, &none, mem.clone(), feed, None, &quiet).await?;
    let mut bytes = Vec::with_capacity(body.manifest_size as usize);
    let mut blobs = vec![(body.manifest_index_hash, index_bytes)];
    let mut chunks: HashMap<ContentHash, Vec<u8>> = HashMap::new();
    for c in &index {
        let data = match chunks.get(&c.hash) {
            Some(d) => d.clone(),
            None => {
                let d = mem
                    .take(&c.hash)
                    .ok_or_else(|| reject("manifest chunk missing".into()))?;
                chunks.insert(c.hash, d.clone());
                blobs.push((c.hash, d.clone()));
                d
            }
        };
        bytes.extend_from_slice(&data);
    }
    if ContentHash::of(&bytes) != body.manifest_hash {
        return Err(reject(
            "manifest does not match the hash in the signed head".into(),
        ));
    }
    let manifest = Manifest::decode(&bytes).map_err(|e| reject(e.to_string()))?;
    Ok((manifest, blobs))
}

/// What a download must do, decided from the mirror as it is.
struct Plan {
    /// Paths that already hold their new content.
    unchanged: HashSet<RelPath>,
    /// Paths whose current content is neither the old revision's nor the new one's.
    edited: HashSet<RelPath>,
    /// Files to stage: (file hash, size, chunks), each hash once.
    wanted: Vec<(ContentHash, u64, Vec<ChunkRef>)>,
    /// Chunks available in the mirror as it is: hash to (file, offset, length).
    sources: Arc<HashMap<ContentHash, (PathBuf, u64, u32)>>,
}

fn plan(root: &Path, index: &HashMap<RelPath, FileRecord>, new: &Manifest) -> Plan {
    let mut unchanged = HashSet::new();
    let mut edited = HashSet::new();
    let mut wanted = Vec::new();
    let mut staged = HashSet::new();
    for (path, size, _, hash, chunks) in new.files() {
        match current_content(root, index, path) {
            Some(h) if h == hash => {
                unchanged.insert(path.clone());
                continue;
            }
            Some(h) if index.get(path).is_none_or(|r| r.hash != h) => {
                edited.insert(path.clone());
            }
            _ => {}
        }
        if staged.insert(hash) {
            wanted.push((hash, size, chunks.to_vec()));
        }
    }
    let mut sources = HashMap::new();
    for (path, rec) in index {
        let mut off = 0u64;
        for c in &rec.chunks {
            sources
                .entry(c.hash)
                .or_insert((path.under(root), off, c.len));
            off += c.len as u64;
        }
    }
    Plan {
        unchanged,
        edited,
        wanted,
        sources: Arc::new(sources),
    }
}

/// The hash of what is at `path` now: from the index if size, mtime and inode match, else by
/// hashing the file. `None` if there is no regular file.
fn current_content(
    root: &Path,
    index: &HashMap<RelPath, FileRecord>,
    path: &RelPath,
) -> Option<ContentHash> {
    let full = path.under(root);
    let meta = std::fs::symlink_metadata(&full)
        .ok()
        .filter(|m| m.is_file())?;
    if let Some(rec) = index.get(path).filter(|r| r.unchanged(&meta)) {
        return Some(rec.hash);
    }
    let file = std::fs::File::open(&full).ok()?;
    chunk_reader(std::io::BufReader::new(file))
        .ok()
        .map(|c| c.hash)
}

/// Copy needed chunks that the mirror already holds into staging. Returns those copied.
fn copy_local(
    area: &StagingArea,
    positions: &ChunkPositions,
    sources: &HashMap<ContentHash, (PathBuf, u64, u32)>,
    present: &HashSet<ContentHash>,
) -> Vec<ContentHash> {
    let mut copied = Vec::new();
    for (hash, places) in positions {
        if present.contains(hash) {
            continue;
        }
        let Some((path, off, len)) = sources.get(hash) else {
            continue;
        };
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        let mut buf = vec![0u8; *len as usize];
        if file.read_exact_at(&mut buf, *off).is_ok()
            && hash.matches(&buf)
            && area.write_chunk(hash, places, &buf).is_ok()
        {
            copied.push(*hash);
        }
    }
    copied
}
