//! Silent VOLE over GF(2^128): n correlations c_i = b_i + a_i·Δ from O(log n)-ish communication.
//!
//! # What it computes
//!
//! After a one-time [`VoleSender::setup`] / [`VoleReceiver::setup`] (an IKNP setup, i.e. 128
//! base OTs), each `extend(n)` call gives
//!
//! - the **sender** a secret Δ ∈ GF(2^128) (fixed at setup) and a vector b ∈ GF(2^128)^n;
//! - the **receiver** vectors a, c ∈ GF(2^128)^n with **c_i = b_i + a_i·Δ**, a pseudorandom.
//!
//! This is the correlation the RR22 OPRF ([`crate::psi::rr22`]) consumes: its receiver masks its OKVS
//! with a and the sender's key is (b, Δ).
//!
//! # Construction (Boyle–Couteau–Gilboa–Ishai–Kohl–Scholl, "Efficient Two-Round OT Extension
//! and Silent Non-Interactive Secure Computation", CCS 2019, in the dual-LPN form with an
//! expand-accumulate code)
//!
//! For an output length n, [`VoleParams::for_len`] picks t GGM trees of 2^d leaves with
//! N = t·2^d ≥ max(2n, 2^14) and t ≥ 398 (below). One extension:
//!
//! 1. **Correlated OTs.** t·(128 + d) IKNP Δ-OTs ([`crate::ot::extension`]) with the VOLE's Δ as
//!    the IKNP Δ: the sender gets q_k, the receiver random bits r_k and t_k = q_k + r_k·Δ.
//! 2. **Base VOLE per tree (Gilboa).** From 128 of those OTs, the receiver sets
//!    β_j = Σ_i r_{j,i}·X^i (its noise value, uniform) and δ_j = Σ_i X^i·t_{j,i}; the sender
//!    γ_j = Σ_i X^i·q_{j,i}. Then δ_j = γ_j + β_j·Δ, with no message.
//! 3. **Punctured GGM tree per tree (the multi-point VOLE).** The sender expands a fresh random
//!    root into leaves v_{j,0..2^d} ([`ggm`]) and, for each level ℓ, the sums K⁰_ℓ, K¹_ℓ of the
//!    left and right children. The receiver's noise position α_j is defined by the remaining d
//!    OTs' random bits (the path goes left at level ℓ iff r = 1), so the sender sends
//!    K⁰_ℓ + H(q), K¹_ℓ + H(q + Δ) with H the TCCR hash tweaked by the OT's index, and the
//!    receiver opens the sum off its path, H(t) = H(q + r·Δ). With these it rebuilds every leaf
//!    but α_j. The sender also sends d_j = γ_j + Σ_k v_{j,k}; the receiver sets
//!    w_{j,α} = δ_j + d_j + Σ_{k≠α} v_{j,k} = v_{j,α} + β_j·Δ and w_{j,k} = v_{j,k} elsewhere.
//!    So w = v + e·Δ for the regular sparse vector e (β_j at position α_j of tree j).
//! 4. **Compression.** Both apply the public EA code's dual map x ↦ B·A·x ([`code`]): the
//!    sender b = BA·v, the receiver c = BA·w and a = BA·e. Linearity keeps c = b + a·Δ, and
//!    dual-LPN makes a pseudorandom.
//!
//! Communication per extension: the IKNP matrix for t·(128 + d) OTs (16 bytes each) one way and
//! t·(2d + 1) blocks back; for n = 2^20, t = 576 and d = 12: 1.3 MB + 0.23 MB, about 1.5 bytes
//! per output. Computation: about 2N fixed-key AES per party for the trees, the accumulation (a
//! pass over N blocks) and 11 random reads per output for the expander.
//!
//! # Security
//!
//! **Semi-honest** (both parties follow the protocol; either may try to learn more from what it
//! sees), with 128-bit computational security, assuming: the IKNP Δ-OTs (see
//! [`crate::ot::extension`]), AES as a PRF/random permutation (GGM PRG, TCCR hash), and **dual
//! LPN with regular noise over the EA code**. The noise weight t follows libOTe's rule for this
//! code family, t ≥ −128 / log2(1 − 2ρ) with minimum-distance ratio ρ = 0.1 for row weight 11
//! (t ≥ 398; "ExAcc11" in libOTe); code length N ≥ 2n. The sender learns nothing (it sees the IKNP
//! matrix only). The receiver sees, per tree, one sum per level for the side off its path, which
//! are pseudorandom given its view (GGM security), and d_j, masked by γ_j. Neither learns the
//! other's outputs beyond the correlation. A malicious sender could send inconsistent sums and
//! make the receiver's correlation wrong in a way that depends on α (selective failure): no
//! consistency check is run, so this module must not be used where malicious security is
//! claimed.
//!
//! Secrets (Δ, leaves, β, α, outputs) are zeroized on drop. The receiver's tree reconstruction
//! and the closed-form noise read memory at positions that depend on its secret α_j (like every
//! PPRF implementation); the Δ holder's code does not branch or index on secrets.
//!
//! # Wire format
//!
//! Extensions run the IKNP frames ([`crate::ot::extension`]) and then, from sender to receiver:
//!
//! | frame | kind   | body |
//! |-------|--------|------|
//! | trees | `0x30` | OT index of the extension `u64` BE, first tree `u32` BE, trees `u32` BE, depth `u8`, then per tree: (K⁰_ℓ + H, K¹_ℓ + H) for ℓ = 1..d and d_j, 16 bytes each |
//!
//! Frames hold at most 1 MiB of tree messages.

