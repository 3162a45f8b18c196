//! `consort gen lr`, `consort train` and `consort score`: flags parsed once into the typed job
//! requests ([`TrainRequest`], [`ScoreRequest`]) the node's job kinds take.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use consort_api::proto::{self, JobStatus, SubmitRequest};
use consort_api::{JobKind, JobState};
use consort_engine::PsiProtocol;
use consort_engine::lr::LrParams;
use consort_engine::lr_synth::{LrGenSpec, generate_lr};
use consort_engine::scorecard::CardParams;
use consort_engine::secureboost::{SB_MODEL_FORMAT, SbParamsWire};
use consort_protocols::mpc::lr::Sigmoid;

use super::status::{ensure_done, watch_with_progress};
use super::{JobArgs, jobfile};
use crate::client::NodeClient;
use crate::config;
use crate::job::score::ScoreRequest;
use crate::job::secureboost::{SbScoreRequest, SbTrainRequest};
use crate::job::train::TrainRequest;

#[derive(Args, Debug)]
pub struct GenLrArgs {
    /// Rows (entities) in a.csv.
    #[arg(long)]
    pub rows: u64,
    /// Features of party A (a.csv: id, y, a0..).
    #[arg(long)]
    pub features_a: u32,
    /// Features of party B (b.csv: id, b0..).
    #[arg(long)]
    pub features_b: u32,
    /// Ids of a.csv left out of b.csv.
    #[arg(long, default_value_t = 0)]
    pub missing_b: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
    /// Print a JSON object (files, rows, positives) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Hyper-parameters (defaults: the engine's).
#[derive(Args, Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HyperArgs {
    #[arg(long, default_value_t = LrParams::default().epochs)]
    pub epochs: u32,
    #[arg(long, default_value_t = LrParams::default().batch_size)]
    pub batch_size: usize,
    /// Learning rate (default: 0.5 for LR, 0.3 for SecureBoost, the engines' defaults).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// L2 penalty λ.
    #[arg(long, default_value_t = LrParams::default().l2)]
    pub l2: f64,
    /// Fraction of aligned rows held out for loss, early stopping, AUC and KS.
    #[arg(long, default_value_t = LrParams::default().holdout)]
    pub holdout: f64,
    /// Early stopping: stop when the holdout loss improves by less than this (0: off).
    #[arg(long, default_value_t = LrParams::default().tolerance)]
    pub tolerance: f64,
    /// Bits per encoded feature.
    #[arg(long, default_value_t = LrParams::default().feature_bits)]
    pub feature_bits: u32,
    /// Fraction bits per encoded feature.
    #[arg(long, default_value_t = LrParams::default().feature_frac_bits)]
    pub feature_frac_bits: u32,
    /// Seed of the holdout split and batch order (default: random).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "jobfile::toml_u64")]
    pub seed: Option<u64>,
    /// Sigmoid approximation: taylor1 (1/2 + z/4; cheapest, best while scores stay small) or
    /// poly3 (least-squares cubic on [-8, 8]; better for strong signal, 3 secure products per row).
    #[arg(long, default_value = LrParams::default().sigmoid.name(), value_parser = super::vocab::<Sigmoid>())]
    #[serde(serialize_with = "jobfile::vocab_name")]
    pub sigmoid: Sigmoid,
    /// Dealer mode: take the correlations from this pinned third node (both parties must pin it;
    /// it must not collude with either party). Default: dealer-free (OT-based).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dealer: Option<String>,
}

impl HyperArgs {
    pub fn params(&self) -> LrParams {
        LrParams {
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate.unwrap_or(LrParams::default().learning_rate),
            l2: self.l2,
            feature_bits: self.feature_bits,
            feature_frac_bits: self.feature_frac_bits,
            tolerance: self.tolerance,
            holdout: self.holdout,
            split_seed: self.seed.unwrap_or_else(rand::random),
            dealer: self.dealer.clone(),
            sigmoid: self.sigmoid,
            scorecard: None,
        }
    }
}

/// The model a train job fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Lr,
    Secureboost,
}

impl ModelKind {
    fn is_lr(&self) -> bool {
        *self == ModelKind::Lr
    }
}

