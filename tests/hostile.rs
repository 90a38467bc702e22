//! Hostile input: forged and replayed heads, path traversal, lying chunks, oversize frames,
//! mistyped tickets, protocol version mismatch. Each test also checks that the honest node keeps
//! serving and that nothing is written outside the mirror.

mod common;

use std::time::Duration;

use common::raw::{hello_of, session_with};
use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use treecast::tree::{EntryKind, EntryWire, ManifestWire, MANIFEST_FORMAT};
use treecast::wire::CHUNKS_PROTOCOL;
use treecast::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_signed_by_another_key_is_refused_and_the_impostor_banned() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "real.txt", b"real");
    let p = publisher(&src).await;

    // An impostor claims the same swarm with its own key and other content.
    let fake = lab.dir("impostor");
    write(&fake, "evil.txt", b"evil");
    let mut cfg = config(&fake);
    cfg.swarm_id = Some(p.ticket().swarm_id);
    let impostor = Node::publish(cfg, other_key()).await.unwrap();

    let mut scfg = config(&lab.dir("sub"));
    scfg.bootstrap = impostor.listen_addrs().to_vec();
    let s = Node::subscribe(scfg, p.ticket().clone()).await.unwrap();
    synced(&s, 1).await;
    eventually(WAIT, "the impostor's head to be rejected", || {
        s.stats().heads_rejected >= 1
    })
    .await;
    assert!(s
        .banned_peers()
        .await
        .unwrap()
        .contains(&impostor.peer_id()));
    assert_same_tree(&src, &lab.tmp.path().join("sub"));
    assert!(!lab.tmp.path().join("sub/evil.txt").exists());

    // The honest publisher keeps serving.
    let s2 = subscriber(&lab.dir("sub2"), p.ticket()).await;
    synced(&s2, 1).await;
    assert_eq!(
        lab.top_level(),
        vec!["impostor", "publisher", "sub", "sub2"]
    );
    for n in [s, s2, impostor, p] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_revision_replayed_is_ignored() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "f.txt", b"v1");
    let p = publisher(&src).await;
    write(&src, "f.txt", b"v2");
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    let s = subscriber(&lab.dir("sub"), p.ticket()).await;
    synced(&s, 2).await;

    // A node with the right key whose newest revision is 1 (an old copy of the publisher).
    let old = lab.dir("old");
    write(&old, "f.txt", b"v1");
    let mut cfg = config(&old);
    cfg.swarm_id = Some(p.ticket().swarm_id);
    let replayer = Node::publish(cfg, test_key()).await.unwrap();
    assert_eq!(replayer.status().borrow().revision, Some(1));
    s.dial(replayer.listen_addrs()[0].clone()).await.unwrap();
    eventually(WAIT, "the replayed head to be seen", || {
        s.stats().heads_stale >= 1
    })
    .await;
    assert_eq!(s.status().borrow().revision, Some(2));
    assert_eq!(
        std::fs::read(lab.tmp.path().join("sub/f.txt")).unwrap(),
        b"v2"
    );
    for n in [s, replayer, p] {
        n.shutdown().await;
    }
}

