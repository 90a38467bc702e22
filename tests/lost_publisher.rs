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
