//! `psi` jobs: a private set intersection; each side that learns it writes its rows of the
//! intersection in the joint order (`consort_engine::psi`).
//!
//! Parameters: the protocol (`ecdh` by default) and the reveal mode (`both` by default) travel in
//! the request's typed fields; `params` is empty for a plain PSI, or `{"peer_columns": [...]}`
//! for a payload (labeled) join (RR22, or with ECDH the per-job DH-OPRF payload join of
//! `consort_protocols::psi::labeled`; `consort_engine::payload`): the requester's output
//! then has its rows followed by the responder's values of those columns, named `PEER.COLUMN`
//! (PEER the responder's name on the requester), one row per pair of rows sharing a key. The
//! responder validates the columns (count, names) in `plan`, before anything is logged, and the
//! envelope refuses a column its grant does not share (`Grant::share`) before any protocol
//! message. `{"join": "left"}` (also `right`, `full`, `difference`; default `inner`) picks the
//! join type of both outputs (`consort_engine::join`): both sides validate it against the reveal
//! mode in `plan` (right and full need `both`; a payload join runs inner or left), and the
//! responder runs the join the requester asked for, which its audit log records.
//! `{"resume": "JOB"}` takes up the interrupted streaming RR22 job JOB (`super::resume`).
//! The responder writes `DIR/outputs/JOB-DATASET.csv`,
//! the requester where `--out` says (default the same form); both sealed under the node's storage
//! key unless `[storage] encrypt_outputs = false` (`consort export` gives the plaintext).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use consort_api::JobKind;
use consort_engine::psi_stream::resume::{Resumable, discard, is_resumable, run_psi_resumable};
use consort_engine::psi_stream::{StreamOptions, run_psi_streaming};
use consort_engine::{EngineError, JoinType, OutputColumns, PayloadJob, PsiJob, PsiProtocol, run_psi_owned};
use consort_protocols::{Reveal, Role};

use super::{Ask, Failure, Job, Kind, Outcome, Output, RunCtx};
use crate::config;
use crate::state::NodeState;
pub use consort_engine::psi_stream::resume::shard::MAX_SHARDS;

pub struct Psi;

impl Kind for Psi {
    fn kind(&self) -> JobKind {
        JobKind::Psi
    }

