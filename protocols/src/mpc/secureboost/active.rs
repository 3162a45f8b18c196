//! Party A (active: labels, its own features, the OU key): steps 1–4 of the module docs.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::{StdRng, SysRng};
use rayon::prelude::*;

use super::binning::BinnedFeatures;
use super::ot_hist::{self, ColumnLayout};
use super::setup::{LevelNode, candidates, child_views, histogram_plan, may_split, partition, restrict, routed_rows};
use super::split::{
    Layout, best_split, gradient, histogram, leaf_weight, log_loss, pack, sample_features, sample_rows, subtract,
    unpack,
};
use super::stats::PhaseStats;
use super::wire::{Decision, encode_decisions, pack_bits, unpack_bits};
use super::{Histograms, Node, SbConfig, SbInput, SbOutput, SbProgress, SbTimings, Split, Start, Tree};
use crate::channel::Channel;
use crate::cpu;
use crate::he::{Encryptor, KeyPair};
use crate::mpc::ot_mul::onehot::OneHotSender;
use crate::mpc::wire::{recv_bytes, recv_u64s, send_bytes};
use crate::mpc::{MpcError, Party, violation};

type Hist = Vec<[i64; 2]>;
/// A's own (feature, bin) when A splits a node.
type OwnSplit = Option<(u32, u8)>;
/// A node's index in its level, A's decision and A's own split.
type Chosen = (usize, Decision, OwnSplit);

struct Ctx<'a, C> {
    channel: &'a C,
    config: &'a SbConfig,
    x: &'a BinnedFeatures,
    labels: &'a [u8],
    /// The HE backend's key and encryptor (None with `ot`).
    he: Option<(Arc<KeyPair>, Encryptor)>,
    /// The `ot` backend's kept correlations (None with `he`).
    ot: Option<OtCtx>,
    /// The tree being grown (the `ot` backend's use ids).
    tree: u32,
    own: Layout,
    peer: Layout,
    /// This tree's features of each party (column subsampling).
    own_feats: Vec<u32>,
    peer_feats: Vec<u32>,
    timings: SbTimings,
}

/// The `ot` backend at A: the kept correlations over the training rows (ascending), each row's
/// position in them, and where B's features' columns lie.
struct OtCtx {
    store: Arc<OneHotSender>,
    pos: Vec<u32>,
    cols: ColumnLayout,
}

pub(super) async fn train<C: Channel>(start: Start<'_, C>, input: SbInput) -> Result<SbOutput, MpcError> {
    let Start { channel, config, progress, begin, peer_bins } = start;
    let (mut he, mut ot, mut timings) = (None, None, SbTimings::default());
    match config.histograms {
        Histograms::He => {
            let key = input.key.clone().expect("checked");
            send_bytes(channel, &(key.public.size().bits() as u16).to_le_bytes()).await?;
            send_bytes(channel, &key.public.to_bytes()).await?;
            let holder = key.clone();
            let encryptor = cpu::run(move || Encryptor::for_key_holder(&holder))
                .await
                .map_err(|e| MpcError::Invalid(e.to_string()))?;
            he = Some((key, encryptor));
        }
        Histograms::Ot => {
            let started = Instant::now();
            let kept = ot_hist::kept_rows(&input.train);
            let store = ot_hist::setup_sender(channel, &peer_bins, kept.len(), config.kept_leaves_bytes).await?;
            let pos = ot_hist::position_map(input.features.rows, &kept);
            ot = Some(OtCtx { store, pos, cols: ColumnLayout::new(&peer_bins) });
            timings.setup = started.elapsed().as_secs_f64();
        }
    }
    let mut ctx = Ctx {
        channel,
        config,
        x: &input.features,
        labels: input.labels.as_deref().expect("checked"),
        he,
        ot,
        tree: 0,
        own: Layout::new(&input.features.bins),
        peer: Layout::new(&peer_bins),
        own_feats: Vec::new(),
        peer_feats: Vec::new(),
        timings,
    };
    let mut margins = vec![0.0; input.features.rows];
    let (mut trees, mut losses, mut best) = (Vec::new(), Vec::new(), None);
    let mut stopped_early = false;
    let (setup, mut per_tree) = (channel.since(&begin), Vec::<PhaseStats>::new());
    for t in 0..config.trees {
        let mark = channel.mark();
        let tree = grow_tree(&mut ctx, &input, t, &mut margins).await?;
        trees.push(tree);
        per_tree.push(channel.since(&mark));
        if input.holdout.is_empty() {
            progress(SbProgress { trees_done: t + 1, trees: config.trees, setup: false, loss: None });
            continue;
        }
        let z: Vec<f64> = input.holdout.iter().map(|&r| margins[r as usize]).collect();
        let y: Vec<u8> = input.holdout.iter().map(|&r| ctx.labels[r as usize]).collect();
        let loss = log_loss(&z, &y);
        let stop = config.tolerance > 0.0 && losses.last().is_some_and(|&prev: &f64| prev - loss < config.tolerance);
        let is_best = losses.iter().all(|&l| loss < l);
        losses.push(loss);
        if is_best {
            best = Some(t + 1);
        }
        send_bytes(channel, &[stop as u8 | (is_best as u8) << 1]).await?;
        *per_tree.last_mut().expect("pushed") = channel.since(&mark);
        progress(SbProgress { trees_done: t + 1, trees: config.trees, setup: false, loss: Some(loss) });
        if stop {
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
        holdout_loss: losses,
        peer_features: peer_bins.len(),
        timings: ctx.timings,
        setup,
        per_tree,
    })
}

