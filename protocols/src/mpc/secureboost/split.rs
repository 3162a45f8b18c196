//! What both the protocol and the plaintext reference compute the same way: fixed-point
//! gradients, the packing of a (gradient, hessian) pair into one plaintext, histograms, the gain
//! and the split rule, leaf weights and the row sample.
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::binning::BinnedFeatures;
use super::config::SbConfig;
use crate::mpc::{MpcError, Party};

/// Fraction bits of the fixed-point gradients and hessians.
pub const GH_FRAC_BITS: u32 = 32;
/// Most rows a training run may have (2^20 ≥ 10^6): bounds the packed sums, see [`pack`].
pub const MAX_ROWS: usize = 1 << 20;
/// Bits of the gradient slot of a packed plaintext.
pub const SLOT_BITS: u32 = 56;

const SCALE: f64 = 1.0 / (1u64 << GH_FRAC_BITS) as f64;

/// round(x·2^32).
pub fn quantize(x: f64) -> i64 {
    (x * (1u64 << GH_FRAC_BITS) as f64).round() as i64
}

/// Log-loss gradient and hessian at margin z for label y, quantized: g = σ(z) − y ∈ [−1, 1],
/// h = σ(z)(1 − σ(z)) ∈ [0, 1/4].
pub fn gradient(z: f64, y: u8) -> [i64; 2] {
    let p = 1.0 / (1.0 + (-z).exp());
    [quantize(p - f64::from(y)), quantize(p * (1.0 - p))]
}

/// One plaintext for a row: G + H·2^56 (signed). Headroom: over at most [`MAX_ROWS`] = 2^20 rows,
/// |ΣG| ≤ 2^20·2^32 = 2^52 < 2^55 (the gradient slot, read as signed, never carries into the
/// hessian slot's meaning) and ΣH ≤ 2^20·2^30 = 2^50, so every sum is below 2^107 in magnitude,
/// far inside OU's signed plaintext range (2^126, [`crate::he::PLAINTEXT_BITS`]).
pub fn pack(gh: [i64; 2]) -> i128 {
    i128::from(gh[0]) + (i128::from(gh[1]) << SLOT_BITS)
}

/// The (ΣG, ΣH) of a decrypted packed sum; an error if it cannot be a sum of at most
/// [`MAX_ROWS`] packed rows.
pub fn unpack(v: i128) -> Result<[i64; 2], MpcError> {
    let low = (v << (128 - SLOT_BITS)) >> (128 - SLOT_BITS); // sign-extended gradient slot
    let h = (v - low) >> SLOT_BITS;
    let max_g = (MAX_ROWS as i128) << GH_FRAC_BITS;
    let max_h = (MAX_ROWS as i128) << (GH_FRAC_BITS - 2);
    if low.abs() > max_g || !(0..=max_h).contains(&h) {
        return Err(crate::mpc::violation("a histogram sum is out of range"));
    }
    Ok([low as i64, h as i64])
}

/// Offsets of each feature's bins in a flattened histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub offsets: Vec<usize>,
}

impl Layout {
    pub fn new(bins: &[u32]) -> Self {
        let mut offsets = Vec::with_capacity(bins.len() + 1);
        offsets.push(0);
        for &b in bins {
            offsets.push(offsets.last().unwrap() + b as usize);
        }
        Self { offsets }
    }

    pub fn total(&self) -> usize {
        *self.offsets.last().unwrap()
    }

    pub fn features(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn range(&self, f: usize) -> std::ops::Range<usize> {
        self.offsets[f]..self.offsets[f + 1]
    }
}

/// Plaintext histogram of `rows` (sums of fixed-point gradients and hessians per bin).
pub fn histogram(x: &BinnedFeatures, layout: &Layout, gh: &[[i64; 2]], rows: &[u32]) -> Vec<[i64; 2]> {
    let mut hist = vec![[0i64; 2]; layout.total()];
    for (f, col) in x.columns.iter().enumerate() {
        let base = layout.offsets[f];
        for &r in rows {
            let cell = &mut hist[base + col[r as usize] as usize];
            cell[0] += gh[r as usize][0];
            cell[1] += gh[r as usize][1];
        }
    }
    hist
}

/// parent − child, cell by cell (the sibling's histogram).
pub fn subtract(parent: &[[i64; 2]], child: &[[i64; 2]]) -> Vec<[i64; 2]> {
    parent.iter().zip(child).map(|(p, c)| [p[0] - c[0], p[1] - c[1]]).collect()
}

/// G²/(H + λ) of fixed-point sums.
fn score(g: i64, h: i64, lambda: f64) -> f64 {
    let (g, h) = (g as f64 * SCALE, h as f64 * SCALE);
    g * g / (h + lambda)
}

/// The best split of one party's histogram: (feature, bin, gain) maximizing
/// gain = ½[G_L²/(H_L+λ) + G_R²/(H_R+λ) − G²/(H+λ)] − γ over splits "bin ≤ j goes left"
/// (j below the feature's last bin) with H_L, H_R ≥ min child weight and gain > 0. Ties keep the
/// first in (feature, bin) order. `total` is the node's (ΣG, ΣH).
/// Only the `features` listed (ascending) are considered.
pub fn best_split(
    hist: &[[i64; 2]],
    layout: &Layout,
    features: &[u32],
    total: [i64; 2],
    config: &SbConfig,
) -> Option<(u32, u8, f64)> {
    let parent = score(total[0], total[1], config.lambda);
    let mut best: Option<(u32, u8, f64)> = None;
    for f in features.iter().map(|&f| f as usize) {
        let cells = &hist[layout.range(f)];
        let mut left = [0i64; 2];
        for (j, cell) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            left = [left[0] + cell[0], left[1] + cell[1]];
            let right = [total[0] - left[0], total[1] - left[1]];
            if (left[1] as f64 * SCALE) < config.min_child_weight || (right[1] as f64 * SCALE) < config.min_child_weight
            {
                continue;
            }
            let gain = 0.5
                * (score(left[0], left[1], config.lambda) + score(right[0], right[1], config.lambda) - parent)
                - config.gamma;
            if gain > 0.0 && gain.is_finite() && best.is_none_or(|b| gain > b.2) {
                best = Some((f as u32, j as u8, gain));
            }
        }
    }
    best
}

