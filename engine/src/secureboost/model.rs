//! The SecureBoost model file and scoring with it.
use std::path::Path;

use consort_protocols::channel::Channel;
use consort_protocols::mpc::secureboost::{self, BinnedFeatures, FeatureBins, Node, SbConfig, SbOutput, Split, Tree};
use consort_protocols::mpc::{MpcError, Party};
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::sealed::StorageKey;
use crate::storage::AtRest;

/// Model file format identifier (bump on any incompatible change).
pub const SB_MODEL_FORMAT: &str = "consort-secureboost/1";

/// One of this party's features: its name and bin edges (bin 0 = missing, then values ≤ e₁, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SbFeature {
    pub name: String,
    pub edges: Vec<f64>,
}

/// A node of this party's side of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SbNode {
    /// A's leaves.
    Leaf { id: u32, weight: f64 },
    /// This party's split: left iff missing or (bin ≥ 1 and x ≤ threshold). `gain` in A's file.
    Own { id: u32, feature: u32, bin: u8, threshold: Option<f64>, gain: Option<f64> },
    /// A's reference to B's split: B's feature index and bin, opaque to A.
    Peer { id: u32, feature: u32, bin: u8, gain: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SbTree {
    pub nodes: Vec<SbNode>,
}

/// The hyper-parameters as trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SbParams {
    pub trees: u32,
    pub max_depth: u32,
    pub learning_rate: f64,
    pub lambda: f64,
    pub gamma: f64,
    pub min_child_weight: f64,
    pub subsample: f64,
    pub colsample: f64,
    pub tolerance: f64,
    pub max_bins: u32,
}

impl From<&SbConfig> for SbParams {
    fn from(c: &SbConfig) -> Self {
        Self {
            trees: c.trees,
            max_depth: c.max_depth,
            learning_rate: c.learning_rate,
            lambda: c.lambda,
            gamma: c.gamma,
            min_child_weight: c.min_child_weight,
            subsample: c.subsample,
            colsample: c.colsample,
            tolerance: c.tolerance,
            max_bins: c.max_bins,
        }
    }
}

/// How training went (loss and evaluation in A's file only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SbSummary {
    pub train_rows: u64,
    pub holdout_rows: u64,
    pub trees_run: u32,
    pub stopped_early: bool,
    pub holdout_loss: Vec<f64>,
    pub auc: Option<f64>,
    pub ks: Option<f64>,
}

/// One party's SecureBoost model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SbModelFile {
    pub format: String,
    /// "A" (labels, leaf weights) or "B".
    pub party: String,
    pub job_id: String,
    /// The id both halves of the model share ([`super::model_id`]); a score job checks that the
    /// peer's half has the same. Empty in files written before it existed.
    #[serde(default)]
    pub model_id: String,
    pub peer: String,
    pub dataset: String,
    pub key_columns: Vec<String>,
    pub label: Option<String>,
    pub features: Vec<SbFeature>,
    pub peer_features: u64,
    pub params: SbParams,
    pub trees: Vec<SbTree>,
    pub training: SbSummary,
}

/// Split count and total gain of one feature (A's view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// A's feature name, or `peer:K` for B's feature index K.
    pub feature: String,
    pub splits: u32,
    pub gain: f64,
}

impl SbModelFile {
    /// The model file of one party from its training output. `features` are this party's
    /// feature names and bin edges, in the order the protocol saw them.
    pub fn from_output(party: Party, features: Vec<SbFeature>, output: &SbOutput, config: &SbConfig) -> Self {
        let a = party == Party::A;
        let trees = output
            .trees
            .iter()
            .map(|t| SbTree {
                nodes: t
                    .nodes
                    .iter()
                    .map(|n| match n.split {
                        Split::Leaf { weight } => SbNode::Leaf { id: n.id, weight },
                        Split::Own { feature, bin } => SbNode::Own {
                            id: n.id,
                            feature,
                            bin,
                            threshold: (bin >= 1).then(|| features[feature as usize].edges[bin as usize - 1]),
                            gain: a.then_some(n.gain),
                        },
                        Split::Peer { feature, bin } => SbNode::Peer { id: n.id, feature, bin, gain: n.gain },
                    })
                    .collect(),
            })
            .collect();
        Self {
            format: SB_MODEL_FORMAT.into(),
            party: if a { "A" } else { "B" }.into(),
            job_id: String::new(),
            model_id: String::new(),
            peer: String::new(),
            dataset: String::new(),
            key_columns: Vec::new(),
            label: None,
            features,
            peer_features: output.peer_features as u64,
            params: config.into(),
            trees,
            training: SbSummary {
                train_rows: 0,
                holdout_rows: 0,
                trees_run: output.trees_run,
                stopped_early: output.stopped_early,
                holdout_loss: output.holdout_loss.clone(),
                auc: None,
                ks: None,
            },
        }
    }

