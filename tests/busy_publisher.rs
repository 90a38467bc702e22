//! A busy publisher keeps serving (issue #18, acceptance test 2). The publisher watches a large
//! tree (every rescan walks tens of thousands of files) in which one file is rewritten every
//! 100 ms, so it is nearly always settling or rescanning; meanwhile 32 peers each send `Have`
//! on a control session as fast as the protocol allows. Checked: (a) no session goes silent
//! and every peer keeps getting heartbeats; (b) a newcomer connects, opens a chunk stream and
//! gets a chunk; (c) once the writes stop the publisher publishes the tree as it is then, and
//! the peers hear of it.
//!
//! The peers are light: each is a node of another swarm (so it fetches nothing itself) holding
//! one control session with the publisher, spoken by hand; a session the publisher ends is
//! opened again, as a subscriber would, and the peer gives the publisher up after
//! `PEER_TIMEOUT` without a heartbeat or a new session. The newcomer too gets `PEER_TIMEOUT`.
//! Timings are printed for the benchmarks, not asserted: the bounds are the protocol's own
//! timeouts. The tree lives on a RAM file system where there is one (deleting it from a busy
//! disk took minutes), so rescans are bound by the CPU, as on a machine with a warm cache.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::{ask_chunk, send_control};
use common::*;
use futures::AsyncReadExt;
use treecast::config::{CONTROL_MSGS_PER_SEC, HEARTBEAT_INTERVAL, MAX_CONTROL_FRAME, PEER_TIMEOUT};
use treecast::net::streams::Stream;
use treecast::tree::ContentHash;
use treecast::wire::{self, ControlMsg, CHUNKS_PROTOCOL, PROTOCOL_VERSION};
use treecast::{Node, NodeHandle};

/// Files in the large tree: enough that even a rescan that hashes nothing takes seconds here.
const FILES: usize = 60_000;
const FILES_PER_DIR: usize = 500;
/// Peers sending `Have` as fast as they may.
const PEERS: usize = 32;
/// The pace of the busy file's rewrites.
const REWRITE_EVERY: Duration = Duration::from_millis(100);
/// What the busy file holds once the writes stop.
const LAST_WRITE: &[u8] = b"the last write";

/// Contents of file `i` of the large tree, each different (no chunk is shared).
fn tree_file(i: usize) -> (String, Vec<u8>) {
    let path = format!("tree/d{:03}/f{i:05}.txt", i / FILES_PER_DIR);
    (path, format!("file {i} of the large tree\n").into_bytes())
}

/// What one peer saw of its sessions with the publisher.
#[derive(Debug)]
struct Seen {
    heartbeats: u64,
    last_heartbeat: Instant,
    /// Longest wait for a heartbeat, across sessions.
    longest_wait: Duration,
    /// Newest revision the publisher announced (in a hello or a `Head`).
    newest_head: u64,
    haves_sent: u64,
    sessions: u64,
    /// Why the publisher ended a session (the peer then opened another).
    closed: Vec<String>,
    /// Why the peer gave up: no heartbeat within `PEER_TIMEOUT`, or no new session within it.
    failed: Option<String>,
}

impl Seen {
    fn new() -> Self {
        Seen {
            heartbeats: 0,
            last_heartbeat: Instant::now(),
            longest_wait: Duration::ZERO,
            newest_head: 0,
            haves_sent: 0,
            sessions: 0,
            closed: Vec::new(),
            failed: None,
        }
    }

    fn heartbeat(&mut self) {
        self.heartbeats += 1;
        self.longest_wait = self.longest_wait.max(self.last_heartbeat.elapsed());
        self.last_heartbeat = Instant::now();
    }

    fn longest_wait_now(&self) -> Duration {
        self.longest_wait.max(self.last_heartbeat.elapsed())
    }
}

