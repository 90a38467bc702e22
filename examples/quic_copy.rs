//! Baseline for `scripts/bench-transfer`: copy a file over one plain libp2p QUIC stream (same
//! transport settings as treecast, no chunking, no hashing), the receiver writing it to a file.
//! Prints the throughput in MB/s, from opening the stream until the receiver has written every
//! byte and said so.
//!
//! Usage:
//! - `quic_copy FILE OUT`: sender and receiver in this one process, on one 2-thread runtime.
//! - `quic_copy --recv OUT`: a receiver process; prints its address, copies one stream to OUT.
//! - `quic_copy --recv-durable OUT`: the same, also hashing what it receives (BLAKE3, once) and
//!   fsyncing OUT before it confirms: the least a receiver that keeps verified bytes must do.
//! - `quic_copy --send FILE ADDR`: a sender process, to a receiver at ADDR.
//!
//! The two-process form is how treecast runs (a publisher and a subscriber, each a process with
//! treecast's runtime and socket buffers), so that is the figure treecast is compared with.

use std::io::{Read, Write};
use std::time::Instant;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm};
use treecast::net::{build_swarm, streams, Behaviour, BehaviourEvent};

fn swarm() -> anyhow::Result<Swarm<Behaviour>> {
    Ok(build_swarm(
        libp2p::identity::Keypair::generate_ed25519(),
        Default::default(),
    )?)
}

/// Listen on loopback and return the address; the socket gets the buffers treecast's get.
async fn listen(server: &mut Swarm<Behaviour>) -> anyhow::Result<Multiaddr> {
    server.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            treecast::net::udp::grow_for(std::slice::from_ref(&address));
            return Ok(address);
        }
    }
}

/// Copy the first inbound stream to `out`, then answer with the byte count. `durable`: hash
/// the bytes as they come and fsync `out` before answering.
async fn receive(mut server: Swarm<Behaviour>, out: String, durable: bool) -> anyhow::Result<()> {
    let mut stream = loop {
        if let SwarmEvent::Behaviour(BehaviourEvent::Streams(streams::Event::Inbound {
            stream,
            ..
        })) = server.select_next_some().await
        {
            break stream;
        }
    };
    // The count written at the end must reach the sender before this process exits: wait for
    // the sender to close the connection (it does once it has read the count).
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut closed_tx = Some(closed_tx);
        loop {
            if let SwarmEvent::ConnectionClosed { .. } = server.select_next_some().await {
                if let Some(tx) = closed_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    let mut file = std::fs::File::create(out)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if durable {
            hasher.update(&buf[..n]);
        }
        file.write_all(&buf[..n])?;
        total += n as u64;
    }
    if durable {
        file.sync_all()?;
        eprintln!("received {total} bytes, BLAKE3 {}", hasher.finalize());
    }
    stream.write_all(&total.to_le_bytes()).await?;
    stream.close().await?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closed).await;
    Ok(())
}

/// Send `input` to `addr` and return MB/s once the receiver has confirmed every byte.
async fn send(input: &str, addr: Multiaddr) -> anyhow::Result<f64> {
    let size = std::fs::metadata(input)?.len();
    // Like a treecast subscriber, the sender listens too, and dials from that socket.
    let mut client = swarm()?;
    listen(&mut client).await?;
    client.dial(addr)?;
    let peer = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = client.select_next_some().await {
            break peer_id;
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    client.behaviour_mut().streams.open_stream(
        peer,
        StreamProtocol::new(treecast::wire::CHUNKS_PROTOCOL),
        tx,
    );
    // Once the count is in, the connection is closed, which lets the receiver exit.
    let (done, mut finished) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        tokio::select! {
            _ = async { loop { client.select_next_some().await; } } => {}
            _ = &mut finished => {}
        }
        let _ = client.disconnect_peer_id(peer);
        let closing = async {
            while !matches!(
                client.select_next_some().await,
                SwarmEvent::ConnectionClosed { .. }
            ) {}
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
    });
    let started = Instant::now();
    let mut stream = rx.await??;
    let mut file = std::fs::File::open(input)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
    }
    stream.close().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let secs = started.elapsed().as_secs_f64();
    let _ = done.send(());
    let _ = driver.await;
    let received = u64::from_le_bytes(count);
    anyhow::ensure!(received == size, "received {received} of {size} bytes");
    Ok(size as f64 / secs / 1e6)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [mode @ ("--recv" | "--recv-durable"), out] => {
            // Like a treecast node: a process with treecast's runtime.
            treecast::cli::runtime()?.block_on(async {
                let mut server = swarm()?;
                let addr = listen(&mut server).await?;
                println!("{addr}");
                std::io::stdout().flush()?;
                receive(server, out.to_string(), *mode == "--recv-durable").await
            })
        }
        ["--send", input, addr] => treecast::cli::runtime()?.block_on(async {
            println!("{:.1}", send(input, addr.parse()?).await?);
            Ok(())
        }),
        [input, out] => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(async {
                let mut server = swarm()?;
                let addr = listen(&mut server).await?;
                let receiver = tokio::spawn(receive(server, out.to_string(), false));
                let rate = send(input, addr).await?;
                receiver.await??;
                println!("{rate:.1}");
                Ok(())
            }),
        _ => anyhow::bail!(
            "usage: quic_copy FILE OUT | --recv OUT | --recv-durable OUT | --send FILE ADDR"
        ),
    }
}
