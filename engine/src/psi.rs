//! A PSI job on one party: run the protocol over a channel, write the aligned output.
//!
//! The protocol sees only the dataset's encoded keys ([`crate::keys`]). A party that learns the
//! intersection gets the indices of its own intersecting rows in the joint order both parties
//! share, and writes those rows (byte-identical to its input, header first) in that order, so
//! row i of both outputs is the same entity. What each party learns is the protocol's to say
//! (see the protocols in `consort_protocols::psi`); the engine adds nothing to it. A failed protocol run
//! writes nothing, and the output file appears only when complete (temp file, then rename).
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use consort_protocols::psi::PsiProtocol;
use consort_protocols::psi::ecdh::EcdhEvidence;
use consort_protocols::psi::{self, PayloadMode, PsiConfig, PsiRun};
use consort_protocols::{Channel, ProgressFn, Reveal, Role, cpu};

use crate::dataset::Dataset;
use crate::error::{DataError, EngineError};
use crate::join::{self, JoinType};
use crate::storage::AtRest;

/// One party's side of a PSI job.
#[derive(Clone)]
pub struct PsiJob {
    pub protocol: PsiProtocol,
    pub role: Role,
    pub reveal: Reveal,
    /// Where to write this party's rows of the intersection (ignored if it does not learn it).
    pub output: Option<PathBuf>,
    /// Whether the output is sealed under the node's storage key ([`crate::sealed`]).
    pub at_rest: AtRest,
    pub progress: Option<ProgressFn>,
    /// Prove the protocol steps where the protocol can (ECDH-PSI: key commitments and DLEQ
    /// proofs, see [`crate::audit`]); both parties must agree.
    pub proofs: bool,
    /// The bounds this party's node puts on the job (its grant's).
    pub limits: JobLimits,
    /// A payload (labeled) join ([`crate::payload`]; RR22 or ECDH): the responder sends columns,
    /// the requester writes its rows joined with them.
    pub payload: PayloadJob,
    /// The join type of the outputs ([`crate::join`]); both parties must agree.
    pub join: JoinType,
    /// Which columns of this side's rows its output holds (`--output rows|keys`); both parties
    /// must agree.
    pub columns: OutputColumns,
}

/// Which columns of a side's rows its PSI output holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputColumns {
    /// Every column, as in the input (CSV rows byte for byte).
    #[default]
    Rows,
    /// Only the key columns (in the file's column order): for rows too large to copy.
    Keys,
}

impl OutputColumns {
    pub fn name(self) -> &'static str {
        match self {
            OutputColumns::Rows => "rows",
            OutputColumns::Keys => "keys",
        }
    }

    pub fn is_rows(&self) -> bool {
        *self == OutputColumns::Rows
    }
}

impl std::str::FromStr for OutputColumns {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rows" => Ok(OutputColumns::Rows),
            "keys" => Ok(OutputColumns::Keys),
            _ => Err("the output is `rows` (every column) or `keys` (the key columns only)".into()),
        }
    }
}

/// This party's side of a payload join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PayloadJob {
    /// A plain PSI.
    #[default]
    None,
    /// The responder: sends the values of these columns (header names) of its rows.
    Send { columns: Vec<String> },
    /// The requester: receives the peer's values of its matched rows and appends them to its
    /// output under `header`; refuses the peer's payload width above `max_bytes` (one key's
    /// encoded rows) before anything is sized by it. With `row_index` each output row also
    /// carries its own row's index (kept rows, file order) in a column `#row` between its own
    /// fields and the peer's: the form a several-peer join merges (`crate::multi_join`).
    Receive { header: Vec<String>, max_bytes: usize, row_index: bool },
}

/// Bounds a node's grant puts on one job, checked by the protocol (the peer's announced size)
/// and by the engine (the aligned rows) before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Most items the peer's set may have (its hello is refused above this).
    pub max_peer_rows: u64,
    /// Fewest rows the intersection may have for this party to write or train on it.
    pub min_aligned_rows: u64,
}

impl Default for JobLimits {
    /// No bounds but the protocols' own.
    fn default() -> Self {
        JobLimits { max_peer_rows: u64::MAX, min_aligned_rows: 0 }
    }
}

impl JobLimits {
    /// An intersection of `rows` rows is refused below the minimum (the peer hears the rule, not
    /// the size, which it learns from the protocol anyway when it may).
    pub fn check_aligned(&self, rows: u64) -> Result<(), DataError> {
        if rows < self.min_aligned_rows {
            return Err(DataError::Invalid(format!(
                "the intersection has fewer rows than this node's grant requires ({})",
                self.min_aligned_rows
            )));
        }
        Ok(())
    }
}

