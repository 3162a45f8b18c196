//! Base OT: a batch of random 1-out-of-2 OTs from Diffie–Hellman on ristretto255, following
//! Masny and Rindal, "Endemic Oblivious Transfer" (ACM CCS 2019, eprint 2019/706): the
//! two-message OT built from a key agreement with a two-round Feistel over a hash-to-group.
//!
//! # What it computes
//!
//! For `count` OTs (128 for OT extension): the **sender** gets pairs of 128-bit keys
//! `(k_i^0, k_i^1)`; the **receiver** gets choice bits `b_i` (random, or its own) and
//! `k_i^{b_i}`. Keys are pseudorandom: this is *random* OT; to transfer chosen messages, use the
//! keys as one-time pads. Let G be the ristretto255 base point, H a hash to the group and
//! KDF a key-derivation hash (both below). One message each way, sent concurrently:
//!
//! 1. **Sender:** samples a ← Z_ℓ, sends A = a·G (one A for the whole batch).
//! 2. **Receiver,** for each i with choice b: samples β_i ← Z_ℓ and a uniform point
//!    r_i^{1−b}, and sets r_i^b = β_i·G − H(i, r_i^{1−b}). It sends (r_i^0, r_i^1).
//! 3. **Sender,** for j ∈ {0, 1}: m_i^j = r_i^j + H(i, r_i^{1−j}) and
//!    k_i^j = KDF(i, j, A, r_i^0, r_i^1, a·m_i^j).
//! 4. **Receiver:** k_i^b = KDF(i, b, A, r_i^0, r_i^1, β_i·A). Correct because m_i^b = β_i·G.
//!
//! # What each party learns
//!
//! The sender sees (r_i^0, r_i^1): both are uniform points whatever b is (r^{1−b} is sampled
//! uniformly, r^b is a uniform β·G shifted), so it learns nothing about the choice bits. The
//! receiver knows the discrete log of m^b only: m^{1−b} = r^{1−b} + H(i, r^b) involves a hash
//! output it cannot control without also changing r^b, so computing a·m^{1−b} is a CDH instance
//! and k^{1−b} stays pseudorandom to it.
//!
//! # Security model: malicious, random-oracle model
//!
//! Masny–Rindal prove this construction UC-secure against **malicious** adversaries for
//! *endemic* OT, with H (and the KDF) programmable random oracles and a key agreement with
//! uniform messages (here Diffie–Hellman in ristretto255, under CDH). "Endemic" means a corrupt
//! party may pick its own outputs (e.g. a malicious receiver can choose which key it gets), which
//! is all OT extension needs: IKNP only relies on the *other* key being hidden. The sender reuses
//! one a for the batch, as libOTe does; each OT's keys are bound to its index and the whole
//! transcript (A, r^0, r^1) by the KDF, and H is domain-separated by index.
//!
//! Why not "Simplest OT" (Chou–Orlandi 2015): its UC proof was found flawed (Genç, Iovino, Rial,
//! eprint 2017/370; Hauck, Loss, eprint 2017/1011), in particular against a malicious sender when
//! A is reused; MR19 costs about the same (the sender does 2 variable-base multiplications per
//! OT, the receiver 1 plus 1 fixed-base) and has a clean proof.
//!
//! Secrets (a, β_i, the random points, shared points, keys, choice bits) are zeroized; all
//! secret-dependent work is constant-time (dalek's scalar multiplication and point decoding,
//! `subtle` selection on the choice bit; SHA-2 does not branch on data). Malformed messages
//! (wrong kind, count or length, invalid point encodings, A = identity) are
//! [`OtError::Protocol`] errors.
//!
//! # Wire format
//!
//! | frame    | from     | kind   | body                                                       |
//! |----------|----------|--------|------------------------------------------------------------|
//! | sender   | sender   | `0x10` | count `u32` BE, A (32 bytes)                               |
//! | receiver | receiver | `0x11` | count `u32` BE, `count` × (r^0 ‖ r^1) (64 bytes each)      |
//!
//! Both frames are sent before either party reads, so the protocol takes one round trip's
//! latency; `count` ≤ [`MAX_BASE_OTS`] keeps the receiver's frame under ~0.5 MiB.
//!
//! Hashes: H(i, r) = the ristretto255 one-way map (RFC 9496 §4.3.4) of
//! SHA-512(`"consort/ot/base/mr19/v1/hash-to-group"` ‖ i (u64 BE) ‖ enc(r)); KDF = the first 16
//! bytes (read as a little-endian block) of SHA-256(`"consort/ot/base/mr19/v1/key"` ‖ i (u64 BE)
//! ‖ j (u8) ‖ enc(A) ‖ enc(r^0) ‖ enc(r^1) ‖ enc(shared point)).

