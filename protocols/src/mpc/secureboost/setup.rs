//! What both roles do the same way: input checks, the digest of what they must agree on, and the
//! bookkeeping of a tree's levels (instance sets, which child's histogram is computed).
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::split::MAX_ROWS;
use super::{Histograms, SbConfig, SbInput};
use crate::mpc::{MpcError, Party};

pub(super) fn check_input(input: &SbInput, config: &SbConfig) -> Result<(), MpcError> {
    let rows = input.features.rows;
    if rows > MAX_ROWS {
        return Err(MpcError::Invalid(format!("{rows} rows: at most {MAX_ROWS}")));
    }
    input.features.check(config.max_bins).map_err(MpcError::Invalid)?;
    if let Some(&bad) = input.train.iter().chain(&input.holdout).find(|&&r| r as usize >= rows) {
        return Err(MpcError::Invalid(format!("row {bad} is out of range ({rows} rows)")));
    }
    if input.train.is_empty() {
        return Err(MpcError::Invalid("no training rows".into()));
    }
    let mut seen = vec![false; rows];
    for &r in input.train.iter().chain(&input.holdout) {
        if std::mem::replace(&mut seen[r as usize], true) {
            return Err(MpcError::Invalid(format!("row {r} is listed twice")));
        }
    }
    match (input.party, &input.labels, &input.key) {
        (Party::A, Some(y), key) if key.is_some() || config.histograms == Histograms::Ot => {
            if y.len() == rows && y.iter().all(|&v| v <= 1) {
                Ok(())
            } else {
                Err(MpcError::Invalid("labels must be one 0/1 value per row".into()))
            }
        }
        (Party::A, _, _) => Err(MpcError::Invalid("party A must provide labels and a key".into())),
        (Party::B, None, None) => Ok(()),
        (Party::B, _, _) => Err(MpcError::Invalid("party B holds no labels and no key".into())),
    }
}

/// Digest of the parameters, the row count and the row lists.
pub(super) fn digest(input: &SbInput, config: &SbConfig) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"consort/secureboost/v1");
    config.digest(&mut h);
    h.update((input.features.rows as u64).to_le_bytes());
    for list in [&input.train, &input.holdout] {
        h.update((list.len() as u64).to_le_bytes());
        for r in list.iter() {
            h.update(r.to_le_bytes());
        }
    }
    h.finalize().into()
}

/// A node of the level being grown: its id, its rows (ascending; empty at B when partitions are
/// hidden: B does not know them) and, when partitions are hidden, B's view of them: the rows of
/// the nearest ancestor B knows (the sample, split only by B's own splits), shared by siblings.
pub(super) struct LevelNode {
    pub id: u32,
    pub rows: Vec<u32>,
    pub known: Option<Arc<Vec<u32>>>,
}

impl LevelNode {
    pub fn new(id: u32, rows: Vec<u32>) -> Self {
        Self { id, rows, known: None }
    }

    /// B's node when partitions are hidden: no rows, only B's view of them.
    pub fn hidden(id: u32, known: Arc<Vec<u32>>) -> Self {
        Self { id, rows: Vec::new(), known: Some(known) }
    }

    /// The rows B's histogram of this node runs over: its superset when partitions are hidden,
    /// else its rows.
    pub fn view(&self) -> &[u32] {
        self.known.as_deref().map_or(&self.rows, Vec::as_slice)
    }
}

/// A node may split if it is above the maximum depth and has two rows or more.
pub(super) fn may_split(node: &LevelNode, depth: u32, config: &SbConfig) -> bool {
    depth < config.max_depth && node.rows.len() >= 2
}

/// The nodes of a level A decides on (and sends a decision for): those that may split, or, when
/// partitions are hidden (B cannot count rows), every node above the maximum depth — A's
/// decision for one with fewer than two rows is then a leaf.
pub(super) fn candidates(level: &[LevelNode], depth: u32, config: &SbConfig) -> Vec<usize> {
    if config.hide_partitions {
        return if depth < config.max_depth { (0..level.len()).collect() } else { Vec::new() };
    }
    (0..level.len()).filter(|&i| may_split(&level[i], depth, config)).collect()
}

/// Which histograms B computes at a level: for the root, the root; for each sibling pair (in id
/// order) of which at least one may split, the child with fewer rows (the left one on a tie). Each
/// entry is (index in the level of the computed child, index of its sibling or None for the root).
/// When partitions are hidden the plan uses no row count (B has none; a use costs B's superset
/// either way): every left child of a level above the maximum depth.
pub(super) fn histogram_plan(level: &[LevelNode], depth: u32, config: &SbConfig) -> Vec<(usize, Option<usize>)> {
    if config.hide_partitions {
        return match (depth < config.max_depth, depth) {
            (false, _) => vec![],
            (true, 0) => vec![(0, None)],
            (true, _) => (0..level.len()).step_by(2).map(|i| (i, Some(i + 1))).collect(),
        };
    }
    if depth == 0 {
        return if may_split(&level[0], depth, config) { vec![(0, None)] } else { vec![] };
    }
    (0..level.len())
        .step_by(2)
        .filter(|&i| may_split(&level[i], depth, config) || may_split(&level[i + 1], depth, config))
        .map(|i| if level[i].rows.len() <= level[i + 1].rows.len() { (i, Some(i + 1)) } else { (i + 1, Some(i)) })
        .collect()
}

/// Rows whose direction B reports after a tree: training rows the tree did not sample and the
/// holdout rows, ascending.
pub(super) fn routed_rows(input: &SbInput, sample: &[u32]) -> Vec<u32> {
    let mut in_sample = vec![false; input.features.rows];
    for &r in sample {
        in_sample[r as usize] = true;
    }
    let mut rows: Vec<u32> = input.train.iter().copied().filter(|&r| !in_sample[r as usize]).collect();
    rows.extend_from_slice(&input.holdout);
    rows.sort_unstable();
    rows
}

/// Splits `rows` by `left` (one flag per row).
pub(super) fn partition(rows: &[u32], left: &[bool]) -> (Vec<u32>, Vec<u32>) {
    let (mut l, mut r) = (Vec::new(), Vec::new());
    for (&row, &goes_left) in rows.iter().zip(left) {
        if goes_left { l.push(row) } else { r.push(row) }
    }
    (l, r)
}

/// The children's views of a split node when partitions are hidden: A's split leaves B's view
/// as it is (both children share it); B's own split (`left`: one flag per row of the view) splits it.
pub(super) fn child_views(known: &Arc<Vec<u32>>, left: Option<&[bool]>) -> (Arc<Vec<u32>>, Arc<Vec<u32>>) {
    match left {
        None => (known.clone(), known.clone()),
        Some(left) => {
            let (l, r) = partition(known, left);
            (Arc::new(l), Arc::new(r))
        }
    }
}

/// `bits` (one per row of the ascending `view`) restricted to `rows` (an ascending subset of it).
pub(super) fn restrict(view: &[u32], bits: &[bool], rows: &[u32]) -> Result<Vec<bool>, MpcError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for &r in rows {
        while at < view.len() && view[at] < r {
            at += 1;
        }
        if at == view.len() || view[at] != r {
            return Err(MpcError::Invalid("a node's rows are not within B's view of them".into()));
        }
        out.push(bits[at]);
    }
    Ok(out)
}
