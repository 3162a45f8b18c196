//! What the envelope records about a job: its job-table record and its request as the audit log
//! holds it (only fields of bounded size; a refused request's raw parameters never).

use consort_api::proto::{self, JobRequest, JobStatus};
use consort_api::vocab::Vocabulary;
use consort_api::{JobKind, JobState};
use consort_protocols::Role;

use super::{Ask, Job};

pub(super) fn status_of(ask: &Ask, job: &dyn Job) -> JobStatus {
    JobStatus {
        job_id: ask.job_id.clone(),
        kind: ask.kind as i32,
        protocol: job.psi().map(|(p, _)| proto::PsiProtocol::from(p)).unwrap_or_default() as i32,
        role: proto::Role::from(ask.role) as i32,
        peer: ask.peer.clone(),
        dataset: ask.dataset.clone(),
        peer_dataset: ask.peer_dataset.clone(),
        reveal: job.psi().map(|(_, r)| proto::Reveal::from(r)).unwrap_or_default() as i32,
        state: JobState::Pending as i32,
        output_target: ask.out.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        ..Default::default()
    }
}

/// The responder's record of a well-formed request, before it is admitted (every field bounded
/// by [`check_structure`]; enum values are stored as numbers, never as text).
pub(super) fn responder_status(peer: &str, r: &JobRequest) -> JobStatus {
    JobStatus {
        job_id: r.job_id.clone(),
        kind: r.kind,
        protocol: r.protocol,
        role: proto::Role::Responder as i32,
        peer: peer.to_string(),
        dataset: r.responder_dataset.clone(),
        reveal: r.reveal,
        state: JobState::Pending as i32,
        ..Default::default()
    }
}

/// A job request as the audit log records it (both sides, `role` is this node's).
pub(super) fn audited(ask: &Ask, job: &dyn Job) -> serde_json::Value {
    let mut fields = serde_json::json!({
        "kind": ask.kind.name(),
        "dataset": ask.dataset,
        "parameters": job.audited(),
    });
    let object = fields.as_object_mut().expect("an object");
    if let Some((p, r)) = job.psi() {
        object.insert("protocol".into(), p.name().into());
        object.insert("reveal".into(), r.name().into());
    }
    if ask.role == Role::Requester && !ask.peer_dataset.is_empty() {
        object.insert("peer_dataset".into(), ask.peer_dataset.clone().into());
    }
    fields
}

/// A refused request as the audit log records it: only fields of bounded size and known form
/// (never the raw parameters).
pub(super) fn refused_fields(r: &JobRequest) -> serde_json::Value {
    serde_json::json!({
        "kind": JobKind::try_from(r.kind).map(|k| k.name()).unwrap_or("unknown"),
        "dataset": r.responder_dataset,
        "parameter_bytes": r.params.len(),
    })
}
