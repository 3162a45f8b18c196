//! The job envelope: the one flow every job kind goes through, on both sides.
//!
//! ```text
//! requester                                   responder
//! submit: kind.plan, own grant, table         ─ JobRequest ─▶  structure (version, id, sizes)
//!   load dataset, connect                                       id never seen here (else refuse, log nothing)
//!                                                               grant, kind.plan  → log request + grant
//!                                             ◀─ JobReject ─   refused: state `refused`, stop
//!                                             ◀─ JobAccept ─   load dataset
//! log request + grant
//! log start (dataset commitment)                                log start
//! kind's protocol ◀──────────── data ──────────────▶ kind's protocol
//! log transcript, proofs, output                                log transcript, proofs, output
//!                                             ◀── JobEnd ──▶
//! log end (state `done`)                                        log end
//! ```
//! Any failure sends `Abort` with a reason safe for the peer (never a path or a data value), logs
//! `failure`, and removes this side's output; a side whose peer fails after the protocol removes
//! its output too, so a job completes on both sides or leaves no output. The envelope talks only in
//! frames over a [`JobChannel`], so its branches are tested over an in-memory pair.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use consort_api::proto::peer_frame::Kind as Frame;
use consort_api::proto::{self, JobAccept, JobEnd, JobReject, JobRequest, JobWaiting, SubmitRequest};
use consort_api::vocab::{optional_wire, wire};
use consort_api::{JOB_PROTOCOL_VERSION, JobKind, JobState};
use consort_engine::psi_stream::StreamInput;
use consort_engine::{Dataset, DatasetSpec, JobLimits, PsiProtocol};
use consort_protocols::{ChannelError, Metered, Reveal, Role, cpu};
use tonic::Status;
use tracing::{info, warn};

use super::channel::{JobChannel, kind_name};
use super::connect::{ANSWER_TIMEOUT, Answer};
use super::{Ask, Failure, Job, JobHandle, Outcome, RunCtx, record};
use crate::audit::{Parties, RunEvidence};
use crate::config::{self, Grant, NodeConfig};
use crate::metrics::Refusal;
use crate::policy::{APPROVAL_TIMEOUT, Verdict};
use crate::state::NodeState;
use crate::table::new_job_id;
use crate::tls::{PeerInfo, WireCounters};

/// Largest `params` a job request may carry; larger requests are refused unread (the largest a
/// kind sends today, a train job's hyper-parameters, is under 1 KiB).
pub const MAX_PARAMS_BYTES: usize = 8 << 10;
/// Largest first frame (the job request) a responder reads; a larger one closes the stream with
/// nothing recorded.
pub const MAX_REQUEST_BYTES: usize = MAX_PARAMS_BYTES + (4 << 10);
/// How long a responder waits for the job request on a new stream.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

// ------------------------------------------------------------------------------------------------
// Requester
// ------------------------------------------------------------------------------------------------

/// The control service's `Submit`: types and checks the operator's request, registers the job and
/// starts it. Errors are the operator's to fix (unknown peer, missing grant, bad parameters).
pub async fn submit(state: &Arc<NodeState>, r: SubmitRequest) -> Result<String, Status> {
    let (ask, job, dataset, handle) = prepare(state, r).await?;
    let id = ask.job_id.clone();
    let st = state.clone();
    state.spawn_job(async move {
        let peer = ask.peer.clone();
        let open = |request| {
            let (st, handle) = (st.clone(), handle.clone());
            async move {
                let peer = st.config().peer(&peer)?.clone();
                super::connect::open(&st, &peer, request, Some(&handle)).await
            }
        };
        let _slot = queue(&st, &handle, dataset.is_some()).await;
        let result = request(&st, &handle, &ask, job, dataset, open).await;
        conclude_then_close(&st, &handle, result).await;
    });
    Ok(id)
}

