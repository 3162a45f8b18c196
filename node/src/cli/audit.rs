//! `consort audit key|export|verify`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use consort_engine::audit::evidence::VerifyOptions;
use consort_engine::audit::{self, Bundle};
use consort_protocols::cpu;
use serde_json::json;

use super::exit::Exit;
use super::print_json;
use crate::identity;

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
        /// Print a JSON object (the bundle written, its entries) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check evidence bundles (one or both nodes' bundles of a job) and/or a node's whole log.
    Verify(VerifyArgs),
    /// Print this node's audit public key (ed25519, hex), for auditors to pin.
    Key {
        dir: PathBuf,
        /// Print a JSON object (`{"key": HEX}`) instead of the bare key.
        #[arg(long)]
        json: bool,
    },
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
        AuditCommand::Export { dir, job, out, json } => {
            let name = crate::config::NodeConfig::load(&dir)?.name;
            let key = identity::read_signing_key(&dir)?.verifying_key();
            let out = crate::config::absolute(&out)?;
            let audit_dir = dir.join(audit::AUDIT_DIR);
            let bundle = {
                let out = out.clone();
                cpu::run(move || audit::export(&audit_dir, &name, &key, &job, &out)).await?
            };
            if json {
                return print_json(&json!({
                    "job": bundle.job,
                    "out": out,
                    "entries": bundle.entries.len(),
                    "ecdh_proofs": bundle.ecdh.is_some(),
                }));
            }
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
        AuditCommand::Key { dir, json } => {
            let key = audit::hex(identity::read_signing_key(&dir)?.verifying_key().as_bytes());
            if json {
                return print_json(&json!({ "key": key }));
            }
            println!("{key}");
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
        let bundle: Bundle = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an evidence bundle", path.display()))
            .map_err(|e| Exit::BadInput.wrap(e))?;
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
