//! Encoding: on-the-fly Gaussian elimination of the band system, then back-substitution.

use rand::CryptoRng;

use super::band::{self, Band};
use super::band_xor::{band_xor, bit_scan};
use super::order::{BATCH, for_each_batch_by_start, prefetch};
use super::row::{Row, RowHasher};
use super::{BAND_WIDTH, OkvsKey};

/// A row reduced to zero while its value did not: the system has no solution under this seed
/// (or a key repeats with another value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unsolvable;

/// One slot of the echelon form: the reduced row whose pivot (first one) is this column, as a
/// band relative to the column (bit 0 set), and its right-hand side. An empty slot is all zero.
/// Band and right-hand side share a slot so that a step of insertion touches one place.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pivot {
    band: Band,
    rhs: u128,
}

/// Solves `⟨row(k_i), P⟩ = v_i` for all `i` into `cells` (length `hasher.starts() + BAND_WIDTH - 1`).
/// Free columns get uniform values from `rng`, so that `P` is uniform whenever the values are.
pub(crate) fn solve<K: OkvsKey, R: CryptoRng + ?Sized>(
    hasher: &RowHasher,
    keys: &[K],
    values: &[u128],
    rng: &mut R,
    cells: &mut [u128],
) -> Result<(), Unsolvable> {
    debug_assert_eq!(keys.len(), values.len());
    debug_assert_eq!(cells.len(), hasher.starts() + BAND_WIDTH - 1);
    // The echelon form, one slot per column: `O(m)` memory and no per-key allocation.
    let mut pivots = vec![Pivot::default(); cells.len()];
    // By start, so that insertions walk the echelon form instead of missing the cache per key.
    let mut failed = false;
    for_each_batch_by_start(hasher, keys, |indices, rows| {
        if failed {
            return;
        }
        // Gathered up front, with the slots the rows start at prefetched: independent loads
        // overlap their cache misses, while the insertion walk is a chain of dependent loads.
        let mut batch_values = [0u128; BATCH];
        for ((v, &i), row) in batch_values.iter_mut().zip(indices).zip(rows) {
            *v = values[i as usize];
            prefetch(&pivots[row.start]);
        }
        for (row, &value) in rows.iter().zip(&batch_values) {
            if !insert(&mut pivots, *row, value) {
                failed = true;
                return;
            }
        }
    });
    if failed {
        return Err(Unsolvable);
    }
    back_substitute(&pivots, cells, rng);
    Ok(())
}

/// Adds one equation to the echelon form: Ribbon's on-the-fly Gaussian elimination
/// (Dillinger–Walzer 2021) on the band matrices of Dietzfelbinger–Walzer 2019. Rows need not
/// arrive sorted: a row meets only pivot rows inside its own band (they start no later than it
/// and end no later than its band does), and each step moves its first one strictly right, so
/// the loop runs at most `BAND_WIDTH` times and never leaves the band. Returns false if the row
/// reduces to zero with a non-zero right-hand side.
#[inline]
pub(crate) fn insert(pivots: &mut [Pivot], row: Row, value: u128) -> bool {
    let (mut p, mut band, mut value) = (row.start, row.band, value);
    loop {
        let slot = &mut pivots[p];
        // A stored band has bit 0 set, so a zero first word means "no pivot here yet".
        if slot.band[0] == 0 {
            *slot = Pivot { band, rhs: value };
            return true;
        }
        band::xor_assign(&mut band, &slot.band);
        value ^= slot.rhs;
        if band::is_zero(&band) {
            // The equation is a combination of earlier ones: harmless if they agree on the value
            // (e.g. the same key twice with the same value), unsolvable otherwise.
            return value == 0;
        }
        let shift = band::trailing_zeros(&band);
        band = band::shift_right(band, shift);
        p += shift as usize;
    }
}

/// Turns the echelon form into a solution, from the last column to the first: a pivot column is
/// its right-hand side XOR the already-final cells its row covers; a free column is uniform.
fn back_substitute<R: CryptoRng + ?Sized>(pivots: &[Pivot], cells: &mut [u128], rng: &mut R) {
    let m = cells.len();
    for p in (0..m).rev() {
        let Pivot { band: mut rest, rhs } = pivots[p];
        if rest[0] == 0 {
            cells[p] = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            continue;
        }
        // Bit 0 is the pivot itself; the other bits name later, already solved columns.
        rest[0] &= !1;
        let sum = if p + BAND_WIDTH <= m { band_xor(cells, p, &rest) } else { bit_scan(&cells[p..], &rest) };
        cells[p] = rhs ^ sum;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::OkvsSeed;
    use super::*;

    #[test]
    fn repeated_row_is_redundant_or_inconsistent() {
        let mut pivots = vec![Pivot::default(); 2 * BAND_WIDTH];
        let row = Row { start: 3, band: std::array::from_fn(|i| [0b1011, 7, 0, 1][i % 4]) };
        assert!(insert(&mut pivots, row, 42));
        assert!(insert(&mut pivots, row, 42), "same equation twice");
        assert!(!insert(&mut pivots, row, 43), "same row, other value");
    }

    #[test]
    fn overfull_system_is_reported() {
        // One start position: all rows share the same w columns, so w + 1 rows are dependent.
        let hasher = RowHasher::new(&OkvsSeed([1; 16]), 1);
        let keys: Vec<u128> = (0..BAND_WIDTH as u128 + 1).collect();
        let values: Vec<u128> = keys.iter().map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).collect();
        let mut cells = vec![0u128; BAND_WIDTH];
        let mut rng = StdRng::seed_from_u64(0);
        assert!(solve(&hasher, &keys, &values, &mut rng, &mut cells).is_err());
    }
}