/// What one party's side of a PSI job did.
#[derive(Debug, Clone)]
pub struct PsiReport {
    pub local_rows: u64,
    pub peer_rows: u64,
    /// Intersection size, if this party learns it.
    pub intersection: Option<u64>,
    /// The output file written, if any.
    pub output: Option<PathBuf>,
    /// Data rows in the output (the intersection's size, or for a payload join one row per pair
    /// of rows sharing a key).
    pub output_rows: u64,
    /// Wall seconds per stage, in order: `protocol`, the protocol's own steps as
    /// `protocol/STEP` (if it reports any; they may overlap), then `output` if an output was
    /// written.
    pub stages: Vec<(String, f64)>,
    /// ECDH-PSI run with proofs: commitments and proof records for the audit evidence.
    pub ecdh_evidence: Option<EcdhEvidence>,
}

/// Runs this party's side of a PSI job over `channel` and writes the output (atomically).
pub async fn run_psi<C: Channel>(channel: &C, dataset: &Dataset, job: &PsiJob) -> Result<PsiReport, EngineError> {
    let (result, evidence, stages) = run_protocol(channel, dataset, job).await?;
    finish(channel, dataset, job, result, evidence, stages).await
}

/// [`run_psi`] on a dataset the job owns (as a node's jobs do): the keys are freed as soon as the
/// protocol is done, before the output is written, which is when copying rows out of the input
/// file adds its pages to resident memory (at 10^8 rows: 2 GB of keys against a 3.5 GB file).
pub async fn run_psi_owned<C: Channel>(
    channel: &C,
    mut dataset: Dataset,
    job: &PsiJob,
) -> Result<PsiReport, EngineError> {
    let (result, evidence, stages) = run_protocol(channel, &dataset, job).await?;
    dataset.release_keys();
    finish(channel, &dataset, job, result, evidence, stages).await
}

type Stages = Vec<(String, f64)>;

async fn run_protocol<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    job: &PsiJob,
) -> Result<(consort_protocols::PsiOutput, Option<EcdhEvidence>, Stages), EngineError> {
    let started = Instant::now();
    // Before any message: a payload join reads and writes CSV rows, whole.
    if job.payload != PayloadJob::None && (job.columns == OutputColumns::Keys || dataset.is_parquet()) {
        return Err(DataError::Invalid(
            "a payload join writes every column of CSV rows (no Parquet, no --output keys)".into(),
        )
        .into());
    }
    let payload = match &job.payload {
        PayloadJob::None => PayloadMode::None,
        PayloadJob::Send { columns } => {
            let at = crate::payload::column_positions(dataset, columns)?;
            let source = dataset.row_source();
            let payloads = cpu::run(move || crate::payload::collect_payloads(&source, &at)).await?;
            PayloadMode::Send(std::sync::Arc::new(payloads))
        }
        PayloadJob::Receive { max_bytes, .. } => PayloadMode::Receive { max_bytes: *max_bytes },
    };
    let config = PsiConfig {
        role: job.role,
        reveal: job.reveal,
        progress: job.progress.clone(),
        proofs: job.proofs,
        max_peer_items: job.limits.max_peer_rows,
        payload,
    };
    let PsiRun { output, ecdh_evidence } = psi::run(channel, &dataset.keys, job.protocol, &config).await?;
    let mut stages = vec![("protocol".to_string(), started.elapsed().as_secs_f64())];
    // The protocol's own breakdown, if it measures one (steps may overlap).
    stages.extend(output.timings.iter().map(|&(step, secs)| (format!("protocol/{step}"), secs)));
    Ok((output, ecdh_evidence, stages))
}

