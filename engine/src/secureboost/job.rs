//! The SecureBoost train and score jobs on one party: align (the LR jobs' PSI step, revealed to
//! both), read the features (the LR feature reader: finite numbers, labels 0/1, errors by file,
//! line and column), bin locally, split by keyed hash ([`keyed_split`]), train, evaluate on the holdout, and
//! write the model file; or bin with a model and score.
//!
//! **Model id.** Both halves of a model carry the same [`SbModelFile::model_id`]: a SHA-256 over
//! the job id, the aligned row count, both parties' feature counts and, per kept tree, B's split
//! nodes (id, feature, bin) — what both parties know after training (A from its references to B's
//! splits, B from its own). A score job sends A's model id and B refuses a model of another id,
//! so the two halves of different trainings are never mixed.
use std::path::PathBuf;
use std::sync::Arc;

use consort_protocols::he::{KeyPair, KeySize};
use consort_protocols::mpc::Party;
use consort_protocols::mpc::secureboost::{
    self, BinnedFeatures, FeatureBins, Histograms, SbConfig, SbInput, SbProgressFn, SbTimings,
};
use consort_protocols::psi::ecdh::EcdhEvidence;
use consort_protocols::{Channel, ProgressFn, Role, cpu};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{SbFeature, SbModelFile, SbNode, evaluate};
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::lr::align::align;
use crate::lr::{ColumnChoice, LrError, Stages, check_label_side, load_features, party_of};
use crate::psi::{JobLimits, PsiProtocol};
use crate::storage::AtRest;

/// A SecureBoost train job's hyper-parameters as they travel in the job request (validated by
/// both parties with [`SbParamsWire::config`] before anything is allocated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbParamsWire {
    pub trees: u32,
    pub max_depth: u32,
    pub learning_rate: f64,
    pub max_bins: u32,
    pub lambda: f64,
    pub gamma: f64,
    pub min_child_weight: f64,
    pub subsample: f64,
    pub colsample: f64,
    /// Early stopping tolerance on the holdout loss (0: off).
    pub tolerance: f64,
    /// Fraction of aligned rows held out for loss, early stopping, AUC and KS.
    pub holdout: f64,
    /// Seed of the holdout split, row and column sampling (public).
    pub seed: u64,
    /// How B's histograms are computed: `ot` (kept one-hot correlations) or `he` (Okamoto–Uchiyama);
    /// absent in requests from nodes that predate the choice, which used `he`.
    #[serde(default = "he_name")]
    pub histograms: String,
    /// The privacy-enhanced mode: A never sends B its partitions ([`SbConfig::hide_partitions`];
    /// `ot` only). Absent when off, so standard requests and job files are as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_partitions: bool,
}

fn he_name() -> String {
    Histograms::He.name().into()
}

impl Default for SbParamsWire {
    fn default() -> Self {
        let c = SbConfig::default();
        Self {
            trees: c.trees,
            max_depth: c.max_depth,
            learning_rate: c.learning_rate,
            max_bins: c.max_bins,
            lambda: c.lambda,
            gamma: c.gamma,
            min_child_weight: c.min_child_weight,
            subsample: c.subsample,
            colsample: c.colsample,
            tolerance: c.tolerance,
            holdout: 0.2,
            seed: 0,
            histograms: c.histograms.name().into(),
            hide_partitions: c.hide_partitions,
        }
    }
}

impl SbParamsWire {
    /// The protocol's configuration, validated (bounds on trees, depth, bins, rates), and the
    /// holdout fraction checked.
    pub fn config(&self) -> Result<SbConfig, DataError> {
        // `..Default::default()` although every field is set today: fields the protocol adds
        // later (e.g. a key-size option) keep their defaults.
        #[allow(clippy::needless_update)]
        let c = SbConfig {
            trees: self.trees,
            max_depth: self.max_depth,
            learning_rate: self.learning_rate,
            max_bins: self.max_bins,
            lambda: self.lambda,
            gamma: self.gamma,
            min_child_weight: self.min_child_weight,
            subsample: self.subsample,
            colsample: self.colsample,
            tolerance: self.tolerance,
            seed: self.seed,
            histograms: Histograms::parse(&self.histograms)
                .ok_or_else(|| DataError::Invalid("histograms must be he or ot".into()))?,
            hide_partitions: self.hide_partitions,
            ..SbConfig::default()
        };
        c.validate().map_err(|e| DataError::Invalid(e.to_string()))?;
        if !(0.0..0.9).contains(&self.holdout) {
            return Err(DataError::Invalid("holdout fraction must be in [0, 0.9)".into()));
        }
        Ok(c)
    }
}

