//! `treecast status`: the report a running node gives about itself, the control socket it is
//! served on, and the dashboard it is drawn as in a terminal.
//!
//! The JSON form of [`StatusReport`] is a stable schema (see the README): fields are only ever
//! added, and `schema` changes if one ever has to change meaning.
//!
//! A node also makes a report once a second on its own ([`Reporter`]'s live reports): they
//! feed the publisher's rollout log (`rollout`) and the throughput chart (`throughput`), and
//! the web dashboard's event stream (`http`) passes them on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::NodeError;
use super::rollout::{RevisionRollout, RolloutLog};
use super::status::{Stats, StatsSnapshot, Status};
use super::swarm_handle::{NetHandle, NetReport};
use super::throughput::{Throughput, ThroughputSample};
use super::traffic::{ByteCounts, ByteRates};
use crate::trust::PublisherPublicKey;
use crate::wire::Role;

/// Version of the `status --json` schema.
pub const STATUS_SCHEMA: u32 = 1;
/// The control socket, inside the state directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line on the control socket.
const MAX_REQUEST: usize = 256;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node makes a live report (and takes a throughput sample).
pub const LIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Everything `treecast status` shows about one node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// [`STATUS_SCHEMA`].
    pub schema: u32,
    /// "publisher" or "subscriber".
    pub role: String,
    pub dir: String,
    pub swarm_id: uuid::Uuid,
    /// This node's libp2p peer ID.
    pub peer_id: String,
    /// The pinned publisher key (hex) and its short fingerprint.
    pub publisher_key: String,
    pub publisher_fingerprint: String,
    /// Revision held (applied by a subscriber, published by a publisher).
    pub revision: Option<u64>,
    /// Newest verified revision heard of, and the fingerprint of the key that signed it.
    pub newest_known: Option<u64>,
    pub newest_signed_by: Option<String>,
    /// The mirror equals the newest revision known.
    pub synced: bool,
    /// The download under way, if any.
    pub sync: Option<SyncProgress>,
    /// The last error that stops progress.
    pub error: Option<String>,
    /// How other nodes reach this one: "public", "nated", "relayed" or "unknown".
    pub reachability: String,
    /// Addresses told to peers.
    pub addrs: Vec<String>,
    pub uptime_secs: u64,
    /// The node's clock when it made the report (times in the report compare with it).
    #[serde(default)]
    pub now_unix_ms: u64,
    /// Chunk bytes in total, by source, and current rates.
    pub traffic: TrafficReport,
    pub peers: Vec<PeerRow>,
    /// Publisher: how far the current revision has spread.
    pub rollout: Option<Rollout>,
    pub counters: StatsSnapshot,
    /// The public IPFS DHT (Amino); null when it is off.
    #[serde(default)]
    pub public_dht: Option<PublicDht>,
}

/// Where the node stands in the public IPFS DHT (Amino).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PublicDht {
    /// "server" (AutoNAT says public) or "client".
    pub mode: String,
    /// Peers in its routing table.
    pub routing_peers: usize,
    /// When an announcement of the swarm last reached a node (null: not yet).
    pub last_announce_unix_ms: Option<u64>,
    /// Providers of the swarm's key it named (this node left out), since the start.
    pub providers_found: u64,
}

/// A download under way.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncProgress {
    pub revision: Option<u64>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub rate_bytes_per_sec: f64,
    pub eta_secs: Option<u64>,
}

/// Chunk bytes moved.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrafficReport {
    pub total: ByteCounts,
    pub rate_bytes_per_sec: ByteRates,
    /// "publisher", "peer" (direct), "relay": bytes per source.
    pub by_source: std::collections::BTreeMap<String, ByteCounts>,
}

/// One row of the peer table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerRow {
    pub peer: String,
    /// "publisher", "subscriber" or "dhtnode", once it said hello.
    pub role: Option<String>,
    /// Remote address of the connection in use.
    pub address: Option<String>,
    /// "direct" or "relayed" while connected.
    pub connection: Option<String>,
    pub revision: Option<u64>,
    pub bytes: ByteCounts,
    pub rate_bytes_per_sec: ByteRates,
    pub rtt_ms: Option<f64>,
    pub last_seen_unix_ms: u64,
    pub online: bool,
    pub banned: bool,
}