use bytes::{BufMut, Bytes, BytesMut};
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};
use subtle::{Choice, ConditionallySelectable};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{ChoiceBits, OtError, os_random, protocol};
use crate::channel::Channel;
use crate::cpu;

/// The largest batch one run accepts.
pub const MAX_BASE_OTS: usize = 8192;

const KIND_SENDER: u8 = 0x10;
const KIND_RECEIVER: u8 = 0x11;
const HASH_TO_GROUP_DOMAIN: &[u8] = b"consort/ot/base/mr19/v1/hash-to-group";
const KDF_DOMAIN: &[u8] = b"consort/ot/base/mr19/v1/key";
const HEADER: usize = 5;
const PAIR: usize = 64;

/// The sender's output: `count` pairs of random keys. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BaseOtSenderOutput {
    keys: Vec<[u128; 2]>,
}

impl BaseOtSenderOutput {
    /// `keys()[i] = [k_i^0, k_i^1]`.
    pub fn keys(&self) -> &[[u128; 2]] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The receiver's output: its choice bits and the chosen keys. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BaseOtReceiverOutput {
    choices: ChoiceBits,
    keys: Vec<u128>,
}

impl BaseOtReceiverOutput {
    /// `b_i`.
    pub fn choices(&self) -> &ChoiceBits {
        &self.choices
    }

    /// `keys()[i] = k_i^{b_i}`.
    pub fn keys(&self) -> &[u128] {
        &self.keys
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl std::fmt::Debug for BaseOtSenderOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BaseOtSenderOutput({} OTs)", self.keys.len())
    }
}

impl std::fmt::Debug for BaseOtReceiverOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BaseOtReceiverOutput({} OTs)", self.keys.len())
    }
}

