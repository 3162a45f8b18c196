//! The node's Prometheus metrics (`consort_*`), served by [`crate::monitor`].
//!
//! The figures are kept where they happen: the job table's [`JobMetrics`] at every state change
//! (`JobHandle::set_state`), the audit log's counters in `NodeAudit`, refusals in the envelope;
//! [`Metrics`] registers them. They carry counts and durations only — no peer-sent text,
//! dataset value or file path — and refusals are counted by a fixed reason class
//! ([`Refusal`]), never by the free-text reason. Encoding is in memory (no lock held across an
//! await, no file I/O), so a scrape never blocks the runtime.

use consort_api::JobState;
use consort_api::proto::JobStatus;
use consort_api::vocab::Vocabulary;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
    role: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// Why the responder refused a request, as counted (a small fixed set: the reason itself may
/// quote the request and stays in the log and job record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The grant, the kind's parameters or the policy said no (or the operator denied it).
    Policy,
    /// Malformed request, unsupported version, or a job id used before.
    Structure,
    /// The peer passed its refusals per minute.
    RateLimited,
    /// The audit log cannot be written.
    Audit,
    /// The connection's certificate is no longer pinned.
    Pin,
    /// This node could not record or load what the job needs.
    Internal,
}

impl Refusal {
    pub const ALL: [Refusal; 6] =
        [Refusal::Policy, Refusal::Structure, Refusal::RateLimited, Refusal::Audit, Refusal::Pin, Refusal::Internal];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Policy => "policy",
            Refusal::Structure => "structure",
            Refusal::RateLimited => "rate-limited",
            Refusal::Audit => "audit",
            Refusal::Pin => "pin",
            Refusal::Internal => "internal",
        }
    }
}

type DurationFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 10 ms .. ~5.8 h, doubling.
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

/// The job table's figures, updated at every state change of a job.
pub struct JobMetrics {
    current: Family<JobLabels, Gauge>,
    finished: Family<JobLabels, Counter>,
    duration: DurationFamily,
    wire_sent: Counter,
    wire_received: Counter,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            current: Family::default(),
            finished: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            wire_sent: Counter::default(),
            wire_received: Counter::default(),
        }
    }
}

impl JobMetrics {
    /// A job entered `status.state` (from `from`, `None` for a new job) after `seconds`: moves
    /// the current-state gauge and, at a final state, counts the job, its duration and its wire
    /// bytes (each job once).
    pub fn changed(&self, status: &JobStatus, from: Option<JobState>, seconds: f64) {
        let (kind, role, to) = (status.job_kind().name(), status.role_name(), status.job_state());
        let labels = |state: JobState| JobLabels { kind, role, state: state.name() };
        if let Some(from) = from {
            if from.is_final() {
                // A job finishes once: a later change of a final record is not counted again.
                return;
            }
            self.current.get_or_create(&labels(from)).dec();
        }
        if !to.is_final() {
            self.current.get_or_create(&labels(to)).inc();
            return;
        }
        self.finished.get_or_create(&labels(to)).inc();
        self.duration.get_or_create(&KindLabels { kind }).observe(seconds);
        self.wire_sent.inc_by(status.wire_bytes_sent);
        self.wire_received.inc_by(status.wire_bytes_received);
    }
}

/// The node's registry; lives in `NodeState`.
pub struct Metrics {
    registry: Registry,
    refusals: Family<RefusalLabels, Counter>,
    open_connections: Gauge,
}

impl Metrics {
    /// Registers the job table's and the audit log's figures, and the envelope's refusals.
    pub fn new(jobs: &JobMetrics, audit: &crate::audit::NodeAudit) -> Metrics {
        let mut r = Registry::default();
        r.register("consort_jobs", "Jobs in a non-final state now, by kind, role and state", jobs.current.clone());
        r.register(
            "consort_jobs_finished",
            "Jobs that reached a final state, by kind, role and state",
            jobs.finished.clone(),
        );
        r.register("consort_job_duration_seconds", "Duration of finished jobs, by kind", jobs.duration.clone());
        r.register(
            "consort_wire_sent_bytes",
            "Bytes sent to peers on the wire (TLS) by finished jobs",
            jobs.wire_sent.clone(),
        );
        r.register(
            "consort_wire_received_bytes",
            "Bytes received from peers on the wire (TLS) by finished jobs",
            jobs.wire_received.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        for class in Refusal::ALL {
            // Every class shows from the start (at 0), so a rate over it is defined.
            let _ = refusals.get_or_create(&RefusalLabels { reason: class.name() });
        }
        r.register(
            "consort_refusals",
            "Job requests refused by this node (responder), by reason class",
            refusals.clone(),
        );
        r.register("consort_audit_appends", "Entries appended to the audit log", audit.appends.clone());
        r.register(
            "consort_audit_failures",
            "Audit log write failures (the node then takes no jobs)",
            audit.failures.clone(),
        );
        let open_connections = Gauge::default();
        r.register("consort_peer_connections", "Open TLS connections from pinned peers", open_connections.clone());
        Metrics { registry: r, refusals, open_connections }
    }

    /// Counts a refused request.
    pub fn refused(&self, class: Refusal) {
        self.refusals.get_or_create(&RefusalLabels { reason: class.name() }).inc();
    }

    /// The registry in the text format, with the figures read at scrape time.
    pub fn encode(&self, open_connections: usize) -> String {
        self.open_connections.set(open_connections as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consort_api::JobKind;

    #[test]
    fn a_job_moves_the_gauge_then_the_counters_once() {
        let m = JobMetrics::default();
        let mut s = JobStatus { kind: JobKind::Psi as i32, state: JobState::Pending as i32, ..Default::default() };
        m.changed(&s, None, 0.0);
        s.state = JobState::Running as i32;
        m.changed(&s, Some(JobState::Pending), 0.1);
        let running = JobLabels { kind: "psi", role: s.role_name(), state: "running" };
        let pending = JobLabels { state: "pending", ..running.clone() };
        assert_eq!((m.current.get_or_create(&pending).get(), m.current.get_or_create(&running).get()), (0, 1));
        (s.state, s.wire_bytes_sent, s.wire_bytes_received) = (JobState::Done as i32, 10, 20);
        m.changed(&s, Some(JobState::Running), 2.5);
        let done = JobLabels { state: "done", ..running.clone() };
        assert_eq!((m.current.get_or_create(&running).get(), m.finished.get_or_create(&done).get()), (0, 1));
        assert_eq!((m.wire_sent.get(), m.wire_received.get()), (10, 20));
        s.state = JobState::Failed as i32;
        m.changed(&s, Some(JobState::Done), 3.0);
        let failed = JobLabels { state: "failed", ..running.clone() };
        assert_eq!((m.finished.get_or_create(&failed).get(), m.wire_sent.get()), (0, 10));
    }

    #[test]
    fn refusal_classes_have_distinct_names() {
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
    }
}
