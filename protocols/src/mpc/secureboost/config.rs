//! The hyper-parameters both parties must agree on, and their validation.
use sha2::{Digest, Sha256};

use crate::mpc::MpcError;

/// Deepest tree allowed (node ids are heap positions below 2^(MAX_DEPTH + 1)).
pub const MAX_DEPTH: u32 = 16;
/// Most trees per model.
pub const MAX_TREES: u32 = 10_000;
/// Most bins per feature, the missing-value bin included (bins are one byte).
pub const MAX_BINS: u32 = 256;

/// How A gets B's histograms (agreed: in the digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Histograms {
    /// Okamoto–Uchiyama: A encrypts g and h per row, B sums ciphertexts per bin.
    He,
    /// Kept one-hot correlations ([`crate::mpc::ot_mul::onehot`]): per node the backward product
    /// of B's one-hot bins with g and with h, in additive shares; B sends its share.
    #[default]
    Ot,
}

impl Histograms {
    pub fn name(self) -> &'static str {
        match self {
            Histograms::He => "he",
            Histograms::Ot => "ot",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "he" => Some(Histograms::He),
            "ot" => Some(Histograms::Ot),
            _ => None,
        }
    }
}

/// SecureBoost hyper-parameters (XGBoost's names and meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct SbConfig {
    pub trees: u32,
    pub max_depth: u32,
    /// Shrinkage η: a leaf's weight is −η·G/(H + λ).
    pub learning_rate: f64,
    /// L2 regularization λ of leaf weights.
    pub lambda: f64,
    /// Minimum gain γ of a split.
    pub gamma: f64,
    /// Minimum hessian sum of each child.
    pub min_child_weight: f64,
    /// Fraction of the training rows each tree samples (1 = all), drawn by A with `seed`.
    pub subsample: f64,
    /// Fraction of each party's features each tree considers (1 = all; at least one), drawn
    /// with `seed` per tree and party: both parties compute both lists (A must know which of
    /// B's histograms come).
    pub colsample: f64,
    pub seed: u64,
    /// Early stopping: stop when the holdout loss improved by less than this after a tree
    /// (0 = off; needs holdout rows). The model keeps the trees up to the best holdout loss.
    pub tolerance: f64,
    /// Most bins per feature, missing-value bin included (2..=[`MAX_BINS`]).
    pub max_bins: u32,
    /// B's policy: the smallest OU key size (bits of n, 2048 or 3072) it accepts from A. Not
    /// agreed (not in the digest): A's key size is A's choice ([`crate::he::KeySize`]), B only
    /// checks it. Default 2048 (≈ 112-bit security, the floor the issue allows; the key protects
    /// A's own gradients).
    pub min_key_bits: u32,
    /// How B's histograms are computed (agreed).
    pub histograms: Histograms,
    /// The privacy-enhanced mode (agreed; `ot` only): A never sends B its partitions, so B learns
    /// the instance sets only of the nodes whose every ancestor split is B's own (module docs).
    /// Each histogram then costs a use over B's superset of the node's rows instead of the rows.
    pub hide_partitions: bool,
    /// This party's memory budget (bytes) for one-hot trees kept expanded across the job with
    /// the `ot` backend ([`crate::mpc::ot_mul::onehot::OneHotSender::keep_leaves`]: 33 · 16
    /// bytes per (training row, B feature) at 33 bins; B's features from the first while they
    /// fit). A node's local choice, not agreed: kept or not, the messages are the same. 0 (the
    /// default) expands every tree per use.
    pub kept_leaves_bytes: u64,
}

impl Default for SbConfig {
    fn default() -> Self {
        Self {
            trees: 5,
            max_depth: 5,
            learning_rate: 0.3,
            lambda: 1.0,
            gamma: 0.0,
            min_child_weight: 1.0,
            subsample: 1.0,
            colsample: 1.0,
            seed: 0,
            tolerance: 0.0,
            max_bins: 33,
            min_key_bits: 2048,
            histograms: Histograms::default(),
            hide_partitions: false,
            kept_leaves_bytes: 0,
        }
    }
}

impl SbConfig {
    pub fn validate(&self) -> Result<(), MpcError> {
        let bad = |m: &str| Err(MpcError::Invalid(m.into()));
        if self.trees == 0 || self.trees > MAX_TREES {
            return bad("trees must be in 1..=10000");
        }
        if self.max_depth == 0 || self.max_depth > MAX_DEPTH {
            return bad("max depth must be in 1..=16");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad("learning rate must be in (0, 1]");
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite() && self.gamma >= 0.0 && self.gamma.is_finite()) {
            return bad("lambda and gamma must be finite and non-negative");
        }
        if !(self.min_child_weight >= 0.0 && self.min_child_weight.is_finite()) {
            return bad("min child weight must be finite and non-negative");
        }
        if !(self.subsample > 0.0 && self.subsample <= 1.0) {
            return bad("subsample must be in (0, 1]");
        }
        if !(self.colsample > 0.0 && self.colsample <= 1.0) {
            return bad("colsample must be in (0, 1]");
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return bad("tolerance must be finite and non-negative");
        }
        if !(2..=MAX_BINS).contains(&self.max_bins) {
            return bad("max bins must be in 2..=256");
        }
        if ![2048, 3072].contains(&self.min_key_bits) {
            return bad("min key bits must be 2048 or 3072");
        }
        if self.hide_partitions && self.histograms != Histograms::Ot {
            return bad("hiding partitions needs the ot histograms");
        }
        Ok(())
    }

    pub(super) fn digest(&self, h: &mut Sha256) {
        for v in [self.trees, self.max_depth, self.max_bins] {
            h.update(v.to_le_bytes());
        }
        for v in [
            self.learning_rate,
            self.lambda,
            self.gamma,
            self.min_child_weight,
            self.subsample,
            self.colsample,
            self.tolerance,
        ] {
            h.update(v.to_bits().to_le_bytes());
        }
        h.update(self.seed.to_le_bytes());
        h.update([self.histograms as u8]);
        // Absent in the standard mode, so its digest is the one of nodes that predate the mode.
        if self.hide_partitions {
            h.update(b"hide-partitions");
        }
    }
}
