//! `TREECAST_QUIC_CC`, the switch between QUIC congestion controllers (BBR by default, Cubic
//! for measuring side by side): a value that names no controller stops the node at start with
//! an error naming the value and the ones allowed, never a node quietly running another one.

mod common;

use std::process::{Command, Stdio};

use common::*;

#[tokio::test]
async fn an_unknown_congestion_controller_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"hello").unwrap();
    let log = dir.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_treecast"));
    cmd.arg("publish")
        .arg(&tree)
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .env("TREECAST_QUIC_CC", "reno")
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut running = Spawned::new(&mut cmd);
    let status = running.exited().await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "exited with success; stderr: {stderr}");
    assert!(
        stderr.contains("TREECAST_QUIC_CC=\"reno\"") && stderr.contains("bbr or cubic"),
        "stderr does not name the value and the choices: {stderr}"
    );
}
