//! Party B (passive: its own features only): the mirror of [`super::active`]; it sums A's
//! ciphertexts into histograms and splits when told to.
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::binning::BinnedFeatures;
use super::ot_hist::{self, ColumnLayout};
use super::setup::{LevelNode, candidates, child_views, histogram_plan, partition, routed_rows};
use super::split::sample_features;
use super::stats::PhaseStats;
use super::wire::{Decision, decode_decisions, pack_bits, unpack_bits};
use super::{Histograms, Node, SbConfig, SbInput, SbOutput, SbProgress, SbTimings, Split, Start, Tree};
use crate::channel::Channel;
use crate::cpu;
use crate::he::{Adder, Ciphertext, KeySize, PublicKey};
use crate::mpc::ot_mul::onehot::OneHotChooser;
use crate::mpc::wire::{recv_bytes, send_bytes, send_u64s};
use crate::mpc::{MpcError, Party, violation};

struct Ctx<'a, C> {
    channel: &'a C,
    config: &'a SbConfig,
    x: Arc<BinnedFeatures>,
    /// A's key (the `he` backend).
    key: Option<Arc<PublicKey>>,
    /// The kept correlations, each row's position in them, the column layout (the `ot` backend).
    ot: Option<(Arc<OneHotChooser>, Vec<u32>, Arc<ColumnLayout>)>,
    tree: u32,
    /// This tree's features (column subsampling).
    feats: Arc<Vec<u32>>,
    timings: SbTimings,
}

pub(super) async fn train<C: Channel>(start: Start<'_, C>, input: SbInput) -> Result<SbOutput, MpcError> {
    let Start { channel, config, progress, begin, peer_bins } = start;
    let x = Arc::new(input.features.clone());
    let (mut key, mut ot, mut timings) = (None, None, SbTimings::default());
    match config.histograms {
        Histograms::He => key = Some(Arc::new(receive_key(channel, config.min_key_bits).await?)),
        Histograms::Ot => {
            let started = Instant::now();
            let kept = ot_hist::kept_rows(&input.train);
            let store = ot_hist::setup_chooser(channel, &x, &kept, config.kept_leaves_bytes).await?;
            let pos = ot_hist::position_map(input.features.rows, &kept);
            ot = Some((store, pos, Arc::new(ColumnLayout::new(&x.bins))));
            timings.setup = started.elapsed().as_secs_f64();
        }
    }
    let mut ctx = Ctx { channel, config, x, key, ot, tree: 0, feats: Arc::new(Vec::new()), timings };
    let (mut trees, mut best, mut stopped_early) = (Vec::new(), None, false);
    let (setup, mut per_tree) = (channel.since(&begin), Vec::<PhaseStats>::new());
    for t in 0..config.trees {
        let mark = channel.mark();
        ctx.feats = Arc::new(sample_features(ctx.x.features(), config, t, Party::B));
        ctx.tree = t;
        trees.push(grow_tree(&mut ctx, &input).await?);
        per_tree.push(channel.since(&mark));
        if input.holdout.is_empty() {
            progress(SbProgress { trees_done: t + 1, trees: config.trees, setup: false, loss: None });
            continue;
        }
        let flag = match recv_bytes(channel, 1).await?[0] {
            f @ 0..=3 => f,
            _ => return Err(violation("bad early-stopping flag")),
        };
        *per_tree.last_mut().expect("pushed") = channel.since(&mark);
        progress(SbProgress { trees_done: t + 1, trees: config.trees, setup: false, loss: None });
        if flag & 2 != 0 {
            best = Some(t + 1);
        }
        if flag & 1 != 0 {
            stopped_early = t + 1 < config.trees;
            break;
        }
    }
    let trees_run = trees.len() as u32;
    if let (true, Some(b)) = (config.tolerance > 0.0, best) {
        trees.truncate(b as usize);
    }
    Ok(SbOutput {
        trees,
        trees_run,
        stopped_early,
        holdout_loss: Vec::new(),
        peer_features: peer_bins.len(),
        timings: ctx.timings,
        setup,
        per_tree,
    })
}

