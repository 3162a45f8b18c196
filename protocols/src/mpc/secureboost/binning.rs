//! Each party's local quantile binning of its own features.
//!
//! Bin 0 holds the missing values (NaN); values fall in bins 1..=k by the upper edges
//! e_1 < … < e_(k−1): bin(x) = 1 + #{e_i < x}, so bin(x) ≤ j ⟺ x ≤ e_j for j ≥ 1. A split
//! "bin ≤ j goes left" therefore sends missing values left with the small values, and j = 0
//! separates the missing values from all others. The edges are quantiles of the training values
//! (with multiplicity), deduplicated, the maximum value never an edge.

/// One feature's bin edges.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBins {
    pub edges: Vec<f64>,
}

impl FeatureBins {
    /// Quantile edges of `values` (NaN = missing) for at most `max_bins` bins, the missing-value
    /// bin included.
    pub fn fit(values: &[f64], max_bins: u32) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let k = (max_bins.max(2) - 1) as usize;
        let Some(&max) = v.last() else { return Self { edges: Vec::new() } };
        let m = v.len();
        let mut edges: Vec<f64> = (1..k).map(|q| v[(q * m).div_ceil(k) - 1]).filter(|&e| e < max).collect();
        edges.dedup();
        Self { edges }
    }

    /// Bins of this feature, the missing-value bin included.
    pub fn bins(&self) -> u32 {
        self.edges.len() as u32 + 2
    }

    pub fn bin(&self, x: f64) -> u8 {
        if x.is_nan() { 0 } else { (1 + self.edges.partition_point(|&e| e < x)) as u8 }
    }

    /// The coarser bins that merge adjacent bins of these: `map[j]` is the new bin of bin j
    /// (`map[0] = 0`: the missing-value bin stays alone; for value bins 1, 2, … nondecreasing in
    /// steps of 0 or 1 from 1, as [`crate::mpc::binning`] checks). The new bin m's upper edge is
    /// the upper edge of its last old bin, so `merged.bin(x) == map[self.bin(x)]` for every x.
    pub fn merged(&self, map: &[u8]) -> Self {
        let last = map.len() - 1;
        let edges = (1..last).filter(|&j| map[j + 1] != map[j]).map(|j| self.edges[j - 1]).collect();
        Self { edges }
    }

    /// The threshold a split at `bin` means: left iff missing or x ≤ threshold (None: only the
    /// missing values go left).
    pub fn threshold(&self, bin: u8) -> Option<f64> {
        (bin >= 1).then(|| self.edges[bin as usize - 1])
    }
}

/// One party's binned features, column-major.
#[derive(Debug, Clone, PartialEq)]
pub struct BinnedFeatures {
    pub rows: usize,
    /// One column of bin indices per feature.
    pub columns: Vec<Vec<u8>>,
    /// Bins per feature (missing-value bin included): every index in `columns[f]` is below it.
    pub bins: Vec<u32>,
}

impl BinnedFeatures {
    /// Bins `columns` (one `Vec` of values per feature) with the given edges.
    pub fn apply(edges: &[FeatureBins], columns: &[Vec<f64>], rows: usize) -> Self {
        let columns = edges.iter().zip(columns).map(|(e, col)| col.iter().map(|&x| e.bin(x)).collect()).collect();
        Self { rows, columns, bins: edges.iter().map(FeatureBins::bins).collect() }
    }

    /// Fits edges on the rows `fit_rows` of `columns` and bins every row.
    pub fn fit(columns: &[Vec<f64>], rows: usize, fit_rows: &[u32], max_bins: u32) -> (Vec<FeatureBins>, Self) {
        let edges: Vec<FeatureBins> = columns
            .iter()
            .map(|col| {
                let vals: Vec<f64> = fit_rows.iter().map(|&r| col[r as usize]).collect();
                FeatureBins::fit(&vals, max_bins)
            })
            .collect();
        let binned = Self::apply(&edges, columns, rows);
        (edges, binned)
    }

    pub fn features(&self) -> usize {
        self.columns.len()
    }

    /// Every column has `rows` entries below its bin count, every bin count in 2..=max.
    pub(super) fn check(&self, max_bins: u32) -> Result<(), String> {
        if self.bins.len() != self.columns.len() {
            return Err("one bin count per feature".into());
        }
        for (col, &b) in self.columns.iter().zip(&self.bins) {
            if col.len() != self.rows || !(2..=max_bins).contains(&b) || col.iter().any(|&x| u32::from(x) >= b) {
                return Err("a binned column has the wrong length or a bin out of range".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_edges_missing_bin_and_thresholds() {
        let vals: Vec<f64> = (0..100).map(f64::from).collect();
        let f = FeatureBins::fit(&vals, 5); // 4 value bins: edges at the 25/50/75% quantiles
        assert_eq!(f.edges, vec![24.0, 49.0, 74.0]);
        assert_eq!(f.bins(), 5);
        assert_eq!(
            (f.bin(f64::NAN), f.bin(-3.0), f.bin(24.0), f.bin(24.5), f.bin(99.0), f.bin(1e9)),
            (0, 1, 1, 2, 4, 4)
        );
        for j in 1..4u8 {
            let t = f.threshold(j).unwrap();
            for x in [-1.0, 10.0, 24.0, 30.0, 49.0, 60.0, 74.0, 80.0] {
                assert_eq!(f.bin(x) <= j, x <= t, "bin {j} threshold {t} x {x}");
            }
        }
        assert_eq!(f.threshold(0), None);
        // A constant feature has one value bin; a feature of few values one bin per value.
        assert_eq!(FeatureBins::fit(&[3.0; 10], 33).bins(), 2);
        assert_eq!(FeatureBins::fit(&[1.0, 2.0, 2.0, 3.0, f64::NAN], 33).edges, vec![1.0, 2.0]);
        assert_eq!(FeatureBins::fit(&[f64::NAN; 3], 33).bins(), 2);
        // Merging adjacent bins: every value lands in the bin the map names.
        let map = [0u8, 1, 1, 2, 2];
        let m = f.merged(&map);
        assert_eq!(m.edges, vec![49.0]);
        for x in [f64::NAN, -5.0, 0.0, 24.0, 24.5, 49.0, 49.5, 74.0, 99.0, 1e9] {
            assert_eq!(m.bin(x), map[f.bin(x) as usize], "{x}");
        }
        assert_eq!(f.merged(&[0, 1, 2, 3, 4]), f);
        assert_eq!(f.merged(&[0, 1, 1, 1, 1]).edges, Vec::<f64>::new());
    }
}
