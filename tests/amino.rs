//! The public IPFS DHT (Amino) on loopback: an Amino-protocol node written here with
//! rust-libp2p's own Kademlia (`/ipfs/kad/1.0.0`, server mode, an AutoNAT server as Amino's
//! nodes run, and Amino's key rule: a provider record is kept only under a sha2-256 multihash,
//! as js-libp2p's kad-dht does) stands in for the public network. A subscriber given only the
//! swarm ID and the publisher key, with the node as its only public-DHT bootstrap peer and no
//! other way to find anyone, mirrors the tree; the node holds the publisher's provider record
//! under the swarm's Amino key; a node with the public DHT off never contacts it.
//!
//! Everything runs on 127.0.0.1: no address of Amino's public bootstrap list is ever dialled.

mod common;

use std::collections::HashSet;

use common::*;
use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{autonat, identify, kad, Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot};
use treecast::Node;

#[derive(NetworkBehaviour)]
struct AminoBehaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    autonat: autonat::Behaviour,
}

/// What the test asks the Amino node.
enum Ask {
    /// The providers it holds for a key, with their addresses.
    Providers(
        kad::RecordKey,
        oneshot::Sender<Vec<(PeerId, Vec<Multiaddr>)>>,
    ),
    /// Every peer that connected to it, and the provider records it refused.
    Seen(oneshot::Sender<(HashSet<PeerId>, u64)>),
}

/// An Amino-protocol DHT node on loopback, run by a task until dropped.
struct AminoNode {
    addr: Multiaddr,
    ask: mpsc::Sender<Ask>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AminoNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Amino's key rule (js-libp2p kad-dht reads the key as a CID): a sha2-256 multihash.
fn is_sha2_256_multihash(key: &[u8]) -> bool {
    libp2p::multihash::Multihash::<64>::from_bytes(key)
        .is_ok_and(|mh| mh.code() == 0x12 && mh.size() == 32)
}

impl AminoNode {
    async fn start() -> Self {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_behaviour(|key| {
                let peer = key.public().to_peer_id();
                let mut cfg = kad::Config::new(StreamProtocol::new("/ipfs/kad/1.0.0"));
                cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
                let mut kad =
                    kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), cfg);
                kad.set_mode(Some(kad::Mode::Server));
                AminoBehaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/ipfs/0.1.0".into(),
                        key.public(),
                    )),
                    kad,
                    autonat: autonat::Behaviour::new(
                        peer,
                        autonat::Config {
                            only_global_ips: false,
                            ..Default::default()
                        },
                    ),
                }
            })
            .unwrap()
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address.with_p2p(*swarm.local_peer_id()).unwrap();
            }
        };
        let (ask, mut asked) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut refused = 0;
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            seen.insert(peer_id);
                        }
                        SwarmEvent::Behaviour(AminoBehaviourEvent::Kad(
                            kad::Event::InboundRequest {
                                request: kad::InboundRequest::AddProvider { record: Some(r) },
                            },
                        )) => {
                            use kad::store::RecordStore;
                            if is_sha2_256_multihash(r.key.as_ref()) {
                                swarm.behaviour_mut().kad.store_mut().add_provider(r).unwrap();
                            } else {
                                refused += 1;
                            }
                        }
                        _ => {}
                    },
                    Some(a) = asked.recv() => match a {
                        Ask::Providers(key, reply) => {
                            use kad::store::RecordStore;
                            let store = swarm.behaviour_mut().kad.store_mut();
                            let list = store
                                .providers(&key)
                                .into_iter()
                                .map(|p| (p.provider, p.addresses))
                                .collect();
                            let _ = reply.send(list);
                        }
                        Ask::Seen(reply) => {
                            let _ = reply.send((seen.clone(), refused));
                        }
                    },
                }
            }
        });
        AminoNode { addr, ask, task }
    }

    async fn providers(&self, key: &kad::RecordKey) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let (tx, rx) = oneshot::channel();
        self.ask
            .send(Ask::Providers(key.clone(), tx))
            .await
            .unwrap();
        rx.await.unwrap()
    }

    async fn seen(&self) -> (HashSet<PeerId>, u64) {
        let (tx, rx) = oneshot::channel();
        self.ask.send(Ask::Seen(tx)).await.unwrap();
        rx.await.unwrap()
    }
}

#[test]
fn the_swarms_amino_key_passes_amino_key_rule() {
    let key = treecast::net::amino_key(&uuid::Uuid::new_v4());
    assert!(is_sha2_256_multihash(key.as_ref()));
    // Our own DHT's key (a bare BLAKE3 digest) would not.
    let own = treecast::net::swarm_key(&uuid::Uuid::new_v4());
    assert!(!is_sha2_256_multihash(own.as_ref()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_with_only_the_swarm_id_finds_the_swarm_through_the_public_dht() {
    let lab = Lab::new();
    let amino = AminoNode::start().await;
    let public_dht = Some(vec![amino.addr.clone()]);

    let src = lab.dir("publisher");
    write(&src, "data.bin", &noise(4 << 20, 31));
    write(&src, "a/b.txt", b"b");
    let mut pcfg = config(&src);
    pcfg.public_dht = public_dht.clone();
    let p = Node::publish(pcfg, test_key()).await.unwrap();
    let swarm_id = p.ticket().swarm_id;
    let key = treecast::net::amino_key(&swarm_id);

    // The Amino node holds the publisher's provider record under the swarm's Amino key, with an
    // address to dial it at.
    let providers = eventually_ok(WAIT, "the publisher's provider record", || async {
        let list = amino.providers(&key).await;
        match list
            .iter()
            .any(|(peer, addrs)| *peer == p.peer_id() && !addrs.is_empty())
        {
            true => Ok(list),
            false => Err(list),
        }
    })
    .await;
    assert_eq!(providers.len(), 1, "{providers:?}");

    // A subscriber with only the swarm ID and the publisher key: no address in the ticket, no
    // bootstrap peer, no mDNS, no saved peers. The public DHT is its only way in.
    let bare = p.ticket().without_addrs();
    let mut scfg = config(&lab.dir("sub"));
    scfg.public_dht = public_dht.clone();
    assert!(scfg.bootstrap.is_empty() && !scfg.mdns);
    let sub = Node::subscribe(scfg, bare).await.unwrap();
    synced(&sub, 1).await;
    assert_same_tree(&src, &lab.tmp.path().join("sub"));

    let report = sub.report().await.unwrap();
    let dht = report.public_dht.expect("the public DHT is on");
    assert!(dht.providers_found >= 1, "{dht:?}");
    assert!(dht.routing_peers >= 1, "{dht:?}");
    let published = p.report().await.unwrap().public_dht.expect("on");
    assert!(published.last_announce_unix_ms.is_some(), "{published:?}");
    assert!(p.report().await.unwrap().counters.public_dht_announces >= 1);

    // A node with the public DHT off (the library's default) mirrors from the ticket's address
    // and never contacts the public-DHT node.
    let mut ocfg = config(&lab.dir("off"));
    assert!(ocfg.public_dht.is_none());
    ocfg.mdns = false;
    let off = Node::subscribe(ocfg, p.ticket().clone()).await.unwrap();
    synced(&off, 1).await;
    assert!(off.report().await.unwrap().public_dht.is_none());
    let (seen, refused) = amino.seen().await;
    assert!(seen.contains(&p.peer_id()) && seen.contains(&sub.peer_id()));
    assert!(
        !seen.contains(&off.peer_id()),
        "the node with it off dialled it"
    );
    assert_eq!(refused, 0, "every record followed Amino's key rule");

    for n in [off, sub, p] {
        n.shutdown().await;
    }
}