/// A submission typed, checked against this node's own grants and the kind's rules, and registered
/// in the job table under a fresh id.
pub(super) async fn prepare(
    state: &Arc<NodeState>,
    r: SubmitRequest,
) -> Result<(Ask, Box<dyn Job>, Option<Granted>, Arc<JobHandle>), Status> {
    if let Some(why) = state.audit.failure() {
        return Err(Status::unavailable(why));
    }
    let kind: JobKind = wire("job kind", r.kind).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let spec =
        super::kind(kind).ok_or_else(|| Status::invalid_argument(format!("job kind {kind} cannot be submitted")))?;
    let config = state.config();
    config.peer(&r.peer).map_err(|e| Status::failed_precondition(e.to_string()))?;
    let out = match r.out.as_str() {
        "" => None,
        p if std::path::Path::new(p).is_absolute() => Some(p.into()),
        _ => return Err(Status::invalid_argument("the output path must be absolute")),
    };
    let ask = Ask {
        kind,
        role: Role::Requester,
        job_id: new_job_id(),
        peer: r.peer,
        dataset: r.dataset,
        peer_dataset: r.peer_dataset,
        protocol: optional_protocol(r.protocol).map_err(Status::invalid_argument)?,
        reveal: optional_reveal(r.reveal).map_err(Status::invalid_argument)?,
        out,
        params: r.params,
    };
    let dataset = if spec.uses_dataset() && spec.requester_dataset() {
        let granted = grant(&config, &ask).map_err(|e| {
            Status::permission_denied(format!(
                "{e} (grant it with `consort grant {}` or `consort dataset add ... --grant {}:{kind}`)",
                ask.dataset, ask.peer
            ))
        })?;
        Some(granted)
    } else {
        None
    };
    let mut ask = ask;
    let job = spec.plan(state, &ask).map_err(Status::invalid_argument)?;
    // This node's own grant binds what it asks of the peer as much as what the peer asks of it.
    if let Some((_, grant)) = &dataset {
        crate::policy::check(grant, &ask, &*job, None, &state.jobs.list(), crate::table::now_unix())
            .map_err(Status::permission_denied)?;
    }
    // A fresh random id is taken only if this node never saw it (48 random bits: a retry is rare).
    for _ in 0..8 {
        let inserted = state.jobs.insert(record::status_of(&ask, &*job)).await;
        match inserted.map_err(|e| Status::internal(format!("cannot record the job: {e:#}")))? {
            Some(handle) => return Ok((ask, job, dataset, handle)),
            None => ask.job_id = new_job_id(),
        }
    }
    Err(Status::internal("no unused job id found"))
}

/// The requester's side of an accepted submission, with the stream opener injected (TLS on a
/// node, an in-memory pair in tests).
pub async fn request<F, Fut>(
    state: &Arc<NodeState>,
    handle: &Arc<JobHandle>,
    ask: &Ask,
    job: Box<dyn Job>,
    dataset: Option<Granted>,
    open: F,
) -> Result<Stream, Failure>
where
    F: FnOnce(JobRequest) -> Fut,
    Fut: Future<Output = Result<(JobChannel, Answer, Arc<WireCounters>)>>,
{
    let (dataset, grant) = match dataset {
        Some((spec, grant)) if job.loads_dataset() => {
            (Some(load_dataset(state, handle, spec, job.streams()).await.map_err(Failure::private)?), Some(grant))
        }
        Some((_, grant)) => (None, Some(grant)),
        None => (None, None),
    };
    handle.stage("connect", 0, 0);
    let request = JobRequest {
        version: JOB_PROTOCOL_VERSION,
        job_id: ask.job_id.clone(),
        kind: ask.kind as i32,
        protocol: job.psi().map(|(p, _)| proto::PsiProtocol::from(p)).unwrap_or_default() as i32,
        reveal: job.psi().map(|(_, r)| proto::Reveal::from(r)).unwrap_or_default() as i32,
        responder_dataset: ask.peer_dataset.clone(),
        params: job.wire_params(),
        rows: dataset.as_ref().map(Loaded::rows).unwrap_or(0),
    };
    let (channel, answer, wire) = open(request).await.map_err(|e| Failure::context("could not reach the peer", e))?;
    // The responder's set, as it declared it, against this node's grant; its protocol hello may
    // not announce more.
    let mut limits = JobLimits::default();
    let mut too_large = None;
    if let (Answer::Accepted(a), Some(grant)) = (&answer, &grant) {
        limits = JobLimits { max_peer_rows: a.rows, min_aligned_rows: grant.min_aligned_rows };
        too_large = crate::policy::check_peer_rows(grant, a.rows).err();
    }
    let decision = match &answer {
        Answer::Accepted(a) => {
            handle.update(|s| s.peer_rows = a.rows);
            Ok(())
        }
        Answer::Refused(reason) => Err(reason.as_str()),
    };
    crate::audit::record_request(
        &state.audit,
        &ask.job_id,
        parties(state, ask.role, &ask.peer),
        record::audited(ask, &*job),
        decision,
    )
    .await
    .map_err(|e| Failure::context(AUDIT_FAILED, e))?;
    if let Answer::Refused(reason) = answer {
        handle.update(|s| s.refused_by_peer = true);
        return Err(Failure::shared(anyhow!("peer '{}' refused the job: {reason}", ask.peer)));
    }
    if let Some(why) = too_large {
        channel.abort(&why).await;
        return Err(Failure::shared(anyhow!("{why} (this node's grant for '{}' on '{}')", ask.peer, ask.dataset)));
    }
    run_accepted(state, handle, ask, job, channel, dataset, &wire, limits).await
}

