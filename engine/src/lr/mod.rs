//! Vertical logistic regression jobs: train (PSI alignment, then secure training, evaluation and
//! model files) and score (PSI alignment, then predictions for A).
//!
//! Roles: the *requester* is party A (it holds the label column and gets the intercept,
//! evaluation and predictions); the *responder* is party B (features only). The protocol and what
//! each party learns are in [`consort_protocols::mpc::lr`]; this module adds:
//!
//! - **Alignment**: ECDH-PSI with the intersection revealed to both (both must know which of their
//!   rows take part): each party learns the intersection of the keys, in the joint order.
//! - **Features**: every non-key, non-label column unless the job names them; each value must
//!   parse as a finite number, labels must be 0 or 1 (errors name file, line and column).
//!   Standardized locally with the mean and (population) standard deviation of the training rows
//!   (a constant column gets scale 1), then encoded to fixed point (clipped at ±8 std by default).
//! - **Split**: a holdout fraction of the aligned rows, chosen by a seed the requester sends; the
//!   rest, shuffled by the same seed, is the batch order.
//! - **Evaluation** (A only): AUC and KS on the holdout, from the final model: B sends A its
//!   partial scores x_B·w_B of the holdout rows.
//! - **Model files** ([`ModelFile`], JSON, written atomically): each party's own features, their
//!   standardization and weights; A's also the intercept and the evaluation.
//! - **Scoring**: both sides compute partial scores with their own model on newly aligned rows; B
//!   sends its partial scores to A, who writes `KEY..., score` (probability σ(z)) in joint order.
//!
//! # Files
//!
//! `params` (the hyper-parameters as they travel, and their validation), `features` (the feature
//! CSV, standardization, split), `model` (the model file), `metrics` (AUC, KS), `align` (the PSI
//! step both jobs start with), `train` and `score` (the two job runners), `compare` (the plaintext
//! comparison of demos and tests). The modules are private: everything public is re-exported here,
//! so `consort_engine::lr::X` is the one path to each item.

use std::path::Path;
use std::time::Instant;

use consort_protocols::Role;
use consort_protocols::mpc::{MpcError, Party};
use consort_protocols::psi::PsiError;

use crate::error::DataError;

pub(crate) mod align;
mod compare;
mod features;
mod metrics;
mod model;
mod params;
pub(crate) mod score;
mod train;

pub use compare::{PlainComparison, plaintext_comparison};
pub use features::{ColumnChoice, FeatureTable, Missing, load_features, load_features_as, split, standardization};
pub use metrics::{auc, ks, sigmoid};
pub use model::{MODEL_FORMAT, ModelFeature, ModelFile, TrainingSummary};
pub use params::LrParams;
pub use score::{ScoreJob, ScoreReport, run_score};
pub use train::{TrainJob, TrainReport, run_train, run_train_with_dealer};

/// A failed LR job.
#[derive(Debug, thiserror::Error)]
pub enum LrError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Psi(#[from] PsiError),
    #[error(transparent)]
    Mpc(#[from] MpcError),
}

pub(crate) fn party_of(role: Role) -> Party {
    match role {
        Role::Requester => Party::A,
        Role::Responder => Party::B,
    }
}

/// A training job's label is A's: the requester (party A) names the label column, the responder
/// has none.
pub(crate) fn check_label_side(party: Party, columns: &ColumnChoice) -> Result<(), LrError> {
    if (party == Party::A) != columns.label.is_some() {
        return Err(DataError::Invalid(
            "the requester (party A) names the label column; the responder has none".into(),
        )
        .into());
    }
    Ok(())
}

/// Wall time of each step of a job, for its report.
pub(crate) struct Stages {
    done: Vec<(String, f64)>,
    since: Instant,
}

impl Stages {
    pub(crate) fn start() -> Self {
        Self { done: Vec::new(), since: Instant::now() }
    }

    /// Records the step that ran since the previous one ended (or since the start).
    pub(crate) fn end(&mut self, name: &str) {
        self.done.push((name.to_string(), self.since.elapsed().as_secs_f64()));
        self.since = Instant::now();
    }

    pub(crate) fn into_vec(self) -> Vec<(String, f64)> {
        self.done
    }
}

/// Writes `bytes` to `path` with [`crate::storage::write_atomic`] (mode 0600), creating its
/// directory: model files, A's predictions and the synthetic LR datasets ([`crate::lr_synth`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    crate::storage::write_atomic(path, bytes, crate::storage::Access::OwnerOnly).map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests;
