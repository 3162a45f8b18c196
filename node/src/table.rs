//! The node's job table: every job's id, kind, parties, datasets, state, times and output, kept
//! live in memory and persisted as one JSON file per job in `DIR/jobs/ID.json`.
//!
//! Writes are atomic (temp file, fsync, rename, directory fsync) and happen at every state change
//! (registered, running, done, failed, refused), not on progress updates. On start the node marks
//! jobs whose last persisted state was pending or running as `interrupted` ([`JobTable::open`]).
//! Ids are never reused: an id is taken as soon as a request for it is seen, from either side, and
//! stays taken across restarts.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use consort_api::proto::{JobStatus, Stage};
use consort_api::{JobKind, JobState};
use consort_protocols::{ChannelStats, PsiProgress};
use tokio::sync::watch;
use tracing::warn;

/// Where the job table lives in the node directory.
pub const JOBS_DIR: &str = "jobs";

/// A fresh random job id (12 hex digits from the OS CSPRNG).
pub fn new_job_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    format!("j{}", crate::identity::hex(&b))
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Jobs by id, plus ids in registration order for listing.
#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<JobHandle>>,
    order: Vec<String>,
}

/// The job table of one node.
pub struct JobTable {
    /// `DIR/jobs`; `None` keeps the table in memory only (tests of the registry alone).
    dir: Option<PathBuf>,
    inner: Mutex<Registry>,
    /// Ids known from elsewhere (the audit log of a node older than its table): taken too.
    reserved: HashSet<String>,
    /// Jobs by kind, role and state, for `/metrics` (this process's jobs only).
    metrics: Arc<crate::metrics::JobMetrics>,
}

/// One job's live status; state changes are persisted.
pub struct JobHandle {
    status: watch::Sender<JobStatus>,
    started: Instant,
    file: Option<PathBuf>,
    /// Serializes this job's table writes so a later state never loses to an earlier one.
    persist_lock: tokio::sync::Mutex<()>,
    metrics: Arc<crate::metrics::JobMetrics>,
    /// Bytes of the job's other connections (a sharded job's workers): payload sent and
    /// received, wire sent and received; added to the job channel's in [`JobHandle::record_stats`].
    other_bytes: std::sync::Mutex<[u64; 4]>,
}

/// Whether `path` is a file last modified at or after unix second `since`.
fn modified_since(path: &Path, since: u64) -> bool {
    let modified = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file()).and_then(|m| m.modified().ok());
    modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).is_some_and(|d| d.as_secs() >= since)
}