/// Step 1: the sample and the encrypted, packed gradients; then the levels (steps 2–3) and the
/// margins (step 4).
async fn grow_tree<C: Channel>(
    ctx: &mut Ctx<'_, C>,
    input: &SbInput,
    t: u32,
    margins: &mut [f64],
) -> Result<Tree, MpcError> {
    ctx.tree = t;
    let sample = sample_rows(&input.train, ctx.config, t);
    ctx.own_feats = sample_features(ctx.own.features(), ctx.config, t, Party::A);
    ctx.peer_feats = sample_features(ctx.peer.features(), ctx.config, t, Party::B);
    let mut in_sample = vec![false; input.features.rows];
    for &r in &sample {
        in_sample[r as usize] = true;
    }
    send_bytes(ctx.channel, &pack_bits(input.train.iter().map(|&r| in_sample[r as usize]))).await?;
    let mut gh = vec![[0i64; 2]; input.features.rows];
    for &r in &input.train {
        gh[r as usize] = gradient(margins[r as usize], ctx.labels[r as usize]);
    }
    if let Some((_, encryptor)) = &ctx.he {
        let started = Instant::now();
        let plain: Vec<i128> = sample.iter().map(|&r| pack(gh[r as usize])).collect();
        let encryptor = encryptor.clone();
        let bytes = cpu::run(move || encrypt_all(&encryptor, &plain)).await?;
        ctx.timings.encrypt += started.elapsed().as_secs_f64();
        send_bytes(ctx.channel, &bytes).await?;
    }

    let mut nodes = Vec::new();
    let mut leaves: Vec<(u32, Vec<u32>)> = Vec::new();
    let known = ctx.config.hide_partitions.then(|| Arc::new(sample.clone()));
    let mut level = vec![LevelNode { id: 0, rows: sample, known }];
    let mut parent_hists: HashMap<u32, Hist> = HashMap::new();
    for depth in 0..=ctx.config.max_depth {
        if level.is_empty() {
            break;
        }
        let peer_hists = if ctx.ot.is_some() {
            ot_histograms(ctx, &gh, &level, depth, &parent_hists).await?
        } else {
            peer_histograms(ctx, &level, depth, &parent_hists).await?
        };
        let (next, hists) = split_level(ctx, &gh, level, depth, peer_hists, &mut nodes, &mut leaves).await?;
        level = next;
        parent_hists = hists;
    }
    for (id, rows) in &leaves {
        let total = rows.iter().fold([0, 0], |a, &r| [a[0] + gh[r as usize][0], a[1] + gh[r as usize][1]]);
        nodes.push(Node { id: *id, split: Split::Leaf { weight: leaf_weight(total, ctx.config) }, gain: 0.0 });
    }
    nodes.sort_by_key(|n| n.id);
    let tree = Tree { nodes };
    let routed = routed_rows(input, &leaves_rows(&leaves));
    update_margins(ctx, &tree, &leaves, routed, margins).await?;
    Ok(tree)
}

