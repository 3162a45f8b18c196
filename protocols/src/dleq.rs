//! Batched Chaum–Pedersen proofs of discrete-log equality (DLEQ) on ristretto255, in the style of
//! RFC 9497 §2.2 (the VOPRF proof), with the composite of §2.2.1.
//!
//! # What a proof proves
//!
//! A prover holds a secret scalar `k` and has published `B = k·G` (`G` the ristretto255 base
//! point). For a list of pairs `(C_i, D_i)` a proof shows, with soundness error about `2^-128`,
//! that `D_i = k·C_i` for *every* `i`, with the same `k` as in `B`, and reveals nothing about `k`
//! beyond that (honest-verifier zero knowledge, made non-interactive by Fiat–Shamir with SHA-512
//! modeled as a random oracle). Anyone holding `B`, the pairs and the proof can check it offline.
//!
//! # Construction
//!
//! 1. Composite (RFC 9497 §2.2.1, `ComputeComposites`): `seed = SHA-512(len || B || len ||
//!    "Seed-" || context)`; for each pair `d_i = H(seed || i || C_i || D_i || "Composite")`;
//!    `M = Σ d_i·C_i`, `Z = Σ d_i·D_i`. If some `D_i ≠ k·C_i`, then `Z = k·M` holds for at most a
//!    `2^-128` fraction of coefficient vectors, and the prover cannot choose the `d_i` (they hash
//!    the pairs), so one proof for `(M, Z)` covers all pairs.
//! 2. Chaum–Pedersen on `(G, B, M, Z)`: the prover picks a random `r`, sends `c = H(B, M, Z, r·G,
//!    r·M)` and `s = r − c·k`; the verifier recomputes `t2 = s·G + c·B`, `t3 = s·M + c·Z` and
//!    checks that `c` hashes them.
//!
//! Deviations from RFC 9497, on purpose: the pair index is a `u64` (the RFC's 2-byte index limits a
//! batch to 65 535 pairs); the composite coefficients `d_i` are 128-bit (the first 16 bytes of a
//! SHA-512 output) instead of full scalars, which keeps the batching error at `2^-128` while
//! halving the multiscalar work of prover and verifier; all hashes are SHA-512 with our own domain
//! strings (`context`), so proofs of one protocol cannot be replayed in another.
//!
//! The prover's work is one variable-time multiscalar multiplication over the public `C_i` (then
//! `Z = k·M`); the verifier's is two (over `C_i` and `D_i`) plus decoding. Variable time is safe
//! here because all inputs of the multiscalar multiplications are public; `k` only enters the
//! constant-time `mul_base` and the scalar arithmetic of `s`.
//!
//! # Sampled audits
//!
//! [`sample_indices`] draws `t` distinct pair indices from a Merkle root over the pairs
//! (Fiat–Shamir), so an auditor can check a proof over a sample instead of all pairs; see
//! [`detection_probability`].

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{Identity, VartimeMultiscalarMul};
use rand::TryRng;
use rand::rngs::SysRng;
use rayon::prelude::*;
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

/// Bytes of an encoded proof: `c || s`, two canonical scalars.
pub const PROOF_LEN: usize = 64;

/// Pairs per rayon task when computing a composite.
const CHUNK: usize = 2048;

/// A DLEQ proof `(c, s)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    pub c: Scalar,
    pub s: Scalar,
}

impl Proof {
    pub fn to_bytes(&self) -> [u8; PROOF_LEN] {
        let mut out = [0u8; PROOF_LEN];
        out[..32].copy_from_slice(self.c.as_bytes());
        out[32..].copy_from_slice(self.s.as_bytes());
        out
    }

    /// `None` unless both halves are canonical scalars.
    pub fn from_bytes(bytes: &[u8]) -> Option<Proof> {
        if bytes.len() != PROOF_LEN {
            return None;
        }
        let c = Option::from(Scalar::from_canonical_bytes(bytes[..32].try_into().ok()?))?;
        let s = Option::from(Scalar::from_canonical_bytes(bytes[32..].try_into().ok()?))?;
        Some(Proof { c, s })
    }
}

/// Why a DLEQ check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DleqError {
    #[error("the key commitment is not the encoding of a non-identity ristretto255 point")]
    BadCommitment,
    #[error("the {side} point of pair {index} is not a valid ristretto255 encoding")]
    BadPoint { side: &'static str, index: u64 },
    #[error("the pair lists have different lengths or are not whole 32-byte points")]
    BadLengths,
    #[error("the proof does not verify: the points were not all multiplied by the committed key")]
    Invalid,
}