// ------------------------------------------------------------------------------------------------
// Responder
// ------------------------------------------------------------------------------------------------

/// The responder's side of a job request that arrived on `channel` from the pinned `peer`.
pub async fn respond(state: Arc<NodeState>, peer: PeerInfo, request: JobRequest, channel: JobChannel) {
    let Some(handle) = take(&state, &peer, &request, &channel).await else { return };
    let Some(admitted) = decide(&state, &peer, &request, &handle, &channel).await else { return };
    let Admitted { ask, job, dataset, limits, approval } = admitted;
    if approval && !approved(&state, &handle, &ask, &channel).await {
        return;
    }
    info!(peer = %peer.name, job = %ask.job_id, kind = %ask.kind, dataset = %ask.dataset, "accepted job request");
    let _slot = queue(&state, &handle, dataset.is_some()).await;
    let result = async {
        let dataset = match dataset {
            Some(spec) if job.loads_dataset() => match load_dataset(&state, &handle, spec, job.streams()).await {
                Ok(d) => Some(d),
                Err(e) => {
                    let reason = format!(
                        "the responder could not load dataset '{}' (its operator sees why in its log)",
                        ask.dataset
                    );
                    state.metrics.refused(Refusal::Internal);
                    refuse(&channel, reason.clone()).await;
                    return Err(Failure::context(&reason, e));
                }
            },
            _ => None,
        };
        let rows = dataset.as_ref().map(Loaded::rows).unwrap_or(0);
        channel
            .send_kind(Frame::Accept(JobAccept { rows }))
            .await
            .map_err(|_| Failure::shared(anyhow!("the requester went away before the job started")))?;
        run_accepted(&state, &handle, &ask, job, channel, dataset, &peer.wire, limits).await
    }
    .await;
    conclude_then_close(&state, &handle, result).await;
}

/// A job whose grant requires approval waits here (state `awaiting-approval`, the request shown in
/// full by `consort job`) until this node's operator decides; the requester is told it waits. A
/// denial or [`APPROVAL_TIMEOUT`] refuses the job; the requester going away fails it. The decision
/// is logged (`approval`).
async fn approved(state: &Arc<NodeState>, handle: &Arc<JobHandle>, ask: &Ask, channel: &JobChannel) -> bool {
    let verdict = state.approvals.wait(&ask.job_id);
    handle.set_state(JobState::AwaitingApproval, None).await;
    handle.stage("awaiting approval", 0, 0);
    info!(peer = %ask.peer, job = %ask.job_id, "job awaits approval: `consort approve` or `consort deny`");
    let waiting = JobWaiting { reason: "the responder's operator approves each job of this grant".into() };
    let outcome = if channel.send_kind(Frame::Waiting(waiting)).await.is_err() {
        Err("the requester went away while the job awaited approval")
    } else {
        tokio::select! {
            v = verdict => Ok(v.unwrap_or_else(|_| Verdict::Deny("the node stopped".into()))),
            _ = channel.recv_within(APPROVAL_TIMEOUT) => Err("the requester went away while the job awaited approval"),
            _ = tokio::time::sleep(APPROVAL_TIMEOUT) => {
                Ok(Verdict::Deny(format!("not approved within {} hours", APPROVAL_TIMEOUT.as_secs() / 3600)))
            }
        }
    };
    state.approvals.forget(&ask.job_id);
    let (decision, reason) = match &outcome {
        Ok(Verdict::Approve) => ("approved", String::new()),
        Ok(Verdict::Deny(reason)) => ("denied", bounded(reason.clone())),
        Err(why) => ("withdrawn", why.to_string()),
    };
    let fields = serde_json::json!({ "decision": decision, "reason": reason });
    if let Err(e) = state.audit.append_async(&ask.job_id, "approval", fields).await {
        warn!(job = %ask.job_id, "cannot record the approval in the audit log: {e:#}");
        state.metrics.refused(Refusal::Audit);
        refuse(channel, "the responder cannot record the job in its audit log".into()).await;
        handle.set_state(JobState::Failed, Some(format!("cannot record the approval: {e:#}"))).await;
        return false;
    }
    match outcome {
        Ok(Verdict::Approve) => {
            handle.set_state(JobState::Pending, None).await;
            true
        }
        Ok(Verdict::Deny(_)) => {
            let told = format!("the responder's operator denied the job: {reason}");
            handle.set_state(JobState::Refused, Some(told.clone())).await;
            state.metrics.refused(Refusal::Policy);
            refuse(channel, told).await;
            false
        }
        Err(why) => {
            conclude(state, handle, Err(Failure::shared(anyhow!(why)))).await;
            false
        }
    }
}

