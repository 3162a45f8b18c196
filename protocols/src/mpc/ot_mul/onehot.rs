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
//! GGM tree (Goldreich–Goldwasser–Micali) of depth d, children G(s) = (H(t_L, s), H(t_R, s)),
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
//! - backward (all-but-one): Q_j = H(t_B, K_j); the sender sends c = y_i − Σ_{j<k} Q_j (8 bytes per
//!   group) and keeps Q_j for column j; the chooser keeps −Q_j for j ≠ b and
//!   c + Σ_{j≠b} Q_j = y_i − Q_b for j = b.
//!
//! Both then multiply their shares by `scale`. Exact (no error term).
//!
//! # What each party learns; what is kept
//!
//! The sender sees the OT extension's messages and the derandomization bits ¬b_l ⊕ (a uniform
//! random choice bit): nothing about the leaves. The chooser sees, per level, its OT's opened side
//! (a sum it can predict) and the other side masked by an OT output it does not have; so K_b
//! stays pseudorandom to it (GGM puncturing). Per use it sees u_j (j ≠ b) masked by P_j, and c
//! masked by Q_b: P_j for j ≠ b and Q_b are TCCR hashes of inputs that contain K_b (K_b ⊕ known
//! values), each under a tweak used once; so they are independent pseudorandom pads and u, c say
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
//! 8 bytes per column (k − 1 per group), backward 8 bytes per group; CPU about 2k TCCR hashes and
//! ~k PRG calls per (row, group) on either side.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Nodes of a full tree of depth 8 in heap order (level l at offsets 2^l − 1 ..).
const TREE: usize = 511;

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

    /// The setup's OT layout: per group its depth's bits (unsigned, from bit 0).
    fn layout(&self) -> Layout {
        Layout::new(
            self.cols.iter().map(|&c| ColBits { lo: 0, hi: depth(c as usize + 1) as u8, signed: false }).collect(),
        )
    }
}

/// Nodes of level l (0..=d) that have a leaf below k.
#[inline]
fn level_len(k: usize, d: u32, l: u32) -> usize {
    k.div_ceil(1 << (d - l))
}

/// Work buffers of the tree expansion and the hashes, made once per task (not per call: zeroing
/// 4 KiB arrays per node level cost more than the AES).
pub(super) struct Scratch {
    y: [u128; 256],
    z: [u128; 256],
}

impl Scratch {
    fn new() -> Box<Self> {
        Box::new(Self { y: [0; 256], z: [0; 256] })
    }
}

/// Children of the nodes of level l − 1 into level l (heap offsets), batched through the AES:
/// G(s) = (π(π(s) ⊕ t_L) ⊕ π(s), π(π(s) ⊕ t_R) ⊕ π(s)).
#[inline]
fn expand_level(tree: &mut [u128; TREE], k: usize, d: u32, l: u32, sc: &mut Scratch) {
    let aes = FixedKeyAes::fixed();
    let (parents, children) = (level_len(k, d, l - 1), level_len(k, d, l));
    let (po, co) = ((1usize << (l - 1)) - 1, (1usize << l) - 1);
    let (y, z) = (&mut sc.y, &mut sc.z);
    y[..parents].copy_from_slice(&tree[po..po + parents]);
    aes.permute_blocks(&mut y[..parents]);
    for v in 0..children {
        z[v] = y[v >> 1] ^ if v & 1 == 0 { T_LEFT } else { T_RIGHT };
    }
    aes.permute_blocks(&mut z[..children]);
    for v in 0..children {
        tree[co + v] = z[v] ^ y[v >> 1];
    }
}

/// The whole (pruned) tree from its root: the sender's view.
fn expand_full(root: u128, k: usize, tree: &mut [u128; TREE], sc: &mut Scratch) {
    let d = depth(k);
    tree[0] = root;
    for l in 1..=d {
        expand_level(tree, k, d, l, sc);
    }
}

/// Every leaf but `b` from the co-path keys (`copath[l − 1]` the sibling of the path node at level
/// l): the chooser's view. Nodes on the path are left 0.
fn expand_punctured(copath: &[u128], b: usize, k: usize, tree: &mut [u128; TREE], sc: &mut Scratch) {
    let d = depth(k);
    tree[0] = 0;
    for l in 1..=d {
        expand_level(tree, k, d, l, sc);
        let co = (1usize << l) - 1;
        let p = b >> (d - l);
        tree[co + p] = 0;
        if (p ^ 1) < level_len(k, d, l) {
            tree[co + (p ^ 1)] = copath[l as usize - 1];
        }
    }
}

