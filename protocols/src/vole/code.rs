//! The compressing map of the dual-LPN assumption: an expand-accumulate (EA) code.
//!
//! Boyle, Couteau, Gilboa, Ishai, Kohl, Resch, Scholl, "Correlated Pseudorandomness from
//! Expand-Accumulate Codes" (CRYPTO 2022): the generator G = B·A of a code of length N with
//! message length n, where A (N × N) is the accumulator (prefix sums) and B (n × N) a random
//! expander with [`EXPANDER_WEIGHT`] ones per row. A silent VOLE outputs x = B·A·e for a sparse
//! noise vector e of length N (the "dual" form): dual-LPN with this code says x is pseudorandom.
//!
//! Both steps are GF(2)-linear, so applying them to each party's share of a correlation keeps
//! the correlation. The accumulation is split: each GGM tree's leaves are prefix-summed locally
//! (in parallel), and the sum of all earlier trees is added when an accumulated position is read
//! by the expander. The expander's positions are public, drawn from AES-CTR under a seed both
//! parties derive from the extension's position in the session.

use rayon::prelude::*;

use super::super::ot::aes_hash::AesPrg;

/// Ones per row of the expander B: libOTe's "ExAcc11" instance (row weight 11, with the
/// minimum-distance ratio 0.1 its authors estimate for this weight), the "fast but more
/// conservative" of their EA parameter sets.
pub const EXPANDER_WEIGHT: usize = 11;

/// Random 32-bit words per output row (three AES blocks, of which 11 words are used).
const WORDS_PER_ROW: usize = 12;

/// Outputs per unit of parallel work.
const CHUNK: usize = 1 << 12;

/// An accumulated vector in split form: `local[p]` is the prefix sum of `p`'s tree up to `p`, and
/// `tree_prefix[j]` the sum of every tree before `j`; position `p` of the accumulated vector is
/// `local[p] ⊕ tree_prefix[p >> depth]`.
pub(crate) struct Accumulated<'a> {
    pub local: &'a [u128],
    pub tree_prefix: &'a [u128],
    pub depth: u32,
}

impl Accumulated<'_> {
    #[inline(always)]
    fn at(&self, p: usize) -> u128 {
        self.local[p] ^ self.tree_prefix[p >> self.depth]
    }

    /// Starts loading the blocks a row will read (the reads are random over tens of MB: without
    /// this, each costs a full memory latency).
    #[inline(always)]
    fn prefetch(&self, row: &[u32; WORDS_PER_ROW]) {
        for &p in &row[..EXPANDER_WEIGHT] {
            prefetch(&self.local[p as usize]);
        }
    }
}

/// Rows ahead whose reads are prefetched.
const PREFETCH_ROWS: usize = 6;

#[inline(always)]
fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and has no architectural effect; the
    // pointer comes from a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(x as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Prefix-sums each tree of `leaves` (trees of `2^depth` leaves) in place and returns, per tree,
/// the sum of all trees before it.
pub(crate) fn accumulate_trees(leaves: &mut [u128], depth: u32) -> Vec<u128> {
    let totals: Vec<u128> = leaves
        .par_chunks_mut(1 << depth)
        .map(|tree| {
            let mut acc = 0u128;
            for x in tree.iter_mut() {
                acc ^= *x;
                *x = acc;
            }
            acc
        })
        .collect();
    exclusive_prefix(&totals)
}

/// `out[j] = v[0] ⊕ … ⊕ v[j - 1]`.
pub(crate) fn exclusive_prefix(v: &[u128]) -> Vec<u128> {
    let mut acc = 0u128;
    v.iter()
        .map(|&x| {
            let before = acc;
            acc ^= x;
            before
        })
        .collect()
}

/// The expander's positions for rows `first..first + rows.len()` of a code of length `code_len`.
fn row_positions(prg: &AesPrg, code_len: usize, first: usize, rows: &mut [[u32; WORDS_PER_ROW]]) {
    let blocks: &mut [u128] = bytemuck_rows(rows);
    prg.fill_blocks((first * WORDS_PER_ROW / 4) as u64, blocks);
    for row in rows.iter_mut() {
        for w in row.iter_mut() {
            // Lemire's multiply-shift: uniform enough for a public code (bias < code_len / 2^32).
            *w = ((*w as u64 * code_len as u64) >> 32) as u32;
        }
    }
}

/// Views rows of 12 words as blocks (3 per row), for the PRG to fill.
fn bytemuck_rows(rows: &mut [[u32; WORDS_PER_ROW]]) -> &mut [u128] {
    let len = rows.len() * WORDS_PER_ROW / 4;
    // SAFETY: [u32; 12] is 48 bytes with no padding; u128 needs 16-byte alignment, which the
    // caller's buffer (`RowBuf`) guarantees; every bit pattern is valid for both types.
    unsafe { std::slice::from_raw_parts_mut(rows.as_mut_ptr() as *mut u128, len) }
}

/// A 16-byte aligned buffer of expander rows.
#[repr(C, align(16))]
struct RowBuf([[u32; WORDS_PER_ROW]; CHUNK]);

/// The PRG of the public expander for the extension at session position `seed`.
pub(crate) fn expander_prg(seed: u64) -> AesPrg {
    // The seed is public: the code need not be secret, only independent of the inputs.
    AesPrg::new(0x636f_6e73_6f72_742f_766f_6c65_2f65_6100u128 ^ seed as u128)
}

