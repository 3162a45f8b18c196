//! The 128 × n bit-matrix transpose at the heart of IKNP OT extension.
//!
//! # What it computes
//!
//! IKNP works with 128 *columns* of n bits (one per base OT: the PRG expansions t^j, q^j) but
//! outputs n *rows* of 128 bits (one block per extended OT: t_i, q_i). [`transpose_128xn`] turns
//! the first into the second: input row `j` (0 ≤ j < 128) is a packed bit vector of n bits
//! (LSB-first: bit `i` is bit `i % 8` of byte `i / 8`), rows `stride` bytes apart; output block
//! `i` has bit `j` set iff input row `j` has bit `i` set.
//!
//! # How
//!
//! The x86-64 kernels (SSE2, AVX2, AVX-512BW) use the `movemask` technique (as in emp-toolkit and libOTe): gather one byte
//! column from 16 (SSE2) or 32 (AVX2) input rows into a vector; `pmovmskb` then reads bit 7 of
//! every byte (one output bit per input row) at once; shift each byte left by one and repeat for
//! bits 6..0. The gather is a 16 × 16 byte transpose in registers (four rounds of `punpck*`), so
//! each input row is read 16 bytes at a time rather than byte by byte. For AVX2, the two 128-bit
//! lanes carry rows `r` and `r + 16`, and since the unpack instructions work within lanes, one
//! 256-bit transpose handles 32 rows; AVX-512BW does the same with four lanes (64 rows, and
//! `vpmovb2m` for a 64-bit mask). The kernels process tiles of 128 columns (16 bytes of each
//! row, giving 128 complete output blocks), so each output block is written once, whole.
//!
//! The portable kernel transposes 8 × 8 bit blocks packed in a `u64` with three masked
//! "delta swaps" (Hacker's Delight, §7-3); it also handles the tail of n % 128 columns.
//!
//! The kernel is picked at run time ([`crate::simd`]). A stride that is a multiple of
//! 4 KiB makes the 128 rows of a tile collide in the same L1 sets; callers that own the input
//! buffer pad the stride (see [`padded_stride`]).
//!
//! Not secret-dependent: the transpose moves bits without branching on them.

use rayon::prelude::*;

/// Output blocks per rayon task in [`par_transpose_128xn`] (a multiple of 128: whole tiles).
const PAR_BLOCKS: usize = 2048;

/// A row stride of at least `row_bytes` that is not a multiple of 4 KiB (so the 128 rows of a tile
/// do not all map to the same L1 cache sets) and is a multiple of 16.
pub fn padded_stride(row_bytes: usize) -> usize {
    let stride = row_bytes.next_multiple_of(16);
    if stride.is_multiple_of(4096) { stride + 64 } else { stride }
}

/// Transposes the 128 × n bit matrix whose row `j` is the `n.div_ceil(8)` bytes at
/// `rows[j * stride..]` into `out` (n = `out.len()`): bit `j` of `out[i]` is bit `i` of row `j`.
///
/// # Panics
///
/// If `stride` is shorter than a row or `rows` is too short to hold 128 of them.
pub fn transpose_128xn(rows: &[u8], stride: usize, out: &mut [u128]) {
    transpose_with(Kernel::best(), rows, stride, out);
}

/// [`transpose_128xn`] on the rayon pool, split into tasks of whole tiles.
pub fn par_transpose_128xn(rows: &[u8], stride: usize, out: &mut [u128]) {
    check_shape(rows, stride, out.len());
    out.par_chunks_mut(PAR_BLOCKS)
        .enumerate()
        .for_each(|(k, out)| transpose_128xn(&rows[k * PAR_BLOCKS / 8..], stride, out));
}

/// The implementations; [`Kernel::best`] is the one [`transpose_128xn`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))] // used on x86-64 by tests only
    Portable,
    #[cfg(target_arch = "x86_64")]
    Sse2,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    pub(crate) fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = crate::simd::features();
            if cpu.avx512f && cpu.avx512bw {
                return Kernel::Avx512;
            }
            if cpu.avx2 {
                return Kernel::Avx2;
            }
            // SSE2 is part of the x86-64 baseline.
            Kernel::Sse2
        }
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Portable
    }

    /// All kernels this CPU can run (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            kernels.push(Kernel::Sse2);
            let cpu = crate::simd::features();
            if cpu.avx2 {
                kernels.push(Kernel::Avx2);
            }
            if cpu.avx512f && cpu.avx512bw {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }
}

