//! Merkle trees as in RFC 6962 §2.1 / RFC 9162 §2.1 (Certificate Transparency): SHA-256, leaves
//! hashed as `SHA-256(0x00 || data)`, interior nodes as `SHA-256(0x01 || left || right)`, so a leaf
//! can never be passed off as an interior node (second-preimage resistance of the tree). The tree
//! over `n` leaves splits at the largest power of two below `n`, which makes it append-only: a
//! tree of size `m` is a prefix of every later tree, and a *consistency proof* shows it.
//!
//! Used for the node's audit log (one leaf per log entry) and to commit to the point pairs of
//! ECDH-PSI proofs (one leaf per pair), so an auditor can check a sample against the root.
//!
//! Proof generation works on the leaf hashes (recursive definitions of RFC 6962 §2.1.1–2.1.2);
//! verification follows the iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a root.
pub type Hash = [u8; 32];

/// `MTH({d})` of one entry: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new().chain_update([0x00]).chain_update(data).finalize().into()
}

/// An interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new().chain_update([0x01]).chain_update(left).chain_update(right).finalize().into()
}

/// `MTH` of the empty tree: `SHA-256()` of no input.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The root (`MTH`) over leaves given by their leaf hashes.
///
/// Computed level by level, pairing neighbours and carrying a lone last node up unchanged, which
/// gives exactly RFC 6962's tree (split at the largest power of two below `n`). Parallel on rayon
/// for large trees.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return empty_root();
    }
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .par_chunks(2)
            .with_min_len(4096)
            .map(|pair| if pair.len() == 2 { node_hash(&pair[0], &pair[1]) } else { pair[0] })
            .collect();
    }
    level[0]
}

/// A tree kept level by level (leaves first), for many inclusion proofs over a large tree (e.g. a
/// sample of ECDH-PSI point pairs): each proof then costs `O(log n)`.
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Tree {
        let mut levels = vec![leaves];
        while levels.last().expect("one level").len() > 1 {
            let next = levels
                .last()
                .expect("one level")
                .par_chunks(2)
                .with_min_len(4096)
                .map(|pair| if pair.len() == 2 { node_hash(&pair[0], &pair[1]) } else { pair[0] })
                .collect();
            levels.push(next);
        }
        Tree { levels }
    }

    pub fn size(&self) -> usize {
        self.levels[0].len()
    }

    pub fn root(&self) -> Hash {
        if self.size() == 0 { empty_root() } else { self.levels.last().expect("one level")[0] }
    }

    /// The same path as [`inclusion_proof`]: the sibling at each level where there is one (a lone
    /// last node is carried up unchanged, exactly as RFC 6962 splits the tree).
    pub fn inclusion_proof(&self, index: usize) -> Option<Vec<Hash>> {
        if index >= self.size() {
            return None;
        }
        let mut proof = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                proof.push(*sibling);
            }
            i /= 2;
        }
        Some(proof)
    }
}

/// The largest power of two strictly less than `n` (`n ≥ 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Recursive `MTH` (RFC 6962 §2.1), used by proof generation on subtrees.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// The audit path `PATH(m, D[n])` of leaf `index` (RFC 6962 §2.1.1): sibling hashes from the leaf
/// up to the root. `None` if `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    path(index, leaves, &mut proof);
    Some(proof)
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(mth(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(mth(&leaves[..k]));
    }
}

