//! Logistic regression jobs between two nodes: `train` and `score`.
//!
//! The requester is party A (label holder; it gets the intercept, the evaluation and the
//! predictions), the responder party B. Same job stream and rules as PSI jobs (`peer.rs`): the
//! responder checks the dataset's grant for the job kind before any protocol message; each side
//! ends with `JobEnd` or `Abort`, and a side whose peer fails removes its own output. The
//! engine ([`consort_engine::lr`]) runs PSI alignment and the protocol over the job's channel.
//!
//! B writes its model to `DIR/outputs/JOB.model.json` (JOB = the train job's id). A score job
//! names the train job in its parameters; B scores only with a model it trained with the same
//! peer.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use consort_engine::lr::{
    ColumnChoice, LrError, LrParams, ModelFile, ScoreJob, ScoreReport, TrainJob, TrainReport, run_score,
    run_train_with_dealer,
};
use consort_engine::{Dataset, PsiProtocol};
use consort_protocols::mpc::lr::LrProgress;
use consort_protocols::{ChannelError, Metered, Role};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::FRAME_BUFFER;
use crate::config;
use crate::jobs::{self, JobHandle};
use crate::node::NodeState;
use crate::peer::{ANSWER_TIMEOUT, JOB_PROTOCOL_VERSION, connect, load_and_accept, load_dataset, progress_fn};
use crate::proto::peer_frame::Kind;
use crate::proto::{JobEnd, JobReject, JobRequest, JobStatus, LrRequest, PeerFrame};
use crate::tls::{PeerInfo, WireCounters};
use crate::transport::{GrpcChannel, kind_name};

/// Job kinds handled here.
pub const KINDS: &[&str] = &["train", "score"];

/// Parameters of a score job on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreParams {
    /// The train job whose models both sides use.
    model_job: String,
}

/// What the requester's operator asked for.
#[derive(Debug, Clone)]
pub enum LrRequestKind {
    Train { columns: ColumnChoice, params: LrParams, model_out: PathBuf },
    Score { model: Arc<ModelFile>, out: PathBuf },
}

#[derive(Debug, Clone)]
pub struct LrJobParams {
    pub protocol: PsiProtocol,
    pub peer: String,
    pub dataset: String,
    pub peer_dataset: String,
    pub kind: LrRequestKind,
}

impl LrJobParams {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            LrRequestKind::Train { .. } => "train",
            LrRequestKind::Score { .. } => "score",
        }
    }
}

/// B's model file of train job `job_id`.
fn responder_model(dir: &std::path::Path, job_id: &str) -> (PathBuf, String) {
    let rel = format!("{}/{job_id}.model.json", config::OUTPUTS_DIR);
    (dir.join(&rel), rel)
}

fn lr_progress(handle: &Arc<JobHandle>) -> consort_protocols::mpc::lr::LrProgressFn {
    let handle = handle.clone();
    Arc::new(move |p: LrProgress| {
        let stage = match p.loss {
            Some(loss) => format!("epoch {}/{} loss {loss:.4}", p.epoch + 1, p.epochs),
            None => format!("epoch {}/{}", p.epoch + 1, p.epochs),
        };
        handle.stage(&stage, p.batch as u64, p.batches as u64);
    })
}

/// What a failing side tells its peer: nothing about its data or files.
fn abort_reason(e: &LrError) -> String {
    match e {
        LrError::Data(_) => {
            "the peer could not read its data or write its output (its operator sees why in its log)".into()
        }
        other => other.to_string(),
    }
}

// ------------------------------------------------------------------------------------------------
// Requester (party A)
// ------------------------------------------------------------------------------------------------

/// Runs an LR job this node's operator submitted; the job's status records the outcome.
pub async fn request(state: Arc<NodeState>, handle: Arc<JobHandle>, params: LrJobParams) {
    let job_id = handle.status().job_id;
    match request_inner(&state, &handle, &params).await {
        Ok(()) => info!(job = %job_id, "job done"),
        Err(e) => {
            warn!(job = %job_id, "job failed: {e:#}");
            handle.fail(format!("{e:#}"));
        }
    }
}

