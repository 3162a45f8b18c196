//! The OPRF's hash functions, shared by both roles: the value v(d) = H^B(d) R's OKVS encodes and
//! the output hash H^o (RR22 Fig. 4, steps 1, 4 and 5), both from fixed-key AES.

use rayon::prelude::*;

use crate::ot::aes_hash::{BATCH, FixedKeyAes};

/// v(d) = π(d) ⊕ d, the value R's OKVS encodes under d.
pub(super) fn okvs_values(digests: &[u128], out: &mut [u128]) {
    out.copy_from_slice(digests);
    out.par_chunks_mut(1 << 14).for_each(|c| FixedKeyAes::fixed().cr_hash_blocks(c));
}

/// `xs[k] ← H_{tweaks[k]}(xs[k]) = π(π(x) ⊕ t) ⊕ π(x)`, truncated to `mask`.
pub(super) fn output_hash(tweaks: &[u128], xs: &mut [u128], mask: u128) {
    let aes = FixedKeyAes::fixed();
    xs.par_chunks_mut(BATCH).zip(tweaks.par_chunks(BATCH)).for_each(|(xs, tweaks)| {
        let mut y = [0u128; BATCH];
        let y = &mut y[..xs.len()];
        y.copy_from_slice(xs);
        aes.permute_blocks(y);
        for ((x, &y), &t) in xs.iter_mut().zip(y.iter()).zip(tweaks) {
            *x = y ^ t;
        }
        aes.permute_blocks(xs);
        for (x, &y) in xs.iter_mut().zip(y.iter()) {
            *x = (*x ^ y) & mask;
        }
    });
}

pub(super) fn value_mask(bytes: usize) -> u128 {
    if bytes >= 16 { u128::MAX } else { (1u128 << (8 * bytes)) - 1 }
}
