//! The curve kernels of the protocol, public for benchmarks and [`measure_curve_costs`].
//!
//! Single-threaded and allocation-free per item; the protocol runs them on rayon over batches of
//! [`BATCH`] items.

use std::time::Instant;

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha256, Sha512};

use super::key::HalfKey;

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
    let mut points: Vec<RistrettoPoint> = items.iter().map(|item| hash_to_point(item)).collect();
    let hash = clock.elapsed();

    let mut encoded = vec![0u8; 32 * samples];
    let clock = Instant::now();
    for (batch, out) in points.chunks_mut(BATCH).zip(encoded.chunks_mut(32 * BATCH)) {
        multiply_encode(batch, &key.0, out);
    }
    let multiply = clock.elapsed();

    let clock = Instant::now();
    for encoding in encoded.chunks_exact(32) {
        std::hint::black_box(decode(std::hint::black_box(encoding)));
    }
    let decode = clock.elapsed();

    let per_item = |d: std::time::Duration| d.as_nanos() as f64 / samples as f64;
    CurveCosts { hash_to_point_ns: per_item(hash), multiply_encode_ns: per_item(multiply), decode_ns: per_item(decode) }
}
