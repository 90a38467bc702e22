//! The publisher engine: scan the tree, sign a new head when it changed, serve it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::control::PeerEvent;
use super::net_loop::{self, NetCommand};
use super::report::Reporter;
use super::serve::{manifest_blobs, Content, ServeIndex};
use super::{load_applied, LocalInfo, NodeError, NodeHandle, PublisherCommand, Stats, Status};
use crate::config::{NodeConfig, STATE_DIR, WATCH_DEBOUNCE};
use crate::store::Db;
use crate::tree::{scan, FileRecord, IgnoreRules, Manifest, RelPath};
use crate::trust::{load_or_create_node_key, HeadBody, PublisherKey, SignedHead, Ticket};
use crate::wire::{ControlMsg, Role};

struct Publisher {
    dir: PathBuf,
    db: Arc<Db>,
    key: PublisherKey,
    swarm_id: uuid::Uuid,
    content: Content,
    stats: Arc<Stats>,
    net: Option<mpsc::Sender<NetCommand>>,
    status: watch::Sender<Status>,
    current: Option<(u64, Manifest)>,
    known: HashMap<RelPath, FileRecord>,
    /// `--ignore` patterns, applied after `.treecastignore`.
    ignore: Vec<String>,
}

pub(crate) async fn start(config: NodeConfig, key: PublisherKey) -> Result<NodeHandle, NodeError> {
    let state = config.state_dir();
    std::fs::create_dir_all(&state).map_err(crate::store::io_err(&state))?;
    let db = Arc::new(Db::open(&state.join("state.redb"))?);
    let stored = db.state()?;
    if let Some(pin) = stored.pinned_key.filter(|p| *p != key.public().to_bytes()) {
        return Err(NodeError::Refused(format!(
            "{} was published with key {}; refusing to publish it with key {}",
            config.dir.display(),
            data_encoding::HEXLOWER.encode(&pin),
            key.public()
        )));
    }
    let swarm_id = stored
        .swarm_id
        .or(config.swarm_id)
        .unwrap_or_else(uuid::Uuid::new_v4);
    db.set_identity(swarm_id, key.public().to_bytes())?;
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
        known: db.file_index()?,
    };
    if let Some(applied) = load_applied(&db, &stored, &key.public(), swarm_id)? {
        let revision = applied.head.revision();
        engine.current = Some((revision, applied.manifest.clone()));
        engine.status.send_modify(|s| {
            s.revision = Some(revision);
            s.newest_known = Some(revision);
            s.synced = true;
        });
        content.replace(applied.serve_index(&config.dir));
    }
    engine.rescan().await?;
    let local = LocalInfo {
        node_id: uuid::Uuid::new_v4(),
        swarm_id,
        role: Role::Publisher,
        addrs: Vec::new(),
        publisher: Some(key.public().to_bytes()),
    };
    let started = net_loop::start(&config, node_key, local, content, stats.clone()).await?;
    engine.net = Some(started.net.clone());
    let ticket = Ticket {
        swarm_id,
        publisher: key.public(),
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
        publisher: key.public(),
        net: started.net.clone(),
        status: status_rx.clone(),
        stats: stats.clone(),
        started: std::time::Instant::now(),
    };
    let metrics_addr = super::start_services(&config, &reporter, &mut tasks, &cancel).await?;
    tasks.spawn(engine.run(started.events, cmd_rx, config, cancel.clone()));
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
        metrics_addr,
    })
}