async fn finish<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    job: &PsiJob,
    result: consort_protocols::PsiOutput,
    ecdh_evidence: Option<EcdhEvidence>,
    mut stages: Stages,
) -> Result<PsiReport, EngineError> {
    let mut output = None;
    let mut output_rows = 0;
    if let Some(order) = &result.intersection {
        job.limits.check_aligned(order.len() as u64)?;
    }
    // A join's sections after the intersection: this side's unmatched rows and the count of the
    // peer's, exchanged whenever this side learns (so the peer never waits for it).
    let mut sections = Vec::new();
    let mut unmatched = Vec::new();
    if let Some(order) = &result.intersection {
        if job.join.needs_unmatched(job.role) {
            unmatched = dataset.unmatched(order)?;
        }
        let (own, shared) = (unmatched.len() as u64, order.len() as u64);
        let peer =
            join::exchange_counts(channel, job.join, job.role, job.reveal, own, result.peer_size, shared).await?;
        sections = job.join.sections(job.role, job.reveal, peer);
    }
    if let (Some(order), Some(path)) = (&result.intersection, &job.output) {
        let started = Instant::now();
        let shown: &[u32] = if job.join.writes_intersection() { order } else { &[] };
        let plan = match (&job.payload, &result.payloads) {
            (PayloadJob::Receive { header, row_index, .. }, Some(payloads)) => {
                let empty = vec![&b""[..]; header.len()];
                let mut empty_suffix = Vec::new();
                crate::payload::append_fields(&mut empty_suffix, &empty);
                let rows = crate::payload::JoinedRows { order, payloads, peer_header: header, row_index: *row_index };
                let plan = crate::payload::joined_plan(dataset, &rows)?;
                dataset.join_plan(plan, job.join, &sections, &unmatched, &empty_suffix)
            }
            (PayloadJob::Receive { .. }, None) => {
                return Err(DataError::Invalid("the protocol returned no payloads".into()).into());
            }
            _ => {
                let mut plan = dataset.output_plan(shown)?;
                if job.columns == OutputColumns::Keys {
                    plan = dataset.keys_plan(plan)?;
                }
                dataset.join_plan(plan, job.join, &sections, &unmatched, b"")
            }
        };
        output_rows = write_plan(plan, path, &job.at_rest).await?;
        stages.push(("output".to_string(), started.elapsed().as_secs_f64()));
        output = Some(path.clone());
    }
    Ok(PsiReport {
        local_rows: dataset.len() as u64,
        peer_rows: result.peer_size,
        intersection: result.intersection.as_ref().map(|v| v.len() as u64),
        output,
        output_rows,
        stages,
        ecdh_evidence,
    })
}

/// [`Dataset::write_rows`] on the rayon pool, awaited without blocking the async runtime.
pub async fn write_output(dataset: &Dataset, order: &[u32], out: &Path, at_rest: &AtRest) -> Result<u64, DataError> {
    write_plan(dataset.output_plan(order)?, out, at_rest).await
}

async fn write_plan(plan: crate::dataset::OutputPlan, out: &Path, at_rest: &AtRest) -> Result<u64, DataError> {
    let (out, at_rest) = (out.to_path_buf(), at_rest.clone());
    cpu::run(move || plan.write(&out, &at_rest)).await
}

#[cfg(test)]
mod tests {
    use consort_protocols::memory_pair;

    use super::*;
    use crate::check::{OutputFile, verify_psi_outputs};
    use crate::dataset::DatasetSpec;
    use crate::sealed::StorageKey;
    use crate::synth::{PsiGenSpec, generate_psi};

    fn specs(dir: &Path, rows_a: u64, rows_b: u64, overlap: u64) -> (DatasetSpec, DatasetSpec) {
        generate_psi(&PsiGenSpec { rows_a, rows_b, overlap, seed: 3, out_dir: dir.to_path_buf() }).unwrap();
        let spec = |name: &str| DatasetSpec::new(name, dir.join(format!("{name}.csv")), &["id"]);
        (spec("a"), spec("b"))
    }

    fn job(role: Role, reveal: Reveal, output: PathBuf) -> PsiJob {
        PsiJob {
            protocol: PsiProtocol::Ecdh,
            role,
            reveal,
            output: Some(output),
            at_rest: AtRest::Plain,
            progress: None,
            proofs: true,
            limits: JobLimits::default(),
            payload: PayloadJob::None,
            join: JoinType::Inner,
            columns: OutputColumns::Rows,
        }
    }