/// Publisher: the current revision across the swarm's online subscribers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    pub revision: u64,
    /// Online subscribers.
    pub subscribers: usize,
    /// Of those, the ones holding `revision`.
    pub holding: usize,
    /// The others, with the revision they hold.
    pub behind: Vec<Behind>,
    /// When this node published `revision` (for the revision it held when it started: when
    /// it started).
    #[serde(default)]
    pub published_unix_ms: u64,
    /// When every online subscriber first held it; null while some never did.
    #[serde(default)]
    pub complete_unix_ms: Option<u64>,
    /// Publishing to complete, or to now while under way.
    #[serde(default)]
    pub elapsed_ms: u64,
    /// The online subscribers holding it, with when each was first seen holding it.
    #[serde(default)]
    pub holders: Vec<Holder>,
    /// The rollouts of the last revisions (`ROLLOUT_HISTORY`), newest first, this one
    /// included.
    #[serde(default)]
    pub history: Vec<RolloutRecord>,
}

/// An online subscriber holding the current revision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub peer: String,
    pub since_unix_ms: u64,
}

/// How one past or current revision rolled out.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RolloutRecord {
    pub revision: u64,
    pub published_unix_ms: u64,
    /// When every online subscriber first held it.
    pub complete_unix_ms: Option<u64>,
    /// When a newer revision was published before it was complete.
    pub superseded_unix_ms: Option<u64>,
    /// Publishing to complete (or superseded, or now while under way).
    pub elapsed_ms: u64,
    /// Online subscribers and those holding it, at the last look while it was current.
    pub subscribers: usize,
    pub holding: usize,
}