/// A's public key: its size in bits (u16: 2048 or 3072, at least `min_key_bits`, checked
/// before the key is read), then n | G | H ([`PublicKey::from_bytes`]). Also the binning
/// protocol's ([`crate::mpc::binning`]).
pub(crate) async fn receive_key<C: Channel>(channel: &C, min_key_bits: u32) -> Result<PublicKey, MpcError> {
    let head = recv_bytes(channel, 2).await?;
    let bits = u16::from_le_bytes([head[0], head[1]]);
    let size = match bits {
        2048 => KeySize::Bits2048,
        3072 => KeySize::Bits3072,
        _ => return Err(violation(format!("the peer announces a {bits}-bit key (2048 or 3072)"))),
    };
    if u64::from(min_key_bits) > size.bits() {
        return Err(violation(format!("the peer's key has {bits} bits, this party requires {min_key_bits}")));
    }
    let key =
        PublicKey::from_bytes(&recv_bytes(channel, 3 * size.bytes()).await?).map_err(|e| violation(e.to_string()))?;
    if key.size() != size {
        return Err(violation("the peer's key does not have the size it announced"));
    }
    Ok(key)
}

/// Step 1 (receiving), the levels, step 4 (sending).
async fn grow_tree<C: Channel>(ctx: &mut Ctx<'_, C>, input: &SbInput) -> Result<Tree, MpcError> {
    let bits = unpack_bits(&recv_bytes(ctx.channel, input.train.len().div_ceil(8)).await?, input.train.len())?;
    let mut sample: Vec<u32> = input.train.iter().zip(&bits).filter(|x| *x.1).map(|x| *x.0).collect();
    sample.sort_unstable();
    let he = match ctx.key.clone() {
        Some(key) => {
            let w = key.ciphertext_bytes();
            let bytes = recv_bytes(ctx.channel, sample.len() * w).await?;
            let k2 = key.clone();
            let cts: Vec<Ciphertext> =
                cpu::run(move || bytes.par_chunks_exact(w).map(|c| k2.ciphertext(c)).collect::<Result<Vec<_>, _>>())
                    .await
                    .map_err(|e| violation(e.to_string()))?;
            // Position of each sampled row's ciphertext.
            let mut slot = vec![u32::MAX; input.features.rows];
            for (i, &r) in sample.iter().enumerate() {
                slot[r as usize] = i as u32;
            }
            Some((key, Arc::new(cts), Arc::new(slot)))
        }
        None => None,
    };
    let mut nodes = Vec::new();
    // With hidden partitions B never has a node's rows, only its view of them.
    let mut level = vec![match ctx.config.hide_partitions {
        true => LevelNode::hidden(0, Arc::new(sample.clone())),
        false => LevelNode::new(0, sample.clone()),
    }];
    for depth in 0..=ctx.config.max_depth {
        if level.is_empty() {
            break;
        }
        for (computed, _) in histogram_plan(&level, depth, ctx.config) {
            let started = Instant::now();
            let (x, rows, feats) = (ctx.x.clone(), level[computed].view(), ctx.feats.clone());
            match (&he, &ctx.ot) {
                (Some((key, cts, slot)), _) => {
                    let (key, cts, slot, rows) = (key.clone(), cts.clone(), slot.clone(), rows.to_vec());
                    let bytes = cpu::run(move || encrypted_histogram(&x, &feats, &key, &cts, &slot, &rows)).await;
                    ctx.timings.histograms += started.elapsed().as_secs_f64();
                    send_bytes(ctx.channel, &bytes).await?;
                }
                (None, Some((store, pos, cols))) => {
                    let (at, _) = ot_hist::positions(pos, rows);
                    let msgs = ot_hist::recv_msgs(ctx.channel, store, rows.len() * x.features()).await?;
                    let (store, cols, t, id) = (store.clone(), cols.clone(), ctx.tree, level[computed].id);
                    let computing = Instant::now();
                    let answer =
                        cpu::run(move || ot_hist::chooser_node(&store, t, id, at, msgs, &cols, &feats)).await?;
                    ctx.timings.backward += computing.elapsed().as_secs_f64();
                    ctx.timings.histograms += started.elapsed().as_secs_f64();
                    send_u64s(ctx.channel, &answer).await?;
                }
                (None, None) => unreachable!("one backend is set up"),
            }
        }
        level = split_level(ctx, level, depth, &mut nodes).await?;
    }
    let tree = Tree { nodes };
    send_directions(ctx, &tree, &routed_rows(input, &sample)).await?;
    Ok(tree)
}

