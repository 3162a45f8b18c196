//! Arithmetic in GF(2^128) = GF(2)\[X\] / (X^128 + X^7 + X^2 + X + 1).
//!
//! A field element is a `u128` whose bit `i` is the coefficient of X^i (the natural, *not* the
//! bit-reflected GHASH convention). Addition is XOR. Multiplication is a carry-less product
//! ([`clmul`], 256 bits) followed by a reduction ([`reduce`]); sums of products are best
//! accumulated unreduced and reduced once ([`inner_product`]), which is what the KOS consistency
//! check (and later, VOLE) does over millions of terms.
//!
//! Everything is constant-time: no branch or memory index depends on the operands. On x86-64
//! with PCLMULQDQ (detected at run time, [`crate::simd`]) a product is four `pclmulqdq`; elsewhere a portable
//! shift-and-mask loop is used (about 100 times slower, still constant-time).

/// An unreduced 256-bit carry-less product or sum of products: `(low, high)` 128-bit halves.
pub type Wide = (u128, u128);

/// `a · b` in GF(2^128).
#[inline]
pub fn mul(a: u128, b: u128) -> u128 {
    let (lo, hi) = clmul(a, b);
    reduce(lo, hi)
}

/// The carry-less (GF(2)\[X\]) product of `a` and `b`, 256 bits.
#[inline]
pub fn clmul(a: u128, b: u128) -> Wide {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::features().pclmulqdq {
        // SAFETY: the CPU supports PCLMULQDQ (checked just above).
        return unsafe { x86::inner_product(&[a], &[b]) };
    }
    portable::clmul(a, b)
}

/// Reduces the 256-bit polynomial `lo + hi·X^128` modulo X^128 + X^7 + X^2 + X + 1.
#[inline]
pub fn reduce(lo: u128, hi: u128) -> u128 {
    // X^128 ≡ X^7 + X^2 + X + 1, so hi·X^128 ≡ hi·(X^7 + X^2 + X + 1). That product has up to 135
    // bits; its bits at 128.. (`over`, < 2^7) are folded once more, and cannot overflow again.
    let over = (hi >> 127) ^ (hi >> 126) ^ (hi >> 121);
    let folded = hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7);
    lo ^ folded ^ over ^ (over << 1) ^ (over << 2) ^ (over << 7)
}

/// Σ a_k · b_k in GF(2^128).
///
/// # Panics
///
/// If the slices differ in length.
pub fn inner_product(a: &[u128], b: &[u128]) -> u128 {
    let (lo, hi) = inner_product_wide(a, b);
    reduce(lo, hi)
}

/// Σ a_k · b_k as an unreduced 256-bit value (XOR several of these, then [`reduce`]).
///
/// # Panics
///
/// If the slices differ in length.
pub fn inner_product_wide(a: &[u128], b: &[u128]) -> Wide {
    assert_eq!(a.len(), b.len(), "inner product of slices of different lengths");
    #[cfg(target_arch = "x86_64")]
    if crate::simd::features().pclmulqdq {
        // SAFETY: the CPU supports PCLMULQDQ (checked just above).
        return unsafe { x86::inner_product(a, b) };
    }
    a.iter().zip(b).fold((0, 0), |(lo, hi), (&x, &y)| {
        let (l, h) = portable::clmul(x, y);
        (lo ^ l, hi ^ h)
    })
}

pub(crate) mod portable {
    /// 64 × 64 → 128-bit carry-less product, constant-time (masks, no branches).
    #[inline]
    pub fn clmul64(a: u64, b: u64) -> u128 {
        let a = a as u128;
        let mut r = 0u128;
        for i in 0..64 {
            let mask = 0u128.wrapping_sub(((b >> i) & 1) as u128);
            r ^= (a << i) & mask;
        }
        r
    }

