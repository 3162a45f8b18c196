//! Recording a job's evidence in the log: the parts every job kind shares (transcript digests,
//! output commitment) and the ECDH-PSI proofs. The node adds the request, grant, start and end
//! events around them.

use std::path::Path;

use consort_protocols::psi::ecdh::EcdhEvidence;
use consort_protocols::{ChannelStats, TRANSCRIPT_DIGEST};
use serde_json::json;

use super::evidence::store_ecdh;
use super::{AuditError, AuditLog, commitment, hex};

/// The job channel's transcript digests and counts (`transcript` event; `digest` names the hash,
/// [`TRANSCRIPT_DIGEST`]; entries without it are older nodes' SHA-256).
pub fn record_transcript(log: &mut AuditLog, job: &str, stats: &ChannelStats) -> Result<u64, AuditError> {
    log.append(
        job,
        "transcript",
        json!({
            "sent_digest": hex(&stats.sent_digest),
            "received_digest": hex(&stats.received_digest),
            "digest": TRANSCRIPT_DIGEST,
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
            "frames_sent": stats.frames_sent,
            "frames_received": stats.frames_received,
        }),
    )
}

/// Another channel the job used (e.g. a train job's channel to its dealer), by name
/// (`channel_transcript` event; the job channel's own digests stay in `transcript`).
pub fn record_channel_transcript(
    log: &mut AuditLog,
    job: &str,
    channel: &str,
    stats: &ChannelStats,
) -> Result<u64, AuditError> {
    log.append(
        job,
        "channel_transcript",
        json!({
            "channel": channel,
            "sent_digest": hex(&stats.sent_digest),
            "received_digest": hex(&stats.received_digest),
            "digest": TRANSCRIPT_DIGEST,
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
        }),
    )
}

/// ECDH-PSI commitments and proofs (`proofs` event); the records and points go to
/// `audit/jobs/JOB.*` for `consort audit export`.
pub fn record_ecdh(log: &mut AuditLog, job: &str, evidence: &EcdhEvidence) -> Result<u64, AuditError> {
    let summary = store_ecdh(log.dir(), job, evidence)?;
    let verified = evidence.received.is_some();
    log.append(job, "proofs", json!({ "ecdh": summary, "peer_proof_verified": verified }))
}

/// A salted commitment to a data file's plaintext and its row count (`event`, e.g. `dataset` or
/// `output`; a sealed file is opened with `key`); the salt goes to the node's private salts file.
pub fn record_file(
    log: &mut AuditLog,
    job: &str,
    event: &str,
    path: &Path,
    rows: u64,
    key: Option<&crate::sealed::StorageKey>,
) -> Result<u64, AuditError> {
    let c = commitment::commit_data(path, key)?;
    commitment::keep_salt(log.dir(), job, event, &c)?;
    log.append(job, event, json!({ "commitment": hex(&c.value), "rows": rows }))
}
