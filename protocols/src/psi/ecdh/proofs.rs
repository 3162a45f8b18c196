//! Phase 2 with proofs (step 3 of the module docs): the returning party sends the joint points
//! `D_j = k·C_j` and, once the learner's challenge arrives, proves them; the learning party
//! combines them into `Z`, reveals its challenge `(σ, M, Z)` and checks the proofs. The proofs are
//! batched Chaum–Pedersen DLEQ proofs as in RFC 9497 §2.2.1 (`GenerateProof`), with the composite
//! coefficients drawn from the verifier's challenge instead of `ComputeComposites` (see
//! [`crate::dleq`] for why). Also the evidence records an auditor checks with `verify`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::traits::Identity;
use futures::StreamExt;
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::flow::frame_body;
use super::key::HalfKey;
use super::verify::{leaf_bytes, pair_leaves, verify_sample};
use super::{
    Behaviour, CHALLENGE, DLEQ_CONTEXT, DLEQ_SAMPLE_CONTEXT, EcdhPsiError, JOINT, PROOF, SAMPLE_SIZE, kernels,
    violation,
};
use crate::channel::Channel;
use crate::psi::Progress;
use crate::{cpu, dleq, merkle};

/// The audit evidence of one ECDH-PSI run with proofs.
#[derive(Debug, Clone)]
pub struct EcdhEvidence {
    /// `B = k·G` of this party's job key (sent in its hello).
    pub own_commitment: [u8; 32],
    /// The peer's `B` (from its hello).
    pub peer_commitment: [u8; 32],
    /// The proof this party made over the peer's points and its multiples of them (`None` if the
    /// peer does not learn, so nothing was returned).
    pub sent: Option<ProofRecord>,
    /// The proof the peer made over this party's points and the peer's multiples of them, which
    /// this party verified before using them (`None` if this party does not learn).
    pub received: Option<ProofRecord>,
}

/// A batched DLEQ proof over pairs `(C_i, D_i = k·C_i)`, `i` in stream order, with what an auditor
/// needs to check it: the verifier's challenge and composite, and all pairs, or a Merkle root over
/// them and a sample drawn from the challenge.
#[derive(Debug, Clone)]
pub struct ProofRecord {
    /// Number of pairs.
    pub pairs: u64,
    /// RFC 6962 root over leaves `C_i || D_i` (64 bytes each).
    pub pairs_root: [u8; 32],
    /// The verifier's challenge seed `σ` (the composite's coefficients and the sample derive from it).
    pub challenge: [u8; dleq::CHALLENGE_LEN],
    /// `enc(M)`, `M = Σ r_i·C_i`, as the verifier computed and sent it.
    pub m: [u8; 32],
    /// `enc(Z)`, `Z = Σ r_i·D_i`.
    pub z: [u8; 32],
    /// The proof that `Z = k·M` ([`DLEQ_CONTEXT`]).
    pub proof: [u8; dleq::PROOF_LEN],
    /// The proof over the sampled pairs ([`DLEQ_SAMPLE_CONTEXT`]).
    pub sample_proof: [u8; dleq::PROOF_LEN],
    /// The sampled pairs ([`dleq::sample_indices`] of the challenge and root), with inclusion proofs.
    pub sample: Vec<SampledPair>,
    /// All `C_i` encodings, concatenated (32 bytes each).
    pub c: Vec<u8>,
    /// All `D_i` encodings, concatenated.
    pub d: Vec<u8>,
}

/// One pair of a sample, with the leaf it belongs to and that leaf's RFC 6962 audit path in the
/// tree over all pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampledPair {
    pub index: u64,
    pub c: [u8; 32],
    pub d: [u8; 32],
    /// The pairs of the pair's leaf (`C_j || D_j` for `j` in `PAIRS_PER_LEAF·⌊index / PAIRS_PER_LEAF⌋..`).
    pub leaf: Vec<u8>,
    pub path: Vec<merkle::Hash>,
}

/// Pairs per leaf of the tree over the pairs: a leaf hashes `C_j || D_j` of 16 consecutive pairs
/// (1 KiB), which costs about one SHA-256 block per pair in all, a quarter of a tree with a leaf
/// per pair; a sampled pair carries its leaf (1 KiB) as evidence.
pub const PAIRS_PER_LEAF: usize = 16;

/// What a party that returns joint points (and proves) brings to phase 2.
pub(super) struct Proving {
    pub(super) key: Arc<HalfKey>,
    pub(super) commitment: [u8; 32],
    /// The peer's phase-1 points `C_j`, as received.
    pub(super) peer_points: Bytes,
    /// This party's multiples `D_j = k·C_j`, in the same order.
    pub(super) joint: Bytes,
    pub(super) behaviour: Behaviour,
}

