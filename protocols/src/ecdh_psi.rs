//! ECDH-PSI on ristretto255: private set intersection from the commutativity of scalar
//! multiplication (Meadows 1986; Huberman, Franklin and Hogg 1999).
//!
//! # What it computes
//!
//! Let 𝔾 be the ristretto255 group, of prime order ℓ, and let H: {0,1}* → 𝔾 hash an item to a
//! point (SHA-512 of a domain tag and the item, mapped by the Elligator-based one-way map of
//! RFC 9496 §4.3.4; see [`kernels::hash_to_point`]). The requester holds the items X, the
//! responder the items Y. Each party samples a fresh secret scalar per job, `k_a` and `k_b`,
//! uniform in ℤ_ℓ \ {0}, from the operating system's CSPRNG. Since scalar multiplication
//! commutes, `k_a·(k_b·H(v)) = k_b·(k_a·H(v))`, so the parties can compute the *joint value*
//!
//! ```text
//! J(v) = k_a·k_b·H(v)
//! ```
//!
//! of an item only together, and its *tag*
//!
//! ```text
//! T(v) = SHA-256(TAG_DOMAIN || enc(J(v)))[..16]
//! ```
//!
//! (`enc` is the canonical 32-byte ristretto255 encoding), which is equal for equal items and
//! unrelated otherwise.
//!
//! Both parties run the same code (parameterized by [`Role`] and [`Reveal`]):
//!
//! 1. **Hello.** Each party sends the protocol id and version, its role, the reveal mode, its own
//!    set size, whether proofs are on, and (with proofs) its *key commitment* `B = k·G` (`G` the
//!    ristretto255 base point). A party aborts with [`EcdhPsiError::Protocol`] if the peer speaks
//!    another protocol or version, claims the same role, expects another reveal mode or proofs
//!    setting, or commits to an invalid point or the identity.
//! 2. **Phase 1.** Each party streams `enc(k·H(v))` for its *own* items, in a secret random
//!    order (so positions in the stream say nothing about positions in its dataset).
//!    Concurrently it decodes the peer's points `Q_j` as they arrive, multiplies each by its own
//!    `k` and keeps the 16-byte tags `T(w)` of the peer's items, in the order received. If the
//!    peer learns and proofs are on, it also keeps the pairs `(Q_j, k·Q_j)`. If it learns and
//!    proofs are on, it has drawn a secret challenge seed `σ` before this phase and accumulates
//!    `M = Σ r_i·C_i` over its own points `C_i` as it computes them (`r_i` derived from `σ`,
//!    [`crate::dleq`]).
//! 3. **Phase 2.** If the peer learns the intersection, a party sends the peer's joint values back
//!    in the order received: with proofs, the 32-byte joint points `D_j = k·Q_j`; without proofs,
//!    their 16-byte tags. A party that learns receives the joint values of its own items; with
//!    proofs it decodes them as they arrive into `Z = Σ r_i·D_i`, then reveals its challenge
//!    `(σ, M, Z)`. The returning party checks `Z = k·M` (one scalar multiplication; it refuses and
//!    aborts otherwise) and answers with a proof frame: a Chaum–Pedersen proof that `Z = k·M` for
//!    the committed `k`, and one over a sample of 256 pairs drawn from `σ` for auditors. The
//!    learning party *verifies both proofs before using the points* (aborting with "the peer's
//!    DLEQ proof ... does not verify"), hashes the points to tags, maps each stream position back
//!    through its secret order, and keeps its items whose tag is among the tags it computed for
//!    the peer's set.
//!
//! The result ([`PsiOutput::intersection`]) lists the learning party's own indices sorted by tag
//! (ties, i.e. duplicate copies of an item, by index). Both parties sort by the same tags, so when
//! both learn, row `i` on both sides is the same entity: this is the *joint order*.
//!
//! # What each party learns
//!
//! Under the decisional Diffie–Hellman assumption in ristretto255, with H modeled as a random
//! oracle, a semi-honest party learns:
//!
//! - the size of both sets (the hello carries them; duplicates count);
//! - if it learns ([`Reveal::learns`]): which of its own items are in the intersection, and the
//!   joint order of the intersection, which is a pseudorandom order determined by the items;
//! - nothing else. For items outside the intersection, the points and tags it sees are
//!   indistinguishable from random. A party that does not learn the intersection learns only the
//!   peer's set size. The key commitment `B = k·G` and the DLEQ proofs are zero-knowledge about
//!   `k` (honest-verifier ZK, Fiat–Shamir in the random-oracle model).
//!
//! With proofs, a learning party receives the joint *points* `k_peer·k·H(x)` of its own items, not
//! only their tags, so it can compute `k_peer·H(x)` for its own items. For intersecting items that
//! equals one of the peer's phase-1 points (at a position of the peer's secret random order), which
//! is the intersection it learns anyway; for the others it is a fresh pseudorandom point. So the
//! leakage is the same as with tags.
//!
//! Duplicates are visible: equal items of the peer give equal points, so each party learns the
//! multiplicity pattern of the peer's input (how many items occur twice, ...). The engine removes
//! or rejects duplicates before running the protocol.
//!
//! # Security model and what the proofs prove
//!
//! Privacy holds against a semi-honest peer. With proofs, each party additionally *proves* one
//! thing a malicious party could otherwise get away with: **every joint point it returns to the
//! peer is the peer's point multiplied by the key `k` it committed to in its hello** (batched
//! Chaum–Pedersen over a composite with coefficients from the verifier's challenge, which it
//! reveals only after all returned points arrived: soundness error 2⁻⁶⁴ per run, nothing to grind
//! offline). So a party cannot return points made with a second key, garbage, or points of its
//! choosing for some items (which would silently drop items from, or inject tags into, the peer's
//! result): the peer checks the proof during the run and aborts.
//!
//! The challenge reveals `M` (a combination of the learner's own points, which the returner holds
//! anyway) and `Z`; the returner answers with a proof only if `Z = k·M`. A *malicious* learner
//! could send another `(M, Z)` and so learns one bit: whether `Z = k·M` for a pair of its choice
//! (for instance whether a guessed item is the responder's `j`-th streamed item, a `1/n` chance of
//! a membership test); the returner then aborts. An honest learner learns nothing new.
//! The points, proofs and a Merkle root over the proved pairs go into the audit evidence
//! ([`EcdhEvidence`]), so an auditor can re-check them offline ([`verify_record`]).
//!
//! What the proofs do **not** prove, and why:
//!
//! - That a party's *own* phase-1 points are `k·H(x)` for its items with the committed `k`: the
//!   peer does not know `H(x)` (revealing it would let the peer test guesses of low-entropy ids),
//!   so no DLEQ over them can be checked. A party that multiplies its own points by a different
//!   key `k'` (or sends random points) is indistinguishable from a party whose input is a set of
//!   random points — input substitution, which no PSI prevents. Combined with using `k'` locally,
//!   this lets it learn the intersection while the peer's result comes out empty: with
//!   [`Reveal::Both`], the peer's output is only as good as the cheater's own-set points.
//! - Which input a party uses (inherent to PSI), and fairness: a party may abort after announcing
//!   its size or, with [`Reveal::Both`], withhold its phase-2 points after receiving its own, so
//!   that it learns the intersection and the peer does not.
//!
//! Malformed messages (invalid points, the identity, wrong counts, unknown frames, invalid proofs)
//! are rejected with [`EcdhPsiError::Protocol`].
//!
//! Secret-dependent work is constant-time: the scalar multiplication is constant-time in the
//! scalar, point decoding is constant-time, `B = k·G` uses the constant-time base-point table;
//! only public data (tags, counts, the public points of the proofs) drives branches, sorting and
//! the variable-time multiscalar multiplications. The secret scalar is zeroized when the run ends
//! (after the proofs over the returned points are made).
//!
//! # Wire format
//!
//! Every frame starts with a one-byte kind. Integers are big-endian.
//!
//! | frame  | kind   | body                                                                  |
//! |--------|--------|-----------------------------------------------------------------------|
//! | hello  | `0x01` | `"consort/ecdh-psi"` (16 bytes), version `u16` (= 2), role `u8` (0 requester, 1 responder), reveal `u8` (0 both, 1 requester only), set size `u64`, proofs `u8` (0/1), commitment `B` (32 bytes; zero without proofs) |
//! | points | `0x02` | `m` ≥ 1 ristretto255 encodings of 32 bytes each (≈ 1 MiB frames of 32 768 points) |
//! | tags   | `0x03` | (without proofs) `m` ≥ 1 tags of 16 bytes each (≈ 1 MiB frames of 65 536 tags) |
//! | joint  | `0x04` | (with proofs) `m` ≥ 1 joint points of 32 bytes each, in the order the peer's points arrived |
//! | proof  | `0x05` | (with proofs, returner) proof that `Z = k·M` (`c ‖ s`, 64 bytes), then the proof over the sample (64 bytes) |
//! | challenge | `0x06` | (with proofs, learner) `σ` (32 bytes) ‖ `enc(M)` ‖ `enc(Z)` |
//!
//! A party sends one hello, then exactly as many points as it announced, then (if the peer learns)
//! exactly as many joint points (or tags) as the peer announced; with proofs a learner sends one
//! challenge frame once it has all its joint points, and a returner one proof frame once it has
//! the peer's challenge (with [`Reveal::Both`] these two may come in either order).
//! Frame sizes are not part of the protocol; the receiver accepts any non-empty frame that does not
//! overshoot the announced count.
//!
//! **Bytes per item.** With proofs, each party sends 32 bytes per own item, plus 32 per peer item
//! if the peer learns: with [`Reveal::Both`], 64 bytes per item of either set in total. Without
//! proofs the second part is a 16-byte tag (48 in total). Framing adds 1 byte per frame, the hello
//! 62 bytes, the challenge frame 97 and the proof frame 129.
//!
//! # Performance
//!
//! Per item, each party hashes to the curve once, multiplies twice (own point, then the peer's)
//! and decodes once; encodings use [`RistrettoPoint::double_and_compress_batch`] on a point
//! multiplied by `k/2`, so one field inversion is shared by a batch. The curve work runs on
//! rayon in batches ([`crate::cpu`]), pipelined with the channel: while one frame is computed the
//! previous one is sent, and the peer's frames are processed as they arrive.
//!
//! Proofs add, per returned item: for the learner, one point of a 64-bit variable-time multiscalar
//! multiplication over its own points (on the `(k/2)·H(x)` phase 1 has at hand), the decoding of
//! the returned point and one point of a second multiscalar multiplication; for the returner,
//! nothing but keeping the pairs (one scalar multiplication per proof). Both build the Merkle tree
//! over the pairs for the evidence. Memory: the proved pairs are kept (64 bytes per pair and
//! direction) for the evidence.
//!
//! # References
//!
//! - C. Meadows, "A More Efficient Cryptographic Matchmaking Protocol for Use in the Absence of a
//!   Continuously Available Third Party", IEEE S&P 1986.
//! - B. A. Huberman, M. Franklin, T. Hogg, "Enhancing Privacy and Trust in Electronic
//!   Communities", ACM EC 1999.
//! - RFC 9496, "The ristretto255 and decaf448 Groups".

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use futures::StreamExt;
use rand::rngs::{StdRng, SysRng};
use rand::seq::SliceRandom;
use rand::{SeedableRng, TryRng};
use rayon::prelude::*;
use zeroize::{Zeroize, Zeroizing};