async fn request_inner(state: &NodeState, handle: &Arc<JobHandle>, params: &LrJobParams) -> Result<()> {
    let kind = params.kind_name();
    let config = state.config();
    let peer = config.peer(&params.peer)?.clone();
    let entry = config.dataset(&params.dataset)?.clone();
    if let Some(refusal) = entry.refusal(&peer.name, kind) {
        bail!("{refusal} (grant it with `consort dataset add ... --grant {}:{kind}`)", peer.name);
    }
    let job_id = handle.status().job_id;
    let wire_params = match &params.kind {
        LrRequestKind::Train { params, .. } => serde_json::to_string(params)?,
        LrRequestKind::Score { model, .. } => {
            if model.peer != peer.name {
                bail!("the model was trained with peer '{}', not '{}'", model.peer, peer.name);
            }
            serde_json::to_string(&ScoreParams { model_job: model.job_id.clone() })?
        }
    };
    let dataset = load_dataset(handle, entry.spec.clone()).await?;
    handle.stage("connect", 0, 0);
    let (mut client, wire) = connect(state, &peer).await?;
    let (tx, rx) = mpsc::channel(FRAME_BUFFER);
    let request = JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: job_id.clone(),
        kind: kind.into(),
        protocol: params.protocol.name().into(),
        dataset: params.peer_dataset.clone(),
        reveal: "both".into(),
        params: wire_params.clone(),
    };
    let request_params = wire_params;
    let datasets = serde_json::json!({"dataset": params.dataset, "peer_dataset": params.peer_dataset});
    tx.send(PeerFrame { kind: Some(Kind::Request(request)) }).await.map_err(|_| anyhow!("job stream closed"))?;
    let inbound = client
        .run_job(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow!("peer '{}' at {} did not take the job: {}", peer.name, peer.addr, s.message()))?
        .into_inner();
    let channel = GrpcChannel::new(tx, inbound);
    match tokio::time::timeout(ANSWER_TIMEOUT, channel.recv_kind()).await {
        Err(_) => bail!("peer '{}' did not answer the job request within {ANSWER_TIMEOUT:?}", peer.name),
        Ok(Ok(Kind::Accept(a))) => handle.update(|s| s.peer_rows = a.rows),
        Ok(Ok(Kind::Reject(r))) => {
            let audited = audited_request(kind, params.protocol.name(), &request_params, &datasets);
            crate::audit::record_request(state, &job_id, "requester", &peer.name, audited, Err(&r.reason)).await?;
            bail!("peer '{}' refused the job: {}", peer.name, r.reason)
        }
        Ok(Ok(other)) => bail!("peer '{}' answered the job request with a {} frame", peer.name, kind_name(&other)),
        Ok(Err(e)) => bail!("peer '{}' dropped the job request: {e}", peer.name),
    }
    let audited = audited_request(kind, params.protocol.name(), &request_params, &datasets);
    crate::audit::record_request(state, &job_id, "requester", &peer.name, audited, Ok(())).await?;
    let dealer = match &params.kind {
        LrRequestKind::Train { params: p, .. } => match &p.dealer {
            Some(name) => {
                handle.stage("connect dealer", 0, 0);
                Some(crate::lr_dealer::connect_dealer(state, name, &job_id, "A", &peer.name).await?)
            }
            None => None,
        },
        _ => None,
    };
    let job = match &params.kind {
        LrRequestKind::Train { columns, params: p, model_out } => EngineJob::Train(Box::new(TrainJob {
            role: Role::Requester,
            psi: params.protocol,
            columns: columns.clone(),
            params: p.clone(),
            model_out: model_out.clone(),
            job_id: job_id.clone(),
            peer: peer.name.clone(),
            psi_progress: Some(progress_fn(handle)),
            progress: Some(lr_progress(handle)),
        })),
        LrRequestKind::Score { model, out } => EngineJob::Score(ScoreJob {
            role: Role::Requester,
            psi: params.protocol,
            model: model.clone(),
            out: Some(out.clone()),
            psi_progress: Some(progress_fn(handle)),
        }),
    };
    run(channel, dealer, &dataset, job, handle, &wire, Role::Requester).await
}

