//! Batched Chaum–Pedersen proofs of discrete-log equality (DLEQ) on ristretto255, in the style of
//! RFC 9497 §2.2 (the VOPRF proof), with a composite whose coefficients the *verifier* chooses.
//!
//! # What a proof proves
//!
//! A prover holds a secret scalar `k` and has published `B = k·G` (`G` the ristretto255 base
//! point). For a list of pairs `(C_i, D_i)` the prover has sent (committed to), a proof shows that
//! `D_i = k·C_i` for *every* `i`, with the same `k` as in `B`, except with probability `2^-64`,
//! and reveals nothing about `k` beyond that (honest-verifier zero knowledge; the final
//! Chaum–Pedersen step is made non-interactive by Fiat–Shamir with SHA-512 as a random oracle).
//! Anyone holding `B`, the pairs, the verifier's challenge and the proof can check it offline.
//!
//! # Construction
//!
//! 1. Composite. *After* the prover has sent all pairs, the verifier reveals a challenge seed `σ`
//!    (32 bytes from the OS CSPRNG, drawn before the run and kept secret until then). The
//!    coefficients are `r_i = AES-256_K(i)[..8]` (64 bits, little-endian), `K = SHA-256(domain ||
//!    context || σ)`, and `M = Σ r_i·C_i`, `Z = Σ r_i·D_i`. If some `D_i ≠ k·C_i`, the errors
//!    `E_i = D_i − k·C_i` are fixed before `σ` is known, and `Σ r_i·E_i = 0` holds for at most one
//!    value of any single `r_i` with `E_i ≠ 0` (the group has prime order), so `Z = k·M` with
//!    probability at most `2^-64` over `σ`.
//! 2. Chaum–Pedersen on `(G, B, M, Z)`: the prover picks a random `r`, sends `c = H(B, M, Z, r·G,
//!    r·M)` and `s = r − c·k`; the verifier recomputes `t2 = s·G + c·B`, `t3 = s·M + c·Z` and
//!    checks that `c` hashes them.
//!
//! Why not RFC 9497's composite, where each `d_i` hashes its own pair `(C_i, D_i)`: a prover may
//! then choose each `D_i = k·C_i + e_i·P` (for a point `P` of its choice) and grind `e_i` until the
//! values `e_i·d_i` of a few thousand pairs sum to zero mod ℓ (Wagner's k-tree algorithm, around
//! 2^33 hash evaluations for 2^10 pairs), so the composite verifies although those pairs are
//! wrong. Coefficients from a seed chosen after *all* pairs are fixed leave nothing to grind.
//! 64-bit coefficients suffice because the verifier draws `σ` itself (no Fiat–Shamir over the
//! pairs, so no offline grinding): a cheating prover passes with probability `2^-64` per run, and
//! each run costs it a real job. They halve the multiscalar work of 128-bit ones.
//!
//! Who computes what: the verifier computes `M` (over its own points) and `Z` (decoding the
//! returned points) and sends `(σ, M, Z)`; the prover checks `Z = k·M` with one scalar
//! multiplication (and refuses otherwise, so it never proves a false statement nor hands out
//! `k·M` for a point of the verifier's choosing) and proves it. So the prover does no
//! multiscalar multiplication over the pairs; the verifier does two.
//!
//! Variable time is safe in the multiscalar multiplications because all their inputs are public;
//! `k` only enters constant-time scalar multiplications and the scalar arithmetic of `s`.
//!
//! # Sampled audits
//!
//! [`sample_indices`] draws `t` distinct pair indices from `σ` and a Merkle root over the pairs, so
//! an auditor can check a proof over a sample instead of all pairs; see
//! [`detection_probability`]. The prover cannot steer the sample: `σ` is unknown to it until the
//! pairs (and so the root) are fixed.

use aes::Aes256;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
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

/// Bytes of a verifier's challenge seed `σ`.
pub const CHALLENGE_LEN: usize = 32;

/// Domain of the coefficient key derivation.
const COEFFICIENT_DOMAIN: &[u8] = b"consort/dleq/v2/coefficients";

