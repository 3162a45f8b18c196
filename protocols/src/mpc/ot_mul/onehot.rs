//! Products of a one-hot matrix on correlations kept across epochs: a punctured GGM tree per
//! (row, group), made once per job, re-keyed per use by a tweaked hash.
//!
//! # What it computes
//!
//! The chooser's matrix X is a row of one-hot *groups* ([`Groups`]): group g has `cols_g`
//! columns whose entries are 0 or one public `scale`, at most one of them non-zero per row. So a
//! row's group is a *leaf* b ∈ 0..k_g (k_g = cols_g + 1): 0 when the row has no entry set (the
//! reference bin of a scorecard feature), p + 1 when column p is set. The sender holds a ring
//! vector y, and the parties end with additive shares (mod 2^64) of
//!
//! - **forward**: X·y (a share per row), i.e. Σ_g scale·T_g[b_g] with T_g[0] = 0 and
//!   T_g[j] = y[first_g + j − 1];
//! - **backward**: Xᵀ·y (a share per column): per column (g, j) the sum of scale·y_i over the rows
//!   whose leaf in group g is j.
//!
//! # Protocol
//!
//! *Once per job* (setup, [`OneHotSender::extend`] / [`OneHotChooser::extend`]), per (row, group)
//! with d = ⌈log₂ k⌉: the sender draws a root key R (OS randomness via an AES PRG) and expands a
//! GGM tree (Goldreich–Goldwasser–Micali) of depth d, children G(s) = (E(s, t_L), E(s, t_R)) with
//! E(s, t) = π(s ⊕ t) ⊕ s ⊕ t (one AES call per child; [`expand_many`]),
//! pruned to the nodes that have a leaf below k; its leaves are K_0..K_{k−1}. The chooser learns
//! every leaf but K_b by the standard puncturing of a GGM tree (as in the single-point COT of
//! Boyle et al. CCS 2019 / Ferret, Yang et al. CCS 2020): d random OTs from the IKNP extension,
//! derandomized to the choice bits ¬b_l (level l's bit of b, negated); per level the sender sends
//! (⊕ of the level's left children) ⊕ M⁰ and (⊕ of its right children) ⊕ M¹, 32 bytes; the chooser
//! opens the side off its path and, knowing every other node of the level from the level above,
//! gets the sibling of its path node. It keeps those d co-path keys; the sender keeps R.
//!
//! *Per use* u (an epoch of a list of rows; tweak t(u, purpose, row, group, leaf), unique per
//! pad), with H the TCCR hash of fixed-key AES (GKWY20) and S = ⊕_{j<k} K_j:
//!
//! - forward (1-of-k, Naor–Pinkas style: the chooser can compute S ⊕ K_j only for j = b, as the
//!   ⊕ of the leaves it knows): P_j = H(t_F, S ⊕ K_j); the sender sends u_j = T[j] + P_j − P_0 for
//!   j = 1..k−1 (8 bytes per column) and keeps P_0; the chooser keeps −P_0 if b = 0, else
//!   u_b − P_b = T[b] − P_0.
//! - backward (all-but-one): Q_j = E(K_j, t_B + j) (one AES call: the leaves are independent
//!   uniform keys, so the tweakable PRF E(K, ·) suffices; [`em_trees`]); the sender sends c = y_i − Σ_{j<k} Q_j (8 bytes per
//!   group) and keeps Q_j for column j; the chooser keeps −Q_j for j ≠ b and
//!   c + Σ_{j≠b} Q_j = y_i − Q_b for j = b.
//!
//! - backward of two vectors at once ([`OneHotSenderSession::backward_pair`], e.g. SecureBoost's
//!   gradients and hessians): the 128-bit Q_j split into two 64-bit pads, the low half for y0 and
//!   the high half for y1, so c0 = y0_i − Σ_j lo(Q_j) and c1 = y1_i − Σ_j hi(Q_j) (16 bytes per
//!   group); the two halves of one TCCR output are independent pseudorandom pads.
//!
//! Both then multiply their shares by `scale`. Exact (no error term).
//!
//! A use covers a range of rows ([`OneHotSender::session`], the LR's batches) or a strictly
//! increasing list of absolute rows ([`OneHotSender::session_rows`], a tree node's rows); the
//! tweak carries the absolute row index and the use id, so a pad is never used twice as long as
//! every use of a row has its own use id. One forward and one backward (single or paired) per use.
//!
//! # What each party learns; what is kept
//!
//! The sender sees the OT extension's messages and the derandomization bits ¬b_l ⊕ (a uniform
//! random choice bit): nothing about the leaves. The chooser sees, per level, its OT's opened side
//! (a sum it can predict) and the other side masked by an OT output it does not have; so K_b
//! stays pseudorandom to it (GGM puncturing). Per use it sees u_j (j ≠ b) masked by P_j, and c
//! masked by Q_b: P_j for j ≠ b are TCCR hashes of inputs that contain K_b (K_b ⊕ known values),
//! Q_b = E(K_b, ·) is single-key Even–Mansour under the key K_b (a PRF in the random-permutation
//! model while K_b is unknown), each under a tweak used once; so they are independent pseudorandom pads and u, c say
//! nothing about y. Its outputs T[b] − P_0 (b ≠ 0), −P_0 are uniformly random to it.
//! Reuse across epochs: a key is never hashed twice under one tweak (the tweak carries the use,
//! purpose, row position, group and leaf; uses of different lists have different roots), which is
//! exactly what TCCR asks; the GGM expansion uses two setup tweaks on independent nodes.
//! Kept per (row, group): the sender 16 bytes (R), the chooser d·16 bytes of co-path keys and its
//! leaf (1 byte). Both learn the group sizes and the scale (announced by the chooser: for a
//! scorecard, the bin count of each of its features, known to both anyway).
//!
//! Semi-honest, as the rest of the LR products: a sender that sends wrong level sums, u or c only
//! makes the outputs wrong (the model comes out wrong; nothing is checked); a chooser has no
//! message after the setup's derandomization bits, whose wrong values only change which leaf it
//! cannot open. Every length is fixed by the local shapes; frames of other sizes are errors.
//!
//! # Cost
//!
//! Setup: d random OTs (16 bytes each), d bits and 32·d bytes per (row, group). Per use: forward
//! 8 bytes per column (k − 1 per group), backward 8 bytes per group (16 for a pair).
//!
//! CPU: one expansion per (row, group) per use serves both products (the forward makes the
//! backward's y-independent part, [`Prep`], and keeps it in the session; a backward without a
//! forward expands on its own). Neither side's expansion depends on y or on the message, so it can
//! run ahead of them ([`OneHotSenderSession::precompute`], [`OneHotChooserSession::precompute`]:
//! the LR expands its next batch while the current batch's messages are exchanged); the forward
//! is then one addition per column (sender) or per (row, group) (chooser), with the same message
//! and shares. Per (row, group) and use, in AES blocks: the expansion
//! Σ_l children (20 at k = 10; until the `sbfast` change Σ_l (parents + children), 31), then the
//! sender 2k (forward) + k (backward; 2k before), the chooser 2 (forward: one hash) + k
//! (backward). The kernel ([`expand_many`], [`tccr_trees`], [`em_trees`])
//! takes a group's trees of 128 rows together: each level is one call into the cipher over all
//! of them (128–32 768 blocks, pipelined by the VAES/AES-NI backend), the hashes one call per
//! slice, no per-tree calls. Measured (`cargo bench -p consort-protocols --bench onehot`,
//! `RAYON_NUM_THREADS=1`, 2·10^4 rows × 300 groups of k = 10, batches of 1 024 rows, on a shared
//! 2-vCPU box at load ~10, so CPU seconds are the figures): sender forward + backward pads
//! 173 CPU-ns per (row, group) (410 M AES blocks per CPU-s), chooser 190 CPU-ns (279 M), the
//! backwards after them 3.3 CPU-ns each; a backward alone 108 (sender) and 160 (chooser) CPU-ns,
//! a pair the same. One LR epoch's products of a 10^5 × 300-feature one-hot matrix: ~11 CPU-s
//! for both sides (stop 23's whole epoch with the per-tree code was ~83 CPU-s for both nodes;
//! that code's kernel alone was not measured). Those figures predate the one-call expansion and
//! backward pads (`sbfast`: 102 instead of 172 AES blocks per (row, group) and backward use at
//! k = 33; SecureBoost's per-tree time at 2.85·10^5 × 20 B features fell ≈ 25% on a shared box).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::{ColBits, Layout, Matrix, chooser_prepare, sender_prepare_layout};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::wire::{recv_u64s, send_u64s};
use crate::mpc::{MpcError, violation};
use crate::ot::aes_hash::{AesPrg, FixedKeyAes};
use crate::ot::{IknpReceiver, IknpSender};