use crate::channel::{Channel, ChannelError};
use crate::items::Items;
use crate::psi::{Progress, ProgressFn, PsiOutput, Reveal, Role};
use crate::{cpu, dleq, merkle};

/// Protocol id carried in the hello.
pub const PROTOCOL_ID: &[u8; 16] = b"consort/ecdh-psi";
/// Wire format version carried in the hello (3: key commitments, joint points, the verifier's
/// challenge and DLEQ proofs).
pub const VERSION: u16 = 3;
/// Points per frame in phase 1 (32 bytes each: 1 MiB frames).
pub const POINTS_PER_FRAME: usize = 32 * 1024;
/// Tags per frame in phase 2 (16 bytes each: 1 MiB frames).
pub const TAGS_PER_FRAME: usize = 64 * 1024;

const HELLO: u8 = 0x01;
const POINTS: u8 = 0x02;
const TAGS: u8 = 0x03;
const JOINT: u8 = 0x04;
const PROOF: u8 = 0x05;
const CHALLENGE: u8 = 0x06;
const HELLO_LEN: usize = 1 + 16 + 2 + 1 + 1 + 8 + 1 + 32;

/// Domain of the batched DLEQ proof over all returned points.
pub const DLEQ_CONTEXT: &[u8] = b"consort/ecdh-psi/v3/dleq";
/// Domain of the DLEQ proof over the sample of returned points (sampled audits).
pub const DLEQ_SAMPLE_CONTEXT: &[u8] = b"consort/ecdh-psi/v3/dleq-sample";
/// Pairs in the sampled proof (all pairs if there are fewer).
pub const SAMPLE_SIZE: usize = 256;