/// Pairs per multiscalar multiplication (dalek's Pippenger is cheapest per point around here).
pub const MSM_CHUNK: usize = 16384;

/// A fresh challenge seed from the operating system's CSPRNG.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub fn random_challenge() -> [u8; CHALLENGE_LEN] {
    let mut seed = [0u8; CHALLENGE_LEN];
    SysRng.try_fill_bytes(&mut seed).expect("the operating system's random number generator failed");
    seed
}

/// The composite coefficients `r_i` of a challenge (see the module documentation).
pub struct Coefficients {
    cipher: Aes256,
}

impl Coefficients {
    /// Coefficients for proofs in `context` under challenge `σ`.
    pub fn new(context: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> Coefficients {
        let key = Sha256::new()
            .chain_update(COEFFICIENT_DOMAIN)
            .chain_update((context.len() as u64).to_be_bytes())
            .chain_update(context)
            .chain_update(challenge)
            .finalize();
        Coefficients { cipher: Aes256::new(&Array(key.into())) }
    }

    /// `r_first, r_first+1, …` into `out`.
    pub fn fill(&self, first: u64, out: &mut [Scalar]) {
        let mut blocks: Vec<Array<u8, _>> =
            (0..out.len() as u64).map(|i| Array(u128::from(first + i).to_le_bytes())).collect();
        self.cipher.encrypt_blocks(&mut blocks);
        for (scalar, block) in out.iter_mut().zip(&blocks) {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&block[..8]);
            *scalar = Scalar::from_bytes_mod_order(bytes);
        }
    }

    /// `r_index`.
    pub fn get(&self, index: u64) -> Scalar {
        let mut one = [Scalar::ZERO];
        self.fill(index, &mut one);
        one[0]
    }
}

/// `Σ r_i·P_i` for consecutive points with indices `first..` (parallel).
pub fn composite_of_points(coefficients: &Coefficients, first: u64, points: &[RistrettoPoint]) -> RistrettoPoint {
    points
        .par_chunks(MSM_CHUNK)
        .enumerate()
        .map(|(chunk, points)| {
            let mut r = vec![Scalar::ZERO; points.len()];
            coefficients.fill(first + (chunk * MSM_CHUNK) as u64, &mut r);
            RistrettoPoint::vartime_multiscalar_mul(&r, points)
        })
        .reduce(RistrettoPoint::identity, |a, b| a + b)
}