/// Most columns in one group (k ≤ 256 leaves, trees of depth ≤ 8).
pub const MAX_GROUP_COLS: u32 = 255;

/// Tweak purposes (bits 56..64 of a tweak).
const T_LEFT: u128 = 1 << 56;
const T_RIGHT: u128 = 2 << 56;
const T_BACKWARD: u128 = 3;
const T_FORWARD: u128 = 4;

/// t(use, purpose, row, group, leaf): use + 1 in bits 64..96 (0 is the setup's), purpose 56..64,
/// row position 24..56, group 8..24, leaf 0..8.
#[inline]
fn tweak(use_id: u64, purpose: u128, row: usize, group: usize, leaf: usize) -> u128 {
    ((use_id as u128 + 1) << 64) | (purpose << 56) | ((row as u128) << 24) | ((group as u128) << 8) | leaf as u128
}

/// The one-hot groups of a chooser's columns (consecutive, covering every column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// Columns per group (k − 1).
    cols: Vec<u8>,
    /// First column of each group.
    first: Vec<u32>,
    /// Offset of each group's OTs (co-path keys) within a row.
    at: Vec<u32>,
    /// OTs (tree depth) per row, Σ d_g.
    per_row: usize,
    scale: u64,
    total: usize,
}

/// Most groups a chooser may announce (as the LR's peer feature bound).
pub const MAX_GROUPS: usize = 1 << 16;

fn depth(k: usize) -> u32 {
    (k as u32).next_power_of_two().trailing_zeros()
}

impl Groups {
    /// Groups of `cols[g]` columns each (1..=[`MAX_GROUP_COLS`]), entries 0 or `scale`.
    pub fn new(cols: &[u32], scale: u64) -> Result<Self, MpcError> {
        if cols.len() > MAX_GROUPS || cols.iter().any(|&c| !(1..=MAX_GROUP_COLS).contains(&c)) {
            return Err(MpcError::Invalid(format!(
                "one-hot groups must have 1..={MAX_GROUP_COLS} columns each, at most {MAX_GROUPS} groups"
            )));
        }
        let (mut first, mut at, mut total, mut per_row) = (Vec::new(), Vec::new(), 0usize, 0usize);
        for &c in cols {
            first.push(total as u32);
            at.push(per_row as u32);
            total += c as usize;
            per_row += depth(c as usize + 1) as usize;
        }
        Ok(Self { cols: cols.iter().map(|&c| c as u8).collect(), first, at, per_row, scale, total })
    }

    /// Columns covered.
    pub fn total_cols(&self) -> usize {
        self.total
    }

    pub fn len(&self) -> usize {
        self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// Random OTs of the setup per row (Σ ⌈log₂ k_g⌉).
    pub fn ots_per_row(&self) -> usize {
        self.per_row
    }

    fn leaves(&self, g: usize) -> usize {
        self.cols[g] as usize + 1
    }

    /// The most leaves of a group (2 without groups).
    fn max_leaves(&self) -> usize {
        self.cols.iter().max().map_or(2, |&c| c as usize + 1)
    }

    /// The announcement: group count (u32), scale (u64), then one byte per group.
    pub fn to_bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let mut head = (self.cols.len() as u32).to_le_bytes().to_vec();
        head.extend_from_slice(&self.scale.to_le_bytes());
        (head, self.cols.clone())
    }

    /// A peer's announced group count from its 12-byte header, checked against its column count
    /// before the sizes are received.
    pub fn count_from_header(head: &[u8], peer_cols: usize) -> Result<(usize, u64), MpcError> {
        let n = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let scale = u64::from_le_bytes(head[4..12].try_into().unwrap());
        if n > peer_cols || n > MAX_GROUPS {
            return Err(violation(format!("the peer announced {n} one-hot groups for {peer_cols} columns")));
        }
        Ok((n, scale))
    }

    /// The peer's groups from its announced sizes: each 1..=255 columns, covering exactly its
    /// `peer_cols` columns.
    pub fn from_peer(sizes: &[u8], scale: u64, peer_cols: usize) -> Result<Self, MpcError> {
        let total: usize = sizes.iter().map(|&c| c as usize).sum();
        if sizes.contains(&0) || total != peer_cols {
            return Err(violation("the peer announced one-hot groups that do not cover its columns"));
        }
        let cols: Vec<u32> = sizes.iter().map(|&c| c as u32).collect();
        Self::new(&cols, scale).map_err(|_| violation("the peer announced malformed one-hot groups"))
    }

