//! `score` jobs: new aligned rows scored with a jointly trained model; the requester (party A) gets
//! the predictions, the responder (party B) contributes its partial scores with its own model of
//! the same train job.
//!
//! Operator parameters ([`ScoreRequest`]): A's model file; the predictions go to the submit's
//! `out`. On the wire: the train job's id ([`ScoreParams`]); B scores only with a model it trained
//! with the same peer.

use std::path::PathBuf;
use std::sync::Arc;

use consort_api::JobKind;
use consort_engine::PsiProtocol;
use consort_engine::lr::{ModelFile, ScoreJob, run_score};
use consort_engine::scorecard::{self, CardScoreJob, ScorecardFile, run_score_card};
use consort_engine::storage::AtRest;
use consort_protocols::{Reveal, Role};
use serde::{Deserialize, Serialize};

use super::psi::progress_fn;
use super::train::{alignment, lr_failure, responder_model};
use super::{Ask, Failure, Job, Kind, Outcome, RunCtx};
use crate::config;
use crate::state::NodeState;

/// What the requester's operator asks for (the submit's `params`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// Party A's model file from `consort train` (absolute path).
    pub model: PathBuf,
}

/// A score job's parameters on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreParams {
    /// The train job whose models both sides use.
    model_job: String,
    /// Its models are scorecards ([`consort_engine::scorecard`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    scorecard: bool,
}

pub struct Score;

impl Kind for Score {
    fn kind(&self) -> JobKind {
        JobKind::Score
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        let protocol = alignment(ask)?;
        match ask.role {
            Role::Requester => {
                let r: ScoreRequest =
                    serde_json::from_str(&ask.params).map_err(|e| format!("bad score parameters: {e}"))?;
                if !r.model.is_absolute() {
                    return Err("the model path must be absolute".into());
                }
                if scorecard::is_scorecard(&r.model, Some(&state.storage.key)).unwrap_or(false) {
                    return plan_card_requester(state, ask, &r.model, protocol);
                }
                let model = ModelFile::load(&r.model, Some(&state.storage.key)).map_err(|e| e.to_string())?;
                if model.party != "A" {
                    return Err("score with party A's model (the one with the intercept)".into());
                }
                if model.peer != ask.peer {
                    return Err(format!("the model was trained with peer '{}', not '{}'", model.peer, ask.peer));
                }
                let out = ask.out.clone().ok_or("a score job needs the predictions file to write (--out)")?;
                Ok(Box::new(ScorePlan {
                    protocol,
                    model: Arc::new(model),
                    out: Some(out),
                    at_rest: state.storage.at_rest(),
                }))
            }
            Role::Responder => {
                let p: ScoreParams =
                    serde_json::from_str(&ask.params).map_err(|e| format!("bad score parameters: {e}"))?;
                config::check_name("model job id", &p.model_job).map_err(|_| "invalid model job id".to_string())?;
                let (path, _) = responder_model(&state.dir, &p.model_job);
                if p.scorecard {
                    return plan_card_responder(state, ask, &p.model_job, &path, protocol);
                }
                let model = ModelFile::load(&path, Some(&state.storage.key)).map_err(|e| {
                    // The operator sees why (e.g. a damaged sealed file); the peer only that there is none.
                    tracing::warn!(job = %ask.job_id, model = %path.display(), "cannot load the model: {e}");
                    format!("no model of train job {} here", p.model_job)
                })?;
                if model.peer != ask.peer {
                    return Err(format!("the model of train job {} was not trained with '{}'", p.model_job, ask.peer));
                }
                // A model scores only the dataset it was trained on (other data would hand the
                // requester this node's partial scores of rows no train job agreed to).
                if model.dataset != ask.dataset {
                    return Err(format!(
                        "the model of train job {} was trained on dataset '{}', not '{}'",
                        p.model_job, model.dataset, ask.dataset
                    ));
                }
                Ok(Box::new(ScorePlan {
                    protocol,
                    model: Arc::new(model),
                    out: None,
                    at_rest: state.storage.at_rest(),
                }))
            }
        }
    }
}

struct ScorePlan {
    protocol: PsiProtocol,
    model: Arc<ModelFile>,
    /// A's predictions file.
    out: Option<PathBuf>,
    at_rest: AtRest,
}