/// `Σ r_i·P_i` for consecutive 32-byte encodings with indices `first..`, decoding each (parallel;
/// `side` names a bad point in the error).
pub fn composite_of_encodings(
    coefficients: &Coefficients,
    first: u64,
    encodings: &[u8],
    side: &'static str,
) -> Result<RistrettoPoint, DleqError> {
    if !encodings.len().is_multiple_of(32) {
        return Err(DleqError::BadLengths);
    }
    encodings
        .par_chunks(32 * MSM_CHUNK)
        .enumerate()
        .map(|(chunk, encodings)| {
            let start = first + (chunk * MSM_CHUNK) as u64;
            let points = decode_all(encodings, side, start)?;
            let mut r = vec![Scalar::ZERO; points.len()];
            coefficients.fill(start, &mut r);
            Ok(RistrettoPoint::vartime_multiscalar_mul(&r, &points))
        })
        .try_reduce(RistrettoPoint::identity, |a, b| Ok(a + b))
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

/// `(M, Z)` over all pairs given as encodings (indices from 0).
pub fn composite_pairs(
    coefficients: &Coefficients,
    c: &[u8],
    d: &[u8],
) -> Result<(RistrettoPoint, RistrettoPoint), DleqError> {
    if c.len() != d.len() {
        return Err(DleqError::BadLengths);
    }
    let (m, z) = rayon::join(
        || composite_of_encodings(coefficients, 0, c, "first"),
        || composite_of_encodings(coefficients, 0, d, "second"),
    );
    Ok((m?, z?))
}

/// `(M, Z)` over pairs with explicit indices (for samples).
pub fn composite_indexed(
    coefficients: &Coefficients,
    pairs: &[(u64, [u8; 32], [u8; 32])],
) -> Result<(RistrettoPoint, RistrettoPoint), DleqError> {
    let mut r = Vec::with_capacity(pairs.len());
    let (mut cs, mut ds) = (Vec::with_capacity(pairs.len()), Vec::with_capacity(pairs.len()));
    for (index, c, d) in pairs {
        r.push(coefficients.get(*index));
        cs.push(CompressedRistretto(*c).decompress().ok_or(DleqError::BadPoint { side: "first", index: *index })?);
        ds.push(CompressedRistretto(*d).decompress().ok_or(DleqError::BadPoint { side: "second", index: *index })?);
    }
    Ok((RistrettoPoint::vartime_multiscalar_mul(&r, &cs), RistrettoPoint::vartime_multiscalar_mul(&r, &ds)))
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

/// Proves `Z = k·M` for the composite of the pairs given as encodings (indices from 0) under the
/// verifier's challenge, as a prover handed `(M, Z)` by its verifier would (for tests and tools; in
/// the protocol the verifier computes the composite).
pub fn prove_pairs(
    context: &[u8],
    key: &Scalar,
    challenge: &[u8; CHALLENGE_LEN],
    c: &[u8],
    d: &[u8],
) -> Result<Proof, DleqError> {
    let (m, z) = composite_pairs(&Coefficients::new(context, challenge), c, d)?;
    Ok(prove(context, key, &commit(key), &m, &z))
}

/// Verifies a proof over all pairs given as encodings (indices from 0).
pub fn verify_pairs(
    context: &[u8],
    commitment: &CompressedRistretto,
    challenge: &[u8; CHALLENGE_LEN],
    c: &[u8],
    d: &[u8],
    proof: &Proof,
) -> Result<(), DleqError> {
    let (m, z) = composite_pairs(&Coefficients::new(context, challenge), c, d)?;
    verify(context, commitment, &m, &z, proof)
}

/// `t` distinct indices in `0..n`, sorted, drawn from the verifier's challenge `σ`, `root` (a Merkle
/// root over the pairs) and the commitment by SHA-256 in counter mode with rejection sampling
/// (uniform, no modulo bias). All of `0..n` if `n ≤ t`.
pub fn sample_indices(
    challenge: &[u8; CHALLENGE_LEN],
    root: &[u8; 32],
    commitment: &CompressedRistretto,
    n: u64,
    t: usize,
) -> Vec<u64> {
    if n <= t as u64 {
        return (0..n).collect();
    }
    let mut chosen = std::collections::BTreeSet::new();
    let zone = u64::MAX - (u64::MAX % n); // values below `zone` map uniformly onto 0..n
    let mut counter = 0u64;
    while chosen.len() < t {
        let block = Sha256::new()
            .chain_update(b"consort/dleq/v2/sample")
            .chain_update(challenge)
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

    const SIGMA: [u8; 32] = [9; 32];

    #[test]
    fn honest_proofs_verify_for_all_sizes() {
        let k = key(1);
        for n in [0, 1, 2, 5, MSM_CHUNK + 3] {
            let (c, d) = pairs(n, &k);
            let proof = prove_pairs(CTX, &k, &SIGMA, &c, &d).unwrap();
            verify_pairs(CTX, &commit(&k), &SIGMA, &c, &d, &proof).unwrap();
            assert_eq!(Proof::from_bytes(&proof.to_bytes()), Some(proof));
        }
    }

    #[test]
    fn coefficients_are_64_bit_deterministic_and_challenge_bound() {
        let a = Coefficients::new(CTX, &SIGMA);
        let mut batch = vec![Scalar::ZERO; 100];
        a.fill(7, &mut batch);
        for (i, r) in batch.iter().enumerate() {
            assert_eq!(*r, a.get(7 + i as u64));
            assert!(r.as_bytes()[8..].iter().all(|&b| b == 0), "64-bit coefficient");
        }
        assert!(batch.windows(2).all(|w| w[0] != w[1]));
        assert_ne!(a.get(0), Coefficients::new(CTX, &[8; 32]).get(0));
        assert_ne!(a.get(0), Coefficients::new(b"other", &SIGMA).get(0));
        // The composites over points and over their encodings agree, across chunk boundaries.
        let points: Vec<RistrettoPoint> =
            (0..MSM_CHUNK as u64 + 5).map(|i| RistrettoPoint::hash_from_bytes::<Sha512>(&i.to_be_bytes())).collect();
        let encodings: Vec<u8> = points.iter().flat_map(|p| p.compress().to_bytes()).collect();
        let expected: RistrettoPoint = points.iter().enumerate().map(|(i, p)| p * a.get(3 + i as u64)).sum();
        assert_eq!(composite_of_points(&a, 3, &points), expected);
        assert_eq!(composite_of_encodings(&a, 3, &encodings, "first").unwrap(), expected);
    }

    #[test]
    fn a_second_key_on_one_pair_is_caught() {
        let (k, k2) = (key(1), key(2));
        let (c, mut d) = pairs(300, &k);
        let p = CompressedRistretto(c[32 * 123..32 * 124].try_into().unwrap()).decompress().unwrap();
        d[32 * 123..32 * 124].copy_from_slice((p * k2).compress().as_bytes());
        // The prover knows k; a proof made with it over the altered pairs does not verify.
        let proof = prove_pairs(CTX, &k, &SIGMA, &c, &d).unwrap();
        assert_eq!(verify_pairs(CTX, &commit(&k), &SIGMA, &c, &d, &proof), Err(DleqError::Invalid));
    }

    #[test]
    fn forged_or_misbound_proofs_are_rejected() {
        let k = key(1);
        let (c, d) = pairs(50, &k);
        let proof = prove_pairs(CTX, &k, &SIGMA, &c, &d).unwrap();
        let commitment = commit(&k);
        // Another commitment, context or challenge, a swapped pair order, a tweaked proof scalar.
        assert_eq!(verify_pairs(CTX, &commit(&key(3)), &SIGMA, &c, &d, &proof), Err(DleqError::Invalid));
        assert_eq!(verify_pairs(b"other", &commitment, &SIGMA, &c, &d, &proof), Err(DleqError::Invalid));
        assert_eq!(verify_pairs(CTX, &commitment, &[1; 32], &c, &d, &proof), Err(DleqError::Invalid));
        let (mut c2, mut d2) = (c.clone(), d.clone());
        c2[..64].rotate_left(32);
        d2[..64].rotate_left(32);
        assert_eq!(verify_pairs(CTX, &commitment, &SIGMA, &c2, &d2, &proof), Err(DleqError::Invalid));
        let forged = Proof { c: proof.c, s: proof.s + Scalar::ONE };
        assert_eq!(verify_pairs(CTX, &commitment, &SIGMA, &c, &d, &forged), Err(DleqError::Invalid));
        // A forger without k who picks (c, s) at random fails too.
        let random = Proof { c: key(7), s: key(8) };
        assert_eq!(verify_pairs(CTX, &commitment, &SIGMA, &c, &d, &random), Err(DleqError::Invalid));
        // Non-canonical scalars do not decode.
        assert_eq!(Proof::from_bytes(&[0xff; 64]), None);
        // Invalid points are named.
        let mut bad = d.clone();
        bad[32 * 7..32 * 8].fill(0xff);
        assert_eq!(
            verify_pairs(CTX, &commitment, &SIGMA, &c, &bad, &proof),
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
        let s = sample_indices(&SIGMA, &root, &b, 1000, 100);
        assert_eq!(s.len(), 100);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().all(|&i| i < 1000));
        assert_eq!(s, sample_indices(&SIGMA, &root, &b, 1000, 100));
        assert_ne!(s, sample_indices(&SIGMA, &[8u8; 32], &b, 1000, 100));
        assert_ne!(s, sample_indices(&[1; 32], &root, &b, 1000, 100));
        assert_eq!(sample_indices(&SIGMA, &root, &b, 5, 100), vec![0, 1, 2, 3, 4]);
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
