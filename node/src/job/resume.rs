//! Resumable streaming jobs on a node (issue 12 item 3; the protocol side is
//! `consort_engine::psi_stream::resume`).
//!
//! A streaming RR22 PSI job keeps its state in `DIR/spill/JOB/`: the engine's sealed checkpoint,
//! spill and output segments, its spill key sealed under the node's storage key (`key`), and
//! `job.json` (peer, dataset, role: what a resume must match). `consort psi ... --resume JOB`
//! submits a new psi job with the parameter `{"resume": "JOB"}`; both nodes validate it in `plan`
//! and check here that they hold JOB's state for the same peer, dataset and role before the
//! engine compares sessions and finished ranges with the peer. While a part of JOB runs, its key
//! file is locked (`flock`, released when the process dies): two parts never run at once.
//!
//! The state is kept after a failure or a kill (a node start keeps it, [`keep_resumable`]),
//! removed when a part finishes, and expires after [`RESUMABLE_DAYS`] days (removed at the next
//! node start); `consort discard JOB` removes it at once.
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Failure;
use anyhow::{Context, Result, anyhow, bail};
use consort_engine::psi_stream::resume::{create_job_key, is_resumable, load_job_key};
use consort_engine::sealed::StorageKey;

use super::Ask;
use crate::state::NodeState;

/// Days a node keeps an interrupted job's resumable state.
pub const RESUMABLE_DAYS: u64 = 7;
const META: &str = "job.json";

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct Meta {
    peer: String,
    dataset: String,
    role: String,
}

fn meta_of(ask: &Ask) -> Meta {
    Meta { peer: ask.peer.clone(), dataset: ask.dataset.clone(), role: format!("{:?}", ask.role) }
}

/// The spill key of a streaming job (made, or found for a resume) and the lock held while the
/// part runs. Refusals (no such state, another peer) are told to the peer as they are; a failure
/// of this node's files is private (its message names paths).
pub fn job_key(state: &Arc<NodeState>, ask: &Ask, dir: &Path, resume: bool) -> Result<(StorageKey, File), Failure> {
    let node_key = &state.storage.key;
    let key = if resume {
        if !dir.is_dir() {
            return Err(Failure::shared(anyhow!(
                "this node has no resumable state for that job (unknown, finished, discarded or expired)"
            )));
        }
        let meta: Meta = std::fs::read(dir.join(META))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Failure::shared(anyhow!("the resumable state of that job is damaged")))?;
        if meta != meta_of(ask) {
            return Err(Failure::shared(anyhow!("the job to resume ran with another peer, dataset or role")));
        }
        load_job_key(dir, node_key).map_err(Failure::private)?
    } else {
        let key = create_job_key(dir, node_key).map_err(Failure::private)?;
        let meta = serde_json::to_vec(&meta_of(ask)).expect("serializable");
        consort_engine::storage::write_atomic(&dir.join(META), &meta, consort_engine::storage::Access::OwnerOnly)
            .with_context(|| format!("cannot write {}", dir.join(META).display()))
            .map_err(Failure::private)?;
        key
    };
    let lock = File::open(dir.join("key")).context("cannot open the job's key file").map_err(Failure::private)?;
    lock.try_lock().map_err(|_| Failure::shared(anyhow!("that job is running (or being resumed) already")))?;
    Ok((key, lock))
}

/// At node start: keeps the spill directories of resumable jobs younger than
/// [`RESUMABLE_DAYS`], removes everything else (spill of jobs cut short before their first
/// checkpoint, expired state, stray files).
pub fn keep_resumable(spill: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(spill) else { return Ok(()) };
    let max_age = Duration::from_secs(RESUMABLE_DAYS * 86_400);
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", spill.display()))?.path();
        let age = std::fs::metadata(path.join(META))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let keep = path.is_dir() && is_resumable(&path) && age.is_some_and(|a| a < max_age);
        if keep {
            tracing::info!(dir = %path.display(), "keeping an interrupted job's resumable state");
            continue;
        }
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("cannot remove old spill {}", path.display()))?;
    }
    Ok(())
}

/// Removes a job's resumable state, logging it first as the job's `discard` audit entry (nothing
/// is removed that the log does not record; no state, nothing logged). The node's control
/// service runs it for `consort discard` while the node runs, the CLI itself while it does not
/// ([`discard_offline`]).
pub async fn discard_logged(node_dir: &Path, audit: &Arc<crate::audit::NodeAudit>, job_id: &str) -> Result<bool> {
    crate::config::check_name("job id", job_id)?;
    let dir = node_dir.join(crate::config::SPILL_DIR).join(job_id);
    if !dir.exists() {
        return Ok(false);
    }
    let lock = File::open(dir.join("key")).ok();
    if let Some(l) = &lock
        && l.try_lock().is_err()
    {
        bail!("that job is running: stop it first");
    }
    let meta: Option<Meta> = std::fs::read(dir.join(META)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let fields = serde_json::json!({
        "peer": meta.as_ref().map(|m| m.peer.clone()),
        "dataset": meta.as_ref().map(|m| m.dataset.clone()),
        "resumable": is_resumable(&dir),
    });
    audit.append_async(job_id, "discard", fields).await.context("cannot log the discard in the audit log")?;
    consort_engine::psi_stream::resume::discard(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    Ok(true)
}

/// `consort discard` with no node running in `node_dir`: the CLI logs the discard in the node's
/// audit log itself. It holds the node's control socket meanwhile, so a node started at the same
/// time finds it taken and refuses to start (one writer of the log at a time).
pub async fn discard_offline(node_dir: &Path, job_id: &str) -> Result<bool> {
    crate::config::check_name("job id", job_id)?;
    if !node_dir.join(crate::config::SPILL_DIR).join(job_id).exists() {
        return Ok(false);
    }
    let socket = node_dir.join(crate::config::CONTROL_SOCKET);
    if socket.exists() {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            bail!("a node is running in {}: it discards the job itself (try again)", node_dir.display());
        }
        std::fs::remove_file(&socket).with_context(|| format!("cannot remove stale {}", socket.display()))?;
    }
    let _held = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("a node is starting in {} (try again)", node_dir.display()))?;
    let result = async {
        let config = crate::config::NodeConfig::load(node_dir)?;
        let storage = crate::at_rest::NodeStorage::open(node_dir, &config)?;
        let audit = crate::audit::NodeAudit::open(node_dir, Some(storage.key.clone()))?;
        discard_logged(node_dir, &audit, job_id).await
    }
    .await;
    let _ = std::fs::remove_file(&socket);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_start_keeps_only_resumable_state() {
        let tmp = tempfile::tempdir().unwrap();
        let spill = tmp.path();
        for (name, files) in
            [("resumable", &["key", "checkpoint", META][..]), ("cut-short", &["key", META, "bucket-0000000"][..])]
        {
            std::fs::create_dir_all(spill.join(name)).unwrap();
            for f in files {
                std::fs::write(spill.join(name).join(f), b"x").unwrap();
            }
        }
        std::fs::write(spill.join("stray"), b"x").unwrap();
        keep_resumable(spill).unwrap();
        let left: Vec<String> =
            std::fs::read_dir(spill).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, vec!["resumable".to_string()]);
    }
}
