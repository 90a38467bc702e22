//! `TREECAST_QUIC_CC`, the switch between QUIC congestion controllers (BBR by default, Cubic
//! for measuring side by side): a value that names no controller stops the node at start with
//! an error naming the value and the ones allowed, never a node quietly running another one.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

/// A `treecast` process, killed and reaped when dropped, so that a node that should have
/// failed at once but serves instead does not outlive its test.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_unknown_congestion_controller_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"hello").unwrap();
    let log = dir.path().join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_treecast"))
        .arg("publish")
        .arg(&tree)
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .env("TREECAST_QUIC_CC", "reno")
        .env("XDG_CONFIG_HOME", dir.path().join("no-config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start treecast");
    let mut running = Running(child);
    let status = eventually_ok(WAIT, "treecast to exit", || {
        let polled = running.0.try_wait();
        async move {
            match polled {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running".to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "exited with success; stderr: {stderr}");
    assert!(
        stderr.contains("TREECAST_QUIC_CC=\"reno\"") && stderr.contains("bbr or cubic"),
        "stderr does not name the value and the choices: {stderr}"
    );
}