/// The responder's first steps, before anything is logged: the connection's pin, the request's
/// structure, and its id, which is taken (registered `pending`) only if this node never saw it.
async fn take(
    state: &NodeState,
    peer: &PeerInfo,
    request: &JobRequest,
    channel: &JobChannel,
) -> Option<Arc<JobHandle>> {
    // The pin is checked per request: a connection opened before its peer's pin was replaced or
    // removed carries no request any more.
    if let Some(first) = state.refusals.over(&peer.name) {
        if first {
            warn!(
                peer = %peer.name,
                "peer passed {} refused requests this minute: its requests are refused unrecorded until the minute ends",
                crate::policy::MAX_REFUSALS_PER_MINUTE
            );
        }
        state.metrics.refused(Refusal::RateLimited);
        refuse(channel, "too many refused requests from this node; wait a minute".into()).await;
        return None;
    }
    if !state.audit.healthy() {
        warn!(peer = %peer.name, "refused a job request: the audit log cannot be written");
        state.metrics.refused(Refusal::Audit);
        refuse(channel, "the responder cannot record jobs in its audit log; it takes no new jobs".into()).await;
        return None;
    }
    if !still_pinned(state, peer) {
        state.refusals.note(&peer.name);
        warn!(peer = %peer.name, "refused a job request on a connection whose certificate is no longer pinned");
        state.metrics.refused(Refusal::Pin);
        refuse(channel, "this connection's certificate is no longer pinned here; reconnect".into()).await;
        return None;
    }
    if let Err(reason) = check_structure(request) {
        state.refusals.note(&peer.name);
        warn!(peer = %peer.name, "refused a malformed job request: {reason}");
        state.metrics.refused(Refusal::Structure);
        refuse(channel, reason).await;
        return None;
    }
    match state.jobs.insert(record::responder_status(&peer.name, request)).await {
        Ok(Some(h)) => Some(h),
        Ok(None) => {
            state.refusals.note(&peer.name);
            warn!(peer = %peer.name, job = %request.job_id, "refused a job request reusing a known job id");
            state.metrics.refused(Refusal::Structure);
            let reason = format!("job id {} was already used with this node; ids are never reused", request.job_id);
            refuse(channel, reason).await;
            None
        }
        Err(e) => {
            warn!(job = %request.job_id, "cannot record the job: {e:#}");
            state.metrics.refused(Refusal::Internal);
            refuse(channel, "the responder cannot record the job".into()).await;
            None
        }
    }
}

/// The policy decision, logged (`request`, `grant`) before it is answered; a refusal is recorded
/// as `refused` and sent back.
async fn decide(
    state: &NodeState,
    peer: &PeerInfo,
    request: &JobRequest,
    handle: &JobHandle,
    channel: &JobChannel,
) -> Option<Admitted> {
    let admitted = admit(state, &peer.name, request).map_err(bounded);
    let (fields, decision) = match &admitted {
        Ok(a) => (record::audited(&a.ask, &*a.job), Ok(())),
        Err(reason) => (record::refused_fields(request), Err(reason.as_str())),
    };
    let who = Parties { role: Role::Responder, peer: &peer.name, peer_certificate: Some(peer.fingerprint.clone()) };
    let shown = fields.to_string();
    handle.update(|s| s.request = shown);
    if let Err(e) = crate::audit::record_request(&state.audit, &request.job_id, who, fields, decision).await {
        warn!(job = %request.job_id, "cannot record the job request in the audit log: {e:#}");
        handle.set_state(JobState::Failed, Some(format!("cannot record the job request: {e:#}"))).await;
        state.metrics.refused(Refusal::Audit);
        refuse(channel, "the responder cannot record the job in its audit log".into()).await;
        return None;
    }
    match admitted {
        Ok(admitted) => Some(admitted),
        Err(reason) => {
            state.refusals.note(&peer.name);
            warn!(peer = %peer.name, job = %request.job_id, "refused job: {reason}");
            state.metrics.refused(Refusal::Policy);
            handle.set_state(JobState::Refused, Some(reason.clone())).await;
            refuse(channel, reason).await;
            None
        }
    }
}

