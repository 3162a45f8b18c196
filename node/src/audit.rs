//! The node's audit log (see `consort_engine::audit` for the design and security model) and the
//! `consort audit` commands.
//!
//! Every job leaves entries in `DIR/audit/log.jsonl`, whatever its kind or protocol: `request`
//! (who asked, for which datasets, protocol and parameters), `grant` (the decision), `start`
//! (a salted commitment to the local dataset file and its row count), `transcript` (the job
//! channel's SHA-256 digests per direction), `proofs` (ECDH-PSI only: key commitments and DLEQ
//! proofs), `output` (a salted commitment to the output file and its row count), and `end` or
//! `failure`. The node signs a tree head after each entry with its ed25519 identity key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use consort_engine::audit::evidence::VerifyOptions;
use consort_engine::audit::{self, AuditError, AuditLog, Bundle, events};
use consort_engine::{Dataset, PsiReport};
use consort_protocols::{ChannelStats, cpu};
use serde_json::{Value, json};
use tracing::warn;

use crate::identity;
use crate::jobs::JobHandle;
use crate::node::NodeState;

/// Environment variable that turns ECDH-PSI proofs off (`off`), for measuring their overhead.
/// Both nodes must agree, or the job fails at the hello.
pub const PROOFS_ENV: &str = "CONSORT_ECDH_PROOFS";

/// Whether ECDH-PSI jobs of this node run with key commitments and DLEQ proofs (default: yes).
pub fn proofs_enabled() -> bool {
    std::env::var(PROOFS_ENV).map(|v| v != "off").unwrap_or(true)
}

/// The node's audit log, shared by its jobs.
pub struct NodeAudit {
    log: Mutex<AuditLog>,
}

impl NodeAudit {
    /// Opens `DIR/audit` with the node's identity key; fails if the existing log does not verify.
    pub fn open(dir: &Path) -> Result<Arc<NodeAudit>> {
        let key = identity::read_signing_key(dir)?;
        let log = AuditLog::open(dir, key).context("cannot open the audit log")?;
        Ok(Arc::new(NodeAudit { log: Mutex::new(log) }))
    }

    /// Runs `f` on the log (callers in async code go through [`cpu::run`]: appends rewrite files).
    pub fn with<T>(&self, f: impl FnOnce(&mut AuditLog) -> Result<T, AuditError>) -> Result<T> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&mut log)?)
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

/// Logs a job request and the grant decision (both sides; `role` is this node's).
pub async fn record_request(
    state: &NodeState,
    job_id: &str,
    role: &str,
    peer: &str,
    fields: Value,
    decision: Result<(), &str>,
) -> Result<()> {
    let fingerprint = state.config().peers.iter().find(|p| p.name == peer).map(|p| p.fingerprint.clone());
    let mut request = json!({"role": role, "peer": peer, "peer_certificate": fingerprint});
    if let (Value::Object(r), Value::Object(f)) = (&mut request, fields) {
        r.extend(f);
    }
    state.audit.append_async(job_id, "request", request).await?;
    let grant = match decision {
        Ok(()) => json!({"decision": "accepted"}),
        Err(reason) => json!({"decision": "refused", "reason": reason}),
    };
    state.audit.append_async(job_id, "grant", grant).await
}

