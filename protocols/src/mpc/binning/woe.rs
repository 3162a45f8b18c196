//! The plaintext side of binning, the same for both parties' features at A and for the tests'
//! reference: per-bin counts, WOE and IV with their smoothing, the supervised merge of adjacent
//! fine bins (ChiMerge) and the pairwise correlations selection uses.
use rayon::prelude::*;

/// One feature's per-bin figures (bin 0 = missing values).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BinCounts {
    /// Rows per bin.
    pub counts: Vec<u64>,
    /// Rows with label 1 (events) per bin.
    pub events: Vec<u64>,
}

impl BinCounts {
    /// Counts of one column of bin indices (each below `bins`) against 0/1 labels.
    pub fn of(column: &[u8], labels: &[u8], bins: usize) -> Self {
        let mut c = Self { counts: vec![0; bins], events: vec![0; bins] };
        for (&b, &y) in column.iter().zip(labels) {
            c.counts[b as usize] += 1;
            c.events[b as usize] += u64::from(y);
        }
        c
    }

    pub fn non_events(&self) -> Vec<u64> {
        self.counts.iter().zip(&self.events).map(|(c, e)| c - e).collect()
    }

    /// The counts of the bins `map` merges these into (`map[j]`: the new bin of bin j).
    pub fn merged(&self, map: &[u8]) -> Self {
        let k = map.iter().map(|&m| m as usize + 1).max().unwrap_or(0);
        let mut c = Self { counts: vec![0; k], events: vec![0; k] };
        for (j, &m) in map.iter().enumerate() {
            c.counts[m as usize] += self.counts[j];
            c.events[m as usize] += self.events[j];
        }
        c
    }
}

/// Smoothing added to the events and to the non-events of every non-empty bin.
pub const WOE_SMOOTHING: f64 = 0.5;

/// WOE per bin and IV (per bin and in total) of one feature.
///
/// With e_j events and n_j non-events in bin j, E and N the feature's totals and k the number of
/// non-empty bins: WOE_j = ln(p_nj / p_ej), p_nj = (n_j + ½)/(N + ½k), p_ej = (e_j + ½)/(E + ½k)
/// (the ½ added to both counts of every non-empty bin, so that a bin with no events or no
/// non-events has a finite WOE and the shares still sum to 1); IV_j = (p_nj − p_ej)·WOE_j ≥ 0,
/// IV = Σ IV_j. A bin without rows gets WOE 0 and IV 0. WOE > 0: fewer events than average.
#[derive(Debug, Clone, PartialEq)]
pub struct Woe {
    pub woe: Vec<f64>,
    pub iv_bins: Vec<f64>,
    pub iv: f64,
}

pub fn woe_iv(c: &BinCounts) -> Woe {
    let k = c.counts.iter().filter(|&&n| n > 0).count() as f64;
    let events: u64 = c.events.iter().sum();
    let non: u64 = c.counts.iter().sum::<u64>() - events;
    let (te, tn) = (events as f64 + WOE_SMOOTHING * k, non as f64 + WOE_SMOOTHING * k);
    let (mut woe, mut iv_bins) = (Vec::with_capacity(c.counts.len()), Vec::with_capacity(c.counts.len()));
    for (&n, &e) in c.counts.iter().zip(&c.events) {
        if n == 0 {
            woe.push(0.0);
            iv_bins.push(0.0);
            continue;
        }
        let pe = (e as f64 + WOE_SMOOTHING) / te;
        let pn = ((n - e) as f64 + WOE_SMOOTHING) / tn;
        let w = (pn / pe).ln();
        woe.push(w);
        iv_bins.push((pn - pe) * w);
    }
    let iv = iv_bins.iter().sum();
    Woe { woe, iv_bins, iv }
}

/// χ² of the 2×2 table of two adjacent groups (rows: the groups; columns: events, non-events);
/// an expected count of 0 contributes 0.
fn chi2(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = (a.0 + b.0) as f64;
    if total == 0.0 {
        return 0.0;
    }
    let (ev, ne) = ((a.1 + b.1) as f64, (a.0 + b.0 - a.1 - b.1) as f64);
    let mut x = 0.0;
    for (n, e) in [a, b] {
        for (observed, col) in [(e as f64, ev), ((n - e) as f64, ne)] {
            let expected = n as f64 * col / total;
            if expected > 0.0 {
                x += (observed - expected).powi(2) / expected;
            }
        }
    }
    x
}

