//! The bins files (`"format": "consort-bins/1"`, JSON through `storage::DataWriter`: atomic,
//! sealed unless sealing is off).
//!
//! - **A's file** (the requester's `--out`): per feature of both parties its bins with rows,
//!   events, non-events, WOE and IV, the feature's IV, whether selection kept it and why. A's own
//!   features carry their name and edges; B's are `peer:K` (B's K-th feature, opaque: no name,
//!   no edges — A never learns them) with bin ids only.
//! - **B's file** (`DIR/outputs/JOB.bins.json` on the responder): B's own features by name and
//!   index K with their edges and bin ids, the job id and the bins id. Nothing derived from labels
//!   but, with `--method tree`, where A merged B's fine bins (which the edges reflect).
//!
//! A scorecard trainer bins each party's rows with its own file: A's rows with A's edges (and
//! takes WOE from A's file), B's rows with B's edges, giving bin ids K, j that A's file maps to
//! WOE for `peer:K`. `bins_id` binds the two files of one job.
use std::path::Path;

use consort_protocols::mpc::binning::FeatureBins;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::sealed::StorageKey;
use crate::storage::AtRest;

pub const BINS_FORMAT: &str = "consort-bins/1";

/// One party's bins file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinsFile {
    pub format: String,
    /// "A" (labels; the requester) or "B".
    pub party: String,
    pub job_id: String,
    /// Binds the two parties' files of one job (SHA-256 over what both know).
    pub bins_id: String,
    pub peer: String,
    pub dataset: String,
    pub key_columns: Vec<String>,
    /// "quantile" or "tree".
    pub method: String,
    /// Target value bins per feature (the missing-value bin 0 comes on top).
    pub bins: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_bins: Option<u32>,
    /// Aligned rows binned.
    pub rows: u64,
    /// A only: the label column and its totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_events: Option<u64>,
    /// A only: how WOE and IV are defined here (the formula and its smoothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woe_definition: Option<String>,
    /// A only: the selection's bounds and rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    pub features: Vec<BinnedFeature>,
}

/// How features were selected (A's file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub min_iv: Option<f64>,
    pub max_corr: Option<f64>,
    /// How correlation was measured for each kind of pair.
    pub correlation: String,
    /// How many features were kept.
    pub selected: u64,
}

/// One feature of a bins file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinnedFeature {
    /// The column name (own features) or `peer:K` (the peer's K-th feature, in A's file).
    pub name: String,
    /// "self" or "peer".
    pub owner: String,
    /// The feature's position among its owner's features (K).
    pub index: u32,
    /// Own features: upper edges of value bins 1..: bin(x) = 1 + #{edges < x}, bin 0 = missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edges: Option<Vec<f64>>,
    pub bins: Vec<Bin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iv: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One bin of a feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bin {
    pub bin: u32,
    /// Own features: "missing", "(-inf, e1]", "(e1, e2]", …, "(e, +inf)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_events: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woe: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iv: Option<f64>,
}

/// The range text of each bin of `edges` (bin 0 first).
pub fn ranges(edges: &[f64]) -> Vec<String> {
    let mut out = vec!["missing".to_string()];
    let mut low = "-inf".to_string();
    for e in edges {
        out.push(format!("({low}, {e}]"));
        low = e.to_string();
    }
    out.push(format!("({low}, +inf)"));
    out
}

impl BinsFile {
    pub fn save(&self, path: &Path, at_rest: &AtRest) -> Result<(), DataError> {
        crate::storage::write_json(path, self, at_rest)
    }

    pub fn load(path: &Path, key: Option<&StorageKey>) -> Result<Self, DataError> {
        let bytes = crate::storage::read_data(path, key).map_err(|e| DataError::io(path, e))?;
        let file: BinsFile =
            serde_json::from_slice(&bytes).map_err(|e| DataError::file(path, format!("not a bins file: {e}")))?;
        if file.format != BINS_FORMAT {
            return Err(DataError::file(path, format!("bins format '{}', expected '{BINS_FORMAT}'", file.format)));
        }
        for f in &file.features {
            if let Some(edges) = &f.edges {
                if edges.iter().any(|e| !e.is_finite()) || !edges.is_sorted_by(|a, b| a < b) {
                    return Err(DataError::file(path, "a feature's bin edges are not finite and increasing"));
                }
                if f.bins.len() != edges.len() + 2 {
                    return Err(DataError::file(path, "a feature's bins do not match its edges"));
                }
            }
        }
        Ok(file)
    }

    /// The edges of this party's own features, by index (to bin new rows identically).
    pub fn own_bins(&self) -> Vec<FeatureBins> {
        self.features
            .iter()
            .filter(|f| f.owner == "self")
            .map(|f| FeatureBins { edges: f.edges.clone().unwrap_or_default() })
            .collect()
    }
}