/// What a party that learns (and checks the peer's proof) brings to phase 2.
pub(super) struct Verifying {
    /// `σ`, drawn before phase 1 and revealed only after all returned points arrived.
    pub(super) challenge: [u8; dleq::CHALLENGE_LEN],
    pub(super) coefficients: Arc<dleq::Coefficients>,
    /// This party's phase-1 points as sent (`C_i`, 32 bytes each, in stream order).
    pub(super) own: Vec<u8>,
    /// `Σ r_i·(k/2)·H(x_i) = M/2`, accumulated in phase 1.
    pub(super) m_half: RistrettoPoint,
    pub(super) peer_commitment: [u8; 32],
}

/// Joint-point frames of the peer being processed on rayon at once.
const JOINT_FRAMES_IN_FLIGHT: usize = 2;

/// Phase 2 with proofs. A returning party sends the joint points, waits for the peer's challenge
/// `(σ, M, Z)`, checks `Z = k·M` and sends its proofs. A learning party receives the joint points
/// (decoding them into `Z` and hashing them to tags as they arrive), then sends its challenge and
/// checks the peer's proofs. With [`Reveal::Both`] a party does both at once: one writer sends its
/// joint points and then the challenge and proof frames in the order the reader produces them; one
/// reader takes the peer's frames in whatever order they come.
///
/// Returns the tags of this party's own items (if it learns) and the records of the proof it
/// made and the one it checked.
pub(super) async fn phase2_with_proofs<C: Channel>(
    channel: &C,
    proving: Option<Proving>,
    verifying: Option<Verifying>,
    own_size: usize,
    per_frame: usize,
    progress: &Progress<'_>,
) -> Result<(Option<Vec<u128>>, Option<ProofRecord>, Option<ProofRecord>), EcdhPsiError> {
    let (control, mut control_out) = futures::channel::mpsc::unbounded::<Bytes>();
    let control_frames = usize::from(proving.is_some()) + usize::from(verifying.is_some());
    let joint = proving.as_ref().map(|p| p.joint.clone());
    let writer = async move {
        if let Some(joint) = joint {
            for chunk in joint.chunks(32 * per_frame.max(1)) {
                let mut frame = Vec::with_capacity(1 + chunk.len());
                frame.push(JOINT);
                frame.extend_from_slice(chunk);
                channel.send(Bytes::from(frame)).await?;
            }
        }
        for _ in 0..control_frames {
            let frame = control_out.next().await.ok_or_else(|| violation("phase 2 ended before its last frame"))?;
            channel.send(frame).await?;
        }
        Ok::<(), EcdhPsiError>(())
    };
    let reader = async move {
        let mut learner = verifying.map(|v| Learner::new(v, own_size));
        let mut returner = proving;
        let mut sent_record = None;
        if let Some(l) = learner.as_mut().filter(|_| own_size == 0) {
            control.unbounded_send(l.finish().await?).expect("the writer outlives the reader");
        }
        while returner.is_some() || learner.as_ref().is_some_and(|l| l.record.is_none()) {
            let frame = channel.recv().await?;
            match frame.first().copied() {
                Some(JOINT) => {
                    let l = learner
                        .as_mut()
                        .filter(|l| l.received.len() < 32 * own_size)
                        .ok_or_else(|| violation("the peer sent joint points this party did not expect"))?;
                    l.add_frame(frame_body(frame, JOINT, 32)?).await?;
                    progress.report("match", l.received.len() / 32, own_size);
                    if l.received.len() == 32 * own_size {
                        control.unbounded_send(l.finish().await?).expect("the writer outlives the reader");
                    }
                }
                Some(CHALLENGE) => {
                    let p = returner
                        .take()
                        .ok_or_else(|| violation("the peer sent a challenge this party did not expect"))?;
                    let body = frame.slice(1..);
                    if body.len() != CHALLENGE_BODY {
                        return Err(violation(format!(
                            "the challenge frame has {} bytes, expected {CHALLENGE_BODY}",
                            body.len()
                        )));
                    }
                    let (record, proof_frame) = cpu::run(move || prove_returned(p, &body)).await.map_err(violation)?;
                    control.unbounded_send(proof_frame).expect("the writer outlives the reader");
                    sent_record = Some(record);
                }
                Some(PROOF) => {
                    let l = learner
                        .as_mut()
                        .filter(|l| l.sent_challenge)
                        .ok_or_else(|| violation("the peer sent a proof before this party's challenge"))?;
                    let body = frame.slice(1..);
                    if body.len() != 2 * dleq::PROOF_LEN {
                        return Err(violation(format!(
                            "the proof frame has {} bytes, expected {}",
                            body.len(),
                            2 * dleq::PROOF_LEN
                        )));
                    }
                    l.record = Some(l.check(&body).await.map_err(violation)?);
                }
                Some(kind) => return Err(violation(format!("unexpected frame of kind {kind:#04x} in phase 2"))),
                None => return Err(violation("an empty frame in phase 2")),
            }
        }
        let own_tags = learner.as_mut().map(|l| std::mem::take(&mut l.tags));
        Ok::<_, EcdhPsiError>((own_tags, sent_record, learner.and_then(|l| l.record)))
    };
    let ((), result) = futures::try_join!(writer, reader)?;
    Ok(result)
}