/// ChiMerge (Kerber 1992) of one feature's fine value bins down to at most `target` bins: bins
/// without rows first join their left neighbour (the first its right one), then the adjacent
/// pair of least χ² is merged (the leftmost on ties) until `target` remain. The missing-value bin
/// 0 is never merged. Returns the map fine bin → merged bin (`map[0] = 0`, then 1, … contiguous).
pub fn chi_merge(c: &BinCounts, target: usize) -> Vec<u8> {
    let fine = c.counts.len();
    // (first fine bin, rows, events) per group of value bins.
    let mut groups: Vec<(usize, u64, u64)> = Vec::new();
    for j in 1..fine {
        match groups.last_mut() {
            Some(g) if c.counts[j] == 0 || g.1 == 0 => {
                g.1 += c.counts[j];
                g.2 += c.events[j];
            }
            _ => groups.push((j, c.counts[j], c.events[j])),
        }
    }
    let target = target.max(1);
    while groups.len() > target {
        let (mut best, mut at) = (f64::INFINITY, 0);
        for i in 0..groups.len() - 1 {
            let x = chi2((groups[i].1, groups[i].2), (groups[i + 1].1, groups[i + 1].2));
            if x < best {
                (best, at) = (x, i);
            }
        }
        let right = groups.remove(at + 1);
        groups[at].1 += right.1;
        groups[at].2 += right.2;
    }
    let mut map = vec![0u8; fine];
    for (g, &(first, _, _)) in groups.iter().enumerate() {
        let end = groups.get(g + 1).map_or(fine, |n| n.0);
        map[first..end].fill(g as u8 + 1);
    }
    map
}

/// Whether `map` is a valid merge of `fine` bins into at most `max` bins: `map[0] = 0`, and from
/// `map[1] = 1` each value bin's target is its left neighbour's or the next one.
pub fn valid_merge(map: &[u8], fine: usize, max: usize) -> bool {
    map.len() == fine
        && fine >= 2
        && map[0] == 0
        && map[1] == 1
        && map[1..].windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1)
        && (map[fine - 1] as usize) < max
}

/// Pearson correlation of every pair (k < l) of `columns` of bin indices, over all rows; a
/// constant column correlates 0 with everything. Integer sums (exact), rayon over k.
pub fn index_correlations(columns: &[Vec<u8>]) -> Vec<(u32, u32, f64)> {
    let n = columns.first().map_or(0, Vec::len) as f64;
    let sums: Vec<(f64, f64)> = columns
        .iter()
        .map(|c| {
            let (s, q) = c.iter().fold((0u64, 0u64), |(s, q), &x| (s + u64::from(x), q + u64::from(x) * u64::from(x)));
            (s as f64, q as f64)
        })
        .collect();
    (0..columns.len())
        .into_par_iter()
        .flat_map_iter(|k| {
            let (columns, sums) = (&columns, &sums);
            (k + 1..columns.len()).map(move |l| {
                let dot = dot_u8(&columns[k], &columns[l]) as f64;
                (k as u32, l as u32, pearson(n, sums[k], sums[l], dot))
            })
        })
        .collect()
}

/// Σ a_i·b_i, in blocks of 2^16 rows whose u32 sums cannot overflow (255²·2^16 < 2^32): the inner
/// loop vectorizes.
fn dot_u8(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(1 << 16)
        .zip(b.chunks(1 << 16))
        .map(|(x, y)| u64::from(x.iter().zip(y).map(|(&p, &q)| u32::from(p) * u32::from(q)).sum::<u32>()))
        .sum()
}

/// Pearson correlation of every pair (k < l) of real-valued columns (e.g. WOE-encoded), over all
/// rows; a constant column correlates 0.
pub fn value_correlations(columns: &[Vec<f64>]) -> Vec<(u32, u32, f64)> {
    let n = columns.first().map_or(0, Vec::len) as f64;
    let sums: Vec<(f64, f64)> =
        columns.iter().map(|c| (c.iter().sum::<f64>(), c.iter().map(|x| x * x).sum::<f64>())).collect();
    (0..columns.len())
        .into_par_iter()
        .flat_map_iter(|k| {
            let (columns, sums) = (&columns, &sums);
            (k + 1..columns.len()).map(move |l| {
                let dot: f64 = columns[k].iter().zip(&columns[l]).map(|(a, b)| a * b).sum();
                (k as u32, l as u32, pearson(n, sums[k], sums[l], dot))
            })
        })
        .collect()
}

