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
//! The result lists R's indices by bucket, then by F within a bucket (the *joint order*: bucket
//! and F are pseudorandom functions of the item that both can evaluate on the intersection). With [`Reveal::Both`] R then sends, in that
//! order, the positions in S's stream that matched; S maps them back through its secret order, so
//! row i is the same entity on both sides. With [`Reveal::RequesterOnly`] nothing goes back.
//! Duplicates: every copy of an intersecting item is listed, copies adjacent (as in
//! [`crate::ecdh_psi`]); the engine removes or rejects duplicates first anyway.
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
//!
//! Integers are big-endian. Per item of a full bucket (2^20 items): ≈ 1.1·16 = 17.6 bytes of
//! OKVS from R, ℓ/8 ≈ 10–11 bytes of values from S, ≈ 1.3 bytes of VOLE, plus 4 bytes per
//! intersecting item with [`Reveal::Both`]: about 30 bytes per item of the larger set in total.
//! The VOLE's base correlations cost a fixed ≈ 1.4 MB per bucket, which dominates small jobs
//! (≈ 21 bytes per item at 2^16 items).

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use rand::rngs::{StdRng, SysRng};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng, TryRng};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::channel::{Channel, ChannelError};
use crate::cpu;
use crate::items::Items;
use crate::okvs::{self, Okvs, OkvsError, OkvsSeed};
use crate::ot::aes_hash::{BATCH, FixedKeyAes};
use crate::ot::{OtError, gf128};
use crate::psi::{Progress, ProgressFn, PsiOutput, Reveal, Role, Timings};
use crate::vole::{VoleReceiver, VoleSender};

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
const HELLO_LEN: usize = 1 + 16 + 2 + 1 + 1 + 8 + 8 + 16;
const SALT_DOMAIN: &[u8] = b"consort/rr22-psi/v1/salt";
/// Bytes of payload per frame.
const FRAME_BYTES: usize = 1 << 20;
/// Items hashed per parallel block while bucketing.
const HASH_BLOCK: usize = 1 << 18;
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
}

