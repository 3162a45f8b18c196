//! Vertical logistic regression jobs: train (PSI alignment, then secure training, evaluation and
//! model files) and score (PSI alignment, then predictions for A).
//!
//! Roles: the *requester* is party A (it holds the label column and gets the intercept,
//! evaluation and predictions); the *responder* is party B (features only). The protocol and what
//! each party learns are in [`consort_protocols::mpc::lr`]; this module adds:
//!
//! - **Alignment**: ECDH-PSI with the intersection revealed to both (both must know which of their
//!   rows take part): each party learns the intersection of the keys, in the joint order.
//! - **Features**: every non-key, non-label column unless the job names them; each value must
//!   parse as a finite number, labels must be 0 or 1 (errors name file, line and column).
//!   Standardized locally with the mean and (population) standard deviation of the training rows
//!   (a constant column gets scale 1), then encoded to fixed point (clipped at ±8 std by default).
//! - **Split**: a holdout fraction of the aligned rows, chosen by a seed the requester sends; the
//!   rest, shuffled by the same seed, is the batch order.
//! - **Evaluation** (A only): AUC and KS on the holdout, from the final model: B sends A its
//!   partial scores x_B·w_B of the holdout rows.
//! - **Model files** ([`ModelFile`], JSON, written atomically): each party's own features, their
//!   standardization and weights; A's also the intercept and the evaluation.
//! - **Scoring**: both sides compute partial scores with their own model on newly aligned rows; B
//!   sends its partial scores to A, who writes `KEY..., score` (probability σ(z)) in joint order.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use consort_protocols::mpc::lr::{self, LrConfig, LrInput, LrProgressFn, Sigmoid};
use consort_protocols::mpc::ot_mul::Matrix;
use consort_protocols::mpc::{MpcError, Party};
use consort_protocols::ot::Security;
use consort_protocols::psi::ecdh::{self as ecdh_psi, EcdhPsiConfig, EcdhPsiError};
use consort_protocols::psi::rr22::{self, Rr22Config, Rr22Error};
use consort_protocols::{Channel, ProgressFn, Reveal, Role, cpu};
use serde::{Deserialize, Serialize};

use crate::csv_rows::RowScanner;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::psi::PsiProtocol;

/// Model file format identifier.
pub const MODEL_FORMAT: &str = "consort-lr/1";

/// A failed LR job.
#[derive(Debug, thiserror::Error)]
pub enum LrError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Psi(#[from] EcdhPsiError),
    #[error(transparent)]
    Rr22(#[from] Rr22Error),
    #[error(transparent)]
    Mpc(#[from] MpcError),
}

/// Hyper-parameters as they travel in a job request and sit in model files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrParams {
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub l2: f64,
    pub feature_bits: u32,
    pub feature_frac_bits: u32,
    /// Early stopping tolerance on the holdout loss (0: off).
    pub tolerance: f64,
    /// Fraction of aligned rows held out for the loss, early stopping and AUC/KS.
    pub holdout: f64,
    /// Seed of the holdout split and batch order (public).
    pub split_seed: u64,
    /// Dealer mode: the node (pinned by both parties) that supplies the correlations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dealer: Option<String>,
    /// The sigmoid approximation: "taylor1" (default) or "poly3" (see
    /// [`consort_protocols::mpc::lr::Sigmoid`] for their errors). Absent in older files: taylor1.
    #[serde(default = "default_sigmoid")]
    pub sigmoid: String,
}

fn default_sigmoid() -> String {
    Sigmoid::Taylor1.name().into()
}

impl Default for LrParams {
    fn default() -> Self {
        let c = LrConfig::default();
        Self {
            epochs: c.epochs,
            batch_size: c.batch_size,
            learning_rate: c.learning_rate,
            l2: c.l2,
            feature_bits: c.feature_bits,
            feature_frac_bits: c.feature_frac_bits,
            tolerance: c.tolerance,
            holdout: 0.2,
            split_seed: 0,
            dealer: None,
            sigmoid: c.sigmoid.name().into(),
        }
    }
}

impl LrParams {
    pub fn config(&self) -> Result<LrConfig, DataError> {
        let sigmoid = Sigmoid::parse(&self.sigmoid).ok_or_else(|| {
            DataError::Invalid(format!("unknown sigmoid approximation '{}' (taylor1, poly3)", self.sigmoid))
        })?;
        let c = LrConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            l2: self.l2,
            feature_bits: self.feature_bits,
            feature_frac_bits: self.feature_frac_bits,
            tolerance: self.tolerance,
            sigmoid,
            security: Security::SemiHonest,
            ..LrConfig::default()
        };
        c.validate().map_err(|e| DataError::Invalid(e.to_string()))?;
        if !(0.0..0.9).contains(&self.holdout) {
            return Err(DataError::Invalid("holdout fraction must be in [0, 0.9)".into()));
        }
        Ok(c)
    }
}

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
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let model: ModelFile =
            serde_json::from_str(&text).map_err(|e| DataError::file(path, format!("not a model file: {e}")))?;
        if model.format != MODEL_FORMAT {
            return Err(DataError::file(path, format!("model format '{}', expected '{MODEL_FORMAT}'", model.format)));
        }
        if model.features.iter().any(|f| !(f.std > 0.0 && f.mean.is_finite() && f.weight.is_finite())) {
            return Err(DataError::file(path, "model has a feature with a non-positive std or non-finite values"));
        }
        Ok(model)
    }

    /// Writes the model atomically (temp file in the same directory, then rename).
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| DataError::Invalid(e.to_string()))?;
        write_atomic(path, text.as_bytes())
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

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| DataError::io(dir, e))?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(|e| DataError::io(path, e))?;
    tmp.persist(path).map_err(|e| DataError::io(path, e.error))?;
    Ok(())
}

