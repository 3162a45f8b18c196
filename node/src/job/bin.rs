//! `bin` jobs: secure binning, WOE/IV and feature selection ([`consort_engine::binning`]; the
//! protocol and what each party learns: [`consort_protocols::mpc::binning`]). The requester is
//! party A (labels; gets every feature's per-bin counts, WOE, IV and the selection), the
//! responder party B (gets only its own bins, written to `DIR/outputs/JOB.bins.json`).
//!
//! A kind of its own with a grant of its own (`--grant PEER:bin`): it reveals per-bin event
//! counts of the responder's features, which neither `train` nor `secureboost` grants allow.
//! Operator parameters ([`BinRequest`]): label, features and [`BinParamsWire`]; on the wire only
//! the parameters travel, which B validates ([`BinParamsWire::config`]: bins, fine bins, bounds,
//! key size) in [`Kind::plan`] before it logs or allocates anything.

use std::path::{Path, PathBuf};

use consort_api::JobKind;
use consort_engine::PsiProtocol;
use consort_engine::binning::{BinJob, BinParamsWire, run_bin};
use consort_engine::lr::ColumnChoice;
use consort_protocols::{Reveal, Role};

use super::psi::progress_fn;
use super::train::{alignment, lr_failure};
use super::{Ask, Failure, Job, Kind, Outcome, Output, RunCtx};
use crate::config;
use crate::state::NodeState;

/// What the requester's operator asks for in a `bin` job (the submit's `params`).
pub type BinRequest = super::train::LabeledRequest<BinParamsWire>;

/// B's bins file of bin job `job_id` (and its name relative to the node directory).
pub fn responder_bins(dir: &Path, job_id: &str) -> (PathBuf, String) {
    let rel = format!("{}/{job_id}.bins.json", config::OUTPUTS_DIR);
    (dir.join(&rel), rel)
}

pub struct Bin;

impl Kind for Bin {
    fn kind(&self) -> JobKind {
        JobKind::Bin
    }

    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        let protocol = alignment(ask)?;
        let (columns, params, out) = super::train::plan_labeled::<BinParamsWire>(ask, "bin", "bins file", || {
            responder_bins(&state.dir, &ask.job_id).0
        })?;
        // Every bound (bins, fine bins, min-iv, max-corr, key size) before anything is logged or
        // allocated.
        params.config().map_err(|e| e.to_string())?;
        Ok(Box::new(BinPlan { protocol, columns, params, out }))
    }
}

struct BinPlan {
    protocol: PsiProtocol,
    columns: ColumnChoice,
    params: BinParamsWire,
    out: PathBuf,
}

#[tonic::async_trait]
impl Job for BinPlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        Some((self.protocol, Reveal::Both))
    }

    fn wire_params(&self) -> String {
        serde_json::to_string(&self.params).expect("bin parameters serialize")
    }

    fn audited(&self) -> serde_json::Value {
        super::train::audited_training(&self.params, &self.columns)
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let dataset = ctx.dataset.expect("bin jobs load a dataset");
        let (shown, out) = match ctx.ask.role {
            Role::Requester => (self.out.display().to_string(), self.out.clone()),
            Role::Responder => {
                let (path, rel) = responder_bins(&ctx.state.dir, &ctx.ask.job_id);
                (rel, path)
            }
        };
        super::will_write(ctx.handle, &out).await;
        ctx.handle.stage(&format!("bin ({})", self.params.method.name()), 0, 0);
        let job = BinJob {
            role: ctx.ask.role,
            psi: self.protocol,
            columns: self.columns,
            params: self.params,
            out,
            at_rest: ctx.state.storage.at_rest(),
            job_id: ctx.ask.job_id.clone(),
            peer: ctx.ask.peer.clone(),
            psi_progress: Some(progress_fn(ctx.handle)),
            limits: ctx.limits,
        };
        let mut report = run_bin(&*ctx.channel, &dataset, &job).await.map_err(lr_failure)?;
        let summary = serde_json::to_string(&report).unwrap_or_default();
        let ecdh_evidence = report.ecdh_evidence.take();
        Ok(Outcome {
            output: Some(Output { path: report.output.clone(), shown, rows: report.aligned_rows }),
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