/// Logs the start of a job: a salted commitment to the dataset file and its rows.
pub async fn record_start(handle: &JobHandle, dataset: &Dataset) -> Result<()> {
    let Some(audit) = handle.audit() else { return Ok(()) };
    let (job, file, rows) = (handle.status().job_id, dataset.spec.file.clone(), dataset.len() as u64);
    let name = dataset.spec.name.clone();
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

/// Logs what the protocol run left: transcript digests, ECDH proofs (taken out of the report: they
/// hold all proved points), the output commitment.
pub async fn record_run(handle: &JobHandle, stats: &ChannelStats, report: Option<&mut PsiReport>) -> Result<()> {
    let Some(audit) = handle.audit() else { return Ok(()) };
    let job = handle.status().job_id;
    let stats = stats.clone();
    let (evidence, output) = match report {
        Some(r) => (r.ecdh_evidence.take(), r.output.clone().map(|p| (p, r.intersection.unwrap_or(0)))),
        None => (None, None),
    };
    cpu::run(move || {
        audit.with(|log| {
            events::record_transcript(log, &job, &stats)?;
            if let Some(evidence) = &evidence {
                events::record_ecdh(log, &job, evidence)?;
            }
            if let Some((path, rows)) = &output {
                events::record_file(log, &job, "output", path, *rows)?;
            }
            Ok(())
        })
    })
    .await
}

/// Logs the end of a job (`end`, or `failure` with the reason); called by [`JobHandle`].
pub fn record_outcome(audit: &NodeAudit, job: &str, failure: Option<&str>) {
    let result = match failure {
        None => audit.append(job, "end", json!({})),
        Some(reason) => audit.append(job, "failure", json!({"reason": reason})),
    };
    if let Err(e) = result {
        warn!(job, "cannot record the job outcome in the audit log: {e:#}");
    }
}

/// Exports both nodes' bundles of `job` into `out_dir` as `NODE.json` (for `consort bench`).
pub async fn export_pair(a_dir: &Path, b_dir: &Path, job: &str, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    for dir in [a_dir, b_dir] {
        let name = crate::config::NodeConfig::load(dir)?.name;
        let key = identity::read_signing_key(dir)?.verifying_key();
        let (audit_dir, out, job) = (dir.join(audit::AUDIT_DIR), out_dir.join(format!("{name}.json")), job.to_string());
        cpu::run(move || audit::export(&audit_dir, &name, &key, &job, &out)).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// `consort audit`
// ------------------------------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Write the evidence bundle of a job: its signed log entries with proofs of inclusion and
    /// consistency, and (ECDH-PSI) the key commitments, DLEQ proofs and proved points.
    Export {
        /// The node directory.
        dir: PathBuf,
        #[arg(long)]
        job: String,
        /// Bundle file to write (points files go next to it).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check evidence bundles (one or both nodes' bundles of a job) and/or a node's whole log.
    Verify(VerifyArgs),
    /// Print this node's audit public key (ed25519, hex), for auditors to pin.
    Key { dir: PathBuf },
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Evidence bundles (from `consort audit export`); two bundles of the same job are also
    /// checked against each other.
    bundles: Vec<PathBuf>,
    /// A node's audit directory (DIR/audit) whose whole log to verify (needs --key).
    #[arg(long)]
    log: Option<PathBuf>,
    /// A trusted node public key (hex, from `consort audit key`). Repeatable.
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Check the DLEQ proofs over all proved points (default: the Fiat–Shamir sample).
    #[arg(long)]
    full: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Export { dir, job, out } => {
            let name = crate::config::NodeConfig::load(&dir)?.name;
            let key = identity::read_signing_key(&dir)?.verifying_key();
            let out = crate::config::absolute(&out)?;
            let audit_dir = dir.join(audit::AUDIT_DIR);
            let bundle = {
                let out = out.clone();
                cpu::run(move || audit::export(&audit_dir, &name, &key, &job, &out)).await?
            };
            println!(
                "wrote {} ({} entries of job {}{})",
                out.display(),
                bundle.entries.len(),
                bundle.job,
                if bundle.ecdh.is_some() { ", ECDH proofs and points" } else { "" }
            );
            Ok(())
        }
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Key { dir } => {
            println!("{}", audit::hex(identity::read_signing_key(&dir)?.verifying_key().as_bytes()));
            Ok(())
        }
    }
}

async fn verify(args: VerifyArgs) -> Result<()> {
    if args.bundles.is_empty() && args.log.is_none() {
        bail!("nothing to verify: give bundle files and/or --log DIR/audit");
    }
    let keys = args
        .keys
        .iter()
        .map(|k| {
            audit::unhex::<32>(k)
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                .with_context(|| format!("--key {k}: not an ed25519 public key in hex"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut report = audit::Report::default();
    if let Some(dir) = &args.log {
        let Some(key) = keys.first() else { bail!("--log needs the node's --key") };
        let (lines, heads) = audit::log::read_log(dir)?;
        let result = audit::verify_log(dir, &lines, &heads, key)
            .map(|s| {
                format!("{} entries, {} signed tree heads, every head verifies and covers the log", s.entries, s.heads)
            })
            .map_err(|e| e.to_string());
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        report.checks.push(audit::Check { name: format!("{}: whole log", dir.display()), ok, detail });
    }
    let mut bundles = Vec::new();
    for path in &args.bundles {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bundle: Bundle =
            serde_json::from_str(&text).with_context(|| format!("{}: not an evidence bundle", path.display()))?;
        bundles.push((path.clone(), bundle));
    }
    let options = VerifyOptions { trusted_keys: keys, full: args.full };
    let started = std::time::Instant::now();
    let bundle_report = cpu::run(move || audit::verify_bundles(&bundles, &options)).await;
    report.checks.extend(bundle_report.checks);
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", json!({"ok": report.ok(), "seconds": seconds, "checks": report.checks}));
    } else {
        for check in &report.checks {
            println!("{} {}: {}", if check.ok { "ok  " } else { "FAIL" }, check.name, check.detail);
        }
        println!("{} ({seconds:.2} s)", if report.ok() { "evidence verifies" } else { "evidence does NOT verify" });
    }
    if !report.ok() {
        let first = report.failures().next().map(|c| format!("{}: {}", c.name, c.detail)).unwrap_or_default();
        bail!("audit verification failed: {first}");
    }
    Ok(())
}
