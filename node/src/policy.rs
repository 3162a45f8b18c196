//! Grant policy: what a grant lets one job be, the budgets counted from the job table, the rate of
//! refusals a peer may cause, and jobs waiting for the operator's approval.
//!
//! The envelope calls [`check`] for every job kind, on the responder before the job is accepted
//! (and before anything is loaded) and on the requester before the request is sent; the bounds
//! that only the protocol can enforce (the peer's announced set size, the aligned rows) travel
//! into the job as [`JobLimits`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use consort_api::proto::JobStatus;
use consort_api::{JobKind, JobState};
use consort_engine::JobLimits;
use consort_protocols::Role;
use tokio::sync::oneshot;

use crate::config::Grant;
use crate::job::{Ask, Job};

/// The window over which `jobs_per_day` counts jobs.
pub const DAY: u64 = 24 * 60 * 60;

/// Why `job` may not run under `grant`, or the limits it runs with. `peer_rows` is the size of
/// the peer's set as it declared it (the responder knows it from the request; the requester
/// checks the responder's after its answer, [`check_peer_rows`]). `jobs` is this node's job
/// table; the job itself, if already in it, is `ask.job_id` and is not counted.
pub fn check(
    grant: &Grant,
    ask: &Ask,
    job: &dyn Job,
    peer_rows: Option<u64>,
    jobs: &[JobStatus],
    now: u64,
) -> Result<JobLimits, String> {
    let on = |what: String| format!("{what} (grant for '{}' on dataset '{}')", ask.peer, ask.dataset);
    match grant.expires_at() {
        Ok(Some(end)) if now >= end => {
            return Err(on(format!("the grant expired on {}", grant.expires.as_deref().unwrap_or_default())));
        }
        Ok(_) => {}
        Err(_) => return Err(on("the grant's expiry date is invalid".into())),
    }
    if let Some((protocol, reveal)) = job.psi() {
        if !grant.protocols.is_empty() && !grant.protocols.contains(&protocol) {
            return Err(on(format!("protocol {} is not allowed", protocol.name())));
        }
        if ask.kind == JobKind::Psi && !grant.reveal.is_empty() && !grant.reveal.contains(&reveal) {
            return Err(on(format!("reveal mode {} is not allowed", consort_api::vocab::Vocabulary::name(reveal))));
        }
        if grant.min_aligned_rows > 0 && !reveal.learns(ask.role) {
            return Err(on(format!(
                "at least {} aligned rows are required, which this node cannot check when only the {} learns the intersection",
                grant.min_aligned_rows,
                if ask.role == Role::Responder { "requester" } else { "responder" }
            )));
        }
    }
    // Payload joins: every column the requester asks for must be shared with it by this grant.
    if ask.role == Role::Responder
        && let Some(column) = job.shared_columns().iter().find(|c| !grant.share.contains(c))
    {
        return Err(on(format!(
            "column '{column}' is not shared with this peer{}",
            if grant.share.is_empty() { String::new() } else { format!(" (shared: {})", grant.share.join(", ")) }
        )));
    }
    // SecureBoost: the partitions of its rows by this node's thresholds the label holder may see.
    if ask.role == Role::Responder
        && let (Some(max), Some(asked)) = (grant.max_split_nodes, job.split_nodes())
        && asked > max
    {
        return Err(on(format!(
            "the job may grow {asked} split nodes (trees × (2^depth − 1)); this grant allows at most {max}"
        )));
    }
    if let Some(dealer) = job.dealer()
        && !grant.dealers.iter().any(|d| d == dealer)
    {
        return Err(on(if grant.dealers.is_empty() {
            format!("training with a dealer ('{dealer}') is not allowed, only dealer-free")
        } else {
            format!("dealer '{dealer}' is not allowed (allowed: {})", grant.dealers.join(", "))
        }));
    }
    if let Some(rows) = peer_rows {
        check_peer_rows(grant, rows).map_err(on)?;
    }
    let mine = |s: &&JobStatus| s.job_id != ask.job_id && s.peer == ask.peer && s.dataset == ask.dataset;
    // Unbalanced PSI: every query item is a membership test of the list, counted in all.
    if ask.kind == JobKind::PsiQuery
        && ask.role == Role::Responder
        && let Some(budget) = grant.queries
    {
        let used: u64 = jobs
            .iter()
            .filter(mine)
            .filter(|s| s.job_kind() == JobKind::PsiQuery && counts(s))
            .map(|s| s.peer_rows)
            .sum();
        let asked = peer_rows.unwrap_or(0);
        if used.saturating_add(asked) > budget {
            return Err(on(format!("the budget of {budget} query items is used up ({used} used, {asked} asked)")));
        }
    }
    if let Some(budget) = grant.jobs_per_day {
        let since = now.saturating_sub(DAY);
        let used = jobs.iter().filter(mine).filter(|s| s.created >= since && counts(s)).count();
        if used >= budget as usize {
            return Err(on(format!("the budget of {budget} jobs per 24 hours is used up")));
        }
    }
    // Scores go to the label holder (the requester of train and score jobs): the models budget
    // protects the responder's features, and is counted there.
    // LR and SecureBoost models count against the one budget: each scored model reveals more of
    // this node's features, whichever kind it is.
    if trains_model(ask.kind) && ask.role == Role::Responder {
        let budget = grant.models();
        let used =
            jobs.iter().filter(mine).filter(|s| trains_model(s.job_kind()) && holds_model(s.job_state())).count();
        if used >= budget as usize {
            return Err(on(format!(
                "the budget of {budget} model(s) on this dataset is used up (each model scored reveals one more combination of this node's features)"
            )));
        }
    }
    Ok(JobLimits {
        max_peer_rows: peer_rows.unwrap_or(grant.max_peer_rows()),
        min_aligned_rows: grant.min_aligned_rows,
    })
}

