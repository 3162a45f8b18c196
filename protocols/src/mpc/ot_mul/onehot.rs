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
//! *Kept expansion* ([`OneHotSender::keep_during_setup`], the LR's; [`OneHotSender::keep_leaves`],
//! SecureBoost's): a party may keep the leaves of its trees (the chooser's own leaf as 0), as the
//! setup expands them or by a second expansion after it, for as many groups as a local memory
//! budget allows (k · 16 bytes per (row, group)); a use of such a group gathers them (with
//! prefetches: it is bound by memory, not by AES) and hashes its pads in one pass. The leaves are
//! the ones a use would expand, so the messages are the same.
//!
//! *Buffers*: a store keeps a few spare buffers ([`OneHotSender::recycle`],
//! [`OneHotChooser::buffer`]) that its uses take their pad sums and messages from, and that the
//! callers hand their sent and received messages back to, so a use does not fault in fresh pages
//! for buffers as large as the last one's (SecureBoost's root: ~90 MB each). Local only.
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
use zeroize::{Zeroize, Zeroizing};

use super::{ColBits, Layout, Matrix, chooser_prepare, sender_prepare_layout};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::wire::{recv_u64s_into, send_u64s};
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

/// Rows per rayon task of [`Groups::leaves_mul_t_vec`] (each task sums into its own column vector).
const SUM_ROWS: usize = 512;

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

    /// Errors unless `leaves` are `rows` rows of leaves of these groups (one byte per (row,
    /// group), each at most its group's column count), as [`Self::leaves_of`] makes them, and the
    /// scale is a `bits`-bit entry.
    pub fn check_leaves(&self, leaves: &[u8], rows: usize, bits: u32) -> Result<(), MpcError> {
        let g_n = self.cols.len();
        if !(1..=64).contains(&bits) || !ColBits::full(bits).holds(self.scale) {
            return Err(MpcError::Invalid(format!("a one-hot scale that is not a {bits}-bit entry")));
        }
        if Some(leaves.len()) != rows.checked_mul(g_n) {
            return Err(MpcError::Invalid(format!("{} one-hot leaves for {rows} rows of {g_n} groups", leaves.len())));
        }
        if g_n > 0 && leaves.par_chunks(g_n).any(|row| row.iter().zip(&self.cols).any(|(&l, &c)| l > c)) {
            return Err(MpcError::Invalid("a one-hot leaf beyond its group's columns".into()));
        }
        Ok(())
    }

    /// The bit [`Layout`] of the matrix whose leaves are `leaves` (checked: [`Self::check_leaves`]),
    /// entries `bits` wide: as [`Matrix::new`] gives it (every column all `bits` bits), or when
    /// `narrow` as [`Matrix::tightened`] does (a column some row sets has the bits of `scale`;
    /// one that no row sets has none).
    pub fn layout_of_leaves(&self, leaves: &[u8], rows: usize, bits: u32, narrow: bool) -> Layout {
        if !narrow {
            return Layout::full(self.total, bits);
        }
        let g_n = self.cols.len();
        let mut set = vec![false; self.total];
        if g_n > 0 {
            for row in leaves.chunks(g_n).take(rows) {
                for (g, &l) in row.iter().enumerate() {
                    if l > 0 {
                        set[self.first[g] as usize + l as usize - 1] = true;
                    }
                }
            }
        }
        let one = ColBits::of(std::iter::once(self.scale));
        let none = ColBits::of(std::iter::empty());
        Layout::new(set.into_iter().map(|s| if s { one } else { none }).collect())
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

    /// The leaves of the rows `rows` of `leaves` (one byte per (row, group)), in that order.
    ///
    /// # Panics
    ///
    /// If a row is out of range of `leaves`.
    pub fn leaves_of_rows(&self, leaves: &[u8], rows: &[u32]) -> Zeroizing<Vec<u8>> {
        let g_n = self.cols.len();
        let mut out = Zeroizing::new(Vec::with_capacity(rows.len() * g_n));
        for &i in rows {
            out.extend_from_slice(&leaves[i as usize * g_n..(i as usize + 1) * g_n]);
        }
        out
    }

    /// Local X·v (mod 2^64) of the one-hot rows whose leaves are `leaves` (one byte per (row,
    /// group)): per row Σ over its set groups of scale·v[column]; what
    /// [`Self::matrix_of`]`(..).mul_vec(v)` gives, without the matrix (8 bytes per column).
    ///
    /// # Panics
    ///
    /// If `v` is not one entry per column, or `leaves` not whole rows.
    pub fn leaves_mul_vec(&self, leaves: &[u8], v: &[u64]) -> Vec<u64> {
        assert_eq!(v.len(), self.total, "one entry per column");
        let g_n = self.cols.len();
        if g_n == 0 {
            return Vec::new();
        }
        assert_eq!(leaves.len() % g_n, 0, "whole rows of leaves");
        leaves
            .par_chunks(g_n)
            .map(|row| {
                let mut s = 0u64;
                for (&b, &f) in row.iter().zip(&self.first) {
                    if b != 0 {
                        s = s.wrapping_add(v[f as usize + b as usize - 1]);
                    }
                }
                s.wrapping_mul(self.scale)
            })
            .collect()
    }

    /// Local Xᵀ·v (mod 2^64) of the one-hot rows whose leaves are `leaves`: per column the sum
    /// of scale·v[row] over the rows that set it; what [`Self::matrix_of`]`(..).mul_t_vec(v)`
    /// gives, without the matrix.
    ///
    /// # Panics
    ///
    /// If `leaves` is not one row of leaves per entry of `v`.
    pub fn leaves_mul_t_vec(&self, leaves: &[u8], v: &[u64]) -> Vec<u64> {
        let (g_n, cols) = (self.cols.len(), self.total);
        assert_eq!(leaves.len(), v.len() * g_n, "one row of leaves per entry");
        if cols == 0 {
            return Vec::new();
        }
        let add = |mut a: Vec<u64>, b: Vec<u64>| {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.wrapping_add(y);
            }
            a
        };
        let mut out = leaves
            .par_chunks(g_n * SUM_ROWS)
            .zip(v.par_chunks(SUM_ROWS))
            .map(|(block, vs)| {
                let mut acc = vec![0u64; cols];
                for (row, &vi) in block.chunks(g_n).zip(vs) {
                    for (&b, &f) in row.iter().zip(&self.first) {
                        if b != 0 {
                            let a = &mut acc[f as usize + b as usize - 1];
                            *a = a.wrapping_add(vi);
                        }
                    }
                }
                acc
            })
            .reduce(|| vec![0u64; cols], add);
        for a in &mut out {
            *a = a.wrapping_mul(self.scale);
        }
        out
    }

    /// The setup's OT layout: per group its depth's bits (unsigned, from bit 0).
    fn layout(&self) -> Layout {
        Layout::new(
            self.cols.iter().map(|&c| ColBits { lo: 0, hi: depth(c as usize + 1) as u8, signed: false }).collect(),
        )
    }
}

