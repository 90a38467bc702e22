//! One control session per peer: handshake, hello, then heads, heartbeats and goodbye.

use crate::net::streams::Stream;
use futures::AsyncReadExt;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::events::PeerEvent;
use super::serve::Content;
use super::swarm_handle::{LocalInfo, NetHandle};
use crate::config::{
    CONTROL_MSGS_BURST, CONTROL_MSGS_PER_SEC, HANDSHAKE_TIMEOUT, HEARTBEAT_INTERVAL,
    MAX_CONTROL_FRAME, PEER_TIMEOUT,
};
use crate::wire::{self, ControlMsg, Hello, Role, WireError, MAX_PEERS_PER_MSG, MAX_REASON_LEN};

/// Everything a session needs.
pub(crate) struct SessionCtx {
    pub peer: PeerId,
    pub session: u64,
    pub local: LocalInfo,
    pub version: u32,
    pub content: Content,
    pub net: NetHandle,
    pub out: mpsc::Receiver<ControlMsg>,
    pub cancel: CancellationToken,
}

/// Run a control session to its end.
pub(crate) async fn run(stream: Stream, mut ctx: SessionCtx) {
    let peer = ctx.peer;
    let (mut r, mut w) = stream.split();
    let result = session(&mut r, &mut w, &mut ctx).await;
    match &result {
        Ok(()) => debug!(%peer, "control session ended"),
        Err(WireError::VersionMismatch { ours, theirs }) => {
            error!(%peer, ours, theirs, "peer speaks treecast protocol version {theirs}, this node speaks {ours}: disconnecting");
            let incompatible = PeerEvent::Incompatible {
                peer,
                ours: *ours,
                theirs: *theirs,
            };
            ctx.net.peer_event(incompatible).await;
        }
        Err(e) if e.is_hostile() => {
            warn!(%peer, error = %e, "peer sent a malformed control message: banning");
            ctx.net.ban(peer, e.to_string()).await;
        }
        Err(e) => info!(%peer, error = %e, "control session closed"),
    }
    if matches!(result, Err(WireError::VersionMismatch { .. })) {
        // Let the peer read our handshake before the connection goes: close our side, wait
        // for theirs (bounded), then disconnect.
        let _ = futures::AsyncWriteExt::close(&mut w).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, r.read_to_end(&mut sink)).await;
        ctx.net.disconnect(peer).await;
    }
    ctx.net.session_ended(peer, ctx.session).await;
}

async fn session<R, W>(r: &mut R, w: &mut W, ctx: &mut SessionCtx) -> Result<(), WireError>
where
    R: futures::AsyncRead + Unpin,
    W: futures::AsyncWrite + Unpin,
{
    let peer = ctx.peer;
    within(wire::write_handshake(w, ctx.version), "handshake").await?;
    within(wire::read_handshake(r, ctx.version), "handshake").await?;
    let hello = Hello {
        node_id: ctx.local.node_id,
        swarm_id: ctx.local.swarm_id,
        role: ctx.local.role,
        head: ctx.content.current().head.clone(),
        addrs: ctx.local.addrs.iter().map(|a| a.to_vec()).collect(),
    };
    within(send(w, &ControlMsg::Hello(hello)), "hello").await?;
    let theirs = match within(recv(r), "hello").await? {
        Some(ControlMsg::Hello(h)) => h,
        Some(other) => return Err(WireError::Decode(format!("expected hello, got {other:?}"))),
        None => return Ok(()),
    };
    if theirs.swarm_id != ctx.local.swarm_id {
        if theirs.role == Role::DhtNode || ctx.local.role == Role::DhtNode {
            debug!(%peer, "DHT node: no swarm session");
        } else {
            warn!(%peer, theirs = %theirs.swarm_id, "peer is in another swarm");
        }
        return Ok(());
    }
    let up = PeerEvent::Up {
        peer,
        session: ctx.session,
        hello: theirs,
    };
    if !ctx.net.peer_event(up).await {
        return Ok(());
    }
    let result = exchange(r, w, ctx).await;
    let down = PeerEvent::Down {
        peer,
        session: ctx.session,
    };
    ctx.net.peer_event(down).await;
    result
}

