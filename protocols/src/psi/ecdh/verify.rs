//! Offline checks of a [`ProofRecord`], as an auditor makes them (the engine's audit calls
//! these), and the Merkle tree over the proved pairs (RFC 6962 hashing, [`PAIRS_PER_LEAF`] pairs
//! per leaf).

use curve25519_dalek::ristretto::CompressedRistretto;
use rayon::prelude::*;

use super::{DLEQ_CONTEXT, DLEQ_SAMPLE_CONTEXT, PAIRS_PER_LEAF, ProofRecord, SAMPLE_SIZE};
use crate::{dleq, merkle};

/// The RFC 6962 root over the pairs (see [`PAIRS_PER_LEAF`]), as in [`ProofRecord::pairs_root`].
pub fn pairs_root(c: &[u8], d: &[u8]) -> merkle::Hash {
    merkle::root(&pair_leaves(c, d))
}

/// The bytes of leaf `leaf`: `C_j || D_j` for its pairs.
pub(super) fn leaf_bytes(c: &[u8], d: &[u8], leaf: usize) -> Vec<u8> {
    let per = 32 * PAIRS_PER_LEAF;
    let (c, d) = (&c[leaf * per..(leaf * per + per).min(c.len())], &d[leaf * per..(leaf * per + per).min(d.len())]);
    let mut bytes = Vec::with_capacity(2 * c.len());
    for (ci, di) in c.chunks_exact(32).zip(d.chunks_exact(32)) {
        bytes.extend_from_slice(ci);
        bytes.extend_from_slice(di);
    }
    bytes
}

/// Leaves of the tree over the pairs.
pub(super) fn pair_leaves(c: &[u8], d: &[u8]) -> Vec<merkle::Hash> {
    let leaves = (c.len() / 32).div_ceil(PAIRS_PER_LEAF);
    (0..leaves).into_par_iter().map(|leaf| merkle::leaf_hash(&leaf_bytes(c, d, leaf))).collect()
}

/// Checks a proof record against the prover's key commitment `B`, as an auditor would: the
/// sample (indices drawn from the challenge and the root, audit paths, proof over the sample), the
/// proof over the recorded composite `(M, Z)`, and, if `full` and the record holds all pairs, that
/// the pairs hash to the root and that `(M, Z)` is their combination under the recorded challenge.
///
/// Without `full` the composite is taken from the record: both nodes record it (the verifier
/// computed it from the pairs, the prover checked `Z = k·M` before proving), so two bundles that
/// agree on it (see the engine's cross-checks) need no recomputation unless they are disputed.
pub fn verify_record(commitment: &[u8; 32], record: &ProofRecord, full: bool) -> Result<(), String> {
    verify_sample(commitment, record)?;
    let b = CompressedRistretto(*commitment);
    let m = CompressedRistretto(record.m).decompress().ok_or("the recorded composite M is not a valid point")?;
    let z = CompressedRistretto(record.z).decompress().ok_or("the recorded composite Z is not a valid point")?;
    let proof = dleq::Proof::from_bytes(&record.proof).ok_or("the DLEQ proof is not two canonical scalars")?;
    dleq::verify(DLEQ_CONTEXT, &b, &m, &z, &proof)
        .map_err(|e| format!("the DLEQ proof over the composite of all {} pairs: {e}", record.pairs))?;
    if full {
        let n = record.pairs as usize;
        if record.c.len() != 32 * n || record.d.len() != 32 * n {
            return Err(format!(
                "the record holds {} and {} bytes of points, not 32 × {n}",
                record.c.len(),
                record.d.len()
            ));
        }
        let coefficients = dleq::Coefficients::new(DLEQ_CONTEXT, &record.challenge);
        let (root, composite) = rayon::join(
            || pairs_root(&record.c, &record.d),
            || dleq::composite_pairs(&coefficients, &record.c, &record.d),
        );
        if root != record.pairs_root {
            return Err("the points do not hash to the recorded Merkle root of the pairs".into());
        }
        let (m_all, z_all) = composite.map_err(|e| format!("the pairs: {e}"))?;
        if m_all != m || z_all != z {
            return Err(format!(
                "the recorded composite is not the combination of the {n} pairs under the recorded challenge"
            ));
        }
    }
    Ok(())
}

/// The sampled part of [`verify_record`].
pub fn verify_sample(commitment: &[u8; 32], record: &ProofRecord) -> Result<(), String> {
    let b = CompressedRistretto(*commitment);
    let expected = dleq::sample_indices(&record.challenge, &record.pairs_root, &b, record.pairs, SAMPLE_SIZE);
    let indices: Vec<u64> = record.sample.iter().map(|p| p.index).collect();
    if indices != expected {
        return Err(
            "the sampled indices are not the ones drawn from the challenge and the Merkle root of the pairs".into()
        );
    }
    let leaves = record.pairs.div_ceil(PAIRS_PER_LEAF as u64);
    for pair in &record.sample {
        let (leaf, slot) = (pair.index / PAIRS_PER_LEAF as u64, (pair.index % PAIRS_PER_LEAF as u64) as usize);
        let in_leaf = (record.pairs - leaf * PAIRS_PER_LEAF as u64).min(PAIRS_PER_LEAF as u64) as usize;
        if pair.leaf.len() != 64 * in_leaf
            || pair.leaf[64 * slot..64 * slot + 32] != pair.c
            || pair.leaf[64 * slot + 32..64 * slot + 64] != pair.d
        {
            return Err(format!("sampled pair {}: audit path: its leaf does not hold the pair", pair.index));
        }
        merkle::verify_inclusion(&merkle::leaf_hash(&pair.leaf), leaf, leaves, &pair.path, &record.pairs_root)
            .map_err(|e| format!("sampled pair {}: audit path: {e}", pair.index))?;
    }
    let coefficients = dleq::Coefficients::new(DLEQ_SAMPLE_CONTEXT, &record.challenge);
    let triples: Vec<_> = record.sample.iter().map(|p| (p.index, p.c, p.d)).collect();
    let (m, z) = dleq::composite_indexed(&coefficients, &triples).map_err(|e| format!("sampled pairs: {e}"))?;
    let proof = dleq::Proof::from_bytes(&record.sample_proof).ok_or("the sample proof is not two canonical scalars")?;
    dleq::verify(DLEQ_SAMPLE_CONTEXT, &b, &m, &z, &proof)
        .map_err(|e| format!("the DLEQ proof over the {} sampled pairs: {e}", record.sample.len()))
}
