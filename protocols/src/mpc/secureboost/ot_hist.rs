//! The `ot` histogram backend ([`super::Histograms::Ot`]): B's per-node histograms as backward
//! products of its one-hot bins with A's g and h, from one-hot correlations kept for the whole
//! job ([`crate::mpc::ot_mul::onehot`]).
//!
//! Setup, once per job (after the hello): IKNP with the KOS consistency check (B is the OT
//! receiver), then the kept correlations over the training rows in ascending order — A is the
//! [`OneHotSender`], B the [`OneHotChooser`] of the matrix whose group f has `bins_f − 1` columns
//! (bin 0, the missing-value bin, is the group's reference leaf: no column). Per computed node N
//! (the root, or the smaller child of a pair) of tree t: one paired use
//! (`backward_pair`: one expansion, the two 64-bit halves of each 128-bit pad) with id
//! (t·2^20 + id_N)·2 over N's rows (their positions in the kept list), y₀ = g and y₁ = h as u64
//! (two's complement of the fixed-point values). A sends the paired backward message (16 bytes
//! per (row, B feature)); B answers with its shares of this tree's features' columns
//! (all g shares, then all h shares, 8 bytes each); A adds its own shares and gets every cell's
//! exact (ΣG, ΣH) mod 2^64 — exact as i64, since over at most 2^20 rows |ΣG| ≤ 2^52 and
//! 0 ≤ ΣH ≤ 2^50 ([`super::MAX_ROWS`]); cells outside those bounds are an error — and bin 0 as the
//! node's total minus the other bins.
use std::sync::Arc;

use super::split::{GH_FRAC_BITS, Layout, MAX_ROWS};
use crate::channel::Channel;
use crate::cpu;
use crate::mpc::ot_mul::Matrix;
use crate::mpc::ot_mul::onehot::{Groups, OneHotChooser, OneHotSender};
use crate::mpc::wire::{recv_u64s_into, send_u64s};
use crate::mpc::{MpcError, violation};
use crate::ot::{IknpReceiver, IknpSender, Security};

use super::binning::BinnedFeatures;

/// Setup matrix entries per chunk (the chooser's one-hot matrix of a chunk is dense u64).
const CHUNK_ENTRIES: usize = 1 << 22;

/// B's one-hot groups: bins − 1 columns per feature, scale 1.
pub(super) fn groups(bins: &[u32]) -> Result<Arc<Groups>, MpcError> {
    let cols: Vec<u32> = bins.iter().map(|&b| b - 1).collect();
    Ok(Arc::new(Groups::new(&cols, 1)?))
}

/// The kept list: the training rows, ascending.
pub(super) fn kept_rows(train: &[u32]) -> Vec<u32> {
    let mut rows = train.to_vec();
    rows.sort_unstable();
    rows
}

fn chunk_rows(cols: usize) -> usize {
    (CHUNK_ENTRIES / cols.max(1)).clamp(64, 8192)
}

/// A's setup over `rows` kept rows of B's features with `peer_bins`, then the leaves of as many
/// features as `keep` bytes hold expanded ([`OneHotSender::keep_leaves`]).
pub(super) async fn setup_sender<C: Channel>(
    channel: &C,
    peer_bins: &[u32],
    rows: usize,
    keep: u64,
) -> Result<Arc<OneHotSender>, MpcError> {
    let groups = groups(peer_bins)?;
    let mut ext = IknpSender::setup(channel, Security::Malicious).await?;
    let step = chunk_rows(groups.total_cols());
    let mut store = OneHotSender::new(groups, rows);
    let mut done = 0;
    while done < rows {
        let m = step.min(rows - done);
        store.extend(channel, &mut ext, m).await?;
        done += m;
    }
    Ok(cpu::run(move || {
        store.keep_leaves(usize::try_from(keep).unwrap_or(usize::MAX));
        Arc::new(store)
    })
    .await)
}

/// B's setup over its features of the `kept` rows, then its leaves kept as A's.
pub(super) async fn setup_chooser<C: Channel>(
    channel: &C,
    x: &Arc<BinnedFeatures>,
    kept: &[u32],
    keep: u64,
) -> Result<Arc<OneHotChooser>, MpcError> {
    let groups = groups(&x.bins)?;
    let mut ext = IknpReceiver::setup(channel, Security::Malicious).await?;
    let mut store = OneHotChooser::new(groups.clone(), kept.len());
    for chunk in kept.chunks(chunk_rows(groups.total_cols())) {
        let (x, rows) = (x.clone(), chunk.to_vec());
        let matrix = cpu::run(move || one_hot(&x, &rows)).await;
        store.extend(channel, &mut ext, &matrix).await?;
    }
    Ok(cpu::run(move || {
        store.keep_leaves(usize::try_from(keep).unwrap_or(usize::MAX));
        Arc::new(store)
    })
    .await)
}

/// The one-hot matrix of `rows`: per feature, column (first_f + bin − 1) is 1 for bins ≥ 1.
fn one_hot(x: &BinnedFeatures, rows: &[u32]) -> Matrix {
    let cols: usize = x.bins.iter().map(|&b| b as usize - 1).sum();
    let mut data = vec![0u64; rows.len() * cols];
    for (i, &r) in rows.iter().enumerate() {
        let mut first = i * cols;
        for (col, &b) in x.columns.iter().zip(&x.bins) {
            let bin = col[r as usize] as usize;
            if bin > 0 {
                data[first + bin - 1] = 1;
            }
            first += b as usize - 1;
        }
    }
    Matrix::new(data, rows.len(), cols, 2)
}

/// The use id of tree `t`, node `id`, value `which` (0: g, 1: h); unique per job.
pub(super) fn use_id(t: u32, id: u32, which: u64) -> u64 {
    ((u64::from(t) << 20 | u64::from(id)) << 1) | which
}

