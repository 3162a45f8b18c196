//! The first step of train and score jobs: PSI revealed to both parties, giving each the joint
//! order of its rows.
use consort_protocols::ecdh_psi::{self, EcdhPsiConfig};
use consort_protocols::rr22::{self, Rr22Config};
use consort_protocols::{Channel, ProgressFn, Reveal, Role};

use super::LrError;
use crate::dataset::Dataset;
use crate::error::DataError;
use crate::psi::PsiProtocol;

/// PSI with the intersection revealed to both; the joint order of this party's rows.
pub(super) async fn align<C: Channel>(
    channel: &C,
    dataset: &Dataset,
    role: Role,
    protocol: PsiProtocol,
    progress: Option<ProgressFn>,
) -> Result<(Vec<u32>, u64), LrError> {
    let out = match protocol {
        PsiProtocol::Ecdh => {
            let config = EcdhPsiConfig { role, reveal: Reveal::Both, progress, proofs: true };
            ecdh_psi::run(channel, &dataset.keys, &config).await?
        }
        PsiProtocol::Rr22 => {
            let config = Rr22Config { progress, ..Rr22Config::new(role, Reveal::Both) };
            rr22::run(channel, &dataset.keys, &config).await?
        }
    };
    let order = out.intersection.unwrap_or_default();
    if order.is_empty() {
        return Err(DataError::Invalid("the two datasets have no keys in common".into()).into());
    }
    Ok((order, out.peer_size))
}