/// Body of a challenge frame: `σ || enc(M) || enc(Z)`.
const CHALLENGE_BODY: usize = dleq::CHALLENGE_LEN + 64;

/// One frame of returned points after decoding: its part of `Z` and its tags.
type JointFrame = Result<(RistrettoPoint, Vec<u128>), dleq::DleqError>;

/// The learning side of phase 2 with proofs.
struct Learner {
    v: Verifying,
    /// The returned joint points so far (`D_i`, in stream order).
    received: Vec<u8>,
    tags: Vec<u128>,
    z: RistrettoPoint,
    in_flight: VecDeque<cpu::Task<JointFrame>>,
    sent_challenge: bool,
    m: RistrettoPoint,
    record: Option<ProofRecord>,
}

impl Learner {
    fn new(v: Verifying, own_size: usize) -> Learner {
        let m = v.m_half + v.m_half;
        Learner {
            v,
            received: Vec::with_capacity(32 * own_size),
            tags: Vec::with_capacity(own_size),
            z: RistrettoPoint::identity(),
            in_flight: VecDeque::new(),
            sent_challenge: false,
            m,
            record: None,
        }
    }

    /// Takes one frame of returned points: decoding, its part of `Z` and its tags run on rayon.
    async fn add_frame(&mut self, body: Bytes) -> Result<(), EcdhPsiError> {
        let own_size = self.received.capacity() / 32;
        if body.len() > 32 * own_size - self.received.len() {
            return Err(violation(format!(
                "the peer sent back more than {own_size} joint points, one per item this party sent"
            )));
        }
        let first = (self.received.len() / 32) as u64;
        self.received.extend_from_slice(&body);
        let coefficients = Arc::clone(&self.v.coefficients);
        self.in_flight.push_back(cpu::spawn(move || {
            let z = dleq::composite_of_encodings(&coefficients, first, &body, "returned")?;
            Ok((z, body.par_chunks(32).map(kernels::tag).collect()))
        }));
        while self.in_flight.len() > JOINT_FRAMES_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), EcdhPsiError> {
        let task = self.in_flight.pop_front().expect("a frame is in flight");
        let (z, tags) = task.await.map_err(|e| match e {
            dleq::DleqError::BadPoint { index, .. } => {
                violation(format!("the peer's returned point {index} is not a valid ristretto255 encoding"))
            }
            other => violation(other.to_string()),
        })?;
        self.z += z;
        self.tags.extend_from_slice(&tags);
        Ok(())
    }

    /// All returned points are in: the challenge frame `σ || enc(M) || enc(Z)`.
    async fn finish(&mut self) -> Result<Bytes, EcdhPsiError> {
        while !self.in_flight.is_empty() {
            self.settle_one().await?;
        }
        let mut frame = Vec::with_capacity(1 + CHALLENGE_BODY);
        frame.push(CHALLENGE);
        frame.extend_from_slice(&self.v.challenge);
        frame.extend_from_slice(self.m.compress().as_bytes());
        frame.extend_from_slice(self.z.compress().as_bytes());
        self.sent_challenge = true;
        Ok(Bytes::from(frame))
    }

    /// Checks the peer's proofs (the proof frame's body) and makes the evidence record.
    async fn check(&mut self, body: &[u8]) -> Result<ProofRecord, String> {
        let n = self.received.len() / 32;
        let peer_commitment = self.v.peer_commitment;
        let b = CompressedRistretto(peer_commitment);
        let proof = dleq::Proof::from_bytes(&body[..dleq::PROOF_LEN])
            .ok_or_else(|| "the peer's DLEQ proof is not two canonical scalars".to_string())?;
        dleq::verify(DLEQ_CONTEXT, &b, &self.m, &self.z, &proof).map_err(|e| {
            format!(
                "the peer's DLEQ proof over the {n} points it returned does not verify ({e}); it did not multiply \
                 every point of this party by the key it committed to in its hello"
            )
        })?;
        let (c, d) = (std::mem::take(&mut self.v.own), std::mem::take(&mut self.received));
        let (challenge, m, z) = (self.v.challenge, self.m.compress().to_bytes(), self.z.compress().to_bytes());
        let proof_bytes: [u8; dleq::PROOF_LEN] = body[..dleq::PROOF_LEN].try_into().expect("64 bytes");
        let sample_proof: [u8; dleq::PROOF_LEN] = body[dleq::PROOF_LEN..].try_into().expect("64 bytes");
        cpu::run(move || {
            let tree = merkle::Tree::new(pair_leaves(&c, &d));
            let record = ProofRecord {
                pairs: n as u64,
                pairs_root: tree.root(),
                challenge,
                m,
                z,
                proof: proof_bytes,
                sample_proof,
                sample: sample_of(&challenge, &c, &d, &tree, &b),
                c,
                d,
            };
            verify_sample(&peer_commitment, &record).map_err(|e| format!("the peer's sampled DLEQ proof: {e}"))?;
            Ok(record)
        })
        .await
    }
}

