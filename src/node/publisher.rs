//! The publisher engine: scan the tree, sign a new head when it changed, serve it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::applied::{load_applied, open_db};
use super::error::NodeError;
use super::events::{EventReceiver, PeerEvent};
use super::handle::{start_services, NodeHandle, PublisherCommand};
use super::net_loop;
use super::report::Reporter;
use super::serve::{file_checks, manifest_blobs, Content, ServeIndex};
use super::status::{Stats, Status};
use super::swarm_handle::{LocalInfo, NetHandle};
use crate::config::{NodeConfig, STATE_DIR, WATCH_DEBOUNCE, WATCH_DEBOUNCE_MAX};
use crate::store::Db;
use crate::tree::{FileRecord, IgnoreRules, Manifest, RelPath};
use crate::trust::{
    load_or_create_node_key, HeadBody, Lineage, PublisherKey, PublisherPublicKey, SignedHead,
    Succession, Ticket,
};
use crate::wire::{ControlMsg, Role};

/// Let a burst of file-system events settle: return once `events` was quiet for `quiet`, or
/// `max` after the call however busy it stays (a file rewritten faster than `quiet` never
/// holds off a rescan for longer), or when the watcher is gone.
async fn settle(events: &mut mpsc::Receiver<()>, quiet: Duration, max: Duration) {
    let deadline = tokio::time::Instant::now() + max;
    loop {
        let until = (tokio::time::Instant::now() + quiet).min(deadline);
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

struct Publisher {
    dir: PathBuf,
    db: Arc<Db>,
    key: PublisherKey,
    swarm_id: uuid::Uuid,
    content: Content,
    stats: Arc<Stats>,
    net: Option<NetHandle>,
    status: watch::Sender<Status>,
    current: Option<(u64, Arc<Manifest>)>,
    /// The file index of the last scan (shared with the scan running on the blocking pool).
    known: Arc<HashMap<RelPath, FileRecord>>,
    /// `--ignore` patterns, applied after `.treecastignore`.
    ignore: Vec<String>,
    /// The newest revision of this swarm that the swarm was heard to hold (DHT, peers).
    swarm_newest: u64,
    /// `--force`: publish even where the guard at start would refuse.
    force: bool,
    /// An unchanged restart serves at once and keeps listening until then (see `start`): no
    /// new revision is published before, and a newer one heard before then refuses them all.
    guard_until: Option<tokio::time::Instant>,
    /// Why this publisher publishes no new revision (the swarm holds a newer one by our key).
    refused: Option<String>,
    /// The swarm's keys: this publisher's key must be the current one.
    lineage: Lineage,
    scan_progress: Option<Arc<crate::tree::ScanProgress>>,
}

/// Who signs this swarm: the tree's pinned key (or, for a new publisher taking over, the first
/// key of its handover records, or `key`), then every handover since. Refused unless `key` is
/// the current one.
fn lineage_for(
    stored: &crate::store::StoredState,
    config: &NodeConfig,
    key: &PublisherKey,
    swarm_id: uuid::Uuid,
) -> Result<Lineage, NodeError> {
    let root = stored
        .pinned_key
        .and_then(|p| PublisherPublicKey::from_bytes(p).ok())
        .or_else(|| {
            config
                .succession
                .first()
                .and_then(|l| PublisherPublicKey::from_bytes(l.body.from).ok())
        })
        .unwrap_or_else(|| key.public());
    let mut lineage = Lineage::new(root);
    lineage.extend(&stored.lineage, swarm_id);
    lineage.extend(&config.succession, swarm_id);
    check_signer(&lineage, key, &config.dir)?;
    Ok(lineage)
}

/// Refuse to publish with a key that is not the swarm's current one.
fn check_signer(
    lineage: &Lineage,
    key: &PublisherKey,
    dir: &std::path::Path,
) -> Result<(), NodeError> {
    let fp = super::report::fingerprint;
    if lineage.current() == key.public() {
        return Ok(());
    }
    Err(NodeError::Refused(
        if lineage.is_earlier_key(&key.public().to_bytes()) {
            format!(
                "{} was handed over to key {} from revision {}: key {} no longer publishes it",
                dir.display(),
                fp(&lineage.current()),
                lineage.since(),
                fp(&key.public())
            )
        } else {
            format!(
                "{} is published by key {}; refusing to publish it with key {} (a new publisher \
             needs the handover records from the current one: --succession FILE)",
                dir.display(),
                fp(&lineage.current()),
                fp(&key.public())
            )
        },
    ))
}

/// At start, a tree with less than this share of the files or bytes of the revision it last
/// published is taken for a publisher that lost its files.
const MUCH_SMALLER: f64 = 0.5;

pub(crate) async fn start(config: NodeConfig, key: PublisherKey) -> Result<NodeHandle, NodeError> {
    let state = config.state_dir();
    crate::store::private_dir(&state)?;
    let db = Arc::new(Db::open(&state.join("state.redb"))?);
    let stored = db.state()?;
    let swarm_id = stored
        .swarm_id
        .or(config.swarm_id)
        .unwrap_or_else(uuid::Uuid::new_v4);
    let lineage = lineage_for(&stored, &config, &key, swarm_id)?;
    let root = lineage.pin();
    db.set_identity(swarm_id, root.to_bytes())?;
    db.set_lineage(lineage.links())?;
    let node_key = load_or_create_node_key(&state.join("node.key"))?;
    let stats = Arc::new(Stats::default());
    let content = Content::default();
    let (status, status_rx) = watch::channel(Status::default());
    let mut engine = Publisher {
        dir: config.dir.clone(),
        ignore: config.ignore.clone(),
        db: db.clone(),
        key: key.clone(),
        swarm_id,
        content: content.clone(),
        stats: stats.clone(),
        net: None,
        status,
        current: None,
        known: Arc::new(db.file_index()?),
        swarm_newest: 0,
        force: config.force,
        guard_until: None,
        refused: None,
        lineage: lineage.clone(),
        scan_progress: config.scan_progress.clone(),
    };
    let checks = super::serve::file_checks(engine.known.iter());
    if let Some(applied) = load_applied(&db, &stored, &lineage, swarm_id, checks)? {
        let revision = applied.head.revision();
        engine.current = Some((revision, applied.manifest.clone()));
        engine.status.send_modify(|s| {
            s.revision = Some(revision);
            s.newest_known = Some(revision);
            s.synced = true;
        });
        content.replace(applied.serve_index(&config.dir));
    }
    let local = LocalInfo {
        node_id: uuid::Uuid::new_v4(),
        swarm_id,
        role: Role::Publisher,
        addrs: Vec::new(),
        publisher: Some(root.to_bytes()),
    };
    let started = net_loop::start(&config, node_key, local, content, stats.clone()).await?;
    engine.net = Some(started.net.clone());
    let mut events = started.events;
    // Learn the newest revision the swarm holds before publishing the next one, so that
    // revision numbers never go backwards or fork, and a publisher that lost its files or
    // state notices before it publishes an empty tree over the swarm's.
    // The scan (metadata, and hashing what changed) runs on the blocking pool meanwhile: a
    // restart costs the longer of the two, not their sum. Nothing is published before both
    // are done and the guard in `first_scan` has passed.
    // The watcher starts first: a change made while the first scan runs (which the scan may
    // have missed) starts a rescan as soon as the node runs, not at the periodic backstop.
    let watch = Watch::start(&config);
    let mut scan = engine.start_scan();
    let known_peers = !config.bootstrap.is_empty() || state.join("peers").exists();
    if known_peers || config.mdns {
        // With only mDNS to go on, a short look; with peers to dial, wait for one.
        let window = if known_peers {
            config.learn_window
        } else {
            config.learn_window / 5
        };
        engine
            .learn_swarm(&mut events, window, known_peers, &mut scan)
            .await;
    }
    if let Err(e) = engine.first_scan(scan).await {
        started.cancel.cancel();
        let mut tasks = started.tasks;
        while tasks.join_next().await.is_some() {}
        return Err(e);
    }
    let ticket = Ticket {
        swarm_id,
        publisher: root,
        addrs: started.listen_addrs.clone(),
    };
    let ticket_path = state.join("ticket");
    std::fs::write(&ticket_path, format!("{ticket}\n"))
        .map_err(crate::store::io_err(&ticket_path))?;
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let mut tasks = started.tasks;
    let cancel = started.cancel;
    let dir = config.dir.clone();
    let reporter = Reporter {
        role: Role::Publisher,
        dir: dir.clone(),
        swarm_id,
        peer_id: started.peer_id,
        publisher: root,
        net: started.net.clone(),
        status: status_rx.clone(),
        stats: stats.clone(),
        started: std::time::Instant::now(),
        memory: Default::default(),
    };
    let served = start_services(&config, &reporter, &mut tasks, &cancel).await?;
    tasks.spawn(engine.run(events, cmd_rx, watch, config, cancel.clone()));
    Ok(NodeHandle {
        net: started.net,
        publisher: Some(cmd_tx),
        status: status_rx,
        stats,
        cancel,
        tasks,
        peer_id: started.peer_id,
        listen_addrs: started.listen_addrs,
        ticket,
        db,
        dir,
        reporter,
        served,
    })
}

impl Publisher {
    async fn run(
        mut self,
        mut events: EventReceiver,
        mut commands: mpsc::Receiver<PublisherCommand>,
        mut watch: Watch,
        config: NodeConfig,
        cancel: CancellationToken,
    ) {
        // A full interval from the end of each rescan, whatever started it: a scan longer than
        // the interval (a million files) must not run back to back with the next.
        let mut rescan_tick = tokio::time::interval(config.rescan_interval);
        rescan_tick.tick().await;
        loop {
            // Nothing new is published while the guard of an unchanged restart runs.
            let guard = self.guard_until;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(guard.unwrap_or_else(tokio::time::Instant::now)), if guard.is_some() => {
                    debug!("the swarm holds no newer revision: the guard at start has passed");
                    self.guard_until = None;
                }
                cmd = commands.recv(), if guard.is_none() => match cmd {
                    Some(PublisherCommand::Rescan(reply)) => {
                        let _ = reply.send(self.rescan().await);
                        rescan_tick.reset();
                    }
                    Some(PublisherCommand::DangerPublish { manifest, reply }) => {
                        let _ = reply.send(self.danger_publish(manifest).await);
                    }
                    None => break,
                },
                ev = events.recv() => match ev {
                    Some(ev) => {
                        self.on_peer_event(ev);
                        self.check_guard();
                    }
                    None => break,
                },
                Some(()) = watch.changes.recv(), if guard.is_none() => {
                    settle(&mut watch.changes, WATCH_DEBOUNCE, WATCH_DEBOUNCE_MAX).await;
                    self.rescan_logged().await;
                    rescan_tick.reset();
                }
                _ = rescan_tick.tick(), if guard.is_none() => {
                    self.rescan_logged().await;
                    rescan_tick.reset();
                }
            }
        }
    }

    /// Listen for up to `window` for the newest revision signed by our key: a DHT lookup of
    /// the head record, and the heads in peers' hellos. Ends early once the DHT has answered
    /// and some peer was heard (or none is configured), or once `scan` shows the tree as this
    /// publisher last published it: then nothing new is to be published, serving the stored
    /// revision is safe (no subscriber takes an older revision), and the rest of the window
    /// is kept by the running publisher (`guard_until`), before it publishes anything new.
    async fn learn_swarm(
        &mut self,
        events: &mut EventReceiver,
        window: std::time::Duration,
        wait_for_peer: bool,
        scan: &mut ScanTask,
    ) {
        let net = self.net.clone().expect("net started");
        let deadline = tokio::time::Instant::now() + window;
        let lookup = net.head();
        tokio::pin!(lookup);
        let mut dht_done = false;
        loop {
            let heard = self.status.borrow().peers_seen > 0;
            if dht_done && (heard || !wait_for_peer) {
                break;
            }
            let mut finished = None;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                found = &mut lookup, if !dht_done => {
                    dht_done = true;
                    if let Ok(Some(head)) = found {
                        self.note_head(None, &head);
                    }
                }
                ev = events.recv() => match ev {
                    Some(ev) => self.on_peer_event(ev),
                    None => break,
                },
                done = scan.running(), if scan.is_running() => finished = Some(done),
            }
            if let Some(done) = finished {
                let unchanged = matches!(
                    (&done, &self.current),
                    (Ok(sc), Some((_, m))) if sc.scan.manifest == **m
                );
                *scan = ScanTask::Done(done);
                if unchanged {
                    debug!("the tree is as last published: serving it while the swarm is asked");
                    self.guard_until = Some(deadline);
                    break;
                }
            }
        }
        if self.swarm_newest > 0 {
            info!(revision = self.swarm_newest, "newest revision in the swarm");
        }
    }

    /// A head from the swarm (from `peer`, or the DHT): if our key signed it, remember its
    /// revision. A peer whose head carries too many or forged handover records is banned.
    fn note_head(&mut self, peer: Option<PeerId>, head: &SignedHead) {
        match self.lineage.follow(&head.succession, self.swarm_id) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = self.db.set_lineage(self.lineage.links()) {
                    error!(error = %e, "could not record the handover followed");
                }
            }
            Err(e) => {
                warn!(?peer, error = %e, "rejected a head's handover records");
                if let (Some(peer), Some(net)) = (peer, &self.net) {
                    let reason = format!("forged head: {e}");
                    net.try_ban(peer, reason);
                }
                Stats::add(&self.stats.heads_rejected, 1);
                return;
            }
        }
        if let Ok(h) = self.lineage.verify(head.clone(), self.swarm_id) {
            self.swarm_newest = self.swarm_newest.max(h.revision());
        }
    }

    /// The scan at start, with the lost-publisher guard: refuse (unless `force`) when the swarm
    /// holds a newer revision than this publisher's state, or when the tree is much smaller
    /// than the revision it last published. `scan` ran while the swarm was asked.
    async fn first_scan(&mut self, scan: ScanTask) -> Result<(), NodeError> {
        let force = self.force;
        // The swarm may know of a handover away from this key.
        check_signer(&self.lineage, &self.key, &self.dir)?;
        let restore = self.restore_hint();
        if let Some(refusal) = self.newer_in_swarm() {
            return Err(NodeError::Refused(refusal));
        }
        let scanned = self.scanned(scan).await?;
        if let (Some((rev, old)), false) = (&self.current, force) {
            let manifest = &scanned.scan.manifest;
            let (files, bytes) = (manifest.files().count(), manifest.total_bytes());
            let (old_files, old_bytes) = (old.files().count(), old.total_bytes());
            let smaller = |n: usize, o: usize| (n as f64) < (o as f64) * MUCH_SMALLER;
            if *manifest != **old
                && (smaller(files, old_files) || smaller(bytes as usize, old_bytes as usize))
            {
                return Err(NodeError::Refused(format!(
                    "{} holds {files} files ({bytes} bytes), but revision {rev} has {old_files} files \
                     ({old_bytes} bytes): refusing to publish a much smaller tree at start (lost \
                     files?). {restore}; --force publishes it",
                    self.dir.display()
                )));
            }
        }
        self.publish_scanned(scanned).await?;
        Ok(())
    }

    /// The swarm holds a newer revision signed by this key than this publisher's state (unless
    /// `--force`): why it refuses to publish.
    fn newer_in_swarm(&self) -> Option<String> {
        let local = self.current.as_ref().map_or(0, |(r, _)| *r);
        if self.swarm_newest <= local || self.force {
            return None;
        }
        Some(format!(
            "the swarm holds revision {} signed by this key, but {} is at {}: this publisher lost \
             its files or state. {}; --force publishes this tree as revision {}",
            self.swarm_newest,
            self.dir.display(),
            if local == 0 {
                "no revision".to_string()
            } else {
                format!("revision {local}")
            },
            self.restore_hint(),
            self.swarm_newest + 1
        ))
    }

    fn restore_hint(&self) -> String {
        format!(
            "`treecast publish --restore {}` rebuilds the tree from the swarm first",
            self.dir.display()
        )
    }

    /// While the guard of an unchanged restart runs: a newer revision by our key in the swarm
    /// means this publisher's files and state are older than the swarm's (restored from a
    /// backup, say). It keeps serving what it has (no subscriber takes an older revision) and
    /// publishes nothing new until restarted with `--restore` or `--force`.
    fn check_guard(&mut self) {
        if self.guard_until.is_none() {
            return;
        }
        if let Some(refusal) = self.newer_in_swarm() {
            error!("{refusal}");
            self.status.send_modify(|s| s.error = Some(refusal.clone()));
            self.refused = Some(refusal);
            self.guard_until = None;
        }
    }

    fn on_peer_event(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::Up { peer, hello, .. } => {
                info!(%peer, role = ?hello.role, "peer joined");
                if let Some(head) = &hello.head {
                    self.note_head(Some(peer), head);
                }
                self.status.send_modify(|s| {
                    s.peers += 1;
                    s.peers_seen += 1;
                });
            }
            PeerEvent::Head { peer, head } => self.note_head(Some(peer), &head),
            PeerEvent::Down { peer, .. } => {
                info!(%peer, "peer left");
                self.status
                    .send_modify(|s| s.peers = s.peers.saturating_sub(1));
            }
            PeerEvent::Incompatible { .. }
            | PeerEvent::Peers { .. }
            | PeerEvent::Have { .. }
            | PeerEvent::HaveSync { .. }
            | PeerEvent::Complete { .. } => {}
        }
    }

    async fn rescan_logged(&mut self) {
        if let Err(e) = self.rescan().await {
            error!(error = %e, "rescan failed; the published revision is unchanged");
        }
    }

    /// Scan the tree; publish a new revision if it changed.
    async fn rescan(&mut self) -> Result<Option<u64>, NodeError> {
        if let Some(refusal) = &self.refused {
            return Err(NodeError::Refused(refusal.clone()));
        }
        let scanned = self.scan_tree().await?;
        self.publish_scanned(scanned).await
    }

    /// Scan the tree (hashing only files whose size, mtime or inode changed).
    async fn scan_tree(&mut self) -> Result<ScanOutput, NodeError> {
        let task = self.start_scan();
        self.scanned(task).await
    }

    /// Start a scan of the tree on the blocking pool; [`Self::scanned`] takes its result.
    fn start_scan(&self) -> ScanTask {
        let dir = self.dir.clone();
        let known = self.known.clone();
        let extra = self.ignore.clone();
        let progress = self.scan_progress.clone();
        ScanTask::Running(tokio::task::spawn_blocking(move || {
            // Read again on every scan, so edits to .treecastignore take effect.
            let rules = IgnoreRules::load(&dir, &extra)?;
            let scan = crate::tree::scan_with_progress(&dir, &known, &rules, progress.as_deref())?;
            // Every file as the index knows it (the usual rescan): keep the index, skip its
            // rewrite and the serve index's rebuild (whole seconds at a million files).
            let same_index = scan.records.len() == known.len()
                && scan.stats.unchanged_records == known.len() as u64;
            let known = if same_index {
                known
            } else {
                Arc::new(scan.records.iter().cloned().collect())
            };
            Ok(Scanned {
                scan,
                known,
                same_index,
            })
        }))
    }

    /// The result of a scan `start_scan` started; its file index becomes the known one.
    async fn scanned(&mut self, task: ScanTask) -> Result<ScanOutput, NodeError> {
        let Scanned {
            scan,
            known,
            same_index,
        } = match task {
            ScanTask::Running(handle) => ScanTask::joined(handle.await),
            ScanTask::Done(done) => done,
        }?;
        Stats::add(&self.stats.files_hashed, scan.stats.files_hashed);
        self.known = known;
        Ok(ScanOutput { scan, same_index })
    }

    /// Publish a scanned tree if it differs from the current revision.
    async fn publish_scanned(&mut self, scanned: ScanOutput) -> Result<Option<u64>, NodeError> {
        let ScanOutput {
            scan:
                crate::tree::Scan {
                    manifest,
                    records,
                    stats: scan_stats,
                },
            same_index,
        } = scanned;
        if let Some((_, current)) = self.current.as_ref().filter(|(_, m)| **m == manifest) {
            if same_index {
                return Ok(None);
            }
            let (db, content, current) = (self.db.clone(), self.content.clone(), current.clone());
            return blocking(move || {
                db.update_file_index(&records)?;
                // Touched or replaced by equal copies: served from the files as they are now.
                let checks = file_checks(records.iter().map(|(p, r)| (p, r)));
                content.update_files(&current, &checks);
                Ok(None)
            })
            .await;
        }
        let manifest = Arc::new(manifest);
        let encoded = manifest.clone();
        let bytes = blocking(move || Ok(encoded.encode())).await?;
        let revision = self.publish(bytes, manifest.clone(), records).await?;
        info!(
            revision,
            files = scan_stats.files,
            bytes = scan_stats.bytes,
            hashed = scan_stats.bytes_hashed,
            "published"
        );
        self.current = Some((revision, manifest));
        Ok(Some(revision))
    }

    async fn danger_publish(&mut self, bytes: Vec<u8>) -> Result<u64, NodeError> {
        // A test hook: bytes that do not decode are still signed and served, as a compromised
        // publisher would; this node then holds no files for them. A restart refuses them
        // (`load_applied`).
        let manifest = Manifest::decode(&bytes).unwrap_or_else(|e| {
            warn!(error = %e, "the unchecked manifest does not decode: it names no files here");
            Manifest::default()
        });
        let manifest = Arc::new(manifest);
        let records: Vec<_> = self
            .known
            .iter()
            .map(|(p, r)| (p.clone(), r.clone()))
            .collect();
        let revision = self.publish(bytes, manifest.clone(), records).await?;
        warn!(revision, "published an unchecked manifest (test hook)");
        self.current = Some((revision, manifest));
        Ok(revision)
    }

    /// Sign `bytes` (the encoding of `manifest`) as the next revision, commit it and serve it.
    /// The hashing, the commit and the serve index are built on the blocking pool.
    async fn publish(
        &mut self,
        bytes: Vec<u8>,
        manifest: Arc<Manifest>,
        records: Vec<(RelPath, FileRecord)>,
    ) -> Result<u64, NodeError> {
        // Never below what the swarm holds: numbers only go up, whatever this node remembers.
        let revision = self
            .current
            .as_ref()
            .map_or(0, |(r, _)| *r)
            .max(self.swarm_newest)
            + 1;
        let (swarm_id, key, links) = (
            self.swarm_id,
            self.key.clone(),
            self.lineage.links().to_vec(),
        );
        let (db, content, dir) = (self.db.clone(), self.content.clone(), self.dir.clone());
        let head = blocking(move || {
            let (index_hash, blobs) = manifest_blobs(&bytes);
            let created_unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let body = HeadBody {
                swarm_id,
                revision,
                manifest_hash: crate::tree::ContentHash::of(&bytes),
                manifest_size: bytes.len() as u64,
                manifest_index_hash: index_hash,
                created_unix_ms,
                signer: [0; 32],
            };
            let head = SignedHead::sign(body, &key).with_succession(links);
            db.commit_revision(&head.signed().encode(), &records, &blobs)?;
            let checks = file_checks(records.iter().map(|(p, r)| (p, r)));
            let index = ServeIndex::build(dir, head.signed().clone(), &manifest, blobs, &checks);
            content.replace(index);
            Ok(head)
        })
        .await?;
        if let Some(net) = &self.net {
            if !net.put_head(head.signed().clone()) {
                warn!("network busy: head not stored in the DHT this time");
            }
            let announce = [
                ControlMsg::Head(head.signed().clone()),
                ControlMsg::Complete { revision },
            ];
            for msg in announce {
                if !net.broadcast(msg) {
                    warn!("network busy: new head will reach peers on their next hello");
                }
            }
        }
        self.status.send_modify(|s| {
            s.revision = Some(revision);
            s.newest_known = Some(revision);
            s.synced = true;
        });
        Ok(revision)
    }
}

