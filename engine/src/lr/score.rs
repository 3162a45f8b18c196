//! The score job: align, partial scores with each party's own model, B → A; A writes the
//! predictions.
use consort_protocols::psi::ecdh::EcdhEvidence;
use std::path::PathBuf;
use std::sync::Arc;

use consort_protocols::mpc::lr;
use consort_protocols::{Channel, ProgressFn, Role};
use serde::Serialize;

use super::align::align;
use super::features::{ColumnChoice, load_features};
use super::metrics::sigmoid;
use super::model::ModelFile;
use super::{LrError, Stages, party_of, write_atomic};
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::psi::PsiProtocol;

/// One party's side of a score job.
#[derive(Clone)]
pub struct ScoreJob {
    pub role: Role,
    pub psi: PsiProtocol,
    pub model: Arc<ModelFile>,
    /// Where A writes the predictions (`KEY..., score`); unused by B.
    pub out: Option<PathBuf>,
    pub psi_progress: Option<ProgressFn>,
    /// The bounds this party's grant puts on the job (peer set size, aligned rows).
    pub limits: crate::psi::JobLimits,
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
    /// The ECDH alignment's key commitments and DLEQ proofs, for the audit log (not in the JSON
    /// report).
    #[serde(skip)]
    pub ecdh_evidence: Option<EcdhEvidence>,
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
    let mut stages = Stages::start();
    let aligned = align(channel, dataset, job.role, job.psi, job.psi_progress.clone(), job.limits).await?;
    let (order, peer_rows) = (aligned.order, aligned.peer_rows);
    stages.end("psi");
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
    stages.end("score");
    Ok(ScoreReport {
        local_rows: dataset.len() as u64,
        peer_rows,
        aligned_rows: order.len() as u64,
        output,
        stages: stages.into_vec(),
        ecdh_evidence: aligned.ecdh_evidence,
    })
}

/// Quotes a CSV field if needed (composite keys are already joined by commas: quote each part).
fn csv_field(key: &str) -> String {
    key.split(',')
        .map(|p| if p.contains('"') || p.contains('\n') { format!("\"{}\"", p.replace('"', "\"\"")) } else { p.into() })
        .collect::<Vec<_>>()
        .join(",")
}
