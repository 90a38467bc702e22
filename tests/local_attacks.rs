//! Hostile local files on a publisher: a published tree that holds another node's state, and a
//! writer that never lets the tree settle. Each test runs real nodes on loopback.

mod common;

use std::time::Duration;

use common::*;

/// `/srv` holding `/srv/inner`, itself published (or a mirror): its keys, database and ticket
/// must never reach a subscriber of `/srv`, whatever the case of the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_holding_another_nodes_state_never_sends_it() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "inner/data.txt", b"inner data");
    let inner = treecast::Node::publish(config(&src.join("inner")), other_key())
        .await
        .unwrap();
    inner.shutdown().await;
    assert!(src.join("inner/.treecast/node.key").exists());
    assert!(src.join("inner/.treecast/state.redb").exists());
    // Where `treecast publish` keeps the key it made.
    write(
        &src,
        "inner/.treecast/publisher.key",
        b"the inner publisher's key",
    );
    write(
        &src,
        "other/.TREECAST/node.key",
        b"a key on a case-insensitive disk",
    );
    write(&src, "top.txt", b"top");

    let p = publisher(&src).await;
    let sub = lab.dir("sub");
    let s = subscriber(&sub, p.ticket()).await;
    synced(&s, 1).await;
    assert_eq!(
        std::fs::read(sub.join("inner/data.txt")).unwrap(),
        b"inner data"
    );
    assert!(sub.join("other").is_dir());
    for state in ["inner/.treecast", "other/.TREECAST"] {
        assert!(!sub.join(state).exists(), "{state} was sent");
    }
    s.shutdown().await;
    p.shutdown().await;
}

/// A file rewritten every 100 ms, for as long as the test runs: other changes of the tree are
/// still published, while the writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_nonstop_does_not_hold_off_publishing() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "busy.txt", b"0");
    let mut cfg = config(&src);
    cfg.watch = true;
    let p = treecast::Node::publish(cfg, test_key()).await.unwrap();
    let sub = lab.dir("sub");
    let s = subscriber(&sub, p.ticket()).await;
    synced(&s, 1).await;

    let busy = Rewriter::start(&src, "busy.txt", Duration::from_millis(100));
    write(&src, "new.txt", b"published while busy.txt keeps changing");
    eventually(WAIT, "new.txt in the mirror", || {
        sub.join("new.txt").exists()
    })
    .await;
    busy.stop();
    s.shutdown().await;
    p.shutdown().await;
}