/// `B = k·G`, the public commitment to `k` (constant time in `k`).
pub fn commit(key: &Scalar) -> CompressedRistretto {
    RistrettoPoint::mul_base(key).compress()
}

/// Decodes a key commitment; the identity is refused (it would commit to `k = 0`).
pub fn decode_commitment(bytes: &[u8; 32]) -> Result<RistrettoPoint, DleqError> {
    let point = CompressedRistretto(*bytes).decompress().ok_or(DleqError::BadCommitment)?;
    if point == RistrettoPoint::identity() {
        return Err(DleqError::BadCommitment);
    }
    Ok(point)
}

/// RFC 9497 `seed`: binds the composite to the commitment and the context.
pub fn composite_seed(context: &[u8], commitment: &CompressedRistretto) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(32u16.to_be_bytes());
    h.update(commitment.as_bytes());
    h.update(((5 + context.len()) as u16).to_be_bytes());
    h.update(b"Seed-");
    h.update(context);
    h.finalize().into()
}

/// The composite coefficient `d_i` of pair `index` (128 bits).
pub fn coefficient(seed: &[u8; 64], index: u64, c: &[u8], d: &[u8]) -> Scalar {
    let digest = Sha512::new()
        .chain_update(seed)
        .chain_update(index.to_be_bytes())
        .chain_update(c)
        .chain_update(d)
        .chain_update(b"Composite")
        .finalize();
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&digest[..16]);
    Scalar::from_bytes_mod_order(bytes)
}

/// Coefficients for consecutive pairs starting at index `first` (`c` and `d` hold 32-byte encodings).
pub fn coefficients(seed: &[u8; 64], first: u64, c: &[u8], d: &[u8]) -> Vec<Scalar> {
    c.chunks_exact(32)
        .zip(d.chunks_exact(32))
        .enumerate()
        .map(|(i, (ci, di))| coefficient(seed, first + i as u64, ci, di))
        .collect()
}

/// `(M, Z)` over consecutive pairs `first..` given as encodings, decoding each point (parallel).
pub fn composite(
    seed: &[u8; 64],
    first: u64,
    c: &[u8],
    d: &[u8],
) -> Result<(RistrettoPoint, RistrettoPoint), DleqError> {
    if c.len() != d.len() || !c.len().is_multiple_of(32) {
        return Err(DleqError::BadLengths);
    }
    let identity = || (RistrettoPoint::identity(), RistrettoPoint::identity());
    c.par_chunks(32 * CHUNK)
        .zip(d.par_chunks(32 * CHUNK))
        .enumerate()
        .map(|(chunk, (c, d))| {
            let start = first + (chunk * CHUNK) as u64;
            let cs = decode_all(c, "first", start)?;
            let ds = decode_all(d, "second", start)?;
            let coeffs = coefficients(seed, start, c, d);
            Ok((
                RistrettoPoint::vartime_multiscalar_mul(&coeffs, &cs),
                RistrettoPoint::vartime_multiscalar_mul(&coeffs, &ds),
            ))
        })
        .try_reduce(identity, |a, b| Ok((a.0 + b.0, a.1 + b.1)))
}

/// Decodes consecutive 32-byte encodings (`side` and `first` name a bad one in the error).
pub fn decode_all(encodings: &[u8], side: &'static str, first: u64) -> Result<Vec<RistrettoPoint>, DleqError> {
    encodings
        .chunks_exact(32)
        .enumerate()
        .map(|(i, e)| {
            CompressedRistretto(e.try_into().expect("32 bytes"))
                .decompress()
                .ok_or(DleqError::BadPoint { side, index: first + i as u64 })
        })
        .collect()
}

fn challenge(context: &[u8], b: &CompressedRistretto, points: [&RistrettoPoint; 4]) -> Scalar {
    let mut h = Sha512::new();
    h.update(context);
    h.update(b"Challenge");
    h.update(b.as_bytes());
    for p in points {
        h.update(p.compress().as_bytes());
    }
    Scalar::from_hash(h)
}

/// Proves `Z = k·M` and `B = k·G` (Chaum–Pedersen), where the caller computed `(M, Z)` as the
/// composite of its pairs. `k` must be the key behind `commitment`.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub fn prove(
    context: &[u8],
    key: &Scalar,
    commitment: &CompressedRistretto,
    m: &RistrettoPoint,
    z: &RistrettoPoint,
) -> Proof {
    let mut wide = Zeroizing::new([0u8; 64]);
    SysRng.try_fill_bytes(&mut wide[..]).expect("the operating system's random number generator failed");
    let r = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
    let t2 = RistrettoPoint::mul_base(&r);
    let t3 = m * *r;
    let c = challenge(context, commitment, [m, z, &t2, &t3]);
    Proof { c, s: *r - c * key }
}