/// `out[i] = ⊕_{r < w} acc[pos(i, r)]`: the expander applied to an accumulated vector.
pub(crate) fn expand(acc: &Accumulated<'_>, code_len: usize, seed: u64, out: &mut [u128]) {
    let prg = expander_prg(seed);
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut rows = Box::new(RowBuf([[0u32; WORDS_PER_ROW]; CHUNK]));
        let rows = &mut rows.0[..out.len()];
        row_positions(&prg, code_len, c * CHUNK, rows);
        for (i, (o, row)) in out.iter_mut().zip(rows.iter()).enumerate() {
            if let Some(ahead) = rows.get(i + PREFETCH_ROWS) {
                acc.prefetch(ahead);
            }
            let mut x = 0u128;
            for &p in &row[..EXPANDER_WEIGHT] {
                x ^= acc.at(p as usize);
            }
            *o = x;
        }
    });
}

/// The noise holder's sparse vector: one nonzero value `beta[j]` per tree at offset `alpha[j]`,
/// accumulated in closed form (it is constant between noise positions).
pub(crate) struct Noise<'a> {
    pub alpha: &'a [u32],
    pub beta: &'a [u128],
    /// `beta[0] ⊕ … ⊕ beta[j - 1]`.
    pub beta_prefix: &'a [u128],
    pub depth: u32,
}

impl Noise<'_> {
    /// Position `p` of the accumulated noise vector, without branching on the secret offsets.
    #[inline(always)]
    fn at(&self, p: usize) -> u128 {
        let j = p >> self.depth;
        let offset = (p & ((1 << self.depth) - 1)) as i64;
        // All ones when offset >= alpha[j].
        let reached = !(((offset - self.alpha[j] as i64) >> 63) as u64) as u128;
        let mask = reached | (reached << 64);
        self.beta_prefix[j] ^ (self.beta[j] & mask)
    }
}

/// [`expand`] for the noise holder: the expander applied to its accumulated leaves (`out_c`) and
/// to its accumulated noise (`out_a`) in one pass over the positions.
pub(crate) fn expand_with_noise(
    acc: &Accumulated<'_>,
    noise: &Noise<'_>,
    code_len: usize,
    seed: u64,
    out_a: &mut [u128],
    out_c: &mut [u128],
) {
    let prg = expander_prg(seed);
    out_c.par_chunks_mut(CHUNK).zip(out_a.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (out_c, out_a))| {
        let mut rows = Box::new(RowBuf([[0u32; WORDS_PER_ROW]; CHUNK]));
        let rows = &mut rows.0[..out_c.len()];
        row_positions(&prg, code_len, c * CHUNK, rows);
        for (i, ((oc, oa), row)) in out_c.iter_mut().zip(out_a.iter_mut()).zip(rows.iter()).enumerate() {
            if let Some(ahead) = rows.get(i + PREFETCH_ROWS) {
                acc.prefetch(ahead);
            }
            let (mut x, mut y) = (0u128, 0u128);
            for &p in &row[..EXPANDER_WEIGHT] {
                x ^= acc.at(p as usize);
                y ^= noise.at(p as usize);
            }
            *oc = x;
            *oa = y;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expander applied to a plainly accumulated vector, position by position.
    fn reference(vector: &[u128], seed: u64, n: usize) -> Vec<u128> {
        let mut acc = vector.to_vec();
        for i in 1..acc.len() {
            acc[i] ^= acc[i - 1];
        }
        let prg = expander_prg(seed);
        let mut rows = Box::new(RowBuf([[0u32; WORDS_PER_ROW]; CHUNK]));
        (0..n)
            .map(|i| {
                row_positions(&prg, vector.len(), i, &mut rows.0[..1]);
                rows.0[0][..EXPANDER_WEIGHT].iter().fold(0, |x, &p| x ^ acc[p as usize])
            })
            .collect()
    }

    #[test]
    fn split_accumulation_and_closed_form_noise_match_the_plain_code() {
        let depth = 4;
        let trees = 37;
        let len = trees << depth;
        let n = 5000;
        let leaves: Vec<u128> =
            (0..len as u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).collect();
        let mut local = leaves.clone();
        let tree_prefix = accumulate_trees(&mut local, depth);
        let acc = Accumulated { local: &local, tree_prefix: &tree_prefix, depth };
        let mut out = vec![0u128; n];
        expand(&acc, len, 7, &mut out);
        assert_eq!(out, reference(&leaves, 7, n));

        let alpha: Vec<u32> = (0..trees as u32).map(|j| (j * 7) % 16).collect();
        let beta: Vec<u128> = (0..trees as u128).map(|j| (j + 1) * 0x1_0000_0001).collect();
        let beta_prefix = exclusive_prefix(&beta);
        let mut sparse = vec![0u128; len];
        for j in 0..trees {
            sparse[(j << depth) + alpha[j] as usize] = beta[j];
        }
        let noise = Noise { alpha: &alpha, beta: &beta, beta_prefix: &beta_prefix, depth };
        let (mut a, mut c) = (vec![0u128; n], vec![0u128; n]);
        expand_with_noise(&acc, &noise, len, 7, &mut a, &mut c);
        assert_eq!(c, out);
        assert_eq!(a, reference(&sparse, 7, n));
    }

    #[test]
    fn positions_cover_the_code_and_depend_on_the_seed() {
        let prg = expander_prg(1);
        let mut rows = Box::new(RowBuf([[0u32; WORDS_PER_ROW]; CHUNK]));
        row_positions(&prg, 1000, 0, &mut rows.0[..]);
        let mut seen = vec![false; 1000];
        for row in rows.0.iter() {
            for &p in &row[..EXPANDER_WEIGHT] {
                assert!(p < 1000);
                seen[p as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        let first = rows.0[0];
        row_positions(&expander_prg(2), 1000, 0, &mut rows.0[..1]);
        assert_ne!(rows.0[0], first);
    }
}