/// Positions in the kept list (`pos[r]`, u32::MAX for rows not kept) of `rows`, ascending, with
/// the rows in that order.
pub(super) fn positions(pos: &[u32], rows: &[u32]) -> (Arc<[u32]>, Vec<u32>) {
    let mut pairs: Vec<(u32, u32)> = rows.iter().map(|&r| (pos[r as usize], r)).collect();
    pairs.sort_unstable();
    (pairs.iter().map(|p| p.0).collect(), pairs.iter().map(|p| p.1).collect())
}

/// The kept position of every row (u32::MAX if not kept).
pub(super) fn position_map(rows: usize, kept: &[u32]) -> Vec<u32> {
    let mut pos = vec![u32::MAX; rows];
    for (i, &r) in kept.iter().enumerate() {
        pos[r as usize] = i as u32;
    }
    pos
}

/// A's side of one node: the paired message (g, h interleaved per (row, feature)) and A's
/// shares of every column (g, h).
pub(super) type SenderNode = (Vec<u64>, [Vec<u64>; 2]);

/// A: the backward message and A's shares for one node: one use for g and h together
/// (`backward_pair`: one expansion, the two halves of each 128-bit pad).
pub(super) fn sender_node(
    store: &Arc<OneHotSender>,
    t: u32,
    id: u32,
    at: Arc<[u32]>,
    gh: [Vec<u64>; 2],
) -> Result<SenderNode, MpcError> {
    let [g, h] = gh;
    let (msg, sg, sh) = store.session_rows(use_id(t, id, 0), at).backward_pair(&g, &h)?;
    Ok((msg, [sg, sh]))
}

/// B: its shares of this tree's features' columns (g shares, then h shares) for one node.
pub(super) fn chooser_node(
    store: &Arc<OneHotChooser>,
    t: u32,
    id: u32,
    at: Arc<[u32]>,
    msg: Vec<u64>,
    layout: &ColumnLayout,
    feats: &[u32],
) -> Result<Vec<u64>, MpcError> {
    let mut out = Vec::with_capacity(2 * layout.cols_of(feats));
    let (sg, sh) = store.session_rows(use_id(t, id, 0), at).backward_pair(&msg)?;
    store.recycle(msg);
    for shares in [sg, sh] {
        for &f in feats {
            out.extend_from_slice(&shares[layout.range(f as usize)]);
        }
    }
    Ok(out)
}

/// Where each feature's columns (bins 1..) lie in the backward product.
pub(super) struct ColumnLayout(Layout);

impl ColumnLayout {
    pub(super) fn new(bins: &[u32]) -> Self {
        Self(Layout::new(&bins.iter().map(|&b| b - 1).collect::<Vec<_>>()))
    }

    pub(super) fn range(&self, f: usize) -> std::ops::Range<usize> {
        self.0.range(f)
    }

    pub(super) fn cols_of(&self, feats: &[u32]) -> usize {
        feats.iter().map(|&f| self.range(f as usize).len()).sum()
    }
}

/// Words of B's answer for this tree's features.
pub(super) fn answer_len(layout: &ColumnLayout, feats: &[u32]) -> usize {
    2 * layout.cols_of(feats)
}

/// A: B's histogram of one node (the peer layout, this tree's features filled) from A's shares,
/// B's answer and the node's total; every cell must be a possible sum of at most 2^20 rows.
pub(super) fn reconstruct(
    own: &[Vec<u64>; 2],
    answer: &[u64],
    cols: &ColumnLayout,
    hist_layout: &Layout,
    feats: &[u32],
    total: [i64; 2],
) -> Result<Vec<[i64; 2]>, MpcError> {
    let n = cols.cols_of(feats);
    if answer.len() != 2 * n {
        return Err(violation(format!("a histogram answer of {} words for {}", answer.len(), 2 * n)));
    }
    let max_g = (MAX_ROWS as i64) << GH_FRAC_BITS;
    let max_h = (MAX_ROWS as i64) << (GH_FRAC_BITS - 2);
    let ok = |c: [i64; 2]| c[0].checked_abs().is_some_and(|a| a <= max_g) && (0..=max_h).contains(&c[1]);
    let mut hist = vec![[0i64; 2]; hist_layout.total()];
    let mut at = 0;
    for &f in feats {
        let (src, dst) = (cols.range(f as usize), hist_layout.range(f as usize));
        let mut rest = total;
        for (j, c) in src.clone().enumerate() {
            let cell =
                [own[0][c].wrapping_add(answer[at + j]) as i64, own[1][c].wrapping_add(answer[n + at + j]) as i64];
            if !ok(cell) {
                return Err(violation("a histogram sum is out of range"));
            }
            hist[dst.start + 1 + j] = cell;
            rest = [rest[0].wrapping_sub(cell[0]), rest[1].wrapping_sub(cell[1])];
        }
        if !ok(rest) {
            return Err(violation("a histogram sum is out of range"));
        }
        hist[dst.start] = rest;
        at += src.len();
    }
    Ok(hist)
}

/// Sends A's paired message of one node.
pub(super) async fn send_msgs<C: Channel>(channel: &C, msg: &[u64]) -> Result<(), MpcError> {
    send_u64s(channel, msg).await
}

/// Receives A's paired message of one node (`words` per value: rows × B's features, so 2·words),
/// into one of the store's spare buffers ([`chooser_node`] hands it back).
pub(super) async fn recv_msgs<C: Channel>(
    channel: &C,
    store: &OneHotChooser,
    words: usize,
) -> Result<Vec<u64>, MpcError> {
    let mut msg = store.buffer(2 * words);
    recv_u64s_into(channel, 2 * words, &mut msg).await?;
    Ok(msg)
}
