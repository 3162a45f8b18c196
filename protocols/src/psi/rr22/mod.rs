//! RR22 PSI: private set intersection from silent VOLE and an OKVS, fast enough for 10^8 items
//! per party on two cores.
//!
//! Raghuraman and Rindal, "Blazing Fast PSI from Improved OKVS and Subfield VOLE" (CCS 2022), the
//! semi-honest protocol ("fast" variant), with the RB-OKVS of [`crate::okvs`] and the silent VOLE
//! of [`crate::vole`]; items are split into hash buckets that run one after another, so memory
//! per bucket is fixed and a larger job only means more buckets.
//!
//! # What it computes
//!
//! The **requester** is the OPRF receiver R (it learns the intersection), the **responder** the
//! OPRF sender S. Both map each item to a 128-bit digest d = SHA-256(salt ‖ item)[..16], with a
//! salt both contribute to, and put it in bucket ⌊d_hi·B / 2^64⌋ (d_hi = the digest's high 64
//! bits) of B = ⌈max(n_R, n_S) / bucket_size⌉ buckets. Per bucket, with m = OKVS cells for the
//! bucket's R items:
//!
//! 1. **VOLE** ([`crate::vole`]): S gets Δ (one per job) and B ∈ F^m, R gets A, C ∈ F^m with
//!    C = B + A·Δ, F = GF(2^128).
//! 2. **OKVS.** R encodes P with Decode(P, d) = v(d) for its digests, v(d) = π(d) ⊕ d (π fixed-key
//!    AES), and sends A + P.
//! 3. **OPRF.** S sets K = B + (A + P)·Δ = C + P·Δ and, for its digests x, computes
//!    F(x) = H_x(Decode(K, x) + Δ·v(x)); R computes F(y) = H_y(Decode(C, y)) for its own, which
//!    is the same value exactly when y ∈ S's set (then Decode(P, y) = v(y)). H_x is the TCCR
//!    hash tweaked by the digest, F truncated to ℓ = 40 + ⌈log2(B·cap_R·cap_S)⌉ bits.
//! 4. **Match.** S sends its F values in a secret random order; R keeps its items whose value
//!    appears.
//!
//! These are the steps of the paper's semi-honest protocol Π_psi (Fig. 4) in another order: our
//! step 1 is its step 2, our step 2 its steps 1 and 3 (R's side), our step 3 its steps 3 (S's
//! side) and 4, our step 4 its steps 4 and 5. `receiver` and `sender` cite them where they run.
//!
//! The result lists R's indices by bucket, then by F within a bucket (the *joint order*: bucket
//! and F are pseudorandom functions of the item that both can evaluate on the intersection). With [`Reveal::Both`] R then sends, in that
//! order, the positions in S's stream that matched; S maps them back through its secret order, so
//! row i is the same entity on both sides. With [`Reveal::RequesterOnly`] nothing goes back.
//! Duplicates: every copy of an intersecting item is listed, copies adjacent (as in
//! [`crate::psi::ecdh`]); the engine removes or rejects duplicates first anyway.
//!
//! # What each party learns
//!
//! Semi-honest security (Raghuraman–Rindal, Theorem 4 of the paper, with our VOLE and OKVS): with
//! VOLE outputs pseudorandom (dual LPN, see [`crate::vole`]) and H modeled as a random oracle,
//!
//! - R learns n_S, and which of its items are in the intersection (and S's matched stream
//!   positions, which are uniformly random positions). S's other values are pseudorandom to R:
//!   for x outside R's set, Decode(K, x) + Δ·v(x) = Decode(C, x) + Δ·(v(x) + Decode(P, x)) with
//!   v(x) + Decode(P, x) ≠ 0 except with probability 2^−128, masked by the secret Δ.
//! - S learns n_R (announced), nothing from A + P (A is a one-time pad from the VOLE), and with
//!   [`Reveal::Both`] the intersection (which of its items) and its joint order.
//! - **Bucket sizes are hidden**: with B > 1 both sides pad every bucket to the public capacity
//!   `cap(n, B)` (a Bernstein bound with overflow probability below 2^−40 per job) with random
//!   dummies, so the per-bucket counts, which would otherwise leak a little about the sets, are
//!   never sent. A bucket over capacity fails the job (as unlikely as 2^−40 for honest inputs).
//! - Correctness: a non-member matches falsely with probability below 2^−40 (the ℓ above); the
//!   OKVS fails with probability below 2^−40 per bucket and then R re-encodes with a fresh seed.
//!
//! **Assumptions on fixed-key AES.** The output hash H_x(z) = π(π(z) ⊕ x) ⊕ π(z) is the GKWY20
//! TCCR hash with the item's digest as tweak; S's inputs to it are related by Δ through GF(2^128)
//! multiplication, a correlation wider than the one GKWY20 prove TCCR for. Like the authors'
//! implementation (volePSI, which uses fixed-key AES for this hash), we model fixed-key AES as
//! an ideal permutation here.
//!
//! # Security model: semi-honest
//!
//! Both parties follow the protocol. This variant is not secure against a malicious party:
//! S could send inconsistent VOLE messages (selective failure on R's noise), R could encode a
//! P that is not an OKVS of a set of the announced size, and with [`Reveal::Both`] R could send S
//! any positions. Malformed frames and mismatched parameters are rejected ([`Rr22Error::Protocol`]).
//!
//! # Wire format
//!
//! After the VOLE setup (128 base OTs), per bucket: the VOLE extension's frames
//! ([`crate::vole`]), then:
//!
//! | frame     | from | kind   | body |
//! |-----------|------|--------|------|
//! | hello     | both | `0x40` | `"consort/rr22-psi"`, version `u16`, role `u8`, reveal `u8`, set size `u64`, bucket size `u64`, salt share (16 bytes) |
//! | okvs      | R    | `0x41` | bucket `u32`, first cell `u32`, OKVS seed (16 bytes, first frame of a bucket only), cells of A + P (16 bytes each) |
//! | values    | S    | `0x42` | bucket `u32`, first position `u32`, F values (ℓ/8 bytes each) |
//! | positions | R    | `0x43` | first `u32`, S stream positions (`u32` each) — [`Reveal::Both`] only, then an empty-bodied last frame |
//! | payload width | S | `0x44` | (labeled PSI only, once, after the hellos) padded payload width W `u32`, sealing format `u8` (= 2; [`crate::psi::payload`]) |
//! | payloads  | S    | `0x45` | (labeled PSI only, after each bucket's values) bucket `u32`, first position `u32`, sealed payloads of W + 16 bytes each, in the values' order |
//!
//! Integers are big-endian. Per item of a full bucket (2^20 items): ≈ 1.1·16 = 17.6 bytes of
//! OKVS from R, ℓ/8 ≈ 10–11 bytes of values from S, ≈ 1.3 bytes of VOLE, plus 4 bytes per
//! intersecting item with [`Reveal::Both`]: about 30 bytes per item of the larger set in total.
//! The VOLE's base correlations cost a fixed ≈ 1.4 MB per bucket, which dominates small jobs
//! (≈ 21 bytes per item at 2^16 items).
//!
//! # Running from disk: the per-bucket entry point
//!
//! [`run`] takes all items in memory. A caller whose items are on disk calls [`start`] (the hello
//! exchange; it fixes the salt, so the caller can hash its items only now, with
//! [`Session::hasher`]) and then [`run_buckets`], which asks a [`BucketSource`] for each bucket's
//! digests when it reaches the bucket and hands each bucket's matches, in the joint order, to a
//! [`BucketSink`] as soon as they are known. The wire is the same either way. The responder hands
//! over its matches bucket by bucket as R's positions arrive, so it refuses positions that are
//! not in bucket order. A call runs a bucket range `[start, end)` with its own VOLE setup and its
//! own positions, so a range can run alone once both sides agree on it (resume and shards).
//!
//! # Code map
//!
//! `bucket` (digests, buckets, their public capacity), `receiver` and `sender` (one file per
//! role, citing the steps of the paper's Fig. 4), `oprf` (the hash functions both roles share),
//! `matching` (R's join of the values) and `wire` (the frames).

