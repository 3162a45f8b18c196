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
//! | payload width | S | `0x44` | (labeled PSI only, once, after the hellos) padded payload width W `u32` ([`crate::psi::payload`]) |
//! | payloads  | S    | `0x45` | (labeled PSI only, after each bucket's values) bucket `u32`, first position `u32`, AES-GCM ciphertexts of W + 16 bytes each, in the values' order |
//!
//! Integers are big-endian. Per item of a full bucket (2^20 items): ≈ 1.1·16 = 17.6 bytes of
//! OKVS from R, ℓ/8 ≈ 10–11 bytes of values from S, ≈ 1.3 bytes of VOLE, plus 4 bytes per
//! intersecting item with [`Reveal::Both`]: about 30 bytes per item of the larger set in total.
//! The VOLE's base correlations cost a fixed ≈ 1.4 MB per bucket, which dominates small jobs
//! (≈ 21 bytes per item at 2^16 items).
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
    let progress = Progress(config.progress.as_ref());
    progress.report("hash items", 0, n);
    let mut timings = Timings::default();
    let clock = Instant::now();
    let buckets = bucketize(items, salt, &layout, config.role).await?;
    timings.add("hash and bucket", clock);
    progress.report("hash items", n, n);
    let peer_size = peer.size;
    let mut payloads = None;
    let intersection = match config.role {
        Role::Requester => {
            let keys = payload_width.map(|width| PayloadKeys { salt, width });
            let order = run_receiver(channel, &buckets, &layout, keys, &progress, &mut timings).await?;
            payloads = order.payloads;
            if config.reveal == Reveal::Both {
                let clock = Instant::now();
                send_positions(channel, &order.sender_positions).await?;
                timings.add("send matched positions", clock);
            }
            Some(order.own)
        }
        Role::Responder => {
            let sent = match (&config.payload, payload_width) {
                (PayloadMode::Send(p), Some(width)) => Some((p.clone(), PayloadKeys { salt, width })),
                _ => None,
            };
            let orders = run_sender(channel, &buckets, &layout, sent, &progress, &mut timings).await?;
            let clock = Instant::now();
            let own = match config.reveal {
                Reveal::Both => Some(recv_positions(channel, &orders, &layout).await?),
                Reveal::RequesterOnly => None,
            };
            timings.add("wait for and receive matched positions", clock);
            own
        }
    };
    Ok(PsiOutput { peer_size, intersection, payloads, timings: timings.into_vec() })
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
