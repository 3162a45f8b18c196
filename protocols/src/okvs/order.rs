//! Visiting keys in order of their rows' start positions, for cache locality.
//!
//! A row touches `BAND_WIDTH` consecutive cells (4 KiB) at a pseudorandom place. Visited in key
//! order, every row of a large store misses the cache; visited by ascending start, consecutive
//! rows overlap and the cells (and, when encoding, the echelon form) stream through the cache
//! once. A counting sort on `start / BAND_WIDTH` is enough: rows of one bucket lie within two
//! band widths of cells, which fit in L1.

use super::row::{Row, RowHasher};
use super::{BAND_WIDTH, OkvsKey};

/// Below this many keys everything fits in cache and the sort does not pay for itself.
const MIN_KEYS: usize = 1 << 12;

/// Keys per batch: one batch of AES calls, gathers and callback.
pub(crate) const BATCH: usize = 64;

/// Calls `f(indices, rows)` on batches of keys, `rows[j] = row(keys[indices[j]])`, covering every
/// key once, in ascending order of `row.start / BAND_WIDTH` (or in key order for few keys).
/// Batches let the caller gather per-key data (values, outputs) with independent loads rather
/// than one cache miss at a time. Keys and start positions must number at most 2^32.
pub(crate) fn for_each_batch_by_start<K: OkvsKey>(hasher: &RowHasher, keys: &[K], mut f: impl FnMut(&[u32], &[Row])) {
    let mut rows = [Row::default(); BATCH];
    if keys.len() < MIN_KEYS {
        let mut indices = [0u32; BATCH];
        for (b, batch) in keys.chunks(BATCH).enumerate() {
            for (j, index) in indices[..batch.len()].iter_mut().enumerate() {
                *index = (b * BATCH + j) as u32;
            }
            hasher.for_each_row(batch, |j, row| rows[j] = row);
            f(&indices[..batch.len()], &rows[..batch.len()]);
        }
        return;
    }
    let order = sort_by_start(hasher, keys);
    let mut gathered = [[0u8; 16]; BATCH];
    let mut indices = [0u32; BATCH];
    let mut batches = order.chunks(BATCH).peekable();
    while let Some(batch) = batches.next() {
        // The keys are read in random order: fetch the next batch's while this one is hashed.
        for &entry in batches.peek().copied().unwrap_or_default() {
            prefetch(&keys[entry as u32 as usize]);
        }
        for ((slot, index), &entry) in gathered.iter_mut().zip(&mut indices).zip(batch) {
            *index = entry as u32;
            *slot = keys[*index as usize].to_block();
        }
        // The start came with the entry: only the band is hashed again.
        hasher.for_each_band(&gathered[..batch.len()], |j, band| {
            rows[j] = Row { start: (batch[j] >> 32) as usize, band };
        });
        f(&indices[..batch.len()], &rows[..batch.len()]);
    }
}

/// Hints the CPU to bring `item` into cache.
#[inline(always)]
pub(crate) fn prefetch<T>(item: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect; SSE is part of the x86-64 baseline.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((item as *const T).cast());
    }
}

/// Entries `start << 32 | index`, one per key, by ascending `start / BAND_WIDTH` (stable within
/// a bucket): a counting sort, two passes over `n` words and a histogram of
/// `starts / BAND_WIDTH` counters.
fn sort_by_start<K: OkvsKey>(hasher: &RowHasher, keys: &[K]) -> Vec<u64> {
    debug_assert!(hasher.starts() <= 1 << 32 && keys.len() <= 1 << 32);
    let buckets = hasher.starts().div_ceil(BAND_WIDTH);
    let mut entries = Vec::with_capacity(keys.len());
    let mut next = vec![0usize; buckets + 1];
    hasher.for_each_start(keys, |i, start| {
        entries.push((start as u64) << 32 | i as u64);
        next[start / BAND_WIDTH + 1] += 1;
    });
    for b in 1..next.len() {
        next[b] += next[b - 1];
    }
    let mut order = vec![0u64; keys.len()];
    for &entry in &entries {
        let slot = &mut next[(entry >> 32) as usize / BAND_WIDTH];
        order[*slot] = entry;
        *slot += 1;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::super::OkvsSeed;
    use super::*;

    #[test]
    fn visits_every_key_once_by_bucket() {
        let n = 3 * MIN_KEYS + 17;
        let keys: Vec<u128> = (0..n as u128).map(|i| i * 0x9E37_79B9_7F4A_7C15).collect();
        let hasher = RowHasher::new(&OkvsSeed([5; 16]), n + n / 10);
        let mut seen = vec![false; n];
        let mut last_bucket = 0;
        for_each_batch_by_start(&hasher, &keys, |indices, rows| {
            for (&i, row) in indices.iter().zip(rows) {
                let i = i as usize;
                assert!(!seen[i]);
                seen[i] = true;
                assert_eq!(*row, hasher.row(&keys[i]));
                assert!(row.start / BAND_WIDTH >= last_bucket);
                last_bucket = row.start / BAND_WIDTH;
            }
        });
        assert!(seen.iter().all(|&s| s));
    }
}
