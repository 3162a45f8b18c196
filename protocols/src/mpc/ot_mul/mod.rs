//! Gilboa OT multiplication of a plaintext integer matrix by a private ring vector.
//!
//! # What it computes
//!
//! The *chooser* holds a matrix X (rows × cols) of ℓ-bit two's-complement integers
//! (x = Σ_{k<ℓ−1} 2^k·x_k − 2^{ℓ−1}·x_{ℓ−1}); the *sender* holds a vector y ∈ Z_2^64. The OTs
//! cover the bits of a [`Layout`]: per column j a range lo_j ≤ k < hi_j and a sign flag, with
//! x = Σ_{lo_j≤k<hi_j} w_k·x_k (w_k = 2^k, and −2^{hi_j−1} for the top bit of a signed column).
//! The full layout (all ℓ bits, signed) fits any entry; [`Matrix::tightened`] gives the narrowest
//! per column ([`ColBits::of`]): 1 bit for a 0/1 indicator (also one encoded as 0/2^8), none for an
//! all-zero column. They end with additive shares (mod 2^64) of
//!
//! - **forward**: X·y (y has `cols` entries; a share per row), or
//! - **backward**: Xᵀ·y (y has `rows` entries; a share per column).
//!
//! One batch of rows·Σ_j(hi_j − lo_j) random OTs (rows·cols·ℓ with the full layout;
//! [`chooser_prepare`], [`sender_prepare_layout`]) serves one
//! forward *and* one backward product on the same X: each 128-bit random-OT message is two
//! independent 64-bit pads, the low half for the forward product and the high half for the
//! backward one.
//!
//! # Protocol (Gilboa 1999, over random OT as in e.g. Keller–Orsini–Scholl "MASCOT" §3)
//!
//! 1. IKNP random OTs ([`crate::ot::extension`]): the sender gets (m⁰_o, m¹_o), the chooser a
//!    random bit b_o and m^{b_o}_o, for o running over row i, then column j, then bit k of the
//!    layout.
//! 2. The chooser sends e_o = b_o ⊕ c_o where c_o = bit k of X_ij (derandomization, ⌈n/8⌉ bytes);
//!    the sender relabels M⁰_o = m^{e_o}_o, M¹_o = m^{1⊕e_o}_o, so the chooser holds M^{c_o}_o.
//! 3. Per product, with h(·) the chosen 64-bit half and w_k = ±2^k the weight of bit k, the sender
//!    sends τ_o = h(M⁰_o) − h(M¹_o) + w_k·y (y = y_j forward, y_i backward) and keeps −Σ h(M⁰_o);
//!    the chooser keeps Σ h(M^{c_o}_o) + c_o·τ_o. The sums are over the OTs of each output entry.
//!    For c_o = 1 the chooser's term is h(M⁰_o) + w_k·y, so the shares add up to Σ c_o·w_k·y.
//!
//! # What each party learns
//!
//! The sender sees e_o = b_o ⊕ c_o, with b_o uniform and unknown to it: nothing about X. The
//! chooser sees τ_o, masked by h(M^{1−c_o}_o), which is pseudorandom to it (TCCR hash of IKNP,
//! and each half is used for exactly one τ): nothing about y. Both learn the dimensions and the
//! layout (with a narrow layout that is a fact about X's columns: which bits they use, whether any
//! entry is negative; the caller chooses whether to reveal it or use the full layout).
//! Outputs are uniformly random shares. Semi-honest security (the OT extension may run in
//! malicious mode, but the τ and e messages are not checked).
//!
//! # Cost
//!
//! n = rows·Σ_j(hi_j − lo_j) random OTs (16 bytes each on the wire with IKNP), ⌈n/8⌉ bytes of
//! choice corrections, and 8 bytes of τ per OT per product.
//!
//! # Files
//!
//! This file holds the protocol (steps 1–3 for both roles); `matrix` the chooser's plaintext
//! [`Matrix`] and its local products; `cache` the OTs kept across epochs ([`ChooserCache`],
//! [`SenderCache`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::wire::{recv_bytes, recv_u64s, send_bytes, send_u64s};
use super::{MpcError, violation};
use crate::channel::Channel;
use crate::cpu;
use crate::ot::{IknpReceiver, IknpSender, RandomSenderOutput};

mod cache;
mod matrix;
pub mod onehot;

pub use cache::{ChooserCache, SenderCache};
pub use matrix::{ColBits, Layout, Matrix};

