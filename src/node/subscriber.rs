//! The subscriber engine: learn heads, verify them against the pinned key, fetch and apply the
//! newest revision, and keep serving what it holds.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
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
use super::serve::{into_file_checks, Content, FileChecks, ServeIndex, Staged, StagedPlace};
use super::status::{Stats, Status};
use super::swarm_handle::{LocalInfo, NetHandle};
use crate::config::{NodeConfig, MAX_MANIFEST_SIZE};
use crate::store::{
    apply_revision, Applying, ChunkPositions, Db, NewDirs, StagingArea, StoreError, TreeFiles,
};
use crate::store::{indexed_in, local_changes, LocalChanges};
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

/// A download the engine owns: its task alone touches the staging area and the mirror until
/// it has ended. Stopping it cancels its token, which it obeys between steps (see
/// [`download`]); the engine starts nothing else that touches staging before the task's end
/// arrives in its select loop, and waits for that end when it shuts down.
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
    /// Newest revision it sent a `Have` of: it indexed that revision's chunks, so it holds
    /// (and serves) its manifest.
    mapped: u64,
    role: Role,
}

impl KnownPeer {
    fn feed(&self, target: u64) -> FeedPeer {
        let complete = self.revision == target;
        FeedPeer {
            complete,
            last_resort: self.role == Role::Publisher,
            has_manifest: complete || self.mapped == target,
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
    local_check: Option<LocalCheck>,
    /// What start read of the file index, for the first look for local changes.
    start_checks: Option<Arc<FileChecks>>,
    /// The serve index of the revision held at start, being built.
    held_index: Option<HeldIndex>,
    next_local_check: Instant,
    downloads_done: u64,
    /// After a local storage error: when to try the download again, and the next wait.
    store_retry_at: Option<Instant>,
    store_backoff: std::time::Duration,
    /// The directory held the user's files when this node started to mirror into it
    /// (`--adopt`): not synced until a look for local changes finds it holds the revision and
    /// nothing else, so `--once` never ends on a mirror with files of the user's still in it.
    adopting: bool,
}

/// File records an apply may make ahead of the database thread that writes them.
const RECORDS_QUEUED: usize = 4096;

/// First and longest wait before retrying a download that failed on local storage.
const STORE_RETRY_MIN: std::time::Duration = std::time::Duration::from_secs(2);
const STORE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a running subscriber looks for local changes in its mirror.
const LOCAL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A subscriber makes its directory an exact mirror and moves everything else in it aside, so
/// a directory that holds the user's files (`found`) and no mirror is refused unless
/// `config.adopt`.
fn check_adoption(config: &NodeConfig, found: &[String]) -> Result<(), NodeError> {
    if found.is_empty() || config.adopt {
        return Ok(());
    }
    Err(NodeError::NotAMirror {
        dir: config.dir.clone(),
        found: some_names(found),
    })
}

/// The first few of `names`, and how many more there are.
fn some_names(names: &[String]) -> String {
    let mut s = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 3 {
        s.push_str(&format!(" and {} more", names.len() - 3));
    }
    s
}

pub(crate) async fn start(mut config: NodeConfig, ticket: Ticket) -> Result<NodeHandle, NodeError> {
    let state = config.state_dir();
    let found = crate::store::user_entries(&config.dir)?;
    let db_file = state.join("state.redb");
    // Refused before anything is written: no `.treecast/` is left in a user's directory.
    if !db_file.exists() {
        check_adoption(&config, &found)?;
    }
    crate::store::private_dir(&state)?;
    let db = Arc::new(Db::open(&db_file)?);
    let stored = db.state()?;
    // A state directory that names no swarm is no mirror (a start refused before it began).
    if stored.swarm_id.is_none() {
        check_adoption(&config, &found)?;
    }
    // Told to adopt a directory that holds files, before its first revision (also again, after
    // a run that stopped before it had one).
    let adopting = config.adopt && !found.is_empty() && stored.head.is_none();
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
    let public_dht = config.public_dht.is_some();
    if ticket.addrs.is_empty()
        && config.bootstrap.is_empty()
        && !saved_peers
        && !config.mdns
        && !public_dht
    {
        return Err(NodeError::Refused(
            "no way to find peers: the ticket has no addresses, there is no --bootstrap, no \
             peer table saved from an earlier run, mDNS is off, and so is the public DHT"
                .into(),
        ));
    }
    if adopting {
        warn!(
            dir = %config.dir.display(),
            found = %some_names(&found),
            "--adopt: mirroring into a directory that holds files and no revision yet. Nothing \
             is deleted: files and directories the revision does not have, and files it has with \
             other content, will be moved to .treecast/conflicts/; files identical to the \
             revision's are kept and made read-only"
        );
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
    let applied = load_held(&db, &stored, &lineage, ticket.swarm_id).await?;
    // Served once built, on the blocking pool: until then this node serves nothing of it, and
    // says it holds nothing, as a node that has nothing yet does.
    let held_index = applied.as_ref().map(|a| HeldIndex::build(a, &config.dir));
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
        start_checks: applied.as_ref().map(|a| a.checks.clone()),
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
        held_index,
        next_local_check: Instant::now(),
        downloads_done: 0,
        store_retry_at: None,
        store_backoff: STORE_RETRY_MIN,
        adopting,
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
        memory: Default::default(),
    };
    let served = start_services(&config, &reporter, &mut tasks, &started.cancel).await?;
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
        served,
    })
}