/// A finished scan, and the file index it makes.
struct Scanned {
    scan: crate::tree::Scan,
    known: Arc<HashMap<RelPath, FileRecord>>,
    /// The file index is the one the scan started from, record for record.
    same_index: bool,
}

/// A scan's result as the publisher takes it.
struct ScanOutput {
    scan: crate::tree::Scan,
    /// Every file as the file index held it: nothing to write to it, nor to the serve index.
    same_index: bool,
}

/// A scan running on the blocking pool.
enum ScanTask {
    Running(tokio::task::JoinHandle<Result<Scanned, NodeError>>),
    Done(Result<Scanned, NodeError>),
}

impl ScanTask {
    fn is_running(&self) -> bool {
        matches!(self, ScanTask::Running(_))
    }

    /// The running scan's result (never ready for one that is done).
    async fn running(&mut self) -> Result<Scanned, NodeError> {
        match self {
            ScanTask::Running(handle) => Self::joined(handle.await),
            ScanTask::Done(_) => std::future::pending().await,
        }
    }

    fn joined(
        joined: Result<Result<Scanned, NodeError>, tokio::task::JoinError>,
    ) -> Result<Scanned, NodeError> {
        joined.map_err(|e| NodeError::Refused(format!("publisher task failed: {e}")))?
    }
}