/// One party's side of a SecureBoost train job.
#[derive(Clone)]
pub struct SbTrainJob {
    /// Requester = party A (labels), responder = party B.
    pub role: Role,
    pub psi: PsiProtocol,
    pub columns: ColumnChoice,
    pub params: SbParamsWire,
    pub model_out: PathBuf,
    pub at_rest: AtRest,
    pub job_id: String,
    pub peer: String,
    pub psi_progress: Option<ProgressFn>,
    /// Called when the protocol's setup begins and after every tree ([`secureboost::SbProgress`]).
    pub progress: Option<SbProgressFn>,
    pub limits: JobLimits,
}

/// What one party's side of a SecureBoost train job did.
#[derive(Debug, Clone, Serialize)]
pub struct SbTrainReport {
    pub model_kind: String,
    pub party: String,
    pub model_id: String,
    pub local_rows: u64,
    pub peer_rows: u64,
    pub aligned_rows: u64,
    pub train_rows: u64,
    pub holdout_rows: u64,
    pub features: u64,
    pub peer_features: u64,
    pub trees_run: u32,
    pub trees_kept: u32,
    pub stopped_early: bool,
    pub holdout_loss: Vec<f64>,
    pub auc: Option<f64>,
    pub ks: Option<f64>,
    /// A: split count and gain per feature (B's by index as `peer:K`); B: its own features.
    pub importance: Vec<super::Importance>,
    pub model: PathBuf,
    pub stages: Vec<(String, f64)>,
    /// Seconds A spent encrypting, B summing histograms, A decrypting.
    pub he_seconds: [f64; 3],
    /// The histogram backend (`he` or `ot`).
    pub histograms: String,
    /// Whether A's partitions were hidden from B (the privacy-enhanced mode).
    #[serde(default)]
    pub hide_partitions: bool,
    /// `ot`: seconds of the one-time setup of the kept correlations and of the per-node histogram
    /// exchanges (computing and waiting).
    pub ot_seconds: [f64; 2],
    /// Wall seconds and bytes (sent, received: this party's view, the protocol's frames only)
    /// of everything before the first tree (the hello and, with `ot`, the kept correlations'
    /// setup; with `he`, A's key).
    pub setup_seconds: f64,
    pub setup_bytes: [u64; 2],
    /// Wall seconds and bytes (sent, received) of each tree run.
    pub tree_seconds: Vec<f64>,
    pub tree_bytes: Vec<[u64; 2]>,
    #[serde(skip)]
    pub ecdh_evidence: Option<EcdhEvidence>,
}

/// The aligned rows of one party: its features column by column and (A) the labels.
struct Columns {
    names: Vec<String>,
    columns: Vec<Vec<f64>>,
    labels: Option<Vec<u8>>,
    rows: usize,
}

async fn read_columns(dataset: &Dataset, order: &[u32], choice: &ColumnChoice) -> Result<Columns, DataError> {
    let table = load_features(dataset, order, choice).await?;
    let (n, d) = (order.len(), table.names.len());
    let columns = (0..d).map(|j| (0..n).map(|i| table.values[i * d + j]).collect()).collect();
    Ok(Columns { names: table.names, columns, labels: table.labels, rows: n })
}

/// A fresh OU key pair of `size` from the operating system's randomness (a second or two, on
/// rayon). Also the binning job's.
pub(crate) async fn fresh_key(size: KeySize) -> Arc<KeyPair> {
    cpu::run(move || {
        use rand::SeedableRng;
        use rand::TryRng;
        // The seed is the key's whole entropy: wiped once the generator is seeded (the generator's own
        // state is dropped at the end of this closure; `StdRng` offers no zeroization).
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::SysRng
            .try_fill_bytes(seed.as_mut())
            .expect("the operating system's random number generator failed");
        let mut rng = rand::rngs::StdRng::from_seed(*seed);
        drop(seed);
        Arc::new(KeyPair::generate_sized(&mut rng, size))
    })
    .await
}

