//! `treecast demo`: a publisher and two subscribers on loopback, with progress bars, then an
//! edit that moves only the changed chunks. Everything lives in a temporary directory that is
//! removed at the end.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::NodeConfig;
use crate::node::{Node, NodeHandle};
use crate::trust::PublisherKey;

const WAIT: Duration = Duration::from_secs(300);

/// Fill `buf` with deterministic incompressible bytes.
pub fn noise(seed: u64, buf: &mut [u8]) {
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(buf);
}

/// Write a sample tree: nested and empty directories, an empty file, unicode and spaced names,
/// an executable script and one large file of `size_mib` MiB.
pub fn sample_tree(root: &Path, size_mib: u64) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("docs/guides"))?;
    std::fs::create_dir_all(root.join("empty dir"))?;
    std::fs::create_dir_all(root.join("données/日本語"))?;
    std::fs::write(
        root.join("README.txt"),
        "a sample tree published by treecast demo\n",
    )?;
    std::fs::write(root.join("empty file"), b"")?;
    std::fs::write(root.join("docs/guides/how to.md"), "# How to\n".repeat(500))?;
    std::fs::write(root.join("données/日本語/ファイル.txt"), "こんにちは\n")?;
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hello\n")?;
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    let mut big = vec![0u8; (size_mib << 20) as usize];
    noise(1, &mut big);
    std::fs::write(root.join("data.bin"), &big)?;
    Ok(())
}

/// Run the demo.
pub async fn run(size_mib: u64) -> Result<ExitCode> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let (pub_dir, sub_a, sub_b) = (
        tmp.path().join("publisher"),
        tmp.path().join("mirror-a"),
        tmp.path().join("mirror-b"),
    );
    println!(
        "1. writing a sample tree ({size_mib} MiB) to {}",
        pub_dir.display()
    );
    sample_tree(&pub_dir, size_mib)?;

    let key = PublisherKey::load_or_create(&pub_dir.join(".treecast/publisher.key"))?;
    // Everything runs on loopback and the ticket carries the publisher's address: no LAN
    // discovery (mDNS would multicast on every interface).
    let local = |dir: &std::path::Path| NodeConfig {
        mdns: false,
        ..NodeConfig::new(dir)
    };
    let publisher = Node::publish(local(&pub_dir), key).await?;
    println!("2. publisher is up; ticket:\n   {}", publisher.ticket());

    let a = Node::subscribe(local(&sub_a), publisher.ticket().clone()).await?;
    let b = Node::subscribe(local(&sub_b), publisher.ticket().clone()).await?;
    println!("3. two subscribers are fetching revision 1");
    let started = Instant::now();
    follow(&[("mirror-a", &a), ("mirror-b", &b)], 1).await?;
    println!(
        "   both mirrors complete in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    check("mirror-a", &a).await?;
    check("mirror-b", &b).await?;

    println!("4. editing one byte in the middle of data.bin and adding a file");
    edit_one_byte(&pub_dir.join("data.bin"))?;
    std::fs::write(pub_dir.join("docs/new.txt"), "added in revision 2\n")?;
    let sent_before = publisher.stats().chunk_bytes_sent;
    let revision = match publisher.rescan().await? {
        Some(r) => r,
        None => publisher.status().borrow().revision.unwrap_or(1),
    };
    follow(&[("mirror-a", &a), ("mirror-b", &b)], revision).await?;
    let sent = publisher.stats().chunk_bytes_sent - sent_before;
    println!(
        "   revision {revision} applied; publisher sent {:.2} MiB for both mirrors (tree is {size_mib} MiB)",
        sent as f64 / (1 << 20) as f64
    );
    check("mirror-a", &a).await?;
    check("mirror-b", &b).await?;

    a.shutdown().await;
    b.shutdown().await;
    publisher.shutdown().await;
    println!("5. done; removing {}", tmp.path().display());
    Ok(ExitCode::SUCCESS)
}

async fn follow(nodes: &[(&str, &NodeHandle)], revision: u64) -> Result<()> {
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    let mut waits = Vec::new();
    for (name, node) in nodes {
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(style.clone());
        bar.set_prefix(name.to_string());
        let mut status = node.status();
        waits.push(async move {
            let deadline = tokio::time::sleep(WAIT);
            tokio::pin!(deadline);
            loop {
                let s = status.borrow_and_update().clone();
                if let Some((done, total)) = s.progress {
                    bar.set_length(total);
                    bar.set_position(done);
                }
                if s.revision.is_some_and(|r| r >= revision) && s.synced {
                    bar.finish();
                    return Ok(());
                }
                tokio::select! {
                    r = status.changed() => if r.is_err() { bail!("node stopped") },
                    _ = &mut deadline => bail!("timed out; status {s:?}"),
                }
            }
        });
    }
    for r in futures::future::join_all(waits).await {
        r?;
    }
    Ok(())
}

async fn check(name: &str, node: &NodeHandle) -> Result<()> {
    let (revision, report) = node.verify().await?;
    if !report.ok() {
        bail!(
            "{name} does not match revision {revision}: {:?}",
            report.problems
        );
    }
    println!(
        "   verified {name}: revision {revision}, {} files rehashed, identical to the publisher",
        report.files_checked
    );
    Ok(())
}

fn edit_one_byte(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, len / 2)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, len / 2)?;
    Ok(())
}
