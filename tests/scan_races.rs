//! A tree that changes while the publisher's first scan runs (issue #24, point 7): a file that
//! vanishes is skipped, never the end of the node, and the change is published by a rescan as
//! soon as the scan ends, not by the periodic backstop (an hour in these tests). The scan's
//! `danger_listed` hook changes the tree at a known point: after a directory is listed, before
//! its entries are opened.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use treecast::tree::{ListedHook, ScanProgress};
use treecast::{Node, NodeHandle};

/// A publisher of `src` with the file watcher on, whose first listing of the directory `at`
/// (relative; "" is the root) runs `change` before the scan goes on.
async fn publisher_changing(
    src: &Path,
    at: &'static str,
    change: impl Fn(&Path) + Send + Sync + 'static,
) -> NodeHandle {
    let done = AtomicBool::new(false);
    let root = src.to_owned();
    let hook = move |rel: &Path| {
        if rel == Path::new(at) && !done.swap(true, Ordering::SeqCst) {
            change(&root);
        }
    };
    let mut c = config(src);
    c.watch = true;
    c.scan_progress = Some(Arc::new(ScanProgress {
        danger_listed: Some(ListedHook(Box::new(hook))),
        ..Default::default()
    }));
    Node::publish(c, test_key())
        .await
        .expect("the publisher starts although the tree changed under its first scan")
}

/// Wait until the publisher has published `revision`, with no rescan asked for and the
/// backstop an hour away: only the file watcher can have started it.
async fn published(p: &NodeHandle, revision: u64) {
    p.wait_for(WAIT, &format!("revision {revision} published"), |s| {
        s.revision.is_some_and(|r| r >= revision)
    })
    .await
    .expect("a change made during the first scan is published when the scan ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_added_during_the_first_scan_is_published_as_soon_as_it_ends() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"first");
    write(&src, "d/b.txt", b"second");
    // Written once the root is listed: this scan cannot see it.
    let p = publisher_changing(&src, "", |root| write(root, "late.txt", b"late")).await;
    published(&p, 2).await;

    let mirror = lab.tmp.path().join("mirror");
    let s = subscriber(&mirror, p.ticket()).await;
    synced(&s, 2).await;
    assert_same_tree(&src, &mirror);
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_vanishes_during_the_first_scan_is_skipped_and_published_by_the_next() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"first");
    write(&src, "z/x", &noise(300_000, 7));
    write(&src, "z/y", b"stays");
    // Once z is listed: its file x moves out, and z itself is replaced by a link to where it
    // went (the report's "rename and a symlink").
    let p = publisher_changing(&src, "z", |root| {
        std::fs::rename(root.join("z/x"), root.join("moved-x")).unwrap();
        std::fs::rename(root.join("z"), root.join("z.old")).unwrap();
        std::os::unix::fs::symlink("z.old", root.join("z")).unwrap();
    })
    .await;
    published(&p, 2).await;

    let mirror = lab.tmp.path().join("mirror");
    let s = subscriber(&mirror, p.ticket()).await;
    synced(&s, 2).await;
    let held: Vec<String> = snapshot(&mirror).into_keys().collect();
    assert_eq!(held, ["a.txt", "moved-x", "z.old", "z.old/y"]);
    assert_eq!(
        std::fs::read(mirror.join("moved-x")).unwrap(),
        noise(300_000, 7)
    );
    s.shutdown().await;
    p.shutdown().await;
}