/// SecureBoost hyper-parameters (defaults: the protocol's, [`SbParamsWire::default`]).
#[derive(Args, Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SbArgs {
    /// SecureBoost: number of trees (default 5).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trees: Option<u32>,
    /// SecureBoost: depth of each tree (default 5).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// SecureBoost: bins per feature, the missing-value bin included (2..=256; default 33).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bins: Option<u32>,
    /// SecureBoost: L2 regularization λ of leaf weights (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// SecureBoost: minimum gain γ of a split (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// SecureBoost: minimum hessian sum of each child (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_child_weight: Option<f64>,
    /// SecureBoost: fraction of training rows each tree samples (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subsample: Option<f64>,
    /// SecureBoost: fraction of each party's features each tree considers (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colsample: Option<f64>,
    /// SecureBoost: how the peer's histograms are computed: `ot` (kept one-hot correlations,
    /// default) or `he` (Okamoto–Uchiyama encryption; docs/security.md).
    #[arg(long, value_parser = ["he", "ot"])]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histograms: Option<String>,
    /// SecureBoost: the privacy-enhanced mode: this node never sends the peer the partitions of
    /// its own splits, so the peer learns no node's rows beyond its own splits' (needs `ot`;
    /// each histogram then costs the peer's view of the node's rows: slower, docs/security.md).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_partitions: bool,
}

impl SbArgs {
    fn any(&self) -> bool {
        self.trees.is_some()
            || self.max_depth.is_some()
            || self.max_bins.is_some()
            || self.lambda.is_some()
            || self.gamma.is_some()
            || self.min_child_weight.is_some()
            || self.subsample.is_some()
            || self.colsample.is_some()
            || self.histograms.is_some()
            || self.hide_partitions
    }
}

/// The SecureBoost parameters of `consort train --model secureboost`: its own flags, and the
/// shared --learning-rate, --holdout, --tolerance and --seed.
pub fn sb_params(hyper: &HyperArgs, t: &SbArgs) -> SbParamsWire {
    let d = SbParamsWire::default();
    SbParamsWire {
        trees: t.trees.unwrap_or(d.trees),
        max_depth: t.max_depth.unwrap_or(d.max_depth),
        learning_rate: hyper.learning_rate.unwrap_or(d.learning_rate),
        max_bins: t.max_bins.unwrap_or(d.max_bins),
        lambda: t.lambda.unwrap_or(d.lambda),
        gamma: t.gamma.unwrap_or(d.gamma),
        min_child_weight: t.min_child_weight.unwrap_or(d.min_child_weight),
        subsample: t.subsample.unwrap_or(d.subsample),
        colsample: t.colsample.unwrap_or(d.colsample),
        tolerance: hyper.tolerance,
        holdout: hyper.holdout,
        seed: hyper.seed.unwrap_or_else(rand::random),
        histograms: t.histograms.clone().unwrap_or(d.histograms),
        hide_partitions: t.hide_partitions,
    }
}

/// Scorecard flags of `consort train` (issue 14 item 3; `consort_engine::scorecard`).
#[derive(Args, Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CardArgs {
    /// Train a credit scorecard on the bins of a `bin` job: LR on A's features as WOE and B's as
    /// bin indicators, then integer points per bin (needs --bins). The peer uses its own bins
    /// file of the same bin job.
    #[arg(long, requires = "bins")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scorecard: bool,
    /// Scorecard: this node's bins file (the bin job's --out).
    #[arg(long, value_name = "BINS.json", requires = "scorecard")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bins: Option<PathBuf>,
    /// Scorecard: points at the base odds (default 600).
    #[arg(long, requires = "scorecard")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_score: Option<f64>,
    /// Scorecard: good:bad odds at the base score (default 50).
    #[arg(long, requires = "scorecard")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_odds: Option<f64>,
    /// Scorecard: points that double the good:bad odds (default 20). Higher points = lower risk.
    #[arg(long, requires = "scorecard")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdo: Option<f64>,
}

/// Serialized (kebab-case, without the node directory and the output format): its job file.
#[derive(Args, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TrainArgs {
    /// This node is party A (it holds the labels), the peer party B.
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    /// Label column (0/1).
    #[arg(long)]
    pub label: String,
    /// PSI protocol aligning the rows (ecdh, rr22).
    #[arg(long, default_value = "ecdh", value_parser = super::vocab::<PsiProtocol>())]
    #[serde(serialize_with = "jobfile::vocab_name")]
    pub protocol: PsiProtocol,
    /// Feature columns, comma-separated (default: every column but keys and label).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub hyper: HyperArgs,
    /// The model: lr (joint logistic regression) or secureboost (gradient-boosted trees; takes
    /// --trees, --max-depth, --max-bins ... and of the flags above --learning-rate, --holdout,
    /// --tolerance and --seed).
    #[arg(long, value_enum, default_value_t = ModelKind::Lr)]
    #[serde(skip_serializing_if = "ModelKind::is_lr")]
    pub model: ModelKind,
    #[command(flatten)]
    #[serde(flatten)]
    pub trees: SbArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub card: CardArgs,
    /// Where to write this node's model (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// Also write this job as a job file (TOML) for `consort run`, then run it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub save_job: Option<PathBuf>,
}