fn leaves_rows(leaves: &[(u32, Vec<u32>)]) -> Vec<u32> {
    let mut rows: Vec<u32> = leaves.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    rows.sort_unstable();
    rows
}

/// Enc(packed g, h) of every sampled row, as wire bytes (rayon, one OS-seeded generator per chunk).
/// Also the binning protocol's encryption of the labels ([`crate::mpc::binning`]).
pub(crate) fn encrypt_all(encryptor: &Encryptor, plain: &[i128]) -> Result<Vec<u8>, MpcError> {
    let w = encryptor.public().ciphertext_bytes();
    let chunks: Vec<Result<Vec<u8>, MpcError>> = plain
        .par_chunks(256)
        .map(|chunk| {
            let mut rng =
                StdRng::try_from_rng(&mut SysRng).expect("the operating system's random number generator failed");
            let mut out = Vec::with_capacity(chunk.len() * w);
            for &m in chunk {
                encryptor.encrypt_to_bytes(m, &mut rng, &mut out).map_err(|e| MpcError::Overflow(e.to_string()))?;
            }
            Ok(out)
        })
        .collect();
    let mut bytes = Vec::with_capacity(plain.len() * w);
    for c in chunks {
        bytes.extend_from_slice(&c?);
    }
    Ok(bytes)
}

/// Step 2: B's histograms of this level's nodes, decrypted (the computed child) or by subtraction
/// from the parent's (its sibling). None for nodes that may not split.
async fn peer_histograms<C: Channel>(
    ctx: &mut Ctx<'_, C>,
    level: &[LevelNode],
    depth: u32,
    parents: &HashMap<u32, Hist>,
) -> Result<Vec<Option<Hist>>, MpcError> {
    let mut out: Vec<Option<Hist>> = vec![None; level.len()];
    let key = ctx.he.as_ref().expect("the HE backend").0.clone();
    let w = key.public.ciphertext_bytes();
    for (computed, sibling) in histogram_plan(level, depth, ctx.config) {
        let cells: usize = ctx.peer_feats.iter().map(|&f| ctx.peer.range(f as usize).len()).sum();
        let bytes = recv_bytes(ctx.channel, cells * w).await?;
        let started = Instant::now();
        let key = key.clone();
        let sent = cpu::run(move || decrypt_histogram(&key, &bytes)).await?;
        ctx.timings.decrypt += started.elapsed().as_secs_f64();
        // B sends this tree's features only; the others stay empty (never considered).
        let mut hist = vec![[0i64; 2]; ctx.peer.total()];
        let mut at = 0;
        for &f in &ctx.peer_feats {
            let range = ctx.peer.range(f as usize);
            hist[range.clone()].copy_from_slice(&sent[at..at + range.len()]);
            at += range.len();
        }
        if let Some(s) = sibling {
            let parent = parents.get(&((level[computed].id - 1) / 2)).expect("a split parent's histogram is kept");
            out[s] = Some(subtract(parent, &hist));
        }
        out[computed] = Some(hist);
    }
    Ok(out)
}