/// Runs `count` base OTs as the sender.
///
/// # Panics
///
/// If `count > MAX_BASE_OTS`, or the OS random number generator fails.
pub async fn send<C: Channel>(channel: &C, count: usize) -> Result<BaseOtSenderOutput, OtError> {
    assert!(count <= MAX_BASE_OTS, "{count} base OTs in one batch (at most {MAX_BASE_OTS})");
    let a = Zeroizing::new(random_scalar());
    let big_a = RistrettoPoint::mul_base(&a).compress();
    let mut frame = BytesMut::with_capacity(HEADER + 32);
    frame.put_u8(KIND_SENDER);
    frame.put_u32(count as u32);
    frame.put_slice(big_a.as_bytes());
    channel.send(frame.freeze()).await?;

    let reply = channel.recv().await?;
    let pairs = parse(&reply, KIND_RECEIVER, count, PAIR, "receiver")?;
    let keys = cpu::run(move || {
        (0..count)
            .into_par_iter()
            .map(|i| {
                let pair = &pairs[i * PAIR..(i + 1) * PAIR];
                sender_keys(i as u64, &a, &big_a, pair[..32].try_into().unwrap(), pair[32..].try_into().unwrap())
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(BaseOtSenderOutput { keys })
}

/// Runs `count` base OTs as the receiver with uniformly random choice bits.
///
/// # Panics
///
/// If `count > MAX_BASE_OTS`, or the OS random number generator fails.
pub async fn receive<C: Channel>(channel: &C, count: usize) -> Result<BaseOtReceiverOutput, OtError> {
    receive_with_choices(channel, ChoiceBits::random(count)).await
}

/// Runs `choices.len()` base OTs as the receiver with the given choice bits.
///
/// # Panics
///
/// If there are more than `MAX_BASE_OTS` choices, or the OS random number generator fails.
pub async fn receive_with_choices<C: Channel>(
    channel: &C,
    choices: ChoiceBits,
) -> Result<BaseOtReceiverOutput, OtError> {
    let count = choices.len();
    assert!(count <= MAX_BASE_OTS, "{count} base OTs in one batch (at most {MAX_BASE_OTS})");
    // Per OT: 64 bytes for β_i (wide reduction: no bias), 64 for the uniform point r^{1−b}.
    let mut randomness = Zeroizing::new(vec![0u8; count * 128]);
    os_random(&mut randomness);
    let choices_for_cpu = choices.clone();
    let (secrets, frame) = cpu::run(move || receiver_message(&choices_for_cpu, &randomness)).await;
    channel.send(frame.clone()).await?;

    let reply = channel.recv().await?;
    let big_a = parse(&reply, KIND_SENDER, count, 0, "sender")?;
    let big_a = CompressedRistretto::from_slice(&big_a[..32]).expect("32 bytes");
    let a_point =
        big_a.decompress().ok_or_else(|| protocol("base OT: the sender's A is not a valid ristretto255 encoding"))?;
    if a_point == RistrettoPoint::default() {
        return Err(protocol("base OT: the sender's A is the identity"));
    }
    let keys = cpu::run(move || {
        (0..count)
            .into_par_iter()
            .map(|i| {
                let pair = &frame[HEADER + i * PAIR..HEADER + (i + 1) * PAIR];
                let mut shared = (secrets[i].0 * a_point).compress().to_bytes();
                let key = derive_key(i as u64, secrets[i].1, &big_a, pair, &shared);
                shared.zeroize();
                key
            })
            .collect::<Vec<_>>()
    })
    .await;
    Ok(BaseOtReceiverOutput { choices, keys })
}

/// Checks kind and count and returns the body after the header, which must hold `count` items of
/// `item` bytes (or, with `item == 0`, exactly one 32-byte point).
fn parse(frame: &Bytes, kind: u8, count: usize, item: usize, from: &str) -> Result<Bytes, OtError> {
    if frame.len() < HEADER || frame[0] != kind {
        return Err(protocol(format!("base OT: expected the {from}'s message")));
    }
    let theirs = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
    if theirs != count {
        return Err(protocol(format!("base OT: the {from} runs {theirs} OTs, this party {count}")));
    }
    let body_len = if item == 0 { 32 } else { count * item };
    if frame.len() != HEADER + body_len {
        return Err(protocol(format!("base OT: the {from}'s message has the wrong length")));
    }
    Ok(frame.slice(HEADER..))
}

/// The receiver's per-OT secrets: β_i and its choice bit.
type ReceiverSecrets = Zeroizing<Vec<(Scalar, u8)>>;

/// Step 2 for every OT: returns the secrets and the frame to send.
fn receiver_message(choices: &ChoiceBits, randomness: &[u8]) -> (ReceiverSecrets, Bytes) {
    let count = choices.len();
    let per_ot: Vec<(Scalar, [u8; PAIR])> = (0..count)
        .into_par_iter()
        .map(|i| {
            let wide: &[u8; 64] = randomness[128 * i..128 * i + 64].try_into().unwrap();
            let uniform: &[u8; 64] = randomness[128 * i + 64..128 * (i + 1)].try_into().unwrap();
            let beta = Scalar::from_bytes_mod_order_wide(wide);
            let mut other = RistrettoPoint::from_uniform_bytes(uniform); // r^{1−b}
            let mut own = RistrettoPoint::mul_base(&beta) - hash_to_group(i as u64, &other.compress());
            let b = Choice::from(choices.get(i) as u8);
            // b = 0: (r^0, r^1) = (own, other); b = 1: (other, own). Constant-time in b.
            let r0 = RistrettoPoint::conditional_select(&own, &other, b);
            let r1 = RistrettoPoint::conditional_select(&other, &own, b);
            let mut pair = [0u8; PAIR];
            pair[..32].copy_from_slice(r0.compress().as_bytes());
            pair[32..].copy_from_slice(r1.compress().as_bytes());
            own.zeroize();
            other.zeroize();
            (beta, pair)
        })
        .collect();
    let mut frame = BytesMut::with_capacity(HEADER + count * PAIR);
    frame.put_u8(KIND_RECEIVER);
    frame.put_u32(count as u32);
    let mut secrets = Zeroizing::new(Vec::with_capacity(count));
    for (i, (beta, pair)) in per_ot.into_iter().enumerate() {
        frame.put_slice(&pair);
        secrets.push((beta, choices.get(i) as u8));
    }
    (secrets, frame.freeze())
}

/// Step 3 for OT `i`: both keys from the receiver's pair (r^0, r^1).
fn sender_keys(
    i: u64,
    a: &Scalar,
    big_a: &CompressedRistretto,
    r0: &[u8; 32],
    r1: &[u8; 32],
) -> Result<[u128; 2], OtError> {
    let decode = |bytes: &[u8; 32]| {
        CompressedRistretto(*bytes).decompress().ok_or_else(|| {
            protocol(format!("base OT: point {i} of the receiver's message is not a valid ristretto255 encoding"))
        })
    };
    let (p0, p1) = (decode(r0)?, decode(r1)?);
    let mut pair = [0u8; PAIR];
    pair[..32].copy_from_slice(r0);
    pair[32..].copy_from_slice(r1);
    let mut keys = [0u128; 2];
    for (j, (r, other)) in [(p0, r1), (p1, r0)].into_iter().enumerate() {
        let mut m = r + hash_to_group(i, &CompressedRistretto(*other));
        let mut shared = (a * m).compress().to_bytes();
        keys[j] = derive_key(i, j as u8, big_a, &pair, &shared);
        shared.zeroize();
        m.zeroize();
    }
    Ok(keys)
}

/// H(i, r): the hash to the group, domain-separated by OT index.
fn hash_to_group(i: u64, point: &CompressedRistretto) -> RistrettoPoint {
    RistrettoPoint::from_hash(
        Sha512::new().chain_update(HASH_TO_GROUP_DOMAIN).chain_update(i.to_be_bytes()).chain_update(point.as_bytes()),
    )
}

/// KDF(i, j, A, r^0, r^1, shared).
fn derive_key(i: u64, j: u8, big_a: &CompressedRistretto, pair: &[u8], shared: &[u8; 32]) -> u128 {
    let mut digest = Sha256::new()
        .chain_update(KDF_DOMAIN)
        .chain_update(i.to_be_bytes())
        .chain_update([j])
        .chain_update(big_a.as_bytes())
        .chain_update(pair)
        .chain_update(shared)
        .finalize();
    let key = u128::from_le_bytes(digest[..16].try_into().unwrap());
    digest.as_mut_slice().zeroize();
    key
}

/// A uniform scalar from 64 OS-random bytes (wide reduction: negligible bias).
fn random_scalar() -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    os_random(&mut wide[..]);
    Scalar::from_bytes_mod_order_wide(&wide)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::memory_pair;

    async fn run_pair(count: usize, choices: Option<ChoiceBits>) -> (BaseOtSenderOutput, BaseOtReceiverOutput) {
        let (a, b) = memory_pair(4);
        let receiver = async {
            match choices {
                Some(c) => receive_with_choices(&b, c).await,
                None => receive(&b, count).await,
            }
        };
        let (s, r) = futures::join!(send(&a, count), receiver);
        (s.unwrap(), r.unwrap())
    }

    #[tokio::test]
    async fn chosen_key_matches_and_the_other_differs() {
        let (s, r) = run_pair(128, None).await;
        assert_eq!((s.len(), r.len()), (128, 128));
        let ones = r.choices().iter().filter(|&b| b).count();
        assert!((20..=108).contains(&ones), "choice bits look biased: {ones} of 128");
        for i in 0..128 {
            let b = r.choices().get(i) as usize;
            assert_eq!(r.keys()[i], s.keys()[i][b], "OT {i}");
            assert_ne!(r.keys()[i], s.keys()[i][1 - b], "OT {i}");
        }
        // Keys are distinct across OTs and runs.
        let mut all: Vec<u128> = s.keys().iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    #[tokio::test]
    async fn given_choices_are_used() {
        let bits: Vec<bool> = (0..37).map(|i| i % 3 == 0).collect();
        let (s, r) = run_pair(37, Some(ChoiceBits::from_bools(&bits))).await;
        for (i, &b) in bits.iter().enumerate() {
            assert_eq!(r.choices().get(i), b);
            assert_eq!(r.keys()[i], s.keys()[i][b as usize]);
        }
        let (s, r) = run_pair(0, None).await;
        assert!(s.is_empty() && r.is_empty());
    }

    #[tokio::test]
    async fn mismatched_counts_and_bad_points_are_protocol_errors() {
        let (a, b) = memory_pair(4);
        let (s, r) = futures::join!(send(&a, 10), receive(&b, 11));
        assert!(matches!(s, Err(OtError::Protocol(_))), "{s:?}");
        assert!(matches!(r, Err(OtError::Protocol(_))), "{r:?}");

        // A receiver message whose points are not valid encodings.
        let (a, b) = memory_pair(4);
        let mut frame = vec![KIND_RECEIVER, 0, 0, 0, 1];
        frame.extend_from_slice(&[0xff; 64]);
        b.send(Bytes::from(frame)).await.unwrap();
        let s = send(&a, 1).await;
        assert!(matches!(s, Err(OtError::Protocol(_))), "{s:?}");
    }

    #[tokio::test]
    async fn a_peer_that_goes_away_is_an_error_not_a_hang() {
        let (a, b) = memory_pair(4);
        drop(b);
        let s = tokio::time::timeout(std::time::Duration::from_secs(10), send(&a, 128)).await;
        assert!(matches!(s, Ok(Err(OtError::Channel(_)))), "{s:?}");

        let (a, b) = memory_pair(4);
        let receiver = async {
            let r = receive(&b, 128).await;
            drop(b);
            r
        };
        // The sender reads the receiver's message and then vanishes without answering.
        let sender = async move {
            let _ = a.recv().await;
            drop(a);
        };
        let (r, ()) =
            tokio::time::timeout(std::time::Duration::from_secs(10), async { futures::join!(receiver, sender) })
                .await
                .expect("hang");
        assert!(matches!(r, Err(OtError::Channel(_))), "{r:?}");
    }
}
