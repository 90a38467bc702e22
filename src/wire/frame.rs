//! Length-prefixed frames with a hard cap checked before the body is read.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::WireError;
use super::protocol::MAGIC;

/// Read one frame of at most `max` bytes. `Ok(None)` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, WireError> {
    let mut buf = Vec::new();
    Ok(read_frame_into(r, max, &mut buf).await?.then_some(buf))
}

/// Like [`read_frame`], into `buf` (its old contents are overwritten): a reader that keeps one buffer
/// does not allocate, and fault in, fresh memory for every frame. False at a clean end of
/// stream.
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<bool, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(WireError::FrameTooLarge { len, max });
    }
    // The read overwrites every byte: only growth beyond the last frame is zeroed.
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

/// Write one frame and flush it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), WireError> {
    write_frame_parts(w, &[body]).await
}

/// Write one frame whose body is `parts` one after the other, and flush it: a chunk reply's
/// header and bytes go out without first being copied into one buffer.
pub async fn write_frame_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[&[u8]],
) -> Result<(), WireError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(total).map_err(|_| WireError::FrameTooLarge {
        len: total,
        max: u32::MAX as usize,
    })?;
    w.write_all(&len.to_le_bytes()).await?;
    for part in parts {
        w.write_all(part).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Send the control-stream handshake.
pub async fn write_handshake<W: AsyncWrite + Unpin>(
    w: &mut W,
    version: u32,
) -> Result<(), WireError> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Read the peer's handshake; error on bad magic or a version other than `ours`.
pub async fn read_handshake<R: AsyncRead + Unpin>(r: &mut R, ours: u32) -> Result<(), WireError> {
    let mut buf = [0u8; 12];
    r.read_exact(&mut buf).await?;
    if &buf[..8] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let theirs = u32::from_le_bytes(buf[8..].try_into().expect("4 bytes"));
    if theirs != ours {
        return Err(WireError::VersionMismatch { ours, theirs });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_caps_hold() {
        futures::executor::block_on(async {
            let mut buf = Vec::new();
            write_frame(&mut buf, b"hello").await.unwrap();
            write_frame(&mut buf, &[7u8; 100]).await.unwrap();
            let mut r = &buf[..];
            assert_eq!(read_frame(&mut r, 10).await.unwrap().unwrap(), b"hello");
            assert!(matches!(
                read_frame(&mut r, 10).await,
                Err(WireError::FrameTooLarge { len: 100, max: 10 })
            ));
            let mut empty: &[u8] = &[];
            assert!(read_frame(&mut empty, 10).await.unwrap().is_none());
        });
    }

    #[test]
    fn handshake_detects_mismatch() {
        futures::executor::block_on(async {
            let mut buf = Vec::new();
            write_handshake(&mut buf, 2).await.unwrap();
            assert!(read_handshake(&mut &buf[..], 2).await.is_ok());
            assert!(matches!(
                read_handshake(&mut &buf[..], 1).await,
                Err(WireError::VersionMismatch { ours: 1, theirs: 2 })
            ));
            assert!(matches!(
                read_handshake(&mut &b"xxxxxxxx\x01\0\0\0"[..], 1).await,
                Err(WireError::BadMagic)
            ));
        });
    }
}
