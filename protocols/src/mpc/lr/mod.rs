//! Vertical logistic regression on secret shares, two parties, no third party.
//!
//! # Setting
//!
//! The rows are aligned (row i is the same entity on both sides, e.g. from PSI). Party A holds
//! features X_A (n × d_A) and labels y ∈ {0,1}^n; party B holds features X_B (n × d_B). Each
//! standardizes its own features locally and encodes them as ℓ-bit fixed point with f_x fraction
//! bits ([`LrConfig::feature_bits`], [`LrConfig::feature_frac_bits`]; defaults 12 and 8: range
//! [−8, 8) standard deviations, resolution 1/256, values outside are clipped). Features are never
//! shared: each party keeps its matrix in the clear on its side.
//!
//! # What it computes
//!
//! Mini-batch gradient descent on the logistic loss with L2 regularization, on the batches the
//! caller fixes (both parties pass the same row order), with the sigmoid replaced by an
//! approximation σ̂ ([`Sigmoid`], chosen by [`LrConfig::sigmoid`]; its docs tabulate the errors):
//!
//! - `taylor1` (default): the first-order Taylor expansion σ̂(z) = 1/2 + z/4. That is exact
//!   gradient descent on the second-order Taylor expansion of the log-loss, L̂(z) = ln 2 + z/2 +
//!   z²/8 − y·z (the approximation FATE's hetero-LR and Hardy et al. 2017 use). Error of σ̂
//!   against σ: 0 at z = 0, 0.019 at |z| = 1, 0.119 at |z| = 2, 0.52 at |z| = 4 (σ̂ is not
//!   clamped to [0, 1]). Linear: no secure multiplication per row.
//! - `poly3`: σ̂(z) = 1/2 + 0.15012·z − 0.0015930·z³, the least-squares cubic on [−8, 8] (max
//!   error 0.114 there; it diverges outside). Costs three share×share products per row.
//!
//! Per batch I:
//!
//! 1. z = X_A·w_A + X_B·w_B + w₀ on shares: the local parts X_P·⟨w_P⟩_P plus two Gilboa products
//!    ([`super::ot_mul`], forward) of each party's plaintext matrix with the other party's share
//!    of that party's weights; then truncation by f_x (to f = [`super::FRAC_BITS`] fraction bits).
//!    The products take one OT per bit of an entry that its column uses: with
//!    [`LrConfig::narrow_bits`] (default) the narrowest [`ColBits`](super::ot_mul::ColBits) of each
//!    column over all of the party's rows (a 0/1 indicator: 1 OT per entry instead of ℓ; a column
//!    of small integers 0..3: 2; an all-zero column: none), announced to the peer after the
//!    handshake (2 bytes per column); otherwise all ℓ bits.
//!
//!    **One-hot matrices** ([`LrInput::onehot`], e.g. a scorecard's bin indicators): a party whose
//!    columns are one-hot groups announces the group sizes after the layouts, and in dealer-free
//!    runs both products of its matrix (forward here, backward in step 3) run on correlations made
//!    once per job and re-keyed per epoch ([`super::ot_mul::onehot`]: a punctured GGM tree per
//!    (row, group); forward 8 bytes per column, backward 8 bytes per group per row, no OT
//!    extension after the setup) instead of one fresh OT per entry; the other party's matrix keeps
//!    the fresh (or cached) OTs. Exact, like the Gilboa products. Such a matrix is kept as its
//!    leaves (one byte per (row, group), `state::Features::OneHot`; a batch's rows are expanded
//!    back when used), and each batch's kept expansion runs ahead, while the previous batch's
//!    messages are exchanged (`correlations::Ahead`): it does not depend on the weights, so
//!    both parties expand at once instead of taking turns. Nothing on the wire changes.
//! 2. r' = 4(σ̂(z) − y): `taylor1` 2 + z − 4y, local (A adds the public constant and its
//!    labels); `poly3` 2 + trunc(q₁·z − q₃·z³) − 4y, where z³ comes from two elementwise
//!    products of shares (z² then z²·z, each truncated; `step::sigmoid_part`) by Gilboa OT
//!    multiplication with one party's 64-bit share bits as choice bits (64 OTs per cross term,
//!    one cross term for z², both for z²·z: 192 random OTs per row and batch, fresh from the
//!    IKNP extension); in dealer mode with two Beaver triples per row from the dealer instead
//!    ([`super::dealer::DealerSession::triple`]: 32 bytes per row and party on the wire).
//! 3. g = Xᵀ·r' (own part local, cross parts by the backward Gilboa product on the *same* OTs as
//!    step 1, the other 64-bit half of each pad), g₀ = Σ r'.
//! 4. w ← w − trunc(c·trunc(g, f_x + p) + c₂·w, 20) with 2^p ≥ |I| > 2^(p−1), c = round(η·2^p /
//!    (4|I|)·2^20) and c₂ = round(η·λ·2^20): i.e. w ← w − η·(mean gradient) − η·λ·w (no L2 on w₀).
//!
//! After each epoch, on the holdout rows, the parties compute shares of S₁ = Σ z, S₂ = Σ z² and
//! S₃ = Σ y·z (one more Gilboa product with A's 64-bit shares as choice bits), with `poly3` also
//! S₄ = Σ z⁴ (two elementwise squarings, 128 OTs per holdout row), and B sends its shares to A,
//! who computes the holdout loss — the surrogate whose gradient the sigmoid gives,
//! L̂ = ln 2 + (S₁/2 + c₁·S₂/2 − c₃·S₄/4 − S₃)/n_h ([`Sigmoid::loss`]; `taylor1`: c₁ = 1/4,
//! c₃ = 0, the second-order Taylor log-loss) — and decides on early stopping (stop when it
//! improved by less than [`LrConfig::tolerance`]); A sends B one byte: continue or stop, and
//! whether this epoch's loss is the lowest so far. With early stopping on, both parties keep a copy of
//! their shares after the best epoch and return those (the best epoch's weights, not the last
//! epoch's). At the end each party sends the other its share of the other's weights: A learns
//! w_A and w₀, B learns w_B.
//!
//! # What each party learns
//!
//! - Both: n, the batch order and holdout split (inputs both agreed on), the other's feature
//!   count, the hyper-parameters, the number of epochs run (early stopping is visible) and, with
//!   early stopping on, which epochs had the lowest holdout loss so far (the returned epoch).
//! - Both, for each party that keeps [`LrConfig::narrow_bits`] on (the default): the bit layout of
//!   that party's encoded columns, per column the lowest and the highest bit any of its values
//!   uses and whether any is negative. That is a function of the party's own data range: the peer
//!   learns e.g. that a column is a 0/1 indicator, takes values 0..3, is constant or all zero, or
//!   that all its standardized values lie within ±4 standard deviations (11 bits instead of 12),
//!   nothing about any row. We accept it by default because binned features are public in kind
//!   (the peer knows it is training on bin indicators) and it cuts the OTs ℓ-fold; a party whose
//!   ranges are sensitive turns it off and pays the full ℓ OTs per entry.
//! - A: per epoch, the holdout aggregates S₁, S₂, S₃ (and S₄ with `poly3`), so the holdout loss;
//!   at the end w_A, w₀.
//! - B: at the end w_B.
//! - Both, for a party that passes [`LrInput::onehot`]: that its columns are one-hot, the number
//!   of columns of each group and the encoded value of a set entry (nothing about any row; the
//!   kept correlations' security: [`super::ot_mul::onehot`]).
//! - Nothing else: every message is an OT-extension message, a choice-bit correction masked by a
//!   random choice bit, a τ masked by a pseudorandom pad, or a uniformly random share. No
//!   gradient, residual, score or label is revealed during training.
//!
//! Evaluation and scoring afterwards ([`exchange_partial_scores`]) reveal to A, per row, B's
//! partial score x_B·w_B (equivalently the prediction, given A's own part).
//!
//! # Security model and numerical bounds
//!
//! Semi-honest, both parties (OT extension per [`crate::ot::extension`]). Truncation is
//! SecureML's local truncation ([`super::trunc_share`]): error ≤ 1 ulp, failure probability
//! ≤ |x|·2^−63 per truncated value x (`poly3` adds four truncations per row of values below
//! 2^31 while |z| ≤ 8, see `step::sigmoid_part`). The truncated values here are
//! z·2^{f_x+f} (|z| ≲ 2^6 → 2^30), mean-gradient sums (≲ 2^{11+24} for batches ≤ 2^11 with
//! |x·r'| ≲ 1 on average) and updates (≲ 2^36): per training run of 10 epochs on 10^5 rows, about
//! 10^6 truncations of values below 2^31 and 10^4 of values below 2^36, so a failure probability
//! around 10^−3 at worst, far less in practice. A failure shows as a weight off by ±2^44 or more;
//! the revealed weights are checked and the run fails with
//! [`MpcError::Overflow`](crate::mpc::MpcError::Overflow) instead of returning it.
//! Shares of weights, OT pads and feature matrices are zeroized when dropped.
//!
//! # Files
//!
//! The roles are symmetric (each party is the chooser for its own matrix and the sender for the
//! peer's), so the files follow the protocol's steps, not the roles: `config` ([`Sigmoid`],
//! [`LrConfig`]), `train` (entry points, input checks, the parameter handshake, the epoch loop with
//! early stopping, the final reveal), `state` (one party's state during a run), `correlations`
//! (where the randomness of a batch's products comes from: fresh OTs, the re-keyed OT cache or
//! the dealer), `products` (the forward/backward matrix products and share×share products),
//! `step` (one mini-batch: steps 1–4 above), `holdout` (the per-epoch holdout loss), `scores`
//! ([`exchange_partial_scores`]) and [`plain`] (the plaintext mirror).