    /// 128 × 128 → 256-bit carry-less product (schoolbook on 64-bit halves).
    pub fn clmul(a: u128, b: u128) -> super::Wide {
        let (a0, a1) = (a as u64, (a >> 64) as u64);
        let (b0, b1) = (b as u64, (b >> 64) as u64);
        let lo = clmul64(a0, b0);
        let hi = clmul64(a1, b1);
        let mid = clmul64(a0, b1) ^ clmul64(a1, b0);
        (lo ^ (mid << 64), hi ^ (mid >> 64))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Σ a_k · b_k unreduced. The three partial sums (low, middle, high 64×64 products) are
    /// accumulated separately and combined once at the end.
    ///
    /// # Safety
    ///
    /// The CPU must support PCLMULQDQ.
    #[target_feature(enable = "pclmulqdq")]
    pub unsafe fn inner_product(a: &[u128], b: &[u128]) -> super::Wide {
        let mut lo = _mm_setzero_si128();
        let mut mid = _mm_setzero_si128();
        let mut hi = _mm_setzero_si128();
        for (&x, &y) in a.iter().zip(b) {
            // SAFETY: u128 and __m128i are both 16 plain bytes; x86 is little-endian, so the low
            // 64-bit lane of the vector is the low half of the u128.
            let (x, y): (__m128i, __m128i) =
                unsafe { (std::mem::transmute::<u128, __m128i>(x), std::mem::transmute::<u128, __m128i>(y)) };
            lo = _mm_xor_si128(lo, _mm_clmulepi64_si128(x, y, 0x00));
            hi = _mm_xor_si128(hi, _mm_clmulepi64_si128(x, y, 0x11));
            mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(x, y, 0x01));
            mid = _mm_xor_si128(mid, _mm_clmulepi64_si128(x, y, 0x10));
        }
        // SAFETY: as above.
        let (lo, mid, hi): (u128, u128, u128) = unsafe {
            (
                std::mem::transmute::<__m128i, u128>(lo),
                std::mem::transmute::<__m128i, u128>(mid),
                std::mem::transmute::<__m128i, u128>(hi),
            )
        };
        (lo ^ (mid << 64), hi ^ (mid >> 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ot::aes_hash::AesPrg;

    /// Schoolbook multiply-and-reduce, one bit at a time: the definition.
    fn naive_mul(a: u128, b: u128) -> u128 {
        let mut acc = 0u128;
        let mut a = a;
        for i in 0..128 {
            if (b >> i) & 1 == 1 {
                acc ^= a;
            }
            // a ← a·X mod P
            let carry = a >> 127;
            a <<= 1;
            if carry == 1 {
                a ^= 0x87;
            }
        }
        acc
    }

    fn samples(n: usize, seed: u128) -> Vec<u128> {
        let mut v = vec![0u128; n];
        AesPrg::new(seed).fill_blocks(0, &mut v);
        v
    }

    #[test]
    fn multiplication_matches_the_definition() {
        let a = samples(200, 1);
        let b = samples(200, 2);
        for (&x, &y) in a.iter().zip(&b) {
            assert_eq!(mul(x, y), naive_mul(x, y));
            let (lo, hi) = portable::clmul(x, y);
            assert_eq!(reduce(lo, hi), naive_mul(x, y));
        }
        // Edge cases: all ones, top bits (exercise the double fold), one, zero.
        for x in [u128::MAX, 1 << 127, 3 << 126, 1, 0] {
            for y in [u128::MAX, 1 << 127, 0x87, 1, 0] {
                assert_eq!(mul(x, y), naive_mul(x, y), "{x:x} · {y:x}");
            }
        }
        assert_eq!(mul(1 << 127, 2), 0x87);
    }

    #[test]
    fn inner_product_is_the_sum_of_products() {
        let a = samples(1000, 3);
        let b = samples(1000, 4);
        let expected = a.iter().zip(&b).fold(0, |s, (&x, &y)| s ^ naive_mul(x, y));
        assert_eq!(inner_product(&a, &b), expected);
        let portable = a.iter().zip(&b).fold((0, 0), |(l, h), (&x, &y)| {
            let (pl, ph) = portable::clmul(x, y);
            (l ^ pl, h ^ ph)
        });
        assert_eq!(inner_product_wide(&a, &b), portable);
        assert_eq!(inner_product(&[], &[]), 0);
    }
}
