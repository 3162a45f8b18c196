//! `NativeNode`: a client of a running node's control socket (`DIR/control.sock`), plus the node
//! directory operations the CLI runs for its operator (dataset registration, reading a sealed
//! output with the node's storage key). Statuses cross to Python as the CLI's `--json` objects.

// The methods mirror the Python API's keyword arguments one for one.
#![allow(clippy::too_many_arguments)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::ValueEnum;

use consort_api::proto::{JobStatus, SubmitRequest};
use consort_api::vocab::Vocabulary;
use consort_api::{JobKind, NodeClient};
use consort_engine::lr::LrParams;
use consort_engine::scorecard::CardParams;
use consort_engine::secureboost::SbParamsWire;
use consort_engine::{DatasetSpec, Normalization, PsiProtocol};
use consort_node::cli::lr::{ModelKind, is_secureboost_model, status_json, submit_request};
use consort_node::config::NodeConfig;
use consort_node::job::score::ScoreRequest;
use consort_node::job::secureboost::{SbScoreRequest, SbTrainRequest};
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

    /// Submits a train job (this node holds the label): `model` `lr` (a `train` job) or
    /// `secureboost` (a `secureboost` job), as `consort train --model`. `params` is a JSON object
    /// of hyper-parameters overriding the engine's defaults (the fields of that model's
    /// parameters; unknown ones, and the other model's, are an error). Returns its id.
    #[pyo3(signature = (peer, dataset, peer_dataset, label, features, protocol, model, params, out))]
    fn submit_train(
        &self,
        py: Python<'_>,
        peer: String,
        dataset: String,
        peer_dataset: String,
        label: String,
        features: Vec<String>,
        protocol: String,
        model: String,
        params: String,
        out: PathBuf,
    ) -> PyResult<String> {
        let request = (|| {
            let protocol: PsiProtocol = vocab(&protocol)?;
            let model = model_kind(&model)?;
            let out = absolute(&out)?;
            let names = (&peer[..], &dataset[..], &peer_dataset[..]);
            match model {
                ModelKind::Lr => {
                    let train = TrainRequest { label, features, params: lr_params(&params)? };
                    submit_request(JobKind::Train, names, protocol, &train, &out)
                }
                ModelKind::Secureboost => {
                    let train = SbTrainRequest { label, features, params: sb_params(&params)? };
                    submit_request(JobKind::Secureboost, names, protocol, &train, &out)
                }
            }
            .map_err(|e| Failure::Invalid(one_line(&e)))
        })()
        .map_err(|f: Failure| f.into_py_err(py))?;
        self.submit(py, request)
    }

    /// Submits a score job with this node's model file from a train job; returns its id. The
    /// kind is chosen from the model file as `consort score` chooses it: `secureboost-score` for
    /// a SecureBoost model (read with the node's storage key), else `score`.
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
            let model = absolute(&model)?;
            let out = absolute(&out)?;
            let names = (&peer[..], &dataset[..], &peer_dataset[..]);
            if is_secureboost_model(&self.dir, &model) {
                submit_request(JobKind::SecureboostScore, names, protocol, &SbScoreRequest { model }, &out)
            } else {
                submit_request(JobKind::Score, names, protocol, &ScoreRequest { model }, &out)
            }
            .map_err(|e| Failure::Invalid(one_line(&e)))
        })()
        .map_err(|f: Failure| f.into_py_err(py))?;
        self.submit(py, request)
    }

    /// Follows a job until it reaches a final state; returns its status (JSON). `progress` is
    /// called with `(stage, done, total)` for each stage the node reported (a stage shorter than
    /// one wake-up included: SecureBoost's trees can take milliseconds), and with the latest
    /// `done`/`total` of the current stage at each wake-up. Ctrl-C stops the wait (the control
    /// API has no cancel: the job runs on in the node).
    #[pyo3(signature = (job_id, progress=None))]
    fn wait(&self, py: Python<'_>, job_id: String, progress: Option<PyObject>) -> PyResult<String> {
        let client = self.client.clone();
        let pending: Arc<Mutex<Vec<Update>>> = Arc::default();
        let seen = pending.clone();
        // Called at each wake-up and once at the end, so even a job shorter than one wake-up
        // reports its final state.
        let mut report = |py: Python<'_>| {
            let updates = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
            match &progress {
                Some(callback) => updates.into_iter().try_for_each(|u| callback.call1(py, u).map(drop)),
                None => Ok(()),
            }
        };
        let status = block_on(
            py,
            async move {
                let status = client
                    .watch(&job_id, |s| {
                        let stage = if s.stage.is_empty() { s.job_state().to_string() } else { s.stage.clone() };
                        let mut pending = seen.lock().unwrap_or_else(|p| p.into_inner());
                        match pending.last_mut() {
                            // The same stage again: only its latest position is reported.
                            Some(last) if last.0 == stage => *last = (stage, s.done, s.total),
                            _ => {
                                if pending.len() == MAX_PENDING_STAGES {
                                    pending.remove(0);
                                }
                                pending.push((stage, s.done, s.total));
                            }
                        }
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

/// `model` of `Node.train`: the names of `consort train --model`.
fn model_kind(model: &str) -> Result<ModelKind, Failure> {
    ModelKind::from_str(model, false).map_err(|_| {
        let names: Vec<String> = ModelKind::value_variants().iter().map(|&m| cli_name(m)).collect();
        Failure::Invalid(format!("unknown model (expected one of: {})", names.join(", ")))
    })
}

fn bad_params(e: &dyn std::fmt::Display) -> Failure {
    Failure::Invalid(format!("train parameters: {e}"))
}

/// A progress report: stage, done, total.
type Update = (String, u64, u64);

/// Stages kept between two wake-ups of a wait (the oldest are dropped past it): a job does not
/// change stage this often, the bound is against a runaway stream.
const MAX_PENDING_STAGES: usize = 64;

/// The engine's default hyper-parameters with the fields of `overrides` (a JSON object) replaced,
/// validated as the CLI validates its flags. A split seed is drawn if none is given.
fn lr_params(overrides: &str) -> Result<LrParams, Failure> {
    let overrides = parse_overrides(overrides)?;
    refuse_other_models(&overrides, (ModelKind::Lr, &lr_names()), (ModelKind::Secureboost, &sb_names()))?;
    let params: LrParams = merged(LrParams { split_seed: rand::random(), ..LrParams::default() }, overrides)?;
    params.config().map_err(|e| bad_params(&e))?;
    Ok(params)
}

/// SecureBoost's hyper-parameters as `consort train --model secureboost` takes them
/// ([`SbParamsWire`]: its defaults, a random seed unless given) with the fields of `overrides`
/// replaced, validated as the CLI validates them ([`SbParamsWire::config`], which the peer repeats).
/// `reg_lambda` is taken for `lambda`, a Python keyword.
fn sb_params(overrides: &str) -> Result<SbParamsWire, Failure> {
    let mut overrides = parse_overrides(overrides)?;
    refuse_other_models(&overrides, (ModelKind::Secureboost, &sb_names()), (ModelKind::Lr, &lr_names()))?;
    if let Some(value) = overrides.remove(SB_LAMBDA_ALIAS) {
        if overrides.contains_key("lambda") {
            return Err(Failure::Invalid(format!(
                "train parameters: `lambda` and `{SB_LAMBDA_ALIAS}` are the same parameter: pass one"
            )));
        }
        overrides.insert("lambda".into(), value);
    }
    let params: SbParamsWire = merged(SbParamsWire { seed: rand::random(), ..SbParamsWire::default() }, overrides)?;
    params.config().map_err(|e| bad_params(&e))?;
    Ok(params)
}

/// What Python can pass for SecureBoost's `lambda` without `**{"lambda": ...}` (XGBoost's name).
const SB_LAMBDA_ALIAS: &str = "reg_lambda";

type Overrides = serde_json::Map<String, serde_json::Value>;

fn parse_overrides(overrides: &str) -> Result<Overrides, Failure> {
    serde_json::from_str(overrides).map_err(|e| bad_params(&e))
}

/// `defaults` with the fields of `overrides` replaced; an unknown field is an error (the
/// parameters' `deny_unknown_fields`).
fn merged<T: serde::Serialize + serde::de::DeserializeOwned>(defaults: T, overrides: Overrides) -> Result<T, Failure> {
    let mut params = serde_json::to_value(defaults).map_err(|e| bad_params(&e))?;
    for (key, value) in overrides {
        params[key.as_str()] = value;
    }
    serde_json::from_value(params).map_err(|e| bad_params(&e))
}

/// A parameter of the other model that this one does not take is refused naming both models,
/// rather than as an unknown field.
fn refuse_other_models(
    overrides: &Overrides,
    (model, own): (ModelKind, &BTreeSet<String>),
    (other_model, other): (ModelKind, &BTreeSet<String>),
) -> Result<(), Failure> {
    // The two models' names for the same thing (LR's, SecureBoost's), to point at the right one.
    const SAME: [(&str, &str); 2] = [("l2", "lambda"), ("split_seed", "seed")];
    let Some(key) = overrides.keys().find(|k| !own.contains(*k) && other.contains(*k)) else {
        return Ok(());
    };
    let instead = SAME
        .iter()
        .find_map(|&(lr, sb)| match model {
            ModelKind::Lr => (key == sb).then_some(lr),
            ModelKind::Secureboost => (key == lr).then_some(sb),
        })
        .map(|name| match name {
            // Python cannot write `lambda=`: point at what it can write.
            "lambda" => format!(" ({} takes `{SB_LAMBDA_ALIAS}`, the engine's `lambda`)", model_name(model)),
            _ => format!(" ({} takes `{name}`)", model_name(model)),
        })
        .unwrap_or_default();
    Err(Failure::Invalid(format!(
        "train parameters: `{key}` is a parameter of model=\"{}\", not of model=\"{}\"{instead}",
        cli_name(other_model),
        cli_name(model)
    )))
}

/// `lr` or `secureboost`, as `model` takes them.
fn cli_name(model: ModelKind) -> String {
    model.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
}

fn model_name(model: ModelKind) -> &'static str {
    match model {
        ModelKind::Lr => "logistic regression",
        ModelKind::Secureboost => "SecureBoost",
    }
}

/// The fields of a parameter struct, as its JSON object has them.
fn field_names(params: impl serde::Serialize) -> BTreeSet<String> {
    match serde_json::to_value(params) {
        Ok(serde_json::Value::Object(fields)) => fields.into_iter().map(|(k, _)| k).collect(),
        _ => BTreeSet::new(),
    }
}

/// LR's parameter names, the optional ones (skipped when absent) included.
fn lr_names() -> BTreeSet<String> {
    field_names(LrParams {
        dealer: Some(String::new()),
        scorecard: Some(CardParams::new(600.0, 50.0, 20.0)),
        ..LrParams::default()
    })
}

/// SecureBoost's parameter names, and the alias of `lambda`.
fn sb_names() -> BTreeSet<String> {
    let mut names = field_names(SbParamsWire { hide_partitions: true, ..SbParamsWire::default() });
    names.insert(SB_LAMBDA_ALIAS.into());
    names
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
