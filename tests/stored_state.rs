//! A state database whose stored revision cannot be read: the node refuses to start and says
//! which file, rather than take the revision for an empty tree.

mod common;

use common::*;
use treecast::{Node, NodeHandle};

fn refusal(result: Result<NodeHandle, treecast::node::NodeError>) -> String {
    match result {
        Ok(_) => panic!("the publisher started"),
        Err(e) => e.to_string(),
    }
}

/// A signed manifest this build cannot decode (as a newer treecast's format would be) is
/// stored as the publisher's revision 2. Taken for an empty tree, it would let the publisher
/// publish a tree of one file over the swarm's ten at start: the guard against a much smaller
/// tree compares with nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_manifest_that_does_not_decode_stops_the_node_at_start() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    for i in 0..10 {
        write(&src, &format!("f{i}.txt"), format!("file {i}").as_bytes());
    }
    let p = publisher(&src).await;
    let mut newer = treecast::tree::Manifest::default().encode();
    newer[0] = 99; // the format number comes first: one this build does not read
    assert_eq!(p.danger_publish_manifest(newer).await.unwrap(), 2);
    p.shutdown().await;
    for i in 1..10 {
        std::fs::remove_file(src.join(format!("f{i}.txt"))).unwrap();
    }
    let state = src.join(".treecast/state.redb");

    let err = refusal(Node::publish(config(&src), test_key()).await);
    assert!(
        err.contains(&state.display().to_string()) && err.contains("revision 2"),
        "{err}"
    );
    let mut forced = config(&src);
    forced.force = true;
    let err = refusal(Node::publish(forced, test_key()).await);
    assert!(err.contains("manifest"), "{err}");
    let err = treecast::node::verify_dir(&src).expect_err("verify reads the revision");
    assert!(err.to_string().contains("state.redb"), "{err}");
}

/// A stored manifest whose bytes were damaged does not match the hash in its signed head:
/// refused too, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stored_manifest_stops_the_node_at_start() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    publisher(&src).await.shutdown().await;
    let state = src.join(".treecast/state.redb");
    {
        let db = treecast::store::Db::open(&state).unwrap();
        let stored = db.state().unwrap();
        let head = treecast::trust::SignedHead::decode(stored.head.as_ref().unwrap()).unwrap();
        let index_hash = head.body.manifest_index_hash;
        let index_bytes = db.blob(&index_hash).unwrap().unwrap();
        let index: Vec<treecast::tree::ChunkRef> = postcard::from_bytes(&index_bytes).unwrap();
        let mut blobs = vec![(index_hash, index_bytes)];
        for c in &index {
            let mut b = db.blob(&c.hash).unwrap().unwrap();
            b[0] ^= 0xff;
            blobs.push((c.hash, b));
        }
        let records: Vec<_> = db.file_index().unwrap().into_iter().collect();
        db.commit_revision(stored.head.as_ref().unwrap(), &records, &blobs)
            .unwrap();
    }
    let err = refusal(Node::publish(config(&src), test_key()).await);
    assert!(
        err.contains(&state.display().to_string()) && err.contains("manifest"),
        "{err}"
    );
}