use std::sync::Arc;

use crate::mpc::Party;
use crate::mpc::ot_mul::Matrix;
use zeroize::Zeroizing;

mod config;
mod correlations;
mod holdout;
pub mod plain;
mod products;
mod scores;
mod state;
mod step;
mod train;

pub use config::{LrConfig, MAX_EPOCHS, Sigmoid};
pub use scores::exchange_partial_scores;
pub use train::{train, train_with_dealer};

/// A party's features.
pub enum LrFeatures {
    /// Encoded features of every aligned row ([`LrConfig::encode_feature`]), row-major.
    Matrix(Matrix),
    /// A one-hot matrix ([`LrInput::onehot`] required) given as its leaves: per row, per group
    /// one byte, 0 when no column of the group is set, p + 1 when its column p is (what
    /// [`Groups::leaves_of`](crate::mpc::ot_mul::onehot::Groups::leaves_of) makes of the matrix),
    /// entries `bits` wide. The same model and messages as the matrix it stands for, without
    /// building it (a scorecard's 300 binned features at 10^5 rows: 30 MB instead of 2.2 GB).
    Leaves { leaves: Zeroizing<Vec<u8>>, rows: usize, bits: u32 },
}

impl From<Matrix> for LrFeatures {
    fn from(m: Matrix) -> Self {
        LrFeatures::Matrix(m)
    }
}

