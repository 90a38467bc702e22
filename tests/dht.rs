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
    assert!(first.stats().dht_lookups >= 1);
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
