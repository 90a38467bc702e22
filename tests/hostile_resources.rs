//! Hostile peers against what a node shares out: the publisher's seed hold (it sends each new
//! chunk to one peer first, and refuses it to others for a while) and the session slots. Each
//! attacker speaks the protocol on the wire; the revision must still reach an honest
//! subscriber.

mod common;

use std::time::Duration;

use common::*;
use treecast::config::MAX_CHUNK_FRAME;
use treecast::tree::ContentHash;
use treecast::wire::{self, CHUNKS_PROTOCOL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_asking_for_a_chunk_over_and_over_cannot_keep_it_from_others() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    let p = publisher(&src).await;
    // A subscriber whose own node serves only corrupt chunks (so the honest one bans it and
    // must get the chunk from the publisher), and which keeps a raw chunk stream of its own.
    let mut cfg = config(&lab.dir("attacker"));
    cfg.danger_corrupt_served_chunks = true;
    let attacker = treecast::Node::subscribe(cfg, p.ticket().clone())
        .await
        .unwrap();
    synced(&attacker, 1).await;
    let b = b"only the publisher has this chunk".to_vec();
    write(&src, "b.txt", &b);
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    let mut stream = attacker
        .danger_open_stream(p.peer_id(), CHUNKS_PROTOCOL)
        .await
        .unwrap();
    let hash = ContentHash::of(&b);
    let ask = move |id| wire::encode_requests(id, &[hash]);
    wire::write_frame(&mut stream, &ask(0)).await.unwrap();
    let first = wire::read_frame(&mut stream, MAX_CHUNK_FRAME)
        .await
        .unwrap()
        .unwrap();
    assert!(
        wire::decode_replies(&first).unwrap().chunks[0].is_some(),
        "the attacker gets it first"
    );

    // Asks again every 200 ms (well inside the hold), for as long as the honest one syncs.
    let keep_asking = tokio::spawn(async move {
        for id in 1..3000u32 {
            if wire::write_frame(&mut stream, &ask(id)).await.is_err() {
                return;
            }
            if wire::read_frame(&mut stream, MAX_CHUNK_FRAME)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                return;
            }
            // The attacker's pace, not synchronisation: often enough to ask again and again
            // within the seed hold.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let honest = subscriber(&lab.dir("honest"), p.ticket()).await;
    synced(&honest, 2).await;
    assert_eq!(
        std::fs::read(lab.tmp.path().join("honest/b.txt")).unwrap(),
        b
    );
    assert!(!keep_asking.is_finished(), "the attacker was still asking");
    keep_asking.abort();
    for n in [honest, attacker, p] {
        n.shutdown().await;
    }
}

/// Sybils take every session slot of the publisher and keep them with heartbeats, moving no
/// chunk once they hold the tree. An honest subscriber that comes later still gets a session
/// (the idlest Sybil's goes) and the revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybils_holding_every_session_slot_do_not_shut_out_an_honest_peer() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    let mut cfg = config(&src);
    cfg.max_peers = 3;
    cfg.session_idle = Duration::from_secs(2);
    let p = treecast::Node::publish(cfg, test_key()).await.unwrap();

    // Each Sybil is a node of the swarm that serves only corrupt chunks, so nobody gets the
    // tree from it: once synced, its session only carries heartbeats.
    let mut sybils = Vec::new();
    for i in 0..3 {
        let mut cfg = config(&lab.dir(&format!("sybil{i}")));
        cfg.danger_corrupt_served_chunks = true;
        let sybil = treecast::Node::subscribe(cfg, p.ticket().clone())
            .await
            .unwrap();
        synced(&sybil, 1).await;
        sybils.push(sybil);
    }
    eventually(WAIT, "the Sybils to hold every slot", || {
        p.status().borrow().peers >= 3
    })
    .await;

    let honest = subscriber(&lab.dir("honest"), p.ticket()).await;
    synced(&honest, 1).await;
    assert_same_tree(&src, &lab.tmp.path().join("honest"));
    honest.shutdown().await;
    for s in sybils {
        s.shutdown().await;
    }
    p.shutdown().await;
}

/// A peer stores the heads of swarms it invented, validly self-signed, on the publisher's DHT
/// store: past its share they are refused, so it cannot fill the store for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_fill_the_dht_store_with_invented_swarms() {
    use treecast::config::MAX_RECORDS_PER_PEER;
    use treecast::trust::{HeadBody, PublisherKey, SignedHead};
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    let p = publisher(&src).await;
    let attacker = subscriber(&lab.dir("attacker"), p.ticket()).await;
    synced(&attacker, 1).await;

    let invented = MAX_RECORDS_PER_PEER + 16;
    for _ in 0..invented {
        let key = PublisherKey::generate();
        let body = HeadBody {
            swarm_id: uuid::Uuid::new_v4(),
            revision: 1,
            manifest_hash: ContentHash::of(b"m"),
            manifest_size: 1,
            manifest_index_hash: ContentHash::of(b"i"),
            created_unix_ms: 0,
            signer: [0; 32],
        };
        let head = SignedHead::sign(body.clone(), &key);
        let record_key = treecast::net::head_key(&body.swarm_id, &key.public().to_bytes());
        attacker
            .danger_put_record(record_key.to_vec(), head.signed().encode())
            .await
            .unwrap();
    }
    eventually(
        WAIT,
        "the publisher to refuse the records past the share",
        || p.stats().dht_records_refused >= 16,
    )
    .await;
    assert_eq!(
        p.stats().heads_rejected,
        0,
        "they were valid, only too many"
    );
    let honest = subscriber(&lab.dir("honest"), p.ticket()).await;
    synced(&honest, 1).await;
    for n in [honest, attacker, p] {
        n.shutdown().await;
    }
}
