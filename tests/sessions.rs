//! Control sessions replaced by a new stream from the same peer (a restart, or both sides
//! dialled) while every session slot is taken: the peer keeps its slot, and the publisher counts
//! it once.

mod common;

use common::*;
use treecast::config::MAX_CONTROL_FRAME;
use treecast::net::streams::Stream;
use treecast::wire::{self, ControlMsg, PROTOCOL_VERSION};

/// Open a control stream from `from` to `peer` and speak a subscriber's side of the session by
/// hand up to the hellos. Returns once `peer` has sent its hello: its session on this stream
/// has begun (a stream refused at the peer limit is dropped before that).
async fn start_session(
    from: &treecast::NodeHandle,
    peer: libp2p::PeerId,
    swarm_id: uuid::Uuid,
) -> Stream {
    let mut s = raw::session_with(from, peer, swarm_id).await;
    wire::read_handshake(&mut s, PROTOCOL_VERSION)
        .await
        .expect("the peer answers the handshake");
    match next_msg(&mut s).await {
        ControlMsg::Hello(_) => s,
        other => panic!("expected a hello, got {other:?}"),
    }
}

async fn next_msg(s: &mut Stream) -> ControlMsg {
    let frame = tokio::time::timeout(WAIT, wire::read_frame(s, MAX_CONTROL_FRAME))
        .await
        .expect("a frame in time")
        .expect("a whole frame")
        .expect("the stream is open");
    wire::decode(&frame).unwrap()
}

/// A publisher with room for one session. Its subscriber's session is replaced three times
/// by new control streams from the subscriber: each new session is admitted at the limit (the
/// publisher sends its hello on it), the publisher counts one peer in session after each, and
/// none once the subscriber is gone.
///
/// (The subscriber node may reopen a session of its own at any time, replacing the test's:
/// that is one more replacement, and the count must stay at one through it too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_replaced_at_the_peer_limit_keep_the_peer_and_count_it_once() {
    let lab = Lab::new();
    let src = lab.dir("publisher");
    write(&src, "a.txt", b"a");
    let mut cfg = config(&src);
    cfg.max_peers = 1;
    let p = treecast::Node::publish(cfg, test_key()).await.unwrap();
    let swarm_id = p.ticket().swarm_id;
    let s = subscriber(&lab.dir("subscriber"), p.ticket()).await;
    synced(&s, 1).await;
    let mut seen = p
        .wait_for(WAIT, "the subscriber's session", |st| st.peers_seen >= 1)
        .await
        .unwrap()
        .peers_seen;

    let mut streams = Vec::new();
    for replacement in 1..=3 {
        streams.push(start_session(&s, p.peer_id(), swarm_id).await);
        // The engine has seen the new session's Up once it has seen one more Up.
        let st = p
            .wait_for(WAIT, "the new session's Up", |st| st.peers_seen > seen)
            .await
            .unwrap();
        seen = st.peers_seen;
        assert_eq!(
            st.peers, 1,
            "after replacement {replacement}, one peer is in session: {st:?}"
        );
    }
    let table = p.peers().await.unwrap();
    let row = table
        .iter()
        .find(|r| r.peer == s.peer_id().to_string())
        .expect("the subscriber is in the peer table");
    assert!(row.online, "the subscriber is online: {row:?}");

    // The subscriber goes: nobody is left in session.
    drop(streams);
    s.shutdown().await;
    p.wait_for(WAIT, "no peer in session", |st| st.peers == 0)
        .await
        .unwrap();
    p.shutdown().await;
}