/// Serialized (kebab-case, without the node directory and the output format): its job file.
#[derive(Args, Debug, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScoreArgs {
    /// This node is party A; both datasets hold the new rows.
    #[command(flatten)]
    #[serde(flatten)]
    pub job: JobArgs,
    /// This node's model from `consort train` (the peer uses its own model of the same job).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the predictions (CSV: key columns, score = probability; with a scorecard:
    /// key columns, points (integer), probability).
    #[arg(long)]
    pub out: PathBuf,
    /// PSI protocol aligning the rows (ecdh, rr22).
    #[arg(long, default_value = "ecdh", value_parser = super::vocab::<PsiProtocol>())]
    #[serde(serialize_with = "jobfile::vocab_name")]
    pub protocol: PsiProtocol,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
    /// Also write this job as a job file (TOML) for `consort run`, then run it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub save_job: Option<PathBuf>,
}

pub async fn gen_lr(args: GenLrArgs) -> Result<()> {
    let spec = LrGenSpec {
        rows: args.rows,
        features_a: args.features_a,
        features_b: args.features_b,
        missing_b: args.missing_b,
        seed: args.seed,
        out_dir: args.out.clone(),
    };
    let s = consort_protocols::cpu::run(move || generate_lr(&spec)).await?;
    if args.json {
        return super::print_json(&s);
    }
    println!(
        "wrote {} ({} rows, {} positive) and {} ({} rows), ground truth in {}, in {:.1} s",
        s.a.display(),
        s.rows_a,
        s.positives,
        s.b.display(),
        s.rows_b,
        s.truth.display(),
        s.seconds
    );
    Ok(())
}

pub async fn train(mut args: TrainArgs) -> Result<()> {
    // Drawn here, not in `params`, so that a saved job file repeats the same split.
    args.hyper.seed.get_or_insert_with(rand::random);
    args.out = config::absolute(&args.out)?;
    if args.model == ModelKind::Secureboost {
        return train_secureboost(args).await;
    }
    if args.trees.any() {
        bail!(
            "--trees, --max-depth, --max-bins, --lambda, --gamma, --min-child-weight, --subsample, --colsample, --histograms and --hide-partitions are SecureBoost flags: add --model secureboost"
        );
    }
    let mut params = args.hyper.params();
    if args.card.scorecard {
        if !args.features.is_empty() {
            bail!(
                "a scorecard takes its features from the bins file's selection (the bin job's --min-iv, --max-corr): drop --features"
            );
        }
        let bins = args.card.bins.as_deref().map(config::absolute).transpose()?;
        args.card.bins = bins.clone();
        let c = &args.card;
        let mut card =
            CardParams::new(c.base_score.unwrap_or(600.0), c.base_odds.unwrap_or(50.0), c.pdo.unwrap_or(20.0));
        card.bins_file = bins;
        // The scorecard default rate is chosen by the node from the bins file (engine docs).
        card.auto_rate = args.hyper.learning_rate.is_none();
        params.scorecard = Some(card);
    }
    params.config()?;
    jobfile::save_if_asked(args.save_job.as_deref(), JobKind::Train, &args)?;
    let train = TrainRequest { label: args.label, features: args.features, params };
    let out = args.out;
    let j = &args.job;
    let request = submit_request(JobKind::Train, (&j.peer, &j.dataset, &j.peer_dataset), args.protocol, &train, &out)?;
    run(&j.dir, request, args.json).await
}

/// `consort train --model secureboost`: a `secureboost` job.
async fn train_secureboost(args: TrainArgs) -> Result<()> {
    if args.hyper.dealer.is_some() {
        bail!("--dealer is for LR training; SecureBoost needs no dealer");
    }
    if args.card.scorecard {
        bail!("--scorecard is LR on binned features: drop --model secureboost");
    }
    let params = sb_params(&args.hyper, &args.trees);
    params.config()?;
    jobfile::save_if_asked(args.save_job.as_deref(), JobKind::Train, &args)?;
    let request = SbTrainRequest { label: args.label.clone(), features: args.features.clone(), params };
    let j = &args.job;
    let submit = submit_request(
        JobKind::Secureboost,
        (&j.peer, &j.dataset, &j.peer_dataset),
        args.protocol,
        &request,
        &args.out,
    )?;
    run(&j.dir, submit, args.json).await
}