/// What is checked before anything is recorded: the exchange's version, the id's and names' form,
/// the size of the parameters. The reason quotes nothing the peer sent but the version.
pub fn check_structure(r: &JobRequest) -> Result<(), String> {
    if r.version != JOB_PROTOCOL_VERSION {
        return Err(format!(
            "job protocol version {} is not supported (this node speaks {JOB_PROTOCOL_VERSION}; upgrade the older node)",
            r.version
        ));
    }
    config::check_name("job id", &r.job_id).map_err(|_| "invalid job id".to_string())?;
    if !r.responder_dataset.is_empty() {
        config::check_name("dataset name", &r.responder_dataset).map_err(|_| "invalid dataset name".to_string())?;
    }
    if r.params.len() > MAX_PARAMS_BYTES {
        return Err(format!("job parameters over {MAX_PARAMS_BYTES} bytes"));
    }
    Ok(())
}

/// A request the policy admitted: the typed job, its dataset, the limits it runs with and whether
/// it waits for the operator's approval.
struct Admitted {
    ask: Ask,
    job: Box<dyn Job>,
    dataset: Option<DatasetSpec>,
    limits: JobLimits,
    approval: bool,
}

/// A dataset of this node and the grant that lets the peer use it.
pub(super) type Granted = (DatasetSpec, Grant);

/// The policy decision on a well-formed request: the typed job and its dataset, or why not.
fn admit(state: &NodeState, peer: &str, r: &JobRequest) -> Result<Admitted, String> {
    let kind: JobKind = wire("job kind", r.kind).map_err(|e| e.to_string())?;
    let spec = super::kind(kind).ok_or_else(|| format!("job kind {kind} is not served here"))?;
    let ask = Ask {
        kind,
        role: Role::Responder,
        job_id: r.job_id.clone(),
        peer: peer.to_string(),
        dataset: r.responder_dataset.clone(),
        peer_dataset: String::new(),
        protocol: optional_protocol(r.protocol)?,
        reveal: optional_reveal(r.reveal)?,
        out: None,
        params: r.params.clone(),
    };
    let config = state.config();
    let granted = if spec.uses_dataset() { Some(grant(&config, &ask)?) } else { None };
    let job = spec.plan(state, &ask)?;
    let Some((dataset, grant)) = granted else {
        return Ok(Admitted { ask, job, dataset: None, limits: JobLimits::default(), approval: false });
    };
    let limits = crate::policy::check(&grant, &ask, &*job, Some(r.rows), &state.jobs.list(), crate::table::now_unix())?;
    Ok(Admitted { ask, job, dataset: Some(dataset), limits, approval: grant.approval })
}

/// The dataset a job uses on this node, if its grant lets the peer run this kind of job on it.
fn grant(config: &NodeConfig, ask: &Ask) -> Result<Granted, String> {
    let entry = config.datasets.iter().find(|d| d.spec.name == ask.dataset).ok_or_else(|| match ask.role {
        Role::Requester => format!("unknown dataset '{}' (register it with `consort dataset add`)", ask.dataset),
        Role::Responder => format!("no dataset '{}' is shared with '{}'", ask.dataset, ask.peer),
    })?;
    let grant = entry.grant_for(&ask.peer, ask.kind)?;
    Ok((entry.spec.clone(), grant.clone()))
}

/// Whether the certificate the peer presented on this connection is still the one pinned under its
/// name.
fn still_pinned(state: &NodeState, peer: &PeerInfo) -> bool {
    let now = crate::table::now_unix();
    state.config().peers.iter().any(|p| p.name == peer.name && p.accepts(&peer.fingerprint, now))
}

