//! `train` jobs: joint logistic regression (`consort_engine::lr`). The requester is party A (the
//! label holder: it gets the intercept, the holdout AUC/KS and later the predictions), the
//! responder party B.
//!
//! Operator parameters ([`TrainRequest`], the submit's `params`): label column, feature columns
//! and hyper-parameters; the model file is the submit's `out`. On the wire only the
//! hyper-parameters travel ([`LrParams`], validated again by B). B writes its model to
//! `DIR/outputs/JOB.model.json`. With a dealer, both parties open a `deal` job to it
//! ([`super::deal`]) and its channel's transcript joins this job's evidence.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use consort_api::proto::{JobEnd, JobRequest};
use consort_api::vocab::Vocabulary;
use consort_api::{JOB_PROTOCOL_VERSION, JobKind};
use consort_engine::PsiProtocol;
use consort_engine::binning::BinsFile;
use consort_engine::lr::{ColumnChoice, LrError, LrParams, TrainJob, run_train_with_dealer};
use consort_engine::scorecard;
use consort_protocols::mpc::lr::LrProgress;
use consort_protocols::{Metered, Reveal, Role};
use serde::{Deserialize, Serialize};

use super::connect::Answer;
use super::deal::{DealParams, Party};
use super::psi::progress_fn;
use super::{Ask, Failure, Job, JobChannel, JobHandle, Kind, Outcome, Output, RunCtx};
use crate::config;
use crate::state::NodeState;

/// What the requester's operator asks for in a label-holder job (`train`, `secureboost`, `bin`;
/// the submit's `params`): the label column, the feature columns and the kind's parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledRequest<P> {
    /// The label column (0/1).
    pub label: String,
    /// Feature columns (empty: every column but the keys and the label).
    #[serde(default)]
    pub features: Vec<String>,
    pub params: P,
}

/// A `train` job's request.
pub type TrainRequest = LabeledRequest<LrParams>;

/// Types a label-holder job's request, the same way for every such kind (`what` names the kind and
/// `file` what it writes, in errors): the requester's [`LabeledRequest`] and its `--out`, or the
/// responder's parameters and `responder_out` (its file under `outputs/`).
pub(crate) fn plan_labeled<P: serde::de::DeserializeOwned>(
    ask: &Ask,
    what: &str,
    file: &str,
    responder_out: impl FnOnce() -> PathBuf,
) -> Result<(ColumnChoice, P, PathBuf), String> {
    let bad = |e: serde_json::Error| format!("bad {what} parameters: {e}");
    match ask.role {
        Role::Requester => {
            let r: LabeledRequest<P> = serde_json::from_str(&ask.params).map_err(bad)?;
            if r.label.is_empty() {
                return Err(format!("a {what} job needs the label column"));
            }
            let out = ask.out.clone().ok_or_else(|| format!("a {what} job needs the {file} to write (--out)"))?;
            let features = if r.features.is_empty() { None } else { Some(r.features) };
            Ok((ColumnChoice { label: Some(r.label), features }, r.params, out))
        }
        Role::Responder => {
            Ok((ColumnChoice::default(), serde_json::from_str(&ask.params).map_err(bad)?, responder_out()))
        }
    }
}

pub struct Train;

impl Kind for Train {
    fn kind(&self) -> JobKind {
        JobKind::Train
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        let protocol = alignment(ask)?;
        let (columns, params, model_out) =
            plan_labeled::<LrParams>(ask, "train", "model file", || responder_model(&state.dir, &ask.job_id).0)?;
        let mut params = params;
        params.config().map_err(|e| e.to_string())?;
        if let Some(dealer) = &params.dealer {
            check_dealer(state, ask, dealer)?;
        }
        let bins = match params.scorecard {
            Some(_) => Some(plan_scorecard(state, ask, &columns, &mut params)?),
            None => None,
        };
        Ok(Box::new(TrainPlan { protocol, columns, params, model_out, bins }))
    }
}

