//! Handover: the old publisher signs a succession record naming a new key; subscribers follow
//! it (also one that was offline during the handover) and refuse the old key from then on.

mod common;

use common::*;
use treecast::{Node, PublisherKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_follow_a_handover_and_refuse_the_old_key_even_if_offline_during_it() {
    let lab = Lab::new();
    let (old_key, new_key) = (test_key(), PublisherKey::generate());
    let a_dir = lab.dir("old-publisher");
    write(&a_dir, "index.html", b"version 1");
    write(&a_dir, "data.bin", &noise(1 << 20, 81));
    let a = publisher(&a_dir).await;
    let ticket = a.ticket().clone();
    let (s1_dir, s2_dir) = (lab.dir("s1"), lab.dir("s2"));
    let s1 = subscriber(&s1_dir, &ticket).await;
    let s2 = subscriber(&s2_dir, &ticket).await;
    synced(&s1, 1).await;
    synced(&s2, 1).await;
    s2.shutdown().await; // offline during the handover
    a.shutdown().await;

    let chain = Node::handover(&a_dir, &old_key, new_key.public(), None).unwrap();
    assert_eq!(chain.len(), 1);
    assert_eq!(chain[0].body.from_revision, 2);
    let err = Node::publish(config(&a_dir), old_key.clone())
        .await
        .err()
        .expect("the old key may not publish any more")
        .to_string();
    assert!(err.contains("handed over"), "{err}");

    // The new publisher, on another machine: takes the tree from the swarm, then publishes.
    let b_dir = lab.dir("new-publisher");
    let mut bcfg = config(&b_dir);
    bcfg.swarm_id = Some(ticket.swarm_id);
    bcfg.succession = chain.clone();
    bcfg.bootstrap = s1.listen_addrs().to_vec();
    assert_eq!(Node::restore(bcfg.clone(), &new_key).await.unwrap(), 1);
    let b = Node::publish(bcfg, new_key.clone()).await.unwrap();
    // Its ticket still names the swarm's first key: subscribers pin that and follow the chain.
    assert_eq!(b.ticket().publisher, old_key.public());
    write(&b_dir, "index.html", b"version 2, from the new publisher");
    assert_eq!(b.rescan().await.unwrap(), Some(2));
    synced(&s1, 2).await;
    assert_same_tree(&b_dir, &s1_dir);

    // Someone still holding the old key publishes revision 3 of the same swarm elsewhere.
    let r_dir = lab.dir("rogue");
    write(&r_dir, "index.html", b"rogue 1");
    let mut rcfg = config(&r_dir);
    rcfg.swarm_id = Some(ticket.swarm_id);
    let rogue = Node::publish(rcfg, old_key.clone()).await.unwrap();
    for (n, text) in [(2u64, "rogue 2"), (3, "rogue 3")] {
        write(&r_dir, "index.html", text.as_bytes());
        assert_eq!(rogue.rescan().await.unwrap(), Some(n));
    }
    let stale_before = s1.stats().heads_stale;
    s1.dial(rogue.listen_addrs()[0].clone()).await.unwrap();
    let rogue_id = rogue.peer_id().to_string();
    eventually_ok(WAIT, "s1 to hear the rogue", || async {
        let table = s1.peers().await.unwrap();
        let told = table
            .iter()
            .any(|p| p.peer == rogue_id && p.revision == Some(3));
        match told && s1.stats().heads_stale > stale_before {
            true => Ok(()),
            false => Err(table),
        }
    })
    .await;
    assert_eq!(s1.status().borrow().revision, Some(2));
    assert_eq!(s1.status().borrow().newest_known, Some(2));
    assert_same_tree(&b_dir, &s1_dir);
    rogue.shutdown().await;

    // The subscriber that was offline learns the handover from the new publisher's head.
    let mut c2 = config(&s2_dir);
    c2.bootstrap = b.listen_addrs().to_vec();
    let s2 = Node::subscribe(c2, ticket.clone()).await.unwrap();
    synced(&s2, 2).await;
    assert_same_tree(&b_dir, &s2_dir);
    for n in [s2, s1, b] {
        n.shutdown().await;
    }
}