/// Who the request is between, as the requester's audit log records it (the fingerprint of the
/// peer's pin it connected with; the responder records the certificate the connection presented).
fn parties<'a>(state: &NodeState, role: Role, peer: &'a str) -> Parties<'a> {
    let peer_certificate = state.config().peers.iter().find(|p| p.name == peer).map(|p| p.fingerprint.clone());
    Parties { role, peer, peer_certificate }
}

async fn refuse(channel: &JobChannel, reason: String) {
    let _ = channel.send_kind(Frame::Reject(JobReject { reason: bounded(reason) })).await;
}

/// Longest refusal reason logged or sent back: a reason can quote what the peer sent (a parser's
/// message about its parameters), and a refusal must not echo a large request.
pub const MAX_REASON_CHARS: usize = 300;

/// What this node keeps of a text its peer sent (an `Abort` or `Reject` reason, a transport
/// status) before it can reach an error, a log line, the job table, the CLI's terminal or the
/// audit log: control characters (line breaks, terminal escapes) become U+FFFD and a longer text
/// is cut so the result, with its "… (N bytes in all)" note, stays within [`MAX_REASON_CHARS`].
/// A peer's frame may be as large as the transport allows; what it says is its own claim.
pub(crate) fn peer_text(text: &str) -> String {
    cut(text, |c| if c.is_control() { '\u{FFFD}' } else { c })
}

/// This node's own reason (a refusal, a failure told to the peer), cut as [`peer_text`] cuts.
pub(crate) fn bounded(reason: String) -> String {
    if reason.chars().nth(MAX_REASON_CHARS).is_none() {
        return reason;
    }
    cut(&reason, |c| c)
}

/// `text` with `map` applied to each character, at most [`MAX_REASON_CHARS`] characters with the
/// "… (N bytes in all)" note of a longer text.
fn cut(text: &str, map: impl Fn(char) -> char) -> String {
    const NOTE: usize = 40; // "… (" + up to 20 digits + " bytes in all)"
    if text.chars().nth(MAX_REASON_CHARS).is_none() {
        return text.chars().map(map).collect();
    }
    let head: String = text.chars().take(MAX_REASON_CHARS - NOTE).map(map).collect();
    format!("{head}… ({} bytes in all)", text.len())
}

// ------------------------------------------------------------------------------------------------
// Both sides
// ------------------------------------------------------------------------------------------------

/// An accepted job: start, the kind's protocol, evidence, the end exchange; rolls back this side's
/// output if anything fails after it was written.
#[allow(clippy::too_many_arguments)] // the job's parts, as both sides' entry points hold them
pub(super) async fn run_accepted(
    state: &Arc<NodeState>,
    handle: &Arc<JobHandle>,
    ask: &Ask,
    job: Box<dyn Job>,
    channel: JobChannel,
    dataset: Option<Loaded>,
    wire: &WireCounters,
    limits: JobLimits,
) -> Result<Stream, Failure> {
    handle.set_state(JobState::Running, None).await;
    let started = dataset.as_ref().map(|d| (d.spec(), d.rows()));
    if let Err(e) = crate::audit::record_start(&state.audit, &ask.job_id, started).await {
        channel.abort("the peer cannot record the job in its audit log").await;
        return Err(Failure::context(AUDIT_FAILED, e));
    }
    let channel = Arc::new(Metered::new(channel));
    let (dataset, stream) = match dataset {
        Some(Loaded::Dataset(d)) => (Some(d), None),
        Some(Loaded::Stream(s)) => (None, Some(s)),
        None => (None, None),
    };
    let result = job.run(RunCtx { state, handle, channel: channel.clone(), dataset, stream, ask, limits }).await;
    handle.record_stats(&channel.stats(), wire.get());
    let mut outcome = match result {
        Ok(o) => o,
        Err(f) => {
            channel.inner().abort(&f.peer).await;
            return Err(f);
        }
    };
    // The output is in place: the job record names it at once, so that a node killed before the
    // job ends removes it when it starts again (a job completes on both sides or leaves nothing).
    if let Some(out) = &outcome.output {
        handle.update(|s| s.output = out.path.display().to_string());
        if let Err(e) = handle.persist().await {
            warn!(job = %ask.job_id, "cannot record the job's output in the job table: {e:#}");
        }
    }
    let evidence = RunEvidence {
        stats: channel.stats(),
        other_channels: std::mem::take(&mut outcome.other_channels),
        ecdh: outcome.ecdh_evidence.take(),
        output: outcome.output.as_ref().map(|o| (o.path.clone(), o.rows)),
    };
    if let Err(e) = crate::audit::record_run(&state.audit, &ask.job_id, evidence).await {
        rollback(handle, &outcome);
        channel.inner().abort("the peer cannot record the job in its audit log").await;
        return Err(Failure::context(AUDIT_FAILED, e));
    }
    apply(handle, &outcome);
    let end = JobEnd {
        output_rows: outcome.output.as_ref().map(|o| o.rows).unwrap_or(0),
        output: outcome.output.as_ref().map(|o| o.shown.clone()).unwrap_or_default(),
    };
    match end_exchange(channel.inner(), ask.role, end).await {
        Ok(peer_end) => {
            handle.record_stats(&channel.stats(), wire.get());
            // The peer's own text: kept cut and cleaned (the job table is persisted and shown).
            handle.update(|s| s.peer_output = peer_text(&peer_end.output));
            Ok(channel)
        }
        Err(e) => {
            rollback(handle, &outcome);
            Err(Failure::shared(e))
        }
    }
}

