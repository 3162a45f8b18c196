//! The frames of RR22-PSI (see the wire format in the module docs): the hello, R's OKVS cells,
//! S's values and R's matched positions.

use bytes::{BufMut, Bytes, BytesMut};

use std::ops::Range;

use super::{
    BucketSink, DUMMY, FRAME_BYTES, HELLO, HELLO_LEN, Layout, OKVS_CELLS, PAYLOAD_HEAD, PAYLOADS, POSITIONS,
    PROTOCOL_ID, Rr22Error, VALUES, VERSION, violation,
};
use crate::channel::Channel;
use crate::okvs::OkvsSeed;
use crate::psi::payload::{FORMAT, LEN_BYTES, TAG_BYTES};
use crate::psi::{Reveal, Role};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hello {
    pub(super) role: Role,
    pub(super) reveal: Reveal,
    pub(super) size: u64,
    pub(super) bucket_size: u64,
    pub(super) salt: [u8; 16],
}

impl Hello {
    pub(super) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HELLO_LEN);
        b.put_u8(HELLO);
        b.put_slice(PROTOCOL_ID);
        b.put_u16(VERSION);
        b.put_u8(self.role.wire());
        b.put_u8(self.reveal.wire());
        b.put_u64(self.size);
        b.put_u64(self.bucket_size);
        b.put_slice(&self.salt);
        b.freeze()
    }

    pub(super) fn decode(f: &[u8]) -> Result<Hello, Rr22Error> {
        if f.first() != Some(&HELLO) || f.len() < 19 || &f[1..17] != PROTOCOL_ID {
            return Err(violation("the peer does not speak RR22-PSI (bad hello)"));
        }
        let version = u16::from_be_bytes([f[17], f[18]]);
        if version != VERSION {
            return Err(violation(format!("the peer speaks RR22-PSI version {version}, this node {VERSION}")));
        }
        if f.len() != HELLO_LEN {
            return Err(violation(format!("hello of {} bytes, expected {HELLO_LEN}", f.len())));
        }
        let role = Role::from_wire(f[19]).ok_or_else(|| violation(format!("unknown role {} in hello", f[19])))?;
        let reveal =
            Reveal::from_wire(f[20]).ok_or_else(|| violation(format!("unknown reveal mode {} in hello", f[20])))?;
        let size = u64::from_be_bytes(f[21..29].try_into().expect("8 bytes"));
        let bucket_size = u64::from_be_bytes(f[29..37].try_into().expect("8 bytes"));
        let salt = f[37..53].try_into().expect("16 bytes");
        Ok(Hello { role, reveal, size, bucket_size, salt })
    }
}

pub(super) async fn send_cells<C: Channel>(
    channel: &C,
    bucket: usize,
    seed: OkvsSeed,
    cells: &[u128],
) -> Result<(), Rr22Error> {
    let per_frame = FRAME_BYTES / 16;
    for (f, chunk) in cells.chunks(per_frame).enumerate() {
        let mut frame = BytesMut::with_capacity(9 + 16 + chunk.len() * 16);
        frame.put_u8(OKVS_CELLS);
        frame.put_u32(bucket as u32);
        frame.put_u32((f * per_frame) as u32);
        if f == 0 {
            frame.put_slice(&seed.0);
        }
        for c in chunk {
            frame.put_slice(&c.to_le_bytes());
        }
        channel.send(frame.freeze()).await?;
    }
    Ok(())
}

pub(super) async fn recv_cells<C: Channel>(
    channel: &C,
    bucket: usize,
    m: usize,
) -> Result<(OkvsSeed, Vec<u128>), Rr22Error> {
    let mut cells = Vec::with_capacity(m);
    let mut seed = None;
    while cells.len() < m {
        let frame = channel.recv().await?;
        let head = 9 + if cells.is_empty() { 16 } else { 0 };
        if frame.len() < head
            || frame[0] != OKVS_CELLS
            || u32::from_be_bytes(frame[1..5].try_into().expect("4")) as usize != bucket
            || u32::from_be_bytes(frame[5..9].try_into().expect("4")) as usize != cells.len()
            || !(frame.len() - head).is_multiple_of(16)
            || frame.len() == head
            || cells.len() + (frame.len() - head) / 16 > m
        {
            return Err(violation(format!(
                "bad OKVS frame for bucket {bucket} at cell {} of {m} ({} bytes)",
                cells.len(),
                frame.len()
            )));
        }
        if cells.is_empty() {
            seed = Some(OkvsSeed(frame[9..25].try_into().expect("16")));
        }
        cells.extend(frame[head..].chunks_exact(16).map(|c| u128::from_le_bytes(c.try_into().expect("16"))));
    }
    Ok((seed.expect("m ≥ 1 cell"), cells))
}