    /// The protocol's view of this party's trees.
    pub fn protocol_trees(&self) -> Vec<Tree> {
        self.trees
            .iter()
            .map(|t| Tree {
                nodes: t
                    .nodes
                    .iter()
                    .map(|n| match *n {
                        SbNode::Leaf { id, weight } => Node { id, split: Split::Leaf { weight }, gain: 0.0 },
                        SbNode::Own { id, feature, bin, gain, .. } => {
                            Node { id, split: Split::Own { feature, bin }, gain: gain.unwrap_or(0.0) }
                        }
                        SbNode::Peer { id, feature, bin, gain } => {
                            Node { id, split: Split::Peer { feature, bin }, gain }
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// This party's rows binned with the model's edges (`columns`: one `Vec` per model feature).
    pub fn bin(&self, columns: &[Vec<f64>], rows: usize) -> Result<BinnedFeatures, DataError> {
        if columns.len() != self.features.len() || columns.iter().any(|c| c.len() != rows) {
            return Err(DataError::Invalid("the rows do not have the model's features".into()));
        }
        let edges: Vec<FeatureBins> = self.features.iter().map(|f| FeatureBins { edges: f.edges.clone() }).collect();
        Ok(BinnedFeatures::apply(&edges, columns, rows))
    }

    /// Split count and gain per feature (A's file: B's features by index).
    pub fn importance(&self) -> Vec<Importance> {
        let mut out: Vec<Importance> = self
            .features
            .iter()
            .map(|f| Importance { feature: f.name.clone(), splits: 0, gain: 0.0 })
            .chain((0..self.peer_features).map(|k| Importance { feature: format!("peer:{k}"), splits: 0, gain: 0.0 }))
            .collect();
        let own = self.features.len();
        for n in self.trees.iter().flat_map(|t| &t.nodes) {
            let (slot, gain) = match *n {
                SbNode::Own { feature, gain, .. } => (feature as usize, gain.unwrap_or(0.0)),
                SbNode::Peer { feature, gain, .. } => (own + feature as usize, gain),
                SbNode::Leaf { .. } => continue,
            };
            if let Some(i) = out.get_mut(slot) {
                i.splits += 1;
                i.gain += gain;
            }
        }
        out
    }

    /// Reads a model file (sealed or plain) and checks its format and structure.
    pub fn load(path: &Path, key: Option<&StorageKey>) -> Result<Self, DataError> {
        let bytes = crate::storage::read_data(path, key).map_err(|e| DataError::io(path, e))?;
        let model: SbModelFile = serde_json::from_slice(&bytes)
            .map_err(|e| DataError::file(path, format!("not a SecureBoost model file: {e}")))?;
        if model.format != SB_MODEL_FORMAT {
            return Err(DataError::file(
                path,
                format!("model format '{}', expected '{SB_MODEL_FORMAT}'", model.format),
            ));
        }
        model.check().map_err(|e| DataError::file(path, e))?;
        Ok(model)
    }

    fn check(&self) -> Result<(), String> {
        if self.party != "A" && self.party != "B" {
            return Err(format!("model party '{}', expected A or B", self.party));
        }
        if self.features.iter().any(|f| f.edges.iter().any(|e| !e.is_finite()) || !f.edges.is_sorted_by(|a, b| a < b)) {
            return Err("a feature's bin edges are not finite and increasing".into());
        }
        for n in self.trees.iter().flat_map(|t| &t.nodes) {
            let ok = match *n {
                SbNode::Leaf { weight, .. } => weight.is_finite(),
                SbNode::Own { feature, bin, .. } => {
                    self.features.get(feature as usize).is_some_and(|f| (bin as usize) <= f.edges.len())
                }
                SbNode::Peer { feature, .. } => u64::from(feature) < self.peer_features,
            };
            if !ok {
                return Err("a tree node refers to a feature or bin the model does not have".into());
            }
        }
        Ok(())
    }

    /// Writes the model atomically, sealed or plain as `at_rest` says; creates the directory.
    pub fn save(&self, path: &Path, at_rest: &AtRest) -> Result<(), DataError> {
        crate::storage::write_json(path, self, at_rest)
    }
}

/// Joint scoring of aligned rows: both parties bin `columns` (their model's features, one `Vec`
/// each) with their model and run the prediction protocol. A gets σ(margin) per row, B nothing.
pub async fn score<C: Channel>(
    channel: &C,
    model: &SbModelFile,
    columns: &[Vec<f64>],
    rows: usize,
) -> Result<Vec<f64>, MpcError> {
    let party = match model.party.as_str() {
        "A" => Party::A,
        "B" => Party::B,
        other => return Err(MpcError::Invalid(format!("model party '{other}', expected A or B"))),
    };
    let x = model.bin(columns, rows).map_err(|e| MpcError::Invalid(e.to_string()))?;
    let margins = secureboost::predict(channel, party, &model.protocol_trees(), &x).await?;
    Ok(margins.into_iter().map(crate::lr::sigmoid).collect())
}

/// AUC and KS of `scores` against `labels`.
pub fn evaluate(scores: &[f64], labels: &[u8]) -> (Option<f64>, Option<f64>) {
    (crate::lr::auc(scores, labels), crate::lr::ks(scores, labels))
}