fn pearson(n: f64, (sa, qa): (f64, f64), (sb, qb): (f64, f64), dot: f64) -> f64 {
    let cov = n * dot - sa * sb;
    let va = n * qa - sa * sa;
    let vb = n * qb - sb * sb;
    // Relative tolerance: a constant column's variance is rounding noise, not signal.
    if va <= 1e-9 * n * qa.max(1.0) || vb <= 1e-9 * n * qb.max(1.0) {
        return 0.0;
    }
    (cov / (va.sqrt() * vb.sqrt())).clamp(-1.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn woe_and_iv_follow_the_documented_formula_with_smoothing() {
        // bins: missing (empty), 10 rows 2 events, 10 rows 0 events, 5 rows 5 events.
        let c = BinCounts { counts: vec![0, 10, 10, 5], events: vec![0, 2, 0, 5] };
        let w = woe_iv(&c);
        let (te, tn) = (7.0 + 1.5, 18.0 + 1.5);
        let expect = |e: f64, n: f64| {
            let (pe, pn) = ((e + 0.5) / te, (n + 0.5) / tn);
            ((pn / pe).ln(), (pn - pe) * (pn / pe).ln())
        };
        assert_eq!((w.woe[0], w.iv_bins[0]), (0.0, 0.0));
        for (j, (e, n)) in [(1, (2.0, 8.0)), (2, (0.0, 10.0)), (3, (5.0, 0.0))] {
            let (ew, ei) = expect(e, n);
            assert!((w.woe[j] - ew).abs() < 1e-12 && (w.iv_bins[j] - ei).abs() < 1e-12);
            assert!(w.woe[j].is_finite() && w.iv_bins[j] >= 0.0);
        }
        assert!((w.iv - w.iv_bins.iter().sum::<f64>()).abs() < 1e-15);
        // A feature whose every bin has the same event rate has IV 0.
        let flat = woe_iv(&BinCounts { counts: vec![0, 10, 20], events: vec![0, 3, 6] });
        assert!(flat.iv.abs() < 0.01, "{}", flat.iv);
    }

    #[test]
    fn chi_merge_joins_similar_neighbours_and_keeps_missing_apart() {
        // Event rates 0.1, 0.1, 0.5, 0.5, 0.9 over five fine value bins.
        let c = BinCounts { counts: vec![4, 10, 10, 10, 10, 10], events: vec![1, 1, 1, 5, 5, 9] };
        let map = chi_merge(&c, 3);
        assert_eq!(map, vec![0, 1, 1, 2, 2, 3]);
        assert!(valid_merge(&map, 6, 4));
        assert_eq!(c.merged(&map), BinCounts { counts: vec![4, 20, 20, 10], events: vec![1, 2, 10, 9] });
        // Empty fine bins join a neighbour before any χ² merge; target 1 leaves one value bin.
        let c = BinCounts { counts: vec![0, 0, 5, 0, 5], events: vec![0, 0, 1, 0, 4] };
        assert_eq!(chi_merge(&c, 10), vec![0, 1, 1, 1, 2]);
        assert_eq!(chi_merge(&c, 1), vec![0, 1, 1, 1, 1]);
        assert!(!valid_merge(&[1, 1, 2], 3, 3) && !valid_merge(&[0, 1, 3], 3, 4) && !valid_merge(&[0, 2, 2], 3, 4));
        assert!(!valid_merge(&[0, 1, 2, 3], 4, 3) && !valid_merge(&[0, 1, 0], 3, 3) && !valid_merge(&[0, 1], 3, 3));
    }

    #[test]
    fn correlations_match_a_direct_computation() {
        let a: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8).collect();
        let b: Vec<u8> = a.iter().map(|&x| 6 - x).collect();
        let c: Vec<u8> = (0..1000u32).map(|i| ((i * 31 + 5) % 11) as u8).collect();
        let k = vec![3u8; 1000];
        let r = index_correlations(&[a.clone(), b, c.clone(), k]);
        assert_eq!(r.len(), 6);
        assert!((r[0].2 + 1.0).abs() < 1e-12, "{:?}", r[0]);
        let as_f = |v: &[u8]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let direct = value_correlations(&[as_f(&a), as_f(&c)])[0].2;
        assert!((r[1].2 - direct).abs() < 1e-12);
        assert_eq!((r[2].2, r[4].2, r[5].2), (0.0, 0.0, 0.0), "constant column");
    }
}