fn file_entry(path: &str, data: &[u8]) -> EntryWire {
    let c = treecast::tree::chunk_reader(data).unwrap();
    EntryWire {
        path: path.into(),
        kind: EntryKind::File {
            size: c.size,
            mode: 0o444,
            hash: c.hash,
            chunks: c.chunks,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_with_escaping_paths_are_rejected_whole() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "ok.txt", b"ok");
    let p = publisher(&src).await;
    let s = subscriber(&lab.dir("sub"), p.ticket()).await;
    synced(&s, 1).await;

    for bad in ["../x", "/etc/x", "a/../../x"] {
        let wire = ManifestWire {
            format: MANIFEST_FORMAT,
            entries: vec![file_entry(bad, b"pwned"), file_entry("ok.txt", b"ok")],
        };
        let rev = p
            .danger_publish_manifest(postcard::to_stdvec(&wire).unwrap())
            .await
            .unwrap();
        s.wait_for(WAIT, "the manifest to be rejected", |st| {
            st.error
                .as_deref()
                .is_some_and(|e| e.contains(&format!("revision {rev}")))
        })
        .await
        .unwrap();
        assert_eq!(s.status().borrow().revision, Some(1), "{bad} applied");
    }
    assert!(!lab.tmp.path().join("x").exists());
    assert!(!std::path::Path::new("/etc/x").exists());
    assert_eq!(lab.top_level(), vec!["publisher", "sub"]);

    // The publisher recovers with a real scan, and the subscriber follows it.
    let rev = p.rescan().await.unwrap().expect("a real manifest differs");
    synced(&s, rev).await;
    assert_same_tree(&src, &lab.tmp.path().join("sub"));
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_mirror_is_never_written_through() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "evil/x", b"must stay inside the mirror");
    let outside = lab.dir("outside");
    let sub = lab.dir("sub");
    std::os::unix::fs::symlink(&outside, sub.join("evil")).unwrap();
    let p = publisher(&src).await;
    // A directory that holds something before its first revision is mirrored into only when
    // told to adopt it.
    let mut cfg = config(&sub);
    cfg.adopt = true;
    let s = Node::subscribe(cfg, p.ticket().clone()).await.unwrap();
    synced(&s, 1).await;
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote through the symlink"
    );
    assert!(std::fs::symlink_metadata(sub.join("evil"))
        .unwrap()
        .is_dir());
    assert_same_tree(&src, &sub);
    let aside = std::fs::read_dir(sub.join(".treecast/conflicts"))
        .unwrap()
        .count();
    assert_eq!(aside, 1, "the symlink is kept aside, not deleted");
    s.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_bad_chunks_is_dropped_and_chunks_come_from_elsewhere() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    let data = noise(40 << 20, 9);
    write(&src, "data.bin", &data);
    let p = publisher(&src).await;

    // A liar holding the same revision content, serving corrupted bytes.
    let liar_dir = lab.dir("liar");
    write(&liar_dir, "data.bin", &data);
    let mut cfg = config(&liar_dir);
    cfg.swarm_id = Some(p.ticket().swarm_id);
    cfg.danger_corrupt_served_chunks = true;
    let liar = Node::publish(cfg, test_key()).await.unwrap();

    let mut scfg = config(&lab.dir("sub"));
    scfg.bootstrap = liar.listen_addrs().to_vec();
    let s = Node::subscribe(scfg, p.ticket().clone()).await.unwrap();
    synced(&s, 1).await;
    assert!(s.stats().bad_chunks >= 1, "the liar was never asked");
    assert!(s.banned_peers().await.unwrap().contains(&liar.peer_id()));
    assert_same_tree(&src, &lab.tmp.path().join("sub"));
    let (_, report) = s.verify().await.unwrap();
    assert!(report.ok());
    for n in [s, liar, p] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_gets_the_sender_banned_and_the_publisher_keeps_serving() {
    let (lab, src, p, attacker) = attack_setup().await;

    let mut stream = send_oversize_frame(&attacker, &p).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the publisher must close the stream, got {read:?}"
    );
    eventually(WAIT, "the publisher to count the frame", || {
        p.stats().hostile_frames >= 1
    })
    .await;
    banned_and_still_serving(lab, &src, p, attacker).await;
}