/// Feature values (row-major) and labels of selected rows.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTable {
    pub names: Vec<String>,
    pub values: Vec<f64>,
    pub labels: Option<Vec<u8>>,
}

/// Which columns to read: the label (A only) and the features (`None`: every column that is
/// not a key or the label).
#[derive(Debug, Clone, Default)]
pub struct ColumnChoice {
    pub label: Option<String>,
    pub features: Option<Vec<String>>,
}

/// Reads the features (and label) of the dataset's kept rows `rows`, in that order, on rayon.
pub async fn load_features(dataset: &Dataset, rows: &[u32], choice: &ColumnChoice) -> Result<FeatureTable, DataError> {
    let path = dataset.spec.file.clone();
    let columns = dataset.columns.clone();
    let keys: Vec<String> = dataset.spec.keys.iter().map(|k| k.trim().to_string()).collect();
    // Fails if the file changed since the dataset was loaded (row offsets would be stale).
    if !dataset.is_empty() {
        dataset.row_bytes(0)?;
    }
    let starts: Vec<u64> = rows.iter().map(|&r| dataset.row_span(r as usize).0).collect();
    let choice = choice.clone();
    cpu::run(move || read_features(&path, &columns, &keys, &starts, &choice)).await
}

fn read_features(
    path: &Path,
    columns: &[String],
    keys: &[String],
    starts: &[u64],
    choice: &ColumnChoice,
) -> Result<FeatureTable, DataError> {
    let header_err = |column: &str, message: String| DataError::Row {
        path: path.to_path_buf(),
        line: 1,
        column: Some(column.to_string()),
        message,
    };
    let find = |name: &str| columns.iter().position(|c| c == name.trim());
    let label = match &choice.label {
        Some(l) => Some(
            find(l).ok_or_else(|| header_err(l, format!("no such label column (columns: {})", columns.join(", "))))?,
        ),
        None => None,
    };
    let features: Vec<usize> = match &choice.features {
        Some(names) => names
            .iter()
            .map(|n| {
                let i = find(n).ok_or_else(|| header_err(n, "no such feature column".into()))?;
                if keys.contains(&columns[i]) || Some(i) == label {
                    return Err(header_err(n, "a key or label column cannot be a feature".into()));
                }
                Ok(i)
            })
            .collect::<Result<_, _>>()?,
        None => (0..columns.len()).filter(|&i| !keys.contains(&columns[i]) && Some(i) != label).collect(),
    };
    let d = features.len();
    let slot: HashMap<u64, usize> = starts.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    let mut values = vec![0.0; starts.len() * d];
    let mut labels = label.map(|_| vec![0u8; starts.len()]);
    let mut seen = 0;
    let mut scanner = RowScanner::open(path)?;
    scanner.next_row()?; // header
    while let Some(row) = scanner.next_row()? {
        let Some(&i) = slot.get(&row.start) else { continue };
        seen += 1;
        let field = |c: usize| -> Result<&str, DataError> {
            let err = |m: String| DataError::Row {
                path: path.to_path_buf(),
                line: row.line,
                column: Some(columns[c].clone()),
                message: m,
            };
            if c >= row.len() {
                return Err(err("missing value (row too short)".into()));
            }
            std::str::from_utf8(row.field(c)).map(str::trim).map_err(|_| err("not valid UTF-8".into()))
        };
        let number = |c: usize| -> Result<f64, DataError> {
            let text = field(c)?;
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(DataError::Row {
                    path: path.to_path_buf(),
                    line: row.line,
                    column: Some(columns[c].clone()),
                    message: format!("not a number: '{text}'"),
                }),
            }
        };
        for (j, &c) in features.iter().enumerate() {
            values[i * d + j] = number(c)?;
        }
        if let (Some(c), Some(labels)) = (label, labels.as_mut()) {
            labels[i] = match number(c) {
                Ok(0.0) => 0,
                Ok(1.0) => 1,
                _ => {
                    return Err(DataError::Row {
                        path: path.to_path_buf(),
                        line: row.line,
                        column: Some(columns[c].clone()),
                        message: format!("label must be 0 or 1, found '{}'", field(c)?),
                    });
                }
            }
        }
    }
    if seen != starts.len() {
        return Err(DataError::file(path, "the file changed after it was loaded; load the dataset again"));
    }
    Ok(FeatureTable { names: features.iter().map(|&c| columns[c].clone()).collect(), values, labels })
}