    /// The leaf of every (row, group) of `x` (row-major): 0 when no column of the group is set,
    /// p + 1 when column p is. Errors when an entry is neither 0 nor the scale or a group has two
    /// entries set.
    pub fn leaves_of(&self, x: &Matrix) -> Result<Zeroizing<Vec<u8>>, MpcError> {
        if x.cols != self.total {
            return Err(MpcError::Invalid(format!("one-hot groups of {} columns for {} columns", self.total, x.cols)));
        }
        let g_n = self.cols.len();
        let mut out = Zeroizing::new(vec![0u8; x.rows * g_n]);
        if g_n == 0 {
            return Ok(out);
        }
        let bad = AtomicBool::new(false);
        out.par_chunks_mut(g_n).zip(x.data.par_chunks(x.cols.max(1))).for_each(|(leaves, row)| {
            for (g, leaf) in leaves.iter_mut().enumerate() {
                let f = self.first[g] as usize;
                for (p, &v) in row[f..f + self.cols[g] as usize].iter().enumerate() {
                    if v == 0 {
                        continue;
                    }
                    if v != self.scale || *leaf != 0 {
                        bad.store(true, Ordering::Relaxed);
                    }
                    *leaf = p as u8 + 1;
                }
            }
        });
        if bad.load(Ordering::Relaxed) {
            return Err(MpcError::Invalid("a one-hot group has an entry other than 0 or its scale, or two set".into()));
        }
        Ok(out)
    }

    /// The rows `rows` of the one-hot matrix whose leaves are `leaves` (one byte per (row,
    /// group), as [`Self::leaves_of`] makes them), entries `bits` wide, with `layout` (the matrix
    /// the leaves came from had it). Lets a party keep the leaves instead of the matrix.
    ///
    /// # Panics
    ///
    /// If a row is out of range of `leaves`, or `layout` has another column count.
    pub fn matrix_of(&self, leaves: &[u8], rows: &[u32], bits: u32, layout: Arc<Layout>) -> Matrix {
        assert_eq!(layout.cols().len(), self.total, "layout of another column count");
        let (g_n, cols) = (self.cols.len(), self.total);
        let mut data = Zeroizing::new(vec![0u64; rows.len() * cols]);
        if g_n > 0 {
            data.par_chunks_mut(cols.max(1)).zip(rows.par_iter()).for_each(|(row, &i)| {
                for (g, &b) in leaves[i as usize * g_n..(i as usize + 1) * g_n].iter().enumerate() {
                    if b != 0 {
                        row[self.first[g] as usize + b as usize - 1] = self.scale;
                    }
                }
            });
        }
        Matrix { data, rows: rows.len(), cols, bits, layout }
    }

    /// The setup's OT layout: per group its depth's bits (unsigned, from bit 0).
    fn layout(&self) -> Layout {
        Layout::new(
            self.cols.iter().map(|&c| ColBits { lo: 0, hi: depth(c as usize + 1) as u8, signed: false }).collect(),
        )
    }
}

/// One group's backward pads Q_j (j < k) of each tree in `pads` (k per tree): per tree their sum
/// (low and high 64-bit halves) into `sums`, and each column's pad (leaves 1..k; column
/// f + j − 1 of `cols`, the high halves `cols` further) into `acc`. The sender (`skip` = None)
/// adds them; the chooser subtracts them and skips the leaf it cannot open (`skip[t]`).
#[inline]
fn fold_pads(
    pads: &[u128],
    k: usize,
    skip: Option<&[usize]>,
    acc: &mut [u64],
    (f, cols): (usize, usize),
    sums: &mut [u64],
    (g, g_n): (usize, usize),
) {
    for (t, q) in pads.chunks(k).enumerate() {
        let own = skip.map(|s| s[t]);
        let (mut lo, mut hi) = (0u64, 0u64);
        for (j, &q) in q.iter().enumerate() {
            if own == Some(j) {
                continue;
            }
            let (ql, qh) = (q as u64, (q >> 64) as u64);
            lo = lo.wrapping_add(ql);
            hi = hi.wrapping_add(qh);
            if j > 0 {
                let (al, ah) = (&mut acc[f + j - 1], cols + f + j - 1);
                if own.is_some() {
                    *al = al.wrapping_sub(ql);
                    acc[ah] = acc[ah].wrapping_sub(qh);
                } else {
                    *al = al.wrapping_add(ql);
                    acc[ah] = acc[ah].wrapping_add(qh);
                }
            }
        }
        sums[(t * g_n + g) * 2] = lo;
        sums[(t * g_n + g) * 2 + 1] = hi;
    }
}

/// Nodes of level l (0..=d) that have a leaf below k.
#[inline]
fn level_len(k: usize, d: u32, l: u32) -> usize {
    k.div_ceil(1 << (d - l))
}

/// Rows per task of the batched kernel: each level of one group's trees of these rows goes
/// through the cipher in one call (≥ 128 blocks per call; up to 32,768 at k = 256).
const KERNEL_ROWS: usize = 128;

/// Work buffers of the batched kernel, made once per task with room for the widest group (never
/// grown, so no stray copies of keys are left behind), zeroized on drop.
struct Bufs {
    /// The current level of every tree (tree-major), the leaves at the end.
    nodes: Zeroizing<Vec<u128>>,
    next: Zeroizing<Vec<u128>>,
    y: Zeroizing<Vec<u128>>,
    h: Zeroizing<Vec<u128>>,
    /// A tweak per tree.
    base: Vec<u128>,
}

impl Bufs {
    fn new(trees: usize, max_k: usize) -> Self {
        let v = || Zeroizing::new(Vec::with_capacity(trees * max_k));
        Self { nodes: v(), next: v(), y: v(), h: v(), base: Vec::with_capacity(trees) }
    }
}

/// Expands the trees of k leaves whose roots are in `b.nodes`, all of them level by level (one
/// call into the cipher per level for all trees together):
/// G(s) = (E(s, t_L), E(s, t_R)) with E(s, t) = π(s ⊕ t) ⊕ s ⊕ t, one block cipher call per child
/// (the fixed-key-AES PRG of MMO form: for a uniform secret s, E(s, ·) is single-key
/// Even–Mansour under key s, XORed with its public input, so a PRF in the random-permutation
/// model), pruned to the nodes that have a leaf below k. `hook(t, l, nodes)` sees tree t's nodes
/// of level l as soon as they are made and may change them (the chooser's puncturing, the setup's
/// level sums). Ends with the leaves in `b.nodes`, k per tree.
fn expand_many(b: &mut Bufs, k: usize, mut hook: impl FnMut(usize, u32, &mut [u128])) {
    let aes = FixedKeyAes::fixed();
    let (t, d) = (b.nodes.len(), depth(k));
    for l in 1..=d {
        let (np, nc) = (level_len(k, d, l - 1), level_len(k, d, l));
        b.next.clear();
        for s in b.nodes.chunks(np) {
            b.next.extend((0..nc).map(|v| s[v >> 1] ^ if v & 1 == 0 { T_LEFT } else { T_RIGHT }));
        }
        b.y.resize(t * nc, 0);
        aes.permute_to(&b.next, &mut b.y);
        for (tr, (z, y)) in b.next.chunks_mut(nc).zip(b.y.chunks(nc)).enumerate() {
            for (z, y) in z.iter_mut().zip(y) {
                *z ^= y;
            }
            hook(tr, l, z);
        }
        std::mem::swap(&mut b.nodes, &mut b.next);
    }
}