/// A dealer must be a third node: pinned here, and neither the other party nor this node (checked
/// by certificate, whatever the names) — a party acting as dealer knows the masks U and would get
/// the other's features from X − U.
fn check_dealer(state: &NodeState, ask: &Ask, dealer: &str) -> Result<(), String> {
    let config = state.config();
    let Ok(entry) = config.peer(dealer) else {
        return Err(match ask.role {
            Role::Requester => format!("no pinned dealer node '{dealer}' (pin it with `consort peer add`)"),
            Role::Responder => format!("this node has not pinned the dealer '{dealer}' the job names"),
        });
    };
    let other = config.peer(&ask.peer).map(|p| p.fingerprint.as_str()).unwrap_or_default();
    if entry.fingerprint == other {
        return Err(format!("the dealer '{dealer}' is the other party of the job; a dealer must be a third node"));
    }
    if entry.fingerprint == crate::identity::fingerprint(&state.cert) {
        return Err(format!("the dealer '{dealer}' is this node; a dealer must be a third node"));
    }
    Ok(())
}

/// The PSI protocol that aligns an LR job's rows (ECDH by default), revealed to both: both must
/// know which of their rows take part.
pub(crate) fn alignment(ask: &Ask) -> Result<PsiProtocol, String> {
    match ask.reveal {
        None | Some(Reveal::Both) => Ok(ask.protocol.unwrap_or(PsiProtocol::Ecdh)),
        Some(Reveal::RequesterOnly) => Err("LR jobs align with PSI revealed to both".into()),
    }
}

/// B's model file of train job `job_id` (and its name relative to the node directory).
pub fn responder_model(dir: &Path, job_id: &str) -> (PathBuf, String) {
    let rel = format!("{}/{job_id}.model.json", config::OUTPUTS_DIR);
    (dir.join(&rel), rel)
}

struct TrainPlan {
    protocol: PsiProtocol,
    columns: ColumnChoice,
    params: LrParams,
    model_out: PathBuf,
    /// A scorecard job: this node's bins file of the bin job it names.
    bins: Option<Arc<BinsFile>>,
}

/// A scorecard job's bins file: the requester's `bins_file` (party A's, from the bin job's
/// `--out`), which fills in the bin job, its id and B's features for the wire; the responder's
/// own file of the bin job the requester names (`outputs/JOB.bins.json`), which must carry the
/// same bins id and have been made with this peer on this dataset.
fn plan_scorecard(
    state: &NodeState,
    ask: &Ask,
    columns: &ColumnChoice,
    params: &mut LrParams,
) -> Result<Arc<BinsFile>, String> {
    let card = params.scorecard.clone().expect("a scorecard job");
    let key: Option<&consort_engine::sealed::StorageKey> = Some(&state.storage.key);
    let bins = match ask.role {
        Role::Requester => {
            if columns.features.is_some() {
                return Err("a scorecard takes its features from the bins file's selection; drop --features".into());
            }
            let path = card.bins_file.ok_or("a scorecard job needs party A's bins file (--bins)")?;
            if !path.is_absolute() {
                return Err("the bins file path must be absolute".into());
            }
            let bins = BinsFile::load(&path, key).map_err(|e| e.to_string())?;
            scorecard::prepare_requester(params, &bins, &ask.peer, &ask.dataset).map_err(|e| e.to_string())?;
            bins
        }
        Role::Responder => {
            config::check_name("bin job id", &card.bins_job).map_err(|_| "invalid bin job id".to_string())?;
            let (path, _) = super::bin::responder_bins(&state.dir, &card.bins_job);
            let bins = BinsFile::load(&path, key).map_err(|e| {
                // The operator sees why; the peer only that there is none.
                tracing::warn!(job = %ask.job_id, bins = %path.display(), "cannot load the bins file: {e}");
                format!("no bins file of bin job {} here", card.bins_job)
            })?;
            scorecard::check_responder(&card, &bins, &ask.peer, &ask.dataset).map_err(|e| e.to_string())?;
            bins
        }
    };
    Ok(Arc::new(bins))
}

pub(crate) fn lr_progress(handle: &Arc<JobHandle>) -> consort_protocols::mpc::lr::LrProgressFn {
    let handle = handle.clone();
    Arc::new(move |p: LrProgress| {
        let stage = match p.loss {
            Some(loss) => format!("epoch {}/{} loss {loss:.4}", p.epoch + 1, p.epochs),
            None => format!("epoch {}/{}", p.epoch + 1, p.epochs),
        };
        handle.stage(&stage, p.batch as u64, p.batches as u64);
    })
}