/// Checks a proof that `Z = k·M` for the `k` behind `commitment`.
pub fn verify(
    context: &[u8],
    commitment: &CompressedRistretto,
    m: &RistrettoPoint,
    z: &RistrettoPoint,
    proof: &Proof,
) -> Result<(), DleqError> {
    let b = decode_commitment(commitment.as_bytes())?;
    let t2 = RistrettoPoint::vartime_double_scalar_mul_basepoint(&proof.c, &b, &proof.s);
    let t3 = RistrettoPoint::vartime_multiscalar_mul([proof.s, proof.c], [*m, *z]);
    if challenge(context, commitment, [m, z, &t2, &t3]) == proof.c { Ok(()) } else { Err(DleqError::Invalid) }
}

/// Proves that `d_i = k·c_i` for all pairs given as encodings (indices from 0).
pub fn prove_pairs(context: &[u8], key: &Scalar, c: &[u8], d: &[u8]) -> Result<Proof, DleqError> {
    let commitment = commit(key);
    let seed = composite_seed(context, &commitment);
    let (m, _) = composite(&seed, 0, c, d)?;
    Ok(prove(context, key, &commitment, &m, &(m * key)))
}

/// Verifies a proof over all pairs given as encodings (indices from 0).
pub fn verify_pairs(
    context: &[u8],
    commitment: &CompressedRistretto,
    c: &[u8],
    d: &[u8],
    proof: &Proof,
) -> Result<(), DleqError> {
    let seed = composite_seed(context, commitment);
    let (m, z) = composite(&seed, 0, c, d)?;
    verify(context, commitment, &m, &z, proof)
}

/// `(M, Z)` over pairs with explicit indices (for samples).
pub fn composite_indexed(
    seed: &[u8; 64],
    pairs: &[(u64, [u8; 32], [u8; 32])],
) -> Result<(RistrettoPoint, RistrettoPoint), DleqError> {
    let mut coeffs = Vec::with_capacity(pairs.len());
    let (mut cs, mut ds) = (Vec::with_capacity(pairs.len()), Vec::with_capacity(pairs.len()));
    for (index, c, d) in pairs {
        coeffs.push(coefficient(seed, *index, c, d));
        cs.push(CompressedRistretto(*c).decompress().ok_or(DleqError::BadPoint { side: "first", index: *index })?);
        ds.push(CompressedRistretto(*d).decompress().ok_or(DleqError::BadPoint { side: "second", index: *index })?);
    }
    Ok((RistrettoPoint::vartime_multiscalar_mul(&coeffs, &cs), RistrettoPoint::vartime_multiscalar_mul(&coeffs, &ds)))
}

/// `t` distinct indices in `0..n`, sorted, drawn from `root` (a Merkle root over the pairs) and the
/// commitment by SHA-256 in counter mode with rejection sampling (uniform, no modulo bias). All of
/// `0..n` if `n ≤ t`.
pub fn sample_indices(root: &[u8; 32], commitment: &CompressedRistretto, n: u64, t: usize) -> Vec<u64> {
    if n <= t as u64 {
        return (0..n).collect();
    }
    let mut chosen = std::collections::BTreeSet::new();
    let zone = u64::MAX - (u64::MAX % n); // values below `zone` map uniformly onto 0..n
    let mut counter = 0u64;
    while chosen.len() < t {
        let block = Sha256::new()
            .chain_update(b"consort/dleq/v1/sample")
            .chain_update(root)
            .chain_update(commitment.as_bytes())
            .chain_update(counter.to_be_bytes())
            .finalize();
        counter += 1;
        for word in block.chunks_exact(8) {
            let x = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            if x < zone && chosen.len() < t {
                chosen.insert(x % n);
            }
        }
    }
    chosen.into_iter().collect()
}

/// Probability that a sample of `t` distinct indices out of `n` hits at least one of `bad` bad
/// pairs: `1 − C(n−bad, t) / C(n, t)`.
pub fn detection_probability(n: u64, bad: u64, t: u64) -> f64 {
    if bad == 0 {
        return 0.0;
    }
    if t >= n || bad > n - t {
        return 1.0;
    }
    let mut miss = 1.0f64;
    for i in 0..t {
        miss *= (n - bad - i) as f64 / (n - i) as f64;
    }
    1.0 - miss
}

#[cfg(test)]
mod tests {
    use sha2::Sha512;

    use super::*;

    const CTX: &[u8] = b"consort/test/dleq";