/// The consistency proof `PROOF(m, D[n])` between the tree of the first `old_size` leaves and the
/// tree of all `leaves` (RFC 6962 §2.1.2). Empty if `old_size` is 0 or the full size; `None` if
/// `old_size` is larger than the tree.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
    if old_size > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    if old_size > 0 && old_size < leaves.len() {
        subproof(old_size, leaves, true, &mut proof);
    }
    Some(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(mth(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(mth(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(mth(&leaves[..k]));
    }
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the proof has {got} hashes, a proof for this position needs {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
    #[error("the old tree size {old} is larger than the new size {new}")]
    Shrunk { old: u64, new: u64 },
    #[error("the old and new roots of a tree of the same size differ")]
    SameSizeDifferentRoot,
}

/// Verifies that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength { got: proof.len(), expected: inclusion_len(index, size) });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength { got: proof.len(), expected: inclusion_len(index, size) });
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut fnode, mut snode, mut len) = (index, size - 1, 0);
    while snode != 0 {
        if (fnode & 1 == 1 || fnode == snode) && fnode & 1 == 0 {
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        }
        fnode >>= 1;
        snode >>= 1;
        len += 1;
    }
    len
}

/// Verifies that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::Shrunk { old: old_size, new: new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { got: proof.len(), expected: 0 });
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::SameSizeDifferentRoot) };
    }
    if old_size == 0 {
        // The empty tree is a prefix of every tree; RFC 9162 defines no proof for it.
        return if proof.is_empty() { Ok(()) } else { Err(ProofError::WrongLength { got: proof.len(), expected: 0 }) };
    }
    if proof.is_empty() {
        return Err(ProofError::RootMismatch);
    }
    // Step 1 of §2.1.4.2: if old_size is an exact power of 2, prepend old_root.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 || &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn empty_and_single_leaf_roots_follow_the_rfc() {
        // RFC 6962 test vector: the empty tree's root is SHA-256 of the empty string.
        assert_eq!(hex(&root(&[])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        // And the root of the one-leaf tree over the empty entry is SHA-256(0x00) (CT test vectors).
        assert_eq!(hex(&root(&[leaf_hash(b"")])), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d");
    }

    pub(super) fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn level_by_level_root_equals_the_recursive_definition() {
        for n in 0..70 {
            assert_eq!(root(&leaves(n)), mth(&leaves(n)), "n = {n}");
        }
        let big = leaves(10_001);
        assert_eq!(root(&big), mth(&big));
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        for n in 1..40 {
            let ls = leaves(n);
            let r = root(&ls);
            for i in 0..n {
                let proof = inclusion_proof(&ls, i).unwrap();
                verify_inclusion(&ls[i], i as u64, n as u64, &proof, &r).unwrap();
                // Wrong leaf, wrong index, flipped proof byte, truncated proof: all fail.
                let other = leaf_hash(b"other");
                assert_eq!(verify_inclusion(&other, i as u64, n as u64, &proof, &r), Err(ProofError::RootMismatch));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(verify_inclusion(&ls[i], j as u64, n as u64, &proof, &r).is_err());
                    let mut bad = proof.clone();
                    bad[0][5] ^= 1;
                    assert_eq!(verify_inclusion(&ls[i], i as u64, n as u64, &bad, &r), Err(ProofError::RootMismatch));
                    let short = &proof[..proof.len() - 1];
                    assert!(matches!(
                        verify_inclusion(&ls[i], i as u64, n as u64, short, &r),
                        Err(ProofError::WrongLength { .. })
                    ));
                }
            }
            assert!(inclusion_proof(&ls, n).is_none());
            assert!(matches!(
                verify_inclusion(&ls[0], n as u64, n as u64, &[], &r),
                Err(ProofError::IndexOutOfRange { .. })
            ));
        }
    }

    #[test]
    fn level_tree_paths_equal_the_recursive_paths() {
        for n in 0..70 {
            let ls = leaves(n);
            let tree = Tree::new(ls.clone());
            assert_eq!(tree.root(), mth(&ls));
            for i in 0..=n {
                assert_eq!(tree.inclusion_proof(i), inclusion_proof(&ls, i), "n={n} i={i}");
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        for n in 1..34 {
            let ls = leaves(n);
            let new_root = root(&ls);
            for m in 0..=n {
                let old_root = root(&ls[..m]);
                let proof = consistency_proof(&ls, m).unwrap();
                verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof)
                    .unwrap_or_else(|e| panic!("m={m} n={n}: {e}"));
                if m > 0 && m < n {
                    let mut bad = proof.clone();
                    bad[0][0] ^= 0x80;
                    assert!(verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad).is_err());
                    // A rewritten history (different old root) is not consistent.
                    let forged_old = root(&leaves(m).iter().map(|l| node_hash(l, l)).collect::<Vec<_>>());
                    assert!(verify_consistency(m as u64, n as u64, &forged_old, &new_root, &proof).is_err());
                    assert!(verify_consistency(n as u64, m as u64, &new_root, &old_root, &proof).is_err());
                }
            }
        }
    }
}
