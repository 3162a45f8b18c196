//! The score job: align, partial scores with each party's own model, B → A; A writes the
//! predictions.
use consort_protocols::psi::ecdh::EcdhEvidence;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use consort_protocols::mpc::lr;
use consort_protocols::{Channel, ProgressFn, Role, cpu};
use serde::Serialize;

use super::align::align;
use super::features::{ColumnChoice, load_features};
use super::metrics::sigmoid;
use super::model::ModelFile;
use super::{LrError, Stages, party_of};
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::psi::PsiProtocol;
use crate::storage::{AtRest, DataWriter};

/// One party's side of a score job.
#[derive(Clone)]
pub struct ScoreJob {
    pub role: Role,
    pub psi: PsiProtocol,
    pub model: Arc<ModelFile>,
    /// Where A writes the predictions (`KEY..., score`); unused by B.
    pub out: Option<PathBuf>,
    /// Whether A's predictions are sealed under its storage key.
    pub at_rest: AtRest,
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
        let scores: Vec<f64> = own.iter().zip(&peer).map(|(a, b)| sigmoid(a + b + w0)).collect();
        let (keys, at_rest, p) = (dataset.spec.keys.join(","), job.at_rest.clone(), path.clone());
        let rows: Vec<String> = order.iter().map(|&row| dataset.key_of(row as usize)).collect();
        cpu::run(move || write_predictions(&p, &keys, &rows, &scores, &at_rest)).await?;
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

/// Writes `KEY..., score` rows as a stream, sealed or plain, appearing only when complete.
pub(crate) fn write_predictions(
    path: &Path,
    keys: &str,
    rows: &[String],
    scores: &[f64],
    at_rest: &AtRest,
) -> Result<(), DataError> {
    let dir = crate::storage::parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let io_err = |e| DataError::io(path, e);
    let mut w = DataWriter::create(path, at_rest).map_err(|e| DataError::io(dir, e))?;
    writeln!(w, "{keys},score").map_err(io_err)?;
    for (key, score) in rows.iter().zip(scores) {
        writeln!(w, "{},{score:.6}", csv_field(key)).map_err(io_err)?;
    }
    w.finish().map_err(io_err)?;
    Ok(())
}

/// The key as CSV fields, quoted where needed by csv-core (composite keys are already joined by
/// commas: each part is a field).
pub(crate) fn csv_field(key: &str) -> String {
    let parts: Vec<&[u8]> = key.split(',').map(str::as_bytes).collect();
    let mut out = Vec::with_capacity(key.len() + 2);
    crate::payload::write_fields(&mut out, &parts);
    String::from_utf8(out).expect("CSV quoting keeps UTF-8")
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn keys_are_written_as_csv_fields_quoted_where_needed() {
        assert_eq!(csv_field("a17"), "a17");
        assert_eq!(csv_field("a,b"), "a,b");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines,x"), "\"two\nlines\",x");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        assert_eq!(csv_field("ünï"), "ünï");
    }
}