/// Sends this side's `JobEnd` and waits for the peer's. The requester then waits for the responder
/// to close the stream, so that dropping the connection cannot cut off its own `JobEnd`.
pub async fn end_exchange(channel: &JobChannel, role: Role, end: JobEnd) -> Result<JobEnd> {
    if let Err(e) = channel.send_kind(Frame::End(end)).await {
        // The stream is closed for sending; the peer may have said why before it closed it (the
        // failed send reports an `Abort` left inbound; else one may still arrive).
        let why = match e {
            ChannelError::Aborted(reason) => format!(": {reason}"),
            _ => match tokio::time::timeout(std::time::Duration::from_secs(2), channel.recv_kind()).await {
                Ok(Err(ChannelError::Aborted(reason))) => format!(": {reason}"),
                _ => String::new(),
            },
        };
        bail!("the peer failed at the end of the job{why}");
    }
    let peer_end = match tokio::time::timeout(ANSWER_TIMEOUT, channel.recv_kind()).await {
        Ok(Ok(Frame::End(end))) => end,
        Ok(Ok(other)) => bail!("the peer sent a {} frame instead of ending the job", kind_name(&other)),
        Ok(Err(ChannelError::Aborted(reason))) => bail!("the peer failed at the end of the job: {reason}"),
        Ok(Err(e)) => bail!("the peer did not end the job: {e}"),
        Err(_) => bail!("the peer did not end the job within {ANSWER_TIMEOUT:?}"),
    };
    if role == Role::Requester {
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, channel.recv_kind()).await;
    }
    Ok(peer_end)
}

/// Removes what the job wrote (a job completes on both sides or leaves no output behind), and
/// its record stops naming it.
fn rollback(handle: &JobHandle, outcome: &Outcome) {
    if let Some(out) = &outcome.output {
        let _ = std::fs::remove_file(&out.path);
        handle.update(|s| {
            s.output.clear();
            s.output_rows = 0;
        });
    }
}

fn apply(handle: &JobHandle, outcome: &Outcome) {
    for (name, secs) in &outcome.stages {
        handle.add_stage(name, *secs);
    }
    handle.update(|s| {
        s.local_rows = outcome.local_rows;
        s.peer_rows = outcome.peer_rows;
        s.has_intersection = outcome.intersection.is_some();
        s.intersection = outcome.intersection.unwrap_or(0);
        s.output = outcome.output.as_ref().map(|o| o.path.display().to_string()).unwrap_or_default();
        s.output_rows = outcome.output.as_ref().map(|o| o.rows).unwrap_or(0);
        s.summary = outcome.summary.clone();
    });
}

/// A finished job's stream, kept open until the job's end is recorded, so that when the peer sees
/// it close this node's record and evidence of the job are complete.
pub(super) type Stream = Arc<Metered<JobChannel>>;

/// [`conclude`], then lets the job's stream close.
pub(super) async fn conclude_then_close(state: &NodeState, handle: &JobHandle, result: Result<Stream, Failure>) {
    let (result, stream) = match result {
        Ok(stream) => (Ok(()), Some(stream)),
        Err(f) => (Err(f), None),
    };
    conclude(state, handle, result).await;
    drop(stream);
}

