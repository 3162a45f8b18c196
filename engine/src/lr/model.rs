//! The model file: one party's features, their standardization and weights (JSON, written
//! atomically), and the partial scores it gives.
use std::path::Path;

use consort_protocols::mpc::lr::LrConfig;
use serde::{Deserialize, Serialize};

use super::params::LrParams;
use crate::error::DataError;
use crate::sealed::StorageKey;
use crate::storage::AtRest;

/// Model file format identifier.
pub const MODEL_FORMAT: &str = "consort-lr/1";

/// One of the party's features in a model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFeature {
    pub name: String,
    /// Standardization: (x − mean) / std.
    pub mean: f64,
    pub std: f64,
    /// Weight of the standardized, encoded feature.
    pub weight: f64,
}

/// How the model was trained and how it did (evaluation fields only in A's file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub params: LrParams,
    pub aligned_rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
    pub epochs_run: u32,
    /// The epoch (1-based) whose weights the model holds: with early stopping, the one with the
    /// lowest holdout loss; otherwise the last. Absent in older files.
    #[serde(default)]
    pub weights_epoch: u32,
    pub stopped_early: bool,
    pub holdout_loss: Vec<f64>,
    pub auc: Option<f64>,
    pub ks: Option<f64>,
}

/// One party's model file (JSON). The score of a row is
/// `intercept + Σ_parties Σ_j weight_j · q((x_j − mean_j) / std_j)` where q rounds to
/// `feature_frac_bits` fraction bits and clips to `feature_bits` bits (the encoding training
/// used); the prediction is σ(score).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub format: String,
    /// "A" (labels, intercept) or "B".
    pub party: String,
    pub job_id: String,
    pub peer: String,
    pub dataset: String,
    pub key_columns: Vec<String>,
    pub label: Option<String>,
    pub features: Vec<ModelFeature>,
    pub intercept: Option<f64>,
    pub feature_bits: u32,
    pub feature_frac_bits: u32,
    /// The sigmoid approximation used in training ("taylor1" or "poly3"; scoring always uses σ).
    pub sigmoid: String,
    pub peer_features: u64,
    pub training: TrainingSummary,
}

impl ModelFile {
    /// Reads a model file, sealed (opened with `key`, every byte authenticated before it is
    /// used) or plain.
    pub fn load(path: &Path, key: Option<&StorageKey>) -> Result<Self, DataError> {
        let bytes = crate::storage::read_data(path, key).map_err(|e| DataError::io(path, e))?;
        let model: ModelFile =
            serde_json::from_slice(&bytes).map_err(|e| DataError::file(path, format!("not a model file: {e}")))?;
        if model.format != MODEL_FORMAT {
            return Err(DataError::file(path, format!("model format '{}', expected '{MODEL_FORMAT}'", model.format)));
        }
        if model.features.iter().any(|f| !(f.std > 0.0 && f.mean.is_finite() && f.weight.is_finite())) {
            return Err(DataError::file(path, "model has a feature with a non-positive std or non-finite values"));
        }
        Ok(model)
    }

    /// Writes the model atomically (temp file in the same directory, then rename), sealed or
    /// plain as `at_rest` says; creates the directory.
    pub fn save(&self, path: &Path, at_rest: &AtRest) -> Result<(), DataError> {
        crate::storage::write_json(path, self, at_rest)
    }

    fn encoder(&self) -> LrConfig {
        LrConfig { feature_bits: self.feature_bits, feature_frac_bits: self.feature_frac_bits, ..LrConfig::default() }
    }

    /// This party's partial score of each row of `x` (raw feature values, row-major, in the
    /// model's feature order).
    pub fn partial_scores(&self, x: &[f64]) -> Vec<f64> {
        let enc = self.encoder();
        let d = self.features.len();
        if d == 0 {
            return vec![0.0; 0];
        }
        x.chunks(d)
            .map(|row| {
                row.iter()
                    .zip(&self.features)
                    .map(|(&v, f)| f.weight * enc.decode_feature(enc.encode_feature((v - f.mean) / f.std)))
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_model_with_one_flipped_byte_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = std::sync::Arc::new(StorageKey::from_bytes([3; 32]));
        let path = dir.path().join("m.model.json");
        let training = TrainingSummary {
            params: LrParams::default(),
            aligned_rows: 10,
            train_rows: 8,
            holdout_rows: 2,
            epochs_run: 1,
            weights_epoch: 1,
            stopped_early: false,
            holdout_loss: vec![0.5],
            auc: None,
            ks: None,
        };
        let model = ModelFile {
            format: MODEL_FORMAT.into(),
            party: "A".into(),
            job_id: "j1".into(),
            peer: "b".into(),
            dataset: "d".into(),
            key_columns: vec!["id".into()],
            label: Some("y".into()),
            features: vec![ModelFeature { name: "f".into(), mean: 0.5, std: 2.0, weight: 1.5 }],
            intercept: Some(0.25),
            feature_bits: 24,
            feature_frac_bits: 16,
            sigmoid: "poly3".into(),
            peer_features: 2,
            training,
        };
        model.save(&path, &AtRest::Sealed(key.clone())).unwrap();
        assert_eq!(ModelFile::load(&path, Some(&key)).unwrap(), model);
        assert!(ModelFile::load(&path, None).unwrap_err().to_string().contains("no storage key"));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = ModelFile::load(&path, Some(&key)).unwrap_err().to_string();
        assert!(err.starts_with("m.model.json: sealed file damaged") && err.contains("fails authentication"), "{err}");
    }

    #[test]
    fn a_csv_is_not_a_model_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("x.csv"), "id,y,f1,f2\nk1,0,1.5,2\nk2,1,abc,3\nk3,2,1,1\n").unwrap();
        assert!(ModelFile::load(&p.join("x.csv"), None).unwrap_err().to_string().contains("not a model file"));
    }
}
