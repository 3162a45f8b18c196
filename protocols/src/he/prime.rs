//! Random probable primes for key generation: trial division by the small primes, then
//! Miller–Rabin with random bases (FIPS 186-5, B.3: 4 rounds suffice for random 1024-bit
//! candidates at error 2^-100; we run [`MR_ROUNDS`]). The arithmetic is num-bigint's `modpow`;
//! this file only drives it.

use num_bigint::BigUint;
use num_traits::{One, Zero};
use rand::Rng;

/// Miller–Rabin rounds per accepted prime.
const MR_ROUNDS: usize = 40;

/// Uniform integer of exactly `bits` bits (top bit set), from `rng`.
pub(crate) fn random_bits(rng: &mut impl Rng, bits: u64) -> BigUint {
    let mut x = random_below_bits(rng, bits);
    x.set_bit(bits - 1, true);
    x
}

/// Uniform integer in [0, 2^bits).
pub(crate) fn random_below_bits(rng: &mut impl Rng, bits: u64) -> BigUint {
    let mut bytes = vec![0u8; bits.div_ceil(8) as usize];
    rng.fill_bytes(&mut bytes);
    let extra = bytes.len() as u64 * 8 - bits;
    if let Some(top) = bytes.last_mut() {
        *top &= 0xffu8 >> extra;
    }
    BigUint::from_bytes_le(&bytes)
}

/// Uniform integer in [lo, hi) (hi > lo), by rejection.
pub(crate) fn random_range(rng: &mut impl Rng, lo: &BigUint, hi: &BigUint) -> BigUint {
    let span = hi - lo;
    loop {
        let x = random_below_bits(rng, span.bits());
        if x < span {
            return x + lo;
        }
    }
}

const SMALL_PRIMES: [u32; 53] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109,
    113, 127, 131, 137, 139, 149, 151, 157, 163, 167, 173, 179, 181, 191, 193, 197, 199, 211, 223, 227, 229, 233, 239,
    241, 251,
];

/// Miller–Rabin with [`MR_ROUNDS`] random bases after trial division (public candidates only:
/// not constant time, and it need not be: a rejected candidate is discarded).
pub(crate) fn is_probable_prime(rng: &mut impl Rng, n: &BigUint) -> bool {
    let two = BigUint::from(2u8);
    if *n < two {
        return false;
    }
    for p in std::iter::once(2u32).chain(SMALL_PRIMES) {
        let p = BigUint::from(p);
        if *n == p {
            return true;
        }
        if (n % &p).is_zero() {
            return false;
        }
    }
    let n1 = n - 1u8;
    let s = n1.trailing_zeros().unwrap_or(0);
    let d = &n1 >> s;
    'rounds: for _ in 0..MR_ROUNDS {
        let a = random_range(rng, &two, &n1);
        let mut x = a.modpow(&d, n);
        if x.is_one() || x == n1 {
            continue;
        }
        for _ in 1..s {
            x = (&x * &x) % n;
            if x == n1 {
                continue 'rounds;
            }
        }
        return false;
    }
    true
}

/// A random prime of exactly `bits` bits.
pub(crate) fn random_prime(rng: &mut impl Rng, bits: u64) -> BigUint {
    loop {
        let mut c = random_bits(rng, bits);
        c.set_bit(0, true);
        if is_probable_prime(rng, &c) {
            return c;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn known_primes_and_composites() {
        let mut rng = StdRng::seed_from_u64(1);
        for p in [2u64, 3, 5, 251, 257, 65537, 2_147_483_647, 1_000_000_007] {
            assert!(is_probable_prime(&mut rng, &BigUint::from(p)), "{p}");
        }
        // Carmichael numbers and a product of two large primes.
        for c in [1u64, 561, 1105, 41041, 825_265, 65537 * 65539, 1_000_000_007 * 998_244_353] {
            assert!(!is_probable_prime(&mut rng, &BigUint::from(c)), "{c}");
        }
        // 2^127 − 1 is prime, 2^128 + 1 is not.
        let m127 = (BigUint::one() << 127u32) - 1u8;
        assert!(is_probable_prime(&mut rng, &m127));
        assert!(!is_probable_prime(&mut rng, &((BigUint::one() << 128u32) + 1u8)));
        let p = random_prime(&mut rng, 96);
        assert_eq!(p.bits(), 96);
        assert!(is_probable_prime(&mut rng, &p));
    }
}
