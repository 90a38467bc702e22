//! Helpers shared by the integration tests: sample trees, node start-up on loopback, tree
//! comparison, and waiting on conditions with a timeout (never a bare sleep). `raw` speaks the
//! wire by hand, for tests that play a peer.

#![allow(dead_code)]

pub mod raw;

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use treecast::config::NodeConfig;
use treecast::node::Status;
use treecast::{Node, NodeHandle, PublisherKey, Ticket};

pub const WAIT: Duration = Duration::from_secs(120);
/// How often the polling helpers look again.
const POLL: Duration = Duration::from_millis(20);

/// The fixed test publisher key from `certs/`.
pub fn test_key() -> PublisherKey {
    PublisherKey::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test-publisher.key"))
        .expect("certs/test-publisher.key")
}

/// A second fixed key, for playing an impostor.
pub fn other_key() -> PublisherKey {
    PublisherKey::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/test-other.key"))
        .expect("certs/test-other.key")
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    treecast::demo::noise(seed, &mut out);
    out
}

pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

pub fn config(dir: &Path) -> NodeConfig {
    let mut c = NodeConfig::new(dir);
    c.watch = false;
    c.mdns = false; // tests say exactly which peers a node knows
    c.rescan_interval = Duration::from_secs(3600);
    c.connect_timeout = Duration::from_secs(20);
    c
}

pub async fn publisher(dir: &Path) -> NodeHandle {
    Node::publish(config(dir), test_key())
        .await
        .expect("publisher starts")
}

pub async fn subscriber(dir: &Path, ticket: &Ticket) -> NodeHandle {
    Node::subscribe(config(dir), ticket.clone())
        .await
        .expect("subscriber starts")
}

/// A subscriber whose only way into the swarm is `via`: the ticket's addresses are dropped and
/// `via`'s listen addresses are its bootstrap.
pub async fn subscriber_via(dir: &Path, ticket: &Ticket, via: &NodeHandle) -> NodeHandle {
    let mut cfg = config(dir);
    cfg.bootstrap = via.listen_addrs().to_vec();
    Node::subscribe(cfg, ticket.without_addrs())
        .await
        .expect("subscriber starts")
}

/// What a tree holds: path to (is_dir, exec bit, content) without the state directory.
pub fn snapshot(root: &Path) -> BTreeMap<String, (bool, bool, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !(e.depth() == 1 && e.file_name() == ".treecast"))
    {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let content = if meta.is_file() {
            std::fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        out.insert(
            rel,
            (
                meta.is_dir(),
                meta.permissions().mode() & 0o100 != 0,
                content,
            ),
        );
    }
    out
}

/// Assert two trees are byte-identical (content, layout, exec bit).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let ka: Vec<_> = sa.keys().collect();
    let kb: Vec<_> = sb.keys().collect();
    assert_eq!(ka, kb, "different paths");
    for (k, va) in &sa {
        let vb = &sb[k];
        assert_eq!(va.0, vb.0, "{k}: kind differs");
        assert_eq!(va.1, vb.1, "{k}: exec bit differs");
        assert!(va.2 == vb.2, "{k}: content differs");
    }
}

/// Assert that the file index of the tree at `root` (its node shut down) has a read check for
/// every chunk of every file, each matching the bytes on disk.
pub fn assert_read_checks(root: &Path) {
    let db = treecast::store::Db::open(&root.join(".treecast/state.redb")).unwrap();
    let index = db.file_index().unwrap();
    assert!(!index.is_empty(), "{}: no file index", root.display());
    for (path, rec) in index {
        let data = std::fs::read(path.under(root)).unwrap();
        let mut off = 0;
        let checks: Vec<u64> = rec
            .chunks
            .iter()
            .map(|c| {
                off += c.len as usize;
                treecast::tree::read_check(&data[off - c.len as usize..off])
            })
            .collect();
        assert_eq!(rec.checks, checks, "{}: {path}", root.display());
    }
}