/// Deterministic split of `n` aligned rows: (training rows in batch order, holdout rows).
pub fn split(n: usize, holdout: f64, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..n as u32).collect();
    // Fisher–Yates with SplitMix64: both parties must get the same order from the same seed.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let h = ((n as f64) * holdout).round() as usize;
    let h = h.min(n.saturating_sub(1));
    let holdout_rows = order[..h].to_vec();
    (order[h..].to_vec(), holdout_rows)
}

/// Mean and population standard deviation of each column over `rows` (std 1 for constant
/// columns).
pub fn standardization(values: &[f64], d: usize, rows: &[u32]) -> Vec<(f64, f64)> {
    (0..d)
        .map(|j| {
            let n = rows.len().max(1) as f64;
            let mean = rows.iter().map(|&i| values[i as usize * d + j]).sum::<f64>() / n;
            let var = rows.iter().map(|&i| (values[i as usize * d + j] - mean).powi(2)).sum::<f64>() / n;
            let std = var.sqrt();
            (mean, if std > 1e-12 { std } else { 1.0 })
        })
        .collect()
}

/// Area under the ROC curve (ties count one half). `None` without both classes.
pub fn auc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // ranks are 1-based
        rank_sum += idx[i..j].iter().filter(|&&k| labels[k] == 1).count() as f64 * avg_rank;
        i = j;
    }
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    (pos > 0.0 && neg > 0.0).then(|| (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

/// Kolmogorov–Smirnov statistic: max over thresholds of |TPR − FPR|. `None` without both classes.
pub fn ks(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let (mut tp, mut fp, mut best, mut i) = (0.0, 0.0, 0.0f64, 0);
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if labels[idx[j]] == 1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            j += 1;
        }
        best = best.max((tp / pos - fp / neg).abs());
        i = j;
    }
    Some(best)
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// One party's side of a train job.
#[derive(Clone)]
pub struct TrainJob {
    /// Requester = party A (labels), responder = party B.
    pub role: Role,
    /// The PSI protocol that aligns the rows.
    pub psi: PsiProtocol,
    pub columns: ColumnChoice,
    pub params: LrParams,
    pub model_out: PathBuf,
    pub job_id: String,
    pub peer: String,
    pub psi_progress: Option<ProgressFn>,
    pub progress: Option<LrProgressFn>,
}

/// What one party's side of a train job did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub party: String,
    pub local_rows: u64,
    pub peer_rows: u64,
    pub aligned_rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
    pub features: u64,
    pub peer_features: u64,
    pub epochs_run: u32,
    /// The epoch whose weights the model holds (see [`TrainingSummary::weights_epoch`]).
    pub weights_epoch: u32,
    pub stopped_early: bool,
    pub sigmoid: String,
    pub holdout_loss: Vec<f64>,
    pub auc: Option<f64>,
    pub ks: Option<f64>,
    pub model: PathBuf,
    pub stages: Vec<(String, f64)>,
}

fn party_of(role: Role) -> Party {
    match role {
        Role::Requester => Party::A,
        Role::Responder => Party::B,
    }
}