fn check_shape(rows: &[u8], stride: usize, n: usize) {
    let row_bytes = n.div_ceil(8);
    assert!(stride >= row_bytes, "row stride {stride} is shorter than a row of {n} bits");
    if n > 0 {
        assert!(
            rows.len() >= 127 * stride + row_bytes,
            "{} bytes cannot hold 128 rows of {n} bits {stride} bytes apart",
            rows.len()
        );
    }
}

pub(crate) fn transpose_with(kernel: Kernel, rows: &[u8], stride: usize, out: &mut [u128]) {
    check_shape(rows, stride, out.len());
    let tiles = out.len() / 128;
    let (head, tail) = out.split_at_mut(tiles * 128);
    match kernel {
        Kernel::Portable => portable::transpose(rows, stride, head),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of the x86-64 baseline.
        Kernel::Sse2 => unsafe { x86::tiles_sse2(rows, stride, head) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(crate::simd::features().avx2);
            // SAFETY: the CPU supports AVX2 (asserted); the shape was checked above.
            unsafe { x86::tiles_avx2(rows, stride, head) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            let cpu = crate::simd::features();
            assert!(cpu.avx512f && cpu.avx512bw);
            // SAFETY: the CPU supports AVX-512F and AVX-512BW (asserted); shape checked above.
            unsafe { x86::tiles_avx512(rows, stride, head) }
        }
    }
    if !tail.is_empty() {
        portable::transpose(&rows[tiles * 16..], stride, tail);
    }
}

mod portable {
    /// Transposes the 8 × 8 bit matrix whose row `r` is byte `r` of `x` (column `c` is bit `c`):
    /// the bit at 8r + c moves to 8c + r. Three delta swaps: 1 × 1, 2 × 2, then 4 × 4 blocks.
    #[inline]
    pub fn transpose8(mut x: u64) -> u64 {
        let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
        x ^= t ^ (t << 7);
        let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
        x ^= t ^ (t << 14);
        let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
        x ^= t ^ (t << 28);
        x
    }

    /// Any n (a partial last byte is fine): 8 output blocks per byte column.
    pub fn transpose(rows: &[u8], stride: usize, out: &mut [u128]) {
        let n = out.len();
        for b in 0..n.div_ceil(8) {
            let mut blocks = [0u128; 8];
            for g in 0..16 {
                let mut x = 0u64;
                for r in 0..8 {
                    x |= (rows[(8 * g + r) * stride + b] as u64) << (8 * r);
                }
                let x = transpose8(x);
                for (c, block) in blocks.iter_mut().enumerate() {
                    *block |= (((x >> (8 * c)) & 0xff) as u128) << (8 * g);
                }
            }
            let m = (n - 8 * b).min(8);
            out[8 * b..8 * b + m].copy_from_slice(&blocks[..m]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// After four `shuffle_stage!`s, vector `i` holds byte column `REV4[i]` (4-bit reversal).
    const REV4: [usize; 16] = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15];

    /// One perfect-shuffle stage of the 16 × 16 byte transpose (per 128-bit lane): output `i < 8`
    /// interleaves the low halves of inputs `2i` and `2i + 1`, output `8 + i` their high halves.
    /// Applied four times with element widths 8, 16, 32 and 64 bits, it leaves row `r` of column
    /// `REV4[i]` in byte `r` of vector `i`. Written out as an array literal so the compiler keeps
    /// everything in registers (loops over arrays here got compiled to stack traffic).
    macro_rules! shuffle_stage {
        ($x:expr, $lo:ident, $hi:ident) => {{
            let x = $x;
            [
                $lo(x[0], x[1]),
                $lo(x[2], x[3]),
                $lo(x[4], x[5]),
                $lo(x[6], x[7]),
                $lo(x[8], x[9]),
                $lo(x[10], x[11]),
                $lo(x[12], x[13]),
                $lo(x[14], x[15]),
                $hi(x[0], x[1]),
                $hi(x[2], x[3]),
                $hi(x[4], x[5]),
                $hi(x[6], x[7]),
                $hi(x[8], x[9]),
                $hi(x[10], x[11]),
                $hi(x[12], x[13]),
                $hi(x[14], x[15]),
            ]
        }};
    }

    /// The kernel shared by the three instruction sets. For every 128-column tile and every group
    /// of `LANES × 16` rows: load 16 vectors (lane `l` of vector `r` = 16 bytes of row
    /// `16 l + r`), byte-transpose them, then for each byte column peel off its 8 bits with
    /// `movemask` + shift, each mask being the group's `LANES × 16` bits of one output block.
    macro_rules! tiles_kernel {
        ($rows:ident, $stride:ident, $out:ident, $word:ty, $lanes:expr, |$lane:ident| $load:expr, $mask:expr, $shl1:expr,
         [$lo8:ident, $hi8:ident, $lo16:ident, $hi16:ident, $lo32:ident, $hi32:ident, $lo64:ident, $hi64:ident]) => {{
            const GROUPS: usize = 128 / (16 * $lanes);
            let tiles = $out.len() / 128;
            // Every load below reads 16 bytes at (row · stride + 16 · tile) for row < 128 and
            // tile < tiles: this bounds them all.
            assert!($out.len().is_multiple_of(128));
            if tiles > 0 {
                assert!($rows.len() >= 127 * $stride + 16 * tiles);
            }
            let words = words::<$word>($out);
            let per_block = 128 / <$word>::BITS as usize;
            for t in 0..tiles {
                for g in 0..GROUPS {
                    let at = |row: usize| {
                        // SAFETY: row < 128 and t < tiles, so the 16 bytes are inside `rows`
                        // (asserted above); loadu has no alignment requirement.
                        unsafe { _mm_loadu_si128($rows.as_ptr().add(row * $stride + 16 * t).cast()) }
                    };
                    let x: [_; 16] = core::array::from_fn(|r| {
                        let $lane = |l: usize| at(16 * $lanes * g + 16 * l + r);
                        $load
                    });
                    let x = shuffle_stage!(x, $lo8, $hi8);
                    let x = shuffle_stage!(x, $lo16, $hi16);
                    let x = shuffle_stage!(x, $lo32, $hi32);
                    let y = shuffle_stage!(x, $lo64, $hi64);
                    for (i, &v) in y.iter().enumerate() {
                        let column = 128 * t + 8 * REV4[i];
                        let mut v = v;
                        // movemask reads bit 7 of every byte: bit 7 of the column byte first.
                        for k in (0..8).rev() {
                            words[(column + k) * per_block + g] = $mask(v) as $word;
                            v = $shl1(v);
                        }
                    }
                }
            }
        }};
    }

    /// `out` as a slice of `T` words: word `per_block · b + g` holds bits
    /// `[g · T::BITS, (g + 1) · T::BITS)` of block `b` (x86 is little-endian).
    fn words<T: Word>(out: &mut [u128]) -> &mut [T] {
        let len = out.len() * (16 / std::mem::size_of::<T>());
        // SAFETY: `T` is a plain unsigned integer (sealed trait) no larger than u128: the memory of
        // `out` is exactly `len` valid, aligned `T`s, and the new slice borrows it mutably.
        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<T>(), len) }
    }

    trait Word {}
    impl Word for u16 {}
    impl Word for u32 {}
    impl Word for u64 {}

    /// Full 128-column tiles with SSE2: 8 groups of 16 rows, 16-bit masks.
    ///
    /// # Safety
    ///
    /// The CPU must support SSE2 (always true on x86-64).
    #[target_feature(enable = "sse2")]
    pub unsafe fn tiles_sse2(rows: &[u8], stride: usize, out: &mut [u128]) {
        tiles_kernel!(
            rows,
            stride,
            out,
            u16,
            1,
            |lane| lane(0),
            |v| _mm_movemask_epi8(v) as u16,
            |v| _mm_slli_epi64::<1>(v),
            [
                _mm_unpacklo_epi8,
                _mm_unpackhi_epi8,
                _mm_unpacklo_epi16,
                _mm_unpackhi_epi16,
                _mm_unpacklo_epi32,
                _mm_unpackhi_epi32,
                _mm_unpacklo_epi64,
                _mm_unpackhi_epi64
            ]
        );
    }

    /// Full 128-column tiles with AVX2: 4 groups of 32 rows (rows r and r + 16 in the two
    /// lanes), 32-bit masks.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn tiles_avx2(rows: &[u8], stride: usize, out: &mut [u128]) {
        tiles_kernel!(
            rows,
            stride,
            out,
            u32,
            2,
            |lane| _mm256_set_m128i(lane(1), lane(0)),
            |v| _mm256_movemask_epi8(v) as u32,
            |v| _mm256_slli_epi64::<1>(v),
            [
                _mm256_unpacklo_epi8,
                _mm256_unpackhi_epi8,
                _mm256_unpacklo_epi16,
                _mm256_unpackhi_epi16,
                _mm256_unpacklo_epi32,
                _mm256_unpackhi_epi32,
                _mm256_unpacklo_epi64,
                _mm256_unpackhi_epi64
            ]
        );
    }

    /// Full 128-column tiles with AVX-512BW: 2 groups of 64 rows (rows r, r + 16, r + 32, r + 48
    /// in the four lanes), 64-bit masks (`vpmovb2m`).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX-512F and AVX-512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn tiles_avx512(rows: &[u8], stride: usize, out: &mut [u128]) {
        tiles_kernel!(
            rows,
            stride,
            out,
            u64,
            4,
            |lane| {
                let v = _mm512_castsi128_si512(lane(0));
                let v = _mm512_inserti32x4::<1>(v, lane(1));
                let v = _mm512_inserti32x4::<2>(v, lane(2));
                _mm512_inserti32x4::<3>(v, lane(3))
            },
            |v| _mm512_movepi8_mask(v),
            |v| _mm512_slli_epi64::<1>(v),
            [
                _mm512_unpacklo_epi8,
                _mm512_unpackhi_epi8,
                _mm512_unpacklo_epi16,
                _mm512_unpackhi_epi16,
                _mm512_unpacklo_epi32,
                _mm512_unpackhi_epi32,
                _mm512_unpacklo_epi64,
                _mm512_unpackhi_epi64
            ]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ot::aes_hash::AesPrg;

    fn naive(rows: &[u8], stride: usize, n: usize) -> Vec<u128> {
        (0..n)
            .map(|i| {
                (0..128).fold(0u128, |acc, j| {
                    let bit = (rows[j * stride + i / 8] >> (i % 8)) & 1;
                    acc | (bit as u128) << j
                })
            })
            .collect()
    }

    fn random_rows(len: usize, seed: u128) -> Vec<u8> {
        let mut rows = vec![0u8; len];
        AesPrg::new(seed).fill_bytes(0, &mut rows);
        rows
    }

    #[test]
    fn all_kernels_match_the_naive_transpose() {
        let shapes: [usize; 14] = [0, 1, 7, 8, 9, 127, 128, 129, 200, 256, 1000, 1024, 1032, 4096 + 72];
        for (s, &n) in shapes.iter().enumerate() {
            for stride in [n.div_ceil(8), n.div_ceil(8) + 5, padded_stride(n.div_ceil(8))] {
                let rows = random_rows(128 * stride.max(1), s as u128);
                let expected = naive(&rows, stride, n);
                for kernel in Kernel::available() {
                    let mut out = vec![0u128; n];
                    transpose_with(kernel, &rows, stride, &mut out);
                    assert!(out == expected, "{kernel:?}, n = {n}, stride = {stride}");
                }
                let mut out = vec![u128::MAX; n];
                par_transpose_128xn(&rows, stride, &mut out);
                assert!(out == expected, "parallel, n = {n}, stride = {stride}");
            }
        }
    }

    #[test]
    fn single_bits_land_where_they_should() {
        let n = 256;
        for (j, i) in [(0, 0), (127, 255), (5, 130), (64, 63), (100, 7)] {
            let mut rows = vec![0u8; 128 * 32];
            rows[j * 32 + i / 8] = 1 << (i % 8);
            for kernel in Kernel::available() {
                let mut out = vec![0u128; n];
                transpose_with(kernel, &rows, 32, &mut out);
                for (k, &block) in out.iter().enumerate() {
                    let expected = if k == i { 1u128 << j } else { 0 };
                    assert_eq!(block, expected, "{kernel:?}: bit ({j}, {i})");
                }
            }
        }
    }

    #[test]
    fn padded_strides_avoid_4k_multiples() {
        assert_eq!(padded_stride(8192), 8192 + 64);
        assert_eq!(padded_stride(100), 112);
        assert_eq!(padded_stride(0), 64);
    }
}