/// Poll `cond` until it holds or `timeout` passes. For conditions that no event announces.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Call `probe` until it returns `Ok`, and return that; panic with its last error once
/// `timeout` passes (a call still running at the deadline is cut off). For conditions read by
/// asking a node (its peer table, the DHT) and for actions tried until they succeed.
pub async fn eventually_ok<T, E, F, Fut>(timeout: Duration, what: &str, probe: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match first_ok(timeout, probe).await {
        Ok(value) => value,
        Err(last) => panic!("timed out waiting for {what}; last: {last:?}"),
    }
}

/// [`eventually_ok`] for a test that reports a timeout rather than panicking at once: the
/// error is the probe's last one (`None` if no call finished in time).
pub async fn first_ok<T, E, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, Option<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Watch `node`'s status for `window` and panic if `bad` holds at any change: for showing
/// that something does NOT happen. No event says "it will not happen any more", so the
/// window is the time the test gives it; the caller says why that is long enough.
pub async fn never_within(
    node: &NodeHandle,
    window: Duration,
    what: &str,
    mut bad: impl FnMut(&Status) -> bool,
) {
    let mut rx = node.status();
    let seen = tokio::time::timeout(window, rx.wait_for(|s| bad(s)))
        .await
        .map(|r| r.map(|st| st.clone()));
    match seen {
        Err(_) => {}
        Ok(Ok(st)) => panic!("{what}: {st:?}"),
        Ok(Err(_)) => panic!("{what}: the node shut down"),
    }
}

/// Wait until `node` is synced at `revision` or newer.
pub async fn synced(node: &NodeHandle, revision: u64) {
    node.wait_for(WAIT, &format!("synced at {revision}"), |s| {
        s.synced && s.revision.is_some_and(|r| r >= revision)
    })
    .await
    .expect("subscriber syncs");
}

/// Directory layout of one test: everything lives below `root`.
pub struct Lab {
    pub tmp: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Self {
        Lab {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A lab on a RAM file system (`/dev/shm`) where there is one, else as `new`. For trees of
    /// tens of thousands of files, which a busy disk can take minutes to delete.
    pub fn in_memory() -> Self {
        let shm = Path::new("/dev/shm");
        let tmp = match shm.is_dir() {
            true => tempfile::tempdir_in(shm).unwrap(),
            false => tempfile::tempdir().unwrap(),
        };
        Lab { tmp }
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Top-level names in the lab: nothing may appear beside the node directories.
    pub fn top_level(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// A thread rewriting one file of a tree at a steady pace (the load of tests about a tree that
/// never settles) until stopped, or dropped: a test that fails leaves no writer behind.
pub struct Rewriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Rewriter {
    /// Rewrite `root/rel` with a new content every `every`, starting now.
    pub fn start(root: &Path, rel: &str, every: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (root, rel, stopped) = (root.to_path_buf(), rel.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                write(&root, &rel, format!("write {n}").as_bytes());
                // The load under test, not synchronisation.
                std::thread::sleep(every);
            }
            n
        });
        Rewriter {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop (after the write under way); the number of writes.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread.join().expect("the rewriter thread")
    }
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A child process (the `treecast` binary) that is killed and reaped when dropped, so a test
/// that fails leaves none running.
pub struct Spawned(std::process::Child);

impl Spawned {
    pub fn new(cmd: &mut std::process::Command) -> Self {
        Spawned(cmd.spawn().expect("start treecast"))
    }

    /// SIGKILL it and reap it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Send it `signal` (a `libc::SIG*`), as a shell's Ctrl-C or `kill` does.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.0.id()).expect("a pid fits i32");
        // SAFETY: kill(2) on our own child's pid; it has not been reaped (we hold it).
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Wait until it exits by itself (at most `WAIT`; a failed wait fails the test).
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        eventually_ok(WAIT, "treecast to exit", || {
            let polled = self.0.try_wait();
            async move {
                match polled {
                    Ok(Some(status)) => Ok(status),
                    Ok(None) => Err("still running".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}