/// Removes the temporary files of output writes cut short (`.consort-*.partial`, the engine's
/// temp file names) in `dir`. Called only at start, when no job of this node writes.
fn remove_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".consort-") && name.ends_with(".partial") && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl JobTable {
    /// A table kept only in memory.
    pub fn in_memory() -> JobTable {
        JobTable { dir: None, inner: Mutex::default(), reserved: HashSet::new(), metrics: Default::default() }
    }

    /// Opens `DIR/jobs`: loads every record, and marks jobs that were pending or running when the
    /// node stopped as `interrupted` (returning their ids, so the caller can log it). `reserved`
    /// ids (e.g. every job id in the audit log) are never handed out again either.
    pub fn open(node_dir: &Path, mut reserved: HashSet<String>) -> Result<(JobTable, Vec<String>)> {
        let dir = node_dir.join(JOBS_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (mut records, damaged) = read_records(&dir)?;
        reserved.extend(damaged);
        let mut interrupted = Vec::new();
        for s in &mut records {
            if !s.job_state().is_final() {
                // Nothing of an interrupted job stays: its output (named in the record as soon as
                // it was in place) and the temporary files of a write the stop cut short.
                if !s.output.is_empty() {
                    let _ = std::fs::remove_file(&s.output);
                }
                // The output the job was about to write, if it was written after the job began
                // (a file that was there before is someone else's and stays).
                if !s.output_target.is_empty() && modified_since(Path::new(&s.output_target), s.created) {
                    let _ = std::fs::remove_file(&s.output_target);
                }
                for written in [&s.output, &s.output_target] {
                    if let Some(parent) = Path::new(written.as_str()).parent().filter(|p| p.is_absolute()) {
                        remove_partials(parent);
                    }
                }
                s.state = JobState::Interrupted as i32;
                s.error = "the node stopped while the job ran".into();
                s.stage = String::new();
                s.finished = now_unix();
                s.output.clear();
                s.output_rows = 0;
                write_record(&dir, s)?;
                interrupted.push(s.job_id.clone());
            }
        }
        if !interrupted.is_empty() {
            remove_partials(&node_dir.join(crate::config::OUTPUTS_DIR));
        }
        records.sort_by(|a, b| (a.created, &a.job_id).cmp(&(b.created, &b.job_id)));
        let table = JobTable { dir: Some(dir), inner: Mutex::default(), reserved, metrics: Default::default() };
        {
            let mut registry = table.inner.lock().unwrap_or_else(|p| p.into_inner());
            for s in records {
                let handle = table.handle(s);
                registry.order.push(handle.id());
                registry.by_id.insert(handle.id(), handle);
            }
        }
        Ok((table, interrupted))
    }

    fn handle(&self, status: JobStatus) -> Arc<JobHandle> {
        let file = self.dir.as_ref().map(|d| d.join(format!("{}.json", status.job_id)));
        Arc::new(JobHandle {
            status: watch::channel(status).0,
            started: Instant::now(),
            file,
            persist_lock: Default::default(),
            metrics: self.metrics.clone(),
            other_bytes: Default::default(),
        })
    }

    /// The figures of this process's jobs (registered in `NodeState::metrics`).
    pub fn metrics(&self) -> &crate::metrics::JobMetrics {
        &self.metrics
    }

    /// Registers a job under a fresh id and persists it; `None` if the id was ever seen here
    /// (in memory or in the table on disk). The caller must not log anything under a refused id.
    pub async fn insert(&self, mut status: JobStatus) -> Result<Option<Arc<JobHandle>>> {
        status.created = now_unix();
        let handle = {
            let mut registry = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            // Every record on disk was loaded at open: no file system call under the lock.
            if registry.by_id.contains_key(&status.job_id) || self.reserved.contains(&status.job_id) {
                return Ok(None);
            }
            let handle = self.handle(status);
            registry.by_id.insert(handle.id(), handle.clone());
            registry.order.push(handle.id());
            handle
        };
        self.metrics.changed(&handle.status(), None, 0.0);
        handle.persist().await?;
        Ok(Some(handle))
    }

    pub fn get(&self, id: &str) -> Option<Arc<JobHandle>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_id.get(id).cloned()
    }

    pub fn list(&self) -> Vec<JobStatus> {
        let registry = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        registry.order.iter().filter_map(|id| registry.by_id.get(id)).map(|h| h.status()).collect()
    }
}

/// Reads the table of a node directory without a running node (for `consort jobs`), oldest first.
pub fn read_table(node_dir: &Path) -> Result<Vec<JobStatus>> {
    let dir = node_dir.join(JOBS_DIR);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let (mut records, _) = read_records(&dir)?;
    records.sort_by(|a, b| (a.created, &a.job_id).cmp(&(b.created, &b.job_id)));
    Ok(records)
}

/// The table of a node that is not running: a job not in a final state cannot be running, so it
/// reads as `interrupted` (the node marks it so on disk when it next starts).
pub fn read_table_stopped(node_dir: &Path) -> Result<Vec<JobStatus>> {
    let mut records = read_table(node_dir)?;
    for s in &mut records {
        if !s.job_state().is_final() {
            s.state = JobState::Interrupted as i32;
            s.stage = String::new();
            s.error = "the node stopped while the job ran".into();
        }
    }
    Ok(records)
}