/// Run `f` on the blocking pool: scans, hashing, database commits and serve indexes never
/// hold a runtime thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Refused(format!("publisher task failed: {e}")))?
}

/// The file watcher of the tree, and the changes it saw: at most one pending, since any number
/// of them asks for the same thing, one rescan.
struct Watch {
    changes: mpsc::Receiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Watch {
    /// Watch `config.dir` if `config.watch`; else a watch that never sees a change.
    fn start(config: &NodeConfig) -> Self {
        let (tx, changes) = mpsc::channel(1);
        let watcher = match config.watch {
            true => start_watcher(&config.dir, tx),
            false => None,
        };
        Watch {
            changes,
            _watcher: watcher,
        }
    }
}

fn start_watcher(
    dir: &std::path::Path,
    tx: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let state = dir.join(STATE_DIR);
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if ev.kind.is_access() || ev.paths.iter().all(|p| p.starts_with(&state)) {
            return;
        }
        let _ = tx.try_send(());
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(dir, notify::RecursiveMode::Recursive) {
            Ok(()) => Some(w),
            Err(e) => {
                warn!(error = %e, "file watcher unavailable; relying on periodic rescans");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "file watcher unavailable; relying on periodic rescans");
            None
        }
    }
}

/// Rebuild a publisher's tree from the swarm: mirror the newest revision signed by `key` into
/// `config.dir` (a subscriber run, which keeps anything in the way in `.treecast/conflicts/`),
/// then make the files writable again. Returns the revision restored.
pub(crate) async fn restore(config: NodeConfig, key: &PublisherKey) -> Result<u64, NodeError> {
    let state = config.state_dir();
    crate::store::private_dir(&state)?;
    let stored = Db::open(&state.join("state.redb"))?.state()?;
    let swarm_id = stored.swarm_id.or(config.swarm_id).ok_or_else(|| {
        NodeError::Refused(format!(
            "{} has no treecast state left: name the swarm to restore with --swarm-id",
            config.dir.display()
        ))
    })?;
    let root = lineage_for(&stored, &config, key, swarm_id)?.pin();
    // The tree is this swarm's: what is left in it is the publisher's, not a directory to adopt.
    Db::open(&state.join("state.redb"))?.set_identity(swarm_id, root.to_bytes())?;
    let ticket = Ticket {
        swarm_id,
        publisher: root,
        addrs: Vec::new(),
    };
    let dir = config.dir.clone();
    let timeout = config.connect_timeout + std::time::Duration::from_secs(3600);
    let node = super::subscriber::start(config, ticket).await?;
    let outcome = node
        .wait_for(timeout, "the newest revision from the swarm", |s| {
            (s.synced && s.revision.is_some()) || (s.error.is_some() && s.progress.is_none())
        })
        .await;
    node.shutdown().await;
    let status = outcome?;
    let revision = match (status.revision, status.synced) {
        (Some(r), true) => r,
        _ => {
            return Err(NodeError::Refused(format!(
                "could not restore from the swarm: {}",
                status.error.unwrap_or_else(|| "no revision found".into())
            )))
        }
    };
    // A mirror is read-only; a publisher's tree is the user's to edit.
    tokio::task::spawn_blocking(move || make_writable(&dir))
        .await
        .map_err(|e| NodeError::Refused(format!("restore task failed: {e}")))??;
    info!(revision, "tree restored from the swarm");
    Ok(revision)
}