impl RolloutRecord {
    fn of(r: &RevisionRollout, now_ms: u64) -> Self {
        RolloutRecord {
            revision: r.revision,
            published_unix_ms: r.published_unix_ms,
            complete_unix_ms: r.complete_unix_ms,
            superseded_unix_ms: r.superseded_unix_ms,
            elapsed_ms: r.elapsed_ms(now_ms),
            subscribers: r.subscribers,
            holding: r.holding,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Behind {
    pub peer: String,
    pub revision: Option<u64>,
}

/// The short form of a publisher key people compare by eye.
pub fn fingerprint(key: &PublisherPublicKey) -> String {
    let hex = key.to_string();
    hex.as_bytes()
        .chunks(4)
        .take(4)
        .map(|c| std::str::from_utf8(c).expect("hex is ascii"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One live report, with the throughput sample taken with it.
#[derive(Debug)]
pub(crate) struct Live {
    pub report: StatusReport,
    pub sample: Option<ThroughputSample>,
}

/// What a node remembers between reports: its rollouts, its recent throughput, and the last
/// live report (a watch channel: a reader that falls behind sees only the newest).
pub(crate) struct Memory {
    rollouts: std::sync::Mutex<RolloutLog>,
    throughput: std::sync::Mutex<Throughput>,
    live: watch::Sender<Option<Arc<Live>>>,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            rollouts: Default::default(),
            throughput: Default::default(),
            live: watch::channel(None).0,
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms_now() -> u64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a node needs to report on itself.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub role: Role,
    pub dir: PathBuf,
    pub swarm_id: uuid::Uuid,
    pub peer_id: PeerId,
    pub publisher: PublisherPublicKey,
    pub net: NetHandle,
    pub status: watch::Receiver<Status>,
    pub stats: Arc<Stats>,
    pub started: Instant,
    pub memory: Arc<Memory>,
}

impl Reporter {
    pub async fn report(&self) -> Result<StatusReport, NodeError> {
        let net: NetReport = self.net.report().await?;
        let status = self.status.borrow().clone();
        let traffic = self.stats.traffic.snapshot();
        let fp = fingerprint(&self.publisher);
        let sync = status.progress.map(|(done, total)| {
            let rate = traffic.rate.down;
            let left = total.saturating_sub(done) as f64;
            SyncProgress {
                revision: status.newest_known,
                bytes_done: done,
                bytes_total: total,
                rate_bytes_per_sec: rate,
                eta_secs: (rate > 0.0).then(|| (left / rate).ceil() as u64),
            }
        });
        let peers: Vec<PeerRow> = net
            .peers
            .iter()
            .map(|p| {
                let id: Option<PeerId> = p.peer.parse().ok();
                let (bytes, rate) = id
                    .and_then(|id| traffic.peers.get(&id).copied())
                    .unwrap_or_default();
                PeerRow {
                    peer: p.peer.clone(),
                    role: p.role.clone(),
                    address: p.address.clone(),
                    connection: p
                        .relayed
                        .map(|r| if r { "relayed" } else { "direct" }.to_string()),
                    revision: p.revision,
                    bytes,
                    rate_bytes_per_sec: rate,
                    rtt_ms: p.rtt_ms,
                    last_seen_unix_ms: p.last_seen_unix_ms,
                    online: p.online,
                    banned: p.banned,
                }
            })
            .collect();
        let now_ms = unix_ms_now();
        let counters = self.stats.snapshot();
        let rollout = match (self.role, status.revision) {
            (Role::Publisher, Some(revision)) => Some(self.rollout(now_ms, revision, &peers)),
            _ => None,
        };
        Ok(StatusReport {
            schema: STATUS_SCHEMA,
            role: format!("{:?}", self.role).to_lowercase(),
            dir: self.dir.display().to_string(),
            swarm_id: self.swarm_id,
            peer_id: self.peer_id.to_string(),
            publisher_key: self.publisher.to_string(),
            publisher_fingerprint: fp.clone(),
            revision: status.revision,
            newest_known: status.newest_known,
            newest_signed_by: status.newest_known.map(|_| fp),
            synced: status.synced,
            sync,
            error: status.error.clone(),
            reachability: net.reachability.to_string(),
            addrs: net.addrs,
            uptime_secs: self.started.elapsed().as_secs(),
            public_dht: net.public_dht.map(|d| PublicDht {
                mode: if d.server { "server" } else { "client" }.to_string(),
                routing_peers: d.routing_peers,
                last_announce_unix_ms: d.last_announce.map(unix_ms),
                providers_found: counters.public_dht_providers_found,
            }),
            now_unix_ms: now_ms,
            traffic: TrafficReport {
                total: traffic.total,
                rate_bytes_per_sec: traffic.rate,
                by_source: traffic
                    .by_source
                    .iter()
                    .map(|(s, b)| (s.name().to_string(), *b))
                    .collect(),
            },
            peers,
            rollout,
            counters,
        })
    }

    /// The rollout of `revision` across the online subscribers in `peers`, noted in the log.
    fn rollout(&self, now_ms: u64, revision: u64, peers: &[PeerRow]) -> Rollout {
        let subs: Vec<&PeerRow> = peers
            .iter()
            .filter(|p| p.online && p.role.as_deref() == Some("subscriber"))
            .collect();
        let online: Vec<(String, Option<u64>)> =
            subs.iter().map(|p| (p.peer.clone(), p.revision)).collect();
        let mut log = lock(&self.memory.rollouts);
        let current = log.observe(now_ms, revision, &online).clone();
        let (behind, holding): (Vec<&PeerRow>, Vec<&PeerRow>) = subs
            .iter()
            .partition(|p| p.revision.is_none_or(|r| r < revision));
        Rollout {
            revision,
            subscribers: subs.len(),
            holding: holding.len(),
            behind: behind
                .iter()
                .map(|p| Behind {
                    peer: p.peer.clone(),
                    revision: p.revision,
                })
                .collect(),
            published_unix_ms: current.published_unix_ms,
            complete_unix_ms: current.complete_unix_ms,
            elapsed_ms: current.elapsed_ms(now_ms),
            holders: holding
                .iter()
                .map(|p| Holder {
                    peer: p.peer.clone(),
                    since_unix_ms: current.holders.get(&p.peer).copied().unwrap_or(now_ms),
                })
                .collect(),
            history: log
                .newest_first()
                .map(|r| RolloutRecord::of(r, now_ms))
                .collect(),
        }
    }

    /// Make a live report (with a throughput sample when `sample`) and hand it to whoever
    /// watches [`Reporter::live`].
    async fn publish_live(&self, sample: bool) {
        let report = match self.report().await {
            Ok(r) => r,
            Err(e) => return debug!(error = %e, "no live report"),
        };
        let sample = match sample {
            true => {
                lock(&self.memory.throughput).record(report.now_unix_ms, &report.traffic.by_source)
            }
            false => None,
        };
        self.memory
            .live
            .send_replace(Some(Arc::new(Live { report, sample })));
    }

    /// The live reports: one a second, and one at once when the node's revision changes.
    pub fn live(&self) -> watch::Receiver<Option<Arc<Live>>> {
        self.memory.live.subscribe()
    }

    /// The throughput samples of the last ten minutes, oldest first.
    pub fn throughput_window(&self) -> Vec<ThroughputSample> {
        lock(&self.memory.throughput).window()
    }

    /// Make live reports until `cancel`: every [`LIVE_INTERVAL`], and when the revision
    /// changes (so a rollout's start is timed to the moment, not to the next tick).
    async fn run_live(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(LIVE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = self.status.clone();
        let mut revision = status.borrow_and_update().revision;
        let mut watching = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => self.publish_live(true).await,
                changed = status.changed(), if watching => {
                    watching = changed.is_ok();
                    let now = status.borrow_and_update().revision;
                    if watching && now != revision {
                        revision = now;
                        self.publish_live(false).await;
                    }
                }
            }
        }
    }
}

/// The control socket of the tree at `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(crate::config::STATE_DIR).join(CONTROL_SOCKET)
}

/// Serve the control socket and sample transfer rates until `cancel`.
pub(crate) fn spawn(
    tasks: &mut tokio::task::JoinSet<()>,
    reporter: Reporter,
    cancel: CancellationToken,
) {
    let stats = reporter.stats.clone();
    let sampling = cancel.clone();
    tasks.spawn(reporter.clone().run_live(cancel.clone()));
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sampling.cancelled() => break,
                _ = tick.tick() => stats.traffic.sample(Instant::now()),
            }
        }
    });
    let path = socket_path(&reporter.dir);
    let listener = match bind_owner_only(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "no control socket: `treecast status` will not reach this node");
            return;
        }
    };
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((conn, _)) => {
                        let reporter = reporter.clone();
                        tokio::spawn(async move {
                            if let Err(e) = answer(conn, &reporter).await {
                                debug!(error = %e, "control socket client");
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&path);
    });
}