/// Chunk requests travel in batches: a batch over `MAX_CHUNKS_PER_FRAME` (so its frame is over
/// `MAX_REQUEST_FRAME`) and an empty batch (within the cap, but malformed) each get their sender
/// banned, and the publisher keeps serving an honest subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_or_malformed_request_batch_gets_the_sender_banned() {
    use treecast::tree::ContentHash;
    use treecast::wire::{self, ChunkRequests, LaneMsg, MAX_CHUNKS_PER_FRAME, MAX_REQUEST_FRAME};
    let (lab, src, p, oversized) = attack_setup().await;
    let malformed = subscriber(&lab.dir("malformed"), p.ticket()).await;
    synced(&malformed, 1).await;

    let too_many = LaneMsg::Ask(ChunkRequests {
        first_id: 0,
        hashes: vec![ContentHash::of(b"a"); MAX_CHUNKS_PER_FRAME + 1],
    });
    let empty = LaneMsg::Ask(ChunkRequests {
        first_id: 0,
        hashes: vec![],
    });
    let frames = [wire::encode(&too_many), wire::encode(&empty)];
    assert!(frames[0].len() > MAX_REQUEST_FRAME && frames[1].len() <= MAX_REQUEST_FRAME);
    for (attacker, frame) in [&oversized, &malformed].into_iter().zip(&frames) {
        let mut stream = attacker
            .danger_open_stream(p.peer_id(), CHUNKS_PROTOCOL)
            .await
            .unwrap();
        let _ = wire::write_frame(&mut stream, frame).await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the publisher must close the stream, got {read:?}"
        );
    }
    eventually(WAIT, "the publisher to count both frames", || {
        p.stats().hostile_frames >= 2
    })
    .await;
    let banned = p.banned_peers().await.unwrap();
    assert!(banned.contains(&malformed.peer_id()), "{banned:?}");
    malformed.shutdown().await;
    banned_and_still_serving(lab, &src, p, oversized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_version_mismatch_is_a_clear_error_and_the_publisher_keeps_serving() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    let p = publisher(&src).await;
    let mut cfg = config(&lab.dir("future"));
    cfg.protocol_version = 99;
    let future = Node::subscribe(cfg, p.ticket().clone()).await.unwrap();
    let st = future
        .wait_for(WAIT, "a version error", |s| s.error.is_some())
        .await
        .unwrap();
    let err = st.error.unwrap();
    let ours = format!("version {}", treecast::wire::PROTOCOL_VERSION);
    assert!(err.contains(&ours) && err.contains("speaks 99"), "{err}");
    assert_eq!(st.revision, None);

    let ok = subscriber(&lab.dir("current"), p.ticket()).await;
    synced(&ok, 1).await;
    for n in [ok, future, p] {
        n.shutdown().await;
    }
}