mod bucket;
mod matching;
mod oprf;
mod receiver;
mod sender;
mod wire;

pub use bucket::{Layout, bucket_capacity};

use std::time::Instant;

use rand::rngs::{StdRng, SysRng};
use rand::{SeedableRng, TryRng};
use sha2::{Digest, Sha256};

use crate::channel::{Channel, ChannelError};
use crate::items::Items;
use crate::okvs;
use crate::ot::OtError;
use crate::psi::payload::{self, PayloadMode};
use crate::psi::{Progress, ProgressFn, PsiOutput, Reveal, Role, Timings};
use bucket::bucketize;
use receiver::run_receiver;
use sender::run_sender;
use wire::{Hello, recv_payload_width, recv_positions, send_payload_width, send_positions};

/// Protocol id carried in the hello.
pub const PROTOCOL_ID: &[u8; 16] = b"consort/rr22-psi";
/// Wire format version.
pub const VERSION: u16 = 1;
/// Default target of items per bucket (of the larger set).
pub const DEFAULT_BUCKET_SIZE: usize = 1 << 20;
/// Statistical security parameter (false positives, bucket overflow), in bits.
pub const STAT_SECURITY: u32 = 40;

const HELLO: u8 = 0x40;
const OKVS_CELLS: u8 = 0x41;
const VALUES: u8 = 0x42;
const POSITIONS: u8 = 0x43;
const PAYLOAD_HEAD: u8 = 0x44;
const PAYLOADS: u8 = 0x45;
const HELLO_LEN: usize = 1 + 16 + 2 + 1 + 1 + 8 + 8 + 16;
const SALT_DOMAIN: &[u8] = b"consort/rr22-psi/v1/salt";
/// Bytes of payload per frame.
const FRAME_BYTES: usize = 1 << 20;
/// Items hashed per parallel block while bucketing.
const HASH_BLOCK: usize = 1 << 18;
/// Most bytes of sealed payloads per bucket (held at once by both parties).
pub const MAX_PAYLOAD_BUCKET_BYTES: usize = 1 << 30;
/// Marks a dummy in the sender's bucket order.
const DUMMY: u32 = u32::MAX;

