//! One control session per peer: handshake, hello, then heads, availability, heartbeats and
//! goodbye.

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
                Some(ControlMsg::Have(have)) => {
                    have.chunks.check_size()?;
                    if !forward(PeerEvent::Have { peer, have }).await {
                        return Ok(());
                    }
                }
                Some(ControlMsg::HaveSync { revision }) => {
                    if !forward(PeerEvent::HaveSync { peer, revision }).await {
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
    let writer = write_until_cancelled(w, &mut ctx.out, &ctx.cancel);
    // The reader may be dropped mid-frame (nothing is read after it); the writer ends only
    // between frames (see `write_until_cancelled`).
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// Write what the node sends and a heartbeat every `HEARTBEAT_INTERVAL`, until `out` closes or
/// `cancel` fires; then say goodbye and close. Cancel-safe on the wire: the token is looked at
/// only between frames, so a frame once begun is finished (under its timeout) and the goodbye
/// never lands inside it, where the peer would read garbage and ban us.
async fn write_until_cancelled<W>(
    w: &mut W,
    out: &mut mpsc::Receiver<ControlMsg>,
    cancel: &CancellationToken,
) -> Result<(), WireError>
where
    W: futures::AsyncWrite + Unpin,
{
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        let msg = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            m = out.recv() => match m {
                Some(m) => m,
                None => return Ok(()),
            },
            _ = tick.tick() => ControlMsg::Heartbeat,
        };
        within(send(w, &msg), "control write").await?;
    }
    let bye = ControlMsg::Goodbye {
        reason: "shutting down".into(),
    };
    let _ = within(send(w, &bye), "goodbye").await;
    let _ = futures::AsyncWriteExt::close(w).await;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::swarm_handle::NetCommand;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    /// One direction of an in-memory stream that holds at most `cap` unread bytes: a write
    /// past that parks, part-way into its frame, until the reading side takes some.
    #[derive(Clone)]
    struct Pipe(Arc<Mutex<PipeState>>);

    struct PipeState {
        bytes: Vec<u8>,
        cap: usize,
        closed: bool,
        parked: Option<Waker>,
    }

    impl Pipe {
        fn new(cap: usize) -> Self {
            let state = PipeState {
                bytes: Vec::new(),
                cap,
                closed: false,
                parked: None,
            };
            Pipe(Arc::new(Mutex::new(state)))
        }

        fn state(&self) -> std::sync::MutexGuard<'_, PipeState> {
            self.0.lock().unwrap()
        }

        fn is_full(&self) -> bool {
            let s = self.state();
            s.bytes.len() >= s.cap
        }

        /// Read what waits (letting a parked writer go on), and whether the writer closed.
        fn take(&self) -> (Vec<u8>, bool) {
            let mut s = self.state();
            if let Some(w) = s.parked.take() {
                w.wake();
            }
            (std::mem::take(&mut s.bytes), s.closed)
        }
    }

    impl futures::AsyncWrite for Pipe {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let mut s = self.state();
            let room = s.cap.saturating_sub(s.bytes.len());
            if room == 0 {
                s.parked = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = room.min(buf.len());
            s.bytes.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.state().closed = true;
            Poll::Ready(Ok(()))
        }
    }

    /// A peer that says nothing (the session's reader waits; it times out long after a test).
    struct Silent;

    impl futures::AsyncRead for Silent {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
    }

    fn ctx(
        out: mpsc::Receiver<ControlMsg>,
        cancel: CancellationToken,
    ) -> (SessionCtx, mpsc::Receiver<NetCommand>) {
        let (net_tx, net_rx) = mpsc::channel(8);
        let local = LocalInfo {
            node_id: uuid::Uuid::nil(),
            swarm_id: uuid::Uuid::nil(),
            role: Role::Subscriber,
            addrs: Vec::new(),
            publisher: None,
        };
        let ctx = SessionCtx {
            peer: PeerId::random(),
            session: 1,
            local,
            version: wire::PROTOCOL_VERSION,
            content: Content::default(),
            net: NetHandle::new(net_tx),
            out,
            cancel,
        };
        (ctx, net_rx)
    }

    /// Cancel a session while its writer is parked with all but `missing` bytes of a large
    /// `Have` frame written, and return that message and what the peer then reads, frame by
    /// frame, as the peer's own reader reads it.
    async fn cancel_mid_frame(missing: usize) -> (ControlMsg, Vec<Result<ControlMsg, WireError>>) {
        let have = ControlMsg::Have(wire::Have {
            revision: 1,
            seq: 1,
            sync: true,
            chunks: wire::ChunkSet::Bits {
                first: 0,
                bits: vec![0xa5; 4096],
            },
        });
        let frame_len = 4 + wire::encode(&have).len();
        let (out_tx, out_rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let (mut ctx, _net) = ctx(out_rx, cancel.clone());
        out_tx.send(have.clone()).await.unwrap();
        // (A heartbeat may go first: the parked write is then `missing` + 5 bytes short.)
        let pipe = Pipe::new(frame_len - missing);
        let mut w = pipe.clone();
        // Polled by hand, so that it sees the cancel while its write is parked.
        let mut r = Silent;
        let mut session = Box::pin(exchange(&mut r, &mut w, &mut ctx));
        assert!(futures::poll!(session.as_mut()).is_pending());
        assert!(pipe.is_full(), "the writer parks part-way into the frame");
        cancel.cancel();
        assert!(
            futures::poll!(session.as_mut()).is_pending(),
            "still parked"
        );
        // The peer reads on until the session has ended and closed its end.
        let mut got = Vec::new();
        for _ in 0..1000 {
            let ended = futures::poll!(session.as_mut());
            let (bytes, closed) = pipe.take();
            got.extend(bytes);
            if let (Poll::Ready(result), true) = (ended, closed) {
                result.unwrap();
                break;
            }
        }
        assert!(pipe.take().1, "the session closed its end");
        drop(session);
        let mut r = futures::io::Cursor::new(got);
        let mut frames = Vec::new();
        loop {
            match recv(&mut r).await {
                Ok(None) => break,
                Ok(Some(m)) => frames.push(Ok(m)),
                Err(e) => {
                    frames.push(Err(e));
                    break;
                }
            }
        }
        (have, frames)
    }

    /// What the peer read must be whole frames: the one begun before the cancel, finished,
    /// and a goodbye last.
    fn assert_whole_frames_ending_in_goodbye(
        sent: &ControlMsg,
        frames: &[Result<ControlMsg, WireError>],
    ) {
        let shown: Vec<String> = frames
            .iter()
            .map(|f| match f {
                Ok(ControlMsg::Have(h)) => format!("Have(seq {})", h.seq),
                Ok(m) => format!("{m:?}"),
                Err(e) => format!("error: {e} (hostile, the peer bans us: {})", e.is_hostile()),
            })
            .collect();
        assert!(frames.iter().all(|f| f.is_ok()), "the peer read {shown:?}");
        assert!(
            frames.iter().any(|f| f.as_ref().ok() == Some(sent)),
            "the frame begun is finished: {shown:?}"
        );
        assert!(
            matches!(frames.last(), Some(Ok(ControlMsg::Goodbye { .. }))),
            "goodbye last: {shown:?}"
        );
    }

    #[tokio::test]
    async fn a_cancel_half_way_through_a_frame_finishes_it_then_says_goodbye() {
        let (sent, frames) = cancel_mid_frame(2048).await;
        assert_whole_frames_ending_in_goodbye(&sent, &frames);
    }

    /// A few bytes short of the frame's end, a goodbye written there would be read as the
    /// frame's tail and the rest as a frame header: garbage the peer bans us for.
    #[tokio::test]
    async fn a_cancel_a_byte_short_of_a_frame_end_gets_us_no_ban() {
        let (sent, frames) = cancel_mid_frame(1).await;
        assert_whole_frames_ending_in_goodbye(&sent, &frames);
    }
}
