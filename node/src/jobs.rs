//! The node's job registry: ids, states (pending, running, done, failed) and live progress.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use consort_protocols::{ChannelStats, PsiProgress};
use tokio::sync::watch;

use crate::audit::NodeAudit;
use crate::proto::{JobStatus, Stage};

pub const PENDING: &str = "pending";
pub const RUNNING: &str = "running";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";

pub fn is_final(state: &str) -> bool {
    state == DONE || state == FAILED
}

/// A fresh random job id (12 hex digits from the OS CSPRNG).
pub fn new_job_id() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    format!("j{}", crate::identity::hex(&b))
}

/// Jobs by id, plus ids in submission order for listing.
#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<JobHandle>>,
    order: Vec<String>,
}

#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Registry>,
    /// Where jobs record their outcome (`None` in tests of the registry alone).
    audit: Option<Arc<NodeAudit>>,
}

/// One job's live status.
pub struct JobHandle {
    status: watch::Sender<JobStatus>,
    started: Instant,
    audit: Option<Arc<NodeAudit>>,
}

impl Jobs {
    /// A registry whose jobs record their end or failure in the node's audit log.
    pub fn with_audit(audit: Arc<NodeAudit>) -> Jobs {
        Jobs { inner: Mutex::default(), audit: Some(audit) }
    }

    /// Registers a job; fails if the id is taken.
    pub fn insert(&self, status: JobStatus) -> Option<Arc<JobHandle>> {
        let mut registry = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if registry.by_id.contains_key(&status.job_id) {
            return None;
        }
        let id = status.job_id.clone();
        let handle = Arc::new(JobHandle {
            status: watch::channel(status).0,
            started: Instant::now(),
            audit: self.audit.clone(),
        });
        registry.by_id.insert(id.clone(), handle.clone());
        registry.order.push(id);
        Some(handle)
    }

    pub fn get(&self, id: &str) -> Option<Arc<JobHandle>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_id.get(id).cloned()
    }

    pub fn list(&self) -> Vec<JobStatus> {
        let registry = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        registry.order.iter().filter_map(|id| registry.by_id.get(id)).map(|h| h.status()).collect()
    }
}

impl JobHandle {
    /// The node's audit log, if this job records evidence.
    pub fn audit(&self) -> Option<Arc<NodeAudit>> {
        self.audit.clone()
    }

    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }

    pub fn update(&self, f: impl FnOnce(&mut JobStatus)) {
        let secs = self.started.elapsed().as_secs_f64();
        self.status.send_modify(|s| {
            f(s);
            s.seconds = secs;
        });
    }

    pub fn stage(&self, stage: &str, done: u64, total: u64) {
        self.update(|s| {
            s.state = RUNNING.into();
            s.stage = stage.into();
            s.done = done;
            s.total = total;
        });
    }

    pub fn progress(&self, p: PsiProgress) {
        self.stage(p.stage, p.done, p.total);
    }

    pub fn record_stats(&self, stats: &ChannelStats, wire: (u64, u64)) {
        self.update(|s| {
            s.bytes_sent = stats.bytes_sent;
            s.bytes_received = stats.bytes_received;
            s.wire_bytes_sent = wire.0;
            s.wire_bytes_received = wire.1;
        });
    }

    pub fn add_stage(&self, name: &str, seconds: f64) {
        self.update(|s| s.stages.push(Stage { name: name.into(), seconds }));
    }

    pub fn finish(&self) {
        if let Some(audit) = &self.audit {
            crate::audit::record_outcome(audit, &self.status().job_id, None);
        }
        self.update(|s| {
            s.state = DONE.into();
            s.stage = String::new();
        });
    }

    pub fn fail(&self, error: String) {
        if let Some(audit) = &self.audit {
            crate::audit::record_outcome(audit, &self.status().job_id, Some(&error));
        }
        self.update(|s| {
            s.state = FAILED.into();
            s.error = error;
        });
    }
}