/// `xs[t·k + j] ← E(xs[t·k + j], base[t] + j)` with E(x, i) = π(x ⊕ i) ⊕ x ⊕ i (as in
/// [`expand_many`]): the backward pads, one call into the cipher for the whole slice. The keys
/// hashed here are GGM leaves — independent and uniform, never related by a global offset as IKNP
/// outputs are — so the tweakable PRF E(K, ·) (Even–Mansour under key K) suffices where
/// [`tccr_trees`]' two-call TCCR hash is needed for correlated inputs.
fn em_trees(xs: &mut [u128], k: usize, base: &[u128], y: &mut Vec<u128>) {
    let aes = FixedKeyAes::fixed();
    for (x, &b) in xs.chunks_mut(k).zip(base) {
        for (j, x) in x.iter_mut().enumerate() {
            *x ^= b + j as u128;
        }
    }
    y.resize(xs.len(), 0);
    aes.permute_to(xs, y);
    for (x, y) in xs.iter_mut().zip(y.iter()) {
        *x ^= y;
    }
}

/// `xs[t·k + j] ← H(base[t] + j, xs[t·k + j])` with H the TCCR hash π(π(x) ⊕ i) ⊕ π(x): the whole
/// slice in two calls into the cipher.
fn tccr_trees(xs: &mut [u128], k: usize, base: &[u128], y: &mut Vec<u128>) {
    let aes = FixedKeyAes::fixed();
    y.resize(xs.len(), 0);
    aes.permute_to(xs, y);
    for ((x, y), &b) in xs.chunks_mut(k).zip(y.chunks(k)).zip(base) {
        for (j, (x, y)) in x.iter_mut().zip(y).enumerate() {
            *x = y ^ (b + j as u128);
        }
    }
    aes.permute_in_place(xs);
    for (x, y) in xs.iter_mut().zip(y.iter()) {
        *x ^= y;
    }
}

/// The backward product's y-independent part of a use, made from the forward's expansion (or by
/// the backward itself when there was no forward).
struct Prep {
    /// Per (row, group), low then high 64 bits of the pads' sum: the sender's Σ_j Q_j, the
    /// chooser's Σ_{j≠b} Q_j.
    sums: Vec<u64>,
    /// Per column, the low halves then the high halves (2 · cols): the sender's Σ_rows Q_j, the
    /// chooser's −Σ_rows Q_j over the rows whose leaf is not j.
    acc: Vec<u64>,
}

/// One task's rows of a use and its slices of the outputs.
struct Part<'a> {
    r0: usize,
    n: usize,
    /// Forward message (sender) and shares, one chunk each.
    msg: Option<&'a mut [u64]>,
    out: Option<&'a mut [u64]>,
    sums: Option<&'a mut [u64]>,
}

/// The use's rows cut into tasks of [`KERNEL_ROWS`], with their chunks of each output (`per_row`
/// words per row; outputs that are not computed are empty).
fn parts<'a>(
    m: usize,
    msg: &'a mut [u64],
    msg_row: usize,
    out: &'a mut [u64],
    sums: &'a mut [u64],
    sums_row: usize,
) -> Vec<Part<'a>> {
    let mut parts: Vec<Part> = (0..m.div_ceil(KERNEL_ROWS))
        .map(|t| Part {
            r0: t * KERNEL_ROWS,
            n: KERNEL_ROWS.min(m - t * KERNEL_ROWS),
            msg: None,
            out: None,
            sums: None,
        })
        .collect();
    for (p, c) in parts.iter_mut().zip(msg.chunks_mut(KERNEL_ROWS * msg_row.max(1))) {
        p.msg = Some(c);
    }
    for (p, c) in parts.iter_mut().zip(out.chunks_mut(KERNEL_ROWS)) {
        p.out = Some(c);
    }
    for (p, c) in parts.iter_mut().zip(sums.chunks_mut(KERNEL_ROWS * sums_row.max(1))) {
        p.sums = Some(c);
    }
    parts
}

/// The sender's kept correlations: a root per (row, group) of a list of rows.
pub struct OneHotSender {
    groups: Arc<Groups>,
    roots: Zeroizing<Vec<u128>>,
    rows: usize,
}

/// The chooser's kept correlations: per (row, group) its leaf and co-path keys.
pub struct OneHotChooser {
    groups: Arc<Groups>,
    leaves: Zeroizing<Vec<u8>>,
    copath: Zeroizing<Vec<u128>>,
    rows: usize,
}

impl OneHotSender {
    /// An empty store for up to `rows` rows (reserved: growing would leave copies of keys).
    pub fn new(groups: Arc<Groups>, rows: usize) -> Self {
        let n = rows * groups.len();
        Self { groups, roots: Zeroizing::new(Vec::with_capacity(n)), rows: 0 }
    }

    /// Rows set up so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes kept.
    pub fn kept_bytes(&self) -> usize {
        self.roots.len() * 16
    }

    /// Setup for `rows` further rows (the chooser runs [`OneHotChooser::extend`] on them).
    pub async fn extend<C: Channel>(&mut self, channel: &C, ext: &mut IknpSender, rows: usize) -> Result<(), MpcError> {
        let groups = self.groups.clone();
        let layout = Arc::new(groups.layout());
        let ots = sender_prepare_layout(channel, ext, rows, layout).await?;
        let g_n = groups.len();
        let mut roots = Zeroizing::new(vec![0u128; rows * g_n]);
        AesPrg::from_entropy().fill_blocks(0, &mut roots);
        let (g2, roots) = (groups.clone(), roots);
        let (roots, msg) = cpu::run(move || {
            let per = g2.per_row;
            let mut msg = vec![0u64; rows * per * 4];
            if per > 0 {
                msg.par_chunks_mut(per * 4 * KERNEL_ROWS)
                    .zip(roots.par_chunks(g_n * KERNEL_ROWS))
                    .enumerate()
                    .for_each(|(c, (m, r))| {
                        let n = r.len() / g_n;
                        let mut b = Bufs::new(n, g2.max_leaves());
                        for g in 0..g_n {
                            let (k, at) = (g2.leaves(g), g2.at[g] as usize);
                            let d = depth(k);
                            b.nodes.clear();
                            b.nodes.extend((0..n).map(|t| r[t * g_n + g]));
                            expand_many(&mut b, k, |t, l, z| {
                                let (mut left, mut right) = (0u128, 0u128);
                                for (v, &x) in z.iter().enumerate() {
                                    if v & 1 == 0 {
                                        left ^= x;
                                    } else {
                                        right ^= x;
                                    }
                                }
                                // Level l is bit d − l of the leaf, the OT of that bit.
                                let slot = at + (d - l) as usize;
                                let o = (c * KERNEL_ROWS + t) * per + slot;
                                let (a, b) = (left ^ ots.m0[o], right ^ ots.m1[o]);
                                let w = &mut m[(t * per + slot) * 4..(t * per + slot) * 4 + 4];
                                w.copy_from_slice(&[a as u64, (a >> 64) as u64, b as u64, (b >> 64) as u64]);
                            });
                        }
                    });
            }
            (roots, msg)
        })
        .await;
        send_u64s(channel, &msg).await?;
        self.roots.extend_from_slice(&roots);
        self.rows += rows;
        Ok(())
    }

