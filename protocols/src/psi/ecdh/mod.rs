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
//!
//! # Code map
//!
//! One file per step: `hello` (step 1), `flow` (the run, phase 1, and phase 2 without proofs),
//! `proofs` (phase 2 with proofs: the challenge, the DLEQ proofs, [`ProofRecord`]), `verify` (the
//! offline checks of a record, which the engine's audit uses), `key` (the job's secrets),
//! [`kernels`] (the curve work, [`measure_curve_costs`]) and, with the `test-cheats` feature,
//! `cheats` (dishonest parties for the tests of the proofs).

#[cfg(feature = "test-cheats")]
mod cheats;
mod flow;
mod hello;
pub mod kernels;
mod key;
mod proofs;
mod verify;

#[cfg(feature = "test-cheats")]
pub use cheats::{Cheat, run_cheating};
pub use kernels::{CurveCosts, measure_curve_costs};
pub use proofs::{EcdhEvidence, PAIRS_PER_LEAF, ProofRecord, SampledPair};
pub use verify::{pairs_root, verify_record, verify_sample};

use crate::channel::{Channel, ChannelError};
use crate::items::Items;
use crate::psi::{ProgressFn, PsiOutput, Reveal, Role};
use flow::run_framed;

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
    /// Most items the peer may announce (its hello is refused above this, before any buffer is
    /// sized): the job's agreed peer set size, or [`u64::MAX`] for only the protocol's own bound.
    pub max_peer_items: u64,
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

/// How this party behaves: honestly, or (tests only) cheating in a way the proofs must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    #[cfg_attr(not(any(test, feature = "test-cheats")), allow(dead_code))]
    SecondKeyFrom(usize),
    #[cfg_attr(not(any(test, feature = "test-cheats")), allow(dead_code))]
    ForgedProof,
}

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

#[cfg(test)]
mod tests;
