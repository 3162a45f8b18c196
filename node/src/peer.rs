//! Jobs between two nodes: the peer service (responder side) and the requester side.
//!
//! Order of events on the job stream: the requester sends `JobRequest`; the responder identifies the
//! requester by its pinned TLS certificate, checks the dataset's grants and loads the dataset, and
//! only then answers `JobAccept` (or `JobReject`, before any protocol message). Protocol frames then
//! flow both ways as `data`; each side ends with `JobEnd` (where it wrote its output) or `Abort`.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use consort_engine::{Dataset, DatasetSpec, EngineError, PsiJob, PsiProtocol, run_psi_owned};
use consort_protocols::{ChannelError, Metered, Reveal, Role, cpu};
use futures::{Stream, StreamExt};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::config::{self, PeerEntry};
use crate::jobs::{self, JobHandle};
use crate::node::{CONNECTION_WINDOW, NodeState, STREAM_WINDOW};
use crate::proto::peer_client::PeerClient;
use crate::proto::peer_frame::Kind;
use crate::proto::{JobAccept, JobEnd, JobReject, JobRequest, JobStatus, PeerFrame};
use crate::tls::{self, Counting, PeerInfo, WireCounters};
use crate::transport::{GrpcChannel, kind_name};
use crate::{FRAME_BUFFER, MAX_MESSAGE_BYTES, identity};

/// Version of the job-level exchange; bumped on incompatible changes.
pub const JOB_PROTOCOL_VERSION: u32 = 1;

/// How long a node waits for the peer's first answer or final `JobEnd`. The first answer comes
/// after the responder has loaded and validated its dataset, and the `JobEnd` after the peer has
/// written its output: at 10^8 rows each takes a minute or more on a loaded 2-core machine, so
/// this is generous. A peer that goes away is noticed at once (the stream closes); the timeout
/// only catches a peer that stays connected and never answers.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What the requester's operator asked for.
#[derive(Debug, Clone)]
pub struct PsiParams {
    pub peer: String,
    pub dataset: String,
    pub peer_dataset: String,
    pub protocol: PsiProtocol,
    pub reveal: Reveal,
    /// Absolute output path; `None` for DIR/outputs/JOB-DATASET.csv.
    pub out: Option<PathBuf>,
}

pub fn reveal_name(r: Reveal) -> &'static str {
    match r {
        Reveal::Both => "both",
        Reveal::RequesterOnly => "self",
    }
}

pub fn parse_reveal(s: &str) -> Result<Reveal, String> {
    match s {
        "both" => Ok(Reveal::Both),
        "self" => Ok(Reveal::RequesterOnly),
        other => Err(format!("unknown reveal mode '{other}' (known: both, self)")),
    }
}

pub(crate) fn default_output(dir: &Path, job_id: &str, dataset: &str) -> (PathBuf, String) {
    let rel = format!("{}/{job_id}-{dataset}.csv", config::OUTPUTS_DIR);
    (dir.join(&rel), rel)
}

// ------------------------------------------------------------------------------------------------
// Responder
// ------------------------------------------------------------------------------------------------

pub struct PeerService {
    state: Arc<NodeState>,
}

impl PeerService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<PeerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl crate::proto::peer_server::Peer for PeerService {
    type RunJobStream = FrameStream;

