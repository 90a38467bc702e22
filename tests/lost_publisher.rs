//! A publisher that lost its files or its state: the guard at start, `--force` keeping
//! revision numbers rising, and `--restore` rebuilding the tree from the swarm.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use treecast::{Node, NodeHandle};

/// A publisher at revision 2 and a subscriber holding it; the publisher is then stopped.
async fn swarm_at_revision_two(lab: &Lab) -> (NodeHandle, uuid::Uuid, std::path::PathBuf) {
    let src = lab.dir("publisher");
    write(&src, "a.bin", &noise(1 << 20, 71));
    write(&src, "docs/b.txt", b"bee");
    write(&src, "docs/c.txt", b"sea");
    let p = publisher(&src).await;
    let s = subscriber(&lab.dir("mirror"), p.ticket()).await;
    synced(&s, 1).await;
    write(&src, "docs/d.txt", b"dee");
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    synced(&s, 2).await;
    let swarm = p.ticket().swarm_id;
    p.shutdown().await;
    (s, swarm, src)
}

fn clear_files(dir: &Path, keep_state: bool) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if keep_state && e.file_name() == ".treecast" {
            continue;
        }
        let path = e.path();
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }
}

fn refusal(result: Result<NodeHandle, treecast::node::NodeError>) -> String {
    match result {
        Ok(_) => panic!("the publisher started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_files_are_gone_refuses_to_publish_without_force() {
    let lab = Lab::new();
    let (s, _, src) = swarm_at_revision_two(&lab).await;
    clear_files(&src, true);
    let mut cfg = config(&src);
    cfg.bootstrap = s.listen_addrs().to_vec();
    let err = refusal(Node::publish(cfg.clone(), test_key()).await);
    assert!(
        err.contains("much smaller") && err.contains("--restore"),
        "{err}"
    );
    // The swarm was not touched: the subscriber still holds revision 2, files and all.
    assert_same_tree(
        &lab.tmp.path().join("mirror"),
        &lab.tmp.path().join("mirror"),
    );
    assert!(lab.tmp.path().join("mirror/docs/d.txt").exists());

    // --force: the empty tree is published, as the next revision.
    cfg.force = true;
    let p = Node::publish(cfg, test_key()).await.unwrap();
    assert_eq!(p.status().borrow().revision, Some(3));
    synced(&s, 3).await;
    assert!(!lab.tmp.path().join("mirror/docs/d.txt").exists());
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_lost_its_state_learns_the_swarms_revision_before_publishing() {
    let lab = Lab::new();
    let (s, swarm, src) = swarm_at_revision_two(&lab).await;
    // Everything is gone, state included; a different tree is there now.
    clear_files(&src, false);
    write(&src, "fresh.txt", b"a new start");
    let mut cfg = config(&src);
    cfg.bootstrap = s.listen_addrs().to_vec();
    cfg.swarm_id = Some(swarm);
    let err = refusal(Node::publish(cfg.clone(), test_key()).await);
    assert!(
        err.contains("the swarm holds revision 2")
            && err.contains("--force publishes this tree as revision 3"),
        "{err}"
    );
    // Forced, it continues the swarm's numbering instead of starting again at 1.
    cfg.force = true;
    let p = Node::publish(cfg, test_key()).await.unwrap();
    assert_eq!(p.status().borrow().revision, Some(3));
    synced(&s, 3).await;
    assert_same_tree(&src, &lab.tmp.path().join("mirror"));
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_rebuilds_the_tree_from_the_swarm_and_publishing_carries_on() {
    let lab = Lab::new();
    let (s, swarm, src) = swarm_at_revision_two(&lab).await;
    let mirror = lab.tmp.path().join("mirror");
    clear_files(&src, false);
    let mut cfg = config(&src);
    cfg.bootstrap = s.listen_addrs().to_vec();
    // Without state, the swarm has to be named.
    let err = Node::restore(cfg.clone(), &test_key()).await.unwrap_err();
    assert!(err.to_string().contains("--swarm-id"), "{err}");
    cfg.swarm_id = Some(swarm);
    assert_eq!(Node::restore(cfg.clone(), &test_key()).await.unwrap(), 2);
    assert_same_tree(&mirror, &src);
    let mode = std::fs::metadata(src.join("docs/b.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o200, 0, "restored files are the user's to edit");

    // Publishing the restored tree needs no --force and makes no new revision.
    let p = Node::publish(cfg, test_key()).await.unwrap();
    assert_eq!(p.status().borrow().revision, Some(2));
    write(&src, "docs/b.txt", b"bee, edited after the restore");
    assert_eq!(p.rescan().await.unwrap(), Some(3));
    synced(&s, 3).await;
    assert_same_tree(&src, &mirror);
    s.shutdown().await;
    p.shutdown().await;
}

/// Copy `from` (a tree with its `.treecast` state) to `to`, as a backup would.
fn copy_tree(from: &Path, to: &Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// A restart on a tree unchanged since the revision the publisher stored serves that revision
/// at once, without waiting out the guard's window for saved peers that are gone: nothing new
/// is published, and no subscriber takes an older revision than it holds. (The window is an
/// hour here: a start that waited for it would not return.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_restart_serves_without_waiting_for_peers_that_are_gone() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    write(&src, "b/c.bin", &noise(300_000, 5));
    let p = publisher(&src).await;
    p.shutdown().await;

    let mut cfg = config(&src);
    cfg.bootstrap = vec!["/ip4/127.0.0.1/udp/9/quic-v1".parse().unwrap()];
    cfg.learn_window = std::time::Duration::from_secs(3600);
    let p = tokio::time::timeout(WAIT, Node::publish(cfg, test_key()))
        .await
        .expect("the restart did not wait for the guard's window")
        .unwrap();
    assert_eq!(p.status().borrow().revision, Some(1));
    let s = subscriber(&lab.dir("mirror"), p.ticket()).await;
    synced(&s, 1).await;
    assert_same_tree(&src, &lab.tmp.path().join("mirror"));
    s.shutdown().await;
    p.shutdown().await;
}

/// Files and state restored from a backup taken at revision 1, while the swarm moved on to
/// revision 2: the tree is unchanged against the restored state, so the publisher starts at
/// once, but hearing revision 2 from the swarm within the guard's window it refuses to publish
/// anything new (a revision 2 of its own would fork the swarm's) and says so in its status.
/// The subscriber keeps revision 2. (Should the peer's hello be heard before the scan ends,
/// the start itself refuses, as for any restart: both are the guard.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_backup_refuses_new_revisions_once_it_hears_a_newer_one() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"one");
    let p = publisher(&src).await;
    let s = subscriber(&lab.dir("mirror"), p.ticket()).await;
    synced(&s, 1).await;
    let backup = lab.tmp.path().join("backup");
    copy_tree(&src, &backup);
    write(&src, "a.txt", b"two");
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    synced(&s, 2).await;
    p.shutdown().await;
    std::fs::remove_dir_all(&src).unwrap();
    copy_tree(&backup, &src);

    let mut cfg = config(&src);
    cfg.bootstrap = s.listen_addrs().to_vec();
    cfg.learn_window = std::time::Duration::from_secs(3600);
    let expect = "the swarm holds revision 2 signed by this key";
    match Node::publish(cfg, test_key()).await {
        Err(e) => assert!(e.to_string().contains(expect), "{e}"),
        Ok(p) => {
            assert_eq!(p.status().borrow().revision, Some(1));
            let st = p
                .wait_for(WAIT, "the refusal", |st| st.error.is_some())
                .await
                .unwrap();
            let err = st.error.unwrap();
            assert!(err.contains(expect) && err.contains("--restore"), "{err}");
            write(&src, "a.txt", b"a fork");
            let err = p.rescan().await.unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            assert_eq!(p.status().borrow().revision, Some(1));
            p.shutdown().await;
        }
    }
    assert_eq!(s.status().borrow().revision, Some(2));
    assert_eq!(
        std::fs::read(lab.tmp.path().join("mirror/a.txt")).unwrap(),
        b"two"
    );
    s.shutdown().await;
}