/// Step 2: per feature and bin, the product of the ciphertexts of `rows` in that bin (1 for an
/// empty bin); as wire bytes, this tree's features and their bins in order.
///
/// Features are summed in pairs where that is cheaper ([`pair_features`]): the joint histogram of
/// a pair (a cell per bin pair) costs one addition per row, and each feature's histogram is then
/// the sum of the joint cells over the other feature, about `rows + cells` additions for two
/// features instead of `2·rows`. rayon over the pairs; sums stay in Montgomery form until written.
pub(super) fn encrypted_histogram(
    x: &BinnedFeatures,
    feats: &[u32],
    key: &PublicKey,
    cts: &[Ciphertext],
    slot: &[u32],
    rows: &[u32],
) -> Vec<u8> {
    grouped_histogram(x, &pair_features(x, feats, rows.len()), key, cts, slot, rows)
}

/// The encrypted histogram of `rows` for the features of `groups` (in order, each group's
/// features consecutive in the output): a group of one feature sums its rows' ciphertexts into
/// its bins; a group of k > 1 features first sums into the joint cells of the group (one addition
/// per row, a mixed-radix cell index), then each feature's bins as sums of the joint cells over
/// the others (k additions per non-empty joint cell). rayon over the groups. `slot[r]` is the
/// index in `cts` of row r's ciphertext. Also the binning protocol's ([`crate::mpc::binning`]).
pub(crate) fn grouped_histogram(
    x: &BinnedFeatures,
    groups: &[Vec<u32>],
    key: &PublicKey,
    cts: &[Ciphertext],
    slot: &[u32],
    rows: &[u32],
) -> Vec<u8> {
    let per_group: Vec<Vec<u8>> = groups
        .par_iter()
        .map(|group| {
            let mut adder = key.adder();
            let cells: Vec<Vec<Option<Ciphertext>>> = match *group.as_slice() {
                [f] => {
                    let (f, col) = (f as usize, &x.columns[f as usize]);
                    let mut cells: Vec<Option<Ciphertext>> = vec![None; x.bins[f] as usize];
                    for &r in rows {
                        accumulate(&mut adder, &mut cells[col[r as usize] as usize], &cts[slot[r as usize] as usize]);
                    }
                    vec![cells]
                }
                _ => {
                    let cols: Vec<&[u8]> = group.iter().map(|&f| x.columns[f as usize].as_slice()).collect();
                    let bins: Vec<usize> = group.iter().map(|&f| x.bins[f as usize] as usize).collect();
                    let mut joint: Vec<Option<Ciphertext>> = vec![None; bins.iter().product()];
                    for &r in rows {
                        let cell = cols.iter().zip(&bins).fold(0, |at, (c, &b)| at * b + c[r as usize] as usize);
                        accumulate(&mut adder, &mut joint[cell], &cts[slot[r as usize] as usize]);
                    }
                    let mut marginals: Vec<Vec<Option<Ciphertext>>> = bins.iter().map(|&b| vec![None; b]).collect();
                    for (cell, sum) in joint.iter().enumerate() {
                        if let Some(sum) = sum {
                            let mut rest = cell;
                            for (m, &b) in marginals.iter_mut().zip(&bins).rev() {
                                accumulate(&mut adder, &mut m[rest % b], sum);
                                rest /= b;
                            }
                        }
                    }
                    marginals
                }
            };
            let mut out = Vec::with_capacity(cells.iter().map(Vec::len).sum::<usize>() * key.ciphertext_bytes());
            for cell in cells.into_iter().flatten() {
                key.ciphertext_to_bytes(&cell.unwrap_or_else(|| key.zero()), &mut out);
            }
            out
        })
        .collect();
    per_group.concat()
}

/// cell ← cell + c (the first term is a copy).
fn accumulate(adder: &mut Adder<'_>, cell: &mut Option<Ciphertext>, c: &Ciphertext) {
    match cell {
        Some(acc) => adder.add_assign(acc, c),
        None => *cell = Some(c.clone()),
    }
}

