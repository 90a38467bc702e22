//! Operating a node: `treecast status --json` over the control socket, Prometheus metrics,
//! and bandwidth limits.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use common::*;
use treecast::node::report::StatusReport;
use treecast::Node;

const MIB: u64 = 1 << 20;

/// Run `treecast status DIR --json` (the real binary, over the control socket).
fn status_json(dir: &Path) -> StatusReport {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(["status", "--json"])
        .arg(dir)
        .output()
        .expect("run treecast status");
    assert!(
        out.status.success(),
        "treecast status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json is a StatusReport")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_sync_peers_and_rollout_during_and_after_a_transfer() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    let size = 24 * MIB;
    write(&src, "data.bin", &noise(size as usize, 31));
    let p = publisher(&src).await;
    let mut subs = Vec::new();
    for name in ["s1", "s2"] {
        let mut cfg = config(&lab.dir(name));
        // Slow enough that the transfer is still under way when we look.
        cfg.max_download = Some(4_000_000);
        subs.push(Node::subscribe(cfg, p.ticket().clone()).await.unwrap());
    }
    subs[0]
        .wait_for(WAIT, "download under way", |s| {
            s.progress.is_some_and(|(done, _)| done > 0)
        })
        .await
        .unwrap();

    // During: the subscriber reports progress and the publisher as a direct, online peer.
    let during = status_json(&lab.tmp.path().join("s1"));
    assert_eq!(during.schema, 1);
    assert_eq!(during.role, "subscriber");
    assert_eq!(during.swarm_id, p.ticket().swarm_id);
    assert_eq!(during.publisher_key, test_key().public().to_string());
    assert_eq!(during.newest_known, Some(1));
    assert_eq!(during.revision, None);
    assert!(!during.synced);
    let sync = during
        .sync
        .as_ref()
        .expect("sync progress while downloading");
    assert!(sync.bytes_total >= size && sync.bytes_done <= sync.bytes_total);
    let pub_row = during
        .peers
        .iter()
        .find(|r| r.peer == p.peer_id().to_string())
        .expect("publisher in the peer table");
    assert!(pub_row.online && !pub_row.banned);
    assert_eq!(pub_row.role.as_deref(), Some("publisher"));
    assert_eq!(pub_row.connection.as_deref(), Some("direct"));
    assert!(pub_row.address.is_some());
    assert_eq!(pub_row.revision, Some(1));
    // The publisher sees its revision not yet held by the subscribers.
    let pub_during = status_json(&src);
    assert_eq!(pub_during.role, "publisher");
    let rollout = pub_during.rollout.as_ref().expect("publisher rollout");
    assert_eq!(rollout.revision, 1);
    assert!(rollout.holding < 2, "{rollout:?}");
    assert!(rollout
        .behind
        .iter()
        .any(|b| b.peer == subs[0].peer_id().to_string()));

    for s in &subs {
        synced(s, 1).await;
    }
    // After: both hold revision 1; the publisher's rollout is complete once their
    // completion notices arrive.
    let pub_after = eventually_ok(WAIT, "the rollout to complete", || async {
        let report = status_json(&src);
        match report.rollout.as_ref().is_some_and(|r| r.holding >= 2) {
            true => Ok(report),
            false => Err(report),
        }
    })
    .await;
    let rollout = pub_after.rollout.as_ref().unwrap();
    assert_eq!((rollout.subscribers, rollout.holding), (2, 2));
    assert!(rollout.behind.is_empty());
    assert!(pub_after.traffic.total.up >= size);
    for s in &subs {
        let row = pub_after
            .peers
            .iter()
            .find(|r| r.peer == s.peer_id().to_string())
            .expect("subscriber in the publisher's peer table");
        assert_eq!(
            (row.role.as_deref(), row.revision),
            (Some("subscriber"), Some(1))
        );
    }
    let after = status_json(&lab.tmp.path().join("s1"));
    assert!(after.synced && after.sync.is_none());
    assert_eq!(after.revision, Some(1));
    assert!(after.traffic.total.down >= size);
    let from: u64 = after.traffic.by_source.values().map(|b| b.down).sum();
    assert_eq!(
        from, after.traffic.total.down,
        "sources add up to the total"
    );
    assert_eq!(after.peer_id, subs[0].peer_id().to_string());
    // The human dashboard draws from the same report.
    let text = after.render();
    assert!(text.contains("in sync") && text.contains(&after.publisher_fingerprint));

    // A reader that went away first (`treecast status | head -3`): the output ends quietly,
    // with no panic, as with other command-line tools.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_treecast"))
        .arg("status")
        .arg(lab.tmp.path().join("s1"))
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status into a closed pipe: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    for s in subs {
        s.shutdown().await;
    }
    p.shutdown().await;
    // Shut down: the socket is gone and status says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_treecast"))
        .arg("status")
        .arg(&src)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no treecast node is running"));
}