/// The peer's declared set size against the grant's maximum.
pub fn check_peer_rows(grant: &Grant, rows: u64) -> Result<(), String> {
    if rows > grant.max_peer_rows() {
        return Err(format!("the peer's set of {rows} rows is larger than the {} allowed", grant.max_peer_rows()));
    }
    Ok(())
}

/// Jobs that count against a daily budget: every accepted job. Refused requests do not, on
/// either side: the responder records them `refused`, the requester `failed` with
/// `refused_by_peer`.
fn counts(s: &JobStatus) -> bool {
    !s.refused_by_peer && !matches!(s.job_state(), JobState::Refused | JobState::Unspecified)
}

/// Job kinds that train a model (LR `train`, `secureboost`).
fn trains_model(kind: JobKind) -> bool {
    matches!(kind, JobKind::Train | JobKind::Secureboost)
}

/// Train jobs that produced or may still produce a model.
fn holds_model(state: JobState) -> bool {
    matches!(state, JobState::Pending | JobState::Running | JobState::Done | JobState::AwaitingApproval)
}

// ------------------------------------------------------------------------------------------------
// Refusals per peer
// ------------------------------------------------------------------------------------------------

/// Refusals a peer may cause per minute before its requests are turned away unrecorded.
pub const MAX_REFUSALS_PER_MINUTE: u32 = 20;

/// Counts refusals per peer in one-minute windows: past the cap, a peer's requests are refused
/// at once, with nothing taken, recorded or logged but one warning per window, so a peer cannot
/// grow the audit log or the job table with requests it knows will be refused.
#[derive(Default)]
pub struct RefusalLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RefusalLimiter {
    /// Whether `peer` is over its cap now. `true` once per window the first time (to warn).
    pub fn over(&self, peer: &str) -> Option<bool> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let entry = w.get_mut(peer)?;
        if entry.0.elapsed() >= Duration::from_secs(60) {
            w.remove(peer);
            return None;
        }
        if entry.1 < MAX_REFUSALS_PER_MINUTE {
            return None;
        }
        entry.1 += 1;
        Some(entry.1 == MAX_REFUSALS_PER_MINUTE + 1)
    }

    pub fn note(&self, peer: &str) {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let entry = w.entry(peer.to_string()).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

// ------------------------------------------------------------------------------------------------
// Approvals
// ------------------------------------------------------------------------------------------------

/// How long a job waits for its approval before it is refused.
pub const APPROVAL_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The operator's decision on a waiting job.
#[derive(Debug, Clone)]
pub enum Verdict {
    Approve,
    Deny(String),
}

/// Jobs waiting for the operator, by id.
#[derive(Default)]
pub struct Approvals {
    waiting: Mutex<HashMap<String, oneshot::Sender<Verdict>>>,
}

impl Approvals {
    pub fn wait(&self, job_id: &str) -> oneshot::Receiver<Verdict> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(job_id.to_string(), tx);
        rx
    }

    /// Hands the verdict to the waiting job; `false` if no job waits under that id.
    pub fn decide(&self, job_id: &str, verdict: Verdict) -> bool {
        let tx = self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(job_id);
        tx.is_some_and(|tx| tx.send(verdict).is_ok())
    }

    pub fn forget(&self, job_id: &str) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_capped_per_peer_and_window() {
        let limiter = RefusalLimiter::default();
        for _ in 0..MAX_REFUSALS_PER_MINUTE {
            assert_eq!(limiter.over("p"), None);
            limiter.note("p");
        }
        assert_eq!(limiter.over("p"), Some(true), "the first request past the cap warns");
        assert_eq!(limiter.over("p"), Some(false), "later ones do not");
        assert_eq!(limiter.over("q"), None, "another peer has its own window");
    }

    #[test]
    fn approvals_reach_only_waiting_jobs() {
        let approvals = Approvals::default();
        let mut rx = approvals.wait("j1");
        assert!(!approvals.decide("j2", Verdict::Approve));
        assert!(approvals.decide("j1", Verdict::Deny("no".into())));
        assert!(matches!(rx.try_recv(), Ok(Verdict::Deny(r)) if r == "no"));
        assert!(!approvals.decide("j1", Verdict::Approve), "a job is decided once");
    }
}
