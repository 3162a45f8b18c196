//! Types shared by all PSI protocols: roles, who learns the result, the result itself, progress.

use std::sync::Arc;

pub mod ecdh;
pub mod rr22;

/// Which side of the job this party is. The requester is the party whose operator submitted the
/// job; the responder accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Requester,
    Responder,
}

/// Who learns the intersection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    /// Both parties learn which of their own items are in the intersection.
    Both,
    /// Only the requester learns it; the responder learns only the requester's set size.
    RequesterOnly,
}

impl Role {
    /// The role's byte in the protocols' hello frames.
    pub(crate) fn wire(self) -> u8 {
        match self {
            Role::Requester => 0,
            Role::Responder => 1,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Option<Role> {
        match b {
            0 => Some(Role::Requester),
            1 => Some(Role::Responder),
            _ => None,
        }
    }
}

impl Reveal {
    /// The reveal mode's byte in the protocols' hello frames.
    pub(crate) fn wire(self) -> u8 {
        match self {
            Reveal::Both => 0,
            Reveal::RequesterOnly => 1,
        }
    }

    pub(crate) fn from_wire(b: u8) -> Option<Reveal> {
        match b {
            0 => Some(Reveal::Both),
            1 => Some(Reveal::RequesterOnly),
            _ => None,
        }
    }

    /// Whether the party in `role` learns the intersection.
    pub fn learns(self, role: Role) -> bool {
        matches!((self, role), (Reveal::Both, _) | (Reveal::RequesterOnly, Role::Requester))
    }
}

/// What a party learns from a PSI run.
#[derive(Debug, Clone, PartialEq)]
pub struct PsiOutput {
    /// Number of items the peer put in.
    pub peer_size: u64,
    /// Indices (into this party's own items) of the items in the intersection, in the *joint
    /// order*: both parties list the same entities in the same order (ordered by a joint PRF value
    /// of the item that both can compute only for the intersection). `None` if this party does
    /// not learn the intersection. With duplicate items, every copy of an intersecting item is
    /// listed (copies are adjacent).
    pub intersection: Option<Vec<u32>>,
    /// Wall seconds this party spent per step of the protocol (summed over buckets), for
    /// profiling; steps overlap where the protocol pipelines them. Empty if not measured.
    pub timings: Vec<(&'static str, f64)>,
}

/// Accumulates [`PsiOutput::timings`].
#[derive(Debug, Default)]
pub(crate) struct Timings(Vec<(&'static str, f64)>);

impl Timings {
    /// Adds the time since `since` to `step`.
    pub(crate) fn add(&mut self, step: &'static str, since: std::time::Instant) {
        let secs = since.elapsed().as_secs_f64();
        match self.0.iter_mut().find(|(s, _)| *s == step) {
            Some((_, t)) => *t += secs,
            None => self.0.push((step, secs)),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<(&'static str, f64)> {
        self.0
    }
}

/// Progress of a running protocol, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiProgress {
    /// A short stage name (e.g. "encrypt own set", "encrypt peer set", "match").
    pub stage: &'static str,
    /// Items done in this stage.
    pub done: u64,
    /// Items in this stage.
    pub total: u64,
}

/// A progress callback; called from protocol code, must be cheap and must not block.
pub type ProgressFn = Arc<dyn Fn(PsiProgress) + Send + Sync>;

/// An optional [`ProgressFn`], as the protocols hold it.
pub(crate) struct Progress<'a>(pub(crate) Option<&'a ProgressFn>);

impl Progress<'_> {
    pub(crate) fn report(&self, stage: &'static str, done: usize, total: usize) {
        if let Some(report) = self.0 {
            report(PsiProgress { stage, done: done as u64, total: total as u64 });
        }
    }
}