/// One party's parameters; both must agree on everything but the role.
#[derive(Clone)]
pub struct Rr22Config {
    pub role: Role,
    pub reveal: Reveal,
    pub progress: Option<ProgressFn>,
    /// Target items per bucket of the larger set; both parties must use the same.
    pub bucket_size: usize,
    /// Most items the peer may announce (its hello is refused above this, before any work is
    /// sized by it): the job's agreed peer set size, or [`u64::MAX`] for the protocol's own bound.
    pub max_peer_items: u64,
    /// Labeled PSI ([`crate::psi::payload`]): the responder sends one payload per item, the
    /// requester receives those of its matches. Both must agree.
    pub payload: PayloadMode,
}

impl Rr22Config {
    pub fn new(role: Role, reveal: Reveal) -> Rr22Config {
        Rr22Config {
            role,
            reveal,
            progress: None,
            bucket_size: DEFAULT_BUCKET_SIZE,
            max_peer_items: u64::MAX,
            payload: PayloadMode::None,
        }
    }
}

/// Why an RR22-PSI run failed.
#[derive(Debug, thiserror::Error)]
pub enum Rr22Error {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer sent something that does not follow the protocol, or the parameters disagree.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// This party's own input cannot be used.
    #[error("invalid RR22-PSI input: {0}")]
    Input(String),
    /// A bucket received more items than its public capacity (probability below 2^-40 for
    /// honest inputs).
    #[error("bucket {bucket} gets more than its capacity of {capacity} items; the job cannot hide bucket sizes")]
    BucketOverflow { bucket: usize, capacity: usize },
}

impl From<OtError> for Rr22Error {
    fn from(e: OtError) -> Self {
        match e {
            OtError::Channel(c) => Rr22Error::Channel(c),
            other => Rr22Error::Protocol(other.to_string()),
        }
    }
}

fn violation(message: impl Into<String>) -> Rr22Error {
    Rr22Error::Protocol(message.into())
}

/// Runs RR22-PSI with the peer on `channel` over `items`. Both parties call this with opposite
/// roles and the same reveal mode and bucket size. On error the caller should close the channel
/// so that the peer's run ends too.
///
/// This is [`start`], the items hashed into in-memory buckets, then [`run_buckets`] over all
/// buckets: the per-bucket entry point a caller with its items on disk uses directly.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub async fn run<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    config: &Rr22Config,
) -> Result<PsiOutput, Rr22Error> {
    let n = items.len();
    let session = start(channel, n, config).await?;
    let progress = Progress(config.progress.as_ref());
    progress.report("hash items", 0, n);
    let clock = Instant::now();
    let buckets = bucketize(items, session.salt, &session.layout, config.role).await?;
    let hashed = clock.elapsed().as_secs_f64();
    progress.report("hash items", n, n);
    let mut sink = CollectMatches::default();
    let all = 0..session.layout.buckets;
    let done = run_buckets(channel, &session, std::sync::Arc::new(buckets), &mut sink, all).await?;
    let mut timings = vec![("hash and bucket", hashed)];
    timings.extend(done.timings);
    let intersection = session.reveal.learns(config.role).then_some(sink.matched);
    Ok(PsiOutput { peer_size: session.peer_size, intersection, payloads: done.payloads, timings })
}