/// Step 2 with the `ot` backend: per computed node, A sends the two backward messages (g, h) and
/// B answers with its shares; A sends every node's messages while it receives the answers (B
/// computes one node while A prepares the next). Siblings by subtraction, as with HE.
async fn ot_histograms<C: Channel>(
    ctx: &mut Ctx<'_, C>,
    gh: &[[i64; 2]],
    level: &[LevelNode],
    depth: u32,
    parents: &HashMap<u32, Hist>,
) -> Result<Vec<Option<Hist>>, MpcError> {
    let plan = histogram_plan(level, depth, ctx.config);
    let ot = ctx.ot.as_ref().expect("the ot backend");
    let (channel, t) = (ctx.channel, ctx.tree);
    let answer_len = ot_hist::answer_len(&ot.cols, &ctx.peer_feats);
    let started = Instant::now();
    let mut backward = 0.0;
    let send = async {
        let mut own = Vec::with_capacity(plan.len());
        for &(computed, _) in &plan {
            let node = &level[computed];
            let (at, rows) = ot_hist::positions(&ot.pos, node.view());
            let y = node_values(gh, &rows, node.known.as_ref().map(|_| node.rows.as_slice()));
            let (store, id) = (ot.store.clone(), level[computed].id);
            let computing = Instant::now();
            let (msgs, shares) = cpu::run(move || ot_hist::sender_node(&store, t, id, at, y)).await?;
            backward += computing.elapsed().as_secs_f64();
            ot_hist::send_msgs(channel, &msgs).await?;
            ot.store.recycle(msgs);
            own.push(shares);
        }
        Ok::<_, MpcError>(own)
    };
    let recv = async {
        let mut answers = Vec::with_capacity(plan.len());
        for _ in &plan {
            answers.push(recv_u64s(channel, answer_len).await?);
        }
        Ok::<_, MpcError>(answers)
    };
    let (own, answers) = futures::join!(send, recv);
    let (own, answers) = (own?, answers?);
    ctx.timings.histograms += started.elapsed().as_secs_f64();
    ctx.timings.backward += backward;
    let mut out: Vec<Option<Hist>> = vec![None; level.len()];
    for ((&(computed, sibling), own), answer) in plan.iter().zip(&own).zip(&answers) {
        let rows = &level[computed].rows;
        let total = rows.iter().fold([0, 0], |a, &r| [a[0] + gh[r as usize][0], a[1] + gh[r as usize][1]]);
        let hist = ot_hist::reconstruct(own, answer, &ot.cols, &ctx.peer, &ctx.peer_feats, total)?;
        if let Some(s) = sibling {
            let parent = parents.get(&((level[computed].id - 1) / 2)).expect("a split parent's histogram is kept");
            out[s] = Some(subtract(parent, &hist));
        }
        out[computed] = Some(hist);
    }
    Ok(out)
}

/// The (g, h) the backward use of a node carries for each of `rows` (ascending): each row's own,
/// or, when partitions are hidden (`rows` is B's superset of the node), 0 for the rows outside
/// the node's `members` (ascending), so that B's sums over the superset are the node's.
fn node_values(gh: &[[i64; 2]], rows: &[u32], members: Option<&[u32]>) -> [Vec<u64>; 2] {
    let Some(members) = members else {
        return [0, 1].map(|k| rows.iter().map(|&r| gh[r as usize][k] as u64).collect());
    };
    let mut out = [Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len())];
    let mut next = members.iter().peekable();
    for &r in rows {
        let member = next.next_if_eq(&&r).is_some();
        for (k, v) in out.iter_mut().enumerate() {
            v.push(if member { gh[r as usize][k] as u64 } else { 0 });
        }
    }
    out
}

fn decrypt_histogram(key: &KeyPair, bytes: &[u8]) -> Result<Hist, MpcError> {
    let w = key.public.ciphertext_bytes();
    bytes
        .par_chunks_exact(w)
        .map(|c| {
            let c = key.public.ciphertext(c).map_err(|e| violation(e.to_string()))?;
            let m = key.secret.decrypt(&c).map_err(|e| violation(format!("a histogram sum: {e}")))?;
            unpack(m)
        })
        .collect()
}