// ------------------------------------------------------------------------------------------------
// Responder (party B)
// ------------------------------------------------------------------------------------------------

/// Admission: version, kind, job id, dataset grant, parameters; for score jobs, the model.
fn admit(state: &NodeState, peer: &str, job: &JobRequest) -> Result<(consort_engine::DatasetSpec, EngineJob), String> {
    if job.version != JOB_PROTOCOL_VERSION {
        return Err(format!(
            "job protocol version {} is not supported (this node speaks {JOB_PROTOCOL_VERSION})",
            job.version
        ));
    }
    let psi: PsiProtocol = job.protocol.parse()?;
    if job.reveal != "both" {
        return Err("LR jobs align with PSI revealed to both".into());
    }
    config::check_name("job id", &job.job_id).map_err(|e| e.to_string())?;
    let config = state.config();
    let entry = config
        .datasets
        .iter()
        .find(|d| d.spec.name == job.dataset)
        .ok_or_else(|| format!("no dataset '{}' is shared with '{peer}'", job.dataset))?;
    if let Some(refusal) = entry.refusal(peer, &job.kind) {
        return Err(refusal);
    }
    let engine_job = match job.kind.as_str() {
        "train" => {
            let params: LrParams =
                serde_json::from_str(&job.params).map_err(|e| format!("bad train parameters: {e}"))?;
            params.config().map_err(|e| e.to_string())?;
            if let Some(dealer) = &params.dealer
                && config.peer(dealer).is_err()
            {
                return Err(format!("this node has not pinned the dealer '{dealer}' the job names"));
            }
            EngineJob::Train(Box::new(TrainJob {
                role: Role::Responder,
                psi,
                columns: ColumnChoice::default(),
                params,
                model_out: responder_model(&state.dir, &job.job_id).0,
                job_id: job.job_id.clone(),
                peer: peer.to_string(),
                psi_progress: None,
                progress: None,
            }))
        }
        "score" => {
            let p: ScoreParams = serde_json::from_str(&job.params).map_err(|e| format!("bad score parameters: {e}"))?;
            config::check_name("model job id", &p.model_job).map_err(|e| e.to_string())?;
            let (path, _) = responder_model(&state.dir, &p.model_job);
            let model = ModelFile::load(&path).map_err(|_| format!("no model of train job {} here", p.model_job))?;
            if model.peer != peer {
                return Err(format!("the model of train job {} was not trained with '{peer}'", p.model_job));
            }
            EngineJob::Score(ScoreJob {
                role: Role::Responder,
                psi,
                model: Arc::new(model),
                out: None,
                psi_progress: None,
            })
        }
        other => return Err(format!("unknown job kind '{other}'")),
    };
    Ok((entry.spec.clone(), engine_job))
}