/// −η·G/(H + λ).
pub fn leaf_weight(total: [i64; 2], config: &SbConfig) -> f64 {
    let (g, h) = (total[0] as f64 * SCALE, total[1] as f64 * SCALE);
    let w = -config.learning_rate * g / (h + config.lambda);
    if w.is_finite() { w } else { 0.0 }
}

/// The training rows tree `tree` uses (ascending): each with probability `subsample`, drawn from
/// a generator seeded by (seed, tree) — A's choice; B learns it from the node's instance list.
pub fn sample_rows(train: &[u32], config: &SbConfig, tree: u32) -> Vec<u32> {
    let mut rows: Vec<u32> = if config.subsample >= 1.0 {
        train.to_vec()
    } else {
        let mut rng = StdRng::seed_from_u64(config.seed ^ (u64::from(tree) << 32) ^ 0x5b5b);
        train.iter().copied().filter(|_| rng.random::<f64>() < config.subsample).collect()
    };
    rows.sort_unstable();
    rows
}

/// The features of `party` that tree `tree` considers (ascending): all with `colsample` = 1,
/// else ⌈colsample·d⌉ of the d drawn without replacement by a generator seeded by (seed, tree,
/// party). Public to both parties.
pub fn sample_features(d: usize, config: &SbConfig, tree: u32, party: Party) -> Vec<u32> {
    let mut all: Vec<u32> = (0..d as u32).collect();
    if config.colsample >= 1.0 || d == 0 {
        return all;
    }
    let k = ((config.colsample * d as f64).ceil() as usize).clamp(1, d);
    let tag = match party {
        Party::A => 0xa,
        Party::B => 0xb,
    };
    let mut rng = StdRng::seed_from_u64(config.seed ^ (u64::from(tree) << 32) ^ (tag << 16) ^ 0xc01);
    for i in 0..k {
        let j = rng.random_range(i..d);
        all.swap(i, j);
    }
    let mut chosen = all[..k].to_vec();
    chosen.sort_unstable();
    chosen
}

/// Mean log-loss of margins `z` against labels.
pub fn log_loss(z: &[f64], labels: &[u8]) -> f64 {
    let n = z.len().max(1) as f64;
    z.iter()
        .zip(labels)
        .map(|(&z, &y)| {
            // log(1 + e^z) − y·z, computed stably.
            let softplus = if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() };
            softplus - f64::from(y) * z
        })
        .sum::<f64>()
        / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_extreme_sums_of_a_million_rows() {
        let rows = MAX_ROWS as i64;
        for (g, h) in [(0, 0), (-1, 0), (1, 1), (-(rows << 32), rows << 30), (rows << 32, 0), (-(1 << 40), 17)] {
            assert_eq!(unpack(pack([g, h])).unwrap(), [g, h]);
        }
        // Sums of per-row packs equal the pack of the sums, including mixed signs.
        let gh: Vec<[i64; 2]> = (0..1000).map(|i| gradient((i as f64 - 500.0) / 100.0, (i % 3 == 0) as u8)).collect();
        let total = gh.iter().fold([0, 0], |a, x| [a[0] + x[0], a[1] + x[1]]);
        assert_eq!(unpack(gh.iter().map(|&x| pack(x)).sum()).unwrap(), total);
        assert!(unpack(pack([0, (rows << 30) + 1])).is_err());
        assert!(unpack(pack([(rows << 32) + 1, 0])).is_err());
        assert!(unpack(-1 << 60).is_err());
    }

    #[test]
    fn gain_prefers_the_separating_bin_and_respects_gamma_and_min_child_weight() {
        // One feature, 3 bins; bin 1 holds negative gradients, bin 2 positive.
        let q = |x: f64| quantize(x);
        let hist = vec![[0, 0], [q(-4.0), q(2.0)], [q(4.0), q(2.0)]];
        let layout = Layout::new(&[3]);
        let total = [0, q(4.0)];
        let config = SbConfig { lambda: 1.0, gamma: 0.0, min_child_weight: 0.0, ..SbConfig::default() };
        let (f, bin, gain) = best_split(&hist, &layout, &[0], total, &config).unwrap();
        assert_eq!((f, bin), (0, 1));
        assert!((gain - 0.5 * (16.0 / 3.0 + 16.0 / 3.0)).abs() < 1e-9);
        assert_eq!(best_split(&hist, &layout, &[0], total, &SbConfig { gamma: 6.0, ..config.clone() }), None);
        assert_eq!(
            best_split(&hist, &layout, &[0], total, &SbConfig { min_child_weight: 2.5, ..config.clone() }),
            None
        );
        assert!((leaf_weight([q(-4.0), q(2.0)], &config) - 0.3 * 4.0 / 3.0).abs() < 1e-9);
    }
}