/// Rows per rayon task in the backward (column-sum) kernels.
const PAR_ROWS: usize = 256;

fn add_vecs(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_add(y);
    }
    a
}

/// Which product, and so which half of each OT message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    Forward,
    Backward,
}

impl Half {
    #[inline]
    fn of(self, m: u128) -> u64 {
        match self {
            Half::Forward => m as u64,
            Half::Backward => (m >> 64) as u64,
        }
    }
}

/// The chooser's random OTs for one matrix, derandomized to the bits of its entries.
pub struct ChooserOts {
    /// M^{c_o}_o.
    msgs: Zeroizing<Vec<u128>>,
    rows: usize,
    layout: Arc<Layout>,
    used: [AtomicBool; 2],
}

/// The sender's random OTs for the peer's matrix, with the chooser's corrections e.
pub struct SenderOts {
    /// M⁰_o and M¹_o (already relabeled by the chooser's corrections).
    m0: Zeroizing<Vec<u128>>,
    m1: Zeroizing<Vec<u128>>,
    rows: usize,
    layout: Arc<Layout>,
    used: [AtomicBool; 2],
}

impl ChooserOts {
    /// The pads' buffer, e.g. for [`IknpReceiver::recycle`] once both products are done.
    pub fn into_buffer(self) -> Zeroizing<Vec<u128>> {
        self.msgs
    }
}

fn take(used: &[AtomicBool; 2], half: Half) -> Result<(), MpcError> {
    if used[half as usize].swap(true, Ordering::SeqCst) {
        return Err(violation("OT pads used twice"));
    }
    Ok(())
}

impl SenderOts {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The pads' buffers (M⁰, M¹), e.g. for [`IknpSender::recycle`] once both products are done.
    pub fn into_buffers(self) -> [Zeroizing<Vec<u128>>; 2] {
        [self.m0, self.m1]
    }

    /// (h(M⁰_o), h(M¹_o)).
    #[inline]
    fn pads(&self, o: usize, half: Half) -> (u64, u64) {
        (half.of(self.m0[o]), half.of(self.m1[o]))
    }
}

/// Step 1–2, chooser side: random OTs for every bit of `x`, then the corrections e.
pub async fn chooser_prepare<C: Channel>(
    channel: &C,
    ext: &mut IknpReceiver,
    x: Arc<Matrix>,
) -> Result<ChooserOts, MpcError> {
    let n = x.rows * x.layout.per_row();
    let ots = ext.extend_random(channel, n).await?;
    let (x2, ots) = (x.clone(), ots);
    let (ots, e) = cpu::run(move || {
        let c = choice_bytes(&x2);
        let b = ots.choices().as_bytes();
        let e: Vec<u8> = c.iter().zip(b).map(|(c, b)| c ^ b).collect();
        (ots, e)
    })
    .await;
    send_bytes(channel, &e).await?;
    let msgs = ots.into_messages();
    Ok(ChooserOts { msgs, rows: x.rows, layout: x.layout.clone(), used: Default::default() })
}

/// Step 1–2, sender side, for the peer's rows × cols matrix of `bits`-bit entries (all bits).
pub async fn sender_prepare<C: Channel>(
    channel: &C,
    ext: &mut IknpSender,
    rows: usize,
    cols: usize,
    bits: u32,
) -> Result<SenderOts, MpcError> {
    sender_prepare_layout(channel, ext, rows, Arc::new(Layout::full(cols, bits))).await
}

/// Step 1–2, sender side, for the peer's matrix of `rows` rows with the OTs of `layout`.
pub async fn sender_prepare_layout<C: Channel>(
    channel: &C,
    ext: &mut IknpSender,
    rows: usize,
    layout: Arc<Layout>,
) -> Result<SenderOts, MpcError> {
    let n = rows * layout.per_row();
    let ots = ext.extend_random(channel, n).await?;
    let e = recv_bytes(channel, n.div_ceil(8)).await?;
    let (m0, m1) = cpu::run(move || relabel(ots, &e)).await;
    Ok(SenderOts { m0, m1, rows, layout, used: Default::default() })
}