/// Peer frames being processed on rayon at once (bounds memory, keeps the cores fed).
const PEER_FRAMES_IN_FLIGHT: usize = 2;
/// Parameters both parties must agree on (checked in the protocol's hello).
#[derive(Clone)]
pub struct EcdhPsiConfig {
    pub role: Role,
    pub reveal: Reveal,
    /// Called as stages advance; `None` for no progress reports.
    pub progress: Option<ProgressFn>,
    /// Commit to the job key and prove with DLEQ proofs that it was used on every returned point
    /// (both parties must agree). Off: phase 2 sends 16-byte tags and nothing is proved.
    pub proofs: bool,
}

/// Why an ECDH-PSI run failed.
#[derive(Debug, thiserror::Error)]
pub enum EcdhPsiError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer sent something that does not follow the protocol (bad frame, invalid point,
    /// wrong count, mismatched parameters).
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// This party's own input cannot be used (e.g. more than `u32::MAX` items).
    #[error("invalid ECDH-PSI input: {0}")]
    Input(String),
}

fn violation(message: impl Into<String>) -> EcdhPsiError {
    EcdhPsiError::Protocol(message.into())
}

/// Runs ECDH-PSI with the peer on `channel` over `items`.
///
/// Both parties call this with opposite roles and the same reveal mode. Indices in the result
/// are `u32`, so a set may hold at most `u32::MAX` items. On error the caller should close the
/// channel so that the peer's run ends too.
///
/// # Panics
///
/// If the operating system's random number generator fails (as `rand::rng()` does).
pub async fn run<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    config: &EcdhPsiConfig,
) -> Result<PsiOutput, EcdhPsiError> {
    Ok(run_framed(channel, items, config, Framing::DEFAULT, Behaviour::Honest).await?.0)
}

