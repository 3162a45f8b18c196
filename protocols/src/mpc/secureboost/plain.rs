//! The plaintext reference: the same boosting on both parties' binned features side by side, grown
//! node by node with direct histograms (no encryption, no subtraction, no messages). The protocol
//! must produce exactly its trees.
use super::SbConfig;
use super::binning::BinnedFeatures;
use super::split::{Layout, best_split, gradient, histogram, leaf_weight, log_loss, sample_features, sample_rows};
use crate::mpc::Party;

/// A node of the reference's trees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PlainNode {
    Leaf {
        weight: f64,
    },
    /// `party` 0 = A, 1 = B.
    Split {
        party: u8,
        feature: u32,
        bin: u8,
        gain: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlainModel {
    /// Per tree, (node id, node) by ascending id.
    pub trees: Vec<Vec<(u32, PlainNode)>>,
    pub holdout_loss: Vec<f64>,
    pub trees_run: u32,
}

/// Trains on A's and B's binned features of the same rows.
pub fn train(
    a: &BinnedFeatures,
    b: &BinnedFeatures,
    labels: &[u8],
    train: &[u32],
    holdout: &[u32],
    config: &SbConfig,
) -> PlainModel {
    let (la, lb) = (Layout::new(&a.bins), Layout::new(&b.bins));
    let mut margins = vec![0.0; a.rows];
    let (mut trees, mut losses, mut best) = (Vec::new(), Vec::new(), None);
    for t in 0..config.trees {
        let sample = sample_rows(train, config, t);
        let mut gh = vec![[0i64; 2]; a.rows];
        for &r in train {
            gh[r as usize] = gradient(margins[r as usize], labels[r as usize]);
        }
        let feats =
            [sample_features(a.features(), config, t, Party::A), sample_features(b.features(), config, t, Party::B)];
        let mut nodes = Vec::new();
        grow(a, b, &la, &lb, &feats, &gh, 0, sample, 0, config, &mut nodes);
        nodes.sort_by_key(|n| n.0);
        for &r in train.iter().chain(holdout) {
            margins[r as usize] += score_row(&nodes, a, b, r as usize);
        }
        trees.push(nodes);
        if holdout.is_empty() {
            continue;
        }
        let z: Vec<f64> = holdout.iter().map(|&r| margins[r as usize]).collect();
        let y: Vec<u8> = holdout.iter().map(|&r| labels[r as usize]).collect();
        let loss = log_loss(&z, &y);
        let stop = config.tolerance > 0.0 && losses.last().is_some_and(|&p: &f64| p - loss < config.tolerance);
        if losses.iter().all(|&l| loss < l) {
            best = Some(t as usize + 1);
        }
        losses.push(loss);
        if stop {
            break;
        }
    }
    let trees_run = trees.len() as u32;
    if let (true, Some(b)) = (config.tolerance > 0.0, best) {
        trees.truncate(b);
    }
    PlainModel { trees, holdout_loss: losses, trees_run }
}

#[allow(clippy::too_many_arguments)]
fn grow(
    a: &BinnedFeatures,
    b: &BinnedFeatures,
    la: &Layout,
    lb: &Layout,
    feats: &[Vec<u32>; 2],
    gh: &[[i64; 2]],
    id: u32,
    rows: Vec<u32>,
    depth: u32,
    config: &SbConfig,
    out: &mut Vec<(u32, PlainNode)>,
) {
    let total = rows.iter().fold([0, 0], |s, &r| [s[0] + gh[r as usize][0], s[1] + gh[r as usize][1]]);
    let best = if depth < config.max_depth && rows.len() >= 2 {
        let sa = best_split(&histogram(a, la, gh, &rows), la, &feats[0], total, config);
        let sb = best_split(&histogram(b, lb, gh, &rows), lb, &feats[1], total, config);
        match (sa, sb) {
            (Some((f, j, g)), s) if s.is_none_or(|s| s.2 <= g) => Some((0u8, f, j, g)),
            (_, Some((f, j, g))) => Some((1, f, j, g)),
            (_, None) => None,
        }
    } else {
        None
    };
    let Some((party, feature, bin, gain)) = best else {
        out.push((id, PlainNode::Leaf { weight: leaf_weight(total, config) }));
        return;
    };
    let col = if party == 0 { &a.columns[feature as usize] } else { &b.columns[feature as usize] };
    let (l, r): (Vec<u32>, Vec<u32>) = rows.iter().partition(|&&r| col[r as usize] <= bin);
    out.push((id, PlainNode::Split { party, feature, bin, gain }));
    grow(a, b, la, lb, feats, gh, 2 * id + 1, l, depth + 1, config, out);
    grow(a, b, la, lb, feats, gh, 2 * id + 2, r, depth + 1, config, out);
}

/// The leaf weight row `r` reaches in one tree.
pub fn score_row(nodes: &[(u32, PlainNode)], a: &BinnedFeatures, b: &BinnedFeatures, r: usize) -> f64 {
    let mut id = 0;
    loop {
        let i = nodes.binary_search_by_key(&id, |n| n.0).expect("every reached node exists");
        match nodes[i].1 {
            PlainNode::Leaf { weight } => return weight,
            PlainNode::Split { party, feature, bin, .. } => {
                let col = if party == 0 { &a.columns[feature as usize] } else { &b.columns[feature as usize] };
                id = if col[r] <= bin { 2 * id + 1 } else { 2 * id + 2 };
            }
        }
    }
}
