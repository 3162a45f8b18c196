//! The plaintext comparison of demos and tests: both parties' data and models in one place.
use std::collections::HashMap;

use consort_protocols::mpc::lr;
use serde::Serialize;

use super::features::{ColumnChoice, load_features, split, standardization};
use super::metrics::{auc, ks};
use super::model::ModelFile;
use crate::dataset::Dataset;
use crate::error::DataError;

/// A plaintext comparison for demos and tests, with both parties' data and models in one place
/// (never available in a real deployment): AUC of the secure model and of a plaintext logistic
/// regression with the exact sigmoid and the same hyper-parameters, both on all aligned rows.
#[derive(Debug, Clone, Serialize)]
pub struct PlainComparison {
    pub aligned_rows: u64,
    pub auc_secure: f64,
    pub auc_plaintext: f64,
    pub ks_secure: f64,
    pub ks_plaintext: f64,
}

/// Joins `a` and `b` by key in plaintext, trains the plaintext baseline with `model_a`'s
/// hyper-parameters on the same features, and scores both models on all aligned rows.
pub async fn plaintext_comparison(
    a: &Dataset,
    b: &Dataset,
    model_a: &ModelFile,
    model_b: &ModelFile,
) -> Result<PlainComparison, DataError> {
    let index_b: HashMap<String, u32> = (0..b.len()).map(|i| (b.key_of(i), i as u32)).collect();
    let mut pairs: Vec<(String, u32, u32)> =
        (0..a.len()).filter_map(|i| index_b.get(&a.key_of(i)).map(|&j| (a.key_of(i), i as u32, j))).collect();
    pairs.sort();
    let rows_a: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let rows_b: Vec<u32> = pairs.iter().map(|p| p.2).collect();
    let names = |m: &ModelFile| Some(m.features.iter().map(|f| f.name.clone()).collect::<Vec<_>>());
    let ta =
        load_features(a, &rows_a, &ColumnChoice { label: model_a.label.clone(), features: names(model_a) }).await?;
    let tb = load_features(b, &rows_b, &ColumnChoice { label: None, features: names(model_b) }).await?;
    let y = ta.labels.clone().ok_or_else(|| DataError::Invalid("model A has no label column".into()))?;
    let (da, db, n) = (model_a.features.len(), model_b.features.len(), pairs.len());
    let params = &model_a.training.params;
    let config = params.config()?;
    let (train, holdout) = split(n, params.holdout, params.split_seed);
    let encode = |x: &[f64], d: usize| -> Vec<f64> {
        let s = standardization(x, d, &train);
        x.chunks(d.max(1))
            .flat_map(|r| {
                r.iter().zip(&s).map(|(&v, &(m, sd))| config.decode_feature(config.encode_feature((v - m) / sd)))
            })
            .collect()
    };
    let (fa, fb) = (encode(&ta.values, da), encode(&tb.values, db));
    let plain = lr::plain::train_plain(&fa, da, &fb, db, &y, &train, &holdout, &config, true);
    let dot = |x: &[f64], w: &[f64]| x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();
    let plain_scores: Vec<f64> = (0..n)
        .map(|i| {
            dot(&fa[i * da..(i + 1) * da], &plain.weights_a)
                + dot(&fb[i * db..(i + 1) * db], &plain.weights_b)
                + plain.intercept
        })
        .collect();
    let (pa, pb) = (model_a.partial_scores(&ta.values), model_b.partial_scores(&tb.values));
    let pa = if da == 0 { vec![0.0; n] } else { pa };
    let pb = if db == 0 { vec![0.0; n] } else { pb };
    let w0 = model_a.intercept.unwrap_or(0.0);
    let secure_scores: Vec<f64> = pa.iter().zip(&pb).map(|(a, b)| a + b + w0).collect();
    let missing = || DataError::Invalid("the aligned rows hold only one class".into());
    Ok(PlainComparison {
        aligned_rows: n as u64,
        auc_secure: auc(&secure_scores, &y).ok_or_else(missing)?,
        auc_plaintext: auc(&plain_scores, &y).ok_or_else(missing)?,
        ks_secure: ks(&secure_scores, &y).ok_or_else(missing)?,
        ks_plaintext: ks(&plain_scores, &y).ok_or_else(missing)?,
    })
}