/// [`run`], also returning the key commitments and the DLEQ proofs of the run (for the audit
/// evidence). The evidence is `None` if the run was without proofs.
pub async fn run_with_evidence<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    config: &EcdhPsiConfig,
) -> Result<(PsiOutput, Option<EcdhEvidence>), EcdhPsiError> {
    run_framed(channel, items, config, Framing::DEFAULT, Behaviour::Honest).await
}

/// A dishonest party, for tests of the proofs (feature `test-cheats`; never in a real node).
#[cfg(feature = "test-cheats")]
#[derive(Debug, Clone, Copy)]
pub enum Cheat {
    /// Multiply the peer's points from this index on by a second key (the committed key's proof
    /// is still sent).
    SecondKeyFrom(usize),
    /// Send random scalars as the DLEQ proof.
    ForgedProof,
}

/// [`run_with_evidence`] for a cheating party (feature `test-cheats`).
#[cfg(feature = "test-cheats")]
pub async fn run_cheating<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    config: &EcdhPsiConfig,
    cheat: Cheat,
) -> Result<(PsiOutput, Option<EcdhEvidence>), EcdhPsiError> {
    let behaviour = match cheat {
        Cheat::SecondKeyFrom(index) => Behaviour::SecondKeyFrom(index),
        Cheat::ForgedProof => Behaviour::ForgedProof,
    };
    run_framed(channel, items, config, Framing::DEFAULT, behaviour).await
}

/// How this party behaves: honestly, or (tests only) cheating in a way the proofs must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    #[cfg_attr(not(any(test, feature = "test-cheats")), allow(dead_code))]
    SecondKeyFrom(usize),
    #[cfg_attr(not(any(test, feature = "test-cheats")), allow(dead_code))]
    ForgedProof,
}

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

/// Frame sizes: not part of the protocol (the receiver accepts any); tests use small frames to
/// exercise the multi-frame paths.
#[derive(Debug, Clone, Copy)]
struct Framing {
    points_per_frame: usize,
    tags_per_frame: usize,
}

impl Framing {
    const DEFAULT: Framing = Framing { points_per_frame: POINTS_PER_FRAME, tags_per_frame: TAGS_PER_FRAME };
}

