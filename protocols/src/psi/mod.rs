//! Private set intersection: the protocols ([`ecdh`], [`rr22`]), the types they share (roles,
//! who learns the result, the result itself, progress) and [`run`], the one way to run either.
//!
//! Every caller that runs a PSI (the engine's PSI job, LR alignment, the SDK) goes through
//! [`run`] with a [`PsiProtocol`] and a [`PsiConfig`], and gets one error type, [`PsiError`].
//! What each party learns is documented with each protocol.

use std::str::FromStr;
use std::sync::Arc;

use crate::channel::Channel;
use crate::items::Items;

pub mod ecdh;
pub mod labeled;
pub mod payload;
pub mod rr22;
#[cfg(test)]
mod tests;
pub mod unbalanced;

use ecdh::{EcdhEvidence, EcdhPsiConfig, EcdhPsiError};
pub use payload::{PayloadMode, Payloads};
use rr22::{Rr22Config, Rr22Error};

/// The PSI protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsiProtocol {
    /// ECDH-PSI on ristretto255 ([`ecdh`]): ~40 µs of curve work per item per party, 48 bytes
    /// per item per direction; the one to audit with DLEQ proofs.
    Ecdh,
    /// RR22 over silent VOLE ([`rr22`]): about 100 times faster, about 30 bytes per item in
    /// total; for large sets.
    Rr22,
}

impl FromStr for PsiProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ecdh" => Ok(PsiProtocol::Ecdh),
            "rr22" => Ok(PsiProtocol::Rr22),
            other => Err(format!("unknown PSI protocol '{other}' (known: ecdh, rr22)")),
        }
    }
}

impl PsiProtocol {
    /// The protocol's name in flags, configs and reports (what [`FromStr`] parses).
    pub fn name(self) -> &'static str {
        match self {
            PsiProtocol::Ecdh => "ecdh",
            PsiProtocol::Rr22 => "rr22",
        }
    }
}

/// One party's parameters for [`run`]; both parties must agree on everything but the role.
#[derive(Clone)]
pub struct PsiConfig {
    pub role: Role,
    pub reveal: Reveal,
    /// Called as stages advance; `None` for no progress reports.
    pub progress: Option<ProgressFn>,
    /// ECDH-PSI: commit to the job key and prove with DLEQ proofs that it was used on every
    /// returned point ([`EcdhPsiConfig::proofs`]). RR22 proves nothing and ignores it.
    pub proofs: bool,
    /// Most items the peer may announce: its hello is refused above this before any buffer or
    /// work is sized by it (a node passes the size the peer declared in its job request, checked
    /// against the grant). [`u64::MAX`] leaves only each protocol's own bound.
    pub max_peer_items: u64,
    /// Labeled PSI: the responder's payloads or the requester's limit on them. RR22 carries them
    /// in its own run ([`payload`]); with ECDH the job runs the per-job DH-OPRF payload join of
    /// [`labeled`] instead of the plain ECDH-PSI (without proofs: `proofs` is ignored).
    pub payload: PayloadMode,
}

impl PsiConfig {
    /// `role` and `reveal` with proofs on, no progress reports and no peer size bound of the job's.
    pub fn new(role: Role, reveal: Reveal) -> PsiConfig {
        PsiConfig { role, reveal, progress: None, proofs: true, max_peer_items: u64::MAX, payload: PayloadMode::None }
    }
}

/// Why a PSI run failed: the protocol's own error.
#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    #[error(transparent)]
    Ecdh(#[from] EcdhPsiError),
    #[error(transparent)]
    Rr22(#[from] Rr22Error),
}

/// What one party's [`run`] produced.
#[derive(Debug, Clone)]
pub struct PsiRun {
    /// What this party learns; with the protocol's step timings ([`PsiOutput::timings`], RR22
    /// measures them, ECDH-PSI does not).
    pub output: PsiOutput,
    /// ECDH-PSI with proofs: the key commitments and proof records for the audit evidence.
    /// `None` for RR22 and for ECDH-PSI without proofs.
    pub ecdh_evidence: Option<EcdhEvidence>,
}

/// Runs `protocol` with the peer on `channel` over `items`.
///
/// Both parties call this with the same protocol, opposite roles and the same reveal mode (and,
/// for ECDH-PSI, the same proofs setting); RR22 uses its default bucket size. On error the caller
/// should close the channel so that the peer's run ends too.
///
/// # Panics
///
/// If the operating system's random number generator fails.
pub async fn run<C: Channel, I: Items + ?Sized>(
    channel: &C,
    items: &I,
    protocol: PsiProtocol,
    config: &PsiConfig,
) -> Result<PsiRun, PsiError> {
    let PsiConfig { role, reveal, ref progress, proofs, max_peer_items, ref payload } = *config;
    let progress = progress.clone();
    match protocol {
        PsiProtocol::Ecdh if !payload.is_none() => {
            let config = labeled::LabeledConfig { role, reveal, progress, max_peer_items, payload: payload.clone() };
            Ok(PsiRun { output: labeled::run(channel, items, &config).await?, ecdh_evidence: None })
        }
        PsiProtocol::Ecdh => {
            let config = EcdhPsiConfig { role, reveal, progress, proofs, max_peer_items };
            let (output, ecdh_evidence) = ecdh::run_with_evidence(channel, items, &config).await?;
            Ok(PsiRun { output, ecdh_evidence })
        }
        PsiProtocol::Rr22 => {
            let config =
                Rr22Config { progress, max_peer_items, payload: payload.clone(), ..Rr22Config::new(role, reveal) };
            Ok(PsiRun { output: rr22::run(channel, items, &config).await?, ecdh_evidence: None })
        }
    }
}

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
    /// Labeled PSI ([`payload`]), on the requester: the peer's payload of each entry of
    /// `intersection`, in the same order. `None` without payloads.
    pub payloads: Option<payload::Payloads>,
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