/// M⁰_o = m^{e_o}_o, M¹_o = m^{1⊕e_o}_o, swapped in place. (e_o is public to the sender: it is
/// what the chooser sent, so selecting on it is fine.)
fn relabel(ots: RandomSenderOutput, e: &[u8]) -> (Zeroizing<Vec<u128>>, Zeroizing<Vec<u128>>) {
    let (mut m0, mut m1) = ots.into_parts();
    m0.par_chunks_mut(8).zip(m1.par_chunks_mut(8)).zip(e.par_iter()).for_each(|((a, b), &e)| {
        for (k, (a, b)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            if (e >> k) & 1 == 1 {
                std::mem::swap(a, b);
            }
        }
    });
    (m0, m1)
}

/// The packed bits c_o of every entry of `x`, in OT order.
fn choice_bytes(x: &Matrix) -> Zeroizing<Vec<u8>> {
    let slots = x.layout.slots();
    let n = x.rows * slots.len();
    let mut out = Zeroizing::new(vec![0u8; n.div_ceil(8)]);
    let mut o = 0;
    for row in x.data.chunks(x.cols.max(1)).take(x.rows) {
        for &(j, k, _) in slots {
            out[o / 8] |= (((row[j as usize] >> k) & 1) as u8) << (o % 8);
            o += 1;
        }
    }
    out
}

/// Step 3, sender side, forward: τ for every OT and the sender's share of X·y (one per row).
pub fn sender_forward(s: &SenderOts, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
    let cols = s.layout.cols().len();
    if y.len() != cols {
        return Err(MpcError::Invalid(format!("forward vector of {} entries for {cols} columns", y.len())));
    }
    take(&s.used, Half::Forward)?;
    let slots = s.layout.slots();
    let cb = slots.len();
    // w_k·y_j per slot: the same for every row.
    let corr: Vec<u64> = slots.iter().map(|&(j, _, w)| w.wrapping_mul(y[j as usize])).collect();
    let mut tau = vec![0u64; s.rows * cb];
    let mut out = vec![0u64; s.rows];
    if cb > 0 {
        tau.par_chunks_mut(cb).zip(out.par_iter_mut()).enumerate().for_each(|(i, (t, out))| {
            let mut acc = 0u64;
            for (o, (t, &c)) in t.iter_mut().zip(&corr).enumerate() {
                let (m0, m1) = s.pads(i * cb + o, Half::Forward);
                *t = m0.wrapping_sub(m1).wrapping_add(c);
                acc = acc.wrapping_sub(m0);
            }
            *out = acc;
        });
    }
    Ok((tau, out))
}

/// Step 3, sender side, backward: τ for every OT and the sender's share of Xᵀ·y (one per column).
pub fn sender_backward(s: &SenderOts, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
    if y.len() != s.rows {
        return Err(MpcError::Invalid(format!("backward vector of {} entries for {} rows", y.len(), s.rows)));
    }
    take(&s.used, Half::Backward)?;
    let (slots, cols) = (s.layout.slots(), s.layout.cols().len());
    let cb = slots.len();
    let mut tau = vec![0u64; s.rows * cb];
    if cb == 0 {
        return Ok((tau, vec![0; cols]));
    }
    let out = tau
        .par_chunks_mut(cb * PAR_ROWS)
        .zip(y.par_chunks(PAR_ROWS))
        .enumerate()
        .map(|(blk, (t, ys))| {
            let mut acc = vec![0u64; cols];
            for (r, &yi) in ys.iter().enumerate() {
                let base = (blk * PAR_ROWS + r) * cb;
                for (o, (t, &(j, _, w))) in t[r * cb..(r + 1) * cb].iter_mut().zip(slots).enumerate() {
                    let (m0, m1) = s.pads(base + o, Half::Backward);
                    *t = m0.wrapping_sub(m1).wrapping_add(w.wrapping_mul(yi));
                    let a = &mut acc[j as usize];
                    *a = a.wrapping_sub(m0);
                }
            }
            acc
        })
        .reduce(|| vec![0u64; cols], add_vecs);
    Ok((tau, out))
}

/// Step 3, sender side, elementwise (the chooser's matrix has one column): τ for every OT and the
/// sender's share of x_i·y_i (one per row). The chooser's side is [`chooser_forward`] (with one
/// column its per-row sum is the same). Uses the forward halves.
pub fn sender_elementwise(s: &SenderOts, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
    let cols = s.layout.cols().len();
    if cols != 1 || y.len() != s.rows {
        return Err(MpcError::Invalid(format!("elementwise vector of {} entries for {}×{cols}", y.len(), s.rows)));
    }
    take(&s.used, Half::Forward)?;
    let slots = s.layout.slots();
    let bits = slots.len();
    let mut tau = vec![0u64; s.rows * bits];
    let mut out = vec![0u64; s.rows];
    if bits == 0 {
        return Ok((tau, out));
    }
    tau.par_chunks_mut(bits).zip(out.par_iter_mut()).zip(y.par_iter()).enumerate().for_each(|(i, ((t, out), &yi))| {
        let mut acc = 0u64;
        for (k, &(_, _, wk)) in slots.iter().enumerate() {
            let (m0, m1) = s.pads(i * bits + k, Half::Forward);
            t[k] = m0.wrapping_sub(m1).wrapping_add(wk.wrapping_mul(yi));
            acc = acc.wrapping_sub(m0);
        }
        *out = acc;
    });
    Ok((tau, out))
}

