//! Baseline for `scripts/bench-transfer`: copy a file over one plain libp2p QUIC stream between
//! two swarms on loopback (same transport settings as treecast, no chunking, no hashing), the
//! receiver writing it to a file. Prints the throughput in MB/s.
//!
//! Usage: `quic_copy FILE OUT`

use std::io::{Read, Write};
use std::time::Instant;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use tokio::sync::oneshot;
use treecast::net::{build_swarm, streams, BehaviourEvent};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: quic_copy FILE OUT");
    let (input, output) = (args[1].clone(), args[2].clone());
    let size = std::fs::metadata(&input)?.len();

    let mut server = build_swarm(
        libp2p::identity::Keypair::generate_ed25519(),
        Default::default(),
    )?;
    server.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let (done_tx, done_rx) = oneshot::channel::<u64>();
    tokio::spawn(async move {
        let mut done = Some(done_tx);
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Streams(streams::Event::Inbound {
                mut stream,
                ..
            })) = server.select_next_some().await
            {
                let out = output.clone();
                let tx = done.take();
                tokio::spawn(async move {
                    let mut file = std::fs::File::create(out).expect("create output");
                    let mut buf = vec![0u8; 1 << 20];
                    let mut total = 0u64;
                    loop {
                        let n = stream.read(&mut buf).await.expect("read");
                        if n == 0 {
                            break;
                        }
                        file.write_all(&buf[..n]).expect("write");
                        total += n as u64;
                    }
                    if let Some(tx) = tx {
                        let _ = tx.send(total);
                    }
                });
            }
        }
    });

    let mut client = build_swarm(
        libp2p::identity::Keypair::generate_ed25519(),
        Default::default(),
    )?;
    client.dial(addr)?;
    let peer = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = client.select_next_some().await {
            break peer_id;
        }
    };
    let (tx, rx) = oneshot::channel();
    client.behaviour_mut().streams.open_stream(
        peer,
        StreamProtocol::new(treecast::wire::CHUNKS_PROTOCOL),
        tx,
    );
    tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let started = Instant::now();
    let mut stream = rx.await??;
    let mut file = std::fs::File::open(&input)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
    }
    stream.close().await?;
    let received = done_rx.await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(received == size, "received {received} of {size} bytes");
    println!("{:.1}", size as f64 / secs / 1e6);
    Ok(())
}
