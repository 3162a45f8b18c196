//! SecureBoost models on the engine side: the model file each party keeps, scoring with it, and
//! evaluation. The protocol (and what each party learns) is
//! [`consort_protocols::mpc::secureboost`]; the node runs it as the `secureboost` and
//! `secureboost-score` job kinds (`consort train --model secureboost`, `consort score`).
//!
//! - **Model file** ([`SbModelFile`], JSON, `"format": "consort-secureboost/1"`, written through
//!   `storage::DataWriter` like the LR model: atomic, sealed unless sealing is off): this party's
//!   features with their bin edges, and its side of every tree. A's file holds the tree structure,
//!   its own splits (feature, bin, threshold), the leaf weights, each split's gain, and for B's
//!   splits only B's feature index and bin (opaque: no name, no threshold). B's file holds only
//!   its own splits by (tree, node), with thresholds.
//! - **Thresholds**: a split (feature, bin j) sends a row left iff its value is missing or, for
//!   j ≥ 1, at most the threshold (the bin's upper edge); j = 0 separates only the missing values.
//!   Scoring bins the raw values with the stored edges, so it is the split training chose.
//! - **Scoring** ([`score`]): each party bins its rows with its model, then the joint prediction
//!   protocol (B routes the rows through its splits); A gets σ(margin) per row.
//! - **Feature importance** ([`SbModelFile::importance`], A): split count and total gain per A
//!   feature by name and per B feature by index.
//! - **Evaluation**: AUC and KS with [`crate::lr::auc`] and [`crate::lr::ks`].
//! - **Jobs** ([`run_sb_train`], [`run_sb_score`]): the LR jobs' alignment and feature reader,
//!   local binning, the LR holdout split, training, holdout evaluation, and the model id that binds
//!   the two halves of a model ([`model_id`]).

mod compare;
pub(crate) mod job;
mod model;

pub use model::{
    Importance, SB_MODEL_FORMAT, SbFeature, SbModelFile, SbNode, SbParams, SbSummary, SbTree, evaluate, score,
};

pub use compare::{SbComparison, plaintext_comparison};
pub use job::{
    SbParamsWire, SbScoreJob, SbScoreReport, SbTrainJob, SbTrainReport, keyed_split, model_id, run_sb_score,
    run_sb_train,
};

#[cfg(test)]
mod tests;
