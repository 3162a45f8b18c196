//! `intersect_files`: both parties of a private join in this process, over the SDK's in-memory
//! channel pair — the protocol, the dataset loading and checks and the outputs are the node's
//! (`consort_sdk::join_dataset`), only the transport differs. For notebooks and tests.

use std::path::PathBuf;

use consort_api::vocab::Vocabulary;
use consort_engine::psi::JobLimits;
use consort_engine::storage::AtRest;
use consort_sdk::{DatasetSpec, Normalization, PsiJob, PsiProtocol, PsiReport, Reveal, Role};
use pyo3::prelude::*;

use crate::block_on;
use crate::errors::Failure;

/// Frames buffered per direction on the in-memory channel (the node's flow-control window).
const CHANNEL_FRAMES: usize = 8;

/// Runs a PSI between the CSV files `left` (requester) and `right` (responder), both keyed on
/// `keys`, and writes each side's rows of the intersection, aligned, to `left_out` and
/// `right_out` (plain CSV). Returns both sides' reports (JSON).
#[pyfunction]
#[pyo3(signature = (left, right, keys, protocol, trim, case_fold, dedup, left_out, right_out))]
#[allow(clippy::too_many_arguments)]
pub fn intersect_files(
    py: Python<'_>,
    left: PathBuf,
    right: PathBuf,
    keys: Vec<String>,
    protocol: String,
    trim: bool,
    case_fold: bool,
    dedup: bool,
    left_out: PathBuf,
    right_out: PathBuf,
) -> PyResult<String> {
    let protocol = PsiProtocol::parse_name(&protocol).map_err(|e| Failure::Invalid(e.to_string()).into_py_err(py))?;
    let spec = |name: &str, file: PathBuf| DatasetSpec {
        name: name.into(),
        file,
        keys: keys.clone(),
        normalize: Normalization { trim, case_fold },
        dedup,
    };
    let job = |role: Role, output: PathBuf| PsiJob {
        protocol,
        role,
        reveal: Reveal::Both,
        output: Some(output),
        at_rest: AtRest::Plain,
        progress: None,
        proofs: false,
        limits: JobLimits::default(),
        payload: Default::default(),
        join: Default::default(),
        columns: Default::default(),
    };
    let sides =
        [(spec("left", left), job(Role::Requester, left_out)), (spec("right", right), job(Role::Responder, right_out))];
    block_on(
        py,
        async move {
            let [(ls, lj), (rs, rj)] = sides;
            let (a, b) = consort_sdk::memory_pair(CHANNEL_FRAMES);
            // Each side drops its end when it stops, so a side that fails (a bad file) closes the
            // channel and the other stops waiting for it.
            let left = async move { consort_sdk::join_dataset(&a, &ls, &lj).await };
            let right = async move { consort_sdk::join_dataset(&b, &rs, &rj).await };
            let (l, r) = tokio::join!(left, right);
            let (l, r) = both(l, r)?;
            Ok(serde_json::json!({"left": report(&l), "right": report(&r)}).to_string())
        },
        |_| Ok(()),
    )
}

/// Both sides' results. When one side fails the other sees its channel close, so the failure
/// worth raising is a data error (bad file, duplicate keys: a `DatasetError`) if either has one.
fn both(
    l: Result<PsiReport, consort_sdk::Error>,
    r: Result<PsiReport, consort_sdk::Error>,
) -> Result<(PsiReport, PsiReport), Failure> {
    let is_data =
        |e: &consort_sdk::Error| matches!(e, consort_sdk::Error::Engine(consort_engine::EngineError::Data(_)));
    match (l, r) {
        (Ok(l), Ok(r)) => Ok((l, r)),
        (Err(e), _) | (_, Err(e)) if is_data(&e) => Err(Failure::Dataset(e.to_string())),
        (Err(e), _) | (_, Err(e)) => Err(Failure::Other(e.to_string())),
    }
}

fn report(r: &PsiReport) -> serde_json::Value {
    serde_json::json!({
        "local_rows": r.local_rows,
        "peer_rows": r.peer_rows,
        "intersection": r.intersection,
        "stages": r.stages.iter().map(|(n, s)| serde_json::json!({"name": n, "seconds": s})).collect::<Vec<_>>(),
    })
}