    /// One use of rows `at..at + m` (each use id at most once per row).
    pub fn session(self: &Arc<Self>, use_id: u64, at: usize, m: usize) -> OneHotSenderSession {
        OneHotSenderSession::new(self.clone(), use_id, Rows::Range { at, m })
    }

    /// One use of the listed rows (absolute indices into the rows set up, strictly increasing;
    /// checked when the session is used). The tweak carries the absolute row index, so uses with
    /// distinct use ids never repeat a pad, whichever rows they list.
    pub fn session_rows(self: &Arc<Self>, use_id: u64, rows: Arc<[u32]>) -> OneHotSenderSession {
        OneHotSenderSession::new(self.clone(), use_id, Rows::List(rows))
    }
}

impl OneHotChooser {
    pub fn new(groups: Arc<Groups>, rows: usize) -> Self {
        let (n, p) = (rows * groups.len(), rows * groups.per_row);
        Self {
            groups,
            leaves: Zeroizing::new(Vec::with_capacity(n)),
            copath: Zeroizing::new(Vec::with_capacity(p)),
            rows: 0,
        }
    }

    /// Bytes kept.
    pub fn kept_bytes(&self) -> usize {
        self.leaves.len() + self.copath.len() * 16
    }

    /// Setup for the rows of `x` (one-hot per the groups; the sender runs
    /// [`OneHotSender::extend`] with as many rows).
    pub async fn extend<C: Channel>(
        &mut self,
        channel: &C,
        ext: &mut IknpReceiver,
        x: &Matrix,
    ) -> Result<(), MpcError> {
        let groups = self.groups.clone();
        let leaves = groups.leaves_of(x)?;
        let (rows, g_n, per) = (x.rows, groups.len(), groups.per_row);
        // Choice bits: the negated bits of each leaf (the side off the path), as a matrix whose
        // layout gives each group its depth's bits.
        let data: Vec<u64> = leaves
            .iter()
            .enumerate()
            .map(|(o, &b)| !(b as u64) & ((1u64 << depth(groups.leaves(o % g_n.max(1)))) - 1))
            .collect();
        let mut choice = Matrix::new(data, rows, g_n, 10);
        choice.layout = Arc::new(groups.layout());
        let ots = chooser_prepare(channel, ext, Arc::new(choice)).await?;
        let msg = recv_u64s(channel, rows * per * 4).await?;
        let (g2, lv) = (groups.clone(), leaves.clone());
        let copath = cpu::run(move || {
            let mut copath = Zeroizing::new(vec![0u128; rows * per]);
            if per > 0 {
                copath.par_chunks_mut(per * KERNEL_ROWS).zip(lv.par_chunks(g_n * KERNEL_ROWS)).enumerate().for_each(
                    |(c, (cp, lv))| {
                        let n = lv.len() / g_n;
                        let mut b = Bufs::new(n, g2.max_leaves());
                        for g in 0..g_n {
                            let (k, at) = (g2.leaves(g), g2.at[g] as usize);
                            let d = depth(k);
                            b.nodes.clear();
                            b.nodes.resize(n, 0);
                            expand_many(&mut b, k, |t, l, z| {
                                let p = lv[t * g_n + g] as usize >> (d - l);
                                let sib = p ^ 1;
                                z[p] = 0;
                                let slot = at + (d - l) as usize;
                                let o = (c * KERNEL_ROWS + t) * per + slot;
                                let w = &msg[o * 4..o * 4 + 4];
                                let side = sib & 1;
                                let sum = if side == 0 {
                                    w[0] as u128 | (w[1] as u128) << 64
                                } else {
                                    w[2] as u128 | (w[3] as u128) << 64
                                };
                                let mut s = sum ^ ots.msgs[o];
                                for v in (side..z.len()).step_by(2) {
                                    if v != sib {
                                        s ^= z[v];
                                    }
                                }
                                if sib < z.len() {
                                    z[sib] = s;
                                }
                                cp[t * per + at + l as usize - 1] = s;
                            });
                        }
                    },
                );
            }
            copath
        })
        .await;
        self.leaves.extend_from_slice(&leaves);
        self.copath.extend_from_slice(&copath);
        self.rows += rows;
        Ok(())
    }

    /// One use of rows `at..at + m` (each use id at most once per row).
    pub fn session(self: &Arc<Self>, use_id: u64, at: usize, m: usize) -> OneHotChooserSession {
        OneHotChooserSession::new(self.clone(), use_id, Rows::Range { at, m })
    }

    /// One use of the listed rows, as [`OneHotSender::session_rows`].
    pub fn session_rows(self: &Arc<Self>, use_id: u64, rows: Arc<[u32]>) -> OneHotChooserSession {
        OneHotChooserSession::new(self.clone(), use_id, Rows::List(rows))
    }
}

fn take(used: &[AtomicBool; 2], backward: bool) -> Result<(), MpcError> {
    if used[backward as usize].swap(true, Ordering::SeqCst) {
        return Err(violation("one-hot correlations used twice"));
    }
    Ok(())
}

/// The rows of one use: a range, or a list of absolute row indices.
#[derive(Clone)]
enum Rows {
    Range { at: usize, m: usize },
    List(Arc<[u32]>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Range { m, .. } => *m,
            Rows::List(l) => l.len(),
        }
    }

    /// The absolute index of the use's r-th row.
    #[inline]
    fn abs(&self, r: usize) -> usize {
        match self {
            Rows::Range { at, .. } => at + r,
            Rows::List(l) => l[r] as usize,
        }
    }

    /// Errors unless every row is below `kept` (and a list strictly increasing).
    fn check(&self, kept: usize) -> Result<(), MpcError> {
        match self {
            Rows::Range { at, m } => {
                if at.checked_add(*m).is_none_or(|e| e > kept) {
                    return Err(MpcError::Invalid(format!("rows {at}..{} of {kept} kept", at.saturating_add(*m))));
                }
            }
            Rows::List(l) => {
                if l.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(MpcError::Invalid("a row list that is not strictly increasing".into()));
                }
                if let Some(&last) = l.last()
                    && last as usize >= kept
                {
                    return Err(MpcError::Invalid(format!("row {last} of {kept} kept")));
                }
            }
        }
        Ok(())
    }
}

