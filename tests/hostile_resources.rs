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
        wire::decode_replies(&first).unwrap().chunks[0]
            .chunk()
            .is_some(),
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

/// A DHT client of our protocol, speaking it on the wire from `ip` (a loopback address: each
/// one is a network of its own to the DHT node). Client mode: it stores nothing and is in no
/// routing table, so what a lookup finds is what the DHT node's store holds. Its listen
/// address is its external address, which its provider records carry.
async fn kad_client(
    ip: &str,
) -> libp2p::Swarm<libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>> {
    use libp2p::{kad, StreamProtocol};
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let cfg = kad::Config::new(StreamProtocol::new(treecast::net::KAD_PROTOCOL));
            let mut kad =
                kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), cfg);
            kad.set_mode(Some(kad::Mode::Client));
            kad
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm
        .listen_on(format!("/ip4/{ip}/udp/0/quic-v1").parse().unwrap())
        .unwrap();
    let addr = tokio::time::timeout(WAIT, async {
        loop {
            use futures::StreamExt;
            if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
                swarm.select_next_some().await
            {
                return address;
            }
        }
    })
    .await
    .unwrap();
    swarm.add_external_address(addr);
    swarm
}

/// Announce a client as a provider of `key` at the DHT node `dht` (ADD_PROVIDER, as kad sends
/// it), then keep it running in the background.
async fn provide_from(
    ip: &str,
    dht: &libp2p::Multiaddr,
    key: &libp2p::kad::RecordKey,
) -> (libp2p::PeerId, tokio::task::JoinHandle<()>) {
    use futures::StreamExt;
    use libp2p::kad::{Event, QueryResult};
    let mut swarm = kad_client(ip).await;
    let dht_peer = treecast::net::peer_of(dht).unwrap();
    swarm.behaviour_mut().add_address(&dht_peer, dht.clone());
    swarm.behaviour_mut().start_providing(key.clone()).unwrap();
    let me = *swarm.local_peer_id();
    let provided = tokio::time::timeout(WAIT, async {
        loop {
            if let libp2p::swarm::SwarmEvent::Behaviour(Event::OutboundQueryProgressed {
                result: QueryResult::StartProviding(r),
                ..
            }) = swarm.select_next_some().await
            {
                return r;
            }
        }
    })
    .await;
    assert!(
        matches!(provided, Ok(Ok(_))),
        "{me} could not provide: {provided:?}"
    );
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (me, task)
}

/// The providers of `key` a lookup through the DHT node `dht` finds.
async fn providers_of(
    client: &mut libp2p::Swarm<libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>>,
    key: &libp2p::kad::RecordKey,
) -> std::collections::HashSet<libp2p::PeerId> {
    use futures::StreamExt;
    use libp2p::kad::{Event, GetProvidersOk, QueryResult};
    let query = client.behaviour_mut().get_providers(key.clone());
    let mut found = std::collections::HashSet::new();
    loop {
        if let libp2p::swarm::SwarmEvent::Behaviour(Event::OutboundQueryProgressed {
            id,
            result: QueryResult::GetProviders(r),
            step,
            ..
        }) = client.select_next_some().await
        {
            if id != query {
                continue;
            }
            if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = r {
                found.extend(providers);
            }
            if step.last {
                return found;
            }
        }
    }
}

/// More Sybils than a key's provider list holds announce themselves first, all from one
/// network; an honest node from another network announces after them and is still handed out
/// by the DHT node, in place of the Sybils' newest record (kad's own store would have ignored
/// it: first come, first served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sybils_announced_first_do_not_keep_an_honest_provider_out_of_the_dht() {
    use treecast::net::MAX_PROVIDERS_PER_KEY;
    let lab = Lab::new();
    let dht = treecast::Node::dht_node(config(&lab.dir("dht")))
        .await
        .unwrap();
    let at = dht.listen_addrs()[0].clone();
    let key = treecast::net::swarm_key(&uuid::Uuid::new_v4());
    let mut tasks = Vec::new();
    let mut sybils = std::collections::HashSet::new();
    for _ in 0..MAX_PROVIDERS_PER_KEY + 4 {
        let (peer, task) = provide_from("127.0.0.1", &at, &key).await;
        sybils.insert(peer);
        tasks.push(task);
    }
    let mut asker = kad_client("127.0.0.3").await;
    asker
        .behaviour_mut()
        .add_address(&dht.peer_id(), at.clone());
    let found = providers_of(&mut asker, &key).await;
    assert_eq!(found.len(), MAX_PROVIDERS_PER_KEY, "the list is full");
    assert!(found.is_subset(&sybils));

    let (honest, task) = provide_from("127.0.0.2", &at, &key).await;
    tasks.push(task);
    let mut last = std::collections::HashSet::new();
    let handed_out = tokio::time::timeout(WAIT, async {
        loop {
            last = providers_of(&mut asker, &key).await;
            if last.contains(&honest) {
                return;
            }
        }
    })
    .await;
    assert!(
        handed_out.is_ok(),
        "the honest provider was never handed out; the DHT node lists {} Sybils",
        last.intersection(&sybils).count()
    );
    assert_eq!(last.len(), MAX_PROVIDERS_PER_KEY);
    for t in tasks {
        t.abort();
    }
    dht.shutdown().await;
}
