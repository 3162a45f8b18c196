//! Vertical SecureBoost (Cheng et al., "SecureBoost: A Lossless Federated Learning Framework",
//! IEEE Intelligent Systems 2021; SecretFlow's SGB as the engineering reference): gradient-boosted
//! decision trees for binary classification over rows aligned by PSI, two parties, no third party.
//!
//! # Setting
//!
//! Party A (active) holds the labels and some features, party B (passive) other features of the
//! same rows (row i is the same entity on both sides). Each party bins its own features locally
//! ([`FeatureBins`]: quantile bins, missing values in their own bin 0, below every value).
//!
//! # What it computes
//!
//! XGBoost-style boosting on the log-loss (binary classification only), exactly as the plaintext
//! reference [`plain::train`] does on the two parties' binned features side by side: per tree, A
//! computes g = σ(z) − y, h = σ(z)(1 − σ(z)) at the current margins, in fixed point with 32
//! fraction bits ([`gradient`]); nodes grow level by level to `max_depth`; a node with at least two
//! rows takes the split "bin ≤ j goes left" of largest gain
//! ½[G_L²/(H_L+λ) + G_R²/(H_R+λ) − G²/(H+λ)] − γ with both H ≥ `min_child_weight` and gain > 0
//! ([`best_split`]: ties keep A's split, then the lower feature, then the lower bin); leaves get
//! −η·G/(H + λ). Integer sums are exact, so the trees are the reference's, bit for bit.
//!
//! Per tree (steps of Cheng et al., Algorithms 1–2):
//!
//! 0. A sends its OU public key: the size (u16: 2048 or 3072 bits, A's choice), then n, G, H.
//!    Both draw the features each party's tree considers (`colsample`, seeded by the agreed seed:
//!    A must know which of B's histograms come; B learns which of A's features are eligible).
//! 1. A → B: the rows the tree samples (a bit per training row, `subsample`), then Enc(g_i +
//!    h_i·2^56) for each sampled row — gradient and hessian packed in one OU plaintext ([`pack`]:
//!    headroom for 2^20 rows), encrypted with fixed-base tables ([`crate::he`]).
//! 2. Per level, B → A: for each pair of sibling nodes (the root alone at level 0), the encrypted
//!    histogram of the child with fewer rows: per feature and bin, the product of the ciphertexts
//!    of its rows (an empty bin is sent as 1). B sums two features at once where that is cheaper:
//!    the joint histogram of the pair (one addition per row), then each feature's bins as sums of
//!    joint cells — about rows + cells additions instead of 2·rows, when the pair has at most
//!    rows/2 cells; rayon over the (pairs of) features; sums stay in Montgomery form
//!    ([`crate::he`]) until written. A decrypts, unpacks and gets the sibling's histogram by
//!    subtraction from the parent's, in plaintext.
//! 3. A → B: per node that may split, its decision — leaf, "A splits" or "B's feature k, bin j"
//!    — and for A's splits the partition of the node's rows (a bit each). B → A: the partitions
//!    of its own splits; A checks each against the histogram it decrypted (the left side's
//!    (ΣG, ΣH) must be the histogram's prefix sum). B keeps its threshold.
//! 4. After the tree, B → A: for each of its split nodes, the direction of every training row the
//!    tree did not sample and of every holdout row (a bit each), so A can update all margins.
//!    With holdout rows A computes the holdout log-loss and sends one flag byte (stop; best so
//!    far), as the LR protocol does: with `tolerance` > 0 both keep the trees up to the best loss.
//!
//! ## Histogram backends
//!
//! Steps 0–2 above are the `he` backend ([`Histograms::He`]). The default `ot` backend
//! ([`Histograms::Ot`], module `ot_hist`) replaces them; steps 3–4, prediction and the model files
//! are the same, and the trees are identical (both give A the exact integer sums):
//!
//! 0. Once per job, after the hello: IKNP (KOS consistency check; B is the OT receiver) and the
//!    kept one-hot correlations of [`crate::mpc::ot_mul::onehot`] over the training rows in
//!    ascending order — A is the sender, B the chooser of its bins as one-hot groups (feature f
//!    is a group of `bins_f − 1` columns; bin 0 is the group's reference leaf). No OU key.
//! 1. A → B: the sample bits only.
//! 2. Per level, per computed node N (the same plan as above): one paired use of the kept
//!    correlations over N's rows, unique use id (tree·2^20 + node id)·2 (g and h from one
//!    expansion, the halves of each 128-bit pad). A sends the paired backward message (16 bytes
//!    per (row of N, B feature), y = g and h as u64); B
//!    answers with its additive shares (mod 2^64) of this tree's features' columns (8 bytes per
//!    (feature, bin ≥ 1) each for g and h). A adds its own shares: ΣG and ΣH per (feature,
//!    bin ≥ 1), exact as i64 (|ΣG| ≤ 2^52, 0 ≤ ΣH ≤ 2^50 over ≤ [`MAX_ROWS`] rows; a cell
//!    outside is an error), bin 0 as the node's total minus the rest. A sends every node's
//!    messages of a level while it receives the answers, so B's work on one node overlaps A's on
//!    the next.
//!
//! Kept memory: A 16 bytes per (training row, B feature); B ⌈log₂ bins⌉·16 + 1 bytes. Setup
//! traffic ⌈log₂ bins⌉ random OTs (16 bytes) and 32 bytes of level sums per (training row, B
//! feature); per tree 16 bytes per (row of a computed node, B feature) A → B, 16 bytes per
//! (computed node, B cell) B → A.
//!
//! ## Hidden partitions (`hide_partitions`, the privacy-enhanced mode; `ot` only)
//!
//! In the standard mode B knows every node's rows, because A sends the partition of each of its
//! splits (step 3). With `hide_partitions` (agreed, in the digest) A never sends them. B's view of
//! a node is then the rows of its nearest ancestor reached through B's own splits only: the sample
//! at the root; both children of A's split keep their parent's view; B's split divides its view
//! by B's threshold (B sends that partition of its view, which A restricts to the node's rows and
//! checks against the histogram as before). Each computed node's backward use runs over B's view,
//! A putting g = h = 0 in place of the rows outside the node — masked like every other word, so B
//! cannot tell them apart — and the sums are the node's. Without row counts B cannot plan by size,
//! so the computed child of each pair is the left one, and A sends a decision for every node above
//! the maximum depth (a leaf for one with fewer than two rows). The trees, messages' meaning and
//! A's view are unchanged; the cost: a use costs B's view instead of the node's rows (at depth 5
//! with only A's splits, 16 uses over the whole sample per tree instead of about 2).
//!
//! Prediction ([`predict`]): B sends, per split node of its own, the direction of every row; A
//! walks the trees and adds the leaf weights.
//!
//! # What each party learns
//!
//! - Both: the row count, the training and holdout rows, the hyper-parameters, the other's feature
//!   count and bins per feature, every tree's shape (which nodes split, and which party's split
//!   each is) and, in the standard mode, the instance set of every node: B computes histograms
//!   for nodes split by A, so A's partitions are revealed to B, as in the original SecureBoost.
//!   With hidden partitions B learns no node's instance set beyond its own view (the sample split
//!   by its own thresholds) — A's partitions, node sizes and which rows reach which leaf stay A's;
//!   B still learns every decision (leaf, A's split, its own split with feature and bin), so the
//!   tree's shape and that a node is a leaf (no gain, or fewer than two rows).
//! - A: for every node, B's per-(feature, bin) sums of g and h (the decrypted histograms — for a
//!   bin with few rows, A can sometimes tell which of its rows they are by their gradients, a
//!   known SecureBoost leakage); which of B's (feature, bin) splits are chosen, the partitions
//!   they induce, and the direction of B's splits for unsampled and holdout rows (and, in
//!   prediction, for the rows scored). Not B's feature values or thresholds.
//! - B: the instance sets above (its views with hidden partitions), its own chosen splits, the number of trees and the early-stopping
//!   flags. Nothing about labels, gradients, margins or leaf weights: with `he` it sees only OU
//!   ciphertexts under A's key (IND-CPA, [`crate::he`]); with `ot` only the backward messages,
//!   each word masked by a TCCR pad under a tweak used once (the use id, row, feature), which B
//!   cannot compute for its own bin ([`crate::mpc::ot_mul::onehot`]: the punctured leaf).
//! - The two backends leak the same: A learns the same per-node histograms (exact sums either
//!   way), B the same instance sets; `ot` adds the setup's OT messages, which reveal nothing about
//!   B's bins to A (B's choice bits are masked by IKNP) nor about g, h to B.
//!
//! # Security model
//!
//! Semi-honest for privacy. A pinned peer is authenticated, not trusted: every size a peer's
//! message could announce is checked before a buffer is sized (feature and bin counts against
//! [`MAX_PEER_FEATURES`], [`MAX_PEER_CELLS`] and `max_bins`; everything else has a length both
//! parties derive from agreed state — rows, instance sets, bins — and frames of another length are
//! errors), ciphertexts must lie in [1, n), the public key's announced size must be 2048 or 3072
//! bits and at least B's `min_key_bits` (checked before the key is read), its modulus of that size
//! and its generators in range, decisions name an existing feature and a bin that leaves rows on the
//! right, bit vectors have zero padding, decrypted sums must fit the packing bounds: a malformed
//! message is an [`MpcError`], never a panic; with `ot`, B's answers must have exactly one word
//! per (this tree's feature, bin ≥ 1) and value, and every reconstructed cell (bin 0 included)
//! must be a possible sum. What a malicious peer can still do: B can return wrong histograms
//! (with `ot`: wrong shares, which only change A's reconstructed cells) or partitions consistent
//! with them (a worse model, or steering which rows share leaves); A's check of B's partitions
//! against the histograms stays. A can send ciphertexts (`he`) or backward messages (`ot`) of
//! any values instead of g and h, choose its splits and samples freely, and learn B's split
//! directions for any rows it asks to have scored. In particular a malicious A that puts
//! distinct powers of two in place of g, h learns from one node's histogram which bin of each
//! B feature up to about 128 of the node's rows fall in (`ot`: two 64-bit words per cell; `he`: the
//! ~2^126 plaintext range), i.e. B's binned values, not only the splits — in both backends, as in
//! the original SecureBoost, whose privacy assumes a semi-honest A. With `ot` a malicious B gains
//! nothing from the setup beyond KOS's bounded leakage on A's Δ; a wrong derandomization bit only
//! changes which leaf B cannot open (wrong shares, caught as above or a worse model).

