//! The node's audit log (see `consort_engine::audit` for the design and security model); the
//! `consort audit` commands are in `cli::audit`.
//!
//! Every job leaves entries in `DIR/audit/log.jsonl`, whatever its kind or protocol: `request`
//! (who asked, for which datasets, protocol and parameters), `grant` (the decision), `start`
//! (a salted commitment to the local dataset file and its row count), `transcript` (the job
//! channel's BLAKE3 digests per direction), `proofs` (ECDH-PSI only: key commitments and DLEQ
//! proofs), `output` (a salted commitment to the output file and its row count), and `end` or
//! `failure`; a job interrupted by a crash gets `failure` when the node starts again. Other
//! channels a job used (a train job's dealer) get `channel_transcript`. The node signs a tree head after each entry with its ed25519 identity key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use consort_api::vocab::Vocabulary;
use consort_engine::DatasetSpec;
use consort_engine::audit::{self, AuditError, AuditLog, EcdhEvidence, events};
use consort_engine::sealed::StorageKey;
use consort_protocols::{ChannelStats, Role, cpu};
use serde_json::{Value, json};
use tracing::{error, warn};

use crate::identity;

/// Environment variable that turns ECDH-PSI proofs off (`off`), for measuring their overhead.
/// Both nodes must agree, or the job fails at the hello.
pub const PROOFS_ENV: &str = "CONSORT_ECDH_PROOFS";

/// Whether ECDH-PSI jobs of this node run with key commitments and DLEQ proofs (default: yes).
pub fn proofs_enabled() -> bool {
    std::env::var(PROOFS_ENV).map(|v| v != "off").unwrap_or(true)
}

/// The node's audit log, shared by its jobs.
///
/// A node never runs a job it cannot log: after the first failed write to the audit directory (a
/// full disk, lost permissions) every further use of the log fails at once, so the job envelope
/// refuses new jobs, until the node is restarted with the cause fixed. The failed append itself
/// left the files as they were ([`AuditLog::append`] cuts them back), so the restart finds a log
/// that verifies.
pub struct NodeAudit {
    log: Mutex<AuditLog>,
    /// Why the log could not be written, from the first failure on.
    failure: OnceLock<String>,
    /// Opens sealed outputs, whose plaintext the `output` commitment is over.
    storage_key: Option<Arc<StorageKey>>,
    /// Entries appended since the node started (registered in `crate::metrics`).
    pub appends: prometheus_client::metrics::counter::Counter,
    /// Failed writes to the audit directory since the node started.
    pub failures: prometheus_client::metrics::counter::Counter,
}

impl NodeAudit {
    /// Opens `DIR/audit` with the node's identity key; fails if the existing log does not verify.
    /// `storage_key` opens sealed outputs for their commitments.
    pub fn open(dir: &Path, storage_key: Option<Arc<StorageKey>>) -> Result<Arc<NodeAudit>> {
        let key = identity::read_signing_key(dir)?;
        let log = AuditLog::open(dir, key).context("cannot open the audit log")?;
        Ok(Arc::new(NodeAudit {
            log: Mutex::new(log),
            failure: OnceLock::new(),
            storage_key,
            appends: Default::default(),
            failures: Default::default(),
        }))
    }

    /// Whether the log can still be written (false after an audit I/O error, until a restart).
    pub fn healthy(&self) -> bool {
        self.failure.get().is_none()
    }

    /// Why the log could not be written, if it could not.
    pub fn failure(&self) -> Option<String> {
        self.failure.get().map(|cause| stopped(cause))
    }

    /// Runs `f` on the log (callers in async code go through [`cpu::run`]: appends rewrite files).
    /// Fails at once after an earlier audit I/O error, and records one that `f` runs into.
    pub fn with<T>(&self, f: impl FnOnce(&mut AuditLog) -> Result<T, AuditError>) -> Result<T> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cause) = self.failure.get() {
            bail!("{}", stopped(cause));
        }
        let before = log.entries().len();
        let result = f(&mut log);
        self.appends.inc_by(log.entries().len().saturating_sub(before) as u64);
        match result {
            Ok(value) => Ok(value),
            // Only the audit directory's own files (log, heads, salts): a dataset file that a
            // commitment cannot read fails its job, not the node.
            Err(AuditError::Io { path, cause }) if path.starts_with(log.dir()) => {
                let cause = format!("{}: {cause}", path.display());
                self.failures.inc();
                error!("{}", stopped(&cause));
                Err(anyhow!("{}", stopped(self.failure.get_or_init(|| cause))))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn append(&self, job: &str, event: &str, fields: Value) -> Result<()> {
        self.with(|log| log.append(job, event, fields)).map(|_| ())
    }

    /// Appends on the rayon pool.
    pub async fn append_async(self: &Arc<Self>, job: &str, event: &str, fields: Value) -> Result<()> {
        let (audit, job, event) = (self.clone(), job.to_string(), event.to_string());
        cpu::run(move || audit.append(&job, &event, fields)).await
    }
}

fn stopped(cause: &str) -> String {
    format!(
        "the audit log could not be written ({cause}); the node takes no new jobs until it is restarted with space/permissions fixed"
    )
}

/// The parties of a request as the log records them: this node's role, the peer's name and the
/// fingerprint of its pinned certificate.
pub struct Parties<'a> {
    pub role: Role,
    pub peer: &'a str,
    pub peer_certificate: Option<String>,
}