/// PSI with the intersection revealed to both; the joint order of this party's rows.
async fn align<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    role: Role,
    protocol: PsiProtocol,
    progress: Option<ProgressFn>,
) -> Result<(Vec<u32>, u64), LrError> {
    let out = match protocol {
        PsiProtocol::Ecdh => {
            let config = EcdhPsiConfig { role, reveal: Reveal::Both, progress, proofs: true };
            ecdh_psi::run(channel, &dataset.keys, &config).await?
        }
        PsiProtocol::Rr22 => {
            let config = Rr22Config { progress, ..Rr22Config::new(role, Reveal::Both) };
            rr22::run(channel, &dataset.keys, &config).await?
        }
    };
    let order = out.intersection.unwrap_or_default();
    if order.is_empty() {
        return Err(DataError::Invalid("the two datasets have no keys in common".into()).into());
    }
    Ok((order, out.peer_size))
}

/// Runs this party's side of a train job over `channel` and writes its model file.
pub async fn run_train<C: Channel>(channel: &C, dataset: &Dataset, job: &TrainJob) -> Result<TrainReport, LrError> {
    run_train_with_dealer::<C, C>(channel, None, dataset, job).await
}

/// [`run_train`], with the matrix-product correlations from a dealer when `dealer` is given.
pub async fn run_train_with_dealer<C: Channel, D: Channel>(
    channel: &C,
    dealer: Option<&D>,
    dataset: &Dataset,
    job: &TrainJob,
) -> Result<TrainReport, LrError> {
    let party = party_of(job.role);
    let config = job.params.config()?;
    if (party == Party::A) != job.columns.label.is_some() {
        return Err(DataError::Invalid(
            "the requester (party A) names the label column; the responder has none".into(),
        )
        .into());
    }
    let mut stages = Vec::new();
    let t = Instant::now();
    let (order, peer_rows) = align(channel, dataset, job.role, job.psi, job.psi_progress.clone()).await?;
    stages.push(("psi".to_string(), t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let table = load_features(dataset, &order, &job.columns).await?;
    let n = order.len();
    let d = table.names.len();
    let (train_rows, holdout_rows) = split(n, job.params.holdout, job.params.split_seed);
    let scaling = standardization(&table.values, d, &train_rows);
    let encoded: Vec<u64> = table
        .values
        .chunks(d.max(1))
        .take(if d == 0 { 0 } else { n })
        .flat_map(|row| row.iter().zip(&scaling).map(|(&v, &(m, s))| config.encode_feature((v - m) / s)))
        .collect();
    stages.push(("features".to_string(), t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let input = LrInput {
        party,
        features: Matrix::new(encoded, n, d, config.feature_bits),
        labels: table.labels.clone(),
        train: train_rows.clone(),
        holdout: holdout_rows.clone(),
    };
    let out = match dealer {
        Some(d) => lr::train_with_dealer(channel, d, input, &config, job.progress.clone()).await?,
        None => lr::train(channel, input, &config, job.progress.clone()).await?,
    };
    stages.push(("train".to_string(), t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let features: Vec<ModelFeature> = table
        .names
        .iter()
        .zip(&scaling)
        .zip(&out.weights)
        .map(|((name, &(mean, std)), &weight)| ModelFeature { name: name.clone(), mean, std, weight })
        .collect();
    let mut model = ModelFile {
        format: MODEL_FORMAT.into(),
        party: format!("{party:?}"),
        job_id: job.job_id.clone(),
        peer: job.peer.clone(),
        dataset: dataset.spec.name.clone(),
        key_columns: dataset.spec.keys.clone(),
        label: job.columns.label.clone(),
        features,
        intercept: out.intercept,
        feature_bits: config.feature_bits,
        feature_frac_bits: config.feature_frac_bits,
        sigmoid: config.sigmoid.name().into(),
        peer_features: out.peer_features as u64,
        training: TrainingSummary {
            params: job.params.clone(),
            aligned_rows: n as u64,
            train_rows: train_rows.len() as u64,
            holdout_rows: holdout_rows.len() as u64,
            epochs_run: out.epochs_run,
            weights_epoch: out.weights_epoch,
            stopped_early: out.stopped_early,
            holdout_loss: out.holdout_loss.clone(),
            auc: None,
            ks: None,
        },
    };
    // Evaluation on the holdout (A learns B's partial scores of the holdout rows).
    let holdout_x: Vec<f64> =
        holdout_rows.iter().flat_map(|&i| table.values[i as usize * d..(i as usize + 1) * d].iter().copied()).collect();
    let own = if d == 0 { vec![0.0; holdout_rows.len()] } else { model.partial_scores(&holdout_x) };
    if let Some(peer) = lr::exchange_partial_scores(channel, party, &own).await? {
        let labels = table.labels.as_ref().expect("party A has labels");
        let y: Vec<u8> = holdout_rows.iter().map(|&i| labels[i as usize]).collect();
        let w0 = model.intercept.unwrap_or(0.0);
        let scores: Vec<f64> = own.iter().zip(&peer).map(|(a, b)| a + b + w0).collect();
        model.training.auc = auc(&scores, &y);
        model.training.ks = ks(&scores, &y);
    }
    stages.push(("evaluate".to_string(), t.elapsed().as_secs_f64()));
    let (path, m) = (job.model_out.clone(), model.clone());
    cpu::run(move || m.save(&path)).await?;
    Ok(TrainReport {
        party: model.party.clone(),
        local_rows: dataset.len() as u64,
        peer_rows,
        aligned_rows: n as u64,
        train_rows: train_rows.len() as u64,
        holdout_rows: holdout_rows.len() as u64,
        features: d as u64,
        peer_features: out.peer_features as u64,
        epochs_run: out.epochs_run,
        weights_epoch: out.weights_epoch,
        stopped_early: out.stopped_early,
        sigmoid: config.sigmoid.name().into(),
        holdout_loss: out.holdout_loss,
        auc: model.training.auc,
        ks: model.training.ks,
        model: job.model_out.clone(),
        stages,
    })
}

/// One party's side of a score job.
#[derive(Clone)]
pub struct ScoreJob {
    pub role: Role,
    pub psi: PsiProtocol,
    pub model: Arc<ModelFile>,
    /// Where A writes the predictions (`KEY..., score`); unused by B.
    pub out: Option<PathBuf>,
    pub psi_progress: Option<ProgressFn>,
}

/// What one party's side of a score job did.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreReport {
    pub local_rows: u64,
    pub peer_rows: u64,
    pub aligned_rows: u64,
    /// Where A wrote the predictions.
    pub output: Option<PathBuf>,
    pub stages: Vec<(String, f64)>,
}

/// Runs this party's side of a score job: align, partial scores, B → A; A writes predictions.
pub async fn run_score<C: Channel>(channel: &C, dataset: &Dataset, job: &ScoreJob) -> Result<ScoreReport, LrError> {
    let party = party_of(job.role);
    let model = &job.model;
    if model.party != format!("{party:?}") {
        return Err(DataError::Invalid(format!(
            "this model belongs to party {} but this node is party {party:?} in the job",
            model.party
        ))
        .into());
    }
    let mut stages = Vec::new();
    let t = Instant::now();
    let (order, peer_rows) = align(channel, dataset, job.role, job.psi, job.psi_progress.clone()).await?;
    stages.push(("psi".to_string(), t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let names: Vec<String> = model.features.iter().map(|f| f.name.clone()).collect();
    let table = load_features(dataset, &order, &ColumnChoice { label: None, features: Some(names) }).await?;
    let own = if model.features.is_empty() { vec![0.0; order.len()] } else { model.partial_scores(&table.values) };
    let peer = lr::exchange_partial_scores(channel, party, &own).await?;
    let mut output = None;
    if let Some(peer) = peer {
        let path = job.out.clone().ok_or_else(|| DataError::Invalid("party A needs an output path".into()))?;
        let w0 = model.intercept.unwrap_or(0.0);
        let mut text = String::new();
        text.push_str(&dataset.spec.keys.join(","));
        text.push_str(",score\n");
        for ((&row, a), b) in order.iter().zip(&own).zip(&peer) {
            let key = dataset.key_of(row as usize);
            text.push_str(&csv_field(&key));
            text.push_str(&format!(",{:.6}\n", sigmoid(a + b + w0)));
        }
        write_atomic(&path, text.as_bytes())?;
        output = Some(path);
    }
    stages.push(("score".to_string(), t.elapsed().as_secs_f64()));
    Ok(ScoreReport { local_rows: dataset.len() as u64, peer_rows, aligned_rows: order.len() as u64, output, stages })
}

/// Quotes a CSV field if needed (composite keys are already joined by commas: quote each part).
fn csv_field(key: &str) -> String {
    key.split(',')
        .map(|p| if p.contains('"') || p.contains('\n') { format!("\"{}\"", p.replace('"', "\"\"")) } else { p.into() })
        .collect::<Vec<_>>()
        .join(",")
}

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

#[cfg(test)]
mod tests;