/// Load the revision the state database holds, checked again, and the read checks of its files
/// from the file index: the two reads side by side, on the blocking pool.
async fn load_held(
    db: &Arc<Db>,
    stored: &crate::store::StoredState,
    lineage: &Lineage,
    swarm_id: uuid::Uuid,
) -> Result<Option<Applied>, NodeError> {
    let reading = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.file_index().map(into_file_checks))
    };
    let loading = {
        let (db, stored, lineage) = (db.clone(), stored.clone(), lineage.clone());
        tokio::task::spawn_blocking(move || {
            load_applied(&db, &stored, &lineage, swarm_id, FileChecks::default())
        })
    };
    let failed = |e: tokio::task::JoinError| StoreError::Corrupt(format!("loading state: {e}"));
    let (checks, applied) = tokio::join!(reading, loading);
    let checks = checks.map_err(failed)??;
    Ok(applied.map_err(failed)??.map(|mut a| {
        a.checks = Arc::new(checks);
        a
    }))
}

/// The serve index of the revision held at start, built on the blocking pool. Dropped before
/// it is built (the node stops, or applied a newer revision), it tells the build to stop: the
/// process would wait for it to exit.
struct HeldIndex {
    revision: u64,
    task: JoinHandle<Option<ServeIndex>>,
    stop: Arc<AtomicBool>,
}

