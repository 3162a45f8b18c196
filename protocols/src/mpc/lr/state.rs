//! One party's state during a training run.
use std::sync::Arc;

use zeroize::Zeroizing;

use super::LrConfig;
use crate::mpc::Party;
use crate::mpc::dealer::DealerClient;
use crate::mpc::ot_mul::onehot::Groups;
use crate::mpc::ot_mul::{self, Layout, Matrix};
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
    /// features of 10 bins: 30 MB instead of 2.2 GB); a batch's rows are expanded back to a
    /// matrix when they are used ([`Groups::matrix_of`]).
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

/// The rows `rows` of the own feature matrix (with its layout).
pub(super) fn gather(features: &Features, rows: &[u32]) -> Matrix {
    match features {
        Features::Dense(m) => m.select_rows(rows),
        Features::OneHot { leaves, groups, bits, layout, .. } => groups.matrix_of(leaves, rows, *bits, layout.clone()),
    }
}