/// A job after the hello exchange: what both parties agreed, from which each side hashes and
/// buckets its own items ([`Session::digest`], [`Session::bucket_of`]) and then runs the buckets
/// ([`run_buckets`]). The salt is fixed here, so a caller can hash its items as it reads them.
pub struct Session {
    /// Items the peer announced (checked against [`Rr22Config::max_peer_items`]).
    pub peer_size: u64,
    /// This party's announced item count.
    pub own_size: u64,
    /// The job's shape, the same on both sides.
    pub layout: Layout,
    role: Role,
    reveal: Reveal,
    salt: [u8; 32],
    progress: Option<ProgressFn>,
    /// Labeled PSI: the padded payload width both agreed, and the responder's payloads.
    payload_width: Option<usize>,
    payload: PayloadMode,
    /// R hands a bucket's matches over in the joint order (by F value); off
    /// ([`Session::matches_in_any_order`]) when the caller orders them itself.
    joint_order: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The salt stays out of logs.
        f.debug_struct("Session")
            .field("peer_size", &self.peer_size)
            .field("own_size", &self.own_size)
            .field("layout", &self.layout)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// R's matches (its own ids and S's positions) of a bucket come in any order, the same
    /// matches as otherwise: for a caller that puts each bucket's matches in an order of its own
    /// on both sides (a resumable job's digest order), which saves R two sorts per bucket. Without
    /// payloads only (a payload join keeps the joint order).
    pub fn matches_in_any_order(&mut self) {
        self.joint_order = self.payload_width.is_some();
    }

    /// How this job hashes and buckets items (a copy that can move to another thread).
    pub fn hasher(&self) -> ItemHasher {
        ItemHasher { salt: self.salt, buckets: self.layout.buckets }
    }

    /// Most items (real ones) one of this party's buckets may hold: its public capacity.
    pub fn own_capacity(&self) -> usize {
        match self.role {
            Role::Requester => self.layout.cap_receiver,
            Role::Responder => self.layout.cap_sender,
        }
    }

    /// Whether this party learns the intersection.
    pub fn learns(&self) -> bool {
        self.reveal.learns(self.role)
    }
}

/// What a restart needs to take a [`Session`] up again without a new hello: the sizes both
/// announced, the bucket size and the joint salt (so items hash and bucket as before, and the
/// [`Layout`] is derived again). Only sessions without payloads can be saved. The salt is secret
/// from third parties: callers keep this sealed.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionState {
    pub own_size: u64,
    pub peer_size: u64,
    pub bucket_size: u64,
    pub salt: [u8; 32],
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("own_size", &self.own_size)
            .field("peer_size", &self.peer_size)
            .field("bucket_size", &self.bucket_size)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The parameters to save for a restart ([`resume_session`]); `None` for labeled PSI, whose
    /// payload width is not saved.
    pub fn state(&self, bucket_size: usize) -> Option<SessionState> {
        (self.payload_width.is_none() && matches!(self.payload, PayloadMode::None)).then_some(SessionState {
            own_size: self.own_size,
            peer_size: self.peer_size,
            bucket_size: bucket_size as u64,
            salt: self.salt,
        })
    }

    /// A fingerprint of everything both parties agreed in the hello (salt, sizes by role, bucket
    /// size, reveal mode, layout): equal on both sides of one session, so a restart can check the
    /// peer restored the same session. It tells the peer nothing it does not already know.
    pub fn fingerprint(&self) -> [u8; 32] {
        let (requester, responder) = match self.role {
            Role::Requester => (self.own_size, self.peer_size),
            Role::Responder => (self.peer_size, self.own_size),
        };
        let mut h = Sha256::new();
        h.update(b"consort/rr22-psi/v1/session-fingerprint");
        h.update(self.salt);
        h.update(requester.to_le_bytes());
        h.update(responder.to_le_bytes());
        h.update([self.reveal.wire()]);
        for v in [self.layout.buckets, self.layout.cap_receiver, self.layout.cap_sender, self.layout.value_bytes] {
            h.update((v as u64).to_le_bytes());
        }
        h.finalize().into()
    }
}