/// GET /metrics over plain HTTP/1.0.
fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to metrics");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out
}

/// The value of the sample line that starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counters_move_as_bytes_flow() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    let size = 8 * MIB;
    write(&src, "data.bin", &noise(size as usize, 32));
    let mut cfg = config(&src);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let p = Node::publish(cfg, test_key()).await.unwrap();
    let addr = p.metrics_addr().expect("metrics address");
    let up = r#"treecast_chunk_bytes_total{direction="up",source="peer"}"#;
    let before = scrape(addr);
    assert_eq!(sample(&before, up), 0.0);
    assert_eq!(sample(&before, "treecast_revision_held"), 1.0);

    let mut scfg = config(&lab.dir("s1"));
    scfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let s = Node::subscribe(scfg, p.ticket().clone()).await.unwrap();
    let sub_before = scrape(s.metrics_addr().unwrap());
    assert_eq!(sample(&sub_before, "treecast_chunks_verified_total"), 0.0);
    synced(&s, 1).await;

    let after = scrape(addr);
    assert!(
        sample(&after, up) >= size as f64,
        "publisher upload counted"
    );
    assert!(sample(&after, "treecast_chunks_sent_total") > 0.0);
    let sub_after = scrape(s.metrics_addr().unwrap());
    let down = r#"treecast_chunk_bytes_total{direction="down",source="publisher"}"#;
    assert!(
        sample(&sub_after, down) >= size as f64,
        "download from publisher counted"
    );
    assert!(sample(&sub_after, "treecast_chunks_verified_total") > 0.0);
    assert_eq!(sample(&sub_after, "treecast_chunks_failed_total"), 0.0);
    assert_eq!(sample(&sub_after, "treecast_revision_held"), 1.0);
    assert_eq!(sample(&sub_after, "treecast_synced"), 1.0);
    assert_eq!(sample(&sub_after, r#"treecast_peers{state="online"}"#), 1.0);
    // Anything but /metrics is a 404, and the node keeps serving.
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"GET /nope HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    assert!(out.contains(" 404 "), "{out}");
    scrape(addr);
    s.shutdown().await;
    p.shutdown().await;
}

/// Bytes per second of a subscriber's download, measured from its first verified chunk to
/// its last (start-up and manifest time left out).
async fn measured_download_rate(s: &treecast::NodeHandle) -> f64 {
    let mut rx = s.status();
    let mut first: Option<(Instant, u64)> = None;
    let mut last: Option<(Instant, u64)> = None;
    loop {
        let st = rx.borrow_and_update().clone();
        match st.progress {
            Some((done, total)) if done > 0 => {
                let now = (Instant::now(), done);
                first.get_or_insert(now);
                last = Some(now);
                if done == total {
                    break;
                }
            }
            None if st.revision.is_some() && first.is_some() => break,
            _ => {}
        }
        tokio::time::timeout(WAIT, rx.changed())
            .await
            .expect("progress")
            .expect("node running");
    }
    let ((t0, d0), (t1, d1)) = (first.unwrap(), last.unwrap());
    (d1 - d0) as f64 / (t1 - t0).as_secs_f64()
}

/// The subscriber's measured download rate is within 15% of `limit`.
async fn assert_rate_near_limit(s: &treecast::NodeHandle, limit: f64, what: &str) {
    let rate = measured_download_rate(s).await;
    eprintln!(
        "{what} limit {limit} B/s: measured {rate:.0} B/s ({:.2}x)",
        rate / limit
    );
    assert!(
        (rate - limit).abs() <= 0.15 * limit,
        "rate {rate:.0} B/s is not within 15% of the {limit} B/s {what} limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_limit_holds_the_rate_near_two_megabytes_per_second() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "data.bin", &noise(12 * MIB as usize, 33));
    let p = publisher(&src).await;
    let mut cfg = config(&lab.dir("s1"));
    let limit = 2_000_000.0;
    cfg.max_download = Some(limit as u64);
    let s = Node::subscribe(cfg, p.ticket().clone()).await.unwrap();
    assert_rate_near_limit(&s, limit, "download").await;
    synced(&s, 1).await;
    assert_same_tree(&src, &lab.tmp.path().join("s1"));
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_limit_holds_the_publishers_rate_near_two_megabytes_per_second() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "data.bin", &noise(12 * MIB as usize, 34));
    let mut cfg = config(&src);
    let limit = 2_000_000.0;
    cfg.max_upload = Some(limit as u64);
    let p = Node::publish(cfg, test_key()).await.unwrap();
    let s = subscriber(&lab.dir("s1"), p.ticket()).await;
    assert_rate_near_limit(&s, limit, "upload").await;
    synced(&s, 1).await;
    s.shutdown().await;
    p.shutdown().await;
}