/// Whether the model file declares the SecureBoost format (read with the node's storage key when
/// sealed). A file this command cannot read goes to the node as an LR score job, whose error
/// names what is wrong with it, as before SecureBoost existed. Public for the Python package's
/// `Node.score`, which picks the job kind the same way.
pub fn is_secureboost_model(dir: &Path, model: &Path) -> bool {
    #[derive(serde::Deserialize)]
    struct Format {
        format: String,
    }
    let key = crate::at_rest::load_key(dir).ok();
    consort_engine::storage::read_data(model, key.as_ref())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Format>(&bytes).ok())
        .is_some_and(|f| f.format == SB_MODEL_FORMAT)
}

pub async fn score(mut args: ScoreArgs) -> Result<()> {
    args.model = config::absolute(&args.model)?;
    args.out = config::absolute(&args.out)?;
    jobfile::save_if_asked(args.save_job.as_deref(), JobKind::Score, &args)?;
    if is_secureboost_model(&args.job.dir, &args.model) {
        let request = SbScoreRequest { model: args.model.clone() };
        let j = &args.job;
        let submit = submit_request(
            JobKind::SecureboostScore,
            (&j.peer, &j.dataset, &j.peer_dataset),
            args.protocol,
            &request,
            &args.out,
        )?;
        return run(&j.dir, submit, args.json).await;
    }
    let score = ScoreRequest { model: args.model };
    let out = args.out;
    let j = &args.job;
    let request = submit_request(JobKind::Score, (&j.peer, &j.dataset, &j.peer_dataset), args.protocol, &score, &out)?;
    run(&j.dir, request, args.json).await
}

/// An LR job submission: the kind's operator parameters as JSON, `out` absolute (train: the model
/// file; score: the predictions).
pub fn submit_request(
    kind: JobKind,
    (peer, dataset, peer_dataset): (&str, &str, &str),
    protocol: PsiProtocol,
    params: &impl serde::Serialize,
    out: &Path,
) -> Result<SubmitRequest> {
    Ok(SubmitRequest {
        kind: kind as i32,
        peer: peer.into(),
        dataset: dataset.into(),
        peer_dataset: peer_dataset.into(),
        protocol: proto::PsiProtocol::from(protocol) as i32,
        reveal: proto::Reveal::Both as i32,
        out: out.display().to_string(),
        params: serde_json::to_string(params)?,
    })
}

async fn run(dir: &Path, request: SubmitRequest, json: bool) -> Result<()> {
    let client = NodeClient::connect(dir).await?;
    let job_id = client.submit(request).await?;
    let status = watch_with_progress(&client, &job_id, json).await?;
    if json {
        println!("{}", status_json(&status));
    } else {
        println!("{}", summary(&status));
    }
    ensure_done(&status)
}

/// The job status plus the engine's report, as one JSON object.
pub fn status_json(s: &JobStatus) -> serde_json::Value {
    let mut v = super::status::status_json(s);
    if let Ok(report) = serde_json::from_str::<serde_json::Value>(&s.summary) {
        v["report"] = report;
    }
    v
}

/// A readable summary of a finished train or score job.
pub fn summary(s: &JobStatus) -> String {
    let kind = s.job_kind();
    if s.job_state() != JobState::Done {
        return format!("{kind} job {} {} after {:.1} s: {}", s.job_id, s.job_state(), s.seconds, s.error);
    }
    let r: serde_json::Value = serde_json::from_str(&s.summary).unwrap_or_default();
    let mut lines = vec![format!("{kind} job {} done in {:.2} s with peer '{}'", s.job_id, s.seconds, s.peer)];
    lines.push(format!("  rows: {} here, {} at the peer, {} aligned", s.local_rows, s.peer_rows, s.intersection));
    if kind == JobKind::Train {
        lines.push(format!(
            "  features: {} here, {} at the peer; sigmoid {}; {} epochs{}",
            r["features"],
            r["peer_features"],
            r["sigmoid"].as_str().unwrap_or("?"),
            r["epochs_run"],
            if r["stopped_early"] == true {
                format!(" (stopped early; weights of epoch {})", r["weights_epoch"])
            } else {
                String::new()
            }
        ));
        if let Some(losses) = r["holdout_loss"].as_array().filter(|l| !l.is_empty()) {
            let l: Vec<String> = losses.iter().filter_map(|v| v.as_f64()).map(|v| format!("{v:.4}")).collect();
            lines.push(format!("  holdout loss per epoch: {}", l.join(" ")));
        }
        if let (Some(auc), Some(ks)) = (r["auc"].as_f64(), r["ks"].as_f64()) {
            lines.push(format!("  holdout ({} rows): AUC {auc:.4}, KS {ks:.4}", r["holdout_rows"]));
        }
        lines.push(format!("  model: {}", s.output));
        if !s.peer_output.is_empty() {
            lines.push(format!("  the peer's model: {} (under its node directory)", s.peer_output));
        }
    } else if kind == JobKind::Secureboost {
        sb_lines(&r, s, &mut lines);
    } else if !s.output.is_empty() {
        lines.push(format!("  wrote {} predictions to {}", s.output_rows, s.output));
    }
    lines.push(format!(
        "  sent {:.1} MB, received {:.1} MB on the wire",
        s.wire_bytes_sent as f64 / 1e6,
        s.wire_bytes_received as f64 / 1e6
    ));
    let stages: Vec<String> = s.stages.iter().map(|st| format!("{} {:.2}s", st.name, st.seconds)).collect();
    if !stages.is_empty() {
        lines.push(format!("  stages: {}", stages.join(", ")));
    }
    lines.join("\n")
}

