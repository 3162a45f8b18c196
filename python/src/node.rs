//! `NativeNode`: a client of a running node's control socket (`DIR/control.sock`), plus the node
//! directory operations the CLI runs for its operator (dataset registration, reading a sealed
//! output with the node's storage key). Statuses cross to Python as the CLI's `--json` objects.

// The methods mirror the Python API's keyword arguments one for one.
#![allow(clippy::too_many_arguments)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use consort_api::proto::{JobStatus, SubmitRequest};
use consort_api::vocab::Vocabulary;
use consort_api::{JobKind, NodeClient};
use consort_engine::lr::LrParams;
use consort_engine::{DatasetSpec, Normalization, PsiProtocol};
use consort_node::cli::lr::{status_json, submit_request};
use consort_node::config::NodeConfig;
use consort_node::job::score::ScoreRequest;
use consort_node::job::train::TrainRequest;
use consort_node::{at_rest, setup};
use consort_protocols::Reveal;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::block_on;
use crate::errors::{Failure, one_line};

/// A connection to the node running in a directory.
#[pyclass(module = "consort._native", frozen)]
pub struct NativeNode {
    dir: PathBuf,
    client: NodeClient,
}

fn vocab<T: Vocabulary>(word: &str) -> Result<T, Failure> {
    T::parse_name(word).map_err(|e| Failure::Invalid(e.to_string()))
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| Failure::Invalid(format!("{}: {e}", path.display())))
}

fn out_path(out: Option<PathBuf>) -> Result<String, Failure> {
    Ok(match out {
        Some(p) => absolute(&p)?.display().to_string(),
        None => String::new(),
    })
}

fn to_json(status: &JobStatus) -> String {
    status_json(status).to_string()
}

#[pymethods]
impl NativeNode {
    /// Connects to the node running in `dir` (raises `NodeUnavailable` if none does).
    #[new]
    fn new(py: Python<'_>, dir: PathBuf) -> PyResult<Self> {
        let dir = absolute(&dir).map_err(|f| f.into_py_err(py))?;
        let at = dir.clone();
        let client = block_on(py, async move { Ok(NodeClient::connect(&at).await?) }, |_| Ok(()))?;
        Ok(NativeNode { dir, client })
    }

    #[getter]
    fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The node's name, peer address, pinned peers and dataset names (JSON).
    fn info(&self, py: Python<'_>) -> PyResult<String> {
        let client = self.client.clone();
        let info = block_on(py, async move { Ok(client.info().await?) }, |_| Ok(()))?;
        Ok(serde_json::json!({
            "name": info.name, "listen": info.listen, "peers": info.peers, "datasets": info.datasets,
        })
        .to_string())
    }