/// Bind a Unix socket only the owner may connect to. Only one node runs per tree (the state
/// database is locked), so a socket file left there is stale.
fn bind_owner_only(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn answer(conn: tokio::net::UnixStream, reporter: &Reporter) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    let mut r = tokio::io::BufReader::new(r).take(MAX_REQUEST as u64);
    tokio::time::timeout(REQUEST_TIMEOUT, r.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let reply = match line.trim() {
        "status" => match reporter.report().await {
            Ok(report) => serde_json::to_string(&report).expect("report serialises"),
            Err(e) => serde_json::json!({ "control_error": e.to_string() }).to_string(),
        },
        other => {
            serde_json::json!({ "control_error": format!("unknown request {other:?}") }).to_string()
        }
    };
    w.write_all(reply.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.shutdown().await
}

/// Ask the node running on `dir` for its status.
pub async fn query(dir: &Path) -> Result<StatusReport, NodeError> {
    let path = socket_path(dir);
    let not_running = |why: &str| {
        NodeError::Refused(format!(
            "no treecast node is running on {} ({why} {})",
            dir.display(),
            path.display()
        ))
    };
    let conn = match tokio::net::UnixStream::connect(&path).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_running("no control socket at"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(not_running("nobody answers on"))
        }
        Err(e) => return Err(not_running(&format!("{e}:"))),
    };
    let (r, mut w) = conn.into_split();
    let io = |e: std::io::Error| NodeError::Refused(format!("control socket: {e}"));
    w.write_all(b"status\n").await.map_err(io)?;
    let mut reply = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio::io::BufReader::new(r).read_line(&mut reply),
    )
    .await
    .map_err(|_| NodeError::Timeout("the node did not answer on its control socket".into()))?
    .map_err(io)?;
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(&reply) {
        if let Some(e) = m.get("control_error").and_then(|e| e.as_str()) {
            return Err(NodeError::Refused(format!("the node says: {e}")));
        }
    }
    serde_json::from_str(&reply)
        .map_err(|e| NodeError::Refused(format!("unreadable status from the node: {e}")))
}