/// A peer of the load: a node (of another swarm, so it fetches nothing) and the task that
/// keeps a control session with the publisher, spoken by hand.
struct RawPeer {
    node: Arc<NodeHandle>,
    seen: Arc<Mutex<Seen>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn raw_peer(lab: &Lab, i: usize, p: &NodeHandle) -> RawPeer {
    let node = Node::publish(config(&lab.dir(&format!("peer{i}"))), other_key())
        .await
        .unwrap();
    node.dial(p.listen_addrs()[0].clone()).await.unwrap();
    let seen = Arc::new(Mutex::new(Seen::new()));
    RawPeer {
        node: Arc::new(node),
        seen,
        task: None,
    }
}

/// How one session ended.
enum End {
    /// The publisher closed it (or replaced it: a peer's own node may open a control session
    /// of its own when it makes a new connection, and the newest session of a peer wins).
    Closed(String),
    /// Nothing from the publisher for `PEER_TIMEOUT`: a subscriber gives the publisher up.
    Silent,
}

/// Hold a control session with `p` for as long as the task runs, sending `Have` as fast as
/// allowed. A session the publisher ends is opened again at once, as a subscriber would; the
/// peer gives up (`Seen::failed`) when the publisher is silent for `PEER_TIMEOUT` or no new
/// session is up within it.
async fn keep_session(
    node: Arc<NodeHandle>,
    p: libp2p::PeerId,
    swarm: uuid::Uuid,
    seen: Arc<Mutex<Seen>>,
) {
    loop {
        let opened = first_ok(PEER_TIMEOUT, || open_session(&node, p, swarm, &seen)).await;
        let (r, w) = match opened {
            Ok(halves) => halves,
            Err(last) => {
                let why = format!("no session within PEER_TIMEOUT: {last:?}");
                seen.lock().unwrap().failed = Some(why);
                return;
            }
        };
        seen.lock().unwrap().sessions += 1;
        let end = tokio::select! {
            end = read_session(r, &seen) => end,
            e = send_haves(w, &seen) => End::Closed(format!("write: {e}")),
        };
        match end {
            End::Closed(why) => seen.lock().unwrap().closed.push(why),
            End::Silent => {
                let why = "no heartbeat for PEER_TIMEOUT".to_string();
                seen.lock().unwrap().failed = Some(why);
                return;
            }
        }
    }
}

type Halves = (
    futures::io::ReadHalf<Stream>,
    futures::io::WriteHalf<Stream>,
);

/// Open a control session to `p`: handshakes, hellos, and the publisher's first heartbeat (it
/// sends one as soon as the session is up), so the session is known to be registered.
async fn open_session(
    node: &NodeHandle,
    p: libp2p::PeerId,
    swarm: uuid::Uuid,
    seen: &Mutex<Seen>,
) -> Result<Halves, String> {
    let mut s = node
        .danger_open_stream(p, wire::CONTROL_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let hello = ControlMsg::Hello(wire::Hello {
        node_id: uuid::Uuid::new_v4(),
        swarm_id: swarm,
        role: wire::Role::Subscriber,
        head: None,
        addrs: Vec::new(),
    });
    let err = |e: wire::WireError| e.to_string();
    wire::write_handshake(&mut s, PROTOCOL_VERSION)
        .await
        .map_err(err)?;
    send_control(&mut s, &hello).await.map_err(err)?;
    wire::read_handshake(&mut s, PROTOCOL_VERSION)
        .await
        .map_err(err)?;
    for _ in 0..2 {
        let frame = wire::read_frame(&mut s, MAX_CONTROL_FRAME)
            .await
            .map_err(err)?
            .ok_or("closed before the session was up")?;
        match wire::decode(&frame).map_err(err)? {
            ControlMsg::Hello(h) => {
                let revision = h.head.map_or(0, |h| h.body.revision);
                let mut seen = seen.lock().unwrap();
                seen.newest_head = seen.newest_head.max(revision);
            }
            ControlMsg::Heartbeat => {
                seen.lock().unwrap().heartbeat();
                return Ok(s.split());
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Err("no heartbeat after the hello".into())
}

/// Read what the publisher sends until it ends the session or stays silent too long.
async fn read_session(mut r: futures::io::ReadHalf<Stream>, seen: &Mutex<Seen>) -> End {
    loop {
        let frame = tokio::time::timeout(PEER_TIMEOUT, wire::read_frame(&mut r, MAX_CONTROL_FRAME));
        let frame = match frame.await {
            Err(_) => return End::Silent,
            Ok(Err(e)) => return End::Closed(format!("read: {e}")),
            Ok(Ok(None)) => return End::Closed("end of stream".into()),
            Ok(Ok(Some(frame))) => frame,
        };
        let mut s = seen.lock().unwrap();
        if s.last_heartbeat.elapsed() >= PEER_TIMEOUT {
            return End::Silent;
        }
        match wire::decode(&frame) {
            Ok(ControlMsg::Heartbeat) => s.heartbeat(),
            Ok(ControlMsg::Head(h)) => s.newest_head = s.newest_head.max(h.body.revision),
            Ok(ControlMsg::Goodbye { reason }) => return End::Closed(format!("goodbye: {reason}")),
            Ok(_) => {}
            Err(e) => return End::Closed(format!("decode: {e}")),
        }
    }
}

/// Send `Have` for the newest revision heard of at `CONTROL_MSGS_PER_SEC`, the most the
/// publisher accepts for good (its bucket starts full, so the burst is there to spare for
/// jitter). Each is a full map as long as the tree's chunk list. Returns the write error.
async fn send_haves(mut w: futures::io::WriteHalf<Stream>, seen: &Mutex<Seen>) -> wire::WireError {
    let bitfield = vec![0xff; (FILES + 1).div_ceil(8)];
    let mut tick = tokio::time::interval(Duration::from_secs(1) / CONTROL_MSGS_PER_SEC as u32);
    // A late tick is skipped, not caught up in a burst: never above the rate.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let revision = seen.lock().unwrap().newest_head;
        let have = ControlMsg::Have(wire::Have {
            revision,
            seq: 1,
            sync: true,
            chunks: wire::ChunkSet::Bits {
                first: 0,
                bits: bitfield.clone(),
            },
        });
        if let Err(e) = send_control(&mut w, &have).await {
            return e;
        }
        seen.lock().unwrap().haves_sent += 1;
    }
}

/// A newcomer (a node of another swarm) connects to `p`, opens a chunk stream and asks for
/// one chunk of the tree, all within `PEER_TIMEOUT`. How long it took, or what went wrong.
async fn newcomer_gets_a_chunk(lab: &Lab, p: &NodeHandle) -> Result<Duration, String> {
    let start = Instant::now();
    let newcomer = Node::publish(config(&lab.dir("newcomer")), other_key())
        .await
        .unwrap();
    newcomer.dial(p.listen_addrs()[0].clone()).await.unwrap();
    let (_, content) = tree_file(FILES / 2);
    let asked = first_ok(PEER_TIMEOUT, || async {
        let mut s = newcomer
            .danger_open_stream(p.peer_id(), CHUNKS_PROTOCOL)
            .await;
        match &mut s {
            Ok(s) => ask_chunk(s, 1, ContentHash::of(&content)).await,
            Err(e) => Err(format!("open a chunk stream: {e}")),
        }
    })
    .await;
    newcomer.shutdown().await;
    match asked {
        Ok(true) => Ok(start.elapsed()),
        Ok(false) => Err("the publisher does not have a chunk of its tree".into()),
        Err(last) => Err(format!(
            "no chunk within PEER_TIMEOUT ({PEER_TIMEOUT:?}); last: {last:?}"
        )),
    }
}

/// Wait for the next revision `p` publishes after `after`; the revision.
async fn next_revision(p: &NodeHandle, after: u64) -> u64 {
    let st = p
        .wait_for(WAIT, &format!("a revision after {after}"), |s| {
            s.revision.is_some_and(|r| r > after)
        })
        .await
        .unwrap();
    st.revision.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_publisher_keeps_answering_admits_chunk_streams_and_publishes_after_the_writes() {
    let lab = Lab::in_memory();
    let src = lab.dir("publisher");
    let t = Instant::now();
    for i in 0..FILES {
        let (path, content) = tree_file(i);
        write(&src, &path, &content);
    }
    write(&src, "busy.txt", b"write 0");
    eprintln!("wrote {FILES} files in {:.1?}", t.elapsed());
    let t = Instant::now();
    let mut cfg = config(&src);
    cfg.watch = true;
    let p = Node::publish(cfg, test_key()).await.unwrap();
    eprintln!("first scan and publish: {:.1?}", t.elapsed());
    let t = Instant::now();
    assert_eq!(p.rescan().await.unwrap(), None);
    eprintln!("a rescan of the unchanged tree: {:.1?}", t.elapsed());

    let t = Instant::now();
    let mut peers: Vec<RawPeer> =
        futures::future::join_all((0..PEERS).map(|i| raw_peer(&lab, i, &p))).await;
    for peer in &mut peers {
        let task = keep_session(
            peer.node.clone(),
            p.peer_id(),
            p.ticket().swarm_id,
            peer.seen.clone(),
        );
        peer.task = Some(tokio::spawn(task));
    }
    let sessions = |peers: &[RawPeer]| {
        let up = peers.iter().filter(|p| p.seen.lock().unwrap().sessions > 0);
        up.count()
    };
    eventually(WAIT, "every peer in session", || sessions(&peers) == PEERS).await;
    eprintln!("{PEERS} peers in session: {:.1?}", t.elapsed());

    // The load: the busy file, and the peers (already sending).
    let load = Instant::now();
    let busy_file = Rewriter::start(&src, "busy.txt", REWRITE_EVERY);
    // Busy for real: the publisher has settled and rescanned under the load once.
    let first = p.status().borrow().revision.unwrap();
    let busy = next_revision(&p, first).await;
    eprintln!(
        "revision {busy} published under load after {:.1?}",
        load.elapsed()
    );

    // (b) A newcomer is admitted meanwhile.
    let newcomer = newcomer_gets_a_chunk(&lab, &p).await;
    eprintln!("newcomer: {newcomer:?}");

    // (c) The writes stop just after a rescan under load published, so the next rescan starts
    // after the last write (the settle waits for the writes to be quiet) and must publish it.
    let before = next_revision(&p, busy).await;
    let writes = busy_file.stop();
    write(&src, "busy.txt", LAST_WRITE);
    let stopped = Instant::now();
    let last = next_revision(&p, before).await;
    let took = stopped.elapsed();
    eprintln!(
        "writes stopped after {writes} rewrites; revision {last} published {took:.2?} later \
         (target 2 s)"
    );
    // The peers hear of it (the publisher announces a new head to its sessions).
    let heard = first_ok(PEER_TIMEOUT, || async {
        let behind: Vec<usize> = (0..PEERS)
            .filter(|&i| peers[i].seen.lock().unwrap().newest_head < last)
            .collect();
        match behind.is_empty() {
            true => Ok(()),
            false => Err(behind),
        }
    })
    .await;
    // And every peer still gets heartbeats after all that.
    let beats: Vec<u64> = peers
        .iter()
        .map(|p| p.seen.lock().unwrap().heartbeats)
        .collect();
    let beating = first_ok(PEER_TIMEOUT, || async {
        let silent: Vec<usize> = (0..PEERS)
            .filter(|&i| peers[i].seen.lock().unwrap().heartbeats == beats[i])
            .collect();
        match silent.is_empty() {
            true => Ok(()),
            false => Err(silent),
        }
    })
    .await;
    let load_time = load.elapsed();

    // The load ends; what the peers saw is sealed, and everything stops before the verdict,
    // so a failure leaves nothing running.
    let mut seen = Vec::new();
    for peer in &mut peers {
        let task = peer.task.take().unwrap();
        task.abort();
        let _ = task.await;
        let mut s = peer.seen.lock().unwrap();
        s.longest_wait = s.longest_wait_now();
        seen.push(std::mem::replace(&mut *s, Seen::new()));
    }
    let nodes = peers
        .into_iter()
        .map(|peer| Arc::into_inner(peer.node).unwrap());
    futures::future::join_all(nodes.map(NodeHandle::shutdown)).await;
    p.shutdown().await;

    // (a) Every peer was in session all along, with a heartbeat at least every PEER_TIMEOUT
    // (the publisher sends one every HEARTBEAT_INTERVAL).
    eprintln!("load ran {load_time:.1?}; heartbeats every {HEARTBEAT_INTERVAL:?}");
    let mut failures = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        eprintln!(
            "peer {i:2}: {} sessions, {} haves sent, {} heartbeats, longest wait for one \
             {:.1?}, newest head {}; closed by the publisher: {:?}{}",
            s.sessions,
            s.haves_sent,
            s.heartbeats,
            s.longest_wait,
            s.newest_head,
            s.closed,
            s.failed
                .as_ref()
                .map(|e| format!("; GAVE UP: {e}"))
                .unwrap_or_default()
        );
        if let Some(e) = &s.failed {
            failures.push(format!("(a) peer {i} gave the publisher up: {e}"));
        } else if s.longest_wait >= PEER_TIMEOUT {
            let wait = s.longest_wait;
            failures.push(format!("(a) peer {i}: no heartbeat for {wait:.1?}"));
        }
    }
    if let Err(silent) = beating {
        failures.push(format!(
            "(a) no heartbeat within PEER_TIMEOUT at the end of the load for peers {silent:?}"
        ));
    }
    if let Err(e) = newcomer {
        failures.push(format!("(b) newcomer: {e}"));
    }
    if let Err(behind) = heard {
        failures.push(format!(
            "(c) revision {last} not announced within PEER_TIMEOUT to peers {behind:?}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