fn check_chooser(c: &ChooserOts, x: &Matrix, tau: &[u64], half: Half) -> Result<(), MpcError> {
    if x.rows != c.rows || *x.layout != *c.layout {
        return Err(MpcError::Invalid("matrix does not match its OTs".into()));
    }
    if tau.len() != c.msgs.len() {
        return Err(violation(format!("{} corrections for {} OTs", tau.len(), c.msgs.len())));
    }
    take(&c.used, half)
}

/// Step 3, chooser side, forward: its share of X·y given the sender's τ.
pub fn chooser_forward(c: &ChooserOts, x: &Matrix, tau: &[u64]) -> Result<Vec<u64>, MpcError> {
    check_chooser(c, x, tau, Half::Forward)?;
    let slots = c.layout.slots();
    let cb = slots.len();
    if cb == 0 {
        return Ok(vec![0; c.rows]);
    }
    let msgs = &c.msgs;
    Ok(x.data
        .par_chunks(x.cols)
        .enumerate()
        .map(|(i, row)| {
            let mut acc = 0u64;
            for (o, &(j, k, _)) in slots.iter().enumerate() {
                let o = i * cb + o;
                let mask = ((row[j as usize] >> k) & 1).wrapping_neg();
                acc = acc.wrapping_add(Half::Forward.of(msgs[o])).wrapping_add(mask & tau[o]);
            }
            acc
        })
        .collect())
}

/// Step 3, chooser side, backward: its share of Xᵀ·y given the sender's τ.
pub fn chooser_backward(c: &ChooserOts, x: &Matrix, tau: &[u64]) -> Result<Vec<u64>, MpcError> {
    check_chooser(c, x, tau, Half::Backward)?;
    let (slots, cols) = (c.layout.slots(), x.cols);
    let cb = slots.len();
    if cb == 0 {
        return Ok(vec![0; cols]);
    }
    let msgs = &c.msgs;
    Ok(x.data
        .par_chunks(cols * PAR_ROWS)
        .enumerate()
        .map(|(blk, block)| {
            let mut acc = vec![0u64; cols];
            for (r, row) in block.chunks(cols).enumerate() {
                let base = (blk * PAR_ROWS + r) * cb;
                for (o, &(j, k, _)) in slots.iter().enumerate() {
                    let o = base + o;
                    let mask = ((row[j as usize] >> k) & 1).wrapping_neg();
                    let a = &mut acc[j as usize];
                    *a = a.wrapping_add(Half::Backward.of(msgs[o])).wrapping_add(mask & tau[o]);
                }
            }
            acc
        })
        .reduce(|| vec![0u64; cols], add_vecs))
}

/// One party's two roles at once: chooser for its own matrix (`own`), sender for the peer's
/// (`peer_rows` × `peer_cols`, `peer_bits`). The two OT extensions run concurrently, one per
/// direction of the channel.
pub async fn prepare_both<C: Channel>(
    channel: &C,
    receiver: &mut IknpReceiver,
    sender: &mut IknpSender,
    own: Arc<Matrix>,
    peer_rows: usize,
    peer: Arc<Layout>,
) -> Result<(ChooserOts, SenderOts), MpcError> {
    let (c, s) = futures::join!(
        chooser_prepare(channel, receiver, own),
        sender_prepare_layout(channel, sender, peer_rows, peer)
    );
    Ok((c?, s?))
}

/// Sends our τ and receives the peer's (`n` of them), concurrently.
pub async fn exchange_tau<C: Channel>(channel: &C, ours: &[u64], n: usize) -> Result<Vec<u64>, MpcError> {
    let (sent, theirs) = futures::join!(send_u64s(channel, ours), recv_u64s(channel, n));
    sent?;
    theirs
}

#[cfg(test)]
mod tests;