/// Records the job's end: `end`, or `failure` with the reason that may leave the node, in the
/// audit log; `done`, or `failed` with the whole story, in the job table.
pub(super) async fn conclude(state: &NodeState, handle: &JobHandle, result: Result<(), Failure>) {
    let id = handle.id();
    let (error, reason) = match result {
        Ok(()) => (None, None),
        Err(f) => (Some(format!("{:#}", f.local)), Some(f.peer)),
    };
    match &error {
        None => info!(job = %id, "job done"),
        Some(e) => warn!(job = %id, "job failed: {e}"),
    }
    crate::audit::record_outcome(&state.audit, &id, reason.as_deref()).await;
    let final_state = if error.is_none() { JobState::Done } else { JobState::Failed };
    handle.set_state(final_state, error).await;
}

/// What the peer and the audit log hear when this node's audit log cannot be written.
const AUDIT_FAILED: &str = "the node could not write its audit log";

/// Waits for one of the node's job slots (`[limits] max_concurrent_jobs`): jobs beyond the cap
/// queue rather than being refused. Jobs without a dataset (a dealer's) take no slot: a deal pairs
/// two streams, and the first must not hold the slot the second waits for.
///
/// A peer's jobs take at most `[limits] max_jobs_per_peer` slots (default: all but one), waiting
/// for their peer's share first, so one peer's stalled jobs cannot hold every slot while other
/// peers' jobs wait.
async fn queue(state: &NodeState, handle: &JobHandle, uses_dataset: bool) -> Option<Slot> {
    if !uses_dataset {
        return None;
    }
    handle.stage("queued", 0, 0);
    let share = state.peer_share(&handle.status().peer).acquire_owned().await.ok()?;
    let slot = state.job_slots.clone().acquire_owned().await.ok()?;
    Some((share, slot))
}

/// A job's place among the running jobs: its peer's share and one of the node's slots.
type Slot = (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit);

/// A job's dataset as the envelope hands it to the job: loaded, or (for a job that streams it)
/// validated and counted in constant memory.
pub(crate) enum Loaded {
    Dataset(Dataset),
    Stream(StreamInput),
}

impl Loaded {
    /// The rows that take part (a streamed dataset's count includes duplicates `dedup` drops).
    pub(crate) fn rows(&self) -> u64 {
        match self {
            Loaded::Dataset(d) => d.len() as u64,
            Loaded::Stream(s) => s.rows,
        }
    }

    fn spec(&self) -> &DatasetSpec {
        match self {
            Loaded::Dataset(d) => &d.spec,
            Loaded::Stream(s) => &s.spec,
        }
    }
}

/// Loads (or, for a streaming job, checks and counts) the job's dataset. A streaming job takes the
/// count from the registration's full check when the file's stamp is unchanged
/// ([`StreamInput::open_checked`]: its scan still validates every row).
pub(crate) async fn load_dataset(
    state: &NodeState,
    handle: &JobHandle,
    spec: DatasetSpec,
    streams: bool,
) -> Result<Loaded> {
    let started = Instant::now();
    let name = spec.name.clone();
    let loaded = if streams {
        handle.stage("check dataset", 0, 0);
        let record = state.config().datasets.iter().find(|d| d.spec == spec).and_then(|d| d.checked.clone());
        let input = cpu::run(move || StreamInput::open_checked(&spec, record.as_ref()))
            .await
            .with_context(|| format!("dataset '{name}'"))?;
        handle.add_stage("check", started.elapsed().as_secs_f64());
        Loaded::Stream(input)
    } else {
        handle.stage("load dataset", 0, 0);
        let dataset = cpu::run(move || Dataset::load(&spec)).await.with_context(|| format!("dataset '{name}'"))?;
        handle.add_stage("load", started.elapsed().as_secs_f64());
        Loaded::Dataset(dataset)
    };
    let rows = loaded.rows();
    handle.update(|s| s.local_rows = rows);
    Ok(loaded)
}

// ------------------------------------------------------------------------------------------------
// Vocabulary at the edge
// ------------------------------------------------------------------------------------------------

fn optional_protocol(v: i32) -> Result<Option<PsiProtocol>, String> {
    optional_wire::<proto::PsiProtocol, PsiProtocol>("PSI protocol", v).map_err(|e| e.to_string())
}

fn optional_reveal(v: i32) -> Result<Option<Reveal>, String> {
    optional_wire::<proto::Reveal, Reveal>("reveal mode", v).map_err(|e| e.to_string())
}