pub mod code;
pub mod ggm;

use bytes::{BufMut, Bytes, BytesMut};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::channel::Channel;
use crate::cpu;
use crate::ot::aes_hash::{AesPrg, FixedKeyAes};
use crate::ot::{CorrelatedReceiverOutput, CorrelatedSenderOutput, IknpReceiver, IknpSender, OtError, Security};

/// Minimum-distance ratio assumed for the EA code with [`code::EXPANDER_WEIGHT`] = 11.
pub const MIN_DISTANCE_RATIO: f64 = 0.1;

/// Computational security target of the LPN instance, in bits.
pub const SECURITY_BITS: f64 = 128.0;

/// Smallest code length: tiny extensions still use an instance of at least this size.
pub const MIN_CODE_LEN: usize = 1 << 14;

const KIND_TREES: u8 = 0x30;
const TREES_HEADER: usize = 1 + 8 + 4 + 4 + 1;
const MAX_FRAME_BODY: usize = 1 << 20;

/// Base OTs per tree for the Gilboa base VOLE.
const BASE_BITS: usize = 128;

/// The least number of noise positions (trees): −λ / log2(1 − 2ρ), rounded up.
pub fn min_noise_weight() -> usize {
    (SECURITY_BITS / -(1.0 - 2.0 * MIN_DISTANCE_RATIO).log2()).ceil() as usize
}

/// The LPN instance of one extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoleParams {
    /// Outputs.
    pub n: usize,
    /// GGM trees = noise weight.
    pub trees: usize,
    /// Tree depth: 2^depth leaves per tree.
    pub depth: u32,
}

impl VoleParams {
    /// Parameters for `n` outputs: code length N = trees·2^depth ≥ max(2n, [`MIN_CODE_LEN`]),
    /// trees ≥ [`min_noise_weight`].
    pub fn for_len(n: usize) -> VoleParams {
        let t_min = min_noise_weight();
        let target = (2 * n).max(MIN_CODE_LEN);
        let depth = (target / t_min).ilog2().max(1);
        let trees = target.div_ceil(1 << depth);
        VoleParams { n, trees, depth }
    }

    /// Code length N.
    pub fn code_len(&self) -> usize {
        self.trees << self.depth
    }

    /// Correlated OTs one extension consumes.
    pub fn cots(&self) -> usize {
        self.trees * (BASE_BITS + self.depth as usize)
    }

    fn tree_message_blocks(&self) -> usize {
        2 * self.depth as usize + 1
    }
}

/// Σ_i X^i·x_i over 128 blocks, by Horner's rule.
fn gilboa_fold(x: &[u128]) -> u128 {
    debug_assert_eq!(x.len(), BASE_BITS);
    x.iter().rev().fold(0u128, |acc, &v| mul_x(acc) ^ v)
}

/// acc·X in GF(2^128) (modulus X^128 + X^7 + X^2 + X + 1), constant-time.
#[inline(always)]
fn mul_x(acc: u128) -> u128 {
    let carry = (acc >> 127).wrapping_neg() & 0x87;
    (acc << 1) ^ carry
}

/// The VOLE sender: holds Δ.
pub struct VoleSender {
    ot: IknpSender,
}

/// The VOLE receiver: gets a and c.
pub struct VoleReceiver {
    ot: IknpReceiver,
}