/// Takes a saved session up again ([`Session::state`]) for `config` (same role and reveal mode
/// as the first run; no payloads): no message is exchanged, the layout is derived again from the
/// saved sizes, and the peer's restored session is compared by [`Session::fingerprint`].
pub fn resume_session(state: &SessionState, config: &Rr22Config) -> Result<Session, Rr22Error> {
    if !matches!(config.payload, PayloadMode::None) {
        return Err(Rr22Error::Input("labeled PSI sessions cannot be resumed".into()));
    }
    if state.own_size >= DUMMY as u64 || state.peer_size >= DUMMY as u64 {
        return Err(Rr22Error::Input("a saved set size out of range".into()));
    }
    if state.peer_size > config.max_peer_items {
        return Err(Rr22Error::Input(format!(
            "the saved peer size {} is more than the {} agreed for this job",
            state.peer_size, config.max_peer_items
        )));
    }
    if state.bucket_size == 0 || state.bucket_size as usize > okvs::MAX_KEYS / 2 {
        return Err(Rr22Error::Input(format!("saved bucket size {} out of range", state.bucket_size)));
    }
    let (requester, responder) = match config.role {
        Role::Requester => (state.own_size, state.peer_size),
        Role::Responder => (state.peer_size, state.own_size),
    };
    let layout = Layout::new(requester as usize, responder as usize, state.bucket_size as usize);
    if layout.buckets.saturating_mul(layout.cap_sender) >= DUMMY as usize {
        return Err(Rr22Error::Input("the saved layout exceeds 2^32 stream positions".into()));
    }
    Ok(Session {
        peer_size: state.peer_size,
        own_size: state.own_size,
        layout,
        role: config.role,
        reveal: config.reveal,
        salt: state.salt,
        progress: config.progress.clone(),
        payload_width: None,
        payload: PayloadMode::None,
        joint_order: true,
    })
}

/// The hello exchange (and, for labeled PSI, the payload width): checks this party's input and
/// the peer's parameters, fixes the joint salt and the [`Layout`]. `n` is the item count this
/// party announces; its buckets may then hold fewer items in all (e.g. duplicates dropped), never
/// more than a bucket's capacity.
pub async fn start<C: Channel>(channel: &C, n: usize, config: &Rr22Config) -> Result<Session, Rr22Error> {
    if n >= DUMMY as usize {
        return Err(Rr22Error::Input(format!("{n} items; at most {} per set", DUMMY - 1)));
    }
    if config.bucket_size == 0 || config.bucket_size > okvs::MAX_KEYS / 2 {
        return Err(Rr22Error::Input(format!("bucket size {} out of range", config.bucket_size)));
    }
    let payload_width = check_payload_mode(n, config)?;
    let (peer, salt, layout) = handshake(channel, n, config).await?;
    // Labeled PSI: the responder announces its payload width; the requester checks it against
    // its limit before anything is sized by it.
    let payload_width = match &config.payload {
        PayloadMode::None => None,
        PayloadMode::Send(_) => {
            let width = payload_width.expect("checked");
            send_payload_width(channel, width).await?;
            Some(width)
        }
        PayloadMode::Receive { max_bytes } => Some(recv_payload_width(channel, *max_bytes).await?),
    };
    // A bucket's sealed payloads are held at once on both sides: bounded, whatever the width.
    if let Some(width) = payload_width {
        let bucket_bytes = (width + payload::TAG_BYTES).saturating_mul(layout.cap_sender);
        if bucket_bytes > MAX_PAYLOAD_BUCKET_BYTES {
            let why = format!(
                "payloads of {width} bytes for {} positions per bucket need {bucket_bytes} bytes per bucket, more than {MAX_PAYLOAD_BUCKET_BYTES}",
                layout.cap_sender
            );
            return Err(match config.role {
                Role::Requester => violation(why),
                Role::Responder => Rr22Error::Input(why),
            });
        }
    }
    Ok(Session {
        peer_size: peer.size,
        own_size: n as u64,
        layout,
        role: config.role,
        reveal: config.reveal,
        salt,
        progress: config.progress.clone(),
        payload_width,
        payload: config.payload.clone(),
        joint_order: true,
    })
}

