//! The train job: align → features → train → model → evaluate → save.
use consort_protocols::psi::ecdh::EcdhEvidence;
use std::path::PathBuf;

use consort_protocols::mpc::Party;
use consort_protocols::mpc::lr::{self, LrConfig, LrInput, LrOutput, LrProgressFn};
use consort_protocols::mpc::ot_mul::Matrix;
use consort_protocols::{Channel, ProgressFn, Role, cpu};
use serde::Serialize;

use super::align::align;
use super::features::{ColumnChoice, FeatureTable, load_features, split, standardization};
use super::metrics::{auc, ks};
use super::model::{MODEL_FORMAT, ModelFeature, ModelFile, TrainingSummary};
use super::params::LrParams;
use super::{LrError, Stages, check_label_side, party_of};
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::psi::PsiProtocol;
use crate::storage::AtRest;

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
    /// Whether the model file is sealed under the node's storage key.
    pub at_rest: AtRest,
    pub job_id: String,
    pub peer: String,
    pub psi_progress: Option<ProgressFn>,
    /// The bounds this party's grant puts on the job (peer set size, aligned rows).
    pub limits: crate::psi::JobLimits,
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
    /// The ECDH alignment's key commitments and DLEQ proofs, for the audit log (not in the JSON
    /// report).
    #[serde(skip)]
    pub ecdh_evidence: Option<EcdhEvidence>,
}

impl TrainReport {
    /// The report of a finished job: the counts and results are the model file's.
    fn new(model: &ModelFile, local_rows: u64, peer_rows: u64, path: PathBuf, stages: Stages) -> Self {
        let t = &model.training;
        Self {
            party: model.party.clone(),
            local_rows,
            peer_rows,
            aligned_rows: t.aligned_rows,
            train_rows: t.train_rows,
            holdout_rows: t.holdout_rows,
            features: model.features.len() as u64,
            peer_features: model.peer_features,
            epochs_run: t.epochs_run,
            weights_epoch: t.weights_epoch,
            stopped_early: t.stopped_early,
            sigmoid: model.sigmoid.clone(),
            holdout_loss: t.holdout_loss.clone(),
            auc: t.auc,
            ks: t.ks,
            model: path,
            stages: stages.into_vec(),
            ecdh_evidence: None,
        }
    }
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
    check_label_side(party, &job.columns)?;
    let mut stages = Stages::start();
    let aligned = align(channel, dataset, job.role, job.psi, job.psi_progress.clone(), job.limits).await?;
    stages.end("psi");
    let data = TrainingData::load(dataset, &aligned.order, job).await?;
    let input = data.input(party, &config);
    stages.end("features");
    let out = match dealer {
        Some(d) => lr::train_with_dealer(channel, d, input, &config, job.progress.clone()).await?,
        None => lr::train(channel, input, &config, job.progress.clone()).await?,
    };
    stages.end("train");
    let mut model = model_file(job, dataset, &config, &data, &out, party);
    evaluate(channel, party, &data, &mut model).await?;
    stages.end("evaluate");
    let (path, m, at_rest) = (job.model_out.clone(), model.clone(), job.at_rest.clone());
    cpu::run(move || m.save(&path, &at_rest)).await?;
    let mut report = TrainReport::new(&model, dataset.len() as u64, aligned.peer_rows, job.model_out.clone(), stages);
    report.ecdh_evidence = aligned.ecdh_evidence;
    Ok(report)
}

/// The aligned rows' features and labels, the split, and the standardization of the training rows.
struct TrainingData {
    table: FeatureTable,
    /// Aligned rows (the table has no values to count when this party has no features).
    rows: usize,
    /// (mean, std) of each feature over the training rows.
    scaling: Vec<(f64, f64)>,
    train_rows: Vec<u32>,
    holdout_rows: Vec<u32>,
}

impl TrainingData {
    /// Reads the features of the aligned rows `order` (joint order), splits them with the job's
    /// seed and standardizes on the training rows.
    async fn load(dataset: &Dataset, order: &[u32], job: &TrainJob) -> Result<Self, DataError> {
        let table = load_features(dataset, order, &job.columns).await?;
        let (train_rows, holdout_rows) = split(order.len(), job.params.holdout, job.params.split_seed);
        let scaling = standardization(&table.values, table.names.len(), &train_rows);
        Ok(Self { table, rows: order.len(), scaling, train_rows, holdout_rows })
    }

    fn cols(&self) -> usize {
        self.table.names.len()
    }

    /// The protocol's input: the standardized features in fixed point.
    fn input(&self, party: Party, config: &LrConfig) -> LrInput {
        let (n, d) = (self.rows, self.cols());
        let encoded: Vec<u64> = self
            .table
            .values
            .chunks(d.max(1))
            .take(if d == 0 { 0 } else { n })
            .flat_map(|row| row.iter().zip(&self.scaling).map(|(&v, &(m, s))| config.encode_feature((v - m) / s)))
            .collect();
        LrInput {
            party,
            features: Matrix::new(encoded, n, d, config.feature_bits).into(),
            labels: self.table.labels.clone(),
            train: self.train_rows.clone(),
            holdout: self.holdout_rows.clone(),
            onehot: None,
        }
    }
}

/// This party's model file, without the evaluation ([`evaluate`] adds it on A's side).
fn model_file(
    job: &TrainJob,
    dataset: &Dataset,
    config: &LrConfig,
    data: &TrainingData,
    out: &LrOutput,
    party: Party,
) -> ModelFile {
    let features: Vec<ModelFeature> = data
        .table
        .names
        .iter()
        .zip(&data.scaling)
        .zip(&out.weights)
        .map(|((name, &(mean, std)), &weight)| ModelFeature { name: name.clone(), mean, std, weight })
        .collect();
    ModelFile {
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
            aligned_rows: data.rows as u64,
            train_rows: data.train_rows.len() as u64,
            holdout_rows: data.holdout_rows.len() as u64,
            epochs_run: out.epochs_run,
            weights_epoch: out.weights_epoch,
            stopped_early: out.stopped_early,
            holdout_loss: out.holdout_loss.clone(),
            auc: None,
            ks: None,
        },
    }
}

/// Evaluation on the holdout with the final model: B sends A its partial scores of the holdout
/// rows ([`lr::exchange_partial_scores`]); A adds its own and the intercept and records AUC and KS.
async fn evaluate<C: Channel>(
    channel: &C,
    party: Party,
    data: &TrainingData,
    model: &mut ModelFile,
) -> Result<(), LrError> {
    let (d, holdout_rows, values) = (data.cols(), &data.holdout_rows, &data.table.values);
    let holdout_x: Vec<f64> =
        holdout_rows.iter().flat_map(|&i| values[i as usize * d..(i as usize + 1) * d].iter().copied()).collect();
    let own = if d == 0 { vec![0.0; holdout_rows.len()] } else { model.partial_scores(&holdout_x) };
    if let Some(peer) = lr::exchange_partial_scores(channel, party, &own).await? {
        let labels = data.table.labels.as_ref().expect("party A has labels");
        let y: Vec<u8> = holdout_rows.iter().map(|&i| labels[i as usize]).collect();
        let w0 = model.intercept.unwrap_or(0.0);
        let scores: Vec<f64> = own.iter().zip(&peer).map(|(a, b)| a + b + w0).collect();
        model.training.auc = auc(&scores, &y);
        model.training.ks = ks(&scores, &y);
    }
    Ok(())
}