impl std::fmt::Debug for VoleSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VoleSender")
    }
}

impl std::fmt::Debug for VoleReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VoleReceiver")
    }
}

/// The receiver's output of one extension: a and c with c_i = b_i + a_i·Δ. Zeroized on drop.
pub struct VoleReceiverOutput {
    pub a: Zeroizing<Vec<u128>>,
    pub c: Zeroizing<Vec<u128>>,
}

impl VoleSender {
    /// Runs the base OTs with a fresh uniform Δ.
    pub async fn setup<C: Channel>(channel: &C) -> Result<Self, OtError> {
        Ok(Self { ot: IknpSender::setup(channel, Security::SemiHonest).await? })
    }

    /// Δ (secret).
    pub fn delta(&self) -> u128 {
        self.ot.delta()
    }

    /// `n` correlations: returns b (the receiver gets a, c = b + a·Δ). In step with the
    /// receiver's [`VoleReceiver::extend`] (same n, same order).
    pub async fn extend<C: Channel>(&mut self, channel: &C, n: usize) -> Result<Zeroizing<Vec<u128>>, OtError> {
        let pending = self.extend_start(channel, n).await?;
        Self::extend_finish(channel, pending).await
    }

    /// First half of [`extend`](Self::extend): receives the OT extension and builds the trees,
    /// sending nothing. Other frames may flow on the channel before
    /// [`extend_finish`](Self::extend_finish) (the receiver's halves must be interleaved the same
    /// way): this lets a protocol overlap one extension with other work.
    pub async fn extend_start<C: Channel>(&mut self, channel: &C, n: usize) -> Result<PendingSend, OtError> {
        let params = VoleParams::for_len(n);
        if n == 0 {
            return Ok(PendingSend { params, first_index: 0, leaves: Zeroizing::new(Vec::new()), messages: None });
        }
        let cot = self.ot.extend_correlated(channel, params.cots()).await?;
        let first_index = cot.first_index();
        let (leaves, messages) = cpu::run(move || sender_trees(&params, &cot)).await;
        Ok(PendingSend { params, first_index, leaves, messages: Some(messages) })
    }

    /// Second half of [`extend`](Self::extend): sends the tree messages and compresses; returns b.
    pub async fn extend_finish<C: Channel>(channel: &C, pending: PendingSend) -> Result<Zeroizing<Vec<u128>>, OtError> {
        let PendingSend { params, first_index, mut leaves, messages } = pending;
        let Some(messages) = messages else {
            return Ok(Zeroizing::new(Vec::new()));
        };
        send_tree_messages(channel, &params, first_index, &messages).await?;
        drop(messages);
        Ok(cpu::run(move || {
            let tree_prefix = Zeroizing::new(code::accumulate_trees(&mut leaves, params.depth));
            let acc = code::Accumulated { local: &leaves, tree_prefix: &tree_prefix, depth: params.depth };
            let mut b = Zeroizing::new(crate::mem::zeroed_blocks(params.n));
            code::expand(&acc, params.code_len(), first_index, &mut b);
            b
        })
        .await)
    }
}

/// A sender's extension between [`VoleSender::extend_start`] and [`VoleSender::extend_finish`].
pub struct PendingSend {
    params: VoleParams,
    first_index: u64,
    leaves: Zeroizing<Vec<u128>>,
    messages: Option<Zeroizing<Vec<u128>>>,
}

/// A receiver's extension between [`VoleReceiver::extend_start`] and
/// [`VoleReceiver::extend_finish`].
pub struct PendingReceive {
    params: VoleParams,
    cot: Option<CorrelatedReceiverOutput>,
}

impl VoleReceiver {
    /// Runs the base OTs.
    pub async fn setup<C: Channel>(channel: &C) -> Result<Self, OtError> {
        Ok(Self { ot: IknpReceiver::setup(channel, Security::SemiHonest).await? })
    }

    /// `n` correlations: returns a and c = b + a·Δ. In step with [`VoleSender::extend`].
    pub async fn extend<C: Channel>(&mut self, channel: &C, n: usize) -> Result<VoleReceiverOutput, OtError> {
        let pending = self.extend_start(channel, n).await?;
        Self::extend_finish(channel, pending).await
    }

