//! The plaintext matrix a chooser multiplies, its local products, and its bit [`Layout`] (which
//! bits of which column get an OT).
use std::sync::Arc;

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::{PAR_ROWS, add_vecs};

/// The bits of one column that carry information: every entry is a multiple of 2^`lo` and, as a
/// two's-complement integer (`signed`) or a non-negative one, fits in `hi` bits, so
/// x = Σ_{lo≤k<hi} w_k·x_k with w_k = 2^k, except w_{hi−1} = −2^{hi−1} when `signed`. `lo` = `hi`:
/// the column is all zero (no OTs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColBits {
    pub lo: u8,
    pub hi: u8,
    pub signed: bool,
}

impl ColBits {
    /// All `bits` bits of a two's-complement entry.
    pub fn full(bits: u32) -> Self {
        Self { lo: 0, hi: bits as u8, signed: true }
    }

    /// The narrowest bits of a column with these entries (two's-complement integers as u64).
    pub fn of(values: impl Iterator<Item = u64>) -> Self {
        let mut acc = BitsAcc::default();
        for v in values {
            acc.push(v);
        }
        acc.bits()
    }

    /// OTs per entry.
    pub fn width(self) -> usize {
        (self.hi - self.lo) as usize
    }

    /// Whether every entry of `values` is Σ_{lo≤k<hi} w_k·x_k for its bits x_k.
    pub(super) fn holds(self, v: u64) -> bool {
        if self.lo == self.hi {
            return v == 0;
        }
        let v = v as i64;
        let (lo, hi) = (self.lo as u32, self.hi as u32);
        let fits = if self.signed {
            hi == 64 || (-(1i128 << (hi - 1))..(1i128 << (hi - 1))).contains(&(v as i128))
        } else {
            v >= 0 && (hi == 64 || (v as u64) < (1u64 << hi))
        };
        fits && (v as u64).trailing_zeros() >= lo
    }
}

/// The running state of [`ColBits::of`] over a column's entries, so that a row-major matrix is
/// scanned once, row by row, for all its columns ([`Matrix::tightened`]) instead of column by
/// column with a stride of a whole row (a cache miss per entry on a wide matrix).
#[derive(Debug, Clone, Copy)]
struct BitsAcc {
    /// Lowest set bit of any entry (64: none yet).
    lo: u32,
    /// Bits of the largest magnitude part (v for v ≥ 0, !v for v < 0).
    hi: u32,
    signed: bool,
    any: bool,
}

impl Default for BitsAcc {
    fn default() -> Self {
        Self { lo: 64, hi: 0, signed: false, any: false }
    }
}

impl BitsAcc {
    #[inline]
    fn push(&mut self, v: u64) {
        if v == 0 {
            return;
        }
        self.any = true;
        self.lo = self.lo.min(v.trailing_zeros());
        let v = v as i64;
        self.signed |= v < 0;
        self.hi = self.hi.max(64 - (if v < 0 { !v } else { v } as u64).leading_zeros());
    }

    fn merge(self, o: Self) -> Self {
        Self { lo: self.lo.min(o.lo), hi: self.hi.max(o.hi), signed: self.signed | o.signed, any: self.any | o.any }
    }

    fn bits(self) -> ColBits {
        if !self.any {
            return ColBits { lo: 0, hi: 0, signed: false };
        }
        // Signed: one more bit for the sign.
        let hi = if self.signed { self.hi + 1 } else { self.hi };
        ColBits { lo: self.lo as u8, hi: hi as u8, signed: self.signed }
    }
}

/// Which bits of each column get an OT, in OT order within a row: column by column, bit `lo` to
/// `hi − 1`. Both parties must use the same layout for a matrix (the chooser announces it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    cols: Vec<ColBits>,
    /// Per OT of a row: (column, bit, weight w_k mod 2^64).
    slots: Vec<(u32, u8, u64)>,
}

impl Layout {
    pub fn new(cols: Vec<ColBits>) -> Self {
        let mut slots = Vec::new();
        for (j, c) in cols.iter().enumerate() {
            assert!(c.lo <= c.hi && c.hi <= 64, "bad column bits {c:?}");
            for k in c.lo..c.hi {
                let w = 1u64 << k;
                let w = if c.signed && k + 1 == c.hi { w.wrapping_neg() } else { w };
                slots.push((j as u32, k, w));
            }
        }
        Self { cols, slots }
    }

    /// Every column with all `bits` bits.
    pub fn full(cols: usize, bits: u32) -> Self {
        Self::new(vec![ColBits::full(bits); cols])
    }

    pub fn cols(&self) -> &[ColBits] {
        &self.cols
    }