fn scaled(mut v: Vec<u64>, scale: u64) -> Vec<u64> {
    v.iter_mut().for_each(|x| *x = x.wrapping_mul(scale));
    v
}

/// A paired backward's sender output: the message and the shares of Xᵀ·y0 and Xᵀ·y1.
pub type PairOut = (Vec<u64>, Vec<u64>, Vec<u64>);

/// The sender's side of one use (a batch of rows in one epoch).
pub struct OneHotSenderSession {
    store: Arc<OneHotSender>,
    use_id: u64,
    rows: Rows,
    used: [AtomicBool; 2],
    forward_only: bool,
    prep: Mutex<Option<Prep>>,
    /// The forward's message without y and the sender's shares ([`Self::precompute`]).
    pre: Mutex<Option<(Vec<u64>, Vec<u64>)>>,
}

/// The chooser's side of one use.
pub struct OneHotChooserSession {
    store: Arc<OneHotChooser>,
    use_id: u64,
    rows: Rows,
    used: [AtomicBool; 2],
    forward_only: bool,
    prep: Mutex<Option<Prep>>,
    /// The forward's shares without the message's words ([`Self::precompute`]).
    pre: Mutex<Option<Vec<u64>>>,
}

fn add_into(acc: &mut [u64], v: &[u64]) {
    for (a, &b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(b);
    }
}

/// Adds the chunks' column sums.
fn add_acc(a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    if a.is_empty() {
        b
    } else if b.is_empty() {
        a
    } else {
        super::add_vecs(a, b)
    }
}

impl OneHotSenderSession {
    fn new(store: Arc<OneHotSender>, use_id: u64, rows: Rows) -> Self {
        Self {
            store,
            use_id,
            rows,
            used: Default::default(),
            forward_only: false,
            prep: Mutex::new(None),
            pre: Mutex::new(None),
        }
    }

    /// A session whose backward product will not be asked for (a holdout's): the forward then
    /// skips the backward pads it would otherwise make from the same expansion.
    pub fn forward_only(mut self) -> Self {
        self.forward_only = true;
        self
    }

    /// The batched kernel over the use's rows: the forward message and shares when `y` is given,
    /// the backward pads ([`Prep`]) when `bwd`, from one expansion of each tree.
    fn kernel(&self, y: Option<&[u64]>, bwd: bool) -> (Vec<u64>, Vec<u64>, Option<Prep>) {
        let gs = &*self.store.groups;
        let (g_n, cols, m) = (gs.len(), gs.total, self.rows.len());
        let fw = y.is_some();
        let mut msg = vec![0u64; if fw { m * cols } else { 0 }];
        let mut out = vec![0u64; if fw { m } else { 0 }];
        let mut sums = vec![0u64; if bwd { m * g_n * 2 } else { 0 }];
        let acc = if g_n == 0 {
            Vec::new()
        } else {
            parts(m, &mut msg, cols, &mut out, &mut sums, 2 * g_n)
                .into_par_iter()
                .map(|p| self.part(p, y, bwd))
                .reduce(Vec::new, add_acc)
        };
        let acc = if acc.is_empty() { vec![0; 2 * cols] } else { acc };
        (msg, out, bwd.then_some(Prep { sums, acc }))
    }

    /// One task of [`Self::kernel`]: its rows' trees, group by group.
    fn part(&self, p: Part, y: Option<&[u64]>, bwd: bool) -> Vec<u64> {
        let st = &*self.store;
        let gs = &*st.groups;
        let (g_n, cols) = (gs.len(), gs.total);
        let mut acc = vec![0u64; if bwd { 2 * cols } else { 0 }];
        let mut b = Bufs::new(p.n, gs.max_leaves());
        let abs: Vec<usize> = (p.r0..p.r0 + p.n).map(|r| self.rows.abs(r)).collect();
        let (mut msg, mut out, mut sums) = (p.msg, p.out, p.sums);
        for g in 0..g_n {
            let (k, f) = (gs.leaves(g), gs.first[g] as usize);
            b.nodes.clear();
            b.nodes.extend(abs.iter().map(|&i| st.roots[i * g_n + g]));
            expand_many(&mut b, k, |_, _, _| {});
            if let (Some(y), Some(msg), Some(out)) = (y, msg.as_deref_mut(), out.as_deref_mut()) {
                // P_j = H(t_F + j, S ⊕ K_j); u_j = T[j] + P_j − P_0.
                b.h.clear();
                b.h.extend_from_slice(&b.nodes);
                for t in b.h.chunks_mut(k) {
                    let s = t.iter().fold(0u128, |a, &x| a ^ x);
                    t.iter_mut().for_each(|x| *x ^= s);
                }
                b.base.clear();
                b.base.extend(abs.iter().map(|&i| tweak(self.use_id, T_FORWARD, i, g, 0)));
                tccr_trees(&mut b.h, k, &b.base, &mut b.y);
                for (t, pads) in b.h.chunks(k).enumerate() {
                    let p0 = pads[0] as u64;
                    let row = &mut msg[t * cols + f..t * cols + f + k - 1];
                    for (j, w) in row.iter_mut().enumerate() {
                        *w = y[f + j].wrapping_add(pads[j + 1] as u64).wrapping_sub(p0);
                    }
                    out[t] = out[t].wrapping_add(p0);
                }
            }
            if let Some(sums) = sums.as_deref_mut() {
                // Q_j = H(t_B + j, K_j): the low half pads the first backward vector, the high
                // half the second.
                b.base.clear();
                b.base.extend(abs.iter().map(|&i| tweak(self.use_id, T_BACKWARD, i, g, 0)));
                em_trees(&mut b.nodes, k, &b.base, &mut b.y);
                fold_pads(&b.nodes, k, None, &mut acc, (f, cols), &mut sums[..], (g, g_n));
            }
        }
        acc
    }

