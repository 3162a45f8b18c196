//! `secureboost` and `secureboost-score` jobs: joint gradient-boosted trees
//! ([`consort_engine::secureboost`]), plumbed like the LR `train` and `score` kinds. The requester
//! is party A (labels, leaf weights, holdout AUC/KS, predictions), the responder party B.
//!
//! They are job kinds of their own, with grants of their own: a grant for LR `train`/`score` does
//! not allow SecureBoost, nor the reverse — the two leak different things (docs/security.md).
//!
//! - **Train.** Operator parameters ([`SbTrainRequest`]): label column, feature columns and
//!   hyper-parameters; A's model file is the submit's `out`. On the wire only the hyper-parameters
//!   travel ([`SbParamsWire`]): B validates them (trees, depth, bins, rates, holdout) before it
//!   logs or allocates anything, and writes its half to `DIR/outputs/JOB.sb-model.json`.
//! - **Score.** Operator parameters ([`SbScoreRequest`]): A's model file. On the wire
//!   ([`SbScoreParams`]): the train job's id and the model id; B scores only with its half of that
//!   train job, trained with the same peer on the same dataset, and only if the model ids match.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use consort_api::JobKind;
use consort_engine::PsiProtocol;
use consort_engine::lr::ColumnChoice;
use consort_engine::secureboost::{SbModelFile, SbParamsWire, SbScoreJob, SbTrainJob, run_sb_score, run_sb_train};
use consort_protocols::mpc::secureboost::{SbProgress, SbProgressFn};
use consort_protocols::{Reveal, Role};
use serde::{Deserialize, Serialize};

use super::psi::progress_fn;
use super::train::{alignment, lr_failure};
use super::{Ask, Failure, Job, JobHandle, Kind, Outcome, Output, RunCtx};
use crate::config;
use crate::state::NodeState;

/// What the requester's operator asks for in a `secureboost` job (the submit's `params`).
pub type SbTrainRequest = super::train::LabeledRequest<SbParamsWire>;

/// What the requester's operator asks for in a `secureboost-score` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbScoreRequest {
    /// Party A's SecureBoost model file (absolute path).
    pub model: PathBuf,
}

/// A `secureboost-score` job's parameters on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbScoreParams {
    /// The train job whose model halves both sides use.
    pub model_job: String,
    /// The model id both halves carry.
    pub model_id: String,
}

/// B's SecureBoost model file of train job `job_id` (and its name relative to the node directory).
pub fn responder_model(dir: &Path, job_id: &str) -> (PathBuf, String) {
    let rel = format!("{}/{job_id}.sb-model.json", config::OUTPUTS_DIR);
    (dir.join(&rel), rel)
}

pub struct SbTrain;

impl Kind for SbTrain {
    fn kind(&self) -> JobKind {
        JobKind::Secureboost
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        let protocol = alignment(ask)?;
        let (columns, params, model_out) =
            super::train::plan_labeled::<SbParamsWire>(ask, "secureboost", "model file", || {
                responder_model(&state.dir, &ask.job_id).0
            })?;
        // Every bound (trees, depth, bins, rates, holdout) before anything is logged or allocated.
        params.config().map_err(|e| e.to_string())?;
        Ok(Box::new(SbTrainPlan { protocol, columns, params, model_out }))
    }
}

struct SbTrainPlan {
    protocol: PsiProtocol,
    columns: ColumnChoice,
    params: SbParamsWire,
    model_out: PathBuf,
}

#[tonic::async_trait]
impl Job for SbTrainPlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        Some((self.protocol, Reveal::Both))
    }

    fn wire_params(&self) -> String {
        serde_json::to_string(&self.params).expect("SecureBoost parameters serialize")
    }

    fn split_nodes(&self) -> Option<u64> {
        // `plan` bounded both (trees ≤ MAX_TREES, depth ≤ MAX_DEPTH = 16): no overflow.
        Some(u64::from(self.params.trees) * ((1u64 << self.params.max_depth.min(63)) - 1))
    }

    fn audited(&self) -> serde_json::Value {
        super::train::audited_training(&self.params, &self.columns)
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let dataset = ctx.dataset.expect("secureboost jobs load a dataset");
        let (shown_model, model_out) = match ctx.ask.role {
            Role::Requester => (self.model_out.display().to_string(), self.model_out.clone()),
            Role::Responder => {
                let (path, rel) = responder_model(&ctx.state.dir, &ctx.ask.job_id);
                (rel, path)
            }
        };
        super::will_write(ctx.handle, &model_out).await;
        ctx.handle.stage(&format!("train {} trees", self.params.trees), 0, 0);
        let job = SbTrainJob {
            role: ctx.ask.role,
            psi: self.protocol,
            columns: self.columns,
            params: self.params,
            model_out,
            at_rest: ctx.state.storage.at_rest(),
            job_id: ctx.ask.job_id.clone(),
            peer: ctx.ask.peer.clone(),
            psi_progress: Some(progress_fn(ctx.handle)),
            progress: Some(sb_progress(ctx.handle)),
            limits: ctx.limits,
        };
        let mut report = run_sb_train(&*ctx.channel, &dataset, &job).await.map_err(lr_failure)?;
        let summary = serde_json::to_string(&report).unwrap_or_default();
        let ecdh_evidence = report.ecdh_evidence.take();
        Ok(Outcome {
            output: Some(Output { path: report.model.clone(), shown: shown_model, rows: report.aligned_rows }),
            local_rows: report.local_rows,
            peer_rows: report.peer_rows,
            intersection: Some(report.aligned_rows),
            stages: report.stages,
            summary,
            ecdh_evidence,
            other_channels: Vec::new(),
        })
    }
}