/// Step 3: A's decisions for the level's nodes, the partitions, and the next level.
async fn split_level<C: Channel>(
    ctx: &mut Ctx<'_, C>,
    gh: &[[i64; 2]],
    level: Vec<LevelNode>,
    depth: u32,
    mut peer_hists: Vec<Option<Hist>>,
    nodes: &mut Vec<Node>,
    leaves: &mut Vec<(u32, Vec<u32>)>,
) -> Result<(Vec<LevelNode>, HashMap<u32, Hist>), MpcError> {
    let mut decisions = Vec::new();
    let mut own_bits = Vec::new();
    // (index in the level, decision, A's own (feature, bin) when A splits)
    let mut chosen: Vec<Chosen> = Vec::new();
    for i in candidates(&level, depth, ctx.config) {
        let node = &level[i];
        if !may_split(node, depth, ctx.config) {
            // Hidden partitions only: B expects a decision for every node it cannot count.
            decisions.push(Decision::Leaf);
            chosen.push((i, Decision::Leaf, None));
            continue;
        }
        let total = node.rows.iter().fold([0, 0], |a, &r| [a[0] + gh[r as usize][0], a[1] + gh[r as usize][1]]);
        let own_hist = histogram(ctx.x, &ctx.own, gh, &node.rows);
        let own = best_split(&own_hist, &ctx.own, &ctx.own_feats, total, ctx.config);
        let peer_hist = peer_hists[i].as_ref().expect("a node that may split has B's histogram");
        let peer = best_split(peer_hist, &ctx.peer, &ctx.peer_feats, total, ctx.config);
        let (decision, gain) = match (own, peer) {
            (Some((f, b, g)), p) if p.is_none_or(|p| p.2 <= g) => {
                if !ctx.config.hide_partitions {
                    let col = &ctx.x.columns[f as usize];
                    own_bits.extend(pack_bits(node.rows.iter().map(|&r| col[r as usize] <= b)));
                }
                (Decision::SplitA, g)
            }
            (_, Some((f, b, g))) => (Decision::SplitB { feature: f, bin: b }, g),
            (_, None) => (Decision::Leaf, 0.0),
        };
        decisions.push(decision);
        let own_split = own.filter(|_| decision == Decision::SplitA).map(|(f, b, _)| (f, b));
        match (decision, own_split) {
            (Decision::SplitA, Some((feature, bin))) => {
                nodes.push(Node { id: node.id, split: Split::Own { feature, bin }, gain })
            }
            (Decision::SplitB { feature, bin }, _) => {
                nodes.push(Node { id: node.id, split: Split::Peer { feature, bin }, gain })
            }
            _ => {}
        }
        chosen.push((i, decision, own_split));
    }
    if !decisions.is_empty() {
        send_bytes(ctx.channel, &encode_decisions(&decisions)).await?;
        if !ctx.config.hide_partitions {
            send_bytes(ctx.channel, &own_bits).await?;
        }
    }
    let peer_len: usize = chosen
        .iter()
        .filter(|c| matches!(c.1, Decision::SplitB { .. }))
        .map(|c| level[c.0].view().len().div_ceil(8))
        .sum();
    let peer_bits = if peer_len > 0 { recv_bytes(ctx.channel, peer_len).await? } else { Vec::new() };
    next_level(ctx, gh, level, &chosen, &peer_bits, &mut peer_hists, leaves)
}

/// The children of the level's split nodes (B's partitions checked against its histograms) and the
/// B-histograms of the split nodes, kept for the children's subtraction.
#[allow(clippy::too_many_arguments)]
fn next_level<C>(
    ctx: &Ctx<'_, C>,
    gh: &[[i64; 2]],
    level: Vec<LevelNode>,
    chosen: &[Chosen],
    peer_bits: &[u8],
    peer_hists: &mut [Option<Hist>],
    leaves: &mut Vec<(u32, Vec<u32>)>,
) -> Result<(Vec<LevelNode>, HashMap<u32, Hist>), MpcError> {
    let mut decision_of: Vec<Option<(Decision, OwnSplit)>> = vec![None; level.len()];
    for &(i, d, own) in chosen {
        decision_of[i] = Some((d, own));
    }
    let (mut next, mut kept, mut at) = (Vec::new(), HashMap::new(), 0usize);
    for (i, node) in level.into_iter().enumerate() {
        // B's partition of its view of the node (B's splits only).
        let mut peer_view_bits = None;
        let left: Vec<bool> = match decision_of[i] {
            None | Some((Decision::Leaf, _)) => {
                leaves.push((node.id, node.rows));
                continue;
            }
            Some((Decision::SplitA, own)) => {
                let (f, b) = own.expect("A's split is recorded with its decision");
                let col = &ctx.x.columns[f as usize];
                node.rows.iter().map(|&r| col[r as usize] <= b).collect()
            }
            Some((Decision::SplitB { feature, bin }, _)) => {
                let view = node.view();
                let len = view.len().div_ceil(8);
                let bits = unpack_bits(&peer_bits[at..at + len], view.len())?;
                at += len;
                let bits = match &node.known {
                    Some(_) => restrict(view, peer_view_bits.insert(bits), &node.rows)?,
                    None => bits,
                };
                let hist = peer_hists[i].as_ref().expect("kept");
                check_partition(gh, &node.rows, &bits, &hist[ctx.peer.range(feature as usize)], bin)?;
                bits
            }
        };
        let (l, r) = partition(&node.rows, &left);
        if let Some(h) = peer_hists[i].take() {
            kept.insert(node.id, h);
        }
        let (kl, kr) = match &node.known {
            Some(known) => {
                let (kl, kr) = child_views(known, peer_view_bits.as_deref());
                (Some(kl), Some(kr))
            }
            None => (None, None),
        };
        next.push(LevelNode { id: 2 * node.id + 1, rows: l, known: kl });
        next.push(LevelNode { id: 2 * node.id + 2, rows: r, known: kr });
    }
    Ok((next, kept))
}

