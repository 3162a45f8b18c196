//! Embed consort's private joins in Rust programs.
//!
//! Two ways in:
//! - **In-process**: run your side of a private join against another party over any
//!   [`Channel`] — an in-memory pair for tests ([`memory_pair`]), or your own transport. Use
//!   [`intersect`] on keys you already hold in memory, or [`join_dataset`] on a CSV dataset to get
//!   your rows of the intersection written to a file.
//! - **Through a node**: [`NodeClient`] drives a running `consort node` over its control socket
//!   (submit a job — e.g. [`SubmitRequest::psi`] — with a peer node, watch its progress, read its
//!   result; the node keeps a record of every job, see [`JobState`]).
//!
//! Two protocols ([`PsiProtocol`]): `Ecdh` (ECDH-PSI on ristretto255) and `Rr22` (RR22 over
//! silent VOLE, about a hundred times faster on large sets). What each party learns is documented
//! with each protocol in [`consort_protocols`]; in short, for both: both sides learn both set
//! sizes, and the side(s) that `Reveal` names learn which of their own keys are shared, in an
//! order both sides agree on. Both are secure against semi-honest parties.

pub use consort_api::proto::{JobStatus, SubmitRequest};
pub use consort_api::{ClientError, JobKind, JobState, NodeClient};
pub use consort_engine::{Dataset, DatasetSpec, Normalization, PsiJob, PsiProtocol, PsiReport};
pub use consort_protocols::psi::PsiError;
pub use consort_protocols::{Channel, ChannelError, Metered, PsiOutput, Reveal, Role, memory_pair};

/// Errors from the SDK's in-process joins.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Psi(#[from] consort_protocols::psi::PsiError),
    #[error(transparent)]
    Engine(#[from] consort_engine::EngineError),
}

/// Intersects `keys` (exact byte strings; normalize them yourself) with the peer's keys over
/// `channel` using `protocol` (both parties must pick the same). The result lists indices into
/// `keys` in the joint order both parties share, or `None` if `reveal` does not let this party
/// learn the intersection.
pub async fn intersect<C: Channel, K: AsRef<[u8]> + Sync>(
    channel: &C,
    keys: &[K],
    protocol: PsiProtocol,
    role: Role,
    reveal: Reveal,
) -> Result<PsiOutput, Error> {
    let config = consort_protocols::psi::PsiConfig::new(role, reveal);
    Ok(consort_protocols::psi::run(channel, keys, protocol, &config).await?.output)
}

/// Runs this party's side of a private join on a CSV dataset (loaded and validated as a node would)
/// and writes its rows of the intersection to `job.output`, atomically.
pub async fn join_dataset<C: Channel>(channel: &C, spec: &DatasetSpec, job: &PsiJob) -> Result<PsiReport, Error> {
    let spec = spec.clone();
    let dataset =
        consort_protocols::cpu::run(move || Dataset::load(&spec)).await.map_err(consort_engine::EngineError::from)?;
    Ok(consort_engine::run_psi_owned(channel, dataset, job).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn in_process_join_matches_plaintext() {
        for protocol in [PsiProtocol::Ecdh, PsiProtocol::Rr22] {
            join_matches_plaintext(protocol).await;
        }
    }

    async fn join_matches_plaintext(protocol: PsiProtocol) {
        let bank: Vec<String> = (0..500).map(|i| format!("cust-{i}")).collect();
        let partner: Vec<String> = (300..900).map(|i| format!("cust-{i}")).collect();
        let (a, b) = memory_pair(8);
        let (ra, rb) = tokio::join!(
            intersect(&a, &bank, protocol, Role::Requester, Reveal::Both),
            intersect(&b, &partner, protocol, Role::Responder, Reveal::Both)
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let ia = ra.intersection.unwrap();
        let ib = rb.intersection.unwrap();
        assert_eq!(ia.len(), 200);
        let keys_a: Vec<&String> = ia.iter().map(|&i| &bank[i as usize]).collect();
        let keys_b: Vec<&String> = ib.iter().map(|&i| &partner[i as usize]).collect();
        assert_eq!(keys_a, keys_b, "both sides list the shared keys in the same order");
        let mut sorted: Vec<String> = keys_a.into_iter().cloned().collect();
        sorted.sort();
        let mut expected: Vec<String> = (300..500).map(|i| format!("cust-{i}")).collect();
        expected.sort();
        assert_eq!(sorted, expected);
        assert_eq!(ra.peer_size, 600);
        assert_eq!(rb.peer_size, 500);
    }
}
