//! The run (steps 1 to 3 of the module docs): the hello exchange, phase 1 (own points out, the
//! peer's points multiplied by the key) and phase 2 without proofs (tags back, then the match).
//! Phase 2 with proofs is in `proofs`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rayon::prelude::*;

use super::hello::Hello;
use super::key::{HalfKey, secret_order};
use super::proofs::{Proving, Verifying, phase2_with_proofs};
use super::{
    Behaviour, DLEQ_CONTEXT, EcdhEvidence, EcdhPsiConfig, EcdhPsiError, Framing, JOINT, POINTS, TAGS, kernels,
    violation,
};
use crate::channel::Channel;
use crate::items::Items;
use crate::psi::{Progress, PsiOutput};
use crate::{cpu, dleq};

/// Peer frames being processed on rayon at once (bounds memory, keeps the cores fed).
const PEER_FRAMES_IN_FLIGHT: usize = 2;

pub(super) async fn run_framed<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    config: &EcdhPsiConfig,
    framing: Framing,
    behaviour: Behaviour,
) -> Result<(PsiOutput, Option<EcdhEvidence>), EcdhPsiError> {
    let own_size = items.len();
    if u32::try_from(own_size).is_err() {
        return Err(EcdhPsiError::Input(format!(
            "the set has {own_size} items; ECDH-PSI supports at most {} per party",
            u32::MAX
        )));
    }
    let progress = Progress(config.progress.as_ref());
    let key = Arc::new(HalfKey::random());
    let commitment = if config.proofs { key.commitment() } else { [0; 32] };

    // Step 1: hello, with the commitment B = k·G to the job key when proofs are on.
    let ours =
        Hello { role: config.role, reveal: config.reveal, size: own_size as u64, proofs: config.proofs, commitment };
    let (_, peer_hello) = futures::try_join!(channel.send(ours.encode()), channel.recv())?;
    let peer = Hello::decode(&peer_hello)?;
    ours.check_compatible(&peer)?;
    if peer.size > config.max_peer_items {
        return Err(violation(format!(
            "the peer announced {} items, more than the {} agreed for this job",
            peer.size, config.max_peer_items
        )));
    }
    let peer_size = peer.size as usize;
    let order = secret_order(own_size);
    let (we_learn, peer_learns) = (config.reveal.learns(config.role), config.reveal.learns(peer.role));
    // This party returns joint points and proves (`proving`), and/or checks the peer's proof.
    let proving = config.proofs && peer_learns;
    let challenge = (config.proofs && we_learn).then(dleq::random_challenge);
    let coefficients = challenge.map(|sigma| Arc::new(dleq::Coefficients::new(DLEQ_CONTEXT, &sigma)));
    let second_key = match behaviour {
        Behaviour::SecondKeyFrom(from) => Some((from, Arc::new(HalfKey::random()))),
        _ => None,
    };

    // Step 2 (phase 1): the writer only sends and the reader only receives, so bounded buffers
    // in both directions cannot wait on each other.
    let keys = FrameKeys { key: &key, second: second_key.as_ref() };
    let (sent, peer_pass) = futures::try_join!(
        send_own_points(channel, items, &order, &key, framing.points_per_frame, coefficients.clone(), &progress),
        encrypt_peer_points(channel, peer_size, keys, proving, &progress),
    )?;
    drop(second_key);
    let PeerPass { tags: peer_tags, peer_points, joint } = peer_pass;

    // Step 3 (phase 2): the peer's joint values go back (as points, then challenge and proofs, or
    // as tags).
    let (own_tags, sent_record, received) = if config.proofs {
        let proving = proving.then(|| Proving {
            key: Arc::clone(&key),
            commitment,
            peer_points: Bytes::from(peer_points),
            joint: Bytes::from(joint),
            behaviour,
        });
        let verifying = challenge.zip(coefficients).map(|(challenge, coefficients)| Verifying {
            challenge,
            coefficients,
            own: sent.encodings,
            m_half: sent.m_half,
            peer_commitment: peer.commitment,
        });
        drop(key);
        phase2_with_proofs(channel, proving, verifying, own_size, framing.points_per_frame, &progress).await?
    } else {
        drop(key);
        let (_, own_tags) = futures::try_join!(
            async {
                match peer_learns {
                    true => send_tags(channel, &peer_tags, framing.tags_per_frame).await,
                    false => Ok(()),
                }
            },
            async {
                match we_learn {
                    true => Ok(Some(recv_own_tags(channel, own_size, &progress).await?)),
                    false => Ok(None),
                }
            },
        )?;
        (own_tags, None, None)
    };

    let intersection = match own_tags {
        Some(own_tags) => {
            let matched = cpu::run(move || intersect(own_tags, &order, peer_tags)).await;
            progress.report("match", own_size, own_size);
            Some(matched)
        }
        None => None,
    };
    let evidence = config.proofs.then_some(EcdhEvidence {
        own_commitment: commitment,
        peer_commitment: peer.commitment,
        sent: sent_record,
        received,
    });
    Ok((PsiOutput { peer_size: peer.size, intersection, payloads: None, timings: Vec::new() }, evidence))
}