/// The returning party's answer to the peer's challenge `(σ, M, Z)`: checks `Z = k·M` (refusing
/// otherwise: the peer did not combine the points this party returned, and proving anyway would
/// hand it `k·M` for a point of its choosing), then proves it, and proves the sample drawn from the challenge.
/// Returns the evidence record and the proof frame.
pub(super) fn prove_returned(p: Proving, body: &[u8]) -> Result<(ProofRecord, Bytes), String> {
    let challenge: [u8; dleq::CHALLENGE_LEN] = body[..32].try_into().expect("32 bytes");
    let (m_bytes, z_bytes): ([u8; 32], [u8; 32]) =
        (body[32..64].try_into().expect("32 bytes"), body[64..96].try_into().expect("32 bytes"));
    let m = CompressedRistretto(m_bytes).decompress().ok_or("the peer's challenge M is not a valid point")?;
    let z = CompressedRistretto(z_bytes).decompress().ok_or("the peer's challenge Z is not a valid point")?;
    let k = Zeroizing::new(p.key.0 + p.key.0);
    let b = CompressedRistretto(p.commitment);
    // A cheating party (tests) skips the check so that the verifier's check is what catches it.
    if p.behaviour == Behaviour::Honest && (m * *k).compress().to_bytes() != z_bytes {
        return Err("the peer's challenge is inconsistent: its Z is not this party's key times its M, so it did not \
                    combine the points this party returned; refusing to prove"
            .into());
    }
    let (c, d) = (p.peer_points.to_vec(), p.joint.to_vec());
    let tree = merkle::Tree::new(pair_leaves(&c, &d));
    let sample = sample_of(&challenge, &c, &d, &tree, &b);
    let triples: Vec<_> = sample.iter().map(|s| (s.index, s.c, s.d)).collect();
    let sample_coefficients = dleq::Coefficients::new(DLEQ_SAMPLE_CONTEXT, &challenge);
    let (ms, _) = dleq::composite_indexed(&sample_coefficients, &triples).map_err(|e| e.to_string())?;
    let (proof, sample_proof) = if p.behaviour == Behaviour::ForgedProof {
        (random_proof(), random_proof())
    } else {
        (dleq::prove(DLEQ_CONTEXT, &k, &b, &m, &z), dleq::prove(DLEQ_SAMPLE_CONTEXT, &k, &b, &ms, &(ms * *k)))
    };
    let mut frame = Vec::with_capacity(1 + 2 * dleq::PROOF_LEN);
    frame.push(PROOF);
    frame.extend_from_slice(&proof.to_bytes());
    frame.extend_from_slice(&sample_proof.to_bytes());
    let record = ProofRecord {
        pairs: (c.len() / 32) as u64,
        pairs_root: tree.root(),
        challenge,
        m: m_bytes,
        z: z_bytes,
        proof: proof.to_bytes(),
        sample_proof: sample_proof.to_bytes(),
        sample,
        c,
        d,
    };
    Ok((record, Bytes::from(frame)))
}

fn random_proof() -> dleq::Proof {
    let scalar = || HalfKey::random().0;
    dleq::Proof { c: scalar(), s: scalar() }
}

fn sample_of(
    challenge: &[u8; dleq::CHALLENGE_LEN],
    c: &[u8],
    d: &[u8],
    tree: &merkle::Tree,
    b: &CompressedRistretto,
) -> Vec<SampledPair> {
    let n = (c.len() / 32) as u64;
    dleq::sample_indices(challenge, &tree.root(), b, n, SAMPLE_SIZE)
        .into_iter()
        .map(|index| {
            let i = index as usize;
            SampledPair {
                index,
                c: c[32 * i..32 * i + 32].try_into().expect("32 bytes"),
                d: d[32 * i..32 * i + 32].try_into().expect("32 bytes"),
                leaf: leaf_bytes(c, d, i / PAIRS_PER_LEAF),
                path: tree.inclusion_proof(i / PAIRS_PER_LEAF).expect("index in range"),
            }
        })
        .collect()
}