    fn key(seed: u64) -> Scalar {
        Scalar::hash_from_bytes::<Sha512>(&seed.to_be_bytes())
    }

    fn pairs(n: usize, k: &Scalar) -> (Vec<u8>, Vec<u8>) {
        let (mut c, mut d) = (Vec::new(), Vec::new());
        for i in 0..n as u64 {
            let p = RistrettoPoint::hash_from_bytes::<Sha512>(&i.to_be_bytes());
            c.extend_from_slice(p.compress().as_bytes());
            d.extend_from_slice((p * k).compress().as_bytes());
        }
        (c, d)
    }

    #[test]
    fn honest_proofs_verify_for_all_sizes() {
        let k = key(1);
        for n in [0, 1, 2, 5, CHUNK + 3] {
            let (c, d) = pairs(n, &k);
            let proof = prove_pairs(CTX, &k, &c, &d).unwrap();
            verify_pairs(CTX, &commit(&k), &c, &d, &proof).unwrap();
            assert_eq!(Proof::from_bytes(&proof.to_bytes()), Some(proof));
        }
    }

    #[test]
    fn a_second_key_on_one_pair_is_caught() {
        let (k, k2) = (key(1), key(2));
        let (c, mut d) = pairs(300, &k);
        let p = CompressedRistretto(c[32 * 123..32 * 124].try_into().unwrap()).decompress().unwrap();
        d[32 * 123..32 * 124].copy_from_slice((p * k2).compress().as_bytes());
        // The prover knows k; a proof made with it over the altered pairs does not verify.
        let proof = prove_pairs(CTX, &k, &c, &d).unwrap();
        assert_eq!(verify_pairs(CTX, &commit(&k), &c, &d, &proof), Err(DleqError::Invalid));
    }

    #[test]
    fn forged_or_misbound_proofs_are_rejected() {
        let k = key(1);
        let (c, d) = pairs(50, &k);
        let proof = prove_pairs(CTX, &k, &c, &d).unwrap();
        let commitment = commit(&k);
        // Another commitment, another context, a swapped pair order, a tweaked proof scalar.
        assert_eq!(verify_pairs(CTX, &commit(&key(3)), &c, &d, &proof), Err(DleqError::Invalid));
        assert_eq!(verify_pairs(b"other", &commitment, &c, &d, &proof), Err(DleqError::Invalid));
        let (mut c2, mut d2) = (c.clone(), d.clone());
        c2[..64].rotate_left(32);
        d2[..64].rotate_left(32);
        assert_eq!(verify_pairs(CTX, &commitment, &c2, &d2, &proof), Err(DleqError::Invalid));
        let forged = Proof { c: proof.c, s: proof.s + Scalar::ONE };
        assert_eq!(verify_pairs(CTX, &commitment, &c, &d, &forged), Err(DleqError::Invalid));
        // A forger without k who picks (c, s) at random fails too.
        let random = Proof { c: key(7), s: key(8) };
        assert_eq!(verify_pairs(CTX, &commitment, &c, &d, &random), Err(DleqError::Invalid));
        // Non-canonical scalars do not decode.
        assert_eq!(Proof::from_bytes(&[0xff; 64]), None);
        // Invalid points are named.
        let mut bad = d.clone();
        bad[32 * 7..32 * 8].fill(0xff);
        assert_eq!(
            verify_pairs(CTX, &commitment, &c, &bad, &proof),
            Err(DleqError::BadPoint { side: "second", index: 7 })
        );
    }

    #[test]
    fn identity_commitment_is_refused() {
        assert_eq!(decode_commitment(&[0; 32]), Err(DleqError::BadCommitment));
    }

    #[test]
    fn samples_are_distinct_sorted_and_deterministic() {
        let root = [7u8; 32];
        let b = commit(&key(1));
        let s = sample_indices(&root, &b, 1000, 100);
        assert_eq!(s.len(), 100);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().all(|&i| i < 1000));
        assert_eq!(s, sample_indices(&root, &b, 1000, 100));
        assert_ne!(s, sample_indices(&[8u8; 32], &b, 1000, 100));
        assert_eq!(sample_indices(&root, &b, 5, 100), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn detection_probability_matches_simple_cases() {
        assert_eq!(detection_probability(100, 0, 10), 0.0);
        assert_eq!(detection_probability(100, 95, 10), 1.0);
        assert!((detection_probability(100, 1, 10) - 0.1).abs() < 1e-12);
        let p = detection_probability(1_000_000, 10_000, 256);
        assert!((p - (1.0 - 0.99f64.powi(256))).abs() < 1e-3, "{p}");
    }
}
