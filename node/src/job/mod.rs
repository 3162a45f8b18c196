//! Jobs between nodes: one envelope ([`envelope`]) for every job kind, the kinds themselves (one
//! module each), the job stream ([`channel`]), connections to peers ([`connect`]), the peer
//! service ([`service`]) and the persisted job table ([`table`]).
//!
//! A job kind is a [`Kind`]: it turns a request (the operator's on the requester, the peer's on the
//! responder) into a typed, validated [`Job`], and a `Job` runs its protocol over the job channel
//! and says what it wrote. Everything else — the request/accept/reject handshake, grants, id reuse,
//! the job table, dataset loading, audit entries (request, grant, start, transcript, proofs,
//! output, end/failure), the end exchange and the rollback of outputs when either side fails — is
//! the envelope's, written once.
//!
//! Adding a job kind: a module here implementing [`Kind`] and [`Job`], a line in [`KINDS`], and
//! its value in the `JobKind` enum of `api/proto/consort.proto`.

pub mod bin;
pub mod channel;
pub mod connect;
pub mod deal;
pub mod envelope;
pub mod psi;
mod record;
pub mod resume;
pub mod score;
pub mod secureboost;
pub mod service;
pub mod shards;
#[cfg(test)]
mod tests;
pub mod train;
pub mod unbalanced;
#[cfg(test)]
mod wire_tests;

use std::path::PathBuf;
use std::sync::Arc;

use consort_api::JobKind;
use consort_engine::audit::EcdhEvidence;
use consort_engine::{Dataset, PsiProtocol};
use consort_protocols::{ChannelStats, Metered, Reveal, Role};

pub use crate::table::{JobHandle, JobTable};
pub use channel::JobChannel;

use crate::state::NodeState;

/// Every job kind this node runs.
pub static KINDS: &[&dyn Kind] = &[
    &psi::Psi,
    &train::Train,
    &score::Score,
    &deal::Deal,
    &secureboost::SbTrain,
    &secureboost::SbScore,
    &bin::Bin,
    &unbalanced::PsiFetch,
    &unbalanced::PsiQuery,
];

pub fn kind(k: JobKind) -> Option<&'static dyn Kind> {
    KINDS.iter().copied().find(|x| x.kind() == k)
}

/// A job request as either side sees it, with the vocabulary already typed.
#[derive(Debug, Clone)]
pub struct Ask {
    pub kind: JobKind,
    /// This node's role in the job.
    pub role: Role,
    pub job_id: String,
    /// The other node (the requester's choice, or the responder's pinned name for the caller).
    pub peer: String,
    /// This node's dataset ("" for kinds without one).
    pub dataset: String,
    /// The other node's dataset (known to the requester; "" on the responder).
    pub peer_dataset: String,
    /// `None` where the request did not say (the kind picks its default or refuses).
    pub protocol: Option<PsiProtocol>,
    pub reveal: Option<Reveal>,
    /// The requester's output path (absolute), if its operator chose one.
    pub out: Option<PathBuf>,
    /// The kind's own parameters (JSON): the operator's on the requester, the peer's wire
    /// parameters on the responder.
    pub params: String,
}

/// A job kind.
pub trait Kind: Send + Sync {
    fn kind(&self) -> JobKind;

    /// Whether jobs of this kind use a dataset of each node (granted per peer and kind).
    fn uses_dataset(&self) -> bool {
        true
    }

    /// Whether the requester names a dataset of its own (granted to the peer), when the kind
    /// uses datasets; `false`: only the responder's (an unbalanced PSI fetch).
    fn requester_dataset(&self) -> bool {
        true
    }

    /// Validates a request (after the envelope checked the dataset's grant) and types its
    /// parameters; the refusal is told to the operator or the peer, so it names no file path and
    /// no data value.
    fn plan(&self, state: &NodeState, ask: &Ask) -> Result<Box<dyn Job>, String>;
}

/// One planned job of some kind on this node.
#[tonic::async_trait]
pub trait Job: Send + Sync {
    /// The PSI (protocol, reveal mode) the job runs or aligns its rows with, if any (for the
    /// request and the job table).
    fn psi(&self) -> Option<(PsiProtocol, Reveal)>;

    /// The parameters the requester sends the responder (JSON, validated there by `plan`).
    fn wire_params(&self) -> String;

    /// The parameters as the audit log records them.
    fn audited(&self) -> serde_json::Value;

    /// The dealer node the job uses, if any (checked against the grant's dealer allow-list).
    fn dealer(&self) -> Option<&str> {
        None
    }

    /// Columns of the responder's dataset the job hands the requester (payload PSI joins): the
    /// responder's grant must share each ([`crate::policy::check`]).
    fn shared_columns(&self) -> &[String] {
        &[]
    }

    /// SecureBoost train jobs: the split nodes the job may grow, trees × (2^max_depth − 1)
    /// (checked against the responder's `Grant::max_split_nodes`).
    fn split_nodes(&self) -> Option<u64> {
        None
    }