/// The job's stage while it trains: `secureboost setup`, then `tree N/T` (with A's holdout loss
/// when there is a holdout) and trees done of trees asked for as the progress bar's position.
pub(crate) fn sb_progress(handle: &Arc<JobHandle>) -> SbProgressFn {
    let handle = handle.clone();
    Arc::new(move |p: SbProgress| {
        let stage = match (p.setup, p.loss) {
            (true, _) => "secureboost setup".to_string(),
            (false, Some(loss)) => format!("tree {}/{} holdout loss {loss:.4}", p.trees_done, p.trees),
            (false, None) => format!("tree {}/{}", p.trees_done, p.trees),
        };
        handle.stage(&stage, p.trees_done as u64, p.trees as u64);
    })
}

pub struct SbScore;

impl Kind for SbScore {
    fn kind(&self) -> JobKind {
        JobKind::SecureboostScore
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        let protocol = alignment(ask)?;
        let bad = |e: serde_json::Error| format!("bad secureboost-score parameters: {e}");
        match ask.role {
            Role::Requester => {
                let r: SbScoreRequest = serde_json::from_str(&ask.params).map_err(bad)?;
                if !r.model.is_absolute() {
                    return Err("the model path must be absolute".into());
                }
                let model = SbModelFile::load(&r.model, Some(&state.storage.key)).map_err(|e| e.to_string())?;
                if model.party != "A" {
                    return Err("score with party A's model (the one with the leaf weights)".into());
                }
                if model.peer != ask.peer {
                    return Err(format!("the model was trained with peer '{}', not '{}'", model.peer, ask.peer));
                }
                if model.model_id.is_empty() {
                    return Err("the model file has no model id (train it again)".into());
                }
                let out =
                    ask.out.clone().ok_or("a secureboost-score job needs the predictions file to write (--out)")?;
                Ok(Box::new(SbScorePlan {
                    protocol,
                    model: Arc::new(model),
                    out: Some(out),
                    at_rest: state.storage.at_rest(),
                }))
            }
            Role::Responder => {
                let p: SbScoreParams = serde_json::from_str(&ask.params).map_err(bad)?;
                config::check_name("model job id", &p.model_job).map_err(|_| "invalid model job id".to_string())?;
                let (path, _) = responder_model(&state.dir, &p.model_job);
                let model = SbModelFile::load(&path, Some(&state.storage.key)).map_err(|e| {
                    tracing::warn!(job = %ask.job_id, model = %path.display(), "cannot load the model: {e}");
                    format!("no SecureBoost model of train job {} here", p.model_job)
                })?;
                if model.party != "B" {
                    return Err(format!("no SecureBoost model of train job {} here", p.model_job));
                }
                if model.peer != ask.peer {
                    return Err(format!("the model of train job {} was not trained with '{}'", p.model_job, ask.peer));
                }
                // A model scores only the dataset it was trained on (other data would hand the
                // requester this node's split directions for rows no train job agreed to).
                if model.dataset != ask.dataset {
                    return Err(format!(
                        "the model of train job {} was trained on dataset '{}', not '{}'",
                        p.model_job, model.dataset, ask.dataset
                    ));
                }
                if model.model_id.is_empty() || model.model_id != p.model_id {
                    return Err(format!(
                        "the requester's model is not the other half of this node's model of train job {}",
                        p.model_job
                    ));
                }
                Ok(Box::new(SbScorePlan {
                    protocol,
                    model: Arc::new(model),
                    out: None,
                    at_rest: state.storage.at_rest(),
                }))
            }
        }
    }
}

struct SbScorePlan {
    protocol: PsiProtocol,
    model: Arc<SbModelFile>,
    /// A's predictions file.
    out: Option<PathBuf>,
    at_rest: consort_engine::storage::AtRest,
}

#[tonic::async_trait]
impl Job for SbScorePlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        Some((self.protocol, Reveal::Both))
    }

    fn wire_params(&self) -> String {
        let p = SbScoreParams { model_job: self.model.job_id.clone(), model_id: self.model.model_id.clone() };
        serde_json::to_string(&p).expect("parameters serialize")
    }

    fn audited(&self) -> serde_json::Value {
        serde_json::json!({ "model_job": self.model.job_id, "model_id": self.model.model_id })
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let dataset = ctx.dataset.expect("secureboost-score jobs load a dataset");
        if let Some(out) = &self.out {
            super::will_write(ctx.handle, out).await;
        }
        let job = SbScoreJob {
            role: ctx.ask.role,
            psi: self.protocol,
            model: self.model,
            out: self.out,
            at_rest: self.at_rest,
            psi_progress: Some(progress_fn(ctx.handle)),
            limits: ctx.limits,
        };
        let mut report = run_sb_score(&*ctx.channel, &dataset, &job).await.map_err(lr_failure)?;
        let summary = serde_json::to_string(&report).unwrap_or_default();
        let ecdh_evidence = report.ecdh_evidence.take();
        Ok(Outcome::scored(
            report.output,
            [report.local_rows, report.peer_rows, report.aligned_rows],
            report.stages,
            summary,
            ecdh_evidence,
        ))
    }
}
