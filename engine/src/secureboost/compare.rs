//! The plaintext check of a trained SecureBoost model (`consort demo`, tests): the two datasets
//! joined in the clear, the same split ([`super::keyed_split`]), bins fitted on the same training
//! rows, and the plaintext reference GBDT
//! ([`consort_protocols::mpc::secureboost::plain::train`]) with the same hyper-parameters. The
//! secure model's two halves, evaluated in plaintext, must give the reference's predictions.
use std::collections::HashMap;

use consort_protocols::mpc::secureboost::plain::{self, PlainNode};
use consort_protocols::mpc::secureboost::{BinnedFeatures, FeatureBins};
use serde::Serialize;

use super::job::{SbParamsWire, keyed_split};
use super::model::{SbModelFile, SbNode, evaluate};
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::lr::{ColumnChoice, load_features, sigmoid};

/// The secure model against the plaintext reference on the same rows, bins and split.
#[derive(Debug, Clone, Serialize)]
pub struct SbComparison {
    pub aligned_rows: u64,
    pub holdout_rows: u64,
    /// Holdout AUC of the secure model (its two halves evaluated in plaintext) and of the reference.
    pub auc_secure: Option<f64>,
    pub auc_plaintext: Option<f64>,
    /// Largest |p_secure − p_plaintext| over every aligned row.
    pub max_prediction_diff: f64,
    /// Whether the reference fitted the same bin edges as both model files hold.
    pub same_bins: bool,
    /// The reference's probability for every aligned row, by key.
    #[serde(skip)]
    pub plaintext_scores: Vec<(String, f64)>,
}

/// Compares `model_a`/`model_b` (the two halves of one model, trained on `a` and `b` with `params`)
/// with the plaintext reference.
pub async fn plaintext_comparison(
    a: &Dataset,
    b: &Dataset,
    model_a: &SbModelFile,
    model_b: &SbModelFile,
    params: &SbParamsWire,
) -> Result<SbComparison, DataError> {
    let config = params.config()?;
    let index_b: HashMap<String, u32> = (0..b.len()).map(|i| (b.key_of(i), i as u32)).collect();
    let pairs: Vec<(String, u32, u32)> =
        (0..a.len()).filter_map(|i| index_b.get(&a.key_of(i)).map(|&j| (a.key_of(i), i as u32, j))).collect();
    let keys: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    let rows_a: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let rows_b: Vec<u32> = pairs.iter().map(|p| p.2).collect();
    let names = |m: &SbModelFile| Some(m.features.iter().map(|f| f.name.clone()).collect::<Vec<_>>());
    let ta =
        load_features(a, &rows_a, &ColumnChoice { label: model_a.label.clone(), features: names(model_a) }).await?;
    let tb = load_features(b, &rows_b, &ColumnChoice { label: None, features: names(model_b) }).await?;
    let y = ta.labels.clone().ok_or_else(|| DataError::Invalid("model A has no label column".into()))?;
    let n = pairs.len();
    let columns = |values: &[f64], d: usize| -> Vec<Vec<f64>> {
        (0..d).map(|j| (0..n).map(|i| values[i * d + j]).collect()).collect()
    };
    let (ca, cb) = (columns(&ta.values, model_a.features.len()), columns(&tb.values, model_b.features.len()));
    let (train, holdout) = keyed_split(&keys, params.holdout, params.seed);
    let (ea, xa) = BinnedFeatures::fit(&ca, n, &train, config.max_bins);
    let (eb, xb) = BinnedFeatures::fit(&cb, n, &train, config.max_bins);
    let edges = |m: &SbModelFile| m.features.iter().map(|f| FeatureBins { edges: f.edges.clone() }).collect::<Vec<_>>();
    let same_bins = ea == edges(model_a) && eb == edges(model_b);
    let reference = plain::train(&xa, &xb, &y, &train, &holdout, &config);
    // The secure model in plaintext, binned with its own edges.
    let (sa, sb) = (model_a.bin(&ca, n)?, model_b.bin(&cb, n)?);
    let b_splits: HashMap<(usize, u32), (u32, u8)> = model_b
        .trees
        .iter()
        .enumerate()
        .flat_map(|(t, tree)| {
            tree.nodes.iter().filter_map(move |nd| match *nd {
                SbNode::Own { id, feature, bin, .. } => Some(((t, id), (feature, bin))),
                _ => None,
            })
        })
        .collect();
    let secure_margin = |r: usize| -> Result<f64, DataError> {
        let mut z = 0.0;
        for (t, tree) in model_a.trees.iter().enumerate() {
            let mut id = 0;
            loop {
                let node = tree
                    .nodes
                    .iter()
                    .find(|nd| node_id(nd) == id)
                    .ok_or_else(|| DataError::Invalid("model A's tree is missing a node a row reaches".into()))?;
                let left = match *node {
                    SbNode::Leaf { weight, .. } => {
                        z += weight;
                        break;
                    }
                    SbNode::Own { feature, bin, .. } => sa.columns[feature as usize][r] <= bin,
                    SbNode::Peer { feature, bin, .. } => {
                        if b_splits.get(&(t, id)) != Some(&(feature, bin)) {
                            return Err(DataError::Invalid("the two model halves do not agree on a split".into()));
                        }
                        sb.columns[feature as usize][r] <= bin
                    }
                };
                id = if left { 2 * id + 1 } else { 2 * id + 2 };
            }
        }
        Ok(z)
    };
    let mut max_diff: f64 = 0.0;
    let mut plaintext_scores = Vec::with_capacity(n);
    let (mut secure_h, mut plain_h) = (Vec::new(), Vec::new());
    let in_holdout: std::collections::HashSet<u32> = holdout.iter().copied().collect();
    for (r, key) in keys.iter().enumerate() {
        let s = sigmoid(secure_margin(r)?);
        let p = sigmoid(plain_margin(&reference.trees, &xa, &xb, r));
        max_diff = max_diff.max((s - p).abs());
        plaintext_scores.push((key.clone(), p));
        if in_holdout.contains(&(r as u32)) {
            secure_h.push(s);
            plain_h.push(p);
        }
    }
    let yh: Vec<u8> = (0..n).filter(|r| in_holdout.contains(&(*r as u32))).map(|r| y[r]).collect();
    Ok(SbComparison {
        aligned_rows: n as u64,
        holdout_rows: holdout.len() as u64,
        auc_secure: evaluate(&secure_h, &yh).0,
        auc_plaintext: evaluate(&plain_h, &yh).0,
        max_prediction_diff: max_diff,
        same_bins,
        plaintext_scores,
    })
}

fn node_id(n: &SbNode) -> u32 {
    match *n {
        SbNode::Leaf { id, .. } | SbNode::Own { id, .. } | SbNode::Peer { id, .. } => id,
    }
}

fn plain_margin(trees: &[Vec<(u32, PlainNode)>], a: &BinnedFeatures, b: &BinnedFeatures, r: usize) -> f64 {
    trees.iter().map(|t| plain::score_row(t, a, b, r)).sum()
}
