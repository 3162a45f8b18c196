//! Framing of ring vectors: a vector of u64 (little-endian) goes out in frames of at most
//! [`FRAME_WORDS`] words; the receiver knows the length in advance and checks every frame.

use bytes::Bytes;

use super::{MpcError, violation};
use crate::channel::Channel;

/// Words per frame: 1 MiB.
pub const FRAME_WORDS: usize = 1 << 17;

/// Sends `words` in frames of at most [`FRAME_WORDS`] (an empty vector sends one empty frame, so
/// that every send has a matching receive).
pub async fn send_u64s<C: Channel>(channel: &C, words: &[u64]) -> Result<(), MpcError> {
    if words.is_empty() {
        channel.send(Bytes::new()).await?;
        return Ok(());
    }
    for chunk in words.chunks(FRAME_WORDS) {
        let mut frame = vec![0u8; chunk.len() * 8];
        // Fixed-size copies: a plain memcpy on little-endian targets.
        for (out, &w) in frame.chunks_exact_mut(8).zip(chunk) {
            out.copy_from_slice(&w.to_le_bytes());
        }
        channel.send(Bytes::from(frame)).await?;
    }
    Ok(())
}

/// Receives exactly `n` words sent by [`send_u64s`].
pub async fn recv_u64s<C: Channel>(channel: &C, n: usize) -> Result<Vec<u64>, MpcError> {
    let mut out = Vec::new();
    recv_u64s_into(channel, n, &mut out).await?;
    Ok(out)
}

/// [`recv_u64s`] into `out` (cleared first; its capacity reused): for callers that receive
/// messages of the same size again and again, whose fresh buffers would each be paid in page
/// faults. `n` must be known locally, never announced by the peer.
pub async fn recv_u64s_into<C: Channel>(channel: &C, n: usize, out: &mut Vec<u64>) -> Result<(), MpcError> {
    out.clear();
    out.reserve(n);
    if n == 0 {
        let frame = channel.recv().await?;
        if !frame.is_empty() {
            return Err(violation("expected an empty vector frame"));
        }
        return Ok(());
    }
    while out.len() < n {
        let frame = channel.recv().await?;
        let expect = (n - out.len()).min(FRAME_WORDS);
        if frame.len() != expect * 8 {
            return Err(violation(format!("vector frame of {} bytes, expected {}", frame.len(), expect * 8)));
        }
        out.extend(frame.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())));
    }
    Ok(())
}

/// Sends raw bytes in frames of at most 1 MiB (an empty slice sends one empty frame).
pub async fn send_bytes<C: Channel>(channel: &C, bytes: &[u8]) -> Result<(), MpcError> {
    if bytes.is_empty() {
        channel.send(Bytes::new()).await?;
        return Ok(());
    }
    for chunk in bytes.chunks(FRAME_WORDS * 8) {
        channel.send(Bytes::copy_from_slice(chunk)).await?;
    }
    Ok(())
}

/// Receives exactly `n` bytes sent by [`send_bytes`].
pub async fn recv_bytes<C: Channel>(channel: &C, n: usize) -> Result<Vec<u8>, MpcError> {
    let mut out = Vec::with_capacity(n);
    loop {
        let frame = channel.recv().await?;
        let expect = (n - out.len()).min(FRAME_WORDS * 8);
        if frame.len() != expect {
            return Err(violation(format!("byte frame of {} bytes, expected {expect}", frame.len())));
        }
        out.extend_from_slice(&frame);
        if out.len() == n {
            return Ok(out);
        }
    }
}
