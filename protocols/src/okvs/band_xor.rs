//! The inner product of a band row with the cell vector: the XOR of the cells the band selects.
//! It is the whole cost of decoding and of back-substitution, so it has AVX-512 and AVX2 forms,
//! chosen at run time ([`crate::simd`]), and a portable fallback.

use super::BAND_WIDTH;
use super::band::{BAND_WORDS, Band};

/// XOR of `cells[start + k]` over the set bits `k` of `band`.
///
/// # Panics
/// If `start + BAND_WIDTH > cells.len()`.
#[inline]
pub(crate) fn band_xor(cells: &[u128], start: usize, band: &Band) -> u128 {
    assert!(start + BAND_WIDTH <= cells.len(), "band row past the last cell");
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = crate::simd::features();
        if cpu.avx512f && cpu.bmi2 {
            // SAFETY: the CPU has the features (checked just above); the window is in bounds.
            return unsafe { avx512::band_xor(cells, start, band) };
        }
        if cpu.avx2 {
            // SAFETY: as above.
            return unsafe { avx2::band_xor(cells, start, band) };
        }
    }
    bit_scan(&cells[start..], band)
}

/// Portable form, one load per set bit. Also serves windows shorter than the band (the last
/// rows of back-substitution), whose bits past the end of `window` must be zero.
pub(crate) fn bit_scan(window: &[u128], band: &Band) -> u128 {
    let mut acc = 0;
    for (w, &word) in band.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            acc ^= window[64 * w + word.trailing_zeros() as usize];
            word &= word - 1;
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BAND_WIDTH, BAND_WORDS, Band};

    /// Masked XOR with AVX-512. A 512-bit register holds four cells. The loads are aligned to
    /// 64 bytes (a window at an arbitrary cell would split three loads in four across cache
    /// lines, which costs a third of the time): the window is read from the 64-byte boundary at
    /// or below its first cell, with the band shifted up by the misalignment `o < 4` cells, so
    /// `BAND_WIDTH / 4 + 1` masked loads. `pdep` spreads 32 band bits to one mask bit per 64-bit
    /// lane (a cell is two lanes). The instruction sequence does not depend on the band.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and BMI2, and `start + BAND_WIDTH ≤ cells.len()`.
    #[target_feature(enable = "avx512f,bmi2")]
    pub(super) unsafe fn band_xor(cells: &[u128], start: usize, band: &Band) -> u128 {
        let first = cells.as_ptr().wrapping_add(start);
        let o = (first as usize / 16) % 4;
        // The aligned base may lie up to 3 cells before `cells`; those lanes are masked off, and
        // masked-off lanes are neither read nor able to fault, so only in-bounds cells are read.
        let base = first.wrapping_sub(o).cast::<i64>();
        let shifted = shift_up(band, o as u32);
        let mut acc = [_mm512_setzero_si512(); 4];
        for (w, &word) in shifted.iter().enumerate() {
            for half in 0..2 {
                // Bit k of `bits` → bits 2k and 2k+1 of `lanes`: one mask bit per 64-bit lane.
                let bits = (word >> (32 * half)) & 0xFFFF_FFFF;
                let lanes = _pdep_u64(bits, 0x5555_5555_5555_5555) * 3;
                for v in 0..8 {
                    let vector = 16 * w + 8 * half + v;
                    let mask = (lanes >> (8 * v)) as u8;
                    let at = base.wrapping_add(8 * vector);
                    acc[v % 4] = if vector == 0 {
                        // SAFETY: the set lanes hold cells of the window, which the caller
                        // guarantees are in `cells`; masked-off lanes are not read.
                        _mm512_xor_si512(acc[v % 4], unsafe { _mm512_maskz_loadu_epi64(mask, at) })
                    } else {
                        // SAFETY: vectors 1..BAND_WIDTH / 4 lie wholly inside the window (it
                        // starts at most 3 cells into vector 0), and `base` is 64-byte aligned.
                        // A merge-masked XOR from memory is one fused operation per vector.
                        let x = unsafe { _mm512_load_si512(at.cast()) };
                        _mm512_mask_xor_epi64(acc[v % 4], mask, acc[v % 4], x)
                    };
                }
            }
        }
        // Cells BAND_WIDTH.. BAND_WIDTH + o of the shifted window: the top o bits of the band.
        let spill = (band[BAND_WORDS - 1] >> 60 >> (4 - o)) as u32 as u64;
        let mask = (_pdep_u64(spill, 0x55) * 3) as u8;
        // SAFETY: as for vector 0: the set lanes are the last o cells of the window.
        let x = unsafe { _mm512_maskz_loadu_epi64(mask, base.wrapping_add(2 * BAND_WIDTH)) };
        let sum =
            _mm512_xor_si512(_mm512_xor_si512(acc[0], acc[1]), _mm512_xor_si512(_mm512_xor_si512(acc[2], acc[3]), x));
        let mut lanes = [0u128; 4];
        // SAFETY: `lanes` is 64 writable bytes.
        unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), sum) };
        lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3]
    }

    /// `band << o` for `o < 4`, truncated to `BAND_WIDTH` bits (the spill is handled apart).
    #[inline(always)]
    fn shift_up(band: &Band, o: u32) -> Band {
        std::array::from_fn(|i| {
            let below = if i == 0 { 0 } else { band[i - 1] };
            ((u128::from(band[i]) << 64 | u128::from(below)) << o >> 64) as u64
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BAND_WIDTH, Band};

    /// Masked XOR with AVX2 (no mask registers): a 256-bit register holds two cells. The band
    /// word is broadcast and shifted so that the bit of the current cell pair sits in the sign
    /// bit of its lanes; a signed compare turns that into an all-ones or all-zeros lane mask, and
    /// each step shifts the next pair up. No branches, no constant tables.
    ///
    /// # Safety
    /// The CPU must support AVX2, and `start + BAND_WIDTH ≤ cells.len()`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn band_xor(cells: &[u128], start: usize, band: &Band) -> u128 {
        let window = cells[start..start + BAND_WIDTH].as_ptr().cast::<__m256i>();
        let zero = _mm256_setzero_si256();
        let mut acc = [zero; 4];
        for (w, &word) in band.iter().enumerate() {
            // Vector v holds cells 2v (lanes 0-1) and 2v + 1 (lanes 2-3) of this word's 64.
            // Walking v downwards, bits 2v and 2v + 1 are moved to bit 63 of their lanes.
            let mut bits = _mm256_sllv_epi64(_mm256_set1_epi64x(word as i64), _mm256_set_epi64x(0, 0, 1, 1));
            for v in (0..32).rev() {
                let mask = _mm256_cmpgt_epi64(zero, bits);
                // SAFETY: vector 32w + v is cells 2(32w + v) .. + 2 of the in-bounds window.
                let x = unsafe { _mm256_loadu_si256(window.add(32 * w + v)) };
                acc[v % 4] = _mm256_xor_si256(acc[v % 4], _mm256_and_si256(x, mask));
                bits = _mm256_slli_epi64::<2>(bits);
            }
        }
        let sum = _mm256_xor_si256(_mm256_xor_si256(acc[0], acc[1]), _mm256_xor_si256(acc[2], acc[3]));
        let mut lanes = [0u128; 2];
        // SAFETY: `lanes` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sum) };
        lanes[0] ^ lanes[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(window: &[u128], band: &Band) -> u128 {
        (0..BAND_WIDTH).filter(|&k| band[k / 64] >> (k % 64) & 1 == 1).fold(0, |acc, k| acc ^ window[k])
    }

    fn pseudo_band(i: u64) -> Band {
        std::array::from_fn(|w| {
            (i * BAND_WORDS as u64 + w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
        })
    }

    #[test]
    fn kernels_agree_with_definition() {
        // Every alignment of the window, windows flush with both ends of the cells, and bands
        // with the top bits set (the spill of the aligned kernel).
        let cells: Vec<u128> = (0..BAND_WIDTH as u128 + 9)
            .map(|i| (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
            .collect();
        let mut bands: Vec<Band> = (0..200).map(pseudo_band).collect();
        bands.extend([[0; BAND_WORDS], [u64::MAX; BAND_WORDS]]);
        for start in 0..=cells.len() - BAND_WIDTH {
            for band in &bands {
                let expected = reference(&cells[start..], band);
                assert_eq!(band_xor(&cells, start, band), expected, "start {start}");
                assert_eq!(bit_scan(&cells[start..], band), expected);
                #[cfg(target_arch = "x86_64")]
                if crate::simd::features().avx2 {
                    // SAFETY: AVX2 was detected; the window is in bounds.
                    let avx2 = unsafe { avx2::band_xor(&cells, start, band) };
                    assert_eq!(avx2, expected, "avx2, start {start}");
                }
            }
        }
    }

    /// `cargo test --release kernel_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "timing"]
    #[cfg(target_arch = "x86_64")]
    fn kernel_speed() {
        let len = std::env::var("KERNEL_CELLS").map_or(4096, |v| v.parse().unwrap());
        let cells: Vec<u128> = (0..len as u128).map(|i| i * 0x1234_5678_9ABC_DEF1).collect();
        let rows: Vec<(usize, Band)> = (0..4096u64)
            .map(|i| {
                let start = (i.wrapping_mul(0x9E37_79B9) >> 7) as usize % (len - BAND_WIDTH);
                (start, pseudo_band(i))
            })
            .collect();
        type Kernel = fn(&[u128], usize, &Band) -> u128;
        let kernels: [(&str, Kernel); 3] = [
            ("band_xor", band_xor),
            // SAFETY: run only on machines with AVX2 (every x86-64 this is benchmarked on).
            ("avx2", |c, s, b| unsafe { avx2::band_xor(c, s, b) }),
            ("bit_scan", |c, s, b| bit_scan(&c[s..], b)),
        ];
        // The best of several alternating rounds: the machine is shared.
        let mut best = [f64::MAX; 3];
        let mut acc = 0;
        for _ in 0..7 {
            for (k, (_, kernel)) in kernels.iter().enumerate() {
                let start = std::time::Instant::now();
                for _ in 0..51 {
                    for (s, band) in &rows {
                        acc ^= kernel(std::hint::black_box(&cells), *s, band);
                    }
                }
                let per = start.elapsed().as_nanos() as f64 / (51.0 * rows.len() as f64);
                best[k] = best[k].min(per);
            }
        }
        for ((name, _), per) in kernels.iter().zip(best) {
            println!("{name}: {per:.1} ns/row");
        }
        assert_ne!(acc, 1);
    }
}