/// Runs this party's side of a SecureBoost train job over `channel` and writes its model file.
pub async fn run_sb_train<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    job: &SbTrainJob,
) -> Result<SbTrainReport, LrError> {
    let party = party_of(job.role);
    let mut config = job.params.config()?;
    // This node's own choice (the peer sees the same messages either way).
    config.kept_leaves_bytes = crate::memory::kept_leaves_budget();
    check_label_side(party, &job.columns)?;
    let mut stages = Stages::start();
    let aligned = align(channel, dataset, job.role, job.psi, job.psi_progress.clone(), job.limits).await?;
    stages.end("psi");
    let data = read_columns(dataset, &aligned.order, &job.columns).await?;
    let n = data.rows;
    if n > secureboost::MAX_ROWS {
        return Err(DataError::Invalid(format!(
            "{n} aligned rows; SecureBoost trains on at most {}",
            secureboost::MAX_ROWS
        ))
        .into());
    }
    let keys: Vec<String> = aligned.order.iter().map(|&r| dataset.key_of(r as usize)).collect();
    let (train_rows, holdout_rows) = keyed_split(&keys, job.params.holdout, job.params.seed);
    let (edges, binned) = {
        let (cols, fit, max_bins) = (data.columns.clone(), train_rows.clone(), config.max_bins);
        cpu::run(move || BinnedFeatures::fit(&cols, n, &fit, max_bins)).await
    };
    stages.end("features");
    let key = match (party, config.histograms) {
        (Party::A, Histograms::He) => Some(fresh_key(KeySize::default()).await),
        _ => None,
    };
    stages.end("keygen");
    let input = SbInput {
        party,
        features: binned.clone(),
        labels: data.labels.clone(),
        train: train_rows.clone(),
        holdout: holdout_rows.clone(),
        key,
    };
    let out = secureboost::train(channel, input, &config, job.progress.clone()).await?;
    stages.end("train");
    let features: Vec<SbFeature> =
        data.names.iter().zip(edges).map(|(name, e)| SbFeature { name: name.clone(), edges: e.edges }).collect();
    let mut model = SbModelFile::from_output(party, features, &out, &config);
    model.job_id = job.job_id.clone();
    model.peer = job.peer.clone();
    model.dataset = dataset.spec.name.clone();
    model.key_columns = dataset.spec.keys.clone();
    model.label = job.columns.label.clone();
    model.training.train_rows = train_rows.len() as u64;
    model.training.holdout_rows = holdout_rows.len() as u64;
    model.model_id = model_id(&model, n as u64);
    // Evaluation on the holdout with the kept trees: B routes the holdout rows, A scores them.
    if !holdout_rows.is_empty() {
        let x = subset(&binned, &holdout_rows);
        let margins = secureboost::predict(channel, party, &model.protocol_trees(), &x).await?;
        if let Some(labels) = &data.labels {
            let y: Vec<u8> = holdout_rows.iter().map(|&i| labels[i as usize]).collect();
            let (auc, ks) = evaluate(&margins, &y);
            model.training.auc = auc;
            model.training.ks = ks;
        }
    }
    stages.end("evaluate");
    let (path, m, at_rest) = (job.model_out.clone(), model.clone(), job.at_rest.clone());
    cpu::run(move || m.save(&path, &at_rest)).await?;
    let t: SbTimings = out.timings;
    Ok(SbTrainReport {
        model_kind: "secureboost".into(),
        party: model.party.clone(),
        model_id: model.model_id.clone(),
        local_rows: dataset.len() as u64,
        peer_rows: aligned.peer_rows,
        aligned_rows: n as u64,
        train_rows: train_rows.len() as u64,
        holdout_rows: holdout_rows.len() as u64,
        features: model.features.len() as u64,
        peer_features: model.peer_features,
        trees_run: out.trees_run,
        trees_kept: model.trees.len() as u32,
        stopped_early: out.stopped_early,
        holdout_loss: out.holdout_loss.clone(),
        auc: model.training.auc,
        ks: model.training.ks,
        importance: model.importance(),
        model: job.model_out.clone(),
        stages: stages.into_vec(),
        he_seconds: [t.encrypt, t.histograms, t.decrypt],
        histograms: config.histograms.name().into(),
        hide_partitions: config.hide_partitions,
        ot_seconds: [t.setup, t.histograms],
        setup_seconds: out.setup.seconds,
        setup_bytes: [out.setup.bytes_sent, out.setup.bytes_received],
        tree_seconds: out.per_tree.iter().map(|p| p.seconds).collect(),
        tree_bytes: out.per_tree.iter().map(|p| [p.bytes_sent, p.bytes_received]).collect(),
        ecdh_evidence: aligned.ecdh_evidence,
    })
}

/// The holdout split of aligned rows whose keys are `keys`: rows ranked by SHA-256(seed, key), the
/// first round(n·holdout) (at most n − 1) held out, the rest the training rows in rank order.
/// Unlike the LR split it does not depend on the PSI's joint order, which is fresh each run: both
/// parties get the same split, and so does a plaintext audit that knows the keys and the seed
/// ([`super::plaintext_comparison`]), whatever order it lists the rows in.
pub fn keyed_split(keys: &[String], holdout: f64, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let rank = |key: &String| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"consort-secureboost split v1\0");
        h.update(seed.to_le_bytes());
        h.update(key.as_bytes());
        h.finalize().into()
    };
    let mut ranked: Vec<([u8; 32], u32)> = keys.iter().enumerate().map(|(i, k)| (rank(k), i as u32)).collect();
    ranked.sort_unstable();
    let n = keys.len();
    let h = (((n as f64) * holdout).round() as usize).min(n.saturating_sub(1));
    let order: Vec<u32> = ranked.into_iter().map(|(_, i)| i).collect();
    (order[h..].to_vec(), order[..h].to_vec())
}