/// The SecureBoost part of a train job's summary: trees, holdout loss per tree, AUC/KS, importance.
fn sb_lines(r: &serde_json::Value, s: &JobStatus, lines: &mut Vec<String>) {
    lines.push(format!(
        "  SecureBoost: features {} here, {} at the peer; {} trees run, {} kept{}; model id {}",
        r["features"],
        r["peer_features"],
        r["trees_run"],
        r["trees_kept"],
        if r["stopped_early"] == true { " (stopped early)" } else { "" },
        r["model_id"].as_str().unwrap_or("?")
    ));
    if r["hide_partitions"] == true {
        lines.push("  partitions hidden: the passive party learned no node's rows beyond its own splits'".into());
    }
    if let Some(losses) = r["holdout_loss"].as_array().filter(|l| !l.is_empty()) {
        let l: Vec<String> = losses.iter().filter_map(|v| v.as_f64()).map(|v| format!("{v:.4}")).collect();
        lines.push(format!("  holdout loss per tree: {}", l.join(" ")));
    }
    if let (Some(auc), Some(ks)) = (r["auc"].as_f64(), r["ks"].as_f64()) {
        lines.push(format!("  holdout ({} rows): AUC {auc:.4}, KS {ks:.4}", r["holdout_rows"]));
    }
    if let Some(imp) = r["importance"].as_array() {
        let mut imp: Vec<&serde_json::Value> = imp.iter().filter(|i| i["splits"].as_u64() > Some(0)).collect();
        imp.sort_by(|a, b| b["gain"].as_f64().unwrap_or(0.0).total_cmp(&a["gain"].as_f64().unwrap_or(0.0)));
        let shown: Vec<String> = imp
            .iter()
            .take(10)
            .map(|i| {
                format!(
                    "{} ({} splits, gain {:.2})",
                    i["feature"].as_str().unwrap_or("?"),
                    i["splits"],
                    i["gain"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        if !shown.is_empty() {
            lines.push(format!("  importance (peer:K = the peer's feature K): {}", shown.join(", ")));
        }
    }
    if let Some(he) = r["he_seconds"].as_array() {
        let v: Vec<f64> = he.iter().filter_map(|x| x.as_f64()).collect();
        if v.len() == 3 && r["party"] == "A" && r["histograms"] != "ot" {
            lines.push(format!("  encrypt {:.2}s, decrypt {:.2}s (the peer's histograms are timed there)", v[0], v[2]));
        }
    }
    if let (Some("ot"), Some(ot)) = (r["histograms"].as_str(), r["ot_seconds"].as_array()) {
        let v: Vec<f64> = ot.iter().filter_map(|x| x.as_f64()).collect();
        if v.len() == 2 {
            lines.push(format!("  histograms (ot): setup {:.2}s, per-node exchanges {:.2}s", v[0], v[1]));
        }
    }
    if let Some(trees) = r["tree_seconds"].as_array().filter(|t| !t.is_empty()) {
        let secs: f64 = trees.iter().filter_map(|x| x.as_f64()).sum();
        let sent: u64 = r["tree_bytes"].as_array().into_iter().flatten().filter_map(|b| b[0].as_u64()).sum();
        let n = trees.len() as f64;
        lines.push(format!(
            "  per tree: {:.2}s, {:.1} MB sent (setup before the first tree {:.2}s)",
            secs / n,
            sent as f64 / n / 1e6,
            r["setup_seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    lines.push(format!("  model: {}", s.output));
    if !s.peer_output.is_empty() {
        lines.push(format!("  the peer's model: {} (under its node directory)", s.peer_output));
    }
}