    /// Registered datasets with their keys, normalization and grants, from config.toml (JSON).
    fn datasets(&self, py: Python<'_>) -> PyResult<String> {
        let config = NodeConfig::load(&self.dir).map_err(|e| Failure::other(e).into_py_err(py))?;
        let list: Vec<serde_json::Value> = config
            .datasets
            .iter()
            .map(|d| {
                serde_json::json!({
                    "name": d.spec.name,
                    "file": d.spec.file,
                    "keys": d.spec.keys,
                    "trim": d.spec.normalize.trim,
                    "case_fold": d.spec.normalize.case_fold,
                    "dedup": d.spec.dedup,
                    "grants": d.grants.iter().map(|g| g.describe()).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(serde_json::Value::from(list).to_string())
    }

    /// Registers a CSV file as a dataset exactly as `consort dataset add` does
    /// (`setup::dataset_add`, then the running node re-reads its config). Returns the columns,
    /// the rows and `duplicates_dropped: null` (duplicates are found by jobs) (JSON).
    #[pyo3(signature = (name, file, keys, grants, dedup, case_fold, trim, replace, check))]
    fn add_dataset(
        &self,
        py: Python<'_>,
        name: String,
        file: PathBuf,
        keys: Vec<String>,
        grants: Vec<String>,
        dedup: bool,
        case_fold: bool,
        trim: bool,
        replace: bool,
        check: bool,
    ) -> PyResult<String> {
        let dir = self.dir.clone();
        let registered = block_on(
            py,
            async move {
                let grants = grants
                    .iter()
                    .map(|g| setup::parse_grant(g))
                    .collect::<anyhow::Result<Vec<_>>>()
                    .map_err(|e| Failure::Invalid(one_line(&e)))?;
                let spec = DatasetSpec { name, file, keys, normalize: Normalization { trim, case_fold }, dedup };
                // Reads and checks the whole file: off the runtime's threads.
                let at = dir.clone();
                let check = tokio::task::spawn_blocking(move || setup::dataset_add(&at, spec, grants, replace, check))
                    .await
                    .map_err(|e| Failure::Other(format!("internal error: {e}")))?
                    .map_err(|e| registration_failure(&e))?;
                setup::notify_node(&dir).await.map_err(Failure::other)?;
                Ok(serde_json::json!({
                    "columns": check.columns, "rows": check.rows, "duplicates_dropped": check.duplicates_dropped,
                })
                .to_string())
            },
            |_| Ok(()),
        )?;
        Ok(registered)
    }

    /// Submits a PSI job; returns its id.
    #[pyo3(signature = (peer, dataset, peer_dataset, protocol, reveal, out=None))]
    fn submit_psi(
        &self,
        py: Python<'_>,
        peer: String,
        dataset: String,
        peer_dataset: String,
        protocol: String,
        reveal: String,
        out: Option<PathBuf>,
    ) -> PyResult<String> {
        let request = (|| {
            let protocol: PsiProtocol = vocab(&protocol)?;
            let reveal: Reveal = vocab(&reveal)?;
            let out = out_path(out)?;
            Ok(SubmitRequest::psi(&peer, &dataset, &peer_dataset, protocol, reveal, Path::new(&out)))
        })()
        .map_err(|f: Failure| f.into_py_err(py))?;
        self.submit(py, request)
    }

    /// Submits a train job (this node holds the label). `params` is a JSON object of
    /// hyper-parameters overriding the engine's defaults (the fields of the CLI's flags; unknown
    /// ones are an error). Returns its id.
    #[pyo3(signature = (peer, dataset, peer_dataset, label, features, protocol, params, out))]
    fn submit_train(
        &self,
        py: Python<'_>,
        peer: String,
        dataset: String,
        peer_dataset: String,
        label: String,
        features: Vec<String>,
        protocol: String,
        params: String,
        out: PathBuf,
    ) -> PyResult<String> {
        let request = (|| {
            let protocol: PsiProtocol = vocab(&protocol)?;
            let params = lr_params(&params)?;
            let train = TrainRequest { label, features, params };
            let out = absolute(&out)?;
            submit_request(JobKind::Train, (&peer, &dataset, &peer_dataset), protocol, &train, &out)
                .map_err(|e| Failure::Invalid(one_line(&e)))
        })()
        .map_err(|f: Failure| f.into_py_err(py))?;
        self.submit(py, request)
    }

    /// Submits a score job with this node's model file from a train job; returns its id.
    #[pyo3(signature = (peer, dataset, peer_dataset, model, protocol, out))]
    fn submit_score(
        &self,
        py: Python<'_>,
        peer: String,
        dataset: String,
        peer_dataset: String,
        model: PathBuf,
        protocol: String,
        out: PathBuf,
    ) -> PyResult<String> {
        let request = (|| {
            let protocol: PsiProtocol = vocab(&protocol)?;
            let score = ScoreRequest { model: absolute(&model)? };
            let out = absolute(&out)?;
            submit_request(JobKind::Score, (&peer, &dataset, &peer_dataset), protocol, &score, &out)
                .map_err(|e| Failure::Invalid(one_line(&e)))
        })()
        .map_err(|f: Failure| f.into_py_err(py))?;
        self.submit(py, request)
    }

    /// Follows a job until it reaches a final state; returns its status (JSON). `progress` is
    /// called with `(stage, done, total)` when the status changes. Ctrl-C stops the wait (the
    /// control API has no cancel: the job runs on in the node).
    #[pyo3(signature = (job_id, progress=None))]
    fn wait(&self, py: Python<'_>, job_id: String, progress: Option<PyObject>) -> PyResult<String> {
        let client = self.client.clone();
        let latest: Arc<Mutex<Option<JobStatus>>> = Arc::default();
        let seen = latest.clone();
        // Called at each wake-up and once at the end, so even a job shorter than one wake-up
        // reports its final state.
        let mut report = |py: Python<'_>| {
            let update = latest.lock().unwrap_or_else(|p| p.into_inner()).take();
            match (&progress, update) {
                (Some(callback), Some(s)) => {
                    let stage = if s.stage.is_empty() { s.job_state().to_string() } else { s.stage.clone() };
                    callback.call1(py, (stage, s.done, s.total)).map(drop)
                }
                _ => Ok(()),
            }
        };
        let status = block_on(
            py,
            async move {
                let status = client
                    .watch(&job_id, |s| {
                        *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
                    })
                    .await?;
                Ok(to_json(&status))
            },
            &mut report,
        )?;
        report(py)?;
        Ok(status)
    }

    /// One job's status (JSON).
    fn job(&self, py: Python<'_>, job_id: String) -> PyResult<String> {
        let client = self.client.clone();
        block_on(py, async move { Ok(to_json(&client.job(&job_id).await?)) }, |_| Ok(()))
    }

    /// Every job the node has a record of, oldest first (JSON array).
    fn jobs(&self, py: Python<'_>) -> PyResult<String> {
        let client = self.client.clone();
        block_on(
            py,
            async move {
                let jobs = client.jobs().await?;
                Ok(serde_json::Value::from(jobs.iter().map(status_json).collect::<Vec<_>>()).to_string())
            },
            |_| Ok(()),
        )
    }

    /// The plaintext of an output, model or predictions file this node wrote (sealed under its
    /// storage key, or plain), authenticated as it is read: what `consort export` writes.
    fn read_output<'py>(&self, py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyBytes>> {
        let dir = self.dir.clone();
        let bytes = block_on(
            py,
            async move {
                tokio::task::spawn_blocking(move || read_plaintext(&dir, &path))
                    .await
                    .map_err(|e| Failure::Other(format!("internal error: {e}")))?
            },
            |_| Ok(()),
        )?;
        Ok(PyBytes::new(py, &bytes))
    }
}

impl NativeNode {
    fn submit(&self, py: Python<'_>, request: SubmitRequest) -> PyResult<String> {
        let client = self.client.clone();
        block_on(py, async move { Ok(client.submit(request).await?) }, |_| Ok(()))
    }
}

/// The engine's default hyper-parameters with the fields of `overrides` (a JSON object) replaced,
/// validated as the CLI validates its flags. A split seed is drawn if none is given.
fn lr_params(overrides: &str) -> Result<LrParams, Failure> {
    let bad = |e: &dyn std::fmt::Display| Failure::Invalid(format!("train parameters: {e}"));
    let mut params =
        serde_json::to_value(LrParams { split_seed: rand::random(), ..LrParams::default() }).map_err(|e| bad(&e))?;
    let overrides: serde_json::Map<String, serde_json::Value> = serde_json::from_str(overrides).map_err(|e| bad(&e))?;
    for (key, value) in overrides {
        params[key.as_str()] = value;
    }
    let params: LrParams = serde_json::from_value(params).map_err(|e| bad(&e))?;
    params.config().map_err(|e| bad(&e))?;
    Ok(params)
}

/// A registration that failed on the data (a row, a key, the header, reading the file) is a
/// `DatasetError`; on the request (name taken, unknown peer in a grant) an `InvalidArgument`.
fn registration_failure(e: &anyhow::Error) -> Failure {
    if e.chain().any(|c| c.is::<consort_engine::DataError>()) {
        Failure::Dataset(one_line(e))
    } else {
        Failure::Invalid(one_line(e))
    }
}

fn read_plaintext(dir: &Path, path: &Path) -> Result<Vec<u8>, Failure> {
    let cannot = |e: &dyn std::fmt::Display| Failure::Other(format!("cannot read {}: {e}", path.display()));
    let sealed = consort_engine::sealed::is_sealed(path).map_err(|e| cannot(&e))?;
    let key = if sealed { Some(at_rest::load_key(dir).map_err(Failure::other)?) } else { None };
    consort_engine::storage::read_data(path, key.as_ref()).map_err(|e| cannot(&e))
}