impl HeldIndex {
    fn build(applied: &Applied, dir: &Path) -> Self {
        let (a, dir) = (applied.clone(), dir.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        HeldIndex {
            revision: applied.head.revision(),
            task: tokio::task::spawn_blocking(move || a.serve_index_unless(&dir, &stopped)),
            stop,
        }
    }
}

impl Drop for HeldIndex {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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
                    let ended = self.download.take().expect("guarded");
                    self.downloads_done += 1;
                    self.on_download_done(res, ended.cancel.is_cancelled());
                }
                res = async { (&mut self.local_check.as_mut().expect("guarded").task).await },
                    if self.local_check.is_some() => {
                    let began_at = self.local_check.take().expect("guarded").began_at;
                    Stats::add(&self.stats.local_checks, 1);
                    match res {
                        // Stopped: only when the check was dropped, never seen here.
                        Ok(Ok(None)) => {}
                        Ok(Ok(Some(changes))) => {
                            self.note_local_check(None);
                            if began_at == self.downloads_done && self.download.is_none() {
                                let clean = changes.is_empty();
                                self.on_local_changes(changes).await;
                                self.adoption_checked(clean);
                            }
                        }
                        Ok(Err(e)) => self.note_local_check(Some(e.to_string())),
                        Err(e) => self.note_local_check(Some(format!("the look failed: {e}"))),
                    }
                }
                res = async { (&mut self.held_index.as_mut().expect("guarded").task).await },
                    if self.held_index.is_some() => {
                    let revision = self.held_index.take().expect("guarded").revision;
                    self.on_held_index(revision, res);
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
                    mapped: 0,
                    role: hello.role,
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
            PeerEvent::Have { peer, have } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.mapped = p.mapped.max(have.revision);
                }
                // Only from a peer in session, for the revision downloaded (a download asks
                // each peer for its full map when it starts): a late `Have` must not bring
                // back a peer that left.
                let Some(d) = &self.download else {
                    return;
                };
                if !self.peers.contains_key(&peer) || have.revision != d.revision {
                    return;
                }
                let revision = have.revision;
                if d.changes.try_send(PeerChange::Have { peer, have }).is_err() {
                    // It adds to the ones before: lost, the peer's view would miss chunks.
                    warn!(%peer, "availability queue full: asking the peer for its full map");
                    self.net.send_to(peer, ControlMsg::HaveSync { revision });
                }
            }
            PeerEvent::HaveSync { peer, revision } => {
                if let (Some(d), true) = (&self.download, self.peers.contains_key(&peer)) {
                    let _ = d.members.send(PeerChange::SyncWanted { peer, revision });
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

    /// The serve index of the revision held at start is built: serve it, if that is still the
    /// revision held, and tell peers this node holds it (its hellos said it held nothing).
    fn on_held_index(
        &mut self,
        revision: u64,
        res: Result<Option<ServeIndex>, tokio::task::JoinError>,
    ) {
        let index = match res {
            Ok(Some(index)) => index,
            // Stopped: only when it was dropped, never seen here.
            Ok(None) => return,
            Err(e) => return error!(error = %e, "building the serve index failed: serving nothing"),
        };
        let Some(applied) = self
            .applied
            .as_ref()
            .filter(|_| self.applied_revision() == revision)
        else {
            return;
        };
        info!(revision, "serving the revision held");
        // Swapped in before the broadcast, never after: no peer misses both. A session's hello
        // is built from `Content` after the swarm task registered the session, and the swarm
        // task sends a broadcast to the sessions registered when it takes the command. So a
        // session whose hello said "nothing held" was registered in time: Head and Complete
        // are queued behind that hello. One registered later reads this index for its hello.
        self.content.serve_held(index);
        let announce = [
            ControlMsg::Head(applied.head.signed().clone()),
            ControlMsg::Complete { revision },
        ];
        for msg in announce {
            if !self.net.broadcast(msg) {
                warn!(revision, "network busy: peers in session may not learn the revision held is served until they reconnect");
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
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // The first look after start compares with the file index start read (its checks are
        // all it kept of it); the later ones read it again, as it may have changed.
        let at_start = self.start_checks.take();
        let task = tokio::task::spawn_blocking(move || {
            if let Some(checks) = at_start {
                let indexed = |p: &RelPath, m: &std::fs::Metadata| {
                    checks.get(p).is_some_and(|i| i.unchanged(m))
                };
                return Ok(local_changes(&dir, indexed, &manifest, &stopped));
            }
            // Not an empty index on error: every file would be rehashed each time, unnoticed.
            let index = db.file_index()?;
            Ok(local_changes(&dir, indexed_in(&index), &manifest, &stopped))
        });
        self.local_check = Some(LocalCheck {
            task,
            began_at: self.downloads_done,
            stop,
        });
    }

    /// A look for local changes ended: with an error (`Some`), logged and kept in the status
    /// until a look succeeds (`None`). The looks go on at their pace.
    fn note_local_check(&mut self, error: Option<String>) {
        const WHAT: &str = "cannot look for local changes";
        if let Some(e) = &error {
            error!(error = %e, "{WHAT}");
        }
        self.status.send_if_modified(|s| {
            let ours = s.error.as_deref().is_some_and(|e| e.starts_with(WHAT));
            match &error {
                Some(e) => s.error = Some(format!("{WHAT}: {e}")),
                None if ours => s.error = None,
                None => return false,
            }
            true
        });
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

    /// While adopting a directory, a look for local changes ended: `clean` if it found the
    /// mirror holds the revision and nothing else, which ends the adoption; else what it found
    /// is being moved aside or repaired, and the next look is due at once.
    fn adoption_checked(&mut self, clean: bool) {
        if !self.adopting {
            return;
        }
        if !clean {
            self.next_local_check = Instant::now();
            return;
        }
        self.adopting = false;
        info!("adopted: the directory holds the revision and nothing else");
        self.update_synced();
    }

    /// Tell the download under way what we know of `peer`.
    fn tell_download(&self, peer: PeerId) {
        if let (Some(d), Some(p)) = (&self.download, self.peers.get(&peer)) {
            let _ = d.members.send(PeerChange::Up(peer, p.feed(d.revision)));
        }
    }

    /// Start downloading `head`; with a download under way, stop that one first: `head` is
    /// `best`, which `on_download_done` starts once the stopped task has ended.
    fn start_download(&mut self, head: VerifiedHead) {
        if let Some(d) = &self.download {
            info!(
                from = d.revision,
                to = head.revision(),
                "retargeting to a newer revision"
            );
            d.cancel.cancel();
            return;
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

    /// A download ended; `stopped` if it was told to stop (for a newer revision). A stopped
    /// download that still committed (it was past its last stop point) is applied like any.
    fn on_download_done(
        &mut self,
        res: Result<Result<Applied, DownloadError>, tokio::task::JoinError>,
        stopped: bool,
    ) {
        match res {
            Ok(Ok(applied)) => {
                let rev = applied.head.revision();
                info!(revision = rev, "revision applied");
                self.store_backoff = STORE_RETRY_MIN;
                // The index of the revision held before, if still being built, is not served.
                self.held_index = None;
                self.start_checks = None;
                self.content.replace(applied.serve_index(&self.dir));
                self.applied = Some(applied);
                let notice = ControlMsg::Complete { revision: rev };
                self.net.broadcast(notice);
                self.status.send_modify(|s| {
                    s.revision = Some(rev);
                    s.progress = None;
                    s.error = None;
                });
                if self.adopting {
                    self.next_local_check = Instant::now();
                }
            }
            Ok(Err(DownloadError::Cancelled)) => {}
            // Whatever stopped it, the revision it was after is no longer the target.
            Ok(Err(e)) if stopped => info!(error = %e, "a stopped download ended on an error"),
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
            && !self.adopting
            && self.applied.is_some()
            && self.best.as_ref().map(|b| b.revision()) == Some(self.applied_revision());
        self.status.send_if_modified(|s| {
            let changed = s.synced != (synced && s.peers_seen > 0);
            s.synced = synced && s.peers_seen > 0;
            changed
        });
    }
}

/// A look for local changes under way (on the blocking pool), and the number of downloads
/// finished when it began (a result is stale if one finished since). Dropped before it ends
/// (the node stops), it tells the look to stop: the process would wait for it to exit.
struct LocalCheck {
    task: tokio::task::JoinHandle<Result<Option<LocalChanges>, StoreError>>,
    began_at: u64,
    stop: Arc<AtomicBool>,
}

impl Drop for LocalCheck {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

struct DownloadEnv {
    dir: PathBuf,
    db: Arc<Db>,
    fetch: FetchCtx,
    status: watch::Sender<Status>,
    old: Arc<Manifest>,
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
        // Verified and on disk once this returns (its read check recorded): peers may fetch it
        // from us while we download the rest (see `Staged for StagingSink`).
        self.area.write_chunk(&hash, places, &data)?;
        if self.remember.load(std::sync::atomic::Ordering::Relaxed) {
            self.content.remember(hash, data);
        }
        Ok(())
    }

    fn peers_may_ask(&self, yes: bool) {
        self.remember
            .store(yes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Staged for StagingSink {
    /// A chunk is verified in staging once its read check is recorded: `write_chunk` records
    /// it after the write, `open_with_tree` for those found there.
    fn place(&self, hash: &ContentHash) -> Option<StagedPlace> {
        let check = self.area.check_of(hash)?;
        let (file, off, len) = *self.positions.get(hash)?.first()?;
        Some((self.area.staged_path(&file), off, len, Some(check)))
    }

    fn len(&self, hash: &ContentHash) -> Option<u32> {
        self.area.check_of(hash)?;
        Some(self.positions.get(hash)?.first()?.2)
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

/// Stop here if the download was told to (a newer revision): between steps, never in one.
fn go_on(cancel: &CancellationToken) -> Result<(), DownloadError> {
    if cancel.is_cancelled() {
        return Err(DownloadError::Cancelled);
    }
    Ok(())
}

/// Fetch, verify, stage and apply one revision. Told to stop, it ends with `Cancelled` at the
/// next step, up to the moment it starts putting files in place; from there it finishes.
async fn download(
    env: DownloadEnv,
    head: VerifiedHead,
    mut feed: PeerFeed,
) -> Result<Applied, DownloadError> {
    let revision = head.revision();
    let (manifest, blobs) = fetch_manifest(&env, &head, &mut feed).await?;
    let manifest = Arc::new(manifest);
    info!(
        revision,
        files = manifest.files().count(),
        bytes = manifest.total_bytes(),
        "manifest verified"
    );
    let root = env.dir.clone();
    let index = env.db.file_index()?;
    let new = manifest.clone();
    let (mut plan, index) = blocking(move || Ok((plan(&root, &index, &new), index))).await?;
    go_on(&env.fetch.cancel)?;
    let staging_dir = env.dir.join(crate::config::STATE_DIR).join("staging");
    let hashes: Vec<ContentHash> = plan.wanted.iter().map(|w| w.0).collect();
    let (wanted, tree) = (
        std::mem::take(&mut plan.wanted),
        std::mem::take(&mut plan.tree),
    );
    let (area, positions, mut present) =
        blocking(move || StagingArea::open_with_tree(&staging_dir, wanted, tree)).await?;
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
    // Verified chunks are served to peers from staging while the download lasts (to its end:
    // `sink` itself goes with the fetch).
    env.content.set_staged(&sink);
    let _serving = sink.clone();
    // Bitfields index the revision's whole chunk list, the same on every node, not the chunks
    // this node stages: a node updating from an older revision stages only what changed.
    let chunks = manifest
        .files()
        .flat_map(|(_, _, _, _, refs)| refs.iter().map(|c| c.hash));
    let mut avail = Availability::new(revision, chunks);
    info!(
        revision,
        chunks = needed.len().saturating_sub(present.len()),
        bytes = total - base,
        "planned: fetching what the mirror and staging lack"
    );
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
    go_on(&env.fetch.cancel)?;
    let files = hashes.len();
    let a = area.clone();
    blocking(move || a.finish(&hashes)).await?;
    info!(revision, files, "staged files verified and synced");
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
    #[cfg(test)]
    hooks::pause_before_apply(&env.dir, revision, &env.fetch.cancel).await;
    // The last stop point. From here the files go in place and the revision is committed
    // unless local storage fails (the disk, or the database taking the records): stopped in
    // between, the mirror would hold files of a revision its state does not name, and the next
    // download would take them for local edits.
    go_on(&env.fetch.cancel)?;
    #[cfg(test)]
    hooks::reached(&env.dir, revision, "apply");
    blocking(move || db.begin_apply(revision)).await?;
    // The records go to the database as the files go in place, on two threads; committed once
    // every file is in place and synced. They then become what the new revision is served by:
    // taken apart, not copied (a million paths).
    let (records_tx, records_rx) = std::sync::mpsc::sync_channel(RECORDS_QUEUED);
    let db = env.db.clone();
    let head_bytes = head.signed().encode();
    let stored_blobs = blobs.clone();
    let commit = tokio::task::spawn_blocking(move || {
        db.commit_revision_from(&head_bytes, &stored_blobs, records_rx)
    });
    let apply = tokio::task::spawn_blocking(move || {
        let mut writer_gone = false;
        let mut record = |path: RelPath, mut rec: FileRecord| {
            keep_checks(&path, &mut rec, &index);
            records_tx.send(Applying::Record(path, rec)).map_err(|_| {
                writer_gone = true;
                StoreError::ApplyStopped("the database writer stopped")
            })
        };
        let stats = apply_revision(
            &root,
            &a,
            (&*old, &*new),
            &unchanged,
            &edited,
            &conflicts,
            &mut record,
        );
        if let Ok(stats) = &stats {
            info!(
                revision,
                installed = stats.installed,
                kept = stats.kept,
                removed = stats.removed,
                moved_aside = stats.moved_aside,
                "mirror updated"
            );
            // A writer that stopped has its own error, which the caller reports.
            let _ = records_tx.send(Applying::Done);
        }
        (stats, writer_gone)
    });
    let (applied, written) = tokio::join!(apply, commit);
    let failed =
        |e: tokio::task::JoinError| StoreError::Corrupt(format!("blocking task failed: {e}"));
    let (stats, writer_gone) = applied.map_err(failed)?;
    let records = match (stats, written.map_err(failed)?) {
        (Ok(_), Ok(records)) => records,
        // The writer's error is why the apply stopped: report it, not that.
        (Err(_), Err(e)) if writer_gone => return Err(e.into()),
        (Err(e), Err(w)) => {
            // The writer stopped because the apply did; a database error of its own as well is
            // not lost.
            if !matches!(w, StoreError::ApplyStopped(_)) {
                warn!(error = %w, "the database failed too: the file records were not written");
            }
            return Err(e.into());
        }
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e.into()),
    };
    let checks = Arc::new(into_file_checks(records));
    #[cfg(test)]
    hooks::reached(&env.dir, revision, "committed");
    Ok(Applied {
        head,
        manifest,
        blobs,
        checks,
    })
}

/// Give the record of a file an apply kept as it was the read checks `old` has for it.
fn keep_checks(path: &RelPath, rec: &mut FileRecord, old: &HashMap<RelPath, FileRecord>) {
    if !rec.checks.is_empty() {
        return;
    }
    if let Some(was) = old.get(path).filter(|was| was.hash == rec.hash) {
        rec.checks = was.checks.clone();
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
    let serve = blobs
        .iter()
        .map(|(h, d)| (*h, bytes::Bytes::copy_from_slice(d)));
    env.content.set_pending_blobs(serve);
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
    /// Those to stage at their own path, in a directory the mirror does not have: the first
    /// path that holds each, if it is in one.
    tree: TreeFiles,
    /// Chunks available in the mirror as it is: hash to (file, offset, length).
    sources: Arc<HashMap<ContentHash, (PathBuf, u64, u32)>>,
}

fn plan(root: &Path, index: &HashMap<RelPath, FileRecord>, new: &Manifest) -> Plan {
    let mut unchanged = HashSet::new();
    let mut edited = HashSet::new();
    let mut wanted = Vec::new();
    let mut staged = HashSet::new();
    // Whether each parent directory is there: a file in one that is not cannot be either, so
    // a first sync looks up each directory once, not each file.
    // Keyed by the directory's path in the revision: no path is made per file.
    let mut dirs: HashMap<&str, bool> = HashMap::new();
    let new_dirs = NewDirs::find(root, new);
    let mut tree = TreeFiles::default();
    for (path, size, mode, hash, chunks) in new.files() {
        let parent = path.parent_str();
        let dir_there = *dirs
            .entry(parent)
            .or_insert_with(|| std::fs::metadata(root.join(parent)).is_ok_and(|m| m.is_dir()));
        let current = dir_there
            .then(|| current_content(root, index, path))
            .flatten();
        match current {
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
            if new_dirs.holds(path) {
                tree.insert(hash, (path.clone(), mode));
            }
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
        tree,
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

/// Test hooks in downloads, per mirror directory: the steps they reach, and a pause before one
/// puts its files in place.
#[cfg(test)]
mod hooks {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{LazyLock, Mutex};
    use std::time::Duration;

    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    /// Steps reached: (revision, step).
    pub type Steps = Vec<(u64, &'static str)>;

    struct Hooks {
        pause_before_apply: Option<u64>,
        steps: watch::Sender<Steps>,
    }

    static HOOKS: LazyLock<Mutex<HashMap<PathBuf, Hooks>>> = LazyLock::new(Mutex::default);

    /// Watch the steps of downloads into `dir`; the download of `pause` (if any) waits before
    /// it applies until it is cancelled (at most a minute).
    pub fn install(dir: &Path, pause: Option<u64>) -> watch::Receiver<Steps> {
        let (steps, rx) = watch::channel(Vec::new());
        let hooks = Hooks {
            pause_before_apply: pause,
            steps,
        };
        HOOKS.lock().unwrap().insert(dir.to_owned(), hooks);
        rx
    }

    pub fn reached(dir: &Path, revision: u64, step: &'static str) {
        if let Some(h) = HOOKS.lock().unwrap().get(dir) {
            h.steps.send_modify(|s| s.push((revision, step)));
        }
    }

    pub async fn pause_before_apply(dir: &Path, revision: u64, cancel: &CancellationToken) {
        let pause = HOOKS
            .lock()
            .unwrap()
            .get(dir)
            .and_then(|h| h.pause_before_apply);
        if pause != Some(revision) {
            return;
        }
        reached(dir, revision, "paused");
        let _ = tokio::time::timeout(Duration::from_secs(60), cancel.cancelled()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(60);

    fn config(dir: &Path) -> NodeConfig {
        let mut c = NodeConfig::new(dir);
        c.watch = false;
        c.mdns = false;
        c.rescan_interval = Duration::from_secs(3600);
        c.connect_timeout = Duration::from_secs(20);
        c
    }

    fn key() -> crate::PublisherKey {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test-publisher.key");
        crate::PublisherKey::load(&path).unwrap()
    }

    /// A publisher of `src` holding `a.txt`, and a subscriber of it into `mirror`, synced.
    async fn synced_pair(src: &Path, mirror: &Path) -> (NodeHandle, NodeHandle) {
        std::fs::write(src.join("a.txt"), b"a").unwrap();
        let p = crate::Node::publish(config(src), key()).await.unwrap();
        let s = crate::Node::subscribe(config(mirror), p.ticket().clone())
            .await
            .unwrap();
        s.wait_for(WAIT, "synced at 1", |st| {
            st.synced && st.revision == Some(1)
        })
        .await
        .unwrap();
        (p, s)
    }

    /// Revision 2 is fetched and about to be put in place when revision 3 is announced. The
    /// download of 2 must stop there: before, it went on to apply (and commit) 2 while the
    /// download of 3 used the same staging directory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_revision_stops_the_download_under_way_before_it_applies() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mirror) = (tmp.path().join("src"), tmp.path().join("mirror"));
        std::fs::create_dir_all(&src).unwrap();
        let mut steps = hooks::install(&mirror, Some(2));
        let (p, s) = synced_pair(&src, &mirror).await;

        std::fs::write(src.join("b.txt"), b"b").unwrap();
        assert_eq!(p.rescan().await.unwrap(), Some(2));
        let paused = |st: &hooks::Steps| st.contains(&(2, "paused"));
        tokio::time::timeout(WAIT, steps.wait_for(paused))
            .await
            .unwrap()
            .unwrap();
        std::fs::write(src.join("c.txt"), b"c").unwrap();
        assert_eq!(p.rescan().await.unwrap(), Some(3));

        let synced = s
            .wait_for(WAIT, "synced at 3", |st| {
                st.synced && st.revision == Some(3)
            })
            .await;
        let taken = steps.borrow().clone();
        assert!(
            !taken.contains(&(2, "apply")),
            "revision 2 went on to apply after the retarget: {taken:?}"
        );
        synced.unwrap();
        assert!(taken.contains(&(3, "committed")), "{taken:?}");
        let (revision, report) = s.verify().await.unwrap();
        assert_eq!(revision, 3);
        assert!(report.ok(), "{:?}", report.problems);
        for f in ["a.txt", "b.txt", "c.txt"] {
            assert_eq!(
                std::fs::read(mirror.join(f)).unwrap(),
                std::fs::read(src.join(f)).unwrap()
            );
        }
        let conflicts = mirror.join(crate::config::STATE_DIR).join("conflicts");
        assert!(!conflicts.exists() || std::fs::read_dir(&conflicts).unwrap().next().is_none());
        s.shutdown().await;
        p.shutdown().await;
    }

    /// The file index of a running subscriber becomes unreadable: the look for local changes
    /// says so in the status, rather than compare the mirror with an empty index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_file_index_is_reported_by_the_local_check() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, mirror) = (tmp.path().join("src"), tmp.path().join("mirror"));
        std::fs::create_dir_all(&src).unwrap();
        let (p, s) = synced_pair(&src, &mirror).await;
        s.db.danger_put_file_record("a.txt", &[0xff; 3]).unwrap();
        let reported = |st: &Status| {
            st.error
                .as_deref()
                .is_some_and(|e| e.contains("local changes"))
        };
        s.wait_for(Duration::from_secs(20), "the local check to fail", reported)
            .await
            .unwrap();
        s.shutdown().await;
        p.shutdown().await;
    }
}