/// The job's item digest (SHA-256 under the joint salt, 128 bits) and bucket choice.
#[derive(Clone)]
pub struct ItemHasher {
    salt: [u8; 32],
    buckets: usize,
}

impl std::fmt::Debug for ItemHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemHasher").field("buckets", &self.buckets).finish_non_exhaustive()
    }
}

impl ItemHasher {
    /// An item's 128-bit digest under the job's joint salt (what the protocol runs on).
    pub fn digest(&self, item: &[u8]) -> u128 {
        bucket::digest(&self.salt, item)
    }

    /// The bucket of a digest, in `0..layout.buckets`.
    pub fn bucket_of(&self, digest: u128) -> usize {
        bucket::bucket_of(digest, self.buckets)
    }
}

/// One party's items bucket by bucket, for [`run_buckets`]: in memory ([`run`]) or read back
/// from spill files on disk (the engine's streaming PSI).
pub trait BucketSource: Send + Sync + 'static {
    /// Bucket `b`'s digests (at most the party's bucket capacity), each with an id the caller
    /// chooses; matches are reported by these ids. Called once per bucket, possibly on a rayon
    /// thread, while an earlier bucket is still running. An error here fails the job.
    fn bucket(&self, b: usize) -> Result<(Vec<u128>, Vec<u32>), Rr22Error>;
}

/// Where [`run_buckets`] puts each bucket's result as soon as it is known.
pub trait BucketSink: Send {
    /// Bucket `b` is finished: the ids ([`BucketSource::bucket`]) of this party's matched items
    /// in the joint order. Called once for every bucket of the range, in bucket order, if this
    /// party learns the intersection (the requester during the run, the responder once the
    /// matched positions arrive).
    fn matched(&mut self, b: usize, ids: Vec<u32>) -> Result<(), Rr22Error>;
    /// The responder with [`Reveal::Both`]: bucket `b`'s secret stream order (position → id, or
    /// `u32::MAX` for a dummy), kept until the matched positions arrive.
    fn keep_order(&mut self, b: usize, order: Vec<u32>) -> Result<(), Rr22Error>;
    /// The order kept for bucket `b` (each is taken once).
    fn take_order(&mut self, b: usize) -> Result<Vec<u32>, Rr22Error>;
}

/// A [`BucketSink`] that keeps everything in memory: the matches concatenated (bucket after
/// bucket, i.e. in the joint order) and the orders.
#[derive(Default)]
pub struct CollectMatches {
    pub matched: Vec<u32>,
    orders: Vec<Option<Vec<u32>>>,
}

impl BucketSink for CollectMatches {
    fn matched(&mut self, _b: usize, ids: Vec<u32>) -> Result<(), Rr22Error> {
        self.matched.extend(ids);
        Ok(())
    }

    fn keep_order(&mut self, b: usize, order: Vec<u32>) -> Result<(), Rr22Error> {
        if self.orders.len() <= b {
            self.orders.resize_with(b + 1, || None);
        }
        self.orders[b] = Some(order);
        Ok(())
    }

    fn take_order(&mut self, b: usize) -> Result<Vec<u32>, Rr22Error> {
        self.orders
            .get_mut(b)
            .and_then(Option::take)
            .ok_or_else(|| Rr22Error::Input(format!("no order kept for bucket {b}")))
    }
}