/// `feats` in order, cut into runs of one or two: two consecutive features are summed jointly when
/// their joint histogram has at most half as many cells as there are rows (then the joint pass
/// costs about `rows + cells` additions, fewer than the `2·rows` of two separate passes).
pub(super) fn pair_features(x: &BinnedFeatures, feats: &[u32], rows: usize) -> Vec<Vec<u32>> {
    let mut groups = Vec::with_capacity(feats.len());
    let mut i = 0;
    while i < feats.len() {
        let pair = feats
            .get(i + 1)
            .is_some_and(|&g| 2 * x.bins[feats[i] as usize] as usize * x.bins[g as usize] as usize <= rows);
        let len = if pair { 2 } else { 1 };
        groups.push(feats[i..i + len].to_vec());
        i += len;
    }
    groups
}

/// Step 3 at B: A's decisions, A's partitions, B's own partitions; the next level.
async fn split_level<C: Channel>(
    ctx: &mut Ctx<'_, C>,
    level: Vec<LevelNode>,
    depth: u32,
    nodes: &mut Vec<Node>,
) -> Result<Vec<LevelNode>, MpcError> {
    let candidates = candidates(&level, depth, ctx.config);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let decisions =
        decode_decisions(&recv_bytes(ctx.channel, candidates.len() * 6).await?, candidates.len(), &ctx.x.bins)?;
    let hidden = ctx.config.hide_partitions;
    // A's partitions of the nodes it splits (none with hidden partitions).
    let a_bits = if hidden {
        Vec::new()
    } else {
        let a_len: usize = candidates
            .iter()
            .zip(&decisions)
            .filter(|x| *x.1 == Decision::SplitA)
            .map(|x| level[*x.0].rows.len().div_ceil(8))
            .sum();
        recv_bytes(ctx.channel, a_len).await?
    };
    let mut own_bits = Vec::new();
    // Per node: split or not, and the flags of its rows (None for A's split with hidden partitions).
    let mut lefts: Vec<Option<Option<Vec<bool>>>> = vec![None; level.len()];
    let mut at = 0;
    for (&i, &d) in candidates.iter().zip(&decisions) {
        let rows = level[i].view();
        lefts[i] = match d {
            Decision::Leaf => None,
            Decision::SplitA if hidden => Some(None),
            Decision::SplitA => {
                let len = rows.len().div_ceil(8);
                let bits = unpack_bits(&a_bits[at..at + len], rows.len())?;
                at += len;
                Some(Some(bits))
            }
            Decision::SplitB { feature, bin } => {
                let col = &ctx.x.columns[feature as usize];
                let bits: Vec<bool> = rows.iter().map(|&r| col[r as usize] <= bin).collect();
                own_bits.extend(pack_bits(bits.iter().copied()));
                nodes.push(Node { id: level[i].id, split: Split::Own { feature, bin }, gain: 0.0 });
                Some(Some(bits))
            }
        };
    }
    if own_bits.is_empty() && decisions.iter().all(|d| !matches!(d, Decision::SplitB { .. })) {
        // Nothing to send: A expects no partition frame.
    } else {
        send_bytes(ctx.channel, &own_bits).await?;
    }
    let mut next = Vec::new();
    for (node, left) in level.into_iter().zip(lefts) {
        let Some(left) = left else { continue };
        let (l, r) = (2 * node.id + 1, 2 * node.id + 2);
        match (&node.known, left) {
            (Some(known), left) => {
                let (kl, kr) = child_views(known, left.as_deref());
                next.extend([LevelNode::hidden(l, kl), LevelNode::hidden(r, kr)]);
            }
            (None, Some(left)) => {
                let (rl, rr) = partition(&node.rows, &left);
                next.extend([LevelNode::new(l, rl), LevelNode::new(r, rr)]);
            }
            (None, None) => unreachable!("A's partition comes unless partitions are hidden"),
        }
    }
    Ok(next)
}

/// Step 4: for each of B's split nodes, the direction of every routed row.
async fn send_directions<C: Channel>(ctx: &Ctx<'_, C>, tree: &Tree, routed: &[u32]) -> Result<(), MpcError> {
    let mut bytes = Vec::new();
    for node in &tree.nodes {
        if let Split::Own { feature, bin } = node.split {
            let col = &ctx.x.columns[feature as usize];
            bytes.extend(pack_bits(routed.iter().map(|&r| col[r as usize] <= bin)));
        }
    }
    send_bytes(ctx.channel, &bytes).await
}