fn make_writable(dir: &std::path::Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == STATE_DIR));
    for e in walker.flatten() {
        if e.file_type().is_file() {
            let meta = e
                .metadata()
                .map_err(|e| NodeError::Refused(e.to_string()))?;
            let mode = meta.permissions().mode() | 0o200;
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))
                .map_err(crate::store::io_err(e.path()))?;
        }
    }
    Ok(())
}

/// Hand the swarm of the tree at `dir` over from `key` to `to`, effective at `from_revision`
/// (default: the revision after the one held). The node must not be running. Returns the
/// handover records from the swarm's first key, for the new publisher (`--succession`).
pub(crate) fn handover(
    dir: &std::path::Path,
    key: &PublisherKey,
    to: PublisherPublicKey,
    from_revision: Option<u64>,
) -> Result<Vec<Succession>, NodeError> {
    let db = open_db(dir)?;
    let stored = db.state()?;
    let Some((swarm_id, lineage)) = stored.lineage() else {
        return Err(NodeError::Refused(format!(
            "{} has never been published",
            dir.display()
        )));
    };
    check_signer(&lineage, key, dir)?;
    if to == key.public() {
        return Err(NodeError::Refused("handing over to the same key".into()));
    }
    let held = match &stored.head {
        Some(bytes) => lineage
            .verify(SignedHead::decode(bytes)?, swarm_id)?
            .revision(),
        None => 0,
    };
    let from = from_revision.unwrap_or(held + 1);
    if from <= held {
        return Err(NodeError::Refused(format!(
            "--from-revision must be after revision {held}, which key {} already published",
            super::report::fingerprint(&key.public())
        )));
    }
    let mut lineage = lineage;
    let link = Succession::sign(key, swarm_id, to, from);
    if !lineage.extend(std::slice::from_ref(&link), swarm_id) {
        return Err(NodeError::Refused(
            "the handover record does not continue this swarm's lineage".into(),
        ));
    }
    db.set_lineage(lineage.links())?;
    info!(to = %to, from_revision = from, "handed over");
    Ok(lineage.links().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that never pauses for as long as the quiet period does not hold the rescan off
    /// for ever: `settle` returns while events still arrive.
    #[tokio::test]
    async fn events_that_never_stop_still_let_a_rescan_through() {
        let (tx, mut rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let writer = tokio::spawn({
            let stop = stop.clone();
            async move {
                while !stop.is_cancelled() {
                    if tx.send(()).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
        let quiet = Duration::from_millis(300);
        let settled = tokio::time::timeout(
            Duration::from_secs(60),
            settle(&mut rx, quiet, Duration::from_millis(500)),
        )
        .await;
        assert!(settled.is_ok(), "settle waited for the events to stop");
        assert!(!writer.is_finished(), "events were still arriving");
        stop.cancel();
        drop(rx);
        writer.await.unwrap();
        // A closed watcher ends the wait at once rather than spinning.
        let (tx, mut rx) = mpsc::channel::<()>(1);
        drop(tx);
        settle(
            &mut rx,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .await;
    }
}