    /// Forward: the message (k − 1 words per (row, group): one per column) and the sender's share
    /// of X·y (one per row), for y of one entry per column. Makes the backward's pads from the
    /// same expansion (unless [`Self::forward_only`]).
    pub fn forward(&self, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        let gs = &self.store.groups;
        if y.len() != gs.total {
            return Err(MpcError::Invalid(format!("forward vector of {} entries for {} columns", y.len(), gs.total)));
        }
        self.rows.check(self.store.rows())?;
        take(&self.used, false)?;
        if let Some((mut msg, out)) = self.pre.lock().expect("not poisoned").take() {
            // u_j = T[j] + (P_j − P_0): only y is left to add.
            msg.par_chunks_mut(gs.total.max(1)).for_each(|row| add_into(row, y));
            return Ok((msg, scaled(out, gs.scale)));
        }
        let bwd = !self.forward_only && !self.used[1].load(Ordering::SeqCst);
        let (msg, out, prep) = self.kernel(Some(y), bwd);
        *self.prep.lock().expect("not poisoned") = prep;
        Ok((msg, scaled(out, gs.scale)))
    }

    /// Does the forward's expansion and hashing now, before y is known (the LR runs it for the
    /// next batch while this batch's messages are exchanged, so that the two parties expand at
    /// the same time): [`Self::forward`] then only adds y to the message, the same message and
    /// shares as without it. The backward's pads are made too (unless [`Self::forward_only`]).
    /// Errors after the forward.
    pub fn precompute(&self) -> Result<(), MpcError> {
        let gs = &self.store.groups;
        self.rows.check(self.store.rows())?;
        if self.used[0].load(Ordering::SeqCst) {
            return Err(violation("one-hot correlations used twice"));
        }
        let bwd = !self.forward_only && !self.used[1].load(Ordering::SeqCst);
        let (msg, out, prep) = self.kernel(Some(&vec![0; gs.total]), bwd);
        *self.prep.lock().expect("not poisoned") = prep;
        *self.pre.lock().expect("not poisoned") = Some((msg, out));
        Ok(())
    }

    /// Backward: the message (one word per (row, group)) and the sender's share of Xᵀ·y (one per
    /// column), for y of one entry per row.
    pub fn backward(&self, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        let (msg, mut outs) = self.backward_of(&[y])?;
        Ok((msg, outs.swap_remove(0)))
    }

    /// Backward for two vectors at once (e.g. gradients and hessians) from one expansion: the
    /// message (two words per (row, group): y0's then y1's correction) and the sender's shares of
    /// Xᵀ·y0 and Xᵀ·y1. Uses the low and the high half of each pad; one backward per session.
    pub fn backward_pair(&self, y0: &[u64], y1: &[u64]) -> Result<PairOut, MpcError> {
        let (msg, mut outs) = self.backward_of(&[y0, y1])?;
        let o1 = outs.pop().expect("two outputs");
        Ok((msg, outs.pop().expect("two outputs"), o1))
    }

    fn backward_of(&self, ys: &[&[u64]]) -> Result<(Vec<u64>, Vec<Vec<u64>>), MpcError> {
        let gs = &self.store.groups;
        let (g_n, cols, m, w) = (gs.len(), gs.total, self.rows.len(), ys.len());
        if let Some(y) = ys.iter().find(|y| y.len() != m) {
            return Err(MpcError::Invalid(format!("backward vector of {} entries for {m} rows", y.len())));
        }
        self.rows.check(self.store.rows())?;
        take(&self.used, true)?;
        let prep = self.prep.lock().expect("not poisoned").take();
        let prep = match prep {
            Some(p) => p,
            None => self.kernel(None, true).2.expect("backward pads"),
        };
        // c = y_i − Σ_j Q_j per (row, group) and vector.
        let mut msg = vec![0u64; m * g_n * w];
        if g_n > 0 {
            msg.par_chunks_mut(g_n * w).zip(prep.sums.par_chunks(2 * g_n)).enumerate().for_each(|(r, (msg, sums))| {
                for (g, c) in msg.chunks_mut(w).enumerate() {
                    for (v, c) in c.iter_mut().enumerate() {
                        *c = ys[v][r].wrapping_sub(sums[2 * g + v]);
                    }
                }
            });
        }
        let outs = (0..w).map(|v| scaled(prep.acc[v * cols..(v + 1) * cols].to_vec(), gs.scale)).collect();
        Ok((msg, outs))
    }
}

impl OneHotChooserSession {
    fn new(store: Arc<OneHotChooser>, use_id: u64, rows: Rows) -> Self {
        Self {
            store,
            use_id,
            rows,
            used: Default::default(),
            forward_only: false,
            prep: Mutex::new(None),
            pre: Mutex::new(None),
        }
    }

    /// As [`OneHotSenderSession::forward_only`].
    pub fn forward_only(mut self) -> Self {
        self.forward_only = true;
        self
    }

    /// Words of the sender's forward message.
    pub fn forward_len(&self) -> usize {
        self.rows.len() * self.store.groups.total
    }

    /// Words of the sender's backward message.
    pub fn backward_len(&self) -> usize {
        self.rows.len() * self.store.groups.len()
    }

    /// Words of the sender's [`OneHotSenderSession::backward_pair`] message.
    pub fn backward_pair_len(&self) -> usize {
        2 * self.backward_len()
    }

    /// The batched kernel over the use's rows: the forward shares given the sender's message, the
    /// backward pads when `bwd`, from one punctured expansion of each tree.
    fn kernel(&self, msg: Option<&[u64]>, bwd: bool) -> (Vec<u64>, Option<Prep>) {
        let gs = &*self.store.groups;
        let (g_n, cols, m) = (gs.len(), gs.total, self.rows.len());
        let mut out = vec![0u64; if msg.is_some() { m } else { 0 }];
        let mut sums = vec![0u64; if bwd { m * g_n * 2 } else { 0 }];
        let acc = if g_n == 0 {
            Vec::new()
        } else {
            parts(m, &mut [], 0, &mut out, &mut sums, 2 * g_n)
                .into_par_iter()
                .map(|p| self.part(p, msg, bwd))
                .reduce(Vec::new, add_acc)
        };
        let acc = if acc.is_empty() { vec![0; 2 * cols] } else { acc };
        (out, bwd.then_some(Prep { sums, acc }))
    }

