//! Local changes in a read-only mirror: edited, deleted and added files are found at start
//! and while running; the user is warned; edits and additions are kept in
//! `.treecast/conflicts/`; the mirror is repaired.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn sample_tree(src: &Path) {
    write(src, "big.bin", &noise(3 << 20, 51));
    write(src, "docs/a.txt", b"original a");
    write(src, "docs/b.txt", b"original b");
}

/// Edit docs/a.txt, delete docs/b.txt, add new.txt and a directory with a file in it.
fn change_locally(mirror: &Path) {
    let a = mirror.join("docs/a.txt");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&a, b"my edit").unwrap();
    std::fs::remove_file(mirror.join("docs/b.txt")).unwrap();
    write(mirror, "new.txt", b"my new file");
    write(mirror, "extra/inner.txt", b"inner");
}

/// The conflicts directory holds the edit and both additions, named by path.
fn assert_kept_in_conflicts(mirror: &Path) {
    let dir = mirror.join(".treecast/conflicts");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let find = |suffix: &str| {
        let name = names
            .iter()
            .find(|n| n.ends_with(suffix))
            .unwrap_or_else(|| panic!("no {suffix} in conflicts: {names:?}"));
        dir.join(name)
    };
    assert_eq!(std::fs::read(find("-docs%2Fa.txt")).unwrap(), b"my edit");
    assert_eq!(std::fs::read(find("-new.txt")).unwrap(), b"my new file");
    assert_eq!(
        std::fs::read(find("-extra").join("inner.txt")).unwrap(),
        b"inner"
    );
}

/// A publisher of the sample tree and a subscriber whose mirror holds it.
async fn synced_mirror() -> (
    Lab,
    std::path::PathBuf,
    treecast::NodeHandle,
    std::path::PathBuf,
    treecast::NodeHandle,
) {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    sample_tree(&src);
    let p = publisher(&src).await;
    let mirror = lab.dir("mirror");
    let s = subscriber(&mirror, p.ticket()).await;
    synced(&s, 1).await;
    (lab, src, p, mirror, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_running_are_moved_aside_and_the_mirror_repaired() {
    let (_lab, src, p, mirror, s) = synced_mirror().await;

    change_locally(&mirror);
    eventually(WAIT, "the local changes to be found", || {
        s.stats().local_changes >= 4
    })
    .await;
    synced(&s, 1).await;
    eventually(WAIT, "the mirror to be repaired", || {
        snapshot(&src) == snapshot(&mirror)
    })
    .await;
    assert_kept_in_conflicts(&mirror);
    let (_, report) = s.verify().await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // Repaired files are read-only again.
    let mode = std::fs::metadata(mirror.join("docs/a.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o222, 0);
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_stopped_are_found_at_start_with_a_warning() {
    let (lab, src, p, mirror, s) = synced_mirror().await;
    s.shutdown().await;

    change_locally(&mirror);
    // The CLI, as a user runs it: the warning goes to its log on stderr.
    let log = lab.tmp.path().join("subscriber.log");
    let mut child = Spawned::new(
        Command::new(env!("CARGO_BIN_EXE_treecast"))
            .args(["subscribe", &p.ticket().to_string()])
            .arg(&mirror)
            .args(["--listen", "127.0.0.1:0", "--no-mdns"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    eventually(WAIT, "the mirror to be repaired", || {
        snapshot(&src) == snapshot(&mirror)
    })
    .await;
    eventually(WAIT, "the repair to finish", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("revision applied")
    })
    .await;
    child.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the mirror is read-only: local changes found"),
        "no warning in:\n{text}"
    );
    assert!(text.contains("docs/a.txt") && text.contains("docs/b.txt") && text.contains("new.txt"));
    assert_kept_in_conflicts(&mirror);
    p.shutdown().await;
}

/// Stopped between putting a revision's first file in place and recording the revision (a
/// kill mid-apply): `verify` says so, the files of it already there are not taken for local
/// edits, also while no peer can be reached, and the next start finishes the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_cut_short_is_finished_at_start_not_taken_for_edits() {
    let (_lab, src, p, mirror, s) = synced_mirror().await;
    s.shutdown().await;
    write(&src, "docs/a.txt", b"revision two");
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    // What such a kill leaves: revision 2's file under its final name, read-only as an apply
    // makes it, and the state database at revision 1 with the apply of revision 2 begun.
    let a = mirror.join("docs/a.txt");
    std::fs::remove_file(&a).unwrap();
    std::fs::write(&a, b"revision two").unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o444)).unwrap();
    treecast::store::Db::open(&mirror.join(".treecast/state.redb"))
        .unwrap()
        .begin_apply(2)
        .unwrap();
    let err = treecast::node::verify_dir(&mirror).unwrap_err().to_string();
    assert!(err.contains("put revision 2 in place"), "{err}");

    // Started with no peer to reach, so its first look for local changes comes before any
    // download: the file of revision 2 is not an edit of revision 1.
    let offline = subscriber(&mirror, &p.ticket().without_addrs()).await;
    eventually(WAIT, "a look for local changes", || {
        offline.stats().local_checks >= 1
    })
    .await;
    assert_eq!(offline.stats().local_changes, 0);
    assert_eq!(std::fs::read(&a).unwrap(), b"revision two");
    offline.shutdown().await;

    let s = subscriber(&mirror, p.ticket()).await;
    synced(&s, 2).await;
    assert_eq!(snapshot(&src), snapshot(&mirror));
    let conflicts = mirror.join(".treecast/conflicts");
    let moved: Vec<_> = std::fs::read_dir(&conflicts)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(moved.is_empty(), "taken for local edits: {moved:?}");
    let (revision, report) = s.verify().await.unwrap();
    assert_eq!(revision, 2);
    assert!(report.ok(), "{:?}", report.problems);
    s.shutdown().await;
    p.shutdown().await;
}