/// What a failing side tells its peer: nothing about its data or files.
pub(crate) fn lr_failure(e: LrError) -> Failure {
    match e {
        LrError::Data(_) => Failure::private(e),
        other => Failure::shared(other),
    }
}

#[tonic::async_trait]
impl Job for TrainPlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        Some((self.protocol, Reveal::Both))
    }

    fn wire_params(&self) -> String {
        serde_json::to_string(&self.params).expect("LR parameters serialize")
    }

    fn dealer(&self) -> Option<&str> {
        self.params.dealer.as_deref()
    }

    fn audited(&self) -> serde_json::Value {
        audited_training(&self.params, &self.columns)
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let dataset = ctx.dataset.expect("train jobs load a dataset");
        let dealer = match &self.params.dealer {
            Some(name) => {
                ctx.handle.stage("connect dealer", 0, 0);
                let d = open_dealer(ctx.state, name, ctx.ask).await.map_err(|e| Failure {
                    peer: format!("the {} could not reach the dealer", ctx.ask.role.name()),
                    local: e,
                })?;
                Some(Metered::new(d))
            }
            None => None,
        };
        let (shown_model, model_out) = match ctx.ask.role {
            Role::Requester => (self.model_out.display().to_string(), self.model_out.clone()),
            Role::Responder => {
                let (path, rel) = responder_model(&ctx.state.dir, &ctx.ask.job_id);
                (rel, path)
            }
        };
        super::will_write(ctx.handle, &model_out).await;
        let job = TrainJob {
            role: ctx.ask.role,
            psi: self.protocol,
            columns: self.columns,
            params: self.params,
            model_out,
            at_rest: ctx.state.storage.at_rest(),
            job_id: ctx.ask.job_id.clone(),
            peer: ctx.ask.peer.clone(),
            psi_progress: Some(progress_fn(ctx.handle)),
            progress: Some(lr_progress(ctx.handle)),
            limits: ctx.limits,
        };
        let result = match &self.bins {
            Some(bins) => scorecard::run_train_card(&*ctx.channel, dealer.as_ref(), &dataset, &job, bins).await,
            None => run_train_with_dealer(&*ctx.channel, dealer.as_ref(), &dataset, &job).await,
        };
        let mut other_channels = Vec::new();
        if let Some(d) = dealer {
            if result.is_ok() {
                super::envelope::end_exchange(d.inner(), Role::Requester, JobEnd::default())
                    .await
                    .map_err(|e| Failure { peer: "the dealer did not end the job".into(), local: e })?;
            } else {
                d.inner().abort("the train job failed").await;
            }
            other_channels.push(("dealer".to_string(), d.stats()));
        }
        let mut report = result.map_err(lr_failure)?;
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
            other_channels,
        })
    }
}

/// Opens this party's `deal` job stream to the dealer node (its own job id, derived from the train
/// job's) and waits until the dealer accepts.
async fn open_dealer(state: &NodeState, dealer: &str, ask: &Ask) -> anyhow::Result<JobChannel> {
    let entry = state.config().peer(dealer).map_err(|_| anyhow!("no pinned dealer node '{dealer}'"))?.clone();
    let party = match ask.role {
        Role::Requester => Party::A,
        Role::Responder => Party::B,
    };
    let params = DealParams { party, peer: ask.peer.clone(), train_job: ask.job_id.clone() };
    let request = JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: super::deal::deal_job_id(&ask.job_id, party),
        kind: JobKind::Deal as i32,
        params: serde_json::to_string(&params)?,
        ..Default::default()
    };
    let (channel, answer, _wire) = super::connect::open(state, &entry, request, None).await?;
    match answer {
        Answer::Accepted(_) => Ok(channel),
        Answer::Refused(reason) => Err(anyhow!("dealer '{dealer}' refused: {reason}")),
    }
}

/// A training job's audited parameters: the wire parameters and, on the requester (the label
/// holder), the label and feature columns it chose.
pub(super) fn audited_training(params: &impl Serialize, columns: &ColumnChoice) -> serde_json::Value {
    let mut v = serde_json::to_value(params).unwrap_or_default();
    if let (Some(label), serde_json::Value::Object(o)) = (&columns.label, &mut v) {
        o.insert("label".into(), label.clone().into());
        o.insert("features".into(), columns.features.clone().into());
    }
    v
}
