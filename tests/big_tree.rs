//! A tree of many small files (issue #19): a subscriber whose open-file limit is 1024 mirrors
//! 100,000 files. Staging holds a bounded number of descriptors whatever the number of files,
//! so the limit is never reached. The speed beside rsync is `scripts/bench-manyfiles`.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const FILES: usize = 100_000;
const DIRS: usize = 100;
/// The soft and hard open-file limit of the subscriber: the usual default.
const NOFILE: u64 = 1024;
/// A hang guard only: a two-core machine shared with other builds needs a few minutes.
const MIRRORED_WITHIN: Duration = Duration::from_secs(900);

/// A child process killed and reaped when dropped, so a test that fails leaves none running.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `treecast subscribe --once` into `dir`, with its open-file limit lowered to `NOFILE`.
/// Its log goes to `log`.
fn subscribe_once_limited(
    ticket: &treecast::Ticket,
    dir: &std::path::Path,
    log: &std::path::Path,
) -> Reaped {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_treecast"));
    cmd.args(["subscribe", &ticket.to_string()])
        .arg(dir)
        .args(["--once", "--listen", "127.0.0.1:0", "--no-mdns"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Reaped(cmd.spawn().expect("start treecast subscribe"))
}

/// The "Max open files" soft limit of a running process, from /proc.
fn open_file_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `FILES` files of 200 B to 3 KiB, each different, in `DIRS` directories.
fn write_tree(root: &std::path::Path) {
    for d in 0..DIRS {
        std::fs::create_dir_all(root.join(format!("d{d:03}"))).unwrap();
    }
    for i in 0..FILES {
        let len = 200 + (i * 7919) % (3072 - 200);
        let path = root.join(format!("d{:03}/f{i:06}", i % DIRS));
        std::fs::write(path, noise(len, i as u64)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_limited_to_1024_open_files_mirrors_100000_files() {
    let lab = Lab::in_memory();
    let src = lab.dir("publisher");
    write_tree(&src);
    let p = publisher(&src).await;
    let mirror = lab.tmp.path().join("mirror");
    let log = lab.tmp.path().join("subscriber.log");
    let mut child = subscribe_once_limited(p.ticket(), &mirror, &log);
    assert_eq!(
        open_file_limit(child.0.id()),
        Some(NOFILE),
        "the subscriber runs under the lowered limit"
    );
    let status = eventually_ok(MIRRORED_WITHIN, "subscribe --once to exit", || {
        let exited = match child.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_string()),
            Err(e) => Err(e.to_string()),
        };
        async move { exited }
    })
    .await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = logged.lines().rev().take(5).collect();
    assert!(status.success(), "subscribe --once failed: {tail:?}");

    let verify = Command::new(env!("CARGO_BIN_EXE_treecast"))
        .arg("verify")
        .arg(&mirror)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "treecast verify: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_same_tree(&src, &mirror);
    p.shutdown().await;
}
