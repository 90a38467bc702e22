//! Crashes: a node killed with SIGKILL (no goodbye, its connection left to time out on the
//! other side) comes back and carries on. The long randomized version is `scripts/chaos-kill`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use treecast::Node;

const MIB: usize = 1 << 20;

fn spawn_subscriber(ticket: &treecast::Ticket, dir: &std::path::Path) -> Spawned {
    Spawned::new(
        Command::new(env!("CARGO_BIN_EXE_treecast"))
            .args(["subscribe", &ticket.to_string()])
            .arg(dir)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--max-download",
                "4M",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Bytes the subscriber running on `dir` has verified, from `treecast status --json`.
fn verified_bytes(dir: &std::path::Path) -> Option<u64> {
    let out = Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(["status", "--json"])
        .arg(dir)
        .output()
        .ok()?;
    let report: treecast::node::report::StatusReport = serde_json::from_slice(&out.stdout).ok()?;
    report.sync.map(|s| s.bytes_done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_killed_mid_transfer_is_taken_back_at_once_and_resumes() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "data.bin", &noise(24 * MIB, 41));
    let p = publisher(&src).await;
    let mirror = lab.tmp.path().join("mirror");
    let mut child = spawn_subscriber(p.ticket(), &mirror);
    // Let it verify part of the tree (4 MB/s: the whole takes about 6 s), then SIGKILL it.
    let verified = 8 * MIB as u64;
    eventually(WAIT, "the subscriber to verify 8 MiB", || {
        verified_bytes(&mirror).is_some_and(|done| done >= verified)
    })
    .await;
    child.kill();

    // Same directory, same node key: the publisher still holds the dead connection's session.
    // The restarted node's new session replaces it at once, rather than after the old one
    // times out (20 s of silence).
    let s = Node::subscribe(config(&mirror), p.ticket().clone())
        .await
        .unwrap();
    s.wait_for(
        Duration::from_secs(10),
        "a session with the publisher",
        |st| st.peers >= 1,
    )
    .await
    .expect("the publisher accepts the restarted subscriber's session at once");
    synced(&s, 1).await;
    assert_same_tree(&src, &mirror);
    // Chunks verified before the kill were kept and not fetched again. The restarted node
    // fetches the manifest again (a few hundred bytes here, counted with the chunks), and a
    // chunk fetched again would add at least CHUNK_MIN: the bound lies between the two (CI
    // caught a kill at exactly 8 MiB: 16 MiB of chunks and 685 bytes of manifest).
    let second = s.stats().chunk_bytes_fetched;
    let bound = (24 * MIB) as u64 - verified + u64::from(treecast::tree::CHUNK_MIN) / 2;
    assert!(
        second < bound,
        "the restarted subscriber fetched {second} bytes of a {} byte tree",
        24 * MIB
    );
    s.shutdown().await;
    p.shutdown().await;
}
