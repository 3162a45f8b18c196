//! `verify_bundles`: the engine's offline verifier of evidence bundles
//! (`consort_engine::audit::verify_bundles`, what `consort audit verify` runs).

use std::path::PathBuf;

use consort_engine::audit::evidence::VerifyOptions;
use consort_engine::audit::{self, Bundle};
use pyo3::prelude::*;

use crate::block_on;
use crate::errors::Failure;

/// Checks evidence bundles (one or both nodes' bundles of a job) against the nodes' public keys
/// (hex, from `consort audit key`). Returns the report (JSON: `ok`, `checks`). Unreadable files
/// and malformed keys raise; a bundle that does not verify is a failed check in the report.
#[pyfunction]
#[pyo3(signature = (bundles, keys, full=false))]
pub fn verify_bundles(py: Python<'_>, bundles: Vec<PathBuf>, keys: Vec<String>, full: bool) -> PyResult<String> {
    block_on(
        py,
        async move {
            tokio::task::spawn_blocking(move || verify(&bundles, &keys, full))
                .await
                .map_err(|e| Failure::Other(format!("internal error: {e}")))?
        },
        |_| Ok(()),
    )
}

fn verify(paths: &[PathBuf], keys: &[String], full: bool) -> Result<String, Failure> {
    if paths.is_empty() {
        return Err(Failure::Invalid("nothing to verify: give at least one bundle file".into()));
    }
    let trusted_keys = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            audit::unhex::<32>(k)
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                .ok_or_else(|| Failure::Invalid(format!("keys[{i}]: not an ed25519 public key in hex")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut bundles = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Invalid(format!("cannot read {}: {e}", path.display())))?;
        let bundle: Bundle = serde_json::from_str(&text)
            .map_err(|e| Failure::Invalid(format!("{}: not an evidence bundle: {e}", path.display())))?;
        bundles.push((path.clone(), bundle));
    }
    let started = std::time::Instant::now();
    let report = audit::verify_bundles(&bundles, &VerifyOptions { trusted_keys, full });
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({"ok": report.ok(), "seconds": seconds, "checks": report.checks}).to_string())
}