use std::sync::Arc;

use crate::he::KeyPair;
use crate::mpc::Party;

pub(crate) mod active;
mod binning;
mod config;
mod ot_hist;
pub(crate) mod passive;
pub mod plain;
mod predict;
mod setup;
mod split;
mod stats;
mod wire;

pub use binning::{BinnedFeatures, FeatureBins};
pub use config::{Histograms, MAX_BINS, MAX_DEPTH, MAX_TREES, SbConfig};
pub use predict::predict;
pub use split::{
    GH_FRAC_BITS, Layout, MAX_ROWS, SLOT_BITS, best_split, gradient, leaf_weight, log_loss, pack, quantize,
    sample_features, sample_rows, unpack,
};
pub use stats::PhaseStats;
pub use wire::{MAX_PEER_CELLS, MAX_PEER_FEATURES};

/// One party's inputs.
pub struct SbInput {
    pub party: Party,
    /// This party's binned features of every aligned row.
    pub features: BinnedFeatures,
    /// Labels (A only), one 0/1 per row.
    pub labels: Option<Vec<u8>>,
    /// Training rows (ascending or not; the same on both sides).
    pub train: Vec<u32>,
    /// Holdout rows (the same on both sides; may be empty).
    pub holdout: Vec<u32>,
    /// A's OU key pair (A only; [`KeyPair::generate`]).
    pub key: Option<Arc<KeyPair>>,
}