    /// First half of [`extend`](Self::extend): runs the OT extension, which only sends. See
    /// [`VoleSender::extend_start`].
    pub async fn extend_start<C: Channel>(&mut self, channel: &C, n: usize) -> Result<PendingReceive, OtError> {
        let params = VoleParams::for_len(n);
        if n == 0 {
            return Ok(PendingReceive { params, cot: None });
        }
        let cot = self.ot.extend_correlated(channel, params.cots()).await?;
        Ok(PendingReceive { params, cot: Some(cot) })
    }

    /// Second half of [`extend`](Self::extend): receives the tree messages and compresses.
    pub async fn extend_finish<C: Channel>(
        channel: &C,
        pending: PendingReceive,
    ) -> Result<VoleReceiverOutput, OtError> {
        let PendingReceive { params, cot } = pending;
        let Some(cot) = cot else {
            return Ok(VoleReceiverOutput { a: Zeroizing::new(Vec::new()), c: Zeroizing::new(Vec::new()) });
        };
        let messages = recv_tree_messages(channel, &params, cot.first_index()).await?;
        Ok(cpu::run(move || receiver_expand(&params, &cot, &messages)).await)
    }
}

/// Layout of the correlated OTs: tree j's base-VOLE bits first (128 per tree), then its GGM
/// levels (d per tree).
fn ggm_ot(params: &VoleParams, tree: usize, level: u32) -> usize {
    params.trees * BASE_BITS + tree * params.depth as usize + (level as usize - 1)
}

/// The sender's trees: all leaves (tree after tree) and, per tree, the masked level sums and the
/// correction d_j.
fn sender_trees(params: &VoleParams, cot: &CorrelatedSenderOutput) -> (Zeroizing<Vec<u128>>, Zeroizing<Vec<u128>>) {
    let delta = cot.delta();
    let q = cot.q();
    let depth = params.depth;
    let per_tree = params.tree_message_blocks();
    let roots = AesPrg::from_entropy();
    let hash = FixedKeyAes::fixed();
    let mut leaves = Zeroizing::new(crate::mem::zeroed_blocks(params.code_len()));
    let mut messages = Zeroizing::new(vec![0u128; params.trees * per_tree]);
    leaves.par_chunks_mut(1 << depth).zip(messages.par_chunks_mut(per_tree)).enumerate().for_each(
        |(j, (tree, out))| {
            let mut root = [0u128; 1];
            roots.fill_blocks(j as u64, &mut root);
            let mut sums = vec![[0u128; 2]; depth as usize];
            ggm::expand_full(root[0], depth, tree, &mut sums);
            zeroize::Zeroize::zeroize(&mut root);
            for level in 1..=depth {
                let k = ggm_ot(params, j, level);
                let tweak = (cot.first_index() + k as u64) as u128;
                let [k0, k1] = sums[level as usize - 1];
                let i = 2 * (level as usize - 1);
                out[i] = k0 ^ hash.tccr_hash(tweak, q[k]);
                out[i + 1] = k1 ^ hash.tccr_hash(tweak, q[k] ^ delta);
            }
            let gamma = gilboa_fold(&q[j * BASE_BITS..(j + 1) * BASE_BITS]);
            out[per_tree - 1] = gamma ^ tree.iter().fold(0, |x, &v| x ^ v);
            for s in sums.iter_mut() {
                *s = [0, 0];
            }
        },
    );
    (leaves, messages)
}

