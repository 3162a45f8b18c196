//! The plaintext matrix a chooser multiplies, and its local products.
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::{PAR_ROWS, add_vecs};

/// A plaintext integer matrix (row-major, two's-complement entries of `bits` bits stored in u64).
/// Zeroized on drop: it is a party's private data.
pub struct Matrix {
    pub(super) data: Zeroizing<Vec<u64>>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) bits: u32,
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
        Self { data: Zeroizing::new(data), rows, cols, bits }
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