pub(super) async fn send_values<C: Channel>(
    channel: &C,
    bucket: usize,
    width: usize,
    values: &[u128],
) -> Result<(), Rr22Error> {
    let per_frame = FRAME_BYTES / width;
    for (f, chunk) in values.chunks(per_frame).enumerate() {
        let mut frame = BytesMut::with_capacity(9 + chunk.len() * width);
        frame.put_u8(VALUES);
        frame.put_u32(bucket as u32);
        frame.put_u32((f * per_frame) as u32);
        for v in chunk {
            frame.put_slice(&v.to_le_bytes()[..width]);
        }
        channel.send(frame.freeze()).await?;
    }
    Ok(())
}

pub(super) async fn recv_values<C: Channel>(
    channel: &C,
    bucket: usize,
    layout: &Layout,
) -> Result<Vec<u128>, Rr22Error> {
    let width = layout.value_bytes;
    let count = layout.cap_sender;
    let mut values = Vec::with_capacity(count);
    while values.len() < count {
        let at = values.len();
        let frame = channel.recv().await?;
        if frame.len() <= 9
            || frame[0] != VALUES
            || u32::from_be_bytes(frame[1..5].try_into().expect("4")) as usize != bucket
            || u32::from_be_bytes(frame[5..9].try_into().expect("4")) as usize != at
            || !(frame.len() - 9).is_multiple_of(width)
            || at + (frame.len() - 9) / width > count
        {
            return Err(violation(format!(
                "bad values frame for bucket {bucket} at position {at} of {count} ({} bytes)",
                frame.len()
            )));
        }
        values.extend(frame[9..].chunks_exact(width).map(|v| {
            let mut b = [0u8; 16];
            b[..width].copy_from_slice(v);
            u128::from_le_bytes(b)
        }));
    }
    Ok(values)
}

pub(super) async fn send_positions<C: Channel>(channel: &C, positions: &[u32]) -> Result<(), Rr22Error> {
    let per_frame = FRAME_BYTES / 4;
    let mut at = 0usize;
    for chunk in positions.chunks(per_frame) {
        let mut frame = BytesMut::with_capacity(5 + chunk.len() * 4);
        frame.put_u8(POSITIONS);
        frame.put_u32(at as u32);
        for &p in chunk {
            frame.put_u32(p);
        }
        channel.send(frame.freeze()).await?;
        at += chunk.len();
    }
    let mut last = BytesMut::with_capacity(5);
    last.put_u8(POSITIONS);
    last.put_u32(at as u32);
    channel.send(last.freeze()).await?;
    Ok(())
}

/// S's side of the positions: reads R's matched stream positions (in the joint order, so bucket
/// after bucket) and hands each bucket of the range to the sink, mapped through the bucket's
/// secret order to own ids, as soon as its positions are complete; every bucket of the range is
/// handed over once, in order, those without matches empty. Positions outside the range, out of
/// bucket order, or more than a bucket's capacity are refused.
pub(super) async fn recv_positions<C: Channel>(
    channel: &C,
    sink: &mut dyn BucketSink,
    layout: &Layout,
    range: Range<usize>,
) -> Result<(), Rr22Error> {
    let cap = layout.cap_sender;
    let (low, high) = (range.start * cap, range.end * cap);
    // The bucket being collected: its order and its matched ids so far.
    let mut current: Option<(usize, Vec<u32>, Vec<u32>)> = None;
    // The next bucket of the range not handed over yet.
    let mut next = range.start;
    let mut at = 0usize;
    loop {
        let frame = channel.recv().await?;
        if frame.len() < 5
            || frame[0] != POSITIONS
            || u32::from_be_bytes(frame[1..5].try_into().expect("4")) as usize != at
            || !(frame.len() - 5).is_multiple_of(4)
        {
            return Err(violation(format!("bad positions frame at {at} ({} bytes)", frame.len())));
        }
        if frame.len() == 5 {
            if let Some((b, _, ids)) = current.take() {
                sink.matched(b, ids)?;
            }
            for b in next..range.end {
                sink.take_order(b)?;
                sink.matched(b, Vec::new())?;
            }
            return Ok(());
        }
        for p in frame[5..].chunks_exact(4) {
            let p = u32::from_be_bytes(p.try_into().expect("4")) as usize;
            if p < low || p >= high {
                return Err(violation(format!("matched position {p} outside the {low}..{high} sent")));
            }
            let bucket = p / cap;
            if current.as_ref().is_none_or(|c| c.0 != bucket) {
                if bucket < next {
                    return Err(violation("matched positions out of bucket order"));
                }
                if let Some((b, _, ids)) = current.take() {
                    sink.matched(b, ids)?;
                }
                for b in next..bucket {
                    sink.take_order(b)?;
                    sink.matched(b, Vec::new())?;
                }
                current = Some((bucket, sink.take_order(bucket)?, Vec::new()));
                next = bucket + 1;
            }
            let (_, order, ids) = current.as_mut().expect("set above");
            // A dummy can match only by a false positive (below 2^-40): skip it.
            let index = order[p % cap];
            if index != DUMMY {
                ids.push(index);
            }
            if ids.len() > cap {
                return Err(violation("more matched positions than values sent"));
            }
            at += 1;
        }
    }
}