/// What a node of a tree is, from one party's point of view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Split {
    /// A leaf and its weight (A only).
    Leaf { weight: f64 },
    /// A split on this party's feature: rows whose bin is ≤ `bin` go left.
    Own { feature: u32, bin: u8 },
    /// A split on the peer's feature (A's reference to one of B's nodes): B's feature index and
    /// bin, which A chose from B's histograms — opaque to A (no name, no threshold).
    Peer { feature: u32, bin: u8 },
}

/// One node: its heap position (root 0, children of i at 2i + 1 and 2i + 2), what it is, and
/// the split's gain (A only; 0 for leaves and in B's trees).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    pub id: u32,
    pub split: Split,
    pub gain: f64,
}

/// One tree, nodes by ascending id. A's trees hold every node; B's only its own splits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Wall time of the protocol's costly parts, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SbTimings {
    /// A: encrypting gradients.
    pub encrypt: f64,
    /// B: summing ciphertexts into histograms (`he`); both: the histogram exchanges, computing
    /// and waiting (`ot`).
    pub histograms: f64,
    /// A: decrypting histograms.
    pub decrypt: f64,
    /// `ot` backend, both: the one-time setup of the kept correlations.
    pub setup: f64,
    /// `ot`: computing the backward products (A: the messages and its shares; B: its shares).
    pub backward: f64,
}