impl LrFeatures {
    pub fn rows(&self) -> usize {
        match self {
            LrFeatures::Matrix(m) => m.rows(),
            LrFeatures::Leaves { rows, .. } => *rows,
        }
    }

    pub fn bits(&self) -> u32 {
        match self {
            LrFeatures::Matrix(m) => m.bits(),
            LrFeatures::Leaves { bits, .. } => *bits,
        }
    }
}

/// One party's inputs.
pub struct LrInput {
    pub party: Party,
    pub features: LrFeatures,
    /// Labels (A only), one per row, 0 or 1.
    pub labels: Option<Vec<u8>>,
    /// Training rows in batch order (the same on both sides).
    pub train: Vec<u32>,
    /// Holdout rows (the same on both sides; may be empty, then no loss and no early stopping).
    pub holdout: Vec<u32>,
    /// The one-hot groups of `features` (every column in one group; entries 0 or the groups'
    /// scale, at most one set per group and row), e.g. a scorecard's bin indicators: announced
    /// to the peer, and in dealer-free runs this matrix's products then run on correlations kept
    /// across epochs ([`ot_mul::onehot`](crate::mpc::ot_mul::onehot)) instead of fresh OTs.
    /// `None`: a general matrix.
    pub onehot: Option<crate::mpc::ot_mul::onehot::Groups>,
}

/// Progress, for progress bars: called after every batch and after every epoch's loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrProgress {
    pub epoch: u32,
    pub epochs: u32,
    pub batch: usize,
    pub batches: usize,
    /// Holdout loss of the finished epoch (A only, once per epoch).
    pub loss: Option<f64>,
}

pub type LrProgressFn = Arc<dyn Fn(LrProgress) + Send + Sync>;

/// One party's result.
#[derive(Debug, Clone, PartialEq)]
pub struct LrOutput {
    /// Weights of this party's own (standardized) features.
    pub weights: Vec<f64>,
    /// The intercept (A only).
    pub intercept: Option<f64>,
    pub epochs_run: u32,
    /// The epoch (1-based) whose weights these are: with early stopping on (tolerance > 0) and a
    /// holdout, the one with the lowest holdout loss; otherwise the last.
    pub weights_epoch: u32,
    pub stopped_early: bool,
    /// Holdout loss L̂ after each epoch (A only; empty without holdout).
    pub holdout_loss: Vec<f64>,
    pub peer_features: usize,
}

#[cfg(test)]
mod tests;
