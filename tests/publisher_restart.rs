//! A publisher killed mid-publish (issue #24, case 6): it signed and stored a head, and its
//! connected subscriber learned it, but no chunk of the new file was served (its upload is
//! capped at 1 KB/s, and each chunk is at least 64 KiB). It is killed with SIGKILL and started
//! again. No subscriber stays stuck on a head whose chunks no one has, and the revision number
//! is never signed again over a different tree.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use treecast::{NodeHandle, Ticket};

const MIB: usize = 1 << 20;

/// `treecast publish src`, logging to `log`; `extra` flags after the usual ones.
fn spawn_publisher(src: &Path, log: PathBuf, extra: &[&str]) -> Spawned {
    Spawned::new(
        Command::new(env!("CARGO_BIN_EXE_treecast"))
            .arg("publish")
            .arg(src)
            .args(["--listen", "127.0.0.1:0", "--no-mdns"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap()),
    )
}

/// The ticket the publisher of `src` wrote once it published.
async fn ticket(src: &Path) -> Ticket {
    let path = src.join(".treecast/ticket");
    eventually_ok(WAIT, "the publisher's ticket", || async {
        std::fs::read_to_string(&path)?
            .trim()
            .parse::<Ticket>()
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
}

/// The revision the node running on `dir` holds, from `treecast status --json`.
fn held(dir: &Path) -> anyhow::Result<Option<u64>> {
    let out = Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(["status", "--json"])
        .arg(dir)
        .output()?;
    let report: treecast::node::report::StatusReport = serde_json::from_slice(&out.stdout)?;
    Ok(report.revision)
}

/// A publisher (a process, upload capped at 1 KB/s) and a subscriber in sync at revision 1;
/// then a 2 MiB file is added, and the publisher is killed once the subscriber holds the head
/// of revision 2, none of whose data chunks it could have served yet.
async fn killed_after_announcing_two(lab: &Lab) -> (PathBuf, PathBuf, NodeHandle) {
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"revision one");
    let mut first = spawn_publisher(
        &src,
        lab.tmp.path().join("first.log"),
        &["--max-upload", "1K"],
    );
    let ticket = ticket(&src).await;
    let mirror = lab.tmp.path().join("mirror");
    let s = subscriber(&mirror, &ticket).await;
    synced(&s, 1).await;

    write(&src, "big.bin", &noise(2 * MIB, 1));
    s.wait_for(WAIT, "the head of revision 2", |st| {
        st.newest_known == Some(2)
    })
    .await
    .expect("the publisher's watcher publishes revision 2");
    first.kill();
    // At 1 KB/s, the 2 MiB of revision 2 would take over half an hour.
    assert_eq!(s.status().borrow().revision, Some(1));
    (src, mirror, s)
}

/// The subscriber's address, for the restarted publisher to dial.
fn dial(s: &NodeHandle) -> String {
    s.listen_addrs()[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_on_the_same_tree_it_serves_the_head_it_announced() {
    let lab = Lab::new();
    let (src, mirror, s) = killed_after_announcing_two(&lab).await;
    let log = lab.tmp.path().join("second.log");
    let _second = spawn_publisher(&src, log, &["--bootstrap", &dial(&s)]);
    synced(&s, 2).await;
    assert_eq!(s.status().borrow().revision, Some(2));
    assert_same_tree(&src, &mirror);
    let publisher_holds =
        eventually_ok(WAIT, "the publisher's status", || async { held(&src) }).await;
    assert_eq!(
        publisher_holds,
        Some(2),
        "the unchanged tree is not published again"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_on_a_changed_tree_it_publishes_a_new_revision_number() {
    let lab = Lab::new();
    let (src, mirror, s) = killed_after_announcing_two(&lab).await;
    // Revision 2's file changes while the publisher is down: no one has its chunks any more.
    write(&src, "big.bin", &noise(2 * MIB, 2));
    let log = lab.tmp.path().join("second.log");
    let _second = spawn_publisher(&src, log, &["--bootstrap", &dial(&s)]);
    // A revision 2 signed again over this tree would be a replay to the subscriber, which would
    // wait on the first revision 2 for ever.
    synced(&s, 3).await;
    assert_eq!(s.status().borrow().revision, Some(3));
    assert_same_tree(&src, &mirror);
    let publisher_holds =
        eventually_ok(WAIT, "the publisher's status", || async { held(&src) }).await;
    assert_eq!(publisher_holds, Some(3));
    s.shutdown().await;
}