/// Index of the low 64-bit half of a u128 seen as two u64 words.
const LO: usize = if cfg!(target_endian = "little") { 0 } else { 1 };

/// `xs` as its u64 words (two per block, the low half at [`LO`]).
#[inline]
fn words(xs: &[u128]) -> &[u64] {
    // SAFETY: u128 is two u64 words in memory (alignment 16 ≥ 8, no padding, every bit pattern
    // valid); the view covers exactly `xs`'s memory, borrowed shared.
    unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<u64>(), xs.len() * 2) }
}

/// One group's backward pads Q_j (j < k) of each tree in `pads` (k per tree): per tree their sum
/// (low and high 64-bit halves) into `sums`, and each column's pad (leaves 1..k; column
/// f + j − 1) into `acc`, whose column c holds its two halves at words 2c and 2c + 1 in the
/// order of [`words`]. The sender (`skip` = None) adds them; the chooser subtracts them and leaves
/// out the leaf it cannot open (`skip[t]`). Branch-free over the leaves, so the loops vectorize.
#[inline]
fn fold_pads(
    pads: &[u128],
    k: usize,
    skip: Option<&[usize]>,
    acc: &mut [u64],
    f: usize,
    sums: &mut [u64],
    (g, g_n): (usize, usize),
) {
    let acc = &mut acc[2 * f..2 * (f + k - 1)];
    for (t, q) in pads.chunks_exact(k).enumerate() {
        let w = words(q);
        let mut s = [0u64; 2];
        for p in w.chunks_exact(2) {
            s[0] = s[0].wrapping_add(p[0]);
            s[1] = s[1].wrapping_add(p[1]);
        }
        match skip {
            None => {
                for (a, &p) in acc.iter_mut().zip(&w[2..]) {
                    *a = a.wrapping_add(p);
                }
            }
            Some(skip) => {
                for (a, &p) in acc.iter_mut().zip(&w[2..]) {
                    *a = a.wrapping_sub(p);
                }
                // Put back the own leaf's pad (the chooser has no key for it: its slot is noise).
                let own = skip[t];
                let (o0, o1) = (w[2 * own], w[2 * own + 1]);
                s[0] = s[0].wrapping_sub(o0);
                s[1] = s[1].wrapping_sub(o1);
                if own > 0 {
                    let a = &mut acc[2 * (own - 1)..2 * own];
                    a[0] = a[0].wrapping_add(o0);
                    a[1] = a[1].wrapping_add(o1);
                }
            }
        }
        sums[(t * g_n + g) * 2] = s[LO];
        sums[(t * g_n + g) * 2 + 1] = s[1 - LO];
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

/// Work buffers of the batched kernel, made once per rayon job of a kernel call with room for the
/// widest group (never grown, so no stray copies of keys are left behind), zeroized on drop.
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
fn expand_many(b: &mut Bufs, k: usize, hook: impl FnMut(usize, u32, &mut [u128])) {
    expand_levels(b, k, 0, depth(k), hook)
}

/// [`expand_many`] from level `from` (its nodes in `b.nodes`, [`level_len`] per tree) down to
/// level `to`, with the hook seeing levels from + 1..=to.
fn expand_levels(b: &mut Bufs, k: usize, from: u32, to: u32, mut hook: impl FnMut(usize, u32, &mut [u128])) {
    let aes = FixedKeyAes::fixed();
    let d = depth(k);
    let t = b.nodes.len() / level_len(k, d, from);
    for l in from + 1..=to {
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

/// Rows [`gather`] asks the memory for ahead of the row it copies.
const PREFETCH_ROWS: usize = 8;

/// Asks for every cache line of `xs` (a hint: no effect on results).
#[inline]
fn prefetch<T>(xs: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = xs.as_ptr().cast::<i8>();
        for off in (0..std::mem::size_of_val(xs)).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults nor changes memory; the address lies
            // inside `xs` (off < its size).
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = xs;
}

/// The setup's prefetch of the next group's OT slots, `at..at + len` of each of the `n` rows of a
/// kernel task (`per` slots a row, the task's first row `row0`) in `ots`, and of `words` items a
/// slot in `msg` (task-local rows: the message or the co-path keys). The slots of a group are
/// 19 KB apart from row to row at 300 groups of 10 bins, so every row's first touch of a group
/// missed the caches and the setup's kernel waited on those loads (~45% of its samples): no
/// hardware prefetcher follows that stride.
#[allow(clippy::too_many_arguments)]
fn prefetch_slots<M>(
    ots: [&[u128]; 2],
    msg: &[M],
    words: usize,
    row0: usize,
    n: usize,
    per: usize,
    at: usize,
    len: usize,
) {
    for t in 0..n {
        let o = (row0 + t) * per + at;
        for m in ots {
            if !m.is_empty() {
                prefetch(&m[o..o + len]);
            }
        }
        prefetch(&msg[(t * per + at) * words..(t * per + at + len) * words]);
    }
}

/// [`em_trees`] of kept leaves: `xs[t·k + j] ← E(lv[abs[t]·k + j], base[t] + j)`, gathering
/// each row's leaves and applying its tweak in one pass (a separate copy costs a further ~15% of
/// a SecureBoost tree: the kernel is bound by memory here).
fn em_kept(lv: &[u128], abs: &[usize], k: usize, base: &[u128], xs: &mut Vec<u128>, y: &mut Vec<u128>) {
    let aes = FixedKeyAes::fixed();
    xs.clear();
    for (t, (&i, &b)) in abs.iter().zip(base).enumerate() {
        if let Some(&ahead) = abs.get(t + PREFETCH_ROWS) {
            prefetch(&lv[ahead * k..(ahead + 1) * k]);
        }
        xs.extend(lv[i * k..(i + 1) * k].iter().enumerate().map(|(j, &x)| x ^ (b + j as u128)));
    }
    y.resize(xs.len(), 0);
    aes.permute_to(xs, y);
    for (x, y) in xs.iter_mut().zip(y.iter()) {
        *x ^= y;
    }
}

/// Appends the kept nodes of rows `abs` (`h` per row) to `xs`.
fn gather(lv: &[u128], abs: &[usize], h: usize, xs: &mut Vec<u128>) {
    for (t, &i) in abs.iter().enumerate() {
        // A node's rows are scattered: fetch a few rows ahead, or every row waits on memory.
        if let Some(&ahead) = abs.get(t + PREFETCH_ROWS) {
            prefetch(&lv[ahead * h..(ahead + 1) * h]);
        }
        xs.extend_from_slice(&lv[i * h..(i + 1) * h]);
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
    /// Per column c, the two halves at words 2c and 2c + 1 in [`words`]' order (low at [`LO`]):
    /// the sender's Σ_rows Q_j, the chooser's −Σ_rows Q_j over the rows whose leaf is not j.
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

/// The level of the trees [`OneHotSender::keep_during_setup`] keeps: the leaves (k per (row, group)).
/// A use then only gathers them (bound by memory: 528 bytes per (row, group) at k = 33, read
/// with prefetches) and hashes its pads. Keeping the level above (⌈k/2⌉ nodes, half the memory)
/// and expanding the last level per use was measured slower: SecureBoost at 2.85·10^5 rows ×
/// 20 B features, 33 bins, 3.09 s per tree against 2.11 s with the leaves (3.73 s expanding
/// every tree per use), the last level's scalar work and the chooser's co-path reads costing more
/// than the bytes saved.
fn kept_level(k: usize) -> u32 {
    depth(k)
}

/// Zeroed (untouched) stores for the kept level of the first groups whose trees fit in `budget`
/// bytes at `rows` rows, on transparent huge pages with `huge`.
///
/// Huge pages suit uses that read scattered rows (SecureBoost's nodes: one TLB miss per (row,
/// group) with 4 KiB pages), but their first touch can cost more: on the Firecracker VM of the
/// benchmarks (a virtio balloon; freed memory goes back to the host), touching 2 GiB took
/// 6.4–7.8 s on huge pages against 0.85–0.95 s on 4 KiB pages, and 8 GiB 26.1 s against
/// 12.1 s. A use of contiguous row ranges (the LR's batches: 160 KB a group a batch) gains
/// nothing from them. Without `huge` the store is on 4 KiB pages only if the allocator does not
/// advise huge pages on its own memory: mimalloc does unless built with `no_thp`, as the node
/// is (until stop 37 the LR's stores were on huge pages after all).
fn plan_groups(gs: &Groups, rows: usize, budget: usize, huge: bool) -> Vec<Zeroizing<Vec<u128>>> {
    let mut kept = Vec::new();
    let mut left = budget;
    for g in 0..gs.len() {
        let k = gs.leaves(g);
        let h = level_len(k, depth(k), kept_level(k));
        let bytes = rows * h * 16;
        if bytes > left || rows == 0 {
            break;
        }
        left -= bytes;
        kept.push(Zeroizing::new(if huge { crate::mem::zeroed_blocks(rows * h) } else { vec![0u128; rows * h] }));
    }
    kept
}

/// The kept level of the first groups whose trees fit in `budget` bytes ([`kept_level`]), each
/// group's rows expanded in tasks of [`KERNEL_ROWS`] by `expand(g, first row, bufs)` (which
/// leaves the task's nodes of that level in `bufs.nodes`), on huge pages.
fn keep_groups(
    gs: &Groups,
    rows: usize,
    budget: usize,
    expand: impl Fn(usize, usize, &mut Bufs) + Sync,
) -> Vec<Zeroizing<Vec<u128>>> {
    let mut kept = plan_groups(gs, rows, budget, true);
    for (g, lv) in kept.iter_mut().enumerate() {
        let k = gs.leaves(g);
        let h = level_len(k, depth(k), kept_level(k));
        lv.par_chunks_mut(KERNEL_ROWS * h).enumerate().for_each(|(c, out)| {
            let mut b = Bufs::new(KERNEL_ROWS, k);
            expand(g, c * KERNEL_ROWS, &mut b);
            out.copy_from_slice(&b.nodes);
        });
    }
    kept
}

/// Splits the rows `at..at + rows` of each kept group's store (the leaves, k blocks a row) into
/// the setup kernel's tasks of [`KERNEL_ROWS`] rows: per task, one slice per kept group.
fn kept_tasks<'a>(
    gs: &Groups,
    kept: &'a mut [Zeroizing<Vec<u128>>],
    at: usize,
    rows: usize,
) -> Vec<Vec<&'a mut [u128]>> {
    let mut tasks: Vec<Vec<&mut [u128]>> = (0..rows.div_ceil(KERNEL_ROWS)).map(|_| Vec::new()).collect();
    for (g, lv) in kept.iter_mut().enumerate() {
        let k = gs.leaves(g);
        for (task, out) in tasks.iter_mut().zip(lv[at * k..(at + rows) * k].chunks_mut(KERNEL_ROWS * k)) {
            task.push(out);
        }
    }
    tasks
}

/// What both sides' setups keep between [`OneHotSender::extend`] calls (and
/// [`OneHotChooser::extend_leaves`] calls): the reused message buffer, the plan of
/// `keep_during_setup`, and the scratch for the per-row keys that are not stored.
struct Setup {
    /// The last call's level-sum message (sent, so not secret), overwritten by the next: a setup
    /// of 10^5 rows × 300 groups sends 157 MB per 4 096-row chunk, and a fresh buffer each time
    /// was paid in page faults (the kernel's `clear_page`).
    msg: Vec<u64>,
    /// Rows reserved by `new`.
    capacity: usize,
    /// `keep_during_setup` was called: the calls fill `kept` as they go (else a non-empty `kept`
    /// was made by `keep_leaves` after the setup, and extending is refused).
    filling: bool,
    /// The last call's per-row keys (roots, co-path keys) when every group is kept: the side's
    /// store of them then stays empty (no use reads them).
    scratch: Zeroizing<Vec<u128>>,
}

impl Setup {
    fn new(capacity: usize) -> Self {
        Self { msg: Vec::new(), capacity, filling: false, scratch: Zeroizing::new(Vec::new()) }
    }

    /// `keep_during_setup` for either side: `kept` planned for `gs` (refused once the setup
    /// began; nothing for trees of one leaf only, which have nothing to expand). When every group
    /// is kept, the side's store of per-row `keys` is dropped. Returns the bytes planned.
    fn plan(
        &mut self,
        kept: &mut Vec<Zeroizing<Vec<u128>>>,
        keys: &mut Zeroizing<Vec<u128>>,
        gs: &Groups,
        rows_set_up: usize,
        budget: usize,
        huge: bool,
    ) -> Result<usize, MpcError> {
        if rows_set_up > 0 || !kept.is_empty() {
            return Err(MpcError::Invalid("one-hot leaves planned after the setup began".into()));
        }
        if gs.per_row == 0 {
            return Ok(0);
        }
        *kept = plan_groups(gs, self.capacity, budget, huge);
        self.filling = true;
        if kept.len() == gs.len() {
            *keys = Zeroizing::new(Vec::new());
        }
        Ok(kept.iter().map(|l| l.len() * 16).sum())
    }

    /// Errors unless `rows` more rows may be set up.
    fn check(&self, kept: &[Zeroizing<Vec<u128>>], rows_set_up: usize, rows: usize) -> Result<(), MpcError> {
        if !kept.is_empty() && !self.filling {
            return Err(MpcError::Invalid("one-hot correlations extended after their leaves were kept".into()));
        }
        if self.filling && rows_set_up + rows > self.capacity {
            return Err(MpcError::Invalid("one-hot rows beyond those reserved".into()));
        }
        Ok(())
    }

    /// The buffer a call writes its `len` new per-row keys into, from the returned offset: the
    /// side's store `keys` itself (reserved by `new`, so no reallocation leaves a copy of keys
    /// behind) while it is `stored`, else the scratch. Hand it back with [`Self::put_keys`].
    fn take_keys(
        &mut self,
        keys: &mut Zeroizing<Vec<u128>>,
        stored: bool,
        len: usize,
    ) -> (Zeroizing<Vec<u128>>, usize) {
        let mut buf = std::mem::take(if stored { keys } else { &mut self.scratch });
        if !stored {
            buf.clear();
        }
        let first = buf.len();
        buf.resize(first + len, 0);
        (buf, first)
    }

    fn put_keys(&mut self, keys: &mut Zeroizing<Vec<u128>>, stored: bool, buf: Zeroizing<Vec<u128>>) {
        *(if stored { keys } else { &mut self.scratch }) = buf;
    }
}

/// Spare buffers of a store's uses: the kernels' pad sums and messages, a backward's message, a
/// received message. A use as large as an earlier one then writes memory that is already mapped:
/// SecureBoost's root uses allocated and freed ~90 MB buffers per node each time, and their fresh
/// pages (the kernel's `clear_page`) were ~7% of the nodes' CPU during trees on a VM whose
/// balloon takes freed memory back. Holds the pads' sums, so it lives as long as its store.
#[derive(Default)]
struct Spare(Mutex<Vec<Vec<u64>>>);

impl Spare {
    /// Most buffers kept.
    const KEEP: usize = 4;

    /// A buffer of `len` words for a caller that writes every one of them: a kept one if one is
    /// large enough, with its old words left in place (zeroing 90 MB again cost ~4% of the
    /// nodes' CPU), else a fresh zeroed one.
    fn take(&self, len: usize) -> Vec<u64> {
        let mut v = self.pick(len);
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.clear();
            v.resize(len, 0);
        }
        v
    }

    /// The smallest kept buffer with room for `len` words (its old words in place), else an
    /// empty one.
    fn pick(&self, len: usize) -> Vec<u64> {
        if len == 0 {
            return Vec::new();
        }
        let mut s = self.0.lock().expect("not poisoned");
        let fit = (0..s.len()).filter(|&i| s[i].capacity() >= len).min_by_key(|&i| s[i].capacity());
        fit.map(|i| s.swap_remove(i)).unwrap_or_default()
    }

    /// An empty buffer with room for `len` words (for [`recv_u64s_into`]).
    fn room(&self, len: usize) -> Vec<u64> {
        let mut v = self.pick(len);
        v.clear();
        v
    }

    fn give(&self, v: Vec<u64>) {
        if v.capacity() == 0 {
            return;
        }
        let mut s = self.0.lock().expect("not poisoned");
        if s.len() < Self::KEEP {
            s.push(v);
        } else if let Some(small) = s.iter_mut().min_by_key(|k| k.capacity()).filter(|k| k.capacity() < v.capacity()) {
            *small = v;
        }
    }
}

/// The sender's kept correlations: a root per (row, group) of a list of rows.
pub struct OneHotSender {
    groups: Arc<Groups>,
    roots: Zeroizing<Vec<u128>>,
    rows: usize,
    /// The first `kept.len()` groups' trees expanded once to [`kept_level`]
    /// ([`Self::keep_during_setup`]): per group, that level's nodes of each row.
    kept: Vec<Zeroizing<Vec<u128>>>,
    setup: Setup,
    spare: Spare,
}

/// Zeroizes kept stores on rayon before they are freed (a store is up to several GB, and
/// `Zeroizing` alone would zeroize it on one core at the end of the job while the peer waits).
fn zeroize_kept(kept: &mut [Zeroizing<Vec<u128>>]) {
    for store in kept {
        let mut v = std::mem::take(&mut **store);
        v.par_chunks_mut(1 << 16).for_each(|c| c.zeroize());
    }
}

impl Drop for OneHotSender {
    fn drop(&mut self) {
        zeroize_kept(&mut self.kept);
    }
}

impl Drop for OneHotChooser {
    fn drop(&mut self) {
        zeroize_kept(&mut self.kept);
    }
}

/// The chooser's kept correlations: per (row, group) its leaf and co-path keys.
pub struct OneHotChooser {
    groups: Arc<Groups>,
    leaves: Zeroizing<Vec<u8>>,
    copath: Zeroizing<Vec<u128>>,
    rows: usize,
    /// As [`OneHotSender`]'s: the punctured expansion (0 in the own leaf's slot).
    kept: Vec<Zeroizing<Vec<u128>>>,
    setup: Setup,
    spare: Spare,
}

impl OneHotSender {
    /// An empty store for up to `rows` rows (reserved: growing would leave copies of keys).
    pub fn new(groups: Arc<Groups>, rows: usize) -> Self {
        let n = rows * groups.len();
        Self {
            groups,
            roots: Zeroizing::new(Vec::with_capacity(n)),
            rows: 0,
            kept: Vec::new(),
            setup: Setup::new(rows),
            spare: Spare::default(),
        }
    }

    /// Keeps the trees' [`kept_level`] (the leaves) of the first groups whose leaves fit in
    /// `budget` bytes at the rows reserved (k · 16 bytes per (row, group)): [`Self::extend`]
    /// stores them from the expansion it makes anyway for its level sums, and when every group is
    /// kept the roots are not stored at all. A use of a kept group then skips the expansion (at
    /// k = 33 it is 69 of the 102 AES blocks of a backward, and most of the scalar work). The
    /// same leaves as a use's own expansion, so nothing the peer sees changes; each party decides
    /// alone. `huge`: the stores on transparent huge pages, for uses of scattered rows, not for
    /// contiguous row ranges (the LR's batches; see [`plan_groups`]). Call before the first
    /// [`Self::extend`] (else an error). Returns the bytes planned.
    pub fn keep_during_setup(&mut self, budget: usize, huge: bool) -> Result<usize, MpcError> {
        self.setup.plan(&mut self.kept, &mut self.roots, &self.groups, self.rows, budget, huge)
    }

    /// [`Self::keep_during_setup`] after the setup: expands the trees of every row set up once
    /// more and keeps the leaves of the groups that fit in `budget`, on huge pages. SecureBoost's
    /// path: with the leaves kept during the setup instead, its trees measured ~30% slower
    /// (fraud shape, 2.51–2.71 s against 3.31–3.45 s per tree, not explained yet), the LR's
    /// epochs not. Returns the groups kept; the store cannot be extended after it.
    pub fn keep_leaves(&mut self, budget: usize) -> usize {
        if self.setup.filling {
            // Already kept by the setup.
            return self.kept.len();
        }
        let (gs, rows) = (self.groups.clone(), self.rows);
        let g_n = gs.len();
        let roots = &self.roots;
        self.kept = keep_groups(&gs, rows, budget, |g, r0, b| {
            b.nodes.extend((r0..r0 + KERNEL_ROWS.min(rows - r0)).map(|i| roots[i * g_n + g]));
            let k = gs.leaves(g);
            expand_levels(b, k, 0, kept_level(k), |_, _, _| {});
        });
        self.kept.len()
    }

    /// Rows set up so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes kept.
    pub fn kept_bytes(&self) -> usize {
        self.roots.len() * 16 + self.kept.iter().map(|l| l.len() * 16).sum::<usize>()
    }

    /// Setup for `rows` further rows (the chooser runs [`OneHotChooser::extend`] on them).
    pub async fn extend<C: Channel>(&mut self, channel: &C, ext: &mut IknpSender, rows: usize) -> Result<(), MpcError> {
        self.setup.check(&self.kept, self.rows, rows)?;
        let groups = self.groups.clone();
        let layout = Arc::new(groups.layout());
        let ots = sender_prepare_layout(channel, ext, rows, layout).await?;
        let g_n = groups.len();
        // The new roots, the message, the kept leaves go into the buffers kept for them
        // ([`Setup`]), the spent OTs back to the extension: no fresh buffer per chunk.
        let stored = self.kept.len() < g_n;
        let (mut store, first) = self.setup.take_keys(&mut self.roots, stored, rows * g_n);
        AesPrg::from_entropy().fill_blocks(0, &mut store[first..]);
        let mut msg = std::mem::take(&mut self.setup.msg);
        msg.clear();
        msg.resize(rows * groups.per_row * 4, 0);
        let mut kept = std::mem::take(&mut self.kept);
        let (g2, at_row) = (groups.clone(), self.rows);
        let (store, msg, kept, ots) = cpu::run(move || {
            let per = g2.per_row;
            let roots = &store[first..];
            let tasks = kept_tasks(&g2, &mut kept, at_row, rows);
            if per > 0 {
                msg.par_chunks_mut(per * 4 * KERNEL_ROWS)
                    .zip(roots.par_chunks(g_n * KERNEL_ROWS))
                    .zip(tasks.into_par_iter())
                    .enumerate()
                    .for_each(|(c, ((m, r), mut keep))| {
                        let n = r.len() / g_n;
                        let mut b = Bufs::new(n, g2.max_leaves());
                        for g in 0..g_n {
                            let (k, at) = (g2.leaves(g), g2.at[g] as usize);
                            let d = depth(k);
                            if g + 1 < g_n {
                                let (at, len) = (g2.at[g + 1] as usize, depth(g2.leaves(g + 1)) as usize);
                                prefetch_slots([&ots.m0, &ots.m1], m, 4, c * KERNEL_ROWS, n, per, at, len);
                            }
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
                            if let Some(out) = keep.get_mut(g) {
                                out.copy_from_slice(&b.nodes);
                            }
                        }
                    });
            }
            (store, msg, kept, ots)
        })
        .await;
        self.setup.put_keys(&mut self.roots, stored, store);
        self.kept = kept;
        let sent = send_u64s(channel, &msg).await;
        self.setup.msg = msg;
        for buf in ots.into_buffers() {
            ext.recycle(buf);
        }
        if let Err(e) = sent {
            // The rows were not set up: drop their roots (the capacity is zeroized with the store).
            if stored {
                self.roots.truncate(first);
            }
            return Err(e);
        }
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

    /// Hands a use's message back once it is sent, for the next use's buffers.
    pub fn recycle(&self, msg: Vec<u64>) {
        self.spare.give(msg);
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
            kept: Vec::new(),
            setup: Setup::new(rows),
            spare: Spare::default(),
        }
    }

    /// As [`OneHotSender::keep_during_setup`]: [`Self::extend_leaves`] keeps the punctured
    /// leaves (0 in the own leaf's slot) it expands anyway to find the co-path keys, which are
    /// then not stored when every group is kept.
    pub fn keep_during_setup(&mut self, budget: usize, huge: bool) -> Result<usize, MpcError> {
        self.setup.plan(&mut self.kept, &mut self.copath, &self.groups, self.rows, budget, huge)
    }

    /// As [`OneHotSender::keep_leaves`]: the punctured trees' kept level (0 on the row's path;
    /// the levels below it, if any, are punctured per use with the kept co-path keys).
    pub fn keep_leaves(&mut self, budget: usize) -> usize {
        if self.setup.filling {
            // Already kept by the setup.
            return self.kept.len();
        }
        let (gs, rows) = (self.groups.clone(), self.rows);
        let (g_n, per) = (gs.len(), gs.per_row);
        let (leaves, copath) = (&self.leaves, &self.copath);
        self.kept = keep_groups(&gs, rows, budget, |g, r0, b| {
            let n = KERNEL_ROWS.min(rows - r0);
            let (k, at) = (gs.leaves(g), gs.at[g] as usize);
            let d = depth(k);
            b.nodes.resize(n, 0);
            expand_levels(b, k, 0, kept_level(k), |t, l, z| {
                let i = r0 + t;
                let q = leaves[i * g_n + g] as usize >> (d - l);
                z[q] = 0;
                if (q ^ 1) < z.len() {
                    z[q ^ 1] = copath[i * per + at + l as usize - 1];
                }
            });
        });
        self.kept.len()
    }

    /// Bytes kept.
    pub fn kept_bytes(&self) -> usize {
        self.leaves.len() + self.copath.len() * 16 + self.kept.iter().map(|l| l.len() * 16).sum::<usize>()
    }

    /// Setup for the rows of `x` (one-hot per the groups; the sender runs
    /// [`OneHotSender::extend`] with as many rows).
    pub async fn extend<C: Channel>(
        &mut self,
        channel: &C,
        ext: &mut IknpReceiver,
        x: &Matrix,
    ) -> Result<(), MpcError> {
        let leaves = self.groups.leaves_of(x)?;
        self.extend_leaves(channel, ext, x.rows, leaves).await
    }

    /// [`Self::extend`] for `rows` rows given as their leaves (one byte per (row, group), as
    /// [`Groups::leaves_of`] makes them): a party that keeps its one-hot matrix as leaves does
    /// not expand it to a matrix for the setup. Errors on a leaf beyond its group.
    pub async fn extend_leaves<C: Channel>(
        &mut self,
        channel: &C,
        ext: &mut IknpReceiver,
        rows: usize,
        leaves: Zeroizing<Vec<u8>>,
    ) -> Result<(), MpcError> {
        self.setup.check(&self.kept, self.rows, rows)?;
        let groups = self.groups.clone();
        let (g_n, per) = (groups.len(), groups.per_row);
        if leaves.len() != rows * g_n
            || (g_n > 0 && leaves.chunks(g_n).any(|r| r.iter().zip(&groups.cols).any(|(&b, &c)| b > c)))
        {
            return Err(MpcError::Invalid("one-hot leaves that are not whole rows of their groups".into()));
        }
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
        // As the sender's: the buffers kept for them ([`Setup`]), the spent OTs handed back.
        let mut msg = std::mem::take(&mut self.setup.msg);
        let got = recv_u64s_into(channel, rows * per * 4, &mut msg).await;
        if let Err(e) = got {
            self.setup.msg = msg;
            return Err(e);
        }
        let stored = self.kept.len() < g_n;
        let (mut store, first) = self.setup.take_keys(&mut self.copath, stored, rows * per);
        let mut kept = std::mem::take(&mut self.kept);
        let (g2, at_row) = (groups.clone(), self.rows);
        let (store, leaves, msg, kept, ots) = cpu::run(move || {
            let tasks = kept_tasks(&g2, &mut kept, at_row, rows);
            let copath = &mut store[first..];
            if per > 0 {
                copath
                    .par_chunks_mut(per * KERNEL_ROWS)
                    .zip(leaves.par_chunks(g_n * KERNEL_ROWS))
                    .zip(tasks.into_par_iter())
                    .enumerate()
                    .for_each(|(c, ((cp, lv), mut keep))| {
                        let n = lv.len() / g_n;
                        let mut b = Bufs::new(n, g2.max_leaves());
                        for g in 0..g_n {
                            let (k, at) = (g2.leaves(g), g2.at[g] as usize);
                            let d = depth(k);
                            if g + 1 < g_n {
                                let (at, len) = (g2.at[g + 1] as usize, depth(g2.leaves(g + 1)) as usize);
                                let row0 = c * KERNEL_ROWS;
                                prefetch_slots([&ots.msgs, &[]], &msg[row0 * per * 4..], 4, row0, n, per, at, len);
                                prefetch_slots([&[], &[]], &*cp, 1, 0, n, per, at, len);
                            }
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
                            if let Some(out) = keep.get_mut(g) {
                                out.copy_from_slice(&b.nodes);
                            }
                        }
                    });
            }
            (store, leaves, msg, kept, ots)
        })
        .await;
        self.setup.put_keys(&mut self.copath, stored, store);
        self.kept = kept;
        self.setup.msg = msg;
        ext.recycle(ots.into_buffer());
        self.leaves.extend_from_slice(&leaves);
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

    /// An empty buffer with room for a message of `len` words (a spare one if any is large
    /// enough); hand it back with [`Self::recycle`] once the use is done.
    pub fn buffer(&self, len: usize) -> Vec<u64> {
        self.spare.room(len)
    }

    /// Hands a received message back once its use is done, for the next use's buffers.
    pub fn recycle(&self, msg: Vec<u64>) {
        self.spare.give(msg);
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

/// The word of a column's pair in [`Prep::acc`] that belongs to backward vector v (0: the low
/// half, 1: the high half).
#[inline]
fn half_at(v: usize) -> usize {
    if v == 0 { LO } else { 1 - LO }
}

/// Vector v's share per column out of interleaved column pairs.
fn half(acc: &[u64], v: usize) -> Vec<u64> {
    acc.chunks_exact(2).map(|p| p[half_at(v)]).collect()
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

    /// [`OneHotSender::recycle`]: a sent message's buffer back to the store.
    pub fn recycle(&self, msg: Vec<u64>) {
        self.store.recycle(msg);
    }

    /// The batched kernel over the use's rows: the forward message and shares when `y` is given,
    /// the backward pads ([`Prep`]) when `bwd`, from one expansion of each tree.
    fn kernel(&self, y: Option<&[u64]>, bwd: bool) -> (Vec<u64>, Vec<u64>, Option<Prep>) {
        let gs = &*self.store.groups;
        let (g_n, cols, m) = (gs.len(), gs.total, self.rows.len());
        let fw = y.is_some();
        let mut msg = self.store.spare.take(if fw { m * cols } else { 0 });
        let mut out = vec![0u64; if fw { m } else { 0 }];
        let mut sums = self.store.spare.take(if bwd { m * g_n * 2 } else { 0 });
        let acc = if g_n == 0 {
            Vec::new()
        } else {
            parts(m, &mut msg, cols, &mut out, &mut sums, 2 * g_n)
                .into_par_iter()
                // One set of work buffers per rayon job, reused across its tasks.
                .map_init(
                    || Bufs::new(KERNEL_ROWS, gs.max_leaves()),
                    |b, p| {
                        let mut acc = vec![0u64; if bwd { 2 * cols } else { 0 }];
                        self.part(p, y, b, &mut acc);
                        acc
                    },
                )
                .reduce(Vec::new, add_acc)
        };
        let acc = if acc.is_empty() { vec![0; 2 * cols] } else { acc };
        (msg, out, bwd.then_some(Prep { sums, acc }))
    }

    /// One task of [`Self::kernel`]: its rows' trees, group by group, the column sums added to
    /// `acc` (work buffers `b`, reused across the tasks of one rayon job: every buffer is cleared or
    /// resized before it is read).
    fn part(&self, p: Part, y: Option<&[u64]>, b: &mut Bufs, acc: &mut [u64]) {
        let st = &*self.store;
        let gs = &*st.groups;
        let (g_n, cols) = (gs.len(), gs.total);
        let abs: Vec<usize> = (p.r0..p.r0 + p.n).map(|r| self.rows.abs(r)).collect();
        let (mut msg, mut out, mut sums) = (p.msg, p.out, p.sums);
        for g in 0..g_n {
            let (k, f) = (gs.leaves(g), gs.first[g] as usize);
            b.nodes.clear();
            let (d, h) = (depth(k), kept_level(k));
            // Kept leaves and no forward: the backward's pads gather them ([`em_kept`]).
            let leaves_only = st.kept.get(g).filter(|_| h == d && y.is_none());
            match (leaves_only, st.kept.get(g)) {
                (Some(_), _) => {}
                (None, Some(lv)) => {
                    gather(lv, &abs, level_len(k, d, h), &mut b.nodes);
                    expand_levels(b, k, h, d, |_, _, _| {});
                }
                (None, None) => {
                    b.nodes.extend(abs.iter().map(|&i| st.roots[i * g_n + g]));
                    expand_many(b, k, |_, _, _| {});
                }
            }
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
                match leaves_only {
                    Some(lv) => em_kept(lv, &abs, k, &b.base, &mut b.nodes, &mut b.y),
                    None => em_trees(&mut b.nodes, k, &b.base, &mut b.y),
                }
                fold_pads(&b.nodes, k, None, acc, f, &mut sums[..], (g, g_n));
            }
        }
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
        let (g_n, m, w) = (gs.len(), self.rows.len(), ys.len());
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
        let mut msg = self.store.spare.take(m * g_n * w);
        if g_n > 0 {
            msg.par_chunks_mut(g_n * w).zip(prep.sums.par_chunks(2 * g_n)).enumerate().for_each(|(r, (msg, sums))| {
                for (g, c) in msg.chunks_mut(w).enumerate() {
                    for (v, c) in c.iter_mut().enumerate() {
                        *c = ys[v][r].wrapping_sub(sums[2 * g + v]);
                    }
                }
            });
        }
        self.store.spare.give(prep.sums);
        let outs = (0..w).map(|v| scaled(half(&prep.acc, v), gs.scale)).collect();
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
    /// [`OneHotChooser::recycle`]: a received message's buffer back to the store.
    pub fn recycle(&self, msg: Vec<u64>) {
        self.store.recycle(msg);
    }

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
        let mut sums = self.store.spare.take(if bwd { m * g_n * 2 } else { 0 });
        let acc = if g_n == 0 {
            Vec::new()
        } else {
            parts(m, &mut [], 0, &mut out, &mut sums, 2 * g_n)
                .into_par_iter()
                // One set of work buffers per rayon job, reused across its tasks.
                .map_init(
                    || Bufs::new(KERNEL_ROWS, gs.max_leaves()),
                    |b, p| {
                        let mut acc = vec![0u64; if bwd { 2 * cols } else { 0 }];
                        self.part(p, msg, b, &mut acc);
                        acc
                    },
                )
                .reduce(Vec::new, add_acc)
        };
        let acc = if acc.is_empty() { vec![0; 2 * cols] } else { acc };
        (out, bwd.then_some(Prep { sums, acc }))
    }

    /// One task of [`Self::kernel`], as the sender's.
    fn part(&self, p: Part, msg: Option<&[u64]>, b: &mut Bufs, acc: &mut [u64]) {
        let st = &*self.store;
        let gs = &*st.groups;
        let (g_n, cols, per) = (gs.len(), gs.total, gs.per_row);
        let abs: Vec<usize> = (p.r0..p.r0 + p.n).map(|r| self.rows.abs(r)).collect();
        let (mut out, mut sums) = (p.out, p.sums);
        let mut leaf = vec![0usize; p.n];
        for g in 0..g_n {
            let (k, f, at) = (gs.leaves(g), gs.first[g] as usize, gs.at[g] as usize);
            let d = depth(k);
            for (l, &i) in leaf.iter_mut().zip(&abs) {
                *l = st.leaves[i * g_n + g] as usize;
            }
            let puncture = |t: usize, l: u32, z: &mut [u128]| {
                let q = leaf[t] >> (d - l);
                z[q] = 0;
                if (q ^ 1) < z.len() {
                    z[q ^ 1] = st.copath[abs[t] * per + at + l as usize - 1];
                }
            };
            b.nodes.clear();
            let h = kept_level(k);
            let leaves_only = st.kept.get(g).filter(|_| h == d && msg.is_none());
            match (leaves_only, st.kept.get(g)) {
                (Some(_), _) => {}
                (None, Some(lv)) => {
                    // The kept level has 0 on the row's path; the levels below it are punctured
                    // here.
                    gather(lv, &abs, level_len(k, d, h), &mut b.nodes);
                    expand_levels(b, k, h, d, puncture);
                }
                (None, None) => {
                    b.nodes.resize(p.n, 0);
                    expand_many(b, k, puncture);
                }
            }
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
                match leaves_only {
                    Some(lv) => em_kept(lv, &abs, k, &b.base, &mut b.nodes, &mut b.y),
                    None => em_trees(&mut b.nodes, k, &b.base, &mut b.y),
                }
                fold_pads(&b.nodes, k, Some(&leaf), acc, f, &mut sums[..], (g, g_n));
            }
        }
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
                                let a = &mut acc[2 * col + half_at(v)];
                                *a = a.wrapping_add(add);
                            }
                        }
                    }
                    acc
                })
                .reduce(|| vec![0u64; 2 * cols], super::add_vecs)
        };
        acc = super::add_vecs(acc, prep.acc);
        st.spare.give(prep.sums);
        Ok((0..w).map(|v| scaled(half(&acc, v), gs.scale)).collect())
    }
}

#[cfg(test)]
mod tests;