    /// Whether the job streams its dataset from disk (RR22 PSI, `consort_engine::psi_stream`):
    /// the envelope then only validates and counts the rows instead of loading them.
    fn streams(&self) -> bool {
        false
    }

    /// Whether the envelope loads this side's dataset for the job (its grant is checked either
    /// way): `false` for a side that works from other files (an unbalanced PSI list owner).
    fn loads_dataset(&self) -> bool {
        true
    }

    /// Runs the job's protocol over the job channel and writes this node's outputs.
    async fn run(self: Box<Self>, ctx: RunCtx<'_>) -> Result<Outcome, Failure>;
}

/// What a running job gets from the envelope.
pub struct RunCtx<'a> {
    pub state: &'a Arc<NodeState>,
    pub handle: &'a Arc<JobHandle>,
    pub channel: Arc<Metered<JobChannel>>,
    /// This node's dataset, loaded and validated (kinds without one get `None`).
    pub dataset: Option<Dataset>,
    /// This node's dataset, validated and counted, for a job that streams it ([`Job::streams`]).
    pub stream: Option<consort_engine::psi_stream::StreamInput>,
    pub ask: &'a Ask,
    /// The bounds this node's grant puts on the job: the peer's declared set size (its protocol
    /// hello may not announce more) and the fewest aligned rows.
    pub limits: consort_engine::JobLimits,
}

/// Records, before a job writes it, where its output goes: a node killed before the job ends
/// removes that file (if written after the job began) when it starts again.
pub async fn will_write(handle: &JobHandle, path: &std::path::Path) {
    let shown = path.display().to_string();
    handle.update(|s| s.output_target = shown);
    if let Err(e) = handle.persist().await {
        tracing::warn!(job = %handle.id(), "cannot record the job's output path: {e:#}");
    }
}

/// A file a job wrote, committed in the audit log and removed if the job fails on either side.
#[derive(Debug, Clone)]
pub struct Output {
    pub path: PathBuf,
    /// As the peer is told (relative to the node directory for default outputs).
    pub shown: String,
    pub rows: u64,
}

/// What a job did.
#[derive(Default)]
pub struct Outcome {
    pub output: Option<Output>,
    pub local_rows: u64,
    pub peer_rows: u64,
    /// Intersection (aligned rows) size, if this node learns it.
    pub intersection: Option<u64>,
    /// Wall seconds per stage.
    pub stages: Vec<(String, f64)>,
    /// Kind-specific results (JSON) for the job status.
    pub summary: String,
    /// ECDH-PSI proofs of the job (its PSI or its alignment), for the audit log.
    pub ecdh_evidence: Option<EcdhEvidence>,
    /// Other channels the job used (e.g. to a dealer), by name, for the audit log.
    pub other_channels: Vec<(String, ChannelStats)>,
}

impl Outcome {
    /// A scoring job's outcome: rows aligned by PSI, the predictions file if this side wrote one
    /// (`rows` = `[local, peer, aligned]`), no other channel.
    pub fn scored(
        output: Option<PathBuf>,
        rows: [u64; 3],
        stages: Vec<(String, f64)>,
        summary: String,
        ecdh_evidence: Option<EcdhEvidence>,
    ) -> Outcome {
        let [local_rows, peer_rows, aligned] = rows;
        Outcome {
            output: output.map(|path| Output { shown: path.display().to_string(), path, rows: aligned }),
            local_rows,
            peer_rows,
            intersection: Some(aligned),
            stages,
            summary,
            ecdh_evidence,
            other_channels: Vec::new(),
        }
    }
}

/// Why a job failed: the full story for this node's job record and stderr, and what may leave the
/// node — the text the peer is told and the audit log records. The latter never holds a data value
/// or a file path (issue 11: evidence and messages to the peer name the kind of error only).
#[derive(Debug)]
pub struct Failure {
    pub local: anyhow::Error,
    pub peer: String,
}

impl Failure {
    /// A failure whose message is safe to tell the peer as it is (a protocol or peer error).
    pub fn shared(e: impl Into<anyhow::Error>) -> Failure {
        let local = e.into();
        Failure { peer: envelope::bounded(format!("{local:#}")), local }
    }

    /// A failure in this node's own data or files: the peer hears only that it happened.
    pub fn private(e: impl Into<anyhow::Error>) -> Failure {
        Failure::context("the peer could not read its data or write its output (its operator sees why in its log)", e)
    }

    /// A failure told to the peer and the audit log only as `what`.
    pub fn context(what: &str, e: impl Into<anyhow::Error>) -> Failure {
        Failure { local: e.into(), peer: what.to_string() }
    }
}

impl From<anyhow::Error> for Failure {
    /// Errors of the envelope itself (peer answers, timeouts): they quote the peer, never data.
    fn from(e: anyhow::Error) -> Failure {
        Failure::shared(e)
    }
}