    async fn run_job(&self, request: Request<Streaming<PeerFrame>>) -> Result<Response<FrameStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("connection has no pinned peer identity"))?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(ANSWER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no job request received"))??;
        let Some(PeerFrame { kind: Some(Kind::Request(job)) }) = first else {
            return Err(Status::invalid_argument("the first frame of a job must be a job request"));
        };
        let (tx, rx) = mpsc::channel(FRAME_BUFFER);
        let state = self.state.clone();
        self.state.spawn_job(async move {
            let channel = GrpcChannel::new(tx, inbound);
            respond(state, peer, job, channel).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

/// The policy decision on a job request: the dataset and job parameters, or why not.
fn admit(state: &NodeState, peer: &str, job: &JobRequest) -> Result<(DatasetSpec, PsiProtocol, Reveal), String> {
    if job.version != JOB_PROTOCOL_VERSION {
        return Err(format!(
            "job protocol version {} is not supported (this node speaks {JOB_PROTOCOL_VERSION})",
            job.version
        ));
    }
    if job.kind != "psi" {
        return Err(format!("unknown job kind '{}'", job.kind));
    }
    let protocol: PsiProtocol = job.protocol.parse()?;
    let reveal = parse_reveal(&job.reveal)?;
    config::check_name("job id", &job.job_id).map_err(|e| e.to_string())?;
    let config = state.config();
    let entry = config
        .datasets
        .iter()
        .find(|d| d.spec.name == job.dataset)
        .ok_or_else(|| format!("no dataset '{}' is shared with '{peer}'", job.dataset))?;
    if let Some(refusal) = entry.refusal(peer, &job.kind) {
        // Same answer as for a missing dataset would leak less, but operators need to see why.
        return Err(refusal);
    }
    Ok((entry.spec.clone(), protocol, reveal))
}

/// Logs a responder's job request and grant decision; if the log cannot take them, rejects the
/// job (a node runs no job it cannot account for) and returns `false`.
pub(crate) async fn record_request_or_reject(
    state: &NodeState,
    peer: &PeerInfo,
    job: &JobRequest,
    request: serde_json::Value,
    decision: Result<(), &str>,
    channel: &GrpcChannel,
) -> bool {
    let Err(e) = crate::audit::record_request(state, &job.job_id, "responder", &peer.name, request, decision).await
    else {
        return true;
    };
    warn!(job = %job.job_id, "cannot record the job request in the audit log: {e:#}");
    let reason = "the responder cannot record the job in its audit log".to_string();
    let _ = channel.send_kind(Kind::Reject(JobReject { reason })).await;
    false
}

async fn respond(state: Arc<NodeState>, peer: PeerInfo, job: JobRequest, channel: GrpcChannel) {
    if crate::lr_job::KINDS.contains(&job.kind.as_str()) {
        return crate::lr_job::respond(state, peer, job, channel).await;
    }
    if job.kind == crate::lr_dealer::KIND {
        return crate::lr_dealer::respond(state, peer, job, channel).await;
    }
    let admitted = admit(&state, &peer.name, &job);
    let request =
        serde_json::json!({"kind": job.kind, "protocol": job.protocol, "dataset": job.dataset, "reveal": job.reveal});
    let decision = admitted.as_ref().map(|_| ()).map_err(String::as_str);
    if !record_request_or_reject(&state, &peer, &job, request, decision, &channel).await {
        return;
    }
    let (spec, protocol, reveal) = match admitted {
        Ok(admitted) => admitted,
        Err(reason) => {
            warn!(peer = %peer.name, job = %job.job_id, dataset = %job.dataset, "refused job: {reason}");
            let _ = channel.send_kind(Kind::Reject(JobReject { reason })).await;
            return;
        }
    };
    let status = JobStatus {
        job_id: job.job_id.clone(),
        kind: job.kind.clone(),
        protocol: protocol.name().into(),
        role: "responder".into(),
        peer: peer.name.clone(),
        dataset: spec.name.clone(),
        reveal: job.reveal.clone(),
        state: jobs::PENDING.into(),
        ..Default::default()
    };
    let Some(handle) = state.jobs.insert(status) else {
        let _ = channel
            .send_kind(Kind::Reject(JobReject { reason: format!("job id {} is already in use here", job.job_id) }))
            .await;
        return;
    };
    info!(peer = %peer.name, job = %job.job_id, dataset = %spec.name, protocol = protocol.name(), reveal = %job.reveal, "accepted job request");
    let Some(dataset) = load_and_accept(&handle, spec, &job, &channel).await else { return };
    let (out, rel) = default_output(&state.dir, &job.job_id, &dataset.spec.name);
    let psi = PsiJob {
        protocol,
        role: Role::Responder,
        reveal,
        output: Some(out),
        progress: Some(progress_fn(&handle)),
        proofs: crate::audit::proofs_enabled(),
    };
    match run_job(channel, dataset, psi, &handle, &peer.wire, rel).await {
        Ok(()) => info!(job = %job.job_id, "job done"),
        Err(e) => {
            warn!(job = %job.job_id, "job failed: {e:#}");
            handle.fail(format!("{e:#}"));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Requester
// ------------------------------------------------------------------------------------------------

/// Runs a PSI job this node's operator submitted; the job's status records the outcome.
pub async fn request_psi(state: Arc<NodeState>, handle: Arc<JobHandle>, params: PsiParams) {
    let job_id = handle.status().job_id;
    match request_psi_inner(&state, &handle, &params).await {
        Ok(()) => info!(job = %job_id, "job done"),
        Err(e) => {
            warn!(job = %job_id, "job failed: {e:#}");
            handle.fail(format!("{e:#}"));
        }
    }
}

async fn request_psi_inner(state: &NodeState, handle: &Arc<JobHandle>, params: &PsiParams) -> Result<()> {
    let config = state.config();
    let peer = config.peer(&params.peer)?.clone();
    let entry = config.dataset(&params.dataset)?.clone();
    if let Some(refusal) = entry.refusal(&peer.name, "psi") {
        bail!("{refusal} (grant it with `consort dataset add ... --grant {}`)", peer.name);
    }
    let job_id = handle.status().job_id;
    let dataset = load_dataset(handle, entry.spec.clone()).await?;

    handle.stage("connect", 0, 0);
    let (mut client, wire) = connect(state, &peer).await?;
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    let request = JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: job_id.clone(),
        kind: "psi".into(),
        protocol: params.protocol.name().into(),
        dataset: params.peer_dataset.clone(),
        reveal: reveal_name(params.reveal).into(),
        params: String::new(),
    };
    tx.send(PeerFrame { kind: Some(Kind::Request(request)) }).await.map_err(|_| anyhow!("job stream closed"))?;
    let inbound = client
        .run_job(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow!("peer '{}' at {} did not take the job: {} (is this node's certificate pinned there with `consort peer add`?)", peer.name, peer.addr, s.message()))?
        .into_inner();
    let channel = GrpcChannel::new(tx, inbound);
    match tokio::time::timeout(ANSWER_TIMEOUT, channel.recv_kind()).await {
        Err(_) => bail!("peer '{}' did not answer the job request within {ANSWER_TIMEOUT:?}", peer.name),
        Ok(Ok(Kind::Accept(a))) => handle.update(|s| s.peer_rows = a.rows),
        Ok(Ok(Kind::Reject(r))) => {
            crate::audit::record_request(state, &job_id, "requester", &peer.name, audited(params), Err(&r.reason))
                .await?;
            bail!("peer '{}' refused the job: {}", peer.name, r.reason)
        }
        Ok(Ok(other)) => bail!("peer '{}' answered the job request with a {} frame", peer.name, kind_name(&other)),
        Ok(Err(e)) => bail!(
            "peer '{}' dropped the job request: {e} (is this node's certificate pinned there with `consort peer add`?)",
            peer.name
        ),
    }
    crate::audit::record_request(state, &job_id, "requester", &peer.name, audited(params), Ok(())).await?;
    let (out, rel) = match &params.out {
        Some(p) => (p.clone(), p.display().to_string()),
        None => default_output(&state.dir, &job_id, &params.dataset),
    };
    let psi = PsiJob {
        protocol: params.protocol,
        role: Role::Requester,
        reveal: params.reveal,
        output: Some(out),
        progress: Some(progress_fn(handle)),
        proofs: crate::audit::proofs_enabled(),
    };
    run_job(channel, dataset, psi, handle, &wire, rel).await
}

/// The request's parameters as the audit log records them.
fn audited(params: &PsiParams) -> serde_json::Value {
    serde_json::json!({
        "kind": "psi",
        "protocol": params.protocol.name(),
        "dataset": params.dataset,
        "peer_dataset": params.peer_dataset,
        "reveal": reveal_name(params.reveal),
    })
}

/// Opens a TLS 1.3 connection to a pinned peer (a new connection per job, so its byte counts are the
/// job's).
pub(crate) async fn connect(
    state: &NodeState,
    peer: &PeerEntry,
) -> Result<(PeerClient<tonic::transport::Channel>, Arc<WireCounters>)> {
    let peer_cert = identity::read_cert(&state.dir.join(&peer.cert))?;
    let tls = tls::client_config(state.cert.clone(), state.key(), peer_cert)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let server_name = ServerName::try_from(identity::tls_server_name(&peer.name)).context("invalid peer name")?;
    let wire = Arc::new(WireCounters::default());
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", peer.addr))
        .with_context(|| format!("invalid address '{}' for peer '{}'", peer.addr, peer.name))?
        .connect_timeout(Duration::from_secs(10))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .tcp_nodelay(true);
    let (addr, counters) = (peer.addr.clone(), wire.clone());
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, server_name, addr, counters) =
                (connector.clone(), server_name.clone(), addr.clone(), counters.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let stream = connector.connect(server_name, Counting::new(tcp, counters)).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| anyhow!("cannot connect to peer '{}' at {}: {}", peer.name, peer.addr, error_chain(&e)))?;
    let client = PeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok((client, wire))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

// ------------------------------------------------------------------------------------------------
// Both sides
// ------------------------------------------------------------------------------------------------

/// The responder's last step before a job starts: loads and validates the dataset, then answers
/// `JobAccept`, or `JobReject` (and fails the job) if the dataset cannot be loaded. `None` when the
/// job cannot go on.
pub(crate) async fn load_and_accept(
    handle: &JobHandle,
    spec: DatasetSpec,
    job: &JobRequest,
    channel: &GrpcChannel,
) -> Option<Dataset> {
    let dataset = match load_dataset(handle, spec).await {
        Ok(d) => d,
        Err(e) => {
            warn!(job = %job.job_id, "{e:#}");
            let reason =
                format!("the responder could not load dataset '{}' (its operator sees why in its log)", job.dataset);
            let _ = channel.send_kind(Kind::Reject(JobReject { reason })).await;
            handle.fail(format!("{e:#}"));
            return None;
        }
    };
    if channel.send_kind(Kind::Accept(JobAccept { rows: dataset.len() as u64 })).await.is_err() {
        handle.fail("the requester went away before the job started".into());
        return None;
    }
    Some(dataset)
}

pub(crate) async fn load_dataset(handle: &JobHandle, spec: DatasetSpec) -> Result<Dataset> {
    handle.stage("load dataset", 0, 0);
    let started = Instant::now();
    let name = spec.name.clone();
    let dataset = cpu::run(move || Dataset::load(&spec)).await.with_context(|| format!("dataset '{name}'"))?;
    handle.add_stage("load", started.elapsed().as_secs_f64());
    handle.update(|s| s.local_rows = dataset.len() as u64);
    Ok(dataset)
}

pub(crate) fn progress_fn(handle: &Arc<JobHandle>) -> consort_protocols::ProgressFn {
    let handle = handle.clone();
    Arc::new(move |p| handle.progress(p))
}

/// What a failing side tells its peer: enough to act on, nothing about its data or files.
fn abort_reason(e: &EngineError) -> String {
    match e {
        EngineError::Data(_) => "the peer could not write its output (its operator sees why in its log)".into(),
        other => other.to_string(),
    }
}

/// Runs the protocol and the end-of-job exchange on an accepted job stream.
async fn run_job(
    channel: GrpcChannel,
    dataset: Dataset,
    psi: PsiJob,
    handle: &JobHandle,
    wire: &WireCounters,
    rel_output: String,
) -> Result<()> {
    if let Err(e) = crate::audit::record_start(handle, &dataset).await {
        channel.abort("the peer cannot record the job in its audit log").await;
        return Err(e);
    }
    let channel = Metered::new(channel);
    let mut result = run_psi_owned(&channel, dataset, &psi).await;
    handle.record_stats(&channel.stats(), wire.get());
    let recorded = crate::audit::record_run(handle, &channel.stats(), result.as_mut().ok()).await;
    let report = match (result, recorded) {
        (Ok(r), Ok(())) => r,
        (Err(e), _) => {
            channel.inner().abort(&abort_reason(&e)).await;
            return Err(e.into());
        }
        (Ok(r), Err(e)) => {
            if let Some(out) = &r.output {
                let _ = std::fs::remove_file(out);
            }
            channel.inner().abort("the peer cannot record the job in its audit log").await;
            return Err(e);
        }
    };
    for (name, secs) in &report.stages {
        handle.add_stage(name, *secs);
    }
    let output_rows = report.intersection.filter(|_| report.output.is_some()).unwrap_or(0);
    handle.update(|s| {
        s.local_rows = report.local_rows;
        s.peer_rows = report.peer_rows;
        s.has_intersection = report.intersection.is_some();
        s.intersection = report.intersection.unwrap_or(0);
        s.output = report.output.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        s.output_rows = output_rows;
    });
    let end = JobEnd { output_rows, output: if report.output.is_some() { rel_output } else { String::new() } };
    channel.inner().send_kind(Kind::End(end)).await.context("the peer went away before the job ended")?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, channel.inner().recv_kind()).await;
    let peer_end = match answer {
        Ok(Ok(Kind::End(end))) => Ok(end),
        Ok(Ok(other)) => Err(anyhow!("the peer sent a {} frame instead of ending the job", kind_name(&other))),
        Ok(Err(ChannelError::Aborted(reason))) => Err(anyhow!("the peer failed at the end of the job: {reason}")),
        Ok(Err(e)) => Err(anyhow!("the peer did not end the job: {e}")),
        Err(_) => Err(anyhow!("the peer did not end the job within {ANSWER_TIMEOUT:?}")),
    };
    match peer_end {
        Ok(end) => {
            if psi.role == Role::Requester {
                // Our JobEnd may still sit in a buffer: wait until the responder, having read it,
                // closes its side, so dropping the connection cannot cut it off.
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, channel.inner().recv_kind()).await;
            }
            handle.record_stats(&channel.stats(), wire.get());
            handle.update(|s| s.peer_output = end.output);
            handle.finish();
            Ok(())
        }
        Err(e) => {
            // A job either completes on both sides or leaves no output behind.
            if let Some(out) = &report.output {
                let _ = std::fs::remove_file(out);
            }
            Err(e)
        }
    }
}