/// B's partition must agree with the histogram B sent: the (ΣG, ΣH) of the rows it sends left is
/// the sum of the histogram's bins 0..=bin of the chosen feature.
fn check_partition(gh: &[[i64; 2]], rows: &[u32], left: &[bool], cells: &[[i64; 2]], bin: u8) -> Result<(), MpcError> {
    let claimed = rows
        .iter()
        .zip(left)
        .filter(|x| *x.1)
        .fold([0i64, 0], |a, (&r, _)| [a[0] + gh[r as usize][0], a[1] + gh[r as usize][1]]);
    let expected = cells[..=bin as usize].iter().fold([0i64, 0], |a, c| [a[0] + c[0], a[1] + c[1]]);
    if claimed != expected {
        return Err(violation("the peer's partition does not match its histogram"));
    }
    Ok(())
}

/// Step 4: B's directions for the routed rows, then every training and holdout row's margin.
async fn update_margins<C: Channel>(
    ctx: &Ctx<'_, C>,
    tree: &Tree,
    leaves: &[(u32, Vec<u32>)],
    routed: Vec<u32>,
    margins: &mut [f64],
) -> Result<(), MpcError> {
    let weight: HashMap<u32, f64> = tree
        .nodes
        .iter()
        .filter_map(|n| match n.split {
            Split::Leaf { weight } => Some((n.id, weight)),
            _ => None,
        })
        .collect();
    for (id, rows) in leaves {
        for &r in rows {
            margins[r as usize] += weight[id];
        }
    }
    let peer_nodes: Vec<u32> =
        tree.nodes.iter().filter(|n| matches!(n.split, Split::Peer { .. })).map(|n| n.id).collect();
    let per_node = routed.len().div_ceil(8);
    let bytes = recv_bytes(ctx.channel, per_node * peer_nodes.len()).await?;
    let mut directions: HashMap<u32, Vec<bool>> = HashMap::new();
    for (k, &id) in peer_nodes.iter().enumerate() {
        directions.insert(id, unpack_bits(&bytes[k * per_node..(k + 1) * per_node], routed.len())?);
    }
    for (pos, &r) in routed.iter().enumerate() {
        margins[r as usize] += walk(tree, |id, split| match split {
            Split::Own { feature, bin } => ctx.x.columns[feature as usize][r as usize] <= bin,
            _ => directions[&id][pos],
        });
    }
    Ok(())
}

/// The leaf weight a row reaches, `left(id, split)` saying where it goes at each split node.
pub(super) fn walk(tree: &Tree, mut left: impl FnMut(u32, Split) -> bool) -> f64 {
    let mut id = 0u32;
    loop {
        let Ok(i) = tree.nodes.binary_search_by_key(&id, |n| n.id) else { return 0.0 };
        match tree.nodes[i].split {
            Split::Leaf { weight } => return weight,
            split => id = if left(id, split) { 2 * id + 1 } else { 2 * id + 2 },
        }
    }
}
