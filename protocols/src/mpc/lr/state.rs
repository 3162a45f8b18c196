//! One party's state during a training run.
use std::sync::Arc;

use zeroize::Zeroizing;

use super::LrConfig;
use crate::mpc::dealer::DealerClient;
use crate::mpc::ot_mul::onehot::Groups;
use crate::mpc::ot_mul::{self, Layout, Matrix};
use crate::mpc::{MpcError, Party};
use crate::ot::{IknpReceiver, IknpSender};

/// The shared state: this party's shares of both weight vectors and the intercept.
#[derive(Clone)]
pub(super) struct Shares {
    pub(super) own: Zeroizing<Vec<u64>>,
    pub(super) peer: Zeroizing<Vec<u64>>,
    pub(super) w0: u64,
}

/// One party's side of a run: the channel, its OT extension in both roles, its own features
/// (and labels), and the source of the correlations.
pub(super) struct Ctx<'a, C, D> {
    pub(super) channel: &'a C,
    /// The dealer and the peer's masked matrices (train, holdout), in dealer mode.
    pub(super) dealer: Option<(DealerClient<'a, D>, [Vec<u64>; 2])>,
    pub(super) party: Party,
    pub(super) config: &'a LrConfig,
    pub(super) receiver: IknpReceiver,
    pub(super) sender: IknpSender,
    pub(super) features: Arc<Features>,
    pub(super) labels: Option<&'a [u8]>,
    pub(super) peer_cols: usize,
    /// Which bits of the peer's columns get an OT (announced by the peer in the handshake).
    pub(super) peer_layout: Arc<Layout>,
    /// OTs of the training rows (in batch order) and of the holdout rows, kept across epochs.
    pub(super) caches: Option<[(ot_mul::ChooserCache, ot_mul::SenderCache); 2]>,
    /// The one-hot groups of this party's own columns and of the peer's, when announced
    /// ([`LrInput::onehot`](super::LrInput::onehot)).
    pub(super) own_groups: Option<Arc<Groups>>,
    pub(super) peer_groups: Option<Arc<Groups>>,
    /// The kept one-hot correlations (dealer-free runs with a one-hot matrix on either side).
    pub(super) kept: Option<super::correlations::Kept>,
}

/// A party's own feature matrix as the run keeps it.
pub(super) enum Features {
    Dense(Matrix),
    /// A matrix of one-hot groups covering every column (a scorecard's bin indicators) kept as
    /// its leaves, one byte per (row, group) instead of 8 per column (at 10^5 rows × 300
    /// features of 10 bins: 30 MB instead of 2.2 GB). On kept correlations a batch stays as its
    /// rows' leaves ([`Batch::Leaves`]); otherwise its rows are expanded back to a matrix
    /// ([`Groups::matrix_of`]).
    OneHot {
        leaves: Zeroizing<Vec<u8>>,
        groups: Arc<Groups>,
        rows: usize,
        bits: u32,
        layout: Arc<Layout>,
    },
}

impl Features {
    pub(super) fn rows(&self) -> usize {
        match self {
            Features::Dense(m) => m.rows(),
            Features::OneHot { rows, .. } => *rows,
        }
    }

    pub(super) fn cols(&self) -> usize {
        match self {
            Features::Dense(m) => m.cols(),
            Features::OneHot { groups, .. } => groups.total_cols(),
        }
    }

    pub(super) fn layout(&self) -> &Arc<Layout> {
        match self {
            Features::Dense(m) => m.layout(),
            Features::OneHot { layout, .. } => layout,
        }
    }
}

/// A batch's rows of the own feature matrix, as its products read them.
pub(super) enum Batch {
    Dense(Arc<Matrix>),
    /// The rows of a one-hot matrix whose products run on the kept one-hot correlations: those
    /// read the leaves in their own sessions, never the matrix, so the batch keeps only its
    /// leaves for the local products (one byte per (row, group); expanding a batch of 1 024 rows
    /// × 3 000 columns to a matrix wrote, multiplied and zeroized 24 MB per product).
    Leaves {
        leaves: Zeroizing<Vec<u8>>,
        groups: Arc<Groups>,
        layout: Arc<Layout>,
    },
}

impl Batch {
    pub(super) fn rows(&self) -> usize {
        match self {
            Batch::Dense(m) => m.rows(),
            Batch::Leaves { leaves, groups, .. } => leaves.len() / groups.len(),
        }
    }

    pub(super) fn cols(&self) -> usize {
        match self {
            Batch::Dense(m) => m.cols(),
            Batch::Leaves { groups, .. } => groups.total_cols(),
        }
    }

    pub(super) fn layout(&self) -> &Arc<Layout> {
        match self {
            Batch::Dense(m) => m.layout(),
            Batch::Leaves { layout, .. } => layout,
        }
    }

    /// The dense matrix, for the products that read it (OT and dealer correlations).
    pub(super) fn matrix(&self) -> Result<&Arc<Matrix>, MpcError> {
        match self {
            Batch::Dense(m) => Ok(m),
            Batch::Leaves { .. } => Err(MpcError::Invalid("a one-hot batch on OT or dealer correlations".into())),
        }
    }

    /// Local X·v (mod 2^64).
    pub(super) fn mul_vec(&self, v: &[u64]) -> Vec<u64> {
        match self {
            Batch::Dense(m) => m.mul_vec(v),
            Batch::Leaves { leaves, groups, .. } => groups.leaves_mul_vec(leaves, v),
        }
    }

    /// Local Xᵀ·v (mod 2^64).
    pub(super) fn mul_t_vec(&self, v: &[u64]) -> Vec<u64> {
        match self {
            Batch::Dense(m) => m.mul_t_vec(v),
            Batch::Leaves { leaves, groups, .. } => groups.leaves_mul_t_vec(leaves, v),
        }
    }
}

/// The rows `rows` of the own feature matrix for a batch's products: its leaves when the matrix
/// is one-hot and `kept` (its products run on the kept one-hot correlations), else dense.
pub(super) fn batch(features: &Features, rows: &[u32], kept: bool) -> Batch {
    match features {
        Features::OneHot { leaves, groups, layout, .. } if kept => Batch::Leaves {
            leaves: groups.leaves_of_rows(leaves, rows),
            groups: groups.clone(),
            layout: layout.clone(),
        },
        _ => Batch::Dense(Arc::new(gather(features, rows))),
    }
}

/// The rows `rows` of the own feature matrix (with its layout).
pub(super) fn gather(features: &Features, rows: &[u32]) -> Matrix {
    match features {
        Features::Dense(m) => m.select_rows(rows),
        Features::OneHot { leaves, groups, bits, layout, .. } => groups.matrix_of(leaves, rows, *bits, layout.clone()),
    }
}
