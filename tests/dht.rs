//! DHT discovery on loopback: a subscriber given only the swarm ID (and a DHT node to start
//! from) finds the swarm, also after the publisher has gone.

mod common;

use common::*;
use treecast::Node;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_with_only_the_swarm_id_find_the_swarm_through_the_dht() {
    let lab = Lab::new();
    let dht = Node::dht_node(config(&lab.dir("dht"))).await.unwrap();
    let src = lab.dir("publisher");
    write(&src, "data.bin", &noise(8 << 20, 21));
    write(&src, "a/b.txt", b"b");
    let mut pcfg = config(&src);
    pcfg.bootstrap = dht.listen_addrs().to_vec();
    let p = Node::publish(pcfg, test_key()).await.unwrap();
    let bare = p.ticket().without_addrs();
    assert!(bare.addrs.is_empty());

    // 1. Only the swarm ID, the publisher key and the DHT node's address.
    let mut c1 = config(&lab.dir("first"));
    c1.bootstrap = dht.listen_addrs().to_vec();
    let first = Node::subscribe(c1, bare.clone()).await.unwrap();
    synced(&first, 1).await;
    // No address, no mDNS: they met through the DHT (a provider lookup by either side, or
    // the DHT's own routing, which connects them before any lookup when it is quick).
    assert_same_tree(&src, &lab.tmp.path().join("first"));

    // 2. The publisher is gone; a second subscriber finds the first through the DHT.
    p.shutdown().await;
    let mut c2 = config(&lab.dir("second"));
    c2.bootstrap = dht.listen_addrs().to_vec();
    let second = Node::subscribe(c2, bare).await.unwrap();
    synced(&second, 1).await;
    assert_same_tree(&src, &lab.tmp.path().join("second"));
    let table = second.peers().await.unwrap();
    assert!(
        table
            .iter()
            .any(|r| r.online && r.peer == first.peer_id().to_string()),
        "{table:#?}"
    );
    for n in [second, first] {
        n.shutdown().await;
    }
    dht.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_subscriber_catches_up_without_bootstrap_and_bad_head_records_are_refused() {
    use treecast::trust::{HeadBody, SignedHead};
    let lab = Lab::new();
    let dht = Node::dht_node(config(&lab.dir("dht"))).await.unwrap();
    let src = lab.dir("publisher");
    write(&src, "f.txt", b"one");
    let mut pcfg = config(&src);
    pcfg.bootstrap = dht.listen_addrs().to_vec();
    let p = Node::publish(pcfg, test_key()).await.unwrap();
    let bare = p.ticket().without_addrs();
    let sub_dir = lab.dir("sub");
    let mut scfg = config(&sub_dir);
    scfg.bootstrap = dht.listen_addrs().to_vec();
    let s = Node::subscribe(scfg, bare.clone()).await.unwrap();
    synced(&s, 1).await;
    let old_head = eventually_ok(WAIT, "revision 1 in the DHT", || async {
        match p.dht_head().await.unwrap() {
            Some(h) if h.body.revision == 1 => Ok(h),
            other => Err(other.map(|h| h.body.revision)),
        }
    })
    .await;
    s.shutdown().await;

    // Two revisions while the subscriber is offline.
    write(&src, "f.txt", b"two");
    assert_eq!(p.rescan().await.unwrap(), Some(2));
    write(&src, "f.txt", b"three");
    assert_eq!(p.rescan().await.unwrap(), Some(3));

    // Restart with no bootstrap at all: the saved peer table and the DHT are enough.
    let s = Node::subscribe(config(&sub_dir), bare.clone())
        .await
        .unwrap();
    synced(&s, 3).await;
    assert_eq!(std::fs::read(sub_dir.join("f.txt")).unwrap(), b"three");

    // Forged and stale head records are refused by the DHT nodes that would store them.
    let key = treecast::net::head_key(&bare.swarm_id, &bare.publisher.to_bytes());
    let forged = SignedHead::sign(
        HeadBody {
            revision: 99,
            ..old_head.body.clone()
        },
        &other_key(),
    );
    let mut claimed = forged.signed().clone();
    claimed.body.signer = bare.publisher.to_bytes(); // claims the real key, wrong signature
    let (rejected_before, stale_before) = (p.stats().heads_rejected, p.stats().heads_stale);
    for value in [
        forged.signed().encode(),
        claimed.encode(),
        old_head.encode(),
    ] {
        s.danger_put_record(key.to_vec(), value).await.unwrap();
    }
    // The two forged ones count as rejected; the old, validly signed one only as stale.
    eventually(WAIT, "the publisher to refuse all three records", || {
        let st = p.stats();
        st.heads_rejected >= rejected_before + 2 && st.heads_stale > stale_before
    })
    .await;
    let mut fcfg = config(&lab.dir("fresh"));
    fcfg.bootstrap = dht.listen_addrs().to_vec();
    let fresh = Node::subscribe(fcfg, bare.clone()).await.unwrap();
    let found = eventually_ok(WAIT, "a head in the DHT", || async {
        fresh.dht_head().await.unwrap().ok_or("none found yet")
    })
    .await;
    assert_eq!(found.body.revision, 3);
    for n in [fresh, s, p] {
        n.shutdown().await;
    }
    dht.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_without_any_bootstrap_source_or_without_providers() {
    let lab = Lab::new();
    let lonely = treecast::Ticket {
        swarm_id: uuid::Uuid::new_v4(),
        publisher: test_key().public(),
        addrs: Vec::new(),
    };
    // No addresses, no --bootstrap, no saved peers, no mDNS: refused at once.
    let err = Node::subscribe(config(&lab.dir("nothing")), lonely.clone())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("no way to find peers"), "{err}");

    // A DHT that answers but knows no peer of the swarm: a clear error after the wait.
    let dht = Node::dht_node(config(&lab.dir("dht"))).await.unwrap();
    let mut cfg = config(&lab.dir("waiting"));
    cfg.bootstrap = dht.listen_addrs().to_vec();
    cfg.connect_timeout = std::time::Duration::from_secs(3);
    let s = Node::subscribe(cfg, lonely).await.unwrap();
    // Until the first lookup has run the error is the plain one; then it names the DHT.
    let st = s
        .wait_for(WAIT, "an error naming the DHT", |st| {
            st.error.as_deref().is_some_and(|e| e.contains("DHT"))
        })
        .await
        .unwrap();
    let msg = st.error.unwrap();
    assert!(
        msg.contains("the DHT answered") && msg.contains("found no peer"),
        "{msg}"
    );
    s.shutdown().await;
    dht.shutdown().await;
}