/// The receiver's side after the tree messages: rebuild the punctured trees, fix the noise
/// positions, accumulate and expand.
fn receiver_expand(params: &VoleParams, cot: &CorrelatedReceiverOutput, messages: &[u128]) -> VoleReceiverOutput {
    let t = cot.t();
    let choices = cot.choices();
    let bytes = choices.as_bytes();
    let depth = params.depth;
    let per_tree = params.tree_message_blocks();
    let hash = FixedKeyAes::fixed();
    let mut leaves = Zeroizing::new(crate::mem::zeroed_blocks(params.code_len()));
    let mut alpha = Zeroizing::new(vec![0u32; params.trees]);
    let mut beta = Zeroizing::new(vec![0u128; params.trees]);
    leaves.par_chunks_mut(1 << depth).zip(alpha.par_iter_mut()).zip(beta.par_iter_mut()).enumerate().for_each(
        |(j, ((tree, alpha), beta))| {
            let base = j * BASE_BITS;
            *beta = u128::from_le_bytes(bytes[base / 8..base / 8 + 16].try_into().expect("16 bytes"));
            let delta_j = gilboa_fold(&t[base..base + BASE_BITS]);
            let msg = &messages[j * per_tree..(j + 1) * per_tree];
            let mut point = 0usize;
            let mut known = vec![0u128; depth as usize];
            for level in 1..=depth {
                let k = ggm_ot(params, j, level);
                let r = choices.get(k) as usize;
                // H(t_k) = H(q_k + r·Δ) unmasks message r, the sum of the side-r children: the
                // path goes to the other side, 1 - r.
                let tweak = (cot.first_index() + k as u64) as u128;
                known[level as usize - 1] = msg[2 * (level as usize - 1) + r] ^ hash.tccr_hash(tweak, t[k]);
                point = (point << 1) | (r ^ 1);
            }
            ggm::expand_punctured(point, depth, &known, tree);
            let others = tree.iter().fold(0, |x, &v| x ^ v);
            tree[point] = delta_j ^ msg[per_tree - 1] ^ others;
            *alpha = point as u32;
            known.iter_mut().for_each(|k| *k = 0);
        },
    );
    let tree_prefix = Zeroizing::new(code::accumulate_trees(&mut leaves, depth));
    let beta_prefix = Zeroizing::new(code::exclusive_prefix(&beta));
    let acc = code::Accumulated { local: &leaves, tree_prefix: &tree_prefix, depth };
    let noise = code::Noise { alpha: &alpha, beta: &beta, beta_prefix: &beta_prefix, depth };
    let mut a = Zeroizing::new(crate::mem::zeroed_blocks(params.n));
    let mut c = Zeroizing::new(crate::mem::zeroed_blocks(params.n));
    code::expand_with_noise(&acc, &noise, params.code_len(), cot.first_index(), &mut a, &mut c);
    VoleReceiverOutput { a, c }
}

fn trees_per_frame(params: &VoleParams) -> usize {
    (MAX_FRAME_BODY / (16 * params.tree_message_blocks())).max(1)
}

async fn send_tree_messages<C: Channel>(
    channel: &C,
    params: &VoleParams,
    first_index: u64,
    messages: &[u128],
) -> Result<(), OtError> {
    let per_tree = params.tree_message_blocks();
    let per_frame = trees_per_frame(params);
    for (f, chunk) in messages.chunks(per_frame * per_tree).enumerate() {
        let trees = chunk.len() / per_tree;
        let mut frame = BytesMut::with_capacity(TREES_HEADER + chunk.len() * 16);
        frame.put_u8(KIND_TREES);
        frame.put_u64(first_index);
        frame.put_u32((f * per_frame) as u32);
        frame.put_u32(trees as u32);
        frame.put_u8(params.depth as u8);
        for &x in chunk {
            frame.put_slice(&x.to_le_bytes());
        }
        channel.send(frame.freeze()).await?;
    }
    Ok(())
}

async fn recv_tree_messages<C: Channel>(
    channel: &C,
    params: &VoleParams,
    first_index: u64,
) -> Result<Zeroizing<Vec<u128>>, OtError> {
    let per_tree = params.tree_message_blocks();
    let per_frame = trees_per_frame(params);
    let mut messages = Zeroizing::new(Vec::with_capacity(params.trees * per_tree));
    let mut received = 0usize;
    while received < params.trees {
        let frame: Bytes = channel.recv().await?;
        let expect_trees = per_frame.min(params.trees - received);
        let mut header = Vec::with_capacity(TREES_HEADER);
        header.push(KIND_TREES);
        header.extend_from_slice(&first_index.to_be_bytes());
        header.extend_from_slice(&(received as u32).to_be_bytes());
        header.extend_from_slice(&(expect_trees as u32).to_be_bytes());
        header.push(params.depth as u8);
        if frame.len() != TREES_HEADER + expect_trees * per_tree * 16 || frame[..TREES_HEADER] != header[..] {
            return Err(crate::ot::protocol(format!(
                "unexpected VOLE tree frame ({} bytes, kind {:#04x}); expected trees {}..{} of depth {} for OT index {}",
                frame.len(),
                frame.first().copied().unwrap_or(0),
                received,
                received + expect_trees,
                params.depth,
                first_index
            )));
        }
        messages.extend(
            frame[TREES_HEADER..].chunks_exact(16).map(|b| u128::from_le_bytes(b.try_into().expect("16 bytes"))),
        );
        received += expect_trees;
    }
    Ok(messages)
}

#[cfg(test)]
mod tests;