/// The key(s) a party multiplies the peer's points by: one, unless it cheats (tests only).
#[derive(Clone, Copy)]
struct FrameKeys<'a> {
    key: &'a Arc<HalfKey>,
    second: Option<&'a (usize, Arc<HalfKey>)>,
}

impl FrameKeys<'_> {
    fn for_frame(&self, first: usize) -> Arc<HalfKey> {
        match self.second {
            Some((from, second)) if first >= *from => Arc::clone(second),
            _ => Arc::clone(self.key),
        }
    }
}

/// Phase 1, writer: streams `enc(k·H(x))` of the own items in `order`, computing frame `i + 1`
/// on rayon while frame `i` is sent. With `coefficients` (this party will check the peer's proof),
/// also keeps the encodings as sent and accumulates `Σ r_i·(k/2)·H(x_i)` (half the composite `M`).
async fn send_own_points<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    order: &[u32],
    key: &Arc<HalfKey>,
    per_frame: usize,
    coefficients: Option<Arc<dleq::Coefficients>>,
    progress: &Progress<'_>,
) -> Result<SentPoints, EcdhPsiError> {
    let keep = coefficients.is_some();
    let mut sent = SentPoints {
        encodings: Vec::with_capacity(if keep { 32 * order.len() } else { 0 }),
        m_half: RistrettoPoint::identity(),
    };
    let mut first = 0u64;
    let mut start = |positions: &[u32]| {
        let batch = OwnItems::gather(items, positions);
        let key = Arc::clone(key);
        let coefficients = coefficients.clone();
        let frame_first = first;
        first += positions.len() as u64;
        cpu::spawn(move || encrypt_own(&batch, &key.0, coefficients.as_deref().map(|c| (c, frame_first))))
    };
    let mut frames = order.chunks(per_frame.max(1));
    let mut next = frames.next().map(&mut start);
    let mut done = 0;
    while let Some(computing) = next.take() {
        let (frame, m_half) = computing.await;
        next = frames.next().map(&mut start);
        let count = (frame.len() - 1) / 32;
        if keep {
            sent.encodings.extend_from_slice(&frame[1..]);
            sent.m_half += m_half;
        }
        channel.send(frame).await?;
        done += count;
        progress.report("encrypt own set", done, order.len());
    }
    Ok(sent)
}

/// What a learning party keeps of its own points to check the proof over the points returned for
/// them: the encodings as sent and half the composite `M`.
struct SentPoints {
    encodings: Vec<u8>,
    m_half: RistrettoPoint,
}

