//! The scorecard file (`"format": "consort-scorecard/1"`, JSON through `storage::DataWriter`:
//! atomic, sealed unless sealing is off): points per bin of the party's own card features, with
//! the bin edges and ranges of its bins file; A's file also the base points, the intercept and
//! the scaling (factor, offset).
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::lr::TrainingSummary;
use crate::sealed::StorageKey;
use crate::storage::AtRest;

pub const CARD_FORMAT: &str = "consort-scorecard/1";

/// Points beyond this in magnitude (per bin or base) make a file invalid.
const MAX_POINTS: i64 = 1 << 40;

/// How points map to log-odds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    pub base_score: f64,
    pub base_odds: f64,
    pub pdo: f64,
    /// pdo / ln 2.
    pub factor: f64,
    /// base_score − factor·ln(base_odds).
    pub offset: f64,
    /// The sign convention, in words.
    pub convention: String,
}

/// One bin of a card feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardBin {
    pub bin: u32,
    /// "missing", "(-inf, e1]", …, "(e, +inf)".
    pub range: String,
    /// A's features: the bin's WOE (as encoded for training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woe: Option<f64>,
    /// The bin's contribution to the log-odds of the event (before rounding).
    pub logit: f64,
    /// round(−factor · logit).
    pub points: i64,
}

/// One of the party's own features in its scorecard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardFeature {
    pub name: String,
    /// Its index among the party's features in the bins file.
    pub index: u32,
    /// "woe" (one column, the bin's WOE) or "indicators" (one 0/1 column per bin but the reference).
    pub encoding: String,
    /// Upper edges of value bins 1..: bin(x) = 1 + #{edges < x}, bin 0 = missing.
    pub edges: Vec<f64>,
    /// "woe": the weight of the WOE column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// "indicators": the bin without a column (0 points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_bin: Option<u32>,
    pub bins: Vec<CardBin>,
}

/// One party's scorecard file. A row's points: A's `base_points` + the points of the row's bin
/// of every feature of both parties' cards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScorecardFile {
    pub format: String,
    /// "A" (labels, intercept, base points) or "B".
    pub party: String,
    pub job_id: String,
    pub peer: String,
    pub dataset: String,
    pub key_columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The bin job the card was built on and the id its two bins files share.
    pub bins_job: String,
    pub bins_id: String,
    pub scaling: Scaling,
    /// A: the model's intercept and round(offset − factor · intercept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercept: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_points: Option<i64>,
    pub features: Vec<CardFeature>,
    pub feature_bits: u32,
    pub feature_frac_bits: u32,
    pub sigmoid: String,
    /// The peer's model columns (A: B's bin indicator columns; B: A's WOE columns).
    pub peer_features: u64,
    pub training: TrainingSummary,
}

/// Whether the JSON (or sealed JSON) file at `path` says it is a scorecard.
pub fn is_scorecard(path: &Path, key: Option<&StorageKey>) -> Result<bool, DataError> {
    #[derive(Deserialize)]
    struct Format {
        format: String,
    }
    let bytes = crate::storage::read_data(path, key).map_err(|e| DataError::io(path, e))?;
    Ok(serde_json::from_slice::<Format>(&bytes).is_ok_and(|f| f.format == CARD_FORMAT))
}

impl ScorecardFile {
    pub fn save(&self, path: &Path, at_rest: &AtRest) -> Result<(), DataError> {
        crate::storage::write_json(path, self, at_rest)
    }

    /// Reads and checks a scorecard (sealed files are authenticated before use).
    pub fn load(path: &Path, key: Option<&StorageKey>) -> Result<Self, DataError> {
        let bytes = crate::storage::read_data(path, key).map_err(|e| DataError::io(path, e))?;
        let card: ScorecardFile =
            serde_json::from_slice(&bytes).map_err(|e| DataError::file(path, format!("not a scorecard file: {e}")))?;
        if card.format != CARD_FORMAT {
            return Err(DataError::file(path, format!("scorecard format '{}', expected '{CARD_FORMAT}'", card.format)));
        }
        let s = &card.scaling;
        if !(s.factor.is_finite() && s.factor > 0.0 && s.offset.is_finite()) {
            return Err(DataError::file(path, "the scaling's factor or offset is not valid"));
        }
        if card.base_points.is_some_and(|p| p.abs() > MAX_POINTS) || (card.party == "A") != card.base_points.is_some() {
            return Err(DataError::file(path, "A's scorecard (only) has base points, of sane size"));
        }
        for f in &card.features {
            if f.edges.iter().any(|e| !e.is_finite()) || !f.edges.is_sorted_by(|a, b| a < b) {
                return Err(DataError::file(path, "a feature's bin edges are not finite and increasing"));
            }
            let ids_ok = f.bins.iter().enumerate().all(|(j, b)| b.bin as usize == j);
            if f.bins.len() != f.edges.len() + 2 || f.bins.len() > super::MAX_CARD_BINS as usize || !ids_ok {
                return Err(DataError::file(path, "a feature's bins do not match its edges"));
            }
            if f.bins.iter().any(|b| !b.logit.is_finite() || b.points.abs() > MAX_POINTS) {
                return Err(DataError::file(path, "a bin has non-finite log-odds or out-of-range points"));
            }
        }
        Ok(card)
    }

    /// Each row's bin of every card feature: `values` row-major (raw values, NaN = missing) in
    /// the card's feature order.
    pub fn bins_of(&self, values: &[f64]) -> Vec<u8> {
        let edges: Vec<consort_protocols::mpc::binning::FeatureBins> = self
            .features
            .iter()
            .map(|f| consort_protocols::mpc::binning::FeatureBins { edges: f.edges.clone() })
            .collect();
        let d = edges.len();
        if d == 0 {
            return Vec::new();
        }
        values.chunks(d).flat_map(|row| row.iter().zip(&edges).map(|(&v, e)| e.bin(v))).collect()
    }

    /// This party's points of each row (its features only; A's base points not included) from
    /// the rows' bins ([`Self::bins_of`]) of `n` rows.
    pub fn partial_points(&self, bins: &[u8], n: usize) -> Vec<i64> {
        let d = self.features.len();
        (0..n).map(|i| (0..d).map(|j| self.features[j].bins[bins[i * d + j] as usize].points).sum()).collect()
    }

    /// This party's unrounded contribution to the log-odds of each of `n` rows.
    pub fn partial_logits(&self, bins: &[u8], n: usize) -> Vec<f64> {
        let d = self.features.len();
        (0..n).map(|i| (0..d).map(|j| self.features[j].bins[bins[i * d + j] as usize].logit).sum()).collect()
    }

    /// The probability of the event that `points` (a row's total) imply.
    pub fn probability(&self, points: i64) -> f64 {
        1.0 / (1.0 + ((points as f64 - self.scaling.offset) / self.scaling.factor).exp())
    }
}