    fn plan(&self, _state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String> {
        let protocol = ask.protocol.unwrap_or(PsiProtocol::Ecdh);
        let PsiParams { peer_columns, join, row_index, output, resume, shards } = parse_params(&ask.params)?;
        if shards.is_some()
            && (protocol != PsiProtocol::Rr22
                || !peer_columns.is_empty()
                || !output.is_rows()
                || !join.is_inner()
                || resume.is_some())
        {
            return Err(
                "only streaming rr22 inner joins (no peer columns, whole rows, not a resume) run in shards".into()
            );
        }
        if resume.is_some() && (protocol != PsiProtocol::Rr22 || !peer_columns.is_empty() || !output.is_rows()) {
            return Err("only streaming rr22 jobs (no peer columns, whole rows) can be resumed".into());
        }
        let reveal = ask.reveal.unwrap_or(Reveal::Both);
        join.check(reveal)?;
        if !peer_columns.is_empty() && !matches!(join, JoinType::Inner | JoinType::Left) {
            return Err(format!("a payload join (peer columns) runs as an inner or left join, not {}", join.name()));
        }
        if row_index && (ask.role != Role::Requester || peer_columns.is_empty() || !join.is_inner()) {
            return Err("the row index is an option of the requester of an inner payload join only".into());
        }
        if output == OutputColumns::Keys && !peer_columns.is_empty() {
            return Err("a payload join (peer columns) writes whole rows: --output keys is for plain PSI".into());
        }
        Ok(Box::new(PsiPlan { protocol, reveal, peer_columns, join, row_index, output, resume, shards }))
    }
}

/// Most peer columns one payload join may ask for.
pub const MAX_PEER_COLUMNS: usize = 64;
/// Longest column name a payload join may name, in bytes.
pub const MAX_COLUMN_NAME: usize = 128;
/// Largest payload of one key (its rows' values of the asked columns, encoded) a requester
/// accepts: the responder's announced width is refused above this before anything is sized.
pub const MAX_PAYLOAD_BYTES_PER_KEY: usize = 64 << 10;

/// A PSI job's parameters (`Ask::params`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsiParams {
    /// The responder's columns to join to the requester's rows (payload join); empty: plain PSI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_columns: Vec<String>,
    /// The join type of the outputs (`consort_engine::join`); default inner.
    #[serde(default, skip_serializing_if = "JoinType::is_inner")]
    pub join: JoinType,
    /// Requester only, never sent to the peer: the joined output also carries the own row's
    /// index (`#row`), for a several-peer join's merge (`crate::multi`). A responder refuses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub row_index: bool,
    /// Which columns both outputs hold: `rows` (default, not written) or `keys` (the key
    /// columns only, for rows too large to copy); both sides run what the requester asked.
    #[serde(default, skip_serializing_if = "OutputColumns::is_rows")]
    pub output: OutputColumns,
    /// Resume: the id of an interrupted streaming RR22 job (same peer, datasets and parameters)
    /// this job takes up from its first range not finished on both nodes
    /// (`consort_engine::psi_stream::resume`). Both nodes check it in `plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// Shards: the job's bucket space runs as this many worker pairs (`super::shards`), 1 to
    /// `MAX_SHARDS`; both nodes check it in `plan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

/// Parses and validates a PSI job's parameters (on the requester from its operator, on the
/// responder from the peer, before anything is logged): the message names no value but the
/// column's position.
pub fn parse_params(params: &str) -> Result<PsiParams, String> {
    if params.is_empty() {
        return Ok(PsiParams::default());
    }
    let p: PsiParams = serde_json::from_str(params)
        .map_err(|e| format!("psi parameters are not valid (line {}, column {})", e.line(), e.column()))?;
    if let Some(id) = &p.resume
        && config::check_name("job id", id).is_err()
    {
        return Err("the job to resume is not a valid job id".into());
    }
    if let Some(n) = p.shards
        && !(1..=MAX_SHARDS as u32).contains(&n)
    {
        return Err(format!("a job runs in 1 to {MAX_SHARDS} shards"));
    }
    if p.peer_columns.len() > MAX_PEER_COLUMNS {
        return Err(format!("a payload join asks for at most {MAX_PEER_COLUMNS} peer columns"));
    }
    for (i, c) in p.peer_columns.iter().enumerate() {
        if c.trim().is_empty() || c.len() > MAX_COLUMN_NAME || c.chars().any(char::is_control) || c.trim() != c {
            return Err(format!(
                "peer column {} is not a valid column name (1 to {MAX_COLUMN_NAME} bytes, no control characters or surrounding spaces)",
                i + 1
            ));
        }
        if p.peer_columns[..i].contains(c) {
            return Err(format!("peer column {} is named twice", i + 1));
        }
    }
    Ok(p)
}

struct PsiPlan {
    protocol: PsiProtocol,
    reveal: Reveal,
    /// Payload join: the responder's columns the requester receives.
    peer_columns: Vec<String>,
    join: JoinType,
    /// Requester of a payload join: write the own row's index too (never told to the peer).
    row_index: bool,
    /// The outputs' columns (`--output rows|keys`).
    output: OutputColumns,
    /// The interrupted job this one resumes.
    resume: Option<String>,
    /// Worker pairs the job runs as (`super::shards`).
    shards: Option<u32>,
}

/// Where a node writes a job's output when its operator did not choose (and the name the peer
/// is told: relative to the node directory).
pub fn default_output(dir: &Path, job_id: &str, dataset: &str) -> (PathBuf, String) {
    default_output_ext(dir, job_id, dataset, "csv")
}

/// [`default_output`] with the file's extension (`parquet` for a Parquet dataset's output).
pub fn default_output_ext(dir: &Path, job_id: &str, dataset: &str, ext: &str) -> (PathBuf, String) {
    let rel = format!("{}/{job_id}-{dataset}.{ext}", config::OUTPUTS_DIR);
    (dir.join(&rel), rel)
}

/// What a failing side tells its peer: enough to act on, nothing about its data or files.
pub(super) fn failure(e: EngineError) -> Failure {
    match e {
        EngineError::Data(_) => Failure::private(e),
        other => Failure::shared(other),
    }
}

/// Target items per RR22 bucket: the protocol's default, or `CONSORT_RR22_BUCKET_SIZE` (both
/// nodes must agree; the hello refuses a mismatch) for tests that want many buckets.
fn spill_bucket_size() -> usize {
    std::env::var("CONSORT_RR22_BUCKET_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(consort_protocols::psi::rr22::DEFAULT_BUCKET_SIZE)
}

/// Buckets per resumable range: the engine's default (the job in at most 32 ranges), or
/// `CONSORT_RESUME_RANGE_BUCKETS` (both nodes must agree; checked) for tests with small ranges.
fn range_buckets() -> usize {
    std::env::var("CONSORT_RESUME_RANGE_BUCKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
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
        if self.peer_columns.is_empty()
            && self.join.is_inner()
            && self.output.is_rows()
            && self.resume.is_none()
            && self.shards.is_none()
        {
            return String::new();
        }
        serde_json::to_string(&PsiParams {
            peer_columns: self.peer_columns.clone(),
            join: self.join,
            output: self.output,
            resume: self.resume.clone(),
            shards: self.shards,
            ..Default::default()
        })
        .expect("serializable")
    }

    fn audited(&self) -> serde_json::Value {
        let mut v = serde_json::json!({});
        if !self.peer_columns.is_empty() {
            v["peer_columns"] = serde_json::json!(self.peer_columns);
        }
        if !self.join.is_inner() {
            v["join"] = serde_json::json!(self.join.name());
        }
        if self.row_index {
            v["row_index"] = serde_json::json!(true);
        }
        if !self.output.is_rows() {
            v["output"] = serde_json::json!(self.output.name());
        }
        // A resumed job names the job it continues: the audit log links the parts.
        if let Some(id) = &self.resume {
            v["resume"] = serde_json::json!(id);
        }
        if let Some(n) = self.shards {
            v["shards"] = serde_json::json!(n);
        }
        v
    }

    fn shared_columns(&self) -> &[String] {
        &self.peer_columns
    }

    /// RR22 without payloads streams its dataset bucket by bucket from disk.
    fn streams(&self) -> bool {
        self.protocol == PsiProtocol::Rr22 && self.peer_columns.is_empty()
    }

    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure> {
        let name = match (&ctx.dataset, &ctx.stream) {
            (Some(d), _) => d.spec.name.clone(),
            (None, Some(s)) => s.spec.name.clone(),
            (None, None) => unreachable!("psi jobs load a dataset"),
        };
        let (path, shown) = match (&ctx.ask.out, ctx.ask.role) {
            (Some(p), Role::Requester) => (p.clone(), p.display().to_string()),
            _ => {
                let file = match (&ctx.dataset, &ctx.stream) {
                    (Some(d), _) => d.spec.file.clone(),
                    (None, Some(s)) => s.spec.file.clone(),
                    (None, None) => unreachable!("psi jobs load a dataset"),
                };
                let ext = if consort_engine::parquet_io::is_parquet(&file) { "parquet" } else { "csv" };
                default_output_ext(&ctx.state.dir, &ctx.ask.job_id, &name, ext)
            }
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
            payload: match (self.peer_columns.is_empty(), ctx.ask.role) {
                (true, _) => PayloadJob::None,
                (false, Role::Requester) => PayloadJob::Receive {
                    header: self.peer_columns.iter().map(|c| format!("{}.{c}", ctx.ask.peer)).collect(),
                    max_bytes: MAX_PAYLOAD_BYTES_PER_KEY,
                    row_index: self.row_index,
                },
                (false, Role::Responder) => PayloadJob::Send { columns: self.peer_columns.clone() },
            },
            join: self.join,
            columns: self.output,
        };
        let report = match (ctx.dataset, &ctx.stream) {
            (Some(dataset), _) => run_psi_owned(&*ctx.channel, dataset, &psi).await.map_err(failure)?,
            (None, Some(input)) => {
                let (report, figures) = if let Some(n) = self.shards {
                    if input.is_parquet() {
                        return Err(Failure::shared(anyhow::anyhow!("a sharded job needs a CSV dataset")));
                    }
                    let options = StreamOptions {
                        spill_dir: ctx.state.dir.join(config::SPILL_DIR).join(&ctx.ask.job_id),
                        bucket_size: spill_bucket_size(),
                    };
                    let shard_ctx = super::shards::Ctx { state: ctx.state, ask: ctx.ask, channel: &ctx.channel };
                    super::shards::run(&shard_ctx, input, &psi, &options, n as usize).await?
                } else if input.is_parquet() || !self.output.is_rows() {
                    // Parquet inputs and key-only outputs stream without resume checkpoints (the
                    // resumable path copies CSV rows into its range segments).
                    if self.resume.is_some() {
                        return Err(Failure::shared(anyhow::anyhow!("a job over a Parquet dataset cannot be resumed")));
                    }
                    let options = StreamOptions {
                        spill_dir: ctx.state.dir.join(config::SPILL_DIR).join(&ctx.ask.job_id),
                        bucket_size: spill_bucket_size(),
                    };
                    run_psi_streaming(&*ctx.channel, input, &psi, &options).await.map_err(failure)?
                } else {
                    // Other streaming jobs are resumable: their state lives in DIR/spill/JOB (JOB
                    // the first part's id), their spill key sealed under the node's storage key.
                    let first = self.resume.as_deref().unwrap_or(&ctx.ask.job_id);
                    let options = StreamOptions {
                        spill_dir: ctx.state.dir.join(config::SPILL_DIR).join(first),
                        bucket_size: spill_bucket_size(),
                    };
                    let (key, _lock) =
                        super::resume::job_key(ctx.state, ctx.ask, &options.spill_dir, self.resume.is_some()).await?;
                    let resumable = Resumable { key, range_buckets: range_buckets(), resume: self.resume.is_some() };
                    let run = run_psi_resumable(&*ctx.channel, input, &psi, &options, resumable).await;
                    if run.is_err() && !is_resumable(&options.spill_dir) {
                        // Cut short before its first checkpoint: nothing to resume, nothing kept.
                        let _ = discard(&options.spill_dir);
                    }
                    run.map_err(failure)?
                };
                tracing::info!(
                    job = %ctx.ask.job_id,
                    peak_temp_bytes = figures.peak_temp_bytes,
                    duplicates_dropped = figures.duplicates_dropped,
                    "streaming psi done"
                );
                report
            }
            (None, None) => unreachable!("psi jobs load a dataset"),
        };
        let rows = report.output_rows;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The join type travels in the parameters, inner by default and then not written at all
    /// (inner requests are unchanged on the wire); an unknown one is refused with its place.
    #[test]
    fn join_parameters_round_trip_and_unknown_ones_are_refused() {
        assert_eq!(parse_params("").unwrap().join, JoinType::Inner);
        assert_eq!(parse_params(r#"{"join":"full"}"#).unwrap().join, JoinType::Full);
        let p = parse_params(r#"{"peer_columns":["score"],"join":"left"}"#).unwrap();
        assert_eq!((p.peer_columns.as_slice(), p.join), (&["score".to_string()][..], JoinType::Left));
        let inner = PsiParams { peer_columns: vec!["s".into()], join: JoinType::Inner, ..Default::default() };
        assert_eq!(serde_json::to_string(&inner).unwrap(), r#"{"peer_columns":["s"]}"#);
        let e = parse_params(r#"{"join":"outer"}"#).unwrap_err();
        assert!(e.contains("line 1, column"), "{e}");
        assert!(!e.contains("outer"), "no value in the message: {e}");
    }

    /// `--output keys` travels like the join type: omitted for rows, refused when unknown.
    #[test]
    fn output_parameter_round_trips_and_unknown_ones_are_refused() {
        assert_eq!(parse_params("").unwrap().output, OutputColumns::Rows);
        let p = parse_params(r#"{"output":"keys","join":"left"}"#).unwrap();
        assert_eq!((p.output, p.join), (OutputColumns::Keys, JoinType::Left));
        let rows = PsiParams { join: JoinType::Full, ..Default::default() };
        assert_eq!(serde_json::to_string(&rows).unwrap(), r#"{"join":"full"}"#);
        let keys = PsiParams { output: OutputColumns::Keys, ..Default::default() };
        assert_eq!(serde_json::to_string(&keys).unwrap(), r#"{"output":"keys"}"#);
        let e = parse_params(r#"{"output":"all"}"#).unwrap_err();
        assert!(e.contains("line 1, column") && !e.contains("all"), "{e}");
    }

    /// A shard count travels in the parameters and is bounded; both nodes check it in `plan`.
    #[test]
    fn shard_parameters_are_checked() {
        assert_eq!(parse_params(r#"{"shards":4}"#).unwrap().shards, Some(4));
        assert_eq!(parse_params("").unwrap().shards, None);
        for bad in [r#"{"shards":0}"#, r#"{"shards":65}"#] {
            assert!(parse_params(bad).unwrap_err().contains("1 to 64 shards"), "{bad}");
        }
        assert!(parse_params(r#"{"shards":-1}"#).is_err());
        let p = PsiParams { shards: Some(2), ..Default::default() };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"shards":2}"#);
    }

    /// A resume names a job by a valid id; anything else is refused in `plan` without echoing it.
    #[test]
    fn resume_parameters_are_checked() {
        assert_eq!(parse_params(r#"{"resume":"j0123abc"}"#).unwrap().resume.as_deref(), Some("j0123abc"));
        for bad in [r#"{"resume":"../etc"}"#, r#"{"resume":""}"#, r#"{"resume":".hidden"}"#] {
            let e = parse_params(bad).unwrap_err();
            assert!(e.contains("not a valid job id") && !e.contains("etc") && !e.contains("hidden"), "{e}");
        }
        let p = PsiParams { resume: Some("j1".into()), ..Default::default() };
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"resume":"j1"}"#);
    }
}