/// The records in `dir`, and the ids of files that are not records (kept taken).
fn read_records(dir: &Path) -> Result<(Vec<JobStatus>, Vec<String>)> {
    let (mut records, mut damaged) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".json") {
            // Temp files of an interrupted write: the rename never happened, the old record stands.
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        match serde_json::from_str::<JobStatus>(&text) {
            Ok(s) => records.push(s),
            // Records are renamed into place whole, so this is damage from outside the node: keep
            // starting, keep the id taken (the file stays), and say so.
            Err(e) => {
                warn!("{}: not a job record ({e}); ignored", path.display());
                damaged.push(name.trim_end_matches(".json").to_string());
            }
        }
    }
    Ok((records, damaged))
}

/// Records are private to the node (0600), like the rest of its directory.
fn write_record(dir: &Path, status: &JobStatus) -> Result<()> {
    let path = dir.join(format!("{}.json", status.job_id));
    let text = serde_json::to_vec_pretty(status)?;
    consort_engine::storage::write_atomic(&path, &text, consort_engine::storage::Access::OwnerOnly)
        .with_context(|| format!("cannot write {}", path.display()))
}

impl JobHandle {
    pub fn id(&self) -> String {
        self.status.borrow().job_id.clone()
    }

    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    pub fn kind(&self) -> JobKind {
        self.status.borrow().job_kind()
    }

    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }

    /// Writes the current status to the table (off the async runtime's threads).
    pub async fn persist(&self) -> Result<()> {
        let Some(file) = self.file.clone() else { return Ok(()) };
        let _guard = self.persist_lock.lock().await;
        let status = self.status();
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        tokio::task::spawn_blocking(move || write_record(&dir, &status)).await.context("job table writer panicked")?
    }

    pub fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        let secs = self.started.elapsed().as_secs_f64();
        self.status.send_modify(|s| {
            f(s);
            if !s.job_state().is_final() {
                s.seconds = secs;
            }
        });
    }

    pub fn stage(&self, stage: &str, done: u64, total: u64) {
        self.update(|s| {
            s.stage = stage.into();
            s.done = done;
            s.total = total;
        });
    }

    pub fn progress(&self, p: PsiProgress) {
        self.stage(p.stage, p.done, p.total);
    }

    pub fn record_stats(&self, stats: &ChannelStats, wire: (u64, u64)) {
        let other = *self.other_bytes.lock().unwrap_or_else(|p| p.into_inner());
        self.update(|s| {
            s.bytes_sent = stats.bytes_sent + other[0];
            s.bytes_received = stats.bytes_received + other[1];
            s.wire_bytes_sent = wire.0 + other[2];
            s.wire_bytes_received = wire.1 + other[3];
        });
    }

    /// Counts another connection of the job (a shard worker's) in its bytes: `payload` and
    /// `wire` (sent, received).
    pub fn add_connection_bytes(&self, payload: (u64, u64), wire: (u64, u64)) {
        let mut other = self.other_bytes.lock().unwrap_or_else(|p| p.into_inner());
        for (o, v) in other.iter_mut().zip([payload.0, payload.1, wire.0, wire.1]) {
            *o += v;
        }
    }

    pub fn add_stage(&self, name: &str, seconds: f64) {
        self.update(|s| s.stages.push(Stage { name: name.into(), seconds }));
    }

    /// Moves the job to `state` and persists it (errors are logged: the job's outcome stands in
    /// memory and in the audit log even if the table cannot take it).
    pub async fn set_state(&self, state: JobState, error: Option<String>) {
        let mut from = JobState::Unspecified;
        self.update(|s| {
            from = s.job_state();
            s.state = state as i32;
            if state.is_final() {
                s.stage = String::new();
                s.finished = now_unix();
            }
            if let Some(e) = error {
                s.error = e;
            }
        });
        if from != state {
            self.metrics.changed(&self.status(), Some(from), self.started.elapsed().as_secs_f64());
        }
        if let Err(e) = self.persist().await {
            warn!(job = %self.id(), "cannot persist the job's state: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str) -> JobStatus {
        JobStatus {
            job_id: id.into(),
            kind: JobKind::Psi as i32,
            state: JobState::Pending as i32,
            ..Default::default()
        }
    }

    /// A node killed mid-job: at its next start the interrupted job's files go (its output, the
    /// output it was writing, temp files), but a file that was at the output path before the job
    /// began stays.
    #[test]
    fn an_interrupted_jobs_files_are_removed_at_start_but_not_older_files() {
        let node = tempfile::tempdir().unwrap();
        let jobs = node.path().join(JOBS_DIR);
        let outs = node.path().join(crate::config::OUTPUTS_DIR);
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::create_dir_all(&outs).unwrap();
        let file = |name: &str| {
            let p = outs.join(name);
            std::fs::write(&p, "x").unwrap();
            p
        };
        let (done, writing, older, partial) =
            (file("done.csv"), file("writing.csv"), file("older.csv"), file(".consort-a1b2.partial"));
        let now = now_unix();
        let record = |id: &str, output: &Path, target: &Path, created: u64| JobStatus {
            state: JobState::Running as i32,
            output: output.display().to_string(),
            output_target: target.display().to_string(),
            created,
            ..status(id)
        };
        write_record(&jobs, &record("j1", &done, &done, now - 5)).unwrap();
        write_record(&jobs, &record("j2", Path::new(""), &writing, now - 5)).unwrap();
        // Its target existed before the job was registered (modified before `created`).
        write_record(&jobs, &record("j3", Path::new(""), &older, now + 3600)).unwrap();
        let (table, interrupted) = JobTable::open(node.path(), HashSet::new()).unwrap();
        assert_eq!(interrupted.len(), 3);
        assert!(!done.exists() && !writing.exists() && !partial.exists());
        assert!(older.exists(), "a file older than the job is not the job's");
        assert!(table.list().iter().all(|s| s.output.is_empty() && s.job_state() == JobState::Interrupted));
    }

    #[tokio::test]
    async fn ids_are_never_reused_across_restarts_and_running_jobs_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let (table, interrupted) = JobTable::open(dir.path(), HashSet::new()).unwrap();
        assert!(interrupted.is_empty());
        let done = table.insert(status("j1")).await.unwrap().unwrap();
        done.set_state(JobState::Done, None).await;
        let running = table.insert(status("j2")).await.unwrap().unwrap();
        running.set_state(JobState::Running, None).await;
        assert!(table.insert(status("j1")).await.unwrap().is_none(), "an id in use is refused");
        drop(table);

        // A crash leaves a temp file of an interrupted write: it is ignored. A damaged record
        // keeps its id taken.
        std::fs::write(dir.path().join(JOBS_DIR).join(".tmp-x"), b"{half").unwrap();
        std::fs::write(dir.path().join(JOBS_DIR).join("j8.json"), b"{half").unwrap();
        let (table, interrupted) = JobTable::open(dir.path(), HashSet::new()).unwrap();
        assert_eq!(interrupted, vec!["j2".to_string()]);
        let list = table.list();
        assert_eq!(list.iter().map(|s| s.job_id.as_str()).collect::<Vec<_>>(), ["j1", "j2"]);
        assert_eq!(list[0].job_state(), JobState::Done);
        assert_eq!(list[1].job_state(), JobState::Interrupted);
        assert!(table.insert(status("j1")).await.unwrap().is_none(), "an earlier id stays taken after a restart");
        assert!(table.insert(status("j2")).await.unwrap().is_none());
        assert!(table.insert(status("j3")).await.unwrap().is_some());
        assert!(table.insert(status("j8")).await.unwrap().is_none(), "a damaged record's id stays taken");
        drop(table);
        let reserved = HashSet::from(["j9".to_string()]);
        let (table, _) = JobTable::open(dir.path(), reserved).unwrap();
        assert!(table.insert(status("j9")).await.unwrap().is_none(), "an id from the audit log is taken");
        // The stopped node's view, straight from disk.
        let read = read_table(dir.path()).unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read[1].job_state(), JobState::Interrupted);
    }
}