    /// OTs per row.
    pub fn per_row(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn slots(&self) -> &[(u32, u8, u64)] {
        &self.slots
    }
}

/// A plaintext integer matrix (row-major, two's-complement entries of `bits` bits stored in u64)
/// and the [`Layout`] of its OTs. Zeroized on drop: it is a party's private data.
pub struct Matrix {
    pub(super) data: Zeroizing<Vec<u64>>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) bits: u32,
    pub(super) layout: Arc<Layout>,
}

impl Matrix {
    /// # Panics
    ///
    /// If `data.len() != rows * cols`, `bits` is not in 1..=64, or an entry does not fit in
    /// `bits` bits as a two's-complement integer.
    pub fn new(data: Vec<u64>, rows: usize, cols: usize, bits: u32) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data of the wrong length");
        assert!((1..=64).contains(&bits), "bits must be 1..=64");
        if bits < 64 {
            let (lo, hi) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
            assert!(data.iter().all(|&x| (lo..=hi).contains(&(x as i64))), "entry out of the {bits}-bit range");
        }
        Self { data: Zeroizing::new(data), rows, cols, bits, layout: Arc::new(Layout::full(cols, bits)) }
    }

    /// The same matrix with the narrowest layout its columns allow ([`ColBits::of`]).
    pub fn tightened(self) -> Self {
        let cols = self.cols;
        let empty = || vec![BitsAcc::default(); cols];
        let merge = |a: Vec<BitsAcc>, b: Vec<BitsAcc>| a.into_iter().zip(b).map(|(a, b)| a.merge(b)).collect();
        let acc: Vec<BitsAcc> = if cols == 0 {
            Vec::new()
        } else {
            self.data
                .par_chunks(cols * PAR_ROWS)
                .map(|block| {
                    let mut acc = empty();
                    for row in block.chunks(cols) {
                        for (a, &v) in acc.iter_mut().zip(row) {
                            a.push(v);
                        }
                    }
                    acc
                })
                .reduce(empty, merge)
        };
        let bits: Vec<ColBits> = acc.into_iter().map(BitsAcc::bits).collect();
        self.with_layout(Arc::new(Layout::new(bits)))
    }

    /// The same matrix with `layout`.
    ///
    /// # Panics
    ///
    /// If the layout has another column count or an entry is not representable in it.
    pub fn with_layout(mut self, layout: Arc<Layout>) -> Self {
        assert_eq!(layout.cols.len(), self.cols, "layout of another column count");
        if self.cols > 0 {
            assert!(
                self.data.par_chunks(self.cols).all(|row| row.iter().zip(&layout.cols).all(|(&v, c)| c.holds(v))),
                "entry not representable in the layout"
            );
        }
        self.layout = layout;
        self
    }

    /// The rows `rows` of this matrix, with the same layout.
    pub fn select_rows(&self, rows: &[u32]) -> Matrix {
        let cols = self.cols;
        let mut data = Vec::with_capacity(rows.len() * cols);
        for &r in rows {
            data.extend_from_slice(&self.data[r as usize * cols..(r as usize + 1) * cols]);
        }
        Matrix { data: Zeroizing::new(data), rows: rows.len(), cols, bits: self.bits, layout: self.layout.clone() }
    }

    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn data(&self) -> &[u64] {
        &self.data
    }

    /// Local X·v (mod 2^64).
    pub fn mul_vec(&self, v: &[u64]) -> Vec<u64> {
        assert_eq!(v.len(), self.cols);
        self.data.par_chunks(self.cols.max(1)).take(self.rows).map(|row| dot(row, v)).collect()
    }

    /// Local Xᵀ·v (mod 2^64).
    pub fn mul_t_vec(&self, v: &[u64]) -> Vec<u64> {
        assert_eq!(v.len(), self.rows);
        let cols = self.cols;
        if cols == 0 {
            return Vec::new();
        }
        self.data
            .par_chunks(cols * PAR_ROWS)
            .zip(v.par_chunks(PAR_ROWS))
            .map(|(block, vs)| {
                let mut acc = vec![0u64; cols];
                for (row, &vi) in block.chunks(cols).zip(vs) {
                    for (a, &x) in acc.iter_mut().zip(row) {
                        *a = a.wrapping_add(x.wrapping_mul(vi));
                    }
                }
                acc
            })
            .reduce(|| vec![0u64; cols], add_vecs)
    }
}

fn dot(a: &[u64], b: &[u64]) -> u64 {
    a.iter().zip(b).fold(0u64, |s, (&x, &y)| s.wrapping_add(x.wrapping_mul(y)))
}
