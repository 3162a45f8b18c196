//! The first step of train and score jobs: PSI revealed to both parties, giving each the joint
//! order of its rows (through the one PSI runner, [`consort_protocols::psi::run`]). An ECDH
//! alignment runs with its key commitments and DLEQ proofs, and hands their evidence to the job's
//! audit log like a PSI job's.
use consort_protocols::psi::ecdh::EcdhEvidence;
use consort_protocols::psi::{self, PsiConfig};
use consort_protocols::{Channel, ProgressFn, Reveal, Role};

use super::LrError;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::psi::{JobLimits, PsiProtocol};

/// This party's rows in the joint order, the peer's row count, and the ECDH proofs' evidence.
pub(crate) struct Alignment {
    pub order: Vec<u32>,
    pub peer_rows: u64,
    pub ecdh_evidence: Option<EcdhEvidence>,
}

/// PSI with the intersection revealed to both; the joint order of this party's rows.
pub(crate) async fn align<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    role: Role,
    protocol: PsiProtocol,
    progress: Option<ProgressFn>,
    limits: JobLimits,
) -> Result<Alignment, LrError> {
    let config = PsiConfig { progress, max_peer_items: limits.max_peer_rows, ..PsiConfig::new(role, Reveal::Both) };
    let run = psi::run(channel, &dataset.keys, protocol, &config).await?;
    let order = run.output.intersection.unwrap_or_default();
    if order.is_empty() {
        return Err(DataError::Invalid("the two datasets have no keys in common".into()).into());
    }
    limits.check_aligned(order.len() as u64)?;
    Ok(Alignment { order, peer_rows: run.output.peer_size, ecdh_evidence: run.ecdh_evidence })
}
