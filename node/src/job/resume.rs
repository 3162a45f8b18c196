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
/// How long a resume waits for the job's previous part on this node to end. When the peer's node
/// was killed, this node's part notices only at its next frame (after the bucket it is computing:
/// ~1.8 s at 10^8 rows, measured), and a resume that comes sooner would otherwise be refused.
pub const RESUME_WAIT: Duration = Duration::from_secs(30);
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
/// of this node's files is private (its message names paths). A resume waits up to
/// [`RESUME_WAIT`] for a part of the job still running here to end (asleep: the runtime goes on);
/// one that still runs then is refused, so a peer asking again and again holds a job slot for at
/// most that long each time.
pub async fn job_key(
    state: &Arc<NodeState>,
    ask: &Ask,
    dir: &Path,
    resume: bool,
) -> Result<(StorageKey, File), Failure> {
    key_and_lock(&state.storage.key, &meta_of(ask), dir, resume, RESUME_WAIT).await
}

/// [`job_key`] with the node's storage key, the job's peer, dataset and role, and the longest
/// wait for a running part.
async fn key_and_lock(
    node_key: &StorageKey,
    meta: &Meta,
    dir: &Path,
    resume: bool,
    wait: Duration,
) -> Result<(StorageKey, File), Failure> {
    let key = if resume {
        if !dir.is_dir() {
            return Err(Failure::shared(anyhow!(
                "this node has no resumable state for that job (unknown, finished, discarded or expired)"
            )));
        }
        let found: Meta = std::fs::read(dir.join(META))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Failure::shared(anyhow!("the resumable state of that job is damaged")))?;
        if &found != meta {
            return Err(Failure::shared(anyhow!("the job to resume ran with another peer, dataset or role")));
        }
        load_job_key(dir, node_key).map_err(Failure::private)?
    } else {
        let key = create_job_key(dir, node_key).map_err(Failure::private)?;
        let bytes = serde_json::to_vec(meta).expect("serializable");
        consort_engine::storage::write_atomic(&dir.join(META), &bytes, consort_engine::storage::Access::OwnerOnly)
            .with_context(|| format!("cannot write {}", dir.join(META).display()))
            .map_err(Failure::private)?;
        key
    };
    let lock = File::open(dir.join("key")).context("cannot open the job's key file").map_err(Failure::private)?;
    let waited = std::time::Instant::now();
    while lock.try_lock().is_err() {
        if !resume || waited.elapsed() >= wait {
            return Err(Failure::shared(anyhow!("that job is running (or being resumed) already")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

    /// A resume that finds the job's previous part still running here (its peer's node was
    /// killed and this part has not noticed yet) waits for it to end, asleep, and goes on; one
    /// still running after the wait is refused; a new job never waits.
    #[tokio::test]
    async fn a_resume_waits_for_the_part_still_running() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        std::fs::create_dir_all(&dir).unwrap();
        let node_key = StorageKey::from_bytes([5; 32]);
        let meta = Meta { peer: "bank".into(), dataset: "accounts".into(), role: "Responder".into() };
        let (_, running) = key_and_lock(&node_key, &meta, &dir, false, RESUME_WAIT).await.map_err(|_| ()).unwrap();
        // Still running after the wait: refused, and only after it.
        let clock = std::time::Instant::now();
        let refused = key_and_lock(&node_key, &meta, &dir, true, Duration::from_millis(300)).await;
        assert!(refused.is_err() && clock.elapsed() >= Duration::from_millis(300));
        // The running part ends 400 ms into the wait: the resume goes on with the job's key.
        let ends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            drop(running);
        });
        let clock = std::time::Instant::now();
        let resumed = key_and_lock(&node_key, &meta, &dir, true, RESUME_WAIT).await;
        assert!(resumed.is_ok() && clock.elapsed() >= Duration::from_millis(400));
        ends.await.unwrap();
        // Another peer's resume is refused without waiting for anything.
        let other = Meta { peer: "mallory".into(), ..meta };
        assert!(key_and_lock(&node_key, &other, &dir, true, RESUME_WAIT).await.is_err());
    }
}