#[tonic::async_trait]
impl Job for ScorePlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        Some((self.protocol, Reveal::Both))
    }

    fn wire_params(&self) -> String {
        serde_json::to_string(&ScoreParams { model_job: self.model.job_id.clone(), scorecard: false })
            .expect("parameters serialize")
    }

    fn audited(&self) -> serde_json::Value {
        serde_json::json!({ "model_job": self.model.job_id })
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let dataset = ctx.dataset.expect("score jobs load a dataset");
        if let Some(out) = &self.out {
            super::will_write(ctx.handle, out).await;
        }
        let job = ScoreJob {
            role: ctx.ask.role,
            psi: self.protocol,
            model: self.model,
            out: self.out,
            at_rest: self.at_rest,
            psi_progress: Some(progress_fn(ctx.handle)),
            limits: ctx.limits,
        };
        run_score(&*ctx.channel, &dataset, &job).await.map(scored).map_err(lr_failure)
    }
}

/// A score job with a scorecard (`consort score --model CARD`; the file says it is one): A's card
/// (party A's, trained with this peer), the output `KEY..., points, probability`.
fn plan_card_requester(
    state: &NodeState,
    ask: &Ask,
    path: &std::path::Path,
    protocol: PsiProtocol,
) -> Result<Box<dyn Job>, String> {
    let card = ScorecardFile::load(path, Some(&state.storage.key)).map_err(|e| e.to_string())?;
    if card.party != "A" {
        return Err("score with party A's scorecard (the one with the base points)".into());
    }
    if card.peer != ask.peer {
        return Err(format!("the scorecard was trained with peer '{}', not '{}'", card.peer, ask.peer));
    }
    let out = ask.out.clone().ok_or("a score job needs the predictions file to write (--out)")?;
    Ok(Box::new(CardScorePlan { protocol, card: Arc::new(card), out: Some(out), at_rest: state.storage.at_rest() }))
}

/// The responder's scorecard of train job `model_job`: trained with this peer on this dataset.
fn plan_card_responder(
    state: &NodeState,
    ask: &Ask,
    model_job: &str,
    path: &std::path::Path,
    protocol: PsiProtocol,
) -> Result<Box<dyn Job>, String> {
    let card = ScorecardFile::load(path, Some(&state.storage.key)).map_err(|e| {
        tracing::warn!(job = %ask.job_id, model = %path.display(), "cannot load the scorecard: {e}");
        format!("no scorecard of train job {model_job} here")
    })?;
    if card.peer != ask.peer {
        return Err(format!("the scorecard of train job {model_job} was not trained with '{}'", ask.peer));
    }
    if card.dataset != ask.dataset {
        return Err(format!(
            "the scorecard of train job {model_job} was trained on dataset '{}', not '{}'",
            card.dataset, ask.dataset
        ));
    }
    Ok(Box::new(CardScorePlan { protocol, card: Arc::new(card), out: None, at_rest: state.storage.at_rest() }))
}

struct CardScorePlan {
    protocol: PsiProtocol,
    card: Arc<ScorecardFile>,
    out: Option<PathBuf>,
    at_rest: AtRest,
}

#[tonic::async_trait]
impl Job for CardScorePlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        Some((self.protocol, Reveal::Both))
    }

    fn wire_params(&self) -> String {
        serde_json::to_string(&ScoreParams { model_job: self.card.job_id.clone(), scorecard: true })
            .expect("parameters serialize")
    }

    fn audited(&self) -> serde_json::Value {
        serde_json::json!({ "model_job": self.card.job_id, "scorecard": true })
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let dataset = ctx.dataset.expect("score jobs load a dataset");
        if let Some(out) = &self.out {
            super::will_write(ctx.handle, out).await;
        }
        let job = CardScoreJob {
            role: ctx.ask.role,
            psi: self.protocol,
            card: self.card,
            out: self.out,
            at_rest: self.at_rest,
            psi_progress: Some(progress_fn(ctx.handle)),
            limits: ctx.limits,
        };
        run_score_card(&*ctx.channel, &dataset, &job).await.map(scored).map_err(lr_failure)
    }
}

/// A score job's outcome from its report (LR and scorecard scoring report alike).
fn scored(mut report: consort_engine::lr::ScoreReport) -> Outcome {
    let summary = serde_json::to_string(&report).unwrap_or_default();
    let ecdh_evidence = report.ecdh_evidence.take();
    Outcome::scored(
        report.output,
        [report.local_rows, report.peer_rows, report.aligned_rows],
        report.stages,
        summary,
        ecdh_evidence,
    )
}
