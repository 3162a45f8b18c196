//! Two-party additive secret sharing over Z_2^64, fixed point, truncation, and OT-based
//! multiplication of one party's plaintext matrix by the other party's private vector.
//!
//! # Representation
//!
//! A value x ∈ Z_2^64 is shared as x = x_A + x_B (mod 2^64), one share per party. Reals are fixed
//! point: r ↦ round(r · 2^f) as a two's-complement integer (f fraction bits, [`FRAC_BITS`] = 16
//! for weights, residuals and scores; features use their own, smaller scale, see [`lr`]).
//! Additions and multiplications by public integers are local.
//!
//! # Truncation
//!
//! [`trunc_share`] is the *local* truncation of SecureML (Mohassel–Zhang, S&P 2017, Thm. 1):
//! party A shifts its share right arithmetically by d bits, party B negates, shifts and negates.
//! If the shared value satisfies |x| < 2^ℓx, the result is ⌊x / 2^d⌋ + ε with ε ∈ {0, 1} (an
//! error of at most 1 unit in the last place), except with probability at most 2^(ℓx + 1 − 64)
//! over the (uniform) share randomness, in which case it is off by about ±2^(64−d) (a wrong
//! value). No communication. The LR protocol keeps every truncated value small (|x| ≲ 2^35 in
//! practice, see [`lr`]), so one truncation fails with probability ≲ 2^−28 and a whole training
//! run of N truncations with probability ≲ N · 2^−28; [`lr`] checks revealed weights for the
//! symptom (absurd magnitudes) and fails the job rather than return a corrupted model.
//!
//! # Multiplication
//!
//! [`ot_mul`]: Gilboa's OT-based product (Gilboa, CRYPTO 1999) of a plaintext integer matrix X
//! held by one party (the *chooser*: the bits of X's entries are its OT choice bits) with a
//! vector y ∈ Z_2^64 held by the other (the *sender*), giving additive shares of X·y or Xᵀ·y.
//! The random OTs come from the IKNP extension in [`crate::ot`]; no third party.

pub mod binning;
pub mod dealer;
pub mod lr;
pub mod ot_mul;
pub mod secureboost;
pub mod wire;

use crate::channel::ChannelError;
use crate::ot::OtError;

/// Fraction bits of weights, residuals and scores.
pub const FRAC_BITS: u32 = 16;

/// Which party this is. A holds the labels (and the intercept); B holds only features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    A,
    B,
}

impl Party {
    pub fn peer(self) -> Party {
        match self {
            Party::A => Party::B,
            Party::B => Party::A,
        }
    }
}

/// Why a secret-sharing protocol failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MpcError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Ot(#[from] OtError),
    /// The peer sent something the protocol does not allow, or the parties disagree on
    /// parameters.
    #[error("secret-sharing protocol violation: {0}")]
    Protocol(String),
    /// The computation left the fixed-point range (a truncation failure or diverging training).
    #[error("fixed-point overflow: {0}")]
    Overflow(String),
    /// Invalid parameters.
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn violation(message: impl Into<String>) -> MpcError {
    MpcError::Protocol(message.into())
}

/// Fixed-point encoding of `x` with `frac` fraction bits (saturating at the i64 range).
pub fn encode(x: f64, frac: u32) -> u64 {
    (x * (frac as f64).exp2()).round() as i64 as u64
}

/// The real value of the two's-complement fixed-point `x` with `frac` fraction bits.
pub fn decode(x: u64, frac: u32) -> f64 {
    x as i64 as f64 / (frac as f64).exp2()
}

/// SecureML local truncation of one share by `d` bits (see the module docs for the error bound).
#[inline]
pub fn trunc_share(x: u64, d: u32, party: Party) -> u64 {
    match party {
        Party::A => ((x as i64) >> d) as u64,
        Party::B => (((x.wrapping_neg()) as i64) >> d).wrapping_neg() as u64,
    }
}

/// Splits `x` into two uniformly random shares (tests and the dealer).
pub fn share(x: u64, rng: &mut impl rand::Rng) -> (u64, u64) {
    let a = rng.next_u64();
    (a, x.wrapping_sub(a))
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        for x in [0.0, 1.0, -1.0, 0.5, -3.25, 1234.5678, -0.0001] {
            assert!((decode(encode(x, 16), 16) - x).abs() <= 0.5 / 65536.0, "{x}");
        }
        assert_eq!(encode(-1.0, 16), (-65536i64) as u64);
    }

    #[test]
    fn truncation_error_is_at_most_one_ulp_for_small_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // |x| < 2^40: failure probability 2^-23 per trial, so 20 000 trials never fail in practice
        // (and the bound itself is checked below).
        for _ in 0..20_000 {
            let x = (rng.random::<i64>() >> 24) as u64;
            let d = rng.random_range(1..30);
            let (a, b) = share(x, &mut rng);
            let t = trunc_share(a, d, Party::A).wrapping_add(trunc_share(b, d, Party::B));
            let exact = (x as i64) >> d;
            let err = (t as i64).wrapping_sub(exact);
            assert!(err == 0 || err == 1, "x={} d={d} err={err}", x as i64);
        }
        // Edge values with fixed shares.
        for (x, a) in [(0u64, 0u64), (0, u64::MAX), (u64::MAX, 5), (1 << 40, 1 << 62), ((-1i64 << 40) as u64, 7)] {
            let b = x.wrapping_sub(a);
            let t = trunc_share(a, 16, Party::A).wrapping_add(trunc_share(b, 16, Party::B));
            let err = (t as i64).wrapping_sub((x as i64) >> 16);
            assert!(err == 0 || err == 1, "x={} a={a} err={err}", x as i64);
        }
    }

    #[test]
    fn truncation_failure_mode_is_a_wrap_by_two_to_the_64_minus_d() {
        // A share at the wrap boundary: the failure the bound talks about, and what it looks like.
        let (x, a) = (1u64 << 40, 1u64 << 63);
        let b = x.wrapping_sub(a);
        let t = trunc_share(a, 16, Party::A).wrapping_add(trunc_share(b, 16, Party::B));
        let err = (t as i64).wrapping_sub((x as i64) >> 16);
        assert_eq!(err, -(1i64 << 48));
    }

    #[test]
    fn truncation_fails_at_the_predicted_rate_for_large_values() {
        // |x| ≈ 2^60: the bound says failure probability ≤ 2^(61-64) = 1/8. Measure it.
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let trials = 40_000;
        let mut failures = 0;
        for _ in 0..trials {
            let x = 1u64 << 60;
            let (a, b) = share(x, &mut rng);
            let t = trunc_share(a, 16, Party::A).wrapping_add(trunc_share(b, 16, Party::B));
            let err = (t as i64).wrapping_sub((x as i64) >> 16);
            if !(err == 0 || err == 1) {
                failures += 1;
            }
        }
        let rate = failures as f64 / trials as f64;
        // Exact rate for x = 2^60: P[a ∈ wrap region] = 2^60 / 2^64 = 1/16.
        assert!(rate > 0.04 && rate < 0.085, "failure rate {rate}");
        assert!(rate <= 0.125);
    }
}