impl Rr22Config {
    pub fn new(role: Role, reveal: Reveal) -> Rr22Config {
        Rr22Config { role, reveal, progress: None, bucket_size: DEFAULT_BUCKET_SIZE }
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

/// The job's shape, derived identically by both parties from the two hellos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub buckets: usize,
    /// Items per bucket (padded) of R and S.
    pub cap_receiver: usize,
    pub cap_sender: usize,
    /// Bytes of each F value.
    pub value_bytes: usize,
}

impl Layout {
    pub fn new(n_receiver: usize, n_sender: usize, bucket_size: usize) -> Layout {
        let buckets = n_receiver.max(n_sender).div_ceil(bucket_size.max(1)).max(1);
        let cap = |n: usize| if buckets == 1 { n } else { bucket_capacity(n, buckets) };
        let (cap_receiver, cap_sender) = (cap(n_receiver), cap(n_sender));
        let comparisons = (buckets as f64) * (cap_receiver.max(1) as f64) * (cap_sender.max(1) as f64);
        let bits = STAT_SECURITY as usize + comparisons.log2().ceil().max(0.0) as usize;
        Layout { buckets, cap_receiver, cap_sender, value_bytes: bits.div_ceil(8).min(16) }
    }
}

/// Smallest c with Pr[some bucket gets more than c of n items] ≤ 2^-40 when items fall into
/// `buckets` buckets uniformly: Bernstein's inequality per bucket, union bound over buckets.
pub fn bucket_capacity(n: usize, buckets: usize) -> usize {
    let mean = n as f64 / buckets as f64;
    let l = (buckets as f64).ln() + STAT_SECURITY as f64 * std::f64::consts::LN_2;
    let t = l / 3.0 + (l * l / 9.0 + 2.0 * l * mean).sqrt();
    ((mean + t).ceil() as usize).min(n)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hello {
    role: Role,
    reveal: Reveal,
    size: u64,
    bucket_size: u64,
    salt: [u8; 16],
}

impl Hello {
    fn encode(&self) -> Bytes {
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

    fn decode(f: &[u8]) -> Result<Hello, Rr22Error> {
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

/// Runs RR22-PSI with the peer on `channel` over `items`. Both parties call this with opposite
/// roles and the same reveal mode and bucket size. On error the caller should close the channel
/// so that the peer's run ends too.
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
    if n >= DUMMY as usize {
        return Err(Rr22Error::Input(format!("{n} items; at most {} per set", DUMMY - 1)));
    }
    if config.bucket_size == 0 || config.bucket_size > okvs::MAX_KEYS / 2 {
        return Err(Rr22Error::Input(format!("bucket size {} out of range", config.bucket_size)));
    }
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
    let progress = Progress(config.progress.as_ref());
    progress.report("hash items", 0, n);
    let mut timings = Timings::default();
    let clock = Instant::now();
    let buckets = bucketize(items, salt, &layout, config.role).await?;
    timings.add("hash and bucket", clock);
    progress.report("hash items", n, n);
    let peer_size = peer.size;
    let intersection = match config.role {
        Role::Requester => {
            let order = run_receiver(channel, &buckets, &layout, &progress, &mut timings).await?;
            if config.reveal == Reveal::Both {
                let clock = Instant::now();
                send_positions(channel, &order.sender_positions).await?;
                timings.add("send matched positions", clock);
            }
            Some(order.own)
        }
        Role::Responder => {
            let orders = run_sender(channel, &buckets, &layout, &progress, &mut timings).await?;
            let clock = Instant::now();
            let own = match config.reveal {
                Reveal::Both => Some(recv_positions(channel, &orders, &layout).await?),
                Reveal::RequesterOnly => None,
            };
            timings.add("wait for and receive matched positions", clock);
            own
        }
    };
    Ok(PsiOutput { peer_size, intersection, timings: timings.into_vec() })
}

/// One party's items split into buckets: digests and item indices, bucket after bucket.
struct Buckets {
    /// Bucket b's digests and item indices are `fill[b]` entries from `b · cap` on.
    digests: Vec<u128>,
    indices: Vec<u32>,
    cap: usize,
    fill: Vec<usize>,
    items: usize,
}

impl Buckets {
    fn bucket(&self, b: usize) -> (&[u128], &[u32]) {
        let r = b * self.cap..b * self.cap + self.fill[b];
        (&self.digests[r.clone()], &self.indices[r])
    }
}

/// The item's digest: SHA-256(salt ‖ item), first 128 bits.
fn digest(salt: &[u8; 32], item: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(item);
    let out: [u8; 32] = h.finalize().into();
    u128::from_le_bytes(out[..16].try_into().expect("16"))
}

/// The bucket of a digest: its high 64 bits scaled to the bucket count (uniform, since the
/// digest is). The OKVS hashes the whole digest under its own seed, so sharing these bits with
/// the bucket choice costs it nothing.
fn bucket_of(digest: u128, buckets: usize) -> usize {
    (((digest >> 64) * buckets as u128) >> 64) as usize
}

/// A block of items copied out of the caller's list, so it can be hashed on rayon without
/// blocking the async runtime.
struct ItemBlock {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl ItemBlock {
    fn gather<I: Items + ?Sized>(items: &I, range: std::ops::Range<usize>) -> ItemBlock {
        let mut block = ItemBlock { bytes: Vec::new(), ends: Vec::with_capacity(range.len()) };
        for i in range {
            block.bytes.extend_from_slice(items.get(i));
            block.ends.push(block.bytes.len());
        }
        block
    }

    fn digests(&self, salt: &[u8; 32]) -> Vec<u128> {
        (0..self.ends.len())
            .into_par_iter()
            .map(|k| {
                let start = if k == 0 { 0 } else { self.ends[k - 1] };
                digest(salt, &self.bytes[start..self.ends[k]])
            })
            .collect()
    }
}

/// Hashes every item (in parallel blocks on rayon, the next block copied out while one is hashed)
/// and puts each digest into its bucket's region of `cap` slots. Memory: 20 bytes per slot, but
/// regions are touched only as they fill (`zeroed_blocks` pages are mapped lazily), so about 20
/// bytes per item.
async fn bucketize<I: Items + ?Sized>(
    items: &I,
    salt: [u8; 32],
    layout: &Layout,
    role: Role,
) -> Result<Buckets, Rr22Error> {
    let n = items.len();
    let nb = layout.buckets;
    let cap = match role {
        Role::Requester => layout.cap_receiver,
        Role::Responder => layout.cap_sender,
    };
    let mut buckets = Buckets {
        digests: crate::mem::zeroed_blocks(nb * cap),
        indices: vec![0u32; nb * cap],
        cap,
        fill: vec![0; nb],
        items: n,
    };
    let hash = |start: usize| {
        let block = ItemBlock::gather(items, start..(start + HASH_BLOCK).min(n));
        cpu::spawn(move || block.digests(&salt))
    };
    let mut pending = (n > 0).then(|| hash(0));
    let mut start = 0;
    while let Some(task) = pending.take() {
        let next = start + HASH_BLOCK;
        pending = (next < n).then(|| hash(next));
        let digests = task.await;
        buckets = cpu::run(move || {
            for (k, d) in digests.into_iter().enumerate() {
                let b = bucket_of(d, nb);
                let at = b * cap + buckets.fill[b];
                if buckets.fill[b] == cap {
                    return Err(Rr22Error::BucketOverflow { bucket: b, capacity: cap });
                }
                buckets.digests[at] = d;
                buckets.indices[at] = (start + k) as u32;
                buckets.fill[b] += 1;
            }
            Ok(buckets)
        })
        .await?;
        start = next;
    }
    Ok(buckets)
}

/// v(d) = π(d) ⊕ d, the value R's OKVS encodes under d.
fn okvs_values(digests: &[u128], out: &mut [u128]) {
    out.copy_from_slice(digests);
    out.par_chunks_mut(1 << 14).for_each(|c| FixedKeyAes::fixed().cr_hash_blocks(c));
}

/// `xs[k] ← H_{tweaks[k]}(xs[k]) = π(π(x) ⊕ t) ⊕ π(x)`, truncated to `mask`.
fn output_hash(tweaks: &[u128], xs: &mut [u128], mask: u128) {
    let aes = FixedKeyAes::fixed();
    xs.par_chunks_mut(BATCH).zip(tweaks.par_chunks(BATCH)).for_each(|(xs, tweaks)| {
        let mut y = [0u128; BATCH];
        let y = &mut y[..xs.len()];
        y.copy_from_slice(xs);
        aes.permute_blocks(y);
        for ((x, &y), &t) in xs.iter_mut().zip(y.iter()).zip(tweaks) {
            *x = y ^ t;
        }
        aes.permute_blocks(xs);
        for (x, &y) in xs.iter_mut().zip(y.iter()) {
            *x = (*x ^ y) & mask;
        }
    });
}

fn value_mask(bytes: usize) -> u128 {
    if bytes >= 16 { u128::MAX } else { (1u128 << (8 * bytes)) - 1 }
}

fn os_rng() -> StdRng {
    StdRng::try_from_rng(&mut SysRng).expect("the operating system's random number generator failed")
}

/// R's result: own indices in the joint order and the matched S positions in the same order.
struct ReceiverResult {
    own: Vec<u32>,
    sender_positions: Vec<u32>,
}

/// R's bucket keys: its digests padded with random dummies to the capacity.
fn padded_keys(digests: &[u128], cap: usize, rng: &mut StdRng) -> Vec<u128> {
    let mut keys = Vec::with_capacity(cap);
    keys.extend_from_slice(digests);
    keys.extend((digests.len()..cap).map(|_| rng.random::<u128>()));
    keys
}

/// Encodes R's bucket, retrying with a fresh seed if the band system is singular.
fn encode_bucket(keys: &[u128]) -> Result<(OkvsSeed, Vec<u128>), Rr22Error> {
    let mut rng = os_rng();
    let mut values = vec![0u128; keys.len()];
    okvs_values(keys, &mut values);
    let mut cells = vec![0u128; okvs::cells_for(keys.len())];
    for _ in 0..4 {
        let seed = OkvsSeed::random(&mut rng);
        match okvs::encode_into(keys, &values, seed, &mut rng, &mut cells) {
            Ok(()) => return Ok((seed, cells)),
            Err(OkvsError::Singular { .. }) => continue,
            Err(e) => return Err(Rr22Error::Input(e.to_string())),
        }
    }
    Err(Rr22Error::Input("the OKVS failed four times in a row (probability below 2^-160)".into()))
}

async fn run_receiver<C: Channel>(
    channel: &C,
    buckets: &Buckets,
    layout: &Layout,
    progress: &Progress<'_>,
    timings: &mut Timings,
) -> Result<ReceiverResult, Rr22Error> {
    let clock = Instant::now();
    let mut vole = VoleReceiver::setup(channel).await?;
    timings.add("vole setup", clock);
    let mask = value_mask(layout.value_bytes);
    let cap = layout.cap_receiver;
    let m = okvs::cells_for(cap);
    let total = buckets.items;
    // Own indices and S positions of every match, in the joint order (4 bytes per match each).
    let mut own_matches: Vec<u32> = Vec::new();
    let mut sender_matches: Vec<u32> = Vec::new();
    let mut done = 0usize;
    let spawn_encode = |b: usize| {
        let keys = std::sync::Arc::new(padded_keys(buckets.bucket(b).0, cap, &mut os_rng()));
        let task = {
            let keys = keys.clone();
            cpu::spawn(move || encode_bucket(&keys))
        };
        (keys, task)
    };
    let mut next = (layout.buckets > 0).then(|| spawn_encode(0));
    // Bucket b + 1's VOLE starts (its OT extension goes out) right after bucket b's OKVS, and is
    // finished after bucket b's values arrive, while bucket b is matched.
    let clock = Instant::now();
    let mut vole_next = match layout.buckets {
        0 => None,
        _ => {
            let pending = vole.extend_start(channel, m).await?;
            Some(VoleReceiver::extend_finish(channel, pending).await?)
        }
    };
    timings.add("vole", clock);
    for b in 0..layout.buckets {
        let (digests, indices) = buckets.bucket(b);
        let (keys, encode) = next.take().expect("spawned");
        let vole_out = vole_next.take().expect("extended");
        let clock = Instant::now();
        let (seed, cells) = encode.await?;
        timings.add("okvs encode (beyond other work)", clock);
        let clock = Instant::now();
        let a = vole_out.a;
        let masked = cpu::run(move || {
            let mut masked = cells;
            masked.par_iter_mut().zip(a.par_iter()).for_each(|(p, a)| *p ^= a);
            masked
        })
        .await;
        send_cells(channel, b, seed, &masked).await?;
        drop(masked);
        timings.add("mask and send okvs", clock);
        // While the sender works: this bucket's own values, the next bucket's OKVS and VOLE.
        let real = digests.len();
        let c = vole_out.c;
        let own_values = cpu::spawn(move || {
            let store = Okvs::from_cells(seed, &c[..]).expect("m cells");
            let mut own = vec![0u128; real];
            store.decode_batch(&keys[..real], &mut own);
            output_hash(&keys[..real], &mut own, mask);
            own
        });
        if b + 1 < layout.buckets {
            next = Some(spawn_encode(b + 1));
        }
        let clock = Instant::now();
        let pending = match b + 1 < layout.buckets {
            true => Some(vole.extend_start(channel, m).await?),
            false => None,
        };
        timings.add("vole", clock);
        let clock = Instant::now();
        let peer_values = recv_values(channel, b, layout).await?;
        timings.add("wait for and receive values", clock);
        let clock = Instant::now();
        let own_values = own_values.await;
        timings.add("own values (beyond wait)", clock);
        let base = (b * layout.cap_sender) as u32;
        let indices = indices.to_vec();
        let matching = cpu::spawn(move || {
            // The joint order within a bucket: by F value (ties: copies of one item, by index).
            let (mut own, mut peer) = join_values(&own_values, &indices, &peer_values, base);
            own.par_sort_unstable();
            peer.par_sort_unstable();
            (
                own.into_iter().map(|(_, i)| i).collect::<Vec<u32>>(),
                peer.into_iter().map(|(_, p)| p).collect::<Vec<u32>>(),
            )
        });
        if let Some(pending) = pending {
            let clock = Instant::now();
            vole_next = Some(VoleReceiver::extend_finish(channel, pending).await?);
            timings.add("vole", clock);
        }
        let clock = Instant::now();
        let (own, peer) = matching.await;
        timings.add("match (beyond vole)", clock);
        own_matches.extend(own);
        sender_matches.extend(peer);
        done += digests.len();
        progress.report("intersect buckets", done, total);
    }
    Ok(ReceiverResult { own: own_matches, sender_positions: sender_matches })
}

/// S's secret order of one bucket: stream position → own item index, or [`DUMMY`].
type BucketOrder = Vec<u32>;

async fn run_sender<C: Channel>(
    channel: &C,
    buckets: &Buckets,
    layout: &Layout,
    progress: &Progress<'_>,
    timings: &mut Timings,
) -> Result<Vec<BucketOrder>, Rr22Error> {
    let clock = Instant::now();
    let mut vole = VoleSender::setup(channel).await?;
    timings.add("vole setup", clock);
    let delta = vole.delta();
    let mask = value_mask(layout.value_bytes);
    let m = okvs::cells_for(layout.cap_receiver);
    let total = buckets.items;
    let mut orders = Vec::with_capacity(layout.buckets);
    let mut done = 0usize;
    // Bucket b + 1's VOLE is received and its trees built while bucket b's OPRF values are
    // computed; its tree messages go out after bucket b's values (the receiver reads in that order).
    let clock = Instant::now();
    let first = match layout.buckets {
        0 => None,
        _ => Some(vole.extend_start(channel, m).await?),
    };
    let mut vole_next = match first {
        Some(pending) => Some(VoleSender::extend_finish(channel, pending).await?),
        None => None,
    };
    timings.add("vole", clock);
    for b in 0..layout.buckets {
        let (digests, indices) = buckets.bucket(b);
        let vole_b = vole_next.take().expect("extended");
        let clock = Instant::now();
        let (seed, masked) = recv_cells(channel, b, m).await?;
        timings.add("wait for and receive okvs", clock);
        let clock = Instant::now();
        let digests_owned = digests.to_vec();
        let indices_owned = indices.to_vec();
        let cap = layout.cap_sender;
        let oprf = cpu::spawn(move || {
            // K = B + (A + P)·Δ.
            let mut key = Zeroizing::new(masked);
            key.par_iter_mut().zip(vole_b.par_iter()).for_each(|(k, &b)| *k = b ^ gf128::mul(*k, delta));
            let store = Okvs::from_cells(seed, &key[..]).expect("m cells");
            let mut out = vec![0u128; digests_owned.len()];
            store.decode_batch(&digests_owned, &mut out);
            let mut v = vec![0u128; digests_owned.len()];
            okvs_values(&digests_owned, &mut v);
            out.par_iter_mut().zip(v.par_iter()).for_each(|(o, &v)| *o ^= gf128::mul(delta, v));
            output_hash(&digests_owned, &mut out, mask);
            // The stream: own values and random dummies, in a secret random order.
            let mut rng = os_rng();
            let mut order: Vec<u32> = (0..cap as u32).collect();
            order.shuffle(&mut rng);
            let real = digests_owned.len() as u32;
            let values: Vec<u128> =
                order.iter().map(|&k| if k < real { out[k as usize] } else { rng.random::<u128>() & mask }).collect();
            let order: Vec<u32> =
                order.iter().map(|&k| if k < real { indices_owned[k as usize] } else { DUMMY }).collect();
            (values, order)
        });
        let pending = match b + 1 < layout.buckets {
            true => Some(vole.extend_start(channel, m).await?),
            false => None,
        };
        let (values, order) = oprf.await;
        timings.add("oprf values and next vole", clock);
        let clock = Instant::now();
        send_values(channel, b, layout.value_bytes, &values).await?;
        timings.add("send values", clock);
        if let Some(pending) = pending {
            let clock = Instant::now();
            vole_next = Some(VoleSender::extend_finish(channel, pending).await?);
            timings.add("vole", clock);
        }
        orders.push(order);
        done += digests.len();
        progress.report("intersect buckets", done, total);
    }
    Ok(orders)
}

/// (F value, index or position) pairs.
type Matches = Vec<(u128, u32)>;

/// Matches R's F values of a bucket against S's: returns (value, own index) of every own item
/// whose value S sent, and (value, `base` + position) of every S position whose value R has.
///
/// A partitioned hash join: both lists are split by the values' low bits into partitions of a
/// few thousand (F values are pseudorandom), so each partition's table stays in cache, and the
/// partitions run in parallel. Equal values (duplicate items) all match.
fn join_values(own: &[u128], own_index: &[u32], peer: &[u128], base: u32) -> (Matches, Matches) {
    let parts = (own.len() / 2048).next_power_of_two().clamp(1, 1 << 12);
    let bits = parts.trailing_zeros();
    let split = |values: &[u128], id: &dyn Fn(usize) -> u32| -> (Vec<(u128, u32)>, Vec<usize>) {
        let mut counts = vec![0usize; parts + 1];
        for &v in values {
            counts[(v as usize & (parts - 1)) + 1] += 1;
        }
        for p in 0..parts {
            counts[p + 1] += counts[p];
        }
        let mut next = counts.clone();
        let mut out = vec![(0u128, 0u32); values.len()];
        for (k, &v) in values.iter().enumerate() {
            let p = v as usize & (parts - 1);
            out[next[p]] = (v, id(k));
            next[p] += 1;
        }
        (out, counts)
    };
    let (own_parts, own_at) = split(own, &|k| own_index[k]);
    let (peer_parts, peer_at) = split(peer, &|k| base + k as u32);
    (0..parts)
        .into_par_iter()
        .map(|p| {
            let own = &own_parts[own_at[p]..own_at[p + 1]];
            let peer = &peer_parts[peer_at[p]..peer_at[p + 1]];
            let size = (2 * own.len()).next_power_of_two().max(8);
            let mask = size - 1;
            let mut slots = vec![u32::MAX; size];
            for (e, &(v, _)) in own.iter().enumerate() {
                let mut s = (v >> bits) as usize & mask;
                while slots[s] != u32::MAX {
                    s = (s + 1) & mask;
                }
                slots[s] = e as u32;
            }
            let mut matched = vec![false; own.len()];
            let mut peer_matches = Vec::new();
            for &(v, position) in peer {
                let mut s = (v >> bits) as usize & mask;
                let mut found = false;
                while slots[s] != u32::MAX {
                    let e = slots[s] as usize;
                    if own[e].0 == v {
                        matched[e] = true;
                        found = true;
                    }
                    s = (s + 1) & mask;
                }
                if found {
                    peer_matches.push((v, position));
                }
            }
            let own_matches: Vec<(u128, u32)> =
                own.iter().zip(&matched).filter(|&(_, &m)| m).map(|(&entry, _)| entry).collect();
            (own_matches, peer_matches)
        })
        .reduce(
            || (Vec::new(), Vec::new()),
            |mut a, b| {
                a.0.extend(b.0);
                a.1.extend(b.1);
                a
            },
        )
}

async fn send_cells<C: Channel>(channel: &C, bucket: usize, seed: OkvsSeed, cells: &[u128]) -> Result<(), Rr22Error> {
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

async fn recv_cells<C: Channel>(channel: &C, bucket: usize, m: usize) -> Result<(OkvsSeed, Vec<u128>), Rr22Error> {
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

async fn send_values<C: Channel>(channel: &C, bucket: usize, width: usize, values: &[u128]) -> Result<(), Rr22Error> {
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

async fn recv_values<C: Channel>(channel: &C, bucket: usize, layout: &Layout) -> Result<Vec<u128>, Rr22Error> {
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

async fn send_positions<C: Channel>(channel: &C, positions: &[u32]) -> Result<(), Rr22Error> {
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

async fn recv_positions<C: Channel>(
    channel: &C,
    orders: &[BucketOrder],
    layout: &Layout,
) -> Result<Vec<u32>, Rr22Error> {
    let mut own = Vec::new();
    let mut at = 0usize;
    let limit = layout.buckets * layout.cap_sender;
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
            return Ok(own);
        }
        for p in frame[5..].chunks_exact(4) {
            let p = u32::from_be_bytes(p.try_into().expect("4")) as usize;
            if p >= limit {
                return Err(violation(format!("matched position {p} outside the {limit} sent")));
            }
            // A dummy can match only by a false positive (below 2^-40): skip it.
            let index = orders[p / layout.cap_sender][p % layout.cap_sender];
            if index != DUMMY {
                own.push(index);
            }
            at += 1;
        }
        if own.len() > limit {
            return Err(violation("more matched positions than values sent"));
        }
    }
}

#[cfg(test)]
mod tests;