pub async fn respond(state: Arc<NodeState>, peer: PeerInfo, job: JobRequest, channel: GrpcChannel) {
    let admitted = admit(&state, &peer.name, &job);
    let request = audited_request(&job.kind, &job.protocol, &job.params, &serde_json::json!({"dataset": job.dataset}));
    let decision = admitted.as_ref().map(|_| ()).map_err(String::as_str);
    if !crate::peer::record_request_or_reject(&state, &peer, &job, request, decision, &channel).await {
        return;
    }
    let (spec, mut engine_job) = match admitted {
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
        protocol: job.protocol.clone(),
        role: "responder".into(),
        peer: peer.name.clone(),
        dataset: spec.name.clone(),
        reveal: job.reveal.clone(),
        state: jobs::PENDING.into(),
        ..Default::default()
    };
    let Some(handle) = state.jobs.insert(status) else {
        let reason = format!("job id {} is already in use here", job.job_id);
        let _ = channel.send_kind(Kind::Reject(JobReject { reason })).await;
        return;
    };
    info!(peer = %peer.name, job = %job.job_id, dataset = %spec.name, kind = %job.kind, "accepted job request");
    match &mut engine_job {
        EngineJob::Train(t) => {
            t.psi_progress = Some(progress_fn(&handle));
            t.progress = Some(lr_progress(&handle));
        }
        EngineJob::Score(s) => s.psi_progress = Some(progress_fn(&handle)),
    }
    let Some(dataset) = load_and_accept(&handle, spec, &job, &channel).await else { return };
    let dealer = match &engine_job {
        EngineJob::Train(t) if t.params.dealer.is_some() => {
            let name = t.params.dealer.as_deref().unwrap_or_default();
            match crate::lr_dealer::connect_dealer(&state, name, &job.job_id, "B", &peer.name).await {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!(job = %job.job_id, "{e:#}");
                    channel.abort("the responder could not reach the dealer").await;
                    handle.fail(format!("{e:#}"));
                    return;
                }
            }
        }
        _ => None,
    };
    match run(channel, dealer, &dataset, engine_job, &handle, &peer.wire, Role::Responder).await {
        Ok(()) => info!(job = %job.job_id, "job done"),
        Err(e) => {
            warn!(job = %job.job_id, "job failed: {e:#}");
            handle.fail(format!("{e:#}"));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Both sides
// ------------------------------------------------------------------------------------------------

enum EngineJob {
    /// Boxed: a train job's parameters make it several times larger than a score job.
    Train(Box<TrainJob>),
    Score(ScoreJob),
}

enum EngineReport {
    Train(TrainReport),
    Score(ScoreReport),
}

impl EngineReport {
    fn output(&self) -> Option<PathBuf> {
        match self {
            EngineReport::Train(r) => Some(r.model.clone()),
            EngineReport::Score(r) => r.output.clone(),
        }
    }

    fn stages(&self) -> &[(String, f64)] {
        match self {
            EngineReport::Train(r) => &r.stages,
            EngineReport::Score(r) => &r.stages,
        }
    }
}

/// Runs the engine job and the end-of-job exchange on an accepted job stream.
async fn run(
    channel: GrpcChannel,
    dealer: Option<GrpcChannel>,
    dataset: &Dataset,
    job: EngineJob,
    handle: &JobHandle,
    wire: &WireCounters,
    role: Role,
) -> Result<()> {
    let channel = Metered::new(channel);
    let result = match &job {
        EngineJob::Train(t) => {
            run_train_with_dealer(&channel, dealer.as_ref(), dataset, t).await.map(EngineReport::Train)
        }
        EngineJob::Score(s) => run_score(&channel, dataset, s).await.map(EngineReport::Score),
    };
    drop(dealer);
    handle.record_stats(&channel.stats(), wire.get());
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            channel.inner().abort(&abort_reason(&e)).await;
            return Err(e.into());
        }
    };
    for (name, secs) in report.stages() {
        handle.add_stage(name, *secs);
    }
    let (summary, rows, aligned) = match &report {
        EngineReport::Train(r) => (serde_json::to_string(r)?, r.local_rows, r.aligned_rows),
        EngineReport::Score(r) => (serde_json::to_string(r)?, r.local_rows, r.aligned_rows),
    };
    let output = report.output();
    let rel_output = output.as_ref().map(|p| relative_output(p, handle)).unwrap_or_default();
    handle.update(|s| {
        s.summary = summary;
        s.local_rows = rows;
        s.has_intersection = true;
        s.intersection = aligned;
        s.output = output.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        s.output_rows = if output.is_some() { aligned } else { 0 };
    });
    let end = JobEnd { output_rows: if output.is_some() { aligned } else { 0 }, output: rel_output };
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
            if role == Role::Requester {
                let _ = tokio::time::timeout(ANSWER_TIMEOUT, channel.inner().recv_kind()).await;
            }
            handle.record_stats(&channel.stats(), wire.get());
            handle.update(|s| s.peer_output = end.output);
            handle.finish();
            Ok(())
        }
        Err(e) => {
            // A job either completes on both sides or leaves no output behind.
            if let Some(out) = &output {
                let _ = std::fs::remove_file(out);
            }
            Err(e)
        }
    }
}