/// Bytes in a human unit (powers of 1024).
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(unix_ms) / 1000;
    match s {
        0..=1 => "now".into(),
        2..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn short_peer(p: &str) -> String {
    let n = p.len();
    if n > 12 {
        format!("…{}", &p[n - 10..])
    } else {
        p.to_string()
    }
}

impl StatusReport {
    /// The dashboard `treecast status` prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let rev = |r: Option<u64>| r.map_or("-".to_string(), |r| r.to_string());
        let _ = writeln!(o, "treecast {} · {}", self.role, self.dir);
        let _ = writeln!(o, "  swarm        {}", self.swarm_id);
        let _ = writeln!(o, "  publisher    {}", self.publisher_fingerprint);
        let _ = writeln!(o, "  node         {}", self.peer_id);
        let state = if self.synced {
            "in sync".to_string()
        } else if self.sync.is_some() {
            "syncing".to_string()
        } else {
            "waiting".to_string()
        };
        let _ = writeln!(
            o,
            "  revision     {} held · newest {}{} · {state}",
            rev(self.revision),
            rev(self.newest_known),
            self.newest_signed_by
                .as_ref()
                .map(|s| format!(" (signed by {s})"))
                .unwrap_or_default()
        );
        if let Some(s) = &self.sync {
            let pct = if s.bytes_total == 0 {
                100.0
            } else {
                s.bytes_done as f64 * 100.0 / s.bytes_total as f64
            };
            let _ = writeln!(
                o,
                "  progress     {} / {} ({pct:.0}%) at {}/s, eta {}",
                human_bytes(s.bytes_done as f64),
                human_bytes(s.bytes_total as f64),
                human_bytes(s.rate_bytes_per_sec),
                s.eta_secs.map_or("-".into(), |e| format!("{e}s"))
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(o, "  error        {e}");
        }
        let _ = writeln!(o, "  reachability {}", self.reachability);
        if let Some(d) = &self.public_dht {
            let announced = d
                .last_announce_unix_ms
                .map_or("not announced yet".into(), |at| {
                    let ago = self.now_unix_ms.saturating_sub(at) / 1000;
                    format!("announced {ago}s ago")
                });
            let _ = writeln!(
                o,
                "  public DHT   {} · {} peers · {announced} · {} providers found",
                d.mode, d.routing_peers, d.providers_found
            );
        }
        let t = &self.traffic;
        let _ = writeln!(
            o,
            "  traffic      up {} ({}/s) · down {} ({}/s)",
            human_bytes(t.total.up as f64),
            human_bytes(t.rate_bytes_per_sec.up),
            human_bytes(t.total.down as f64),
            human_bytes(t.rate_bytes_per_sec.down),
        );
        let sources: Vec<String> = t
            .by_source
            .iter()
            .filter(|(_, b)| b.down > 0 || b.up > 0)
            .map(|(s, b)| {
                format!(
                    "{s} ↓{} ↑{}",
                    human_bytes(b.down as f64),
                    human_bytes(b.up as f64)
                )
            })
            .collect();
        if !sources.is_empty() {
            let _ = writeln!(o, "  by source    {}", sources.join(" · "));
        }
        if let Some(r) = &self.rollout {
            let took = match r.complete_unix_ms {
                Some(_) => format!("all of them after {:.1}s", r.elapsed_ms as f64 / 1000.0),
                None => format!(
                    "{:.0}s since it was published",
                    r.elapsed_ms as f64 / 1000.0
                ),
            };
            let _ = writeln!(
                o,
                "  rollout      revision {}: {}/{} online subscribers hold it ({took})",
                r.revision, r.holding, r.subscribers
            );
            for b in &r.behind {
                let _ = writeln!(
                    o,
                    "               behind: {} at {}",
                    short_peer(&b.peer),
                    rev(b.revision)
                );
            }
        }
        let c = &self.counters;
        if c.bad_chunks + c.peers_banned + c.heads_rejected > 0 {
            let _ = writeln!(
                o,
                "  defended     {} bad chunks · {} peers banned · {} heads refused",
                c.bad_chunks, c.peers_banned, c.heads_rejected
            );
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  {:<12} {:<10} {:<8} {:>4} {:>10} {:>10} {:>7} {:<9} {:<8} address",
            "peer", "role", "link", "rev", "up/s", "down/s", "rtt", "seen", "state"
        );
        let mut rows: Vec<&PeerRow> = self.peers.iter().collect();
        rows.sort_by_key(|p| (!p.online, p.peer.clone()));
        for p in rows {
            let state = if p.banned {
                "banned"
            } else if p.online {
                "online"
            } else {
                "offline"
            };
            let _ = writeln!(
                o,
                "  {:<12} {:<10} {:<8} {:>4} {:>10} {:>10} {:>7} {:<9} {:<8} {}",
                short_peer(&p.peer),
                p.role.as_deref().unwrap_or("-"),
                p.connection.as_deref().unwrap_or("-"),
                rev(p.revision),
                human_bytes(p.rate_bytes_per_sec.up),
                human_bytes(p.rate_bytes_per_sec.down),
                p.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
                ago(p.last_seen_unix_ms),
                state,
                p.address.as_deref().unwrap_or("-"),
            );
        }
        if self.peers.is_empty() {
            let _ = writeln!(o, "  (no peers yet)");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_the_key_prefix_in_groups() {
        let key = crate::trust::PublisherKey::generate().public();
        let fp = fingerprint(&key);
        assert_eq!(fp.len(), 19);
        assert_eq!(fp.replace(':', ""), key.to_string()[..16]);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }
}
