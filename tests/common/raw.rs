//! Speaking the wire by hand, for tests that play a peer: open a raw stream from one node to
//! another (through `danger_open_stream`), run the handshake and hello of a control session,
//! ask for chunks.

use treecast::net::streams::Stream;
use treecast::tree::ContentHash;
use treecast::wire::{self, ControlMsg, Hello, Role, PROTOCOL_VERSION};
use treecast::NodeHandle;

use super::{eventually_ok, WAIT};

/// Open a stream of `protocol` from `from` to `peer` as soon as they are connected.
pub async fn stream_when_connected(
    from: &NodeHandle,
    peer: libp2p::PeerId,
    protocol: &'static str,
) -> Stream {
    eventually_ok(WAIT, &format!("a {protocol} stream to {peer}"), || {
        from.danger_open_stream(peer, protocol)
    })
    .await
}

/// The hello `peer` sends on a control stream opened by `from`.
pub async fn hello_of(from: &NodeHandle, peer: libp2p::PeerId) -> Hello {
    let mut s = stream_when_connected(from, peer, wire::CONTROL_PROTOCOL).await;
    wire::write_handshake(&mut s, PROTOCOL_VERSION)
        .await
        .unwrap();
    wire::read_handshake(&mut s, PROTOCOL_VERSION)
        .await
        .unwrap();
    match read_control(&mut s).await {
        Some(ControlMsg::Hello(h)) => h,
        other => panic!("expected a hello, got {other:?}"),
    }
}

/// A control session from `from` to `peer`, speaking by hand: handshake and a hello for
/// `swarm_id`, ready for what the test sends next. Nothing of what `peer` sent is read yet.
pub async fn session_with(from: &NodeHandle, peer: libp2p::PeerId, swarm_id: uuid::Uuid) -> Stream {
    let mut s = stream_when_connected(from, peer, wire::CONTROL_PROTOCOL).await;
    wire::write_handshake(&mut s, PROTOCOL_VERSION)
        .await
        .unwrap();
    let hello = Hello {
        node_id: uuid::Uuid::new_v4(),
        swarm_id,
        role: Role::Subscriber,
        head: None,
        addrs: Vec::new(),
    };
    send_control(&mut s, &ControlMsg::Hello(hello))
        .await
        .unwrap();
    s
}

/// Write one control message.
pub async fn send_control<W: futures::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &ControlMsg,
) -> Result<(), wire::WireError> {
    wire::write_frame(w, &wire::encode(msg)).await
}

/// Read one control message; `None` when the stream ended. Panics on anything malformed.
pub async fn read_control<R: futures::AsyncRead + Unpin>(r: &mut R) -> Option<ControlMsg> {
    let frame = wire::read_frame(r, treecast::config::MAX_CONTROL_FRAME)
        .await
        .unwrap()?;
    Some(wire::decode(&frame).unwrap())
}

/// Ask for the chunk `hash` on a chunk stream; whether it was found.
pub async fn ask_chunk(s: &mut Stream, id: u32, hash: ContentHash) -> Result<bool, String> {
    let request = wire::encode_requests(id, &[hash]);
    wire::write_frame(s, &request)
        .await
        .map_err(|e| e.to_string())?;
    let frame = wire::read_frame(s, treecast::config::MAX_CHUNK_FRAME)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the chunk stream ended")?;
    let replies = wire::decode_replies(&frame).map_err(|e| e.to_string())?;
    if replies.first_id != id || replies.chunks.len() != 1 {
        return Err(format!(
            "{} replies from request {} for {id}",
            replies.chunks.len(),
            replies.first_id
        ));
    }
    Ok(replies.chunks[0].chunk().is_some())
}