/// An LR job request as the audit log records it: kind, PSI protocol, the datasets (this node's
/// and, for the requester, the peer's) and the job's parameters (hyper-parameters, or the model's
/// train job for scoring) as sent.
fn audited_request(kind: &str, protocol: &str, params: &str, datasets: &serde_json::Value) -> serde_json::Value {
    let params: serde_json::Value = serde_json::from_str(params).unwrap_or_else(|_| params.into());
    let mut request = serde_json::json!({"kind": kind, "protocol": protocol, "parameters": params});
    if let (serde_json::Value::Object(r), serde_json::Value::Object(d)) = (&mut request, datasets) {
        r.extend(d.clone());
    }
    request
}

/// The output path as the peer sees it: relative to the node directory for responder outputs.
fn relative_output(path: &std::path::Path, handle: &JobHandle) -> String {
    let s = handle.status();
    if s.role == "responder" {
        let rel = format!("{}/{}.model.json", config::OUTPUTS_DIR, s.job_id);
        if path.ends_with(&rel) {
            return rel;
        }
    }
    path.display().to_string()
}

/// The control service's `SubmitLr`: checks the request, registers the job and starts it.
pub fn submit(state: &Arc<NodeState>, r: LrRequest) -> Result<String, tonic::Status> {
    use tonic::Status;
    let config = state.config();
    config.peer(&r.peer).map_err(|e| Status::failed_precondition(e.to_string()))?;
    let entry = config.dataset(&r.dataset).map_err(|e| Status::failed_precondition(e.to_string()))?;
    if !KINDS.contains(&r.kind.as_str()) {
        return Err(Status::invalid_argument(format!("unknown LR job kind '{}'", r.kind)));
    }
    if let Some(refusal) = entry.refusal(&r.peer, &r.kind) {
        return Err(Status::permission_denied(format!(
            "{refusal} (grant it with `consort dataset add ... --grant {}:psi,train,score`)",
            r.peer
        )));
    }
    let absolute = |p: &str, what: &str| -> Result<PathBuf, Status> {
        let p = PathBuf::from(p);
        if p.is_absolute() { Ok(p) } else { Err(Status::invalid_argument(format!("the {what} path must be absolute"))) }
    };
    let kind = match r.kind.as_str() {
        "train" => {
            let params: LrParams = serde_json::from_str(&r.params)
                .map_err(|e| Status::invalid_argument(format!("bad train parameters: {e}")))?;
            params.config().map_err(|e| Status::invalid_argument(e.to_string()))?;
            if let Some(dealer) = &params.dealer
                && config.peer(dealer).is_err()
            {
                return Err(Status::failed_precondition(format!(
                    "no pinned dealer node '{dealer}' (pin it with `consort peer add`)"
                )));
            }
            if r.label.is_empty() {
                return Err(Status::invalid_argument("a train job needs the label column"));
            }
            let features = if r.features.is_empty() { None } else { Some(r.features.clone()) };
            let columns = ColumnChoice { label: Some(r.label.clone()), features };
            LrRequestKind::Train { columns, params, model_out: absolute(&r.model, "model")? }
        }
        _ => {
            let path = absolute(&r.model, "model")?;
            let model = ModelFile::load(&path).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if model.party != "A" {
                return Err(Status::invalid_argument("score with party A's model (the one with the intercept)"));
            }
            LrRequestKind::Score { model: Arc::new(model), out: absolute(&r.out, "output")? }
        }
    };
    let protocol: PsiProtocol =
        if r.protocol.is_empty() { PsiProtocol::Ecdh } else { r.protocol.parse().map_err(Status::invalid_argument)? };
    let job_id = jobs::new_job_id();
    let status = JobStatus {
        job_id: job_id.clone(),
        kind: r.kind.clone(),
        protocol: protocol.name().into(),
        role: "requester".into(),
        peer: r.peer.clone(),
        dataset: r.dataset.clone(),
        reveal: "both".into(),
        state: jobs::PENDING.into(),
        ..Default::default()
    };
    let handle = state.jobs.insert(status).ok_or_else(|| Status::internal("job id collision"))?;
    let params = LrJobParams { protocol, peer: r.peer, dataset: r.dataset, peer_dataset: r.peer_dataset, kind };
    state.spawn_job(request(state.clone(), handle, params));
    Ok(job_id)
}