/// The rows `rows` of binned features, in that order.
pub(super) fn subset(x: &BinnedFeatures, rows: &[u32]) -> BinnedFeatures {
    BinnedFeatures {
        rows: rows.len(),
        columns: x.columns.iter().map(|c| rows.iter().map(|&r| c[r as usize]).collect()).collect(),
        bins: x.bins.clone(),
    }
}

/// The id both halves of one model share (module docs): hex of the first 16 bytes of a SHA-256
/// over what both parties know after training.
pub fn model_id(model: &SbModelFile, aligned_rows: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"consort-secureboost model id v1\0");
    h.update((model.job_id.len() as u64).to_le_bytes());
    h.update(model.job_id.as_bytes());
    let (own, peer) = (model.features.len() as u64, model.peer_features);
    let (a_features, b_features) = if model.party == "A" { (own, peer) } else { (peer, own) };
    for v in [aligned_rows, a_features, b_features, model.trees.len() as u64] {
        h.update(v.to_le_bytes());
    }
    let b_split = |n: &SbNode| match (n, model.party.as_str()) {
        (&SbNode::Peer { id, feature, bin, .. }, "A") | (&SbNode::Own { id, feature, bin, .. }, "B") => {
            Some((id, feature, bin))
        }
        _ => None,
    };
    for t in &model.trees {
        let splits: Vec<(u32, u32, u8)> = t.nodes.iter().filter_map(b_split).collect();
        h.update((splits.len() as u64).to_le_bytes());
        for (id, feature, bin) in splits {
            h.update(id.to_le_bytes());
            h.update(feature.to_le_bytes());
            h.update([bin]);
        }
    }
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// One party's side of a SecureBoost score job.
#[derive(Clone)]
pub struct SbScoreJob {
    pub role: Role,
    pub psi: PsiProtocol,
    pub model: Arc<SbModelFile>,
    /// Where A writes the predictions (`KEY..., score`); unused by B.
    pub out: Option<PathBuf>,
    pub at_rest: AtRest,
    pub psi_progress: Option<ProgressFn>,
    pub limits: JobLimits,
}

/// What one party's side of a SecureBoost score job did.
#[derive(Debug, Clone, Serialize)]
pub struct SbScoreReport {
    pub model_kind: String,
    pub model_id: String,
    pub local_rows: u64,
    pub peer_rows: u64,
    pub aligned_rows: u64,
    pub output: Option<PathBuf>,
    pub stages: Vec<(String, f64)>,
    #[serde(skip)]
    pub ecdh_evidence: Option<EcdhEvidence>,
}

/// Runs this party's side of a SecureBoost score job: align, bin with the model, joint prediction;
/// A writes the predictions (written whole or not at all).
pub async fn run_sb_score<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    job: &SbScoreJob,
) -> Result<SbScoreReport, LrError> {
    let party = party_of(job.role);
    let model = &job.model;
    if model.party != format!("{party:?}") {
        return Err(DataError::Invalid(format!(
            "this model belongs to party {} but this node is party {party:?} in the job",
            model.party
        ))
        .into());
    }
    let mut stages = Stages::start();
    let aligned = align(channel, dataset, job.role, job.psi, job.psi_progress.clone(), job.limits).await?;
    stages.end("psi");
    let names: Vec<String> = model.features.iter().map(|f| f.name.clone()).collect();
    let data = read_columns(dataset, &aligned.order, &ColumnChoice { label: None, features: Some(names) }).await?;
    let x = {
        let edges: Vec<FeatureBins> = model.features.iter().map(|f| FeatureBins { edges: f.edges.clone() }).collect();
        BinnedFeatures::apply(&edges, &data.columns, data.rows)
    };
    let margins = secureboost::predict(channel, party, &model.protocol_trees(), &x).await?;
    let mut output = None;
    if party == Party::A {
        let path = job.out.clone().ok_or_else(|| DataError::Invalid("party A needs an output path".into()))?;
        let scores: Vec<f64> = margins.iter().map(|&m| crate::lr::sigmoid(m)).collect();
        let (keys, at_rest, p) = (dataset.spec.keys.join(","), job.at_rest.clone(), path.clone());
        let rows: Vec<String> = aligned.order.iter().map(|&row| dataset.key_of(row as usize)).collect();
        cpu::run(move || crate::lr::score::write_predictions(&p, &keys, &rows, &scores, &at_rest)).await?;
        output = Some(path);
    }
    stages.end("score");
    Ok(SbScoreReport {
        model_kind: "secureboost".into(),
        model_id: model.model_id.clone(),
        local_rows: dataset.len() as u64,
        peer_rows: aligned.peer_rows,
        aligned_rows: aligned.order.len() as u64,
        output,
        stages: stages.into_vec(),
        ecdh_evidence: aligned.ecdh_evidence,
    })
}