#[test]
fn a_mistyped_ticket_is_a_clear_error() {
    let ticket = treecast::Ticket {
        swarm_id: uuid::Uuid::new_v4(),
        publisher: test_key().public(),
        addrs: vec!["/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap()],
    }
    .to_string();
    let mut typo = ticket.clone();
    let i = typo.len() / 2;
    let c = if &typo[i..i + 1] == "a" { "b" } else { "a" };
    typo.replace_range(i..i + 1, c);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_treecast"))
        .args(["subscribe", &typo])
        .arg(dir.path())
        .arg("--once")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checksum"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_rotted_on_a_subscribers_disk_are_never_served() {
    use std::os::unix::fs::FileExt;
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "data.bin", &noise(8 << 20, 61));
    write(&src, "small.txt", b"small");
    let p = publisher(&src).await;
    let a_dir = lab.dir("a");
    let a = subscriber(&a_dir, p.ticket()).await;
    synced(&a, 1).await;

    // Bit rot in A's copy: one byte flipped, size, mtime and inode unchanged, so nothing but a
    // hash notices.
    let rotted = a_dir.join("data.bin");
    let mtime = std::fs::metadata(&rotted).unwrap().modified().unwrap();
    std::fs::set_permissions(&rotted, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&rotted)
        .unwrap();
    let original = std::fs::read(src.join("data.bin")).unwrap()[3 << 20];
    f.write_all_at(&[original ^ 0xff], 3 << 20).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    std::fs::set_permissions(&rotted, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();

    // The publisher goes away; B can fetch only from A.
    let ticket = p.ticket().clone();
    p.shutdown().await;
    let b_dir = lab.dir("b");
    let b = subscriber_via(&b_dir, &ticket, &a).await;
    // B gets everything but the rotted chunk, which A refuses to serve (it fails A's check).
    let st = b
        .wait_for(WAIT, "all but one chunk", |s| {
            s.progress
                .is_some_and(|(done, total)| done > 0 && total - done <= 1 << 20)
        })
        .await
        .unwrap();
    assert!(!st.synced);
    assert_eq!(b.stats().bad_chunks, 0, "A sent no damaged bytes");
    assert!(b.banned_peers().await.unwrap().is_empty());
    assert!(
        !b_dir.join("data.bin").exists(),
        "nothing incomplete under its final name"
    );

    // The publisher comes back: B completes with the right bytes.
    let mut pcfg = config(&src);
    pcfg.bootstrap = a.listen_addrs().to_vec();
    let p = Node::publish(pcfg, test_key()).await.unwrap();
    b.dial(p.listen_addrs()[0].clone()).await.unwrap();
    synced(&b, 1).await;
    assert_same_tree(&src, &b_dir);
    for n in [b, a, p] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_control_messages_is_banned_and_the_publisher_keeps_serving() {
    use treecast::wire::{self, ControlMsg, Hello, Role, CONTROL_PROTOCOL, PROTOCOL_VERSION};
    let (lab, src, p, attacker) = attack_setup().await;

    // A control session of its own (it replaces the attacker node's), then a flood.
    let mut stream = attacker
        .danger_open_stream(p.peer_id(), CONTROL_PROTOCOL)
        .await
        .unwrap();
    wire::write_handshake(&mut stream, PROTOCOL_VERSION)
        .await
        .unwrap();
    let hello = Hello {
        node_id: uuid::Uuid::new_v4(),
        swarm_id: p.ticket().swarm_id,
        role: Role::Subscriber,
        head: None,
        addrs: Vec::new(),
    };
    wire::write_frame(&mut stream, &wire::encode(&ControlMsg::Hello(hello)))
        .await
        .unwrap();
    let beat = wire::encode(&ControlMsg::Heartbeat);
    for _ in 0..5000 {
        if wire::write_frame(&mut stream, &beat).await.is_err() {
            break; // the publisher hung up on us
        }
    }
    eventually(WAIT, "the publisher to ban the flooder", || {
        p.stats().peers_banned >= 1
    })
    .await;
    banned_and_still_serving(lab, &src, p, attacker).await;
}

/// Open a chunk stream from `attacker` to `p` and send a frame header of 64 MiB, far over the
/// cap, then a little of its body. The publisher may reset the stream as soon as it reads the
/// length, before the body or the flush go out: either is the refusal the tests expect.
async fn send_oversize_frame(
    attacker: &treecast::NodeHandle,
    p: &treecast::NodeHandle,
) -> treecast::net::streams::Stream {
    let mut stream = attacker
        .danger_open_stream(p.peer_id(), CHUNKS_PROTOCOL)
        .await
        .unwrap();
    let _ = stream.write_all(&(64u32 << 20).to_le_bytes()).await;
    let _ = stream.write_all(&[0u8; 1024]).await;
    let _ = stream.flush().await;
    stream
}

/// A publisher with one file, and a subscriber that synced from it and will now attack it.
async fn attack_setup() -> (
    Lab,
    std::path::PathBuf,
    treecast::NodeHandle,
    treecast::NodeHandle,
) {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    let p = publisher(&src).await;
    let attacker = subscriber(&lab.dir("attacker"), p.ticket()).await;
    synced(&attacker, 1).await;
    (lab, src, p, attacker)
}

/// The publisher banned the attacker and still serves an honest subscriber.
async fn banned_and_still_serving(
    lab: Lab,
    src: &std::path::Path,
    p: treecast::NodeHandle,
    attacker: treecast::NodeHandle,
) {
    assert!(p
        .banned_peers()
        .await
        .unwrap()
        .contains(&attacker.peer_id()));
    let honest = subscriber(&lab.dir("honest"), p.ticket()).await;
    synced(&honest, 1).await;
    assert_same_tree(src, &lab.tmp.path().join("honest"));
    for n in [honest, attacker, p] {
        n.shutdown().await;
    }
}

/// A hostile peer replays the publisher's genuine new head padded with junk handover records
/// (the records ride outside the head's signature). The victim must refuse it and ban the
/// sender, and never keep, serve or announce the padding: its hello would outgrow
/// `MAX_CONTROL_FRAME` and get it banned by every honest peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_head_padded_with_junk_handovers_is_refused_and_its_sender_banned() {
    use treecast::config::MAX_CONTROL_FRAME;
    use treecast::wire::{self, ControlMsg};
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    let p = publisher(&src).await;
    let victim_dir = lab.dir("victim");
    let v = subscriber(&victim_dir, p.ticket()).await;
    synced(&v, 1).await;
    v.shutdown().await;

    // Revision 2 appears while the victim is away; a scout (a node of another swarm) reads
    // its genuine head from the publisher's hello.
    write(&src, "b.txt", b"b");
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    let scout = Node::publish(config(&lab.dir("scout")), other_key())
        .await
        .unwrap();
    scout.dial(p.listen_addrs()[0].clone()).await.unwrap();
    let genuine = hello_of(&scout, p.peer_id()).await.head.unwrap();
    assert_eq!((genuine.body.revision, genuine.succession.len()), (2, 0));

    // The victim comes back knowing only the attacker (another node of another swarm, which
    // never met the publisher), so the padded copy is the first head it sees.
    let attacker = Node::publish(config(&lab.dir("attacker")), other_key())
        .await
        .unwrap();
    std::fs::remove_file(victim_dir.join(".treecast/peers")).unwrap();
    let mut vcfg = config(&victim_dir);
    vcfg.bootstrap = attacker.listen_addrs().to_vec();
    let v = Node::subscribe(vcfg, p.ticket().without_addrs())
        .await
        .unwrap();
    let padded = pad_with_junk_handovers(genuine, &test_key().public(), MAX_CONTROL_FRAME);
    let head_frame = wire::encode(&ControlMsg::Head(padded.clone()));
    assert!(padded.succession.len() > 1_500 && head_frame.len() <= MAX_CONTROL_FRAME);
    let mut stream = session_with(&attacker, v.peer_id(), p.ticket().swarm_id).await;
    wire::write_frame(&mut stream, &head_frame).await.unwrap();
    eventually(WAIT, "the victim to judge the padded head", || {
        v.stats().heads_rejected >= 1 || v.status().borrow().newest_known == Some(2)
    })
    .await;

    // The victim keeps syncing from the publisher.
    v.dial(p.listen_addrs()[0].clone()).await.unwrap();
    synced(&v, 2).await;

    // An honest newcomer that knows only the victim is not banned by it (the hello it gets is
    // small) and syncs from it.
    let mut hcfg = config(&lab.dir("honest"));
    hcfg.bootstrap = v.listen_addrs().to_vec();
    let h = Node::subscribe(hcfg, p.ticket().without_addrs())
        .await
        .unwrap();
    eventually(WAIT, "the newcomer to sync or ban", || {
        let st = h.status().borrow().clone();
        h.stats().peers_banned >= 1 || (st.synced && st.revision == Some(2))
    })
    .await;
    assert_eq!(h.stats().peers_banned, 0, "the newcomer banned the victim");
    assert_same_tree(&src, &lab.tmp.path().join("honest"));

    assert!(v.stats().heads_rejected >= 1, "the padded head was kept");
    assert!(v
        .banned_peers()
        .await
        .unwrap()
        .contains(&attacker.peer_id()));
    for n in [h, v, attacker, scout, p] {
        n.shutdown().await;
    }
    // What the victim stored and serves carries no junk.
    let db = treecast::store::Db::open(&victim_dir.join(".treecast/state.redb")).unwrap();
    let stored = treecast::trust::SignedHead::decode(&db.state().unwrap().head.unwrap()).unwrap();
    assert_eq!((stored.body.revision, stored.succession.len()), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_padding_the_publishers_own_head_is_banned_and_the_publisher_keeps_serving() {
    use treecast::config::MAX_CONTROL_FRAME;
    use treecast::wire::{self, ControlMsg};
    let (lab, src, p, attacker) = attack_setup().await;
    let genuine = hello_of(&attacker, p.peer_id()).await.head.unwrap();
    let padded = pad_with_junk_handovers(genuine, &test_key().public(), MAX_CONTROL_FRAME);
    let mut stream = session_with(&attacker, p.peer_id(), p.ticket().swarm_id).await;
    wire::write_frame(&mut stream, &wire::encode(&ControlMsg::Head(padded)))
        .await
        .unwrap();
    eventually(WAIT, "the publisher to refuse the padded head", || {
        p.stats().heads_rejected >= 1
    })
    .await;
    banned_and_still_serving(lab, &src, p, attacker).await;
}

/// `head` with junk handover records from the swarm's first key appended, until its `Head`
/// message is a few bytes short of `max`. Each record is a candidate the receiver must check.
fn pad_with_junk_handovers(
    mut head: treecast::trust::SignedHead,
    pin: &treecast::trust::PublisherPublicKey,
    max: usize,
) -> treecast::trust::SignedHead {
    use treecast::trust::{Succession, SuccessionBody};
    use treecast::wire::{self, ControlMsg};
    let size = |h: &treecast::trust::SignedHead| wire::encode(&ControlMsg::Head(h.clone())).len();
    let junk = |i: u64| Succession {
        body: SuccessionBody {
            swarm_id: head.body.swarm_id,
            from: pin.to_bytes(),
            to: other_key().public().to_bytes(),
            from_revision: 1_000 + i,
            created_unix_ms: 0,
        },
        signature: vec![0x5a; 64],
    };
    let mut i = 0;
    while size(&head) + 200 < max {
        head.succession.push(junk(i));
        i += 1;
    }
    while size(&head) + 2 < max {
        head.succession.last_mut().unwrap().signature.push(0x5a);
    }
    head
}

/// A peer's peer exchange names hundreds of invented peers, each at the same 8 loopback
/// addresses: UDP sockets of this test that never answer and count the QUIC connection
/// attempts reaching them (the "victim address" of a dial amplification). The node dials a
/// few of them, at a few addresses each, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_naming_hundreds_of_invented_peers_makes_the_node_dial_only_a_few() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use treecast::config::{PEX_ADDRS_PER_DIAL, PEX_DIALS_PER_SOURCE};
    use treecast::wire::{self, ControlMsg, PeerInfo, MAX_ADDRS_PER_PEER, MAX_PEERS_PER_MSG};
    let (lab, src, p, attacker) = attack_setup().await;

    // The victim address: 8 sockets. A QUIC client's Initial packets (long header, type 0)
    // carry the destination connection ID it picked for that connection; retransmissions
    // repeat it, so distinct IDs count connection attempts.
    let attempts: Arc<Mutex<HashSet<Vec<u8>>>> = Default::default();
    let mut sinks = tokio::task::JoinSet::new();
    let mut addrs = Vec::new();
    for _ in 0..MAX_ADDRS_PER_PEER {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = sock.local_addr().unwrap().port();
        addrs.push(format!("/ip4/127.0.0.1/udp/{port}/quic-v1").parse::<libp2p::Multiaddr>());
        let attempts = attempts.clone();
        sinks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf).await {
                let d = &buf[..n];
                if n > 6 && d[0] & 0xf0 == 0xc0 {
                    if let Some(dcid) = d.get(6..6 + d[5] as usize) {
                        attempts.lock().unwrap().insert(dcid.to_vec());
                    }
                }
            }
        });
    }
    let addrs: Vec<Vec<u8>> = addrs.into_iter().map(|a| a.unwrap().to_vec()).collect();
    let seen = || attempts.lock().unwrap().len() as u64;

    // 8 full peer-exchange messages (504 invented peers), well within the control-message
    // rate limit, then a completion notice for a revision nobody holds (the attacker node
    // announced revision 1 already): the victim handles a session's messages in order, so once
    // its peer table shows the notice it has judged every peer named before it.
    let start = tokio::time::Instant::now();
    let mut stream = session_with(&attacker, p.peer_id(), p.ticket().swarm_id).await;
    let named = 8 * (MAX_PEERS_PER_MSG - 1);
    for _ in 0..8 {
        let list = (0..MAX_PEERS_PER_MSG - 1)
            .map(|_| PeerInfo {
                peer_id: libp2p::PeerId::random().to_bytes(),
                addrs: addrs.clone(),
            })
            .collect();
        wire::write_frame(&mut stream, &wire::encode(&ControlMsg::Peers(list)))
            .await
            .unwrap();
    }
    let notice = ControlMsg::Complete { revision: 2 };
    wire::write_frame(&mut stream, &wire::encode(&notice))
        .await
        .unwrap();
    let attacker_id = attacker.peer_id().to_string();
    eventually_ok(WAIT, "the notice to be handled", || async {
        let table = p.peers().await.unwrap();
        let row = table.iter().find(|r| r.peer == attacker_id).cloned();
        match row {
            Some(r) if r.revision == Some(2) => Ok(()),
            other => Err(other),
        }
    })
    .await;

    // One source is worth `PEX_DIALS_PER_SOURCE` dials a minute, each at a few addresses.
    let bound = |since: tokio::time::Instant| {
        let minutes = since.elapsed().as_secs_f64() / 60.0;
        PEX_DIALS_PER_SOURCE as u64 + (PEX_DIALS_PER_SOURCE as f64 * minutes).ceil() as u64
    };
    eventually(
        WAIT,
        "a dial of an invented peer to reach its address",
        || seen() >= 1,
    )
    .await;
    let st = p.stats();
    assert!(
        st.pex_dials <= bound(start),
        "{} invented peers named: the node started {} dials (bound {}); {} QUIC connection \
         attempts reached the 8 addresses so far",
        named,
        st.pex_dials,
        bound(start),
        seen()
    );
    assert!(st.pex_dials_refused >= named as u64 - bound(start));

    // The node keeps serving, and its dials stay within the bounds meanwhile.
    let honest = subscriber(&lab.dir("honest"), p.ticket()).await;
    synced(&honest, 1).await;
    assert_same_tree(&src, &lab.tmp.path().join("honest"));
    let reached = seen();
    let st = p.stats();
    assert!(st.pex_dials <= bound(start), "{} dials", st.pex_dials);
    assert!(
        reached <= st.pex_dials * PEX_ADDRS_PER_DIAL as u64,
        "{reached} connection attempts for {} dials",
        st.pex_dials
    );
    assert!(!p
        .banned_peers()
        .await
        .unwrap()
        .contains(&attacker.peer_id()));
    sinks.abort_all();
    for n in [honest, attacker, p] {
        n.shutdown().await;
    }
}

/// A banned peer that comes back is refused at the handshake: the publisher never lets the
/// connection up, so the attacker cannot open a stream on it, and honest peers are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_peer_that_dials_again_is_refused_at_the_handshake() {
    let (lab, src, p, attacker) = attack_setup().await;
    // Banned for an oversize frame.
    let _stream = send_oversize_frame(&attacker, &p).await;
    eventually(WAIT, "the publisher to ban the attacker", || {
        p.stats().peers_banned >= 1
    })
    .await;

    // Back with the same key: each handshake is refused.
    for round in 1..=2 {
        let refused = p.stats().connections_refused;
        attacker.dial(p.listen_addrs()[0].clone()).await.unwrap();
        eventually(WAIT, "the publisher to refuse the handshake", || {
            p.stats().connections_refused > refused
        })
        .await;
        let opened = attacker
            .danger_open_stream(p.peer_id(), CHUNKS_PROTOCOL)
            .await;
        assert!(
            opened.is_err(),
            "round {round}: a banned peer opened a stream"
        );
    }
    banned_and_still_serving(lab, &src, p, attacker).await;
}
