//! A band: the `w` coefficients of one row, relative to a column, as `w / 64` little-endian words.

use super::BAND_WIDTH;

pub(crate) const BAND_WORDS: usize = BAND_WIDTH / 64;

/// Bit `k` of word `k / 64` is the coefficient of column `base + k`.
pub(crate) type Band = [u64; BAND_WORDS];

#[inline]
pub(crate) fn is_zero(band: &Band) -> bool {
    band.iter().all(|&w| w == 0)
}

#[inline]
pub(crate) fn xor_assign(band: &mut Band, other: &Band) {
    for (a, b) in band.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// Index of the lowest set bit; `band` must not be zero.
#[inline]
pub(crate) fn trailing_zeros(band: &Band) -> u32 {
    let mut base = 0;
    for &word in band {
        if word != 0 {
            return base + word.trailing_zeros();
        }
        base += 64;
    }
    unreachable!("trailing_zeros of a zero band")
}

/// `band >> shift` for `shift < BAND_WIDTH`, as one `BAND_WIDTH`-bit integer. By value, with
/// constant word indices on the hot path, so that the band stays in registers (a band spilled to
/// the stack and reloaded as wider words stalls store forwarding in the insertion loop).
#[inline]
pub(crate) fn shift_right(band: Band, shift: u32) -> Band {
    if shift >= 64 {
        // A whole zero word below the first one: probability 2^-64 per step for random rows.
        return shift_right_words(band, shift);
    }
    std::array::from_fn(|i| {
        let hi = if i + 1 < BAND_WORDS { band[i + 1] } else { 0 };
        ((u128::from(hi) << 64 | u128::from(band[i])) >> shift) as u64
    })
}

#[cold]
#[inline(never)]
fn shift_right_words(band: Band, shift: u32) -> Band {
    let words = (shift / 64) as usize;
    let bits = shift % 64;
    std::array::from_fn(|i| {
        let lo = band.get(i + words).copied().unwrap_or(0);
        let hi = band.get(i + words + 1).copied().unwrap_or(0);
        ((u128::from(hi) << 64 | u128::from(lo)) >> bits) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_matches_bitwise_definition() {
        let band: Band = std::array::from_fn(|i| 0x9E37_79B9_7F4A_7C15u64.rotate_left(7 * i as u32));
        let bit = |b: &Band, k: usize| k < BAND_WIDTH && b[k / 64] >> (k % 64) & 1 == 1;
        for shift in [0, 1, 5, 63, 64, 65, 127, 128, 200, BAND_WIDTH as u32 - 1] {
            let shifted = shift_right(band, shift);
            for k in 0..BAND_WIDTH {
                assert_eq!(bit(&shifted, k), bit(&band, k + shift as usize), "{shift} {k}");
            }
        }
        let mut one: Band = [0; BAND_WORDS];
        one[BAND_WORDS - 1] = 1 << 63;
        assert_eq!(trailing_zeros(&one), BAND_WIDTH as u32 - 1);
    }
}