    const PROTOCOLS: [PsiProtocol; 2] = [PsiProtocol::Ecdh, PsiProtocol::Rr22];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_output_runs_on_rayon() {
        let dir = tempfile::tempdir().unwrap();
        let (spec_a, _) = specs(dir.path(), 50, 10, 5);
        let ds = Dataset::load(&spec_a).unwrap();
        let out = dir.path().join("out/a.csv");
        assert_eq!(write_output(&ds, &[4, 2, 0], &out, &AtRest::Plain).await.unwrap(), 3);
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].starts_with(&ds.key_of(4)));
        assert!(write_output(&ds, &[50], &out, &AtRest::Plain).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn psi_over_memory_pair_writes_aligned_outputs() {
        for (protocol, reveal) in PROTOCOLS.into_iter().flat_map(|p| [(p, Reveal::Both), (p, Reveal::RequesterOnly)]) {
            let dir = tempfile::tempdir().unwrap();
            let (spec_a, spec_b) = specs(dir.path(), 3000, 2000, 700);
            let (a, b) = (Dataset::load(&spec_a).unwrap(), Dataset::load(&spec_b).unwrap());
            let (out_a, out_b) = (dir.path().join("out/a.csv"), dir.path().join("out/b.csv"));
            let (ca, cb) = memory_pair(16);
            // A seals its output, B does not: each node decides for itself.
            let key_a = std::sync::Arc::new(StorageKey::generate().unwrap());
            let at_rest = AtRest::Sealed(key_a.clone());
            let job_a = PsiJob { protocol, at_rest, ..job(Role::Requester, reveal, out_a.clone()) };
            let job_b = PsiJob { protocol, ..job(Role::Responder, reveal, out_b.clone()) };
            let (ra, rb) = tokio::join!(run_psi(&ca, &a, &job_a), run_psi(&cb, &b, &job_b));
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert_eq!((ra.local_rows, ra.peer_rows, ra.intersection), (3000, 2000, Some(700)));
            assert_eq!(ra.output.as_deref(), Some(out_a.as_path()));
            let stages: Vec<&str> =
                ra.stages.iter().map(|s| s.0.as_str()).filter(|s| !s.starts_with("protocol/")).collect();
            assert_eq!(stages, ["protocol", "output"]);
            assert_eq!(ra.stages.len() > 2, protocol == PsiProtocol::Rr22, "{:?}", ra.stages);
            let b_out = match reveal {
                Reveal::Both => {
                    assert_eq!(rb.intersection, Some(700));
                    Some(out_b.as_path())
                }
                Reveal::RequesterOnly => {
                    assert_eq!((rb.intersection, rb.output.as_deref()), (None, None));
                    assert!(!out_b.exists());
                    None
                }
            };
            assert_eq!(rb.peer_rows, 3000);
            assert!(crate::sealed::is_sealed(&out_a).unwrap());
            let first_key = a.key_of(0);
            let raw = std::fs::read(&out_a).unwrap();
            assert!(
                !raw.windows(first_key.len()).any(|w| w == first_key.as_bytes()),
                "no plaintext id in a sealed output"
            );
            let a_out = OutputFile::sealed(&out_a, &key_a);
            let report = verify_psi_outputs(&spec_a, &spec_b, Some(a_out), b_out.map(OutputFile::plain)).unwrap();
            assert_eq!(report.expected, 700);
            assert!(report.ok, "{protocol:?} {reveal:?}: {:?}", report.problems);
        }
    }

    /// A grant's limits: an intersection below the minimum writes nothing on the side that set
    /// it; a peer set above the maximum is refused by the protocol before any output.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grant_limits_refuse_before_any_output() {
        for protocol in PROTOCOLS {
            let dir = tempfile::tempdir().unwrap();
            let (spec_a, spec_b) = specs(dir.path(), 300, 200, 70);
            let (a, b) = (Dataset::load(&spec_a).unwrap(), Dataset::load(&spec_b).unwrap());
            let (out_a, out_b) = (dir.path().join("out/a.csv"), dir.path().join("out/b.csv"));
            for (limits, expect) in [
                (JobLimits { min_aligned_rows: 71, ..JobLimits::default() }, "fewer rows than this node's grant"),
                (JobLimits { max_peer_rows: 199, ..JobLimits::default() }, "more than the 199 agreed"),
            ] {
                let (ca, cb) = memory_pair(16);
                let job_a = PsiJob { protocol, limits, ..job(Role::Requester, Reveal::Both, out_a.clone()) };
                let job_b = PsiJob { protocol, ..job(Role::Responder, Reveal::Both, out_b.clone()) };
                let (ra, _) = tokio::join!(
                    async {
                        let r = run_psi(&ca, &a, &job_a).await;
                        drop(ca);
                        r
                    },
                    run_psi(&cb, &b, &job_b)
                );
                let error = ra.unwrap_err().to_string();
                assert!(error.contains(expect), "{protocol:?}: {error}");
                assert!(!out_a.exists(), "{protocol:?}: no output below the limits");
            }
            // At the limits exactly, the job runs.
            let (ca, cb) = memory_pair(16);
            let limits = JobLimits { min_aligned_rows: 70, max_peer_rows: 200 };
            let job_a = PsiJob { protocol, limits, ..job(Role::Requester, Reveal::Both, out_a.clone()) };
            let job_b = PsiJob { protocol, ..job(Role::Responder, Reveal::Both, out_b.clone()) };
            let (ra, rb) = tokio::join!(run_psi(&ca, &a, &job_a), run_psi(&cb, &b, &job_b));
            assert_eq!((ra.unwrap().intersection, rb.unwrap().intersection), (Some(70), Some(70)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_protocol_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spec_a, _) = specs(dir.path(), 100, 100, 10);
        let a = Dataset::load(&spec_a).unwrap();
        let out = dir.path().join("out/a.csv");
        for protocol in PROTOCOLS {
            let (ca, cb) = memory_pair(4);
            drop(cb);
            let job = PsiJob { protocol, ..job(Role::Requester, Reveal::Both, out.clone()) };
            let err = run_psi(&ca, &a, &job).await.unwrap_err();
            assert!(matches!(err, EngineError::Psi(_)), "{err}");
            assert!(!out.exists());
        }
    }
}
