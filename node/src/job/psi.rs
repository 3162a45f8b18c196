//! `psi` jobs: a private set intersection; each side that learns it writes its rows of the
//! intersection in the joint order (`consort_engine::psi`).
//!
//! Parameters: the protocol (`ecdh` by default) and the reveal mode (`both` by default) travel in
//! the request's typed fields; `params` is empty. The responder writes `DIR/outputs/JOB-DATASET.csv`,
//! the requester where `--out` says (default the same form); both sealed under the node's storage
//! key unless `[storage] encrypt_outputs = false` (`consort export` gives the plaintext).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use consort_api::JobKind;
use consort_engine::{EngineError, PsiJob, PsiProtocol, run_psi_owned};
use consort_protocols::{Reveal, Role};

use super::{Ask, Failure, Job, Kind, Outcome, Output, RunCtx};
use crate::config;
use crate::state::NodeState;

pub struct Psi;

impl Kind for Psi {
    fn kind(&self) -> JobKind {
        JobKind::Psi
    }

    fn plan(&self, _state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        if !ask.params.is_empty() {
            return Err("psi jobs take no parameters beyond protocol and reveal".into());
        }
        Ok(Box::new(PsiPlan {
            protocol: ask.protocol.unwrap_or(PsiProtocol::Ecdh),
            reveal: ask.reveal.unwrap_or(Reveal::Both),
        }))
    }
}

struct PsiPlan {
    protocol: PsiProtocol,
    reveal: Reveal,
}

/// Where a node writes a job's output when its operator did not choose (and the name the peer
/// is told: relative to the node directory).
pub fn default_output(dir: &Path, job_id: &str, dataset: &str) -> (PathBuf, String) {
    let rel = format!("{}/{job_id}-{dataset}.csv", config::OUTPUTS_DIR);
    (dir.join(&rel), rel)
}

/// What a failing side tells its peer: enough to act on, nothing about its data or files.
fn failure(e: EngineError) -> Failure {
    match e {
        EngineError::Data(_) => Failure::private(e),
        other => Failure::shared(other),
    }
}

pub(crate) fn progress_fn(handle: &Arc<super::JobHandle>) -> consort_protocols::ProgressFn {
    let handle = handle.clone();
    Arc::new(move |p| handle.progress(p))
}

#[tonic::async_trait]
impl Job for PsiPlan {
    fn psi(&self) -> Option<(PsiProtocol, Reveal)> {
        Some((self.protocol, self.reveal))
    }

    fn wire_params(&self) -> String {
        String::new()
    }

    fn audited(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let dataset = ctx.dataset.expect("psi jobs load a dataset");
        let (path, shown) = match (&ctx.ask.out, ctx.ask.role) {
            (Some(p), Role::Requester) => (p.clone(), p.display().to_string()),
            _ => default_output(&ctx.state.dir, &ctx.ask.job_id, &dataset.spec.name),
        };
        super::will_write(ctx.handle, &path).await;
        let psi = PsiJob {
            protocol: self.protocol,
            role: ctx.ask.role,
            reveal: self.reveal,
            output: Some(path),
            at_rest: ctx.state.storage.at_rest(),
            progress: Some(progress_fn(ctx.handle)),
            proofs: crate::audit::proofs_enabled(),
            limits: ctx.limits,
        };
        let report = run_psi_owned(&*ctx.channel, dataset, &psi).await.map_err(failure)?;
        let rows = report.intersection.unwrap_or(0);
        Ok(Outcome {
            output: report.output.map(|path| Output { path, shown, rows }),
            local_rows: report.local_rows,
            peer_rows: report.peer_rows,
            intersection: report.intersection,
            stages: report.stages,
            summary: String::new(),
            ecdh_evidence: report.ecdh_evidence,
            other_channels: Vec::new(),
        })
    }
}