/// What [`run_buckets`] returns besides what it gave the sink.
pub struct BucketsDone {
    /// Wall seconds per step, summed over the range's buckets (steps overlap).
    pub timings: Vec<(&'static str, f64)>,
    /// Labeled PSI, on the requester: the payloads of its matches, in the order of the ids given
    /// to [`BucketSink::matched`].
    pub payloads: Option<payload::Payloads>,
}

/// The VOLE base setup (128 base OTs and the sender's Δ) a job keeps between the ranges it runs
/// one after another on one channel ([`run_buckets_keeping`]), so only its first range pays the
/// setup. Nothing of it is ever written anywhere: a restarted job starts with a fresh one.
///
/// **Why this is sound.** A job that keeps its setup across ranges `r0, r1, …` sends exactly
/// the VOLE messages of one [`run_buckets`] call over all their buckets: one setup, then one
/// extension per bucket with the OT index running on, one Δ for the job, which is the protocol
/// as analysed (the paper's Π_psi uses one VOLE Δ per run; our VOLE's extensions are independent
/// given the setup). The per-range extras (positions per range, the caller's acknowledgements)
/// carry nothing that depends on the VOLE secrets. A range run *again* after a resume uses a
/// fresh setup (a fresh Δ), as before.
///
/// Both sides must keep or drop their setups in step: a call takes the setup and gives it back
/// only if the range succeeded, so a caller must stop the job (not run another range) after any
/// error on either side — otherwise one side runs a setup the other does not expect, which ends
/// in a protocol error.
#[derive(Default)]
pub struct KeptVole(Option<KeptSetup>);

enum KeptSetup {
    Sender(crate::vole::VoleSender),
    Receiver(crate::vole::VoleReceiver),
}

impl KeptVole {
    /// Whether a setup is kept (the next range will not run one).
    pub fn is_kept(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for KeptVole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptVole").field("kept", &self.is_kept()).finish()
    }
}

/// Runs the buckets `range` of a [`Session`] one after another: each bucket's items come from
/// `source` when the bucket (or, on the requester, the bucket before it) starts, and each
/// bucket's matches go to `sink` as soon as they are known, so memory is fixed per bucket
/// whatever the job's size. With [`Reveal::Both`] the matched positions go back at the end of
/// the range. The range is its own unit (its own VOLE setup, its own positions), so a range can
/// run alone when both sides agree on it: a resumable job runs its ranges through
/// [`run_buckets_keeping`] (one setup per run), a shard worker runs its range here.
pub async fn run_buckets<C: Channel>(
    channel: &C,
    session: &Session,
    source: std::sync::Arc<dyn BucketSource>,
    sink: &mut dyn BucketSink,
    range: std::ops::Range<usize>,
) -> Result<BucketsDone, Rr22Error> {
    run_buckets_keeping(channel, session, source, sink, range, &mut KeptVole::default()).await
}

/// [`run_buckets`] reusing the VOLE setup in `kept` (from this job's previous range on this
/// channel) if there is one, and leaving this range's setup in it if the range succeeds; see
/// [`KeptVole`] for why that is sound and what the caller must do after an error.
pub async fn run_buckets_keeping<C: Channel>(
    channel: &C,
    session: &Session,
    source: std::sync::Arc<dyn BucketSource>,
    sink: &mut dyn BucketSink,
    range: std::ops::Range<usize>,
    kept: &mut KeptVole,
) -> Result<BucketsDone, Rr22Error> {
    if range.start > range.end || range.end > session.layout.buckets {
        return Err(Rr22Error::Input(format!(
            "bucket range {}..{} outside the job's {} buckets",
            range.start, range.end, session.layout.buckets
        )));
    }
    let progress = Progress(session.progress.as_ref());
    let mut timings = Timings::default();
    let layout = &session.layout;
    let salt = session.salt;
    let mut payloads = None;
    match session.role {
        Role::Requester => {
            let keys = session.payload_width.map(|width| PayloadKeys { salt, width });
            // S's matched positions go back only with `Reveal::Both`: kept (4 bytes per match of
            // the range) only then.
            let mut positions = Vec::new();
            let sends_positions = session.reveal == Reveal::Both;
            let mut matched = |b: usize, own: Vec<u32>, peer: Vec<u32>| -> Result<(), Rr22Error> {
                if sends_positions {
                    positions.extend(peer);
                }
                sink.matched(b, own)
            };
            let total = session.own_size as usize;
            let mut vole = match kept.0.take() {
                Some(KeptSetup::Receiver(v)) => Some(v),
                Some(KeptSetup::Sender(_)) => {
                    return Err(Rr22Error::Input("a kept VOLE setup of the other role".into()));
                }
                None => None,
            };
            let run = run_receiver(
                channel,
                &source,
                layout,
                range.clone(),
                keys,
                total,
                &progress,
                &mut timings,
                &mut matched,
                &mut vole,
                session.joint_order,
            );
            payloads = run.await?;
            if session.reveal == Reveal::Both {
                let clock = Instant::now();
                send_positions(channel, &positions).await?;
                timings.add("send matched positions", clock);
            }
            kept.0 = vole.map(KeptSetup::Receiver);
        }
        Role::Responder => {
            let sent = match (&session.payload, session.payload_width) {
                (PayloadMode::Send(p), Some(width)) => Some((p.clone(), PayloadKeys { salt, width })),
                _ => None,
            };
            let keep = session.reveal == Reveal::Both;
            let total = session.own_size as usize;
            let mut vole = match kept.0.take() {
                Some(KeptSetup::Sender(v)) => Some(v),
                Some(KeptSetup::Receiver(_)) => {
                    return Err(Rr22Error::Input("a kept VOLE setup of the other role".into()));
                }
                None => None,
            };
            let (r, t) = (range.clone(), &mut timings);
            run_sender(channel, &source, layout, r, sent, keep, sink, total, &progress, t, &mut vole).await?;
            if keep {
                let clock = Instant::now();
                recv_positions(channel, sink, layout, range).await?;
                timings.add("wait for and receive matched positions", clock);
            }
            kept.0 = vole.map(KeptSetup::Sender);
        }
    }
    Ok(BucketsDone { timings: timings.into_vec(), payloads })
}

/// What both roles need to derive payload keys: the job's salt and the padded payload width.
#[derive(Clone, Copy)]
pub(super) struct PayloadKeys {
    pub(super) salt: [u8; 32],
    pub(super) width: usize,
}

/// The payload mode against the role and the items; the sender's width.
fn check_payload_mode(n: usize, config: &Rr22Config) -> Result<Option<usize>, Rr22Error> {
    match (&config.payload, config.role) {
        (PayloadMode::None, _) => Ok(None),
        (PayloadMode::Send(p), Role::Responder) => {
            if p.len() != n {
                return Err(Rr22Error::Input(format!("{} payloads for {n} items", p.len())));
            }
            if p.max_len() > payload::MAX_PAYLOAD_BYTES {
                return Err(Rr22Error::Input(format!(
                    "a payload of {} bytes; at most {} per item",
                    p.max_len(),
                    payload::MAX_PAYLOAD_BYTES
                )));
            }
            Ok(Some(payload::width_for(p)))
        }
        (PayloadMode::Receive { .. }, Role::Requester) => Ok(None),
        (_, role) => Err(Rr22Error::Input(format!(
            "payloads go from the responder to the requester; this party is the {role:?}"
        ))),
    }
}

/// The hello exchange: both parties' parameters must agree; both derive the joint salt and the
/// job's [`Layout`] from the two hellos.
async fn handshake<C: Channel>(
    channel: &C,
    n: usize,
    config: &Rr22Config,
) -> Result<(Hello, [u8; 32], Layout), Rr22Error> {
    let mut salt = [0u8; 16];
    SysRng.try_fill_bytes(&mut salt).expect("the operating system's random number generator failed");
    let own = Hello {
        role: config.role,
        reveal: config.reveal,
        size: n as u64,
        bucket_size: config.bucket_size as u64,
        salt,
    };
    channel.send(own.encode()).await?;
    let peer = Hello::decode(&channel.recv().await?)?;
    if peer.role == own.role {
        return Err(violation(format!("both parties claim the role {:?}", own.role)));
    }
    if peer.reveal != own.reveal {
        return Err(violation(format!("reveal modes differ: this node {:?}, the peer {:?}", own.reveal, peer.reveal)));
    }
    if peer.bucket_size != own.bucket_size {
        return Err(violation(format!(
            "bucket sizes differ: this node {}, the peer {}",
            own.bucket_size, peer.bucket_size
        )));
    }
    if peer.size >= DUMMY as u64 {
        return Err(violation(format!("the peer announces {} items", peer.size)));
    }
    if peer.size > config.max_peer_items {
        return Err(violation(format!(
            "the peer announces {} items, more than the {} agreed for this job",
            peer.size, config.max_peer_items
        )));
    }
    let (requester, responder) = match config.role {
        Role::Requester => (&own, &peer),
        Role::Responder => (&peer, &own),
    };
    let mut h = Sha256::new();
    h.update(SALT_DOMAIN);
    h.update(requester.salt);
    h.update(responder.salt);
    let salt: [u8; 32] = h.finalize().into();
    let layout = Layout::new(requester.size as usize, responder.size as usize, config.bucket_size);
    if layout.buckets.saturating_mul(layout.cap_sender) >= DUMMY as usize {
        // Stream positions are 32-bit.
        return Err(Rr22Error::Input(format!(
            "{} buckets of {} responder items exceed 2^32 stream positions",
            layout.buckets, layout.cap_sender
        )));
    }
    Ok((peer, salt, layout))
}

fn os_rng() -> StdRng {
    StdRng::try_from_rng(&mut SysRng).expect("the operating system's random number generator failed")
}

#[cfg(test)]
mod tests;
