//! Scoring with a scorecard: align, each party's points of its own features per row, B's partial
//! points and partial log-odds → A; A writes `KEY..., points, probability` (points: the integer
//! total of the card; probability: σ of the model's unrounded log-odds).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use consort_protocols::mpc::{MpcError, lr};
use consort_protocols::{Channel, ProgressFn, Role, cpu};

use super::file::ScorecardFile;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::lr::align::align;
use crate::lr::{ColumnChoice, LrError, Missing, ScoreReport, Stages, load_features_as, party_of};
use crate::psi::{JobLimits, PsiProtocol};
use crate::storage::{AtRest, DataWriter};

/// B's partial points per row beyond this in magnitude are a protocol violation.
const MAX_PEER_POINTS: f64 = (1u64 << 52) as f64;

/// One party's side of a scorecard score job.
#[derive(Clone)]
pub struct CardScoreJob {
    pub role: Role,
    pub psi: PsiProtocol,
    pub card: Arc<ScorecardFile>,
    /// Where A writes `KEY..., points, probability`; unused by B.
    pub out: Option<PathBuf>,
    pub at_rest: AtRest,
    pub psi_progress: Option<ProgressFn>,
    pub limits: JobLimits,
}

/// Runs this party's side: align, bins and points of its own features (missing values: bin 0),
/// B → A partial points and partial log-odds; A writes the scored rows.
pub async fn run_score_card<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    job: &CardScoreJob,
) -> Result<ScoreReport, LrError> {
    let party = party_of(job.role);
    let card = &job.card;
    if card.party != format!("{party:?}") {
        return Err(DataError::Invalid(format!(
            "this scorecard belongs to party {} but this node is party {party:?} in the job",
            card.party
        ))
        .into());
    }
    let mut stages = Stages::start();
    let aligned = align(channel, dataset, job.role, job.psi, job.psi_progress.clone(), job.limits).await?;
    let order = aligned.order;
    stages.end("psi");
    let names: Vec<String> = card.features.iter().map(|f| f.name.clone()).collect();
    let table =
        load_features_as(dataset, &order, &ColumnChoice { label: None, features: Some(names) }, Missing::Keep).await?;
    let n = order.len();
    let (own, own_z) = {
        let (c, values) = (card.clone(), table.values);
        cpu::run(move || {
            let bins = c.bins_of(&values);
            (c.partial_points(&bins, n), c.partial_logits(&bins, n))
        })
        .await
    };
    let own_f: Vec<f64> = own.iter().map(|&p| p as f64).collect();
    let peer = lr::exchange_partial_scores(channel, party, &own_f).await?;
    if peer.as_ref().is_some_and(|peer| peer.iter().any(|p| p.fract() != 0.0 || p.abs() > MAX_PEER_POINTS)) {
        return Err(MpcError::Protocol("the peer sent partial points that are not integers in range".into()).into());
    }
    // The unrounded partial log-odds too (as LR scoring): the probability is the model's, not
    // the rounded points' (with many features of small effect every bin can round to 0 points).
    let peer_z = lr::exchange_partial_scores(channel, party, &own_z).await?;
    let mut output = None;
    if let (Some(peer), Some(peer_z)) = (peer, peer_z) {
        let path = job.out.clone().ok_or_else(|| DataError::Invalid("party A needs an output path".into()))?;
        let base = card.base_points.unwrap_or(0);
        let points: Vec<i64> = own.iter().zip(&peer).map(|(&a, &b)| base + a + b as i64).collect();
        let w0 = card.intercept.unwrap_or(0.0);
        let prob: Vec<f64> = own_z.iter().zip(&peer_z).map(|(a, b)| crate::lr::sigmoid(a + b + w0)).collect();
        let (keys, at_rest, p) = (dataset.spec.keys.join(","), job.at_rest.clone(), path.clone());
        let rows: Vec<String> = order.iter().map(|&row| dataset.key_of(row as usize)).collect();
        cpu::run(move || write_points(&p, &keys, &rows, &points, &prob, &at_rest)).await?;
        output = Some(path);
    }
    stages.end("score");
    Ok(ScoreReport {
        local_rows: dataset.len() as u64,
        peer_rows: aligned.peer_rows,
        aligned_rows: n as u64,
        output,
        stages: stages.into_vec(),
        ecdh_evidence: aligned.ecdh_evidence,
    })
}

/// Writes `KEY..., points, probability` rows as a stream, sealed or plain, appearing only when
/// complete.
fn write_points(
    path: &Path,
    keys: &str,
    rows: &[String],
    points: &[i64],
    prob: &[f64],
    at_rest: &AtRest,
) -> Result<(), DataError> {
    let dir = crate::storage::parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let io_err = |e| DataError::io(path, e);
    let mut w = DataWriter::create(path, at_rest).map_err(|e| DataError::io(dir, e))?;
    writeln!(w, "{keys},points,probability").map_err(io_err)?;
    for ((key, &p), q) in rows.iter().zip(points).zip(prob) {
        writeln!(w, "{},{p},{q:.6}", crate::lr::score::csv_field(key)).map_err(io_err)?;
    }
    w.finish().map_err(io_err)?;
    Ok(())
}