/// Logs a job request and the grant decision (both sides).
pub async fn record_request(
    audit: &Arc<NodeAudit>,
    job_id: &str,
    parties: Parties<'_>,
    fields: Value,
    decision: Result<(), &str>,
) -> Result<()> {
    let mut request =
        json!({"role": parties.role.name(), "peer": parties.peer, "peer_certificate": parties.peer_certificate});
    if let (Value::Object(r), Value::Object(f)) = (&mut request, fields) {
        r.extend(f);
    }
    audit.append_async(job_id, "request", request).await?;
    let grant = match decision {
        Ok(()) => json!({"decision": "accepted"}),
        Err(reason) => json!({"decision": "refused", "reason": reason}),
    };
    audit.append_async(job_id, "grant", grant).await
}

/// Logs the start of a job: a salted commitment to the dataset file and its rows (`dataset` null
/// for kinds without one).
pub async fn record_start(audit: &Arc<NodeAudit>, job_id: &str, dataset: Option<(&DatasetSpec, u64)>) -> Result<()> {
    let audit = audit.clone();
    let job = job_id.to_string();
    let Some(dataset) = dataset else {
        return audit.append_async(&job, "start", json!({"dataset": null})).await;
    };
    let (spec, rows) = dataset;
    let (file, name) = (spec.file.clone(), spec.name.clone());
    cpu::run(move || {
        audit.with(|log| {
            let c = audit::commitment::commit_file(&file)?;
            audit::commitment::keep_salt(log.dir(), &job, "dataset", &c)?;
            log.append(
                &job,
                "start",
                json!({"dataset": name, "rows": rows, "dataset_commitment": audit::hex(&c.value)}),
            )
        })
    })
    .await
    .map(|_| ())
}

/// What a protocol run left for the log.
pub struct RunEvidence {
    /// The job channel's transcript digests and counts.
    pub stats: ChannelStats,
    /// Other channels the job used (e.g. to a dealer), by name.
    pub other_channels: Vec<(String, ChannelStats)>,
    /// ECDH-PSI proofs (they hold all proved points).
    pub ecdh: Option<EcdhEvidence>,
    /// The output file and its rows.
    pub output: Option<(PathBuf, u64)>,
}

/// Logs what the protocol run left: `transcript`, `channel_transcript` per other channel,
/// `proofs`, `output` (a salted commitment).
pub async fn record_run(audit: &Arc<NodeAudit>, job_id: &str, run: RunEvidence) -> Result<()> {
    let audit = audit.clone();
    let job = job_id.to_string();
    let RunEvidence { stats, other_channels: others, ecdh: evidence, output } = run;
    let storage_key = audit.storage_key.clone();
    cpu::run(move || {
        audit.with(|log| {
            events::record_transcript(log, &job, &stats)?;
            for (name, stats) in &others {
                events::record_channel_transcript(log, &job, name, stats)?;
            }
            if let Some(evidence) = &evidence {
                events::record_ecdh(log, &job, evidence)?;
            }
            if let Some((path, rows)) = &output {
                events::record_file(log, &job, "output", path, *rows, storage_key.as_deref())?;
            }
            Ok(())
        })
    })
    .await
}

/// Logs the end of a job (`end`, or `failure` with the reason).
pub async fn record_outcome(audit: &Arc<NodeAudit>, job: &str, failure: Option<&str>) {
    let fields = match failure {
        None => ("end", json!({})),
        Some(reason) => ("failure", json!({"reason": reason})),
    };
    if let Err(e) = audit.append_async(job, fields.0, fields.1).await {
        warn!(job, "cannot record the job outcome in the audit log: {e:#}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_an_audit_write_error_the_node_takes_no_new_jobs_until_restarted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        identity::init(&dir, "a", "127.0.0.1:0").unwrap();
        let audit = NodeAudit::open(&dir, None).unwrap();
        audit.append("j1", "request", json!({})).unwrap();
        // A dataset file a commitment cannot read is the job's problem, not the log's.
        assert!(audit.with(|_| audit::commitment::commit_file(&tmp.path().join("gone.csv"))).is_err());
        assert!(audit.healthy());

        // The audit directory stops being writable (here: it is replaced by a file, so every open
        // under it fails with ENOTDIR).
        let (audit_dir, moved) = (dir.join(audit::AUDIT_DIR), dir.join("audit.moved"));
        std::fs::rename(&audit_dir, &moved).unwrap();
        std::fs::write(&audit_dir, b"").unwrap();
        let error = format!("{:#}", audit.append("j2", "request", json!({})).unwrap_err());
        assert!(error.contains("the audit log could not be written") && error.contains("log.jsonl"), "{error}");
        assert!(error.contains("takes no new jobs until it is restarted"), "{error}");
        assert!(!audit.healthy());
        assert!(audit.failure().unwrap().contains("log.jsonl"));

        // The cause is fixed, but this node stays stopped: it fails fast, naming the first cause.
        std::fs::remove_file(&audit_dir).unwrap();
        std::fs::rename(&moved, &audit_dir).unwrap();
        let again = format!("{:#}", audit.append("j3", "request", json!({})).unwrap_err());
        assert_eq!(again, error);
        assert_eq!(audit.with(|log| Ok(log.entries().len())).unwrap_err().to_string(), error);
        drop(audit);

        // A restart finds a log that verifies, and logs again.
        let audit = NodeAudit::open(&dir, None).unwrap();
        assert!(audit.healthy());
        audit.append("j4", "request", json!({})).unwrap();
        assert_eq!(audit.with(|log| Ok(log.entries().len())).unwrap(), 2);
    }
}