async fn run_framed<C: Channel, I: Items + ?Sized>(
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
    Ok((PsiOutput { peer_size: peer.size, intersection, timings: Vec::new() }, evidence))
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

/// What a party that returns joint points (and proves) brings to phase 2.
struct Proving {
    key: Arc<HalfKey>,
    commitment: [u8; 32],
    /// The peer's phase-1 points `C_j`, as received.
    peer_points: Bytes,
    /// This party's multiples `D_j = k·C_j`, in the same order.
    joint: Bytes,
    behaviour: Behaviour,
}

/// What a party that learns (and checks the peer's proof) brings to phase 2.
struct Verifying {
    /// `σ`, drawn before phase 1 and revealed only after all returned points arrived.
    challenge: [u8; dleq::CHALLENGE_LEN],
    coefficients: Arc<dleq::Coefficients>,
    /// This party's phase-1 points as sent (`C_i`, 32 bytes each, in stream order).
    own: Vec<u8>,
    /// `Σ r_i·(k/2)·H(x_i) = M/2`, accumulated in phase 1.
    m_half: RistrettoPoint,
    peer_commitment: [u8; 32],
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
async fn phase2_with_proofs<C: Channel>(
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
fn prove_returned(p: Proving, body: &[u8]) -> Result<(ProofRecord, Bytes), String> {
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

/// The RFC 6962 root over the pairs (see [`PAIRS_PER_LEAF`]), as in [`ProofRecord::pairs_root`].
pub fn pairs_root(c: &[u8], d: &[u8]) -> merkle::Hash {
    merkle::root(&pair_leaves(c, d))
}

/// The bytes of leaf `leaf`: `C_j || D_j` for its pairs.
fn leaf_bytes(c: &[u8], d: &[u8], leaf: usize) -> Vec<u8> {
    let per = 32 * PAIRS_PER_LEAF;
    let (c, d) = (&c[leaf * per..(leaf * per + per).min(c.len())], &d[leaf * per..(leaf * per + per).min(d.len())]);
    let mut bytes = Vec::with_capacity(2 * c.len());
    for (ci, di) in c.chunks_exact(32).zip(d.chunks_exact(32)) {
        bytes.extend_from_slice(ci);
        bytes.extend_from_slice(di);
    }
    bytes
}

/// Leaves of the tree over the pairs.
fn pair_leaves(c: &[u8], d: &[u8]) -> Vec<merkle::Hash> {
    let leaves = (c.len() / 32).div_ceil(PAIRS_PER_LEAF);
    (0..leaves).into_par_iter().map(|leaf| merkle::leaf_hash(&leaf_bytes(c, d, leaf))).collect()
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

/// Checks a proof record against the prover's key commitment `B`, as an auditor would: the
/// sample (indices drawn from the challenge and the root, audit paths, proof over the sample), the
/// proof over the recorded composite `(M, Z)`, and, if `full` and the record holds all pairs, that
/// the pairs hash to the root and that `(M, Z)` is their combination under the recorded challenge.
///
/// Without `full` the composite is taken from the record: both nodes record it (the verifier
/// computed it from the pairs, the prover checked `Z = k·M` before proving), so two bundles that
/// agree on it (see the engine's cross-checks) need no recomputation unless they are disputed.
pub fn verify_record(commitment: &[u8; 32], record: &ProofRecord, full: bool) -> Result<(), String> {
    verify_sample(commitment, record)?;
    let b = CompressedRistretto(*commitment);
    let m = CompressedRistretto(record.m).decompress().ok_or("the recorded composite M is not a valid point")?;
    let z = CompressedRistretto(record.z).decompress().ok_or("the recorded composite Z is not a valid point")?;
    let proof = dleq::Proof::from_bytes(&record.proof).ok_or("the DLEQ proof is not two canonical scalars")?;
    dleq::verify(DLEQ_CONTEXT, &b, &m, &z, &proof)
        .map_err(|e| format!("the DLEQ proof over the composite of all {} pairs: {e}", record.pairs))?;
    if full {
        let n = record.pairs as usize;
        if record.c.len() != 32 * n || record.d.len() != 32 * n {
            return Err(format!(
                "the record holds {} and {} bytes of points, not 32 × {n}",
                record.c.len(),
                record.d.len()
            ));
        }
        let coefficients = dleq::Coefficients::new(DLEQ_CONTEXT, &record.challenge);
        let (root, composite) = rayon::join(
            || pairs_root(&record.c, &record.d),
            || dleq::composite_pairs(&coefficients, &record.c, &record.d),
        );
        if root != record.pairs_root {
            return Err("the points do not hash to the recorded Merkle root of the pairs".into());
        }
        let (m_all, z_all) = composite.map_err(|e| format!("the pairs: {e}"))?;
        if m_all != m || z_all != z {
            return Err(format!(
                "the recorded composite is not the combination of the {n} pairs under the recorded challenge"
            ));
        }
    }
    Ok(())
}

/// The sampled part of [`verify_record`].
pub fn verify_sample(commitment: &[u8; 32], record: &ProofRecord) -> Result<(), String> {
    let b = CompressedRistretto(*commitment);
    let expected = dleq::sample_indices(&record.challenge, &record.pairs_root, &b, record.pairs, SAMPLE_SIZE);
    let indices: Vec<u64> = record.sample.iter().map(|p| p.index).collect();
    if indices != expected {
        return Err(
            "the sampled indices are not the ones drawn from the challenge and the Merkle root of the pairs".into()
        );
    }
    let leaves = record.pairs.div_ceil(PAIRS_PER_LEAF as u64);
    for pair in &record.sample {
        let (leaf, slot) = (pair.index / PAIRS_PER_LEAF as u64, (pair.index % PAIRS_PER_LEAF as u64) as usize);
        let in_leaf = (record.pairs - leaf * PAIRS_PER_LEAF as u64).min(PAIRS_PER_LEAF as u64) as usize;
        if pair.leaf.len() != 64 * in_leaf
            || pair.leaf[64 * slot..64 * slot + 32] != pair.c
            || pair.leaf[64 * slot + 32..64 * slot + 64] != pair.d
        {
            return Err(format!("sampled pair {}: audit path: its leaf does not hold the pair", pair.index));
        }
        merkle::verify_inclusion(&merkle::leaf_hash(&pair.leaf), leaf, leaves, &pair.path, &record.pairs_root)
            .map_err(|e| format!("sampled pair {}: audit path: {e}", pair.index))?;
    }
    let coefficients = dleq::Coefficients::new(DLEQ_SAMPLE_CONTEXT, &record.challenge);
    let triples: Vec<_> = record.sample.iter().map(|p| (p.index, p.c, p.d)).collect();
    let (m, z) = dleq::composite_indexed(&coefficients, &triples).map_err(|e| format!("sampled pairs: {e}"))?;
    let proof = dleq::Proof::from_bytes(&record.sample_proof).ok_or("the sample proof is not two canonical scalars")?;
    dleq::verify(DLEQ_SAMPLE_CONTEXT, &b, &m, &z, &proof)
        .map_err(|e| format!("the DLEQ proof over the {} sampled pairs: {e}", record.sample.len()))
}

/// The hello both parties send first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hello {
    role: Role,
    reveal: Reveal,
    size: u64,
    proofs: bool,
    /// `B = k·G` (all zero without proofs).
    commitment: [u8; 32],
}

impl Hello {
    fn encode(&self) -> Bytes {
        let mut frame = Vec::with_capacity(HELLO_LEN);
        frame.push(HELLO);
        frame.extend_from_slice(PROTOCOL_ID);
        frame.extend_from_slice(&VERSION.to_be_bytes());
        frame.push(self.role.wire());
        frame.push(self.reveal.wire());
        frame.extend_from_slice(&self.size.to_be_bytes());
        frame.push(u8::from(self.proofs));
        frame.extend_from_slice(&self.commitment);
        Bytes::from(frame)
    }

    fn decode(frame: &[u8]) -> Result<Hello, EcdhPsiError> {
        if frame.len() < 19 || frame[0] != HELLO || &frame[1..17] != PROTOCOL_ID {
            return Err(violation("the peer's first message is not an ECDH-PSI hello"));
        }
        let version = u16::from_be_bytes([frame[17], frame[18]]);
        if version != VERSION {
            return Err(violation(format!(
                "the peer speaks ECDH-PSI version {version}, this party speaks version {VERSION}"
            )));
        }
        if frame.len() != HELLO_LEN {
            return Err(violation(format!("the peer's hello has {} bytes, expected {HELLO_LEN}", frame.len())));
        }
        let role = Role::from_wire(frame[19])
            .ok_or_else(|| violation(format!("the peer's hello has unknown role {}", frame[19])))?;
        let reveal = Reveal::from_wire(frame[20])
            .ok_or_else(|| violation(format!("the peer's hello has unknown reveal mode {}", frame[20])))?;
        let size = u64::from_be_bytes(frame[21..29].try_into().expect("8 bytes"));
        if size > u64::from(u32::MAX) {
            return Err(violation(format!(
                "the peer announced {size} items; ECDH-PSI supports at most {} per party",
                u32::MAX
            )));
        }
        let proofs = match frame[29] {
            0 => false,
            1 => true,
            other => return Err(violation(format!("the peer's hello has unknown proofs flag {other}"))),
        };
        let commitment: [u8; 32] = frame[30..62].try_into().expect("32 bytes");
        if proofs && dleq::decode_commitment(&commitment).is_err() {
            return Err(violation("the peer's key commitment is not a valid non-identity ristretto255 point"));
        }
        Ok(Hello { role, reveal, size, proofs, commitment })
    }

    fn check_compatible(&self, peer: &Hello) -> Result<(), EcdhPsiError> {
        if peer.role == self.role {
            return Err(violation(format!(
                "both parties claim the {} role",
                match self.role {
                    Role::Requester => "requester",
                    Role::Responder => "responder",
                }
            )));
        }
        if peer.reveal != self.reveal {
            let name = |reveal| match reveal {
                Reveal::Both => "both",
                Reveal::RequesterOnly => "requester-only",
            };
            return Err(violation(format!(
                "reveal mode mismatch: this party runs with reveal={}, the peer with reveal={}",
                name(self.reveal),
                name(peer.reveal)
            )));
        }
        if peer.proofs != self.proofs {
            let name = |on| if on { "on" } else { "off" };
            return Err(violation(format!(
                "proofs mismatch: this party runs with proofs {}, the peer with proofs {}",
                name(self.proofs),
                name(peer.proofs)
            )));
        }
        Ok(())
    }
}

/// The per-job secret `k`, stored as `k/2` (the encoding doubles). Sampling `k/2` uniformly is
/// sampling `k` uniformly, since 2 is invertible mod ℓ. Zeroized on drop.
struct HalfKey(Scalar);

impl HalfKey {
    fn random() -> HalfKey {
        let mut wide = Zeroizing::new([0u8; 64]);
        loop {
            SysRng.try_fill_bytes(&mut wide[..]).expect("the operating system's random number generator failed");
            let half = Scalar::from_bytes_mod_order_wide(&wide);
            if half != Scalar::ZERO {
                return HalfKey(half);
            }
        }
    }

    /// The encoding of `B = k·G`, `k = 2·(k/2)`.
    fn commitment(&self) -> [u8; 32] {
        let k = Zeroizing::new(self.0 + self.0);
        dleq::commit(&k).to_bytes()
    }
}

impl Drop for HalfKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A uniformly random order of `0..n` (Fisher–Yates with a ChaCha generator seeded from the OS),
/// in which this party streams its own items.
fn secret_order(n: usize) -> Zeroizing<Vec<u32>> {
    let mut order: Zeroizing<Vec<u32>> = Zeroizing::new((0..n as u32).collect());
    let mut rng = StdRng::try_from_rng(&mut SysRng).expect("the operating system's random number generator failed");
    order.shuffle(&mut rng);
    order
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

/// Phase 1, reader: decodes the peer's points as they arrive and keeps the tags
/// `T(y) = F(k·(k_peer·H(y)))`, in the order received; when `proving` also the pairs.
async fn encrypt_peer_points<C: Channel>(
    channel: &C,
    peer_size: usize,
    keys: FrameKeys<'_>,
    proving: bool,
    progress: &Progress<'_>,
) -> Result<PeerPass, EcdhPsiError> {
    let mut pass = PeerPass {
        tags: Vec::with_capacity(peer_size.min(1 << 20)),
        peer_points: Vec::with_capacity(if proving { 32 * peer_size } else { 0 }),
        joint: Vec::with_capacity(if proving { 32 * peer_size } else { 0 }),
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
struct FrameOut {
    tags: Vec<u128>,
    /// `enc(k·Q_j)` of the frame's points.
    joint: Vec<u8>,
}

/// Multiplies one frame of peer points by the key: their joint encodings and tags. Fails with the
/// index (in the frame) of an invalid point.
fn encrypt_peer(points: &[u8], half_key: &Scalar) -> Result<FrameOut, usize> {
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
fn frame_body(frame: Bytes, kind: u8, size: usize) -> Result<Bytes, EcdhPsiError> {
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

/// The curve kernels of the protocol, public for benchmarks and [`measure_curve_costs`].
///
/// Single-threaded and allocation-free per item; the protocol runs them on rayon over batches of
/// [`BATCH`](kernels::BATCH) items.
pub mod kernels {
    use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
    use curve25519_dalek::scalar::Scalar;
    use sha2::{Digest, Sha256, Sha512};

    /// Domain separation of [`hash_to_point`] (prefixed to the item in the SHA-512 input).
    pub const HASH_TO_POINT_DOMAIN: &[u8] = b"consort/ecdh-psi/v1/hash-to-point";
    /// Domain separation of [`tag`] (prefixed to the joint point's encoding in the SHA-256 input).
    pub const TAG_DOMAIN: &[u8] = b"consort/ecdh-psi/v1/tag";
    /// Points per [`multiply_encode`] call in the protocol: one field inversion is shared by the
    /// batch, and a batch is a reasonable unit of rayon work (a few milliseconds).
    pub const BATCH: usize = 256;

    /// `H(x)`: SHA-512 over `HASH_TO_POINT_DOMAIN || item`, mapped to ristretto255 by
    /// applying Elligator twice and adding (RFC 9496 §4.3.4). The domain tag has a fixed length,
    /// so the encoding of the hash input is injective.
    pub fn hash_to_point(item: &[u8]) -> RistrettoPoint {
        RistrettoPoint::from_hash(Sha512::new().chain_update(HASH_TO_POINT_DOMAIN).chain_update(item))
    }

    /// Writes `enc(2·h·P_i)` for each point `P_i` into consecutive 32-byte slots of `out`, where
    /// `h = half_key` (so with `h = k/2` this is `enc(k·P_i)`). Overwrites `points` with `h·P_i`.
    ///
    /// Constant-time in `half_key`. Uses [`RistrettoPoint::double_and_compress_batch`], which
    /// shares one inversion over the batch.
    ///
    /// # Panics
    ///
    /// If `out.len() != 32 * points.len()`.
    pub fn multiply_encode(points: &mut [RistrettoPoint], half_key: &Scalar, out: &mut [u8]) {
        assert_eq!(out.len(), 32 * points.len(), "one 32-byte slot per point");
        for point in points.iter_mut() {
            *point *= half_key;
        }
        let encoded = RistrettoPoint::double_and_compress_batch(points.iter());
        for (slot, encoding) in out.chunks_exact_mut(32).zip(&encoded) {
            slot.copy_from_slice(encoding.as_bytes());
        }
    }

    /// Decodes a point received from the peer: `None` unless `encoding` is the canonical
    /// 32-byte encoding of a ristretto255 point other than the identity (an honest peer's
    /// `k·H(x)` is never the identity).
    pub fn decode(encoding: &[u8]) -> Option<RistrettoPoint> {
        let bytes: [u8; 32] = encoding.try_into().ok()?;
        if bytes == [0; 32] {
            return None;
        }
        CompressedRistretto(bytes).decompress()
    }

    /// The tag `T = SHA-256(TAG_DOMAIN || enc(J))[..16]` of a joint point's encoding, as a
    /// big-endian `u128` (so integer order is the byte order of the tag on the wire).
    pub fn tag(joint_encoding: &[u8]) -> u128 {
        let digest = Sha256::new().chain_update(TAG_DOMAIN).chain_update(joint_encoding).finalize();
        u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"))
    }
}

/// Per-item costs of the curve operations on this machine, single-threaded, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct CurveCosts {
    /// Hash one item to a ristretto255 point.
    pub hash_to_point_ns: f64,
    /// Multiply one point by the secret scalar and encode it (batched double-and-compress).
    pub multiply_encode_ns: f64,
    /// Decode (decompress) one point received from the peer.
    pub decode_ns: f64,
}

impl CurveCosts {
    /// Curve work per item, per party: hash + 2 × multiply/encode + decode.
    pub fn per_item_ns(&self) -> f64 {
        self.hash_to_point_ns + 2.0 * self.multiply_encode_ns + self.decode_ns
    }
}

/// Measures [`CurveCosts`] over `samples` items (16-byte keys) with the same kernels and batch
/// size the protocol uses, on the calling thread.
pub fn measure_curve_costs(samples: usize) -> CurveCosts {
    let samples = samples.max(1);
    let key = HalfKey::random();
    let items: Vec<[u8; 16]> = (0..samples as u128).map(u128::to_le_bytes).collect();

    let clock = Instant::now();
    let mut points: Vec<RistrettoPoint> = items.iter().map(|item| kernels::hash_to_point(item)).collect();
    let hash = clock.elapsed();

    let mut encoded = vec![0u8; 32 * samples];
    let clock = Instant::now();
    for (batch, out) in points.chunks_mut(kernels::BATCH).zip(encoded.chunks_mut(32 * kernels::BATCH)) {
        kernels::multiply_encode(batch, &key.0, out);
    }
    let multiply = clock.elapsed();

    let clock = Instant::now();
    for encoding in encoded.chunks_exact(32) {
        std::hint::black_box(kernels::decode(std::hint::black_box(encoding)));
    }
    let decode = clock.elapsed();

    let per_item = |d: std::time::Duration| d.as_nanos() as f64 / samples as f64;
    CurveCosts { hash_to_point_ns: per_item(hash), multiply_encode_ns: per_item(multiply), decode_ns: per_item(decode) }
}

#[cfg(test)]
mod tests;