/// The leaves' heap offset for k leaves.
#[inline]
fn leaf_at(k: usize) -> usize {
    (1usize << depth(k)) - 1
}

/// TCCR hashes of `xs` under tweaks `base + j` (j = index), in place, batched.
#[inline]
fn hash_leaves(base: u128, xs: &mut [u128], sc: &mut Scratch) {
    let aes = FixedKeyAes::fixed();
    let y = &mut sc.y;
    let n = xs.len();
    y[..n].copy_from_slice(xs);
    aes.permute_blocks(&mut y[..n]);
    for (j, x) in xs.iter_mut().enumerate() {
        *x = y[j] ^ (base + j as u128);
    }
    aes.permute_blocks(xs);
    for (x, y) in xs.iter_mut().zip(&y[..n]) {
        *x ^= y;
    }
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
                msg.par_chunks_mut(per * 4).zip(roots.par_chunks(g_n)).enumerate().for_each(|(i, (m, r))| {
                    let (mut tree, mut sc) = ([0u128; TREE], Scratch::new());
                    for (g, &root) in r.iter().enumerate() {
                        let k = g2.leaves(g);
                        let d = depth(k);
                        expand_full(root, k, &mut tree, &mut sc);
                        for l in 1..=d {
                            let off = (1usize << l) - 1;
                            let (mut left, mut right) = (0u128, 0u128);
                            for v in 0..level_len(k, d, l) {
                                if v & 1 == 0 {
                                    left ^= tree[off + v];
                                } else {
                                    right ^= tree[off + v];
                                }
                            }
                            // Level l is bit d − l of the leaf, the OT of that bit.
                            let slot = g2.at[g] as usize + (d - l) as usize;
                            let o = i * per + slot;
                            let (a, b) = (left ^ ots.m0[o], right ^ ots.m1[o]);
                            let w = &mut m[slot * 4..slot * 4 + 4];
                            w.copy_from_slice(&[a as u64, (a >> 64) as u64, b as u64, (b >> 64) as u64]);
                        }
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
        OneHotSenderSession { store: self.clone(), use_id, rows: Rows::Range { at, m }, used: Default::default() }
    }

    /// One use of the listed rows (absolute indices into the rows set up, strictly increasing;
    /// checked when the session is used). The tweak carries the absolute row index, so uses with
    /// distinct use ids never repeat a pad, whichever rows they list.
    pub fn session_rows(self: &Arc<Self>, use_id: u64, rows: Arc<[u32]>) -> OneHotSenderSession {
        OneHotSenderSession { store: self.clone(), use_id, rows: Rows::List(rows), used: Default::default() }
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
                copath.par_chunks_mut(per).zip(lv.par_chunks(g_n)).enumerate().for_each(|(i, (cp, lv))| {
                    let (mut tree, mut sc) = ([0u128; TREE], Scratch::new());
                    for (g, &b) in lv.iter().enumerate() {
                        let (k, b) = (g2.leaves(g), b as usize);
                        let d = depth(k);
                        let at = g2.at[g] as usize;
                        tree[0] = 0;
                        for l in 1..=d {
                            expand_level(&mut tree, k, d, l, &mut sc);
                            let off = (1usize << l) - 1;
                            let p = b >> (d - l);
                            let sib = p ^ 1;
                            tree[off + p] = 0;
                            let slot = at + (d - l) as usize;
                            let o = i * per + slot;
                            let w = &msg[o * 4..o * 4 + 4];
                            let side = (sib & 1) as u128;
                            let sum = if side == 0 {
                                w[0] as u128 | (w[1] as u128) << 64
                            } else {
                                w[2] as u128 | (w[3] as u128) << 64
                            };
                            let mut s = sum ^ ots.msgs[o];
                            for v in (side as usize..level_len(k, d, l)).step_by(2) {
                                if v != sib {
                                    s ^= tree[off + v];
                                }
                            }
                            if sib < level_len(k, d, l) {
                                tree[off + sib] = s;
                            }
                            cp[at + l as usize - 1] = s;
                        }
                    }
                });
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
        OneHotChooserSession { store: self.clone(), use_id, rows: Rows::Range { at, m }, used: Default::default() }
    }

    /// One use of the listed rows, as [`OneHotSender::session_rows`].
    pub fn session_rows(self: &Arc<Self>, use_id: u64, rows: Arc<[u32]>) -> OneHotChooserSession {
        OneHotChooserSession { store: self.clone(), use_id, rows: Rows::List(rows), used: Default::default() }
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

/// The sender's side of one use (a batch of rows in one epoch).
pub struct OneHotSenderSession {
    store: Arc<OneHotSender>,
    use_id: u64,
    rows: Rows,
    used: [AtomicBool; 2],
}

/// The chooser's side of one use.
pub struct OneHotChooserSession {
    store: Arc<OneHotChooser>,
    use_id: u64,
    rows: Rows,
    used: [AtomicBool; 2],
}

impl OneHotSenderSession {
    /// Forward: the message (k − 1 words per (row, group): one per column) and the sender's share
    /// of X·y (one per row), for y of one entry per column.
    pub fn forward(&self, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        let gs = &self.store.groups;
        if y.len() != gs.total {
            return Err(MpcError::Invalid(format!("forward vector of {} entries for {} columns", y.len(), gs.total)));
        }
        self.rows.check(self.store.rows())?;
        take(&self.used, false)?;
        let (g_n, cols, m) = (gs.len(), gs.total, self.rows.len());
        let mut msg = vec![0u64; m * cols];
        let mut out = vec![0u64; m];
        if cols > 0 {
            msg.par_chunks_mut(cols).zip(out.par_iter_mut()).enumerate().for_each(|(r, (msg, out))| {
                let i = self.rows.abs(r);
                let roots = &self.store.roots[i * g_n..(i + 1) * g_n];
                let (mut tree, mut sc) = ([0u128; TREE], Scratch::new());
                let mut acc = 0u64;
                for (g, &root) in roots.iter().enumerate() {
                    let k = gs.leaves(g);
                    expand_full(root, k, &mut tree, &mut sc);
                    let leaves = &mut tree[leaf_at(k)..leaf_at(k) + k];
                    let s = leaves.iter().fold(0u128, |a, &x| a ^ x);
                    leaves.iter_mut().for_each(|x| *x ^= s);
                    hash_leaves(tweak(self.use_id, T_FORWARD, i, g, 0), leaves, &mut sc);
                    let p0 = leaves[0] as u64;
                    let f = gs.first[g] as usize;
                    for j in 1..k {
                        msg[f + j - 1] = y[f + j - 1].wrapping_add(leaves[j] as u64).wrapping_sub(p0);
                    }
                    acc = acc.wrapping_add(p0);
                }
                *out = acc;
            });
        }
        Ok((msg, scaled(out, gs.scale)))
    }

    /// Backward: the message (one word per (row, group)) and the sender's share of Xᵀ·y (one per
    /// column), for y of one entry per row.
    pub fn backward(&self, y: &[u64]) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        let gs = &self.store.groups;
        let m = self.rows.len();
        if y.len() != m {
            return Err(MpcError::Invalid(format!("backward vector of {} entries for {m} rows", y.len())));
        }
        self.rows.check(self.store.rows())?;
        take(&self.used, true)?;
        let (g_n, cols) = (gs.len(), gs.total);
        let mut msg = vec![0u64; m * g_n];
        if g_n == 0 {
            return Ok((msg, vec![0; cols]));
        }
        let out = msg
            .par_chunks_mut(g_n * super::PAR_ROWS)
            .enumerate()
            .map(|(blk, msg)| {
                let mut acc = vec![0u64; cols];
                let (mut tree, mut sc) = ([0u128; TREE], Scratch::new());
                for (rr, msg) in msg.chunks_mut(g_n).enumerate() {
                    let r = blk * super::PAR_ROWS + rr;
                    let i = self.rows.abs(r);
                    let roots = &self.store.roots[i * g_n..(i + 1) * g_n];
                    for (g, &root) in roots.iter().enumerate() {
                        let k = gs.leaves(g);
                        expand_full(root, k, &mut tree, &mut sc);
                        let leaves = &mut tree[leaf_at(k)..leaf_at(k) + k];
                        hash_leaves(tweak(self.use_id, T_BACKWARD, i, g, 0), leaves, &mut sc);
                        let mut c = y[r];
                        let f = gs.first[g] as usize;
                        for (j, &q) in leaves.iter().enumerate() {
                            c = c.wrapping_sub(q as u64);
                            if j > 0 {
                                acc[f + j - 1] = acc[f + j - 1].wrapping_add(q as u64);
                            }
                        }
                        msg[g] = c;
                    }
                }
                acc
            })
            .reduce(|| vec![0u64; cols], super::add_vecs);
        Ok((msg, scaled(out, gs.scale)))
    }
}

impl OneHotChooserSession {
    /// Words of the sender's forward message.
    pub fn forward_len(&self) -> usize {
        self.rows.len() * self.store.groups.total
    }

    /// Words of the sender's backward message.
    pub fn backward_len(&self) -> usize {
        self.rows.len() * self.store.groups.len()
    }

    /// The leaves and co-path keys of row `i` (absolute).
    #[inline]
    fn row(&self, i: usize) -> (&[u8], &[u128]) {
        let st = &self.store;
        let (g_n, per) = (st.groups.len(), st.groups.per_row);
        (&st.leaves[i * g_n..(i + 1) * g_n], &st.copath[i * per..(i + 1) * per])
    }

    /// Forward: the chooser's share of X·y (one per row) given the sender's message.
    pub fn forward(&self, msg: &[u64]) -> Result<Vec<u64>, MpcError> {
        let gs = &self.store.groups;
        if msg.len() != self.forward_len() {
            return Err(violation(format!("{} forward words for {}", msg.len(), self.forward_len())));
        }
        self.rows.check(self.store.rows)?;
        take(&self.used, false)?;
        let (g_n, cols) = (gs.len(), gs.total);
        let mut out = vec![0u64; self.rows.len()];
        if g_n > 0 {
            out.par_iter_mut().enumerate().for_each(|(r, out)| {
                let i = self.rows.abs(r);
                let (leaves, copath) = self.row(i);
                let (mut tree, mut sc) = ([0u128; TREE], Scratch::new());
                let mut acc = 0u64;
                for g in 0..g_n {
                    let (k, b) = (gs.leaves(g), leaves[g] as usize);
                    let at = gs.at[g] as usize;
                    expand_punctured(&copath[at..at + depth(k) as usize], b, k, &mut tree, &mut sc);
                    let s = tree[leaf_at(k)..leaf_at(k) + k].iter().fold(0u128, |a, &x| a ^ x);
                    let mut pb = [s];
                    hash_leaves(tweak(self.use_id, T_FORWARD, i, g, b), &mut pb, &mut sc);
                    let pb = pb[0] as u64;
                    acc = if b == 0 {
                        acc.wrapping_sub(pb)
                    } else {
                        acc.wrapping_add(msg[r * cols + gs.first[g] as usize + b - 1]).wrapping_sub(pb)
                    };
                }
                *out = acc;
            });
        }
        Ok(scaled(out, gs.scale))
    }

    /// Backward: the chooser's share of Xᵀ·y (one per column) given the sender's message.
    pub fn backward(&self, msg: &[u64]) -> Result<Vec<u64>, MpcError> {
        let gs = &self.store.groups;
        if msg.len() != self.backward_len() {
            return Err(violation(format!("{} backward words for {}", msg.len(), self.backward_len())));
        }
        self.rows.check(self.store.rows)?;
        take(&self.used, true)?;
        let (g_n, cols) = (gs.len(), gs.total);
        if g_n == 0 {
            return Ok(vec![0; cols]);
        }
        let out = msg
            .par_chunks(g_n * super::PAR_ROWS)
            .enumerate()
            .map(|(blk, msg)| {
                let mut acc = vec![0u64; cols];
                let (mut tree, mut sc) = ([0u128; TREE], Scratch::new());
                for (rr, msg) in msg.chunks(g_n).enumerate() {
                    let i = self.rows.abs(blk * super::PAR_ROWS + rr);
                    let (leaves, copath) = self.row(i);
                    for (g, &c) in msg.iter().enumerate() {
                        let (k, b) = (gs.leaves(g), leaves[g] as usize);
                        let at = gs.at[g] as usize;
                        expand_punctured(&copath[at..at + depth(k) as usize], b, k, &mut tree, &mut sc);
                        let leaves = &mut tree[leaf_at(k)..leaf_at(k) + k];
                        hash_leaves(tweak(self.use_id, T_BACKWARD, i, g, 0), leaves, &mut sc);
                        let f = gs.first[g] as usize;
                        let mut mine = c;
                        for (j, &q) in leaves.iter().enumerate() {
                            if j == b {
                                continue;
                            }
                            mine = mine.wrapping_add(q as u64);
                            if j > 0 {
                                acc[f + j - 1] = acc[f + j - 1].wrapping_sub(q as u64);
                            }
                        }
                        if b > 0 {
                            acc[f + b - 1] = acc[f + b - 1].wrapping_add(mine);
                        }
                    }
                }
                acc
            })
            .reduce(|| vec![0u64; cols], super::add_vecs);
        Ok(scaled(out, gs.scale))
    }
}

#[cfg(test)]
mod tests;
