//! Audit evidence: a per-node, append-only, signed log of job events, data commitments, and the
//! evidence bundles an auditor checks offline without trusting either node.
//!
//! # What is recorded
//!
//! Every job event is one *entry* of the node's log (`DIR/audit/log.jsonl`, one JSON object per
//! line): the request (requester identity, datasets, protocol, parameters), the grant decision,
//! the start, the transcript digests of the job channel (BLAKE3 over every protocol frame, per
//! direction, in order; the entry names the hash, [`consort_protocols::TRANSCRIPT_DIGEST`]), the ECDH-PSI key commitments and DLEQ proofs, the output commitment and
//! counts, and the end or failure. Entries are the leaves of an RFC 6962/9162 Merkle tree
//! ([`consort_protocols::merkle`]); after every append the node signs the new *tree head* (size,
//! root, time) with its ed25519 identity key (`DIR/identity.key`) into `DIR/audit/heads.jsonl`.
//!
//! # What it proves, and to whom
//!
//! - A signed head commits the node to the whole log up to its size: changing, removing,
//!   inserting or reordering any earlier entry changes the root, so the signature no longer
//!   matches. Consistency proofs between heads show that a later log extends an earlier one; an
//!   auditor who kept an old head detects a rewritten history.
//! - The node can still lie *when it writes* an entry (the log is evidence of what the node
//!   claimed, not of truth). Claims that involve the peer are cross-checked: both nodes record the
//!   transcript digests of the same channel, which must agree (sent by one = received by the
//!   other), and both record the ECDH key commitments and the Merkle roots of the proved points.
//! - ECDH-PSI DLEQ proofs (see `consort_protocols::psi::ecdh`) prove that each party used the key it
//!   committed to on every point it returned to the peer. The peer checks them during the job;
//!   an auditor re-checks them from the bundle (a Fiat–Shamir sample always, all points with
//!   `--full` when the bundle carries them).
//! - Data commitments never reveal ids: a commitment is `SHA-256(domain || salt || SHA-256(file))`
//!   with a fresh 32-byte random salt per commitment, kept by the node in `DIR/audit/salts.jsonl`
//!   (mode 0600, not part of the evidence). The node can open a commitment to an auditor by
//!   handing over the file and its salt ([`commitment::open`]).
//!
//! A node that deletes its whole log, or never signs a head, cannot be caught by the log alone;
//! the peer's log and bundles still record the job.

pub mod commitment;
pub mod events;
pub mod evidence;
pub mod log;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

/// The ECDH-PSI evidence a job hands to the log (re-exported for the node's job kinds).
pub use consort_protocols::psi::ecdh::EcdhEvidence;
pub use evidence::{Bundle, Check, Report, VerifyOptions, export, verify_bundles};
pub use log::{AuditLog, SignedHead, verify_log};

/// Subdirectory of a node directory holding the audit log.
pub const AUDIT_DIR: &str = "audit";

/// Why audit data could not be read, written or verified. Display names the file and entry.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    /// Evidence that does not verify or cannot be parsed: where, and what failed.
    #[error("{place}: {message}")]
    Failed { place: String, message: String },
}

impl AuditError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        AuditError::Io { path: path.into(), cause }
    }

    pub(crate) fn failed(place: impl Into<String>, message: impl Into<String>) -> Self {
        AuditError::Failed { place: place.into(), message: message.into() }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lower- or upper-case hex into exactly `N` bytes.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses lower- or upper-case hex of any even length.
pub fn unhex_vec(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

/// Writes `bytes` to `path` with [`crate::storage::write_atomic`], mode 0600 if `private`.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8], private: bool) -> Result<(), AuditError> {
    use crate::storage::Access;
    let access = if private { Access::OwnerOnly } else { Access::Readable };
    crate::storage::write_atomic(path, bytes, access).map_err(|e| AuditError::io(path, e))
}