    /// One task of [`Self::kernel`].
    fn part(&self, p: Part, msg: Option<&[u64]>, bwd: bool) -> Vec<u64> {
        let st = &*self.store;
        let gs = &*st.groups;
        let (g_n, cols, per) = (gs.len(), gs.total, gs.per_row);
        let mut acc = vec![0u64; if bwd { 2 * cols } else { 0 }];
        let mut b = Bufs::new(p.n, gs.max_leaves());
        let abs: Vec<usize> = (p.r0..p.r0 + p.n).map(|r| self.rows.abs(r)).collect();
        let (mut out, mut sums) = (p.out, p.sums);
        let mut leaf = vec![0usize; p.n];
        for g in 0..g_n {
            let (k, f, at) = (gs.leaves(g), gs.first[g] as usize, gs.at[g] as usize);
            let d = depth(k);
            for (l, &i) in leaf.iter_mut().zip(&abs) {
                *l = st.leaves[i * g_n + g] as usize;
            }
            b.nodes.clear();
            b.nodes.resize(p.n, 0);
            expand_many(&mut b, k, |t, l, z| {
                let q = leaf[t] >> (d - l);
                z[q] = 0;
                if (q ^ 1) < z.len() {
                    z[q ^ 1] = st.copath[abs[t] * per + at + l as usize - 1];
                }
            });
            if let (Some(msg), Some(out)) = (msg, out.as_deref_mut()) {
                // S ⊕ K_b = ⊕ of the leaves but b (b's is 0 here); P_b = H(t_F + b, S ⊕ K_b).
                b.h.clear();
                b.h.extend(b.nodes.chunks(k).map(|t| t.iter().fold(0u128, |a, &x| a ^ x)));
                b.base.clear();
                b.base.extend(abs.iter().zip(&leaf).map(|(&i, &l)| tweak(self.use_id, T_FORWARD, i, g, l)));
                tccr_trees(&mut b.h, 1, &b.base, &mut b.y);
                for (t, (o, &pb)) in out.iter_mut().zip(b.h.iter()).enumerate() {
                    // An empty message: the precomputation (the message's words come later).
                    let u = if leaf[t] == 0 || msg.is_empty() { 0 } else { msg[(p.r0 + t) * cols + f + leaf[t] - 1] };
                    *o = o.wrapping_add(u).wrapping_sub(pb as u64);
                }
            }
            if let Some(sums) = sums.as_deref_mut() {
                b.base.clear();
                b.base.extend(abs.iter().map(|&i| tweak(self.use_id, T_BACKWARD, i, g, 0)));
                em_trees(&mut b.nodes, k, &b.base, &mut b.y);
                fold_pads(&b.nodes, k, Some(&leaf), &mut acc, (f, cols), &mut sums[..], (g, g_n));
            }
        }
        acc
    }

    /// Forward: the chooser's share of X·y (one per row) given the sender's message. Makes the
    /// backward's pads from the same expansion (unless [`Self::forward_only`]).
    pub fn forward(&self, msg: &[u64]) -> Result<Vec<u64>, MpcError> {
        let gs = &self.store.groups;
        if msg.len() != self.forward_len() {
            return Err(violation(format!("{} forward words for {}", msg.len(), self.forward_len())));
        }
        self.rows.check(self.store.rows)?;
        take(&self.used, false)?;
        if let Some(mut out) = self.pre.lock().expect("not poisoned").take() {
            // Add u_b of each (row, group) with b ≠ 0 to the precomputed −Σ P_b.
            let (st, g_n, cols) = (&*self.store, gs.len(), gs.total);
            out.par_iter_mut().enumerate().for_each(|(r, o)| {
                let i = self.rows.abs(r);
                for g in 0..g_n {
                    let b = st.leaves[i * g_n + g] as usize;
                    if b != 0 {
                        *o = o.wrapping_add(msg[r * cols + gs.first[g] as usize + b - 1]);
                    }
                }
            });
            return Ok(scaled(out, gs.scale));
        }
        let bwd = !self.forward_only && !self.used[1].load(Ordering::SeqCst);
        let (out, prep) = self.kernel(Some(msg), bwd);
        *self.prep.lock().expect("not poisoned") = prep;
        Ok(scaled(out, gs.scale))
    }

    /// As [`OneHotSenderSession::precompute`]: the punctured expansion and the hashes now, before
    /// the sender's message; [`Self::forward`] then adds the message's word of each (row, group).
    pub fn precompute(&self) -> Result<(), MpcError> {
        self.rows.check(self.store.rows)?;
        if self.used[0].load(Ordering::SeqCst) {
            return Err(violation("one-hot correlations used twice"));
        }
        let bwd = !self.forward_only && !self.used[1].load(Ordering::SeqCst);
        let (out, prep) = self.kernel(Some(&[]), bwd);
        *self.prep.lock().expect("not poisoned") = prep;
        *self.pre.lock().expect("not poisoned") = Some(out);
        Ok(())
    }

    /// Backward: the chooser's share of Xᵀ·y (one per column) given the sender's message.
    pub fn backward(&self, msg: &[u64]) -> Result<Vec<u64>, MpcError> {
        let mut outs = self.backward_of(msg, 1)?;
        Ok(outs.swap_remove(0))
    }

    /// The chooser's shares of Xᵀ·y0 and Xᵀ·y1 given the sender's
    /// [`OneHotSenderSession::backward_pair`] message.
    pub fn backward_pair(&self, msg: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        let mut outs = self.backward_of(msg, 2)?;
        let o1 = outs.pop().expect("two outputs");
        Ok((outs.pop().expect("two outputs"), o1))
    }

    fn backward_of(&self, msg: &[u64], w: usize) -> Result<Vec<Vec<u64>>, MpcError> {
        let st = &*self.store;
        let gs = &*st.groups;
        let (g_n, cols) = (gs.len(), gs.total);
        if msg.len() != w * self.backward_len() {
            return Err(violation(format!("{} backward words for {}", msg.len(), w * self.backward_len())));
        }
        self.rows.check(st.rows)?;
        take(&self.used, true)?;
        let prep = self.prep.lock().expect("not poisoned").take();
        let prep = match prep {
            Some(p) => p,
            None => self.kernel(None, true).1.expect("backward pads"),
        };
        // Column b of each (row, group) with b ≠ 0 gets c + Σ_{j≠b} Q_j = y_i − Q_b.
        const ROWS: usize = 4096;
        let mut acc = if g_n == 0 {
            vec![0u64; 2 * cols]
        } else {
            msg.par_chunks(ROWS * g_n * w)
                .zip(prep.sums.par_chunks(ROWS * g_n * 2))
                .enumerate()
                .map(|(c, (msg, sums))| {
                    let mut acc = vec![0u64; 2 * cols];
                    for (r, (msg, sums)) in msg.chunks(g_n * w).zip(sums.chunks(g_n * 2)).enumerate() {
                        let i = self.rows.abs(c * ROWS + r);
                        for g in 0..g_n {
                            let b = st.leaves[i * g_n + g] as usize;
                            if b == 0 {
                                continue;
                            }
                            let col = gs.first[g] as usize + b - 1;
                            for v in 0..w {
                                let add = msg[g * w + v].wrapping_add(sums[2 * g + v]);
                                acc[v * cols + col] = acc[v * cols + col].wrapping_add(add);
                            }
                        }
                    }
                    acc
                })
                .reduce(|| vec![0u64; 2 * cols], super::add_vecs)
        };
        acc = super::add_vecs(acc, prep.acc);
        Ok((0..w).map(|v| scaled(acc[v * cols..(v + 1) * cols].to_vec(), gs.scale)).collect())
    }
}

#[cfg(test)]
mod tests;