/// Own items of one frame copied out of [`Items`] (which is borrowed, so cannot go to rayon).
struct OwnItems {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl OwnItems {
    fn gather<I: Items + ?Sized>(items: &I, positions: &[u32]) -> OwnItems {
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(positions.len());
        for &position in positions {
            bytes.extend_from_slice(items.get(position as usize));
            ends.push(bytes.len());
        }
        OwnItems { bytes, ends }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// A points frame: `enc(k·H(x))` for each item, batched for the shared inversion. Given the
/// composite coefficients and the frame's first stream index, also returns `Σ r_i·(k/2)·H(x_i)`
/// over the frame (identity otherwise).
fn encrypt_own(
    items: &OwnItems,
    half_key: &Scalar,
    composite: Option<(&dleq::Coefficients, u64)>,
) -> (Bytes, RistrettoPoint) {
    let mut frame = vec![0u8; 1 + 32 * items.len()];
    frame[0] = POINTS;
    let mut points = vec![RistrettoPoint::identity(); items.len()];
    points.par_chunks_mut(kernels::BATCH).zip(frame[1..].par_chunks_mut(32 * kernels::BATCH)).enumerate().for_each(
        |(b, (batch, out))| {
            let first = b * kernels::BATCH;
            for (i, point) in batch.iter_mut().enumerate() {
                *point = kernels::hash_to_point(items.get(first + i));
            }
            kernels::multiply_encode(batch, half_key, out);
        },
    );
    let m_half = match composite {
        Some((coefficients, first)) => dleq::composite_of_points(coefficients, first, &points),
        None => RistrettoPoint::identity(),
    };
    (Bytes::from(frame), m_half)
}

/// What phase 1 leaves of the peer's points.
struct PeerPass {
    /// `T(k·Q_j)` for the peer's points `Q_j`, in the order received.
    tags: Vec<u128>,
    /// When proving: the peer's point encodings and this party's multiples `k·Q_j`, concatenated.
    peer_points: Vec<u8>,
    joint: Vec<u8>,
}

/// Items' worth of buffer reserved ahead for the peer's points; beyond it buffers grow as points
/// arrive.
const MAX_RESERVE_ITEMS: usize = 1 << 20;

/// Phase 1, reader: decodes the peer's points as they arrive and keeps the tags
/// `T(y) = F(k·(k_peer·H(y)))`, in the order received; when `proving` also the pairs.
async fn encrypt_peer_points<C: Channel>(
    channel: &C,
    peer_size: usize,
    keys: FrameKeys<'_>,
    proving: bool,
    progress: &Progress<'_>,
) -> Result<PeerPass, EcdhPsiError> {
    // The peer's announced size is not trusted: buffers are reserved up to a bound and grow with
    // the points actually received (a hello announcing 2^32 − 1 items must not reserve 137 GB).
    let reserve = peer_size.min(MAX_RESERVE_ITEMS);
    let mut pass = PeerPass {
        tags: Vec::with_capacity(reserve),
        peer_points: Vec::with_capacity(if proving { 32 * reserve } else { 0 }),
        joint: Vec::with_capacity(if proving { 32 * reserve } else { 0 }),
    };
    let mut in_flight = VecDeque::with_capacity(PEER_FRAMES_IN_FLIGHT);
    let mut received = 0;
    while received < peer_size || !in_flight.is_empty() {
        if received < peer_size && in_flight.len() < PEER_FRAMES_IN_FLIGHT {
            let frame = channel.recv().await?;
            let points = frame_body(frame, POINTS, 32)?;
            let count = points.len() / 32;
            if count > peer_size - received {
                return Err(violation(format!("the peer sent more than the {peer_size} points it announced")));
            }
            if proving {
                pass.peer_points.extend_from_slice(&points);
            }
            let key = keys.for_frame(received);
            in_flight.push_back((received, cpu::spawn(move || encrypt_peer(&points, &key.0))));
            received += count;
        } else {
            let (first, computing) = in_flight.pop_front().expect("a frame is in flight");
            let frame = computing.await.map_err(|i| {
                violation(format!(
                    "the peer's point {} is not the encoding of a non-identity ristretto255 point",
                    first + i
                ))
            })?;
            pass.tags.extend_from_slice(&frame.tags);
            if proving {
                pass.joint.extend_from_slice(&frame.joint);
            }
            progress.report("encrypt peer set", pass.tags.len(), peer_size);
        }
    }
    Ok(pass)
}

/// One frame of the peer's points after phase 1.
pub(super) struct FrameOut {
    pub(super) tags: Vec<u128>,
    /// `enc(k·Q_j)` of the frame's points.
    pub(super) joint: Vec<u8>,
}

/// Multiplies one frame of peer points by the key: their joint encodings and tags. Fails with the
/// index (in the frame) of an invalid point.
pub(super) fn encrypt_peer(points: &[u8], half_key: &Scalar) -> Result<FrameOut, usize> {
    let n = points.len() / 32;
    let mut joint = vec![0u8; 32 * n];
    let mut blinded = vec![RistrettoPoint::identity(); n];
    blinded
        .par_chunks_mut(kernels::BATCH)
        .zip(joint.par_chunks_mut(32 * kernels::BATCH))
        .zip(points.par_chunks(32 * kernels::BATCH))
        .enumerate()
        .try_for_each(|(b, ((batch, out), encodings))| {
            for (i, (slot, encoding)) in batch.iter_mut().zip(encodings.chunks_exact(32)).enumerate() {
                *slot = kernels::decode(encoding).ok_or(b * kernels::BATCH + i)?;
            }
            kernels::multiply_encode(batch, half_key, out);
            Ok::<(), usize>(())
        })?;
    let tags = joint.par_chunks(32).map(kernels::tag).collect();
    Ok(FrameOut { tags, joint })
}

/// Checks a frame's kind and that its body is a non-empty whole number of `size`-byte records.
pub(super) fn frame_body(frame: Bytes, kind: u8, size: usize) -> Result<Bytes, EcdhPsiError> {
    let what = match kind {
        POINTS => "points",
        TAGS => "tags",
        JOINT => "joint points",
        _ => "other",
    };
    match frame.first() {
        Some(&k) if k == kind => {}
        Some(&k) => {
            return Err(violation(format!("expected a {what} frame (kind {kind:#04x}), got a frame of kind {k:#04x}")));
        }
        None => {
            return Err(violation(format!("expected a {what} frame, got an empty frame")));
        }
    }
    let body = frame.slice(1..);
    if body.is_empty() || !body.len().is_multiple_of(size) {
        return Err(violation(format!(
            "a {what} frame has {} bytes of payload, not a positive multiple of {size}",
            body.len()
        )));
    }
    Ok(body)
}

/// Phase 2, sender: the peer's tags back, in the order its points arrived.
async fn send_tags<C: Channel>(channel: &C, tags: &[u128], per_frame: usize) -> Result<(), EcdhPsiError> {
    for chunk in tags.chunks(per_frame.max(1)) {
        let mut frame = Vec::with_capacity(1 + 16 * chunk.len());
        frame.push(TAGS);
        for tag in chunk {
            frame.extend_from_slice(&tag.to_be_bytes());
        }
        channel.send(Bytes::from(frame)).await?;
    }
    Ok(())
}

/// Phase 2, receiver: the tags of this party's own items, in the order it sent them.
async fn recv_own_tags<C: Channel>(
    channel: &C,
    own_size: usize,
    progress: &Progress<'_>,
) -> Result<Vec<u128>, EcdhPsiError> {
    let mut tags = Vec::with_capacity(own_size);
    while tags.len() < own_size {
        let body = frame_body(channel.recv().await?, TAGS, 16)?;
        if body.len() / 16 > own_size - tags.len() {
            return Err(violation(format!(
                "the peer sent back more than {own_size} tags, one per item this party sent"
            )));
        }
        tags.extend(body.chunks_exact(16).map(|tag| u128::from_be_bytes(tag.try_into().expect("16 bytes"))));
        progress.report("match", tags.len(), own_size);
    }
    Ok(tags)
}

/// Own indices whose tag is among the peer's tags, sorted by (tag, index): the joint order.
fn intersect(own_tags: Vec<u128>, order: &[u32], mut peer_tags: Vec<u128>) -> Vec<u32> {
    peer_tags.par_sort_unstable();
    peer_tags.dedup();
    let mut own: Vec<(u128, u32)> = own_tags.into_iter().zip(order.iter().copied()).collect();
    own.par_sort_unstable();
    let mut matched = Vec::new();
    let mut peer = peer_tags.iter().peekable();
    for (tag, index) in own {
        while peer.next_if(|&&t| t < tag).is_some() {}
        if peer.peek() == Some(&&tag) {
            matched.push(index);
        }
    }
    matched
}