impl Publisher {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<PeerEvent>,
        mut commands: mpsc::Receiver<PublisherCommand>,
        config: NodeConfig,
        cancel: CancellationToken,
    ) {
        let (watch_tx, mut watch_rx) = mpsc::channel::<()>(1);
        let _watcher = if config.watch {
            start_watcher(&self.dir, watch_tx)
        } else {
            None
        };
        let mut rescan_tick = tokio::time::interval(config.rescan_interval);
        rescan_tick.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                cmd = commands.recv() => match cmd {
                    Some(PublisherCommand::Rescan(reply)) => {
                        let _ = reply.send(self.rescan().await);
                    }
                    Some(PublisherCommand::DangerPublish { manifest, reply }) => {
                        let _ = reply.send(self.danger_publish(manifest).await);
                    }
                    None => break,
                },
                ev = events.recv() => match ev {
                    Some(ev) => self.on_peer_event(ev),
                    None => break,
                },
                Some(()) = watch_rx.recv() => {
                    // Let a burst of writes settle, then scan once.
                    while tokio::time::timeout(WATCH_DEBOUNCE, watch_rx.recv()).await.is_ok() {}
                    self.rescan_logged().await;
                }
                _ = rescan_tick.tick() => self.rescan_logged().await,
            }
        }
    }

    fn on_peer_event(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::Up { peer, hello, .. } => {
                info!(%peer, role = ?hello.role, "peer joined");
                self.status.send_modify(|s| {
                    s.peers += 1;
                    s.peers_seen += 1;
                });
            }
            PeerEvent::Down { peer, .. } => {
                info!(%peer, "peer left");
                self.status
                    .send_modify(|s| s.peers = s.peers.saturating_sub(1));
            }
            PeerEvent::Head { .. }
            | PeerEvent::Incompatible { .. }
            | PeerEvent::Peers { .. }
            | PeerEvent::Have { .. }
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
        let dir = self.dir.clone();
        let known = self.known.clone();
        let extra = self.ignore.clone();
        let crate::tree::Scan {
            manifest,
            records,
            stats: scan_stats,
        } = tokio::task::spawn_blocking(move || {
            // Read again on every scan, so edits to .treecastignore take effect.
            let rules = IgnoreRules::load(&dir, &extra)?;
            scan(&dir, &known, &rules)
        })
        .await
        .map_err(|e| NodeError::Refused(format!("scan task failed: {e}")))??;
        Stats::add(&self.stats.files_hashed, scan_stats.files_hashed);
        self.known = records.iter().cloned().collect();
        if self.current.as_ref().is_some_and(|(_, m)| *m == manifest) {
            self.db.update_file_index(&records)?;
            return Ok(None);
        }
        let bytes = manifest.encode();
        let revision = self.publish(bytes, &manifest, &records)?;
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
        let manifest = Manifest::decode(&bytes).unwrap_or_default();
        let records: Vec<_> = self.known.clone().into_iter().collect();
        let revision = self.publish(bytes, &manifest, &records)?;
        warn!(revision, "published an unchecked manifest (test hook)");
        self.current = Some((revision, manifest));
        Ok(revision)
    }

    fn publish(
        &mut self,
        bytes: Vec<u8>,
        manifest: &Manifest,
        records: &[(RelPath, FileRecord)],
    ) -> Result<u64, NodeError> {
        let revision = self.current.as_ref().map_or(1, |(r, _)| r + 1);
        let (index_hash, blobs) = manifest_blobs(&bytes);
        let created_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let head = SignedHead::sign(
            HeadBody {
                swarm_id: self.swarm_id,
                revision,
                manifest_hash: crate::tree::ContentHash::of(&bytes),
                manifest_size: bytes.len() as u64,
                manifest_index_hash: index_hash,
                created_unix_ms,
                signer: [0; 32],
            },
            &self.key,
        );
        self.db
            .commit_revision(&head.signed().encode(), records, &blobs)?;
        self.content.replace(ServeIndex::build(
            self.dir.clone(),
            head.signed().clone(),
            manifest,
            blobs,
        ));
        if let Some(net) = &self.net {
            if net
                .try_send(NetCommand::PutHead(head.signed().clone()))
                .is_err()
            {
                warn!("network busy: head not stored in the DHT this time");
            }
            let announce = [
                ControlMsg::Head(head.signed().clone()),
                ControlMsg::Complete { revision },
            ];
            for msg in announce {
                if net.try_send(NetCommand::Broadcast(msg)).is_err() {
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