async fn exchange<R, W>(r: &mut R, w: &mut W, ctx: &mut SessionCtx) -> Result<(), WireError>
where
    R: futures::AsyncRead + Unpin,
    W: futures::AsyncWrite + Unpin,
{
    let peer = ctx.peer;
    let events = ctx.net.clone();
    let forward = |ev: PeerEvent| {
        let events = events.clone();
        async move { events.peer_event(ev).await }
    };
    let reader = async {
        let mut budget = crate::swarm::TokenBucket::new(
            CONTROL_MSGS_PER_SEC,
            CONTROL_MSGS_BURST,
            std::time::Instant::now(),
        );
        loop {
            let msg = match tokio::time::timeout(PEER_TIMEOUT, recv(r)).await {
                Err(_) => return Err(WireError::Timeout("peer silent past heartbeat timeout")),
                Ok(m) => m?,
            };
            if !budget.take(1, std::time::Instant::now()).is_zero() {
                return Err(WireError::Flood(
                    "control messages far faster than any honest peer sends",
                ));
            }
            match msg {
                None => return Ok(()),
                Some(ControlMsg::Head(head)) => {
                    if !forward(PeerEvent::Head { peer, head }).await {
                        return Ok(());
                    }
                }
                Some(ControlMsg::Peers(mut list)) => {
                    list.truncate(MAX_PEERS_PER_MSG);
                    if !forward(PeerEvent::Peers { peer, list }).await {
                        return Ok(());
                    }
                }
                Some(ControlMsg::Complete { revision }) => {
                    if !forward(PeerEvent::Complete { peer, revision }).await {
                        return Ok(());
                    }
                }
                Some(ControlMsg::Have { revision, bitfield }) => {
                    if !forward(PeerEvent::Have {
                        peer,
                        revision,
                        bitfield,
                    })
                    .await
                    {
                        return Ok(());
                    }
                }
                Some(ControlMsg::Heartbeat) => {}
                Some(ControlMsg::Goodbye { reason }) => {
                    let reason: String = reason.chars().take(MAX_REASON_LEN).collect();
                    info!(%peer, %reason, "peer said goodbye");
                    return Ok(());
                }
                Some(ControlMsg::Hello(_)) => {
                    return Err(WireError::Decode("second hello".into()));
                }
            }
        }
    };
    let cancel = ctx.cancel.clone();
    let out = &mut ctx.out;
    let cancelled = {
        let writer_w = &mut *w;
        let writer = async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                let msg = tokio::select! {
                    m = out.recv() => match m { Some(m) => m, None => return Ok::<(), WireError>(()) },
                    _ = tick.tick() => ControlMsg::Heartbeat,
                };
                within(send(writer_w, &msg), "control write").await?;
            }
        };
        tokio::select! {
            r = reader => Err(r),
            r = writer => Err(r),
            _ = cancel.cancelled() => Ok(()),
        }
    };
    match cancelled {
        Ok(()) => {
            let bye = ControlMsg::Goodbye {
                reason: "shutting down".into(),
            };
            let _ = within(send(w, &bye), "goodbye").await;
            let _ = futures::AsyncWriteExt::close(w).await;
            Ok(())
        }
        Err(result) => result,
    }
}

async fn send<W: futures::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &ControlMsg,
) -> Result<(), WireError> {
    wire::write_frame(w, &wire::encode(msg)).await
}

async fn recv<R: futures::AsyncRead + Unpin>(r: &mut R) -> Result<Option<ControlMsg>, WireError> {
    match wire::read_frame(r, MAX_CONTROL_FRAME).await? {
        None => Ok(None),
        Some(frame) => wire::decode(&frame).map(Some),
    }
}

async fn within<T>(
    fut: impl std::future::Future<Output = Result<T, WireError>>,
    what: &'static str,
) -> Result<T, WireError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| WireError::Timeout(what))?
}