/// One party's result.
#[derive(Debug, Clone, PartialEq)]
pub struct SbOutput {
    /// The trees kept (with early stopping, up to the best holdout loss).
    pub trees: Vec<Tree>,
    pub trees_run: u32,
    pub stopped_early: bool,
    /// Holdout log-loss after each tree (A only; empty without holdout).
    pub holdout_loss: Vec<f64>,
    pub peer_features: usize,
    pub timings: SbTimings,
    /// Wall time and bytes (this party's view) of everything before the first tree: the hello
    /// and, with `ot`, the kept correlations' setup (`he`: A's key).
    pub setup: PhaseStats,
    /// Wall time and bytes of each tree run (its levels, step 4 and the early-stopping flag).
    pub per_tree: Vec<PhaseStats>,
}

/// Progress, for progress bars: called when the setup begins (`trees_done` 0, `setup` true)
/// and after every tree (its early-stopping flag included), on both sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SbProgress {
    /// Trees finished so far.
    pub trees_done: u32,
    /// Trees asked for (early stopping may end the run before).
    pub trees: u32,
    /// True for the call before the setup (the hello and the kept correlations or A's key).
    pub setup: bool,
    /// Holdout log-loss after the last finished tree (A only, with a holdout).
    pub loss: Option<f64>,
}

pub type SbProgressFn = Arc<dyn Fn(SbProgress) + Send + Sync>;

/// Runs one party's side of the training over `channel`, reporting to `progress` (if any) when
/// the setup begins and after every tree.
pub async fn train<C: crate::channel::Channel>(
    channel: &C,
    input: SbInput,
    config: &SbConfig,
    progress: Option<SbProgressFn>,
) -> Result<SbOutput, crate::mpc::MpcError> {
    config.validate()?;
    setup::check_input(&input, config)?;
    let report = move |p: SbProgress| {
        if let Some(f) = &progress {
            f(p)
        }
    };
    report(SbProgress { trees_done: 0, trees: config.trees, setup: true, loss: None });
    let channel = stats::Counted::new(channel);
    let begin = channel.mark();
    let peer_bins = wire::exchange_hello(&channel, setup::digest(&input, config), &input.features.bins, config).await?;
    let start = Start { channel: &channel, config, progress: &report, begin, peer_bins };
    match input.party {
        Party::A => active::train(start, input).await,
        Party::B => passive::train(start, input).await,
    }
}

/// What both sides have after the steps they share (checks, the setup's progress call, the
/// hello), for their own.
struct Start<'a, C> {
    /// The channel, counting bytes per phase.
    channel: &'a stats::Counted<'a, C>,
    config: &'a SbConfig,
    progress: &'a (dyn Fn(SbProgress) + Sync),
    /// Where the setup's time and bytes start (before the hello).
    begin: stats::Mark,
    /// The peer's bins per feature, from its hello.
    peer_bins: Vec<u32>,
}

#[cfg(test)]
pub(crate) mod tests;
