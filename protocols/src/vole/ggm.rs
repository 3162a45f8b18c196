//! GGM trees (Goldreich–Goldwasser–Micali): a seed expanded into `2^depth` pseudorandom leaves,
//! and the punctured view of such a tree that a party reconstructs from one sum per level.
//!
//! The length-doubling PRG is G(s) = (π₀(s) ⊕ s, π₁(s) ⊕ s) with π₀, π₁ fixed-key AES under two
//! public keys (as in libOTe's PPRF): correlation-robust hashing of the parent, which is a PRG
//! for a uniform parent in the random-permutation model.
//!
//! Trees live in one flat buffer of `2^depth` blocks; level ℓ occupies the first `2^ℓ` blocks
//! while it is being built, and each level is expanded in place from the top down (the children
//! `2i, 2i + 1` of node `i` never overwrite an unexpanded parent).

use std::sync::LazyLock;

use super::super::ot::aes_hash::{BATCH, FixedKeyAes};

/// Public keys of π₀ and π₁ (digits of e, as "nothing up my sleeve" numbers; distinct from the
/// OT layer's π).
const LEFT_KEY: [u8; 16] = 0xB7E1_5162_8AED_2A6A_BF71_5880_9CF4_F3C7u128.to_be_bytes();
const RIGHT_KEY: [u8; 16] = 0x62E7_160F_3853_4DA3_E5BD_F1B1_3F5F_7D1Cu128.to_be_bytes();

static PRG: LazyLock<[FixedKeyAes; 2]> = LazyLock::new(|| [FixedKeyAes::new(LEFT_KEY), FixedKeyAes::new(RIGHT_KEY)]);

/// Expands level `level - 1` (the first `2^(level-1)` blocks of `nodes`) into level `level`.
fn expand_level(nodes: &mut [u128], level: u32) {
    let [left, right] = &*PRG;
    let parents = 1usize << (level - 1);
    let mut l = [0u128; BATCH];
    let mut r = [0u128; BATCH];
    let mut hi = parents;
    while hi > 0 {
        let lo = hi.saturating_sub(BATCH);
        let k = hi - lo;
        l[..k].copy_from_slice(&nodes[lo..hi]);
        r[..k].copy_from_slice(&nodes[lo..hi]);
        left.cr_hash_blocks(&mut l[..k]);
        right.cr_hash_blocks(&mut r[..k]);
        for i in 0..k {
            nodes[2 * (lo + i)] = l[i];
            nodes[2 * (lo + i) + 1] = r[i];
        }
        hi = lo;
    }
    l.fill(0);
    r.fill(0);
}

/// XOR of the even-indexed and of the odd-indexed nodes among the first `count`.
fn parity_sums(nodes: &[u128], count: usize) -> [u128; 2] {
    let mut sums = [0u128; 2];
    for pair in nodes[..count].chunks_exact(2) {
        sums[0] ^= pair[0];
        sums[1] ^= pair[1];
    }
    sums
}

/// The full tree of `root`: `leaves` (length `2^depth`) receives the leaves, `sums[ℓ - 1]` the
/// XOR of the left (even) and right (odd) children at level ℓ = 1..=depth.
pub(crate) fn expand_full(root: u128, depth: u32, leaves: &mut [u128], sums: &mut [[u128; 2]]) {
    debug_assert_eq!(leaves.len(), 1 << depth);
    debug_assert_eq!(sums.len(), depth as usize);
    leaves[0] = root;
    for level in 1..=depth {
        expand_level(leaves, level);
        sums[level as usize - 1] = parity_sums(leaves, 1 << level);
    }
}

/// The tree punctured at leaf `alpha`: given, for each level ℓ, the sum `known[ℓ - 1]` of the
/// children on the side *off* the path to `alpha` (bit `depth - ℓ` of `alpha` is the path's side),
/// fills every leaf but `alpha` with the full tree's value; `leaves[alpha]` is left zero.
pub(crate) fn expand_punctured(alpha: usize, depth: u32, known: &[u128], leaves: &mut [u128]) {
    debug_assert_eq!(leaves.len(), 1 << depth);
    debug_assert!(alpha < leaves.len());
    leaves[0] = 0;
    for level in 1..=depth {
        // The path's node at the previous level is unknown (zero): expand everything, then
        // replace its two children.
        expand_level(leaves, level);
        let parent = alpha >> (depth - level + 1);
        let on_path = (alpha >> (depth - level)) & 1;
        let off_path = on_path ^ 1;
        leaves[2 * parent] = 0;
        leaves[2 * parent + 1] = 0;
        let sums = parity_sums(leaves, 1 << level);
        leaves[2 * parent + off_path] = known[level as usize - 1] ^ sums[off_path];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctured_tree_matches_full_tree_off_the_point() {
        for depth in 1..=9u32 {
            let n = 1usize << depth;
            let root = 0x1234_5678_9abc_def0_0fed_cba9_8765_4321u128.wrapping_mul(depth as u128 + 7);
            let mut full = vec![0u128; n];
            let mut sums = vec![[0u128; 2]; depth as usize];
            expand_full(root, depth, &mut full, &mut sums);
            // Leaves are distinct and nonzero (pseudorandom).
            let mut sorted = full.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), n);
            for alpha in [0, n - 1, n / 2, (n / 3) | 1] {
                let alpha = alpha.min(n - 1);
                let known: Vec<u128> = (1..=depth)
                    .map(|level| {
                        let off = ((alpha >> (depth - level)) & 1) ^ 1;
                        sums[level as usize - 1][off]
                    })
                    .collect();
                let mut punctured = vec![0u128; n];
                expand_punctured(alpha, depth, &known, &mut punctured);
                for j in 0..n {
                    if j == alpha {
                        assert_eq!(punctured[j], 0);
                    } else {
                        assert_eq!(punctured[j], full[j], "depth {depth} alpha {alpha} leaf {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_sum_changes_the_reconstruction() {
        let depth = 5;
        let mut full = vec![0u128; 32];
        let mut sums = vec![[0u128; 2]; 5];
        expand_full(99, depth, &mut full, &mut sums);
        let alpha = 13;
        let mut known: Vec<u128> =
            (1..=depth).map(|l| sums[l as usize - 1][((alpha >> (depth - l)) & 1) ^ 1]).collect();
        known[2] ^= 1;
        let mut punctured = vec![0u128; 32];
        expand_punctured(alpha, depth, &known, &mut punctured);
        assert!((0..32).filter(|&j| j != alpha).any(|j| punctured[j] != full[j]));
    }
}