/// The responder's payload width (bytes of each padded plaintext, length included).
pub(super) async fn send_payload_width<C: Channel>(channel: &C, width: usize) -> Result<(), Rr22Error> {
    let mut frame = BytesMut::with_capacity(6);
    frame.put_u8(PAYLOAD_HEAD);
    frame.put_u32(width as u32);
    frame.put_u8(FORMAT);
    channel.send(frame.freeze()).await?;
    Ok(())
}

/// The peer's payload width, refused above `max_bytes` of payload before anything is sized by it,
/// and its sealing format, refused unless it is this node's [`FORMAT`].
pub(super) async fn recv_payload_width<C: Channel>(channel: &C, max_bytes: usize) -> Result<usize, Rr22Error> {
    let frame = channel.recv().await?;
    if frame.first() == Some(&PAYLOAD_HEAD) && frame.len() == 5 {
        return Err(violation(format!(
            "the peer seals payloads in format 1, this node in format {FORMAT} (update the older node)"
        )));
    }
    if frame.len() != 6 || frame[0] != PAYLOAD_HEAD {
        return Err(violation(format!("expected the payload width, got a frame of {} bytes", frame.len())));
    }
    if frame[5] != FORMAT {
        return Err(violation(format!("the peer seals payloads in format {}, this node in format {FORMAT}", frame[5])));
    }
    let width = u32::from_be_bytes(frame[1..5].try_into().expect("4")) as usize;
    if width < LEN_BYTES || width - LEN_BYTES > max_bytes {
        return Err(violation(format!(
            "the peer announces payloads of {} bytes, more than the {max_bytes} allowed",
            width.saturating_sub(LEN_BYTES)
        )));
    }
    Ok(width)
}

/// One bucket's sealed payloads (`width + TAG_BYTES` bytes each, in stream order).
pub(super) async fn send_payloads<C: Channel>(
    channel: &C,
    bucket: usize,
    width: usize,
    sealed: &[u8],
) -> Result<(), Rr22Error> {
    let each = width + TAG_BYTES;
    let per_frame = (FRAME_BYTES / each).max(1);
    for (f, chunk) in sealed.chunks(per_frame * each).enumerate() {
        let mut frame = BytesMut::with_capacity(9 + chunk.len());
        frame.put_u8(PAYLOADS);
        frame.put_u32(bucket as u32);
        frame.put_u32((f * per_frame) as u32);
        frame.put_slice(chunk);
        channel.send(frame.freeze()).await?;
    }
    Ok(())
}

/// One bucket's sealed payloads: exactly `count` of `width + TAG_BYTES` bytes.
pub(super) async fn recv_payloads<C: Channel>(
    channel: &C,
    bucket: usize,
    count: usize,
    width: usize,
) -> Result<Vec<u8>, Rr22Error> {
    let each = width + TAG_BYTES;
    let total = count.checked_mul(each).ok_or_else(|| violation("payload stream too large"))?;
    // Grown by what arrives, not sized by the announcement alone.
    let mut sealed = Vec::with_capacity(total.min(4 * FRAME_BYTES));
    while sealed.len() < total {
        let at = sealed.len() / each;
        let frame = channel.recv().await?;
        if frame.len() <= 9
            || frame[0] != PAYLOADS
            || u32::from_be_bytes(frame[1..5].try_into().expect("4")) as usize != bucket
            || u32::from_be_bytes(frame[5..9].try_into().expect("4")) as usize != at
            || !(frame.len() - 9).is_multiple_of(each)
            || sealed.len() + (frame.len() - 9) > total
        {
            return Err(violation(format!(
                "bad payload frame for bucket {bucket} at position {at} of {count} ({} bytes)",
                frame.len()
            )));
        }
        sealed.extend_from_slice(&frame[9..]);
    }
    Ok(sealed)
}
